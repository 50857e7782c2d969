//! A rank's mailbox: MPI's point-to-point matching over the job's inbox channels.
//!
//! Every rank of a job has one inbox, a [`Channel`] any rank sends into, and a fastbox
//! from each rank ([`Fastboxes`]: one small message at a time, in a cache line or two). A
//! message is the sender's world rank, an [`Envelope`] (context, source, tag, kind) and a
//! payload (`PREFIX` bytes before it, little-endian).
//! A receive takes the first message, in arrival order, whose context, source and tag it
//! asks for ([`ANY_SOURCE`] and [`ANY_TAG`] match any); messages that came first and did
//! not match wait, in order, for a receive that wants them. A receive posted ahead
//! ([`Mailbox::post`], MPI's `irecv`) gets the first matching message not yet taken,
//! before any receive made after it. Each sender's messages arrive in the order sent,
//! through its fastbox and the inbox alike (see `fastbox`), so messages never overtake
//! one another per (source, context, tag).
//!
//! The launcher ends a failed job by sending every inbox an [`Kind::Abort`] message: a
//! receive that meets it fails with [`Error::JobEnded`], and so does every receive after.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::{AtomicU64, Ordering};

use super::fastbox::{self, Fastboxes};
use crate::{Channel, Counting, Error, Poll, Result};

/// How long a receive (or a send) may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: one look, which reads no clock (what is already there is taken
    /// without one).
    Look,
    /// Until the deadline (None: for ever).
    Until(Option<Instant>),
}

/// MPI's wildcards, with the values mpi4py has under MPICH.
pub const ANY_SOURCE: i32 = -2;
pub const ANY_TAG: i32 = -1;
/// Bytes of an envelope: context, source, tag (i32 each), kind (u8).
pub const HEAD: usize = 13;
/// Bytes before a message's payload: the sender's world rank (u32), then its envelope.
const PREFIX: usize = 4 + HEAD;
/// The sender "rank" of the launcher's abort message.
const LAUNCHER: u32 = u32::MAX;

/// What a message's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A pickled object.
    Object = 0,
    /// Raw bytes (a buffer method's).
    Raw = 1,
    /// The job is over; the payload says why (UTF-8).
    Abort = 2,
    /// A pickled object whose sender waits to hear it was received (`ssend`).
    Sync = 3,
}

impl Kind {
    pub fn from_u8(kind: u8) -> Option<Kind> {
        Some(match kind {
            0 => Kind::Object,
            1 => Kind::Raw,
            2 => Kind::Abort,
            3 => Kind::Sync,
            _ => return None,
        })
    }
}

/// Who a message is from and for what: its communicator's `context`, the sender's rank
/// in that communicator, the tag and the kind of payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub context: i32,
    pub source: i32,
    pub tag: i32,
    pub kind: Kind,
}

impl Envelope {
    /// The envelope written ahead of a payload.
    pub fn encode(&self) -> [u8; HEAD] {
        let mut out = [0; HEAD];
        out[0..4].copy_from_slice(&self.context.to_le_bytes());
        out[4..8].copy_from_slice(&self.source.to_le_bytes());
        out[8..12].copy_from_slice(&self.tag.to_le_bytes());
        out[12] = self.kind as u8;
        out
    }

    /// The envelope a message starts with; None if it is too short or of no known kind.
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        let word = |i: usize| Some(i32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        Some(Envelope {
            context: word(0)?,
            source: word(4)?,
            tag: word(8)?,
            kind: Kind::from_u8(*bytes.get(12)?)?,
        })
    }
}

/// What a receive asks for: a context, and a source and tag or the wildcards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub context: i32,
    pub source: i32,
    pub tag: i32,
}

impl Pattern {
    pub fn matches(&self, e: &Envelope) -> bool {
        e.context == self.context
            && (self.source == ANY_SOURCE || e.source == self.source)
            && (self.tag == ANY_TAG || e.tag == self.tag)
    }
}

/// A message received: its envelope and its bytes (`PREFIX` included).
#[derive(Debug)]
pub struct Message {
    pub envelope: Envelope,
    bytes: Vec<u8>,
}

impl Message {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[PREFIX..]
    }

    /// The message in `bytes` (as a sender wrote them), and its sender's world rank.
    fn read(bytes: Vec<u8>) -> Result<(u32, Message)> {
        let from = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        match (from, bytes.get(4..).and_then(Envelope::decode)) {
            (Some(from), Some(envelope)) => Ok((from, Message { envelope, bytes })),
            _ => Err(Error::Invalid(format!(
                "a {}-byte message in a rank's inbox holds no envelope",
                bytes.len()
            ))),
        }
    }
}

/// A message made to send: the sender's rank, the envelope, the payload.
pub struct Letter(Vec<u8>);

/// A receive posted ahead, and its message once one matched.
#[derive(Debug)]
struct Posted {
    id: u64,
    want: Pattern,
    message: Option<Message>,
}

/// A job's transport: every rank's inbox and the fastboxes between ranks, made before
/// the ranks are forked (so that all of them map it); each rank sends through it as
/// itself ([`Self::for_rank`]). Its clones in one process share it, and its count of
/// what went to each rank through the channels.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    /// Channel messages this process sent to each rank (see `fastbox`).
    sent: Arc<[AtomicU64]>,
    /// The rank it sends as (None: the launcher's, which only ends the job).
    me: Option<usize>,
}

struct Shared {
    inboxes: Vec<Channel>,
    boxes: Option<Fastboxes>,
}

impl Outbox {
    /// A transport for `ranks` ranks, each inbox a ring of `inbox_bytes` (a power of two).
    pub fn create(ranks: usize, inbox_bytes: usize) -> Result<Self> {
        if ranks == 0 {
            return Err(Error::Invalid("a job needs at least one rank".into()));
        }
        let inboxes = (0..ranks)
            .map(|_| Channel::create(inbox_bytes, Counting::None))
            .collect::<Result<_>>()?;
        let boxes = if ranks <= fastbox::MOST_RANKS {
            Some(Fastboxes::create(ranks)?)
        } else {
            None
        };
        Ok(Outbox {
            shared: Arc::new(Shared { inboxes, boxes }),
            sent: (0..ranks).map(|_| AtomicU64::new(0)).collect(),
            me: None,
        })
    }

    /// This transport, sending as rank `rank` (with counts of its own).
    pub fn for_rank(&self, rank: usize) -> Result<Self> {
        self.inbox(rank)?;
        Ok(Outbox {
            shared: self.shared.clone(),
            sent: (0..self.ranks()).map(|_| AtomicU64::new(0)).collect(),
            me: Some(rank),
        })
    }

    /// How many ranks the job has.
    pub fn ranks(&self) -> usize {
        self.shared.inboxes.len()
    }

    /// A message to send (to one rank or several): made once, however many tries and
    /// receivers it takes.
    pub fn letter(&self, envelope: Envelope, payload: &[u8]) -> Result<Letter> {
        let Some(me) = self.me else {
            return Err(Error::Invalid("the launcher sends no messages".into()));
        };
        let from = (me as u32).to_le_bytes();
        Ok(Letter([&from[..], &envelope.encode(), payload].concat()))
    }

    /// Sends `letter` to world rank `dest`, waiting as `wait` says for room: false if
    /// there was none in time (nothing sent). A letter longer than the inbox's largest
    /// fragment goes out in several, and once the first is out the rest follow however
    /// long the receiver takes: keep letters short (large data goes through the arena).
    pub fn post(&self, dest: usize, letter: &Letter, wait: Wait, poll: Poll<'_>) -> Result<bool> {
        let me = self.me.expect("a letter is made by a rank's outbox");
        let inbox = self.inbox(dest)?;
        let sent = &self.sent[dest];
        if let Some(boxes) = &self.shared.boxes {
            if boxes.try_put(me, dest, &[&letter.0], sent.load(Ordering::Relaxed)) {
                inbox.wake_receivers();
                return Ok(true);
            }
        }
        let went = inbox.try_send(&letter.0)?
            || match wait {
                Wait::Look => false,
                Wait::Until(deadline) => match inbox.send(&letter.0, deadline, poll, None) {
                    Ok(()) => true,
                    Err(Error::Timeout) => false,
                    Err(e) => return Err(e),
                },
            };
        if went {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(went)
    }

    /// Sends a message to world rank `dest` (see [`Self::post`]).
    pub fn send(
        &self,
        dest: usize,
        envelope: Envelope,
        payload: &[u8],
        wait: Wait,
        poll: Poll<'_>,
    ) -> Result<bool> {
        self.post(dest, &self.letter(envelope, payload)?, wait, poll)
    }

    /// Tells rank `rank` the job is over, if its inbox has room now: its receives then
    /// fail with `why`. Whether it went.
    pub fn try_abort(&self, rank: usize, why: &str) -> Result<bool> {
        let envelope = Envelope {
            context: -1,
            source: -1,
            tag: 0,
            kind: Kind::Abort,
        };
        let data = [
            &LAUNCHER.to_le_bytes()[..],
            &envelope.encode(),
            why.as_bytes(),
        ]
        .concat();
        self.inbox(rank)?.try_send(&data)
    }

    fn inbox(&self, rank: usize) -> Result<&Channel> {
        self.shared
            .inboxes
            .get(rank)
            .ok_or_else(|| Error::Invalid(format!("no rank {rank} in a job of {}", self.ranks())))
    }
}

/// This rank's receiving side: its inbox, and what was received but not yet taken.
pub struct Mailbox {
    rank: usize,
    outbox: Outbox,
    /// Messages pulled from the fastboxes and the inbox, in order, not yet filed.
    arrived: VecDeque<Message>,
    /// Messages that came and matched no receive yet, in arrival order.
    pending: VecDeque<Message>,
    /// Receives posted and not yet finished, in posting order.
    posted: Vec<Posted>,
    next_id: u64,
    /// Why the job ended, once an abort message came.
    why: Option<String>,
    /// See [`Self::moved`].
    moved: u64,
}

impl Mailbox {
    /// Rank `rank`'s mailbox in the job of `outbox`.
    pub fn new(rank: usize, outbox: &Outbox) -> Result<Self> {
        Ok(Mailbox {
            rank,
            outbox: outbox.for_rank(rank)?,
            arrived: VecDeque::new(),
            pending: VecDeque::new(),
            posted: Vec::new(),
            next_id: 0,
            why: None,
            moved: 0,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Everyone's inboxes, to send into.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Why the job ended, if an abort message came.
    pub fn ended(&self) -> Option<&str> {
        self.why.as_deref()
    }

    /// The first message matching `want` that no receive posted before claims; None if
    /// none came by `deadline`.
    pub fn take(&mut self, want: Pattern, wait: Wait, poll: Poll<'_>) -> Result<Option<Message>> {
        if let Some(found) = self.take_pending(&want) {
            return Ok(Some(found));
        }
        loop {
            let Some(message) = self.receive(wait, poll)? else {
                return Ok(None);
            };
            let Some(message) = self.claim(message) else {
                continue; // (a posted receive's)
            };
            if want.matches(&message.envelope) {
                return Ok(Some(message));
            }
            self.pending.push_back(message);
        }
    }

    /// The envelope and payload length of the first message matching `want`, left to be
    /// received; None if none came in time.
    pub fn peek(
        &mut self,
        want: Pattern,
        wait: Wait,
        poll: Poll<'_>,
    ) -> Result<Option<(Envelope, usize)>> {
        loop {
            if let Some(m) = self.pending.iter().find(|m| want.matches(&m.envelope)) {
                return Ok(Some((m.envelope, m.payload().len())));
            }
            let Some(message) = self.receive(wait, poll)? else {
                return Ok(None);
            };
            self.file(message);
        }
    }

    /// Posts a receive for `want`: it gets the first matching message not taken yet,
    /// before any receive made after it. Its id is for [`Self::finish`].
    pub fn post(&mut self, want: Pattern) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let message = self.take_pending(&want);
        self.posted.push(Posted { id, want, message });
        id
    }

    /// Posted receive `id`'s message, waiting as `wait` says for it; None if it has not
    /// come. Once it returns a message, the id is spent.
    pub fn finish(&mut self, id: u64, wait: Wait, poll: Poll<'_>) -> Result<Option<Message>> {
        loop {
            let Some(i) = self.posted.iter().position(|p| p.id == id) else {
                return Err(Error::Invalid(format!("no receive {id} is posted")));
            };
            if self.posted[i].message.is_some() {
                return Ok(self.posted.remove(i).message);
            }
            let Some(message) = self.receive(wait, poll)? else {
                return Ok(None);
            };
            self.file(message);
        }
    }

    /// Cancels posted receive `id` if no message matched it yet: true if it did (the id
    /// is spent), false if its message came (`finish` gives it).
    pub fn cancel(&mut self, id: u64) -> Result<bool> {
        let Some(i) = self.posted.iter().position(|p| p.id == id) else {
            return Err(Error::Invalid(format!("no receive {id} is posted")));
        };
        if self.posted[i].message.is_some() {
            return Ok(false);
        }
        self.posted.remove(i);
        Ok(true)
    }

    /// Whether posted receive `id` has its message.
    pub fn arrived(&self, id: u64) -> bool {
        self.posted
            .iter()
            .any(|p| p.id == id && p.message.is_some())
    }

    /// Waits for the next message and files it (a posted receive's, or pending): what
    /// waits for any of several requests does. Whether one came.
    pub fn wait_message(&mut self, wait: Wait, poll: Poll<'_>) -> Result<bool> {
        let Some(message) = self.receive(wait, poll)? else {
            return Ok(false);
        };
        self.file(message);
        Ok(true)
    }

    fn take_pending(&mut self, want: &Pattern) -> Option<Message> {
        let i = self
            .pending
            .iter()
            .position(|m| want.matches(&m.envelope))?;
        self.pending.remove(i)
    }

    /// Gives `message` to the first unfinished posted receive that wants it; what is left
    /// if none does.
    fn claim(&mut self, message: Message) -> Option<Message> {
        let Some(p) = self
            .posted
            .iter_mut()
            .find(|p| p.message.is_none() && p.want.matches(&message.envelope))
        else {
            return Some(message);
        };
        p.message = Some(message);
        None
    }

    fn file(&mut self, message: Message) {
        if let Some(message) = self.claim(message) {
            self.pending.push_back(message);
        }
    }

    /// The next message that came; None if none came in time.
    fn receive(&mut self, wait: Wait, poll: Poll<'_>) -> Result<Option<Message>> {
        loop {
            if let Some(message) = self.arrived.pop_front() {
                return Ok(Some(message));
            }
            if let Some(why) = &self.why {
                return Err(Error::JobEnded(why.clone()));
            }
            if self.pull()? {
                continue;
            }
            let Wait::Until(deadline) = wait else {
                return Ok(None);
            };
            if self.mid_message() {
                if !self.read_whole(deadline, poll)? {
                    return Ok(None);
                }
                continue;
            }
            match self.waiter().wait(|| false, deadline, poll) {
                Ok(()) => {}
                Err(Error::Timeout) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves everything that came into `arrived` (in order per sender), for the receives
    /// to come: what a send waiting for room in another rank's inbox does, so that this
    /// rank's own inbox never fills while it waits (that rank may be waiting for room in
    /// it). Whether anything came.
    pub fn drain(&mut self) -> Result<bool> {
        let mut got = false;
        while self.pull()? {
            got = true;
        }
        Ok(got)
    }

    /// How many times messages were taken in (a count that changes whenever this mailbox
    /// took something out of its inbox or fastboxes): for threads that wait without it.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Whether the inbox holds the start of a message of several fragments, which a
    /// look cannot take ([`Self::read_whole`] waits for the rest).
    pub fn mid_message(&self) -> bool {
        self.outbox.shared.inboxes[self.rank].has_data()
    }

    /// Reads the message whose first fragments are in the inbox, waiting for the rest
    /// (however long: a started message is read whole) or, until `deadline`, for one to
    /// start: whether one came.
    pub fn read_whole(&mut self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<bool> {
        let mut bytes = Vec::new();
        match self.outbox.shared.inboxes[self.rank].recv(&mut bytes, deadline, poll) {
            Ok(()) => {
                self.moved += 1;
                self.arrive_by_inbox(bytes)?;
                Ok(true)
            }
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What waits for this mailbox's messages without holding it.
    pub fn waiter(&self) -> Waiter {
        Waiter {
            shared: self.outbox.shared.clone(),
            rank: self.rank,
        }
    }

    /// Moves what came into `arrived`, each sender's in the order sent: the fastboxes'
    /// messages, then one of the inbox's. Whether anything came.
    fn pull(&mut self) -> Result<bool> {
        let mut got = false;
        let shared = &*self.outbox.shared;
        if let Some(boxes) = &shared.boxes {
            for from in 0..shared.inboxes.len() {
                got |= take_box(boxes, from, self.rank, &mut self.arrived)?;
            }
        }
        // (A look at the indices first: an empty inbox costs no lock.)
        let inbox = &shared.inboxes[self.rank];
        let mut bytes = Vec::new();
        let from_inbox = inbox.has_data() && inbox.try_recv(&mut bytes)?;
        if got || from_inbox {
            self.moved += 1;
        }
        if from_inbox {
            self.arrive_by_inbox(bytes)?;
        }
        Ok(got || from_inbox)
    }

    /// Files a message taken from the inbox, after its sender's fastbox message (older).
    /// The launcher's abort message ends the job (the messages that came before it are
    /// still received).
    fn arrive_by_inbox(&mut self, bytes: Vec<u8>) -> Result<()> {
        let (from, message) = Message::read(bytes)?;
        if from == LAUNCHER && message.envelope.kind == Kind::Abort {
            self.why = Some(String::from_utf8_lossy(message.payload()).into_owned());
            return Ok(());
        }
        let from = from as usize;
        if from >= self.outbox.ranks() {
            return Err(Error::Invalid(format!(
                "a message from rank {from} of {}",
                self.outbox.ranks()
            )));
        }
        if let Some(boxes) = &self.outbox.shared.boxes {
            take_box(boxes, from, self.rank, &mut self.arrived)?;
            boxes.consumed(from, self.rank);
        }
        self.arrived.push_back(message);
        Ok(())
    }
}

/// Waits for a rank's messages without holding its mailbox: for its threads, which take
/// turns on the mailbox only to look.
#[derive(Clone)]
pub struct Waiter {
    shared: Arc<Shared>,
    rank: usize,
}

impl Waiter {
    /// Whether a message is in the inbox or a fastbox.
    pub fn ready(&self) -> bool {
        let shared = &*self.shared;
        shared.inboxes[self.rank].has_data()
            || shared.boxes.as_ref().is_some_and(|b| b.any_full(self.rank))
    }

    /// Waits until a message is in the inbox or a fastbox, or `also()` holds (what
    /// another thread changes before it calls [`Self::wake`]).
    pub fn wait(
        &self,
        also: impl Fn() -> bool,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        let shared = &*self.shared;
        let boxed = || shared.boxes.as_ref().is_some_and(|b| b.any_full(self.rank)) || also();
        shared.inboxes[self.rank].wait_data_or(boxed, deadline, poll)
    }

    /// Wakes this rank's threads waiting in [`Self::wait`], to look again.
    pub fn wake(&self) {
        self.shared.inboxes[self.rank].wake_receivers();
    }
}

/// Moves the message in fastbox `from` → `to`, if any, to `arrived`.
fn take_box(
    boxes: &Fastboxes,
    from: usize,
    to: usize,
    arrived: &mut VecDeque<Message>,
) -> Result<bool> {
    if !boxes.is_full(from, to) {
        return Ok(false); // (the usual look: no allocation)
    }
    let mut bytes = Vec::with_capacity(fastbox::CAPACITY);
    if !boxes.take(from, to, &mut bytes) {
        return Ok(false);
    }
    arrived.push_back(Message::read(bytes)?.1);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(n: usize) -> Vec<Mailbox> {
        let outbox = Outbox::create(n, 1 << 17).unwrap();
        (0..n).map(|r| Mailbox::new(r, &outbox).unwrap()).collect()
    }

    fn env(context: i32, source: i32, tag: i32) -> Envelope {
        Envelope {
            context,
            source,
            tag,
            kind: Kind::Object,
        }
    }

    fn want(context: i32, source: i32, tag: i32) -> Pattern {
        Pattern {
            context,
            source,
            tag,
        }
    }

    fn now() -> Wait {
        Wait::Look
    }

    fn soon() -> Wait {
        Wait::Until(soon_instant())
    }

    fn soon_instant() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(10))
    }

    fn go() -> bool {
        true
    }

    #[test]
    fn envelopes_round_trip_and_refuse_garbage() {
        let e = Envelope {
            context: 7,
            source: -2,
            tag: 1 << 20,
            kind: Kind::Sync,
        };
        assert_eq!(Envelope::decode(&e.encode()), Some(e));
        assert_eq!(Envelope::decode(&[0; 12]), None);
        let mut bad = e.encode();
        bad[12] = 9;
        assert_eq!(Envelope::decode(&bad), None);
    }

    #[test]
    fn takes_by_tag_keeping_the_rest_in_order() {
        let mut boxes = job(2);
        for (tag, body) in [(1, b"a"), (2, b"b"), (1, b"c"), (2, b"d")] {
            boxes[0]
                .outbox()
                .send(1, env(0, 0, tag), body, soon(), &mut go)
                .unwrap();
        }
        let b = &mut boxes[1];
        let got = b.take(want(0, 0, 2), soon(), &mut go).unwrap().unwrap();
        assert_eq!(got.payload(), b"b");
        let got = b
            .take(want(0, ANY_SOURCE, ANY_TAG), soon(), &mut go)
            .unwrap()
            .unwrap();
        assert_eq!((got.payload(), got.envelope.tag), (&b"a"[..], 1));
        let got = b.take(want(0, 0, 2), soon(), &mut go).unwrap().unwrap();
        assert_eq!(got.payload(), b"d");
        let got = b.take(want(0, 0, 1), soon(), &mut go).unwrap().unwrap();
        assert_eq!(got.payload(), b"c");
        assert!(b.take(want(0, 0, 1), now(), &mut go).unwrap().is_none());
    }

    #[test]
    fn contexts_never_match_each_other() {
        let mut boxes = job(2);
        boxes[0]
            .outbox()
            .send(1, env(1, 0, 0), b"collective", soon(), &mut go)
            .unwrap();
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 0), b"p2p", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        let got = b
            .take(want(0, ANY_SOURCE, ANY_TAG), soon(), &mut go)
            .unwrap()
            .unwrap();
        assert_eq!(got.payload(), b"p2p");
        let got = b.take(want(1, 0, 0), soon(), &mut go).unwrap().unwrap();
        assert_eq!(got.payload(), b"collective");
    }

    #[test]
    fn posted_receives_come_first_in_posting_order() {
        let mut boxes = job(2);
        let b = &mut boxes[1];
        let first = b.post(want(0, ANY_SOURCE, 5));
        let second = b.post(want(0, ANY_SOURCE, ANY_TAG));
        assert!(!b.arrived(first));
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 5), b"x", soon(), &mut go)
            .unwrap();
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 6), b"y", soon(), &mut go)
            .unwrap();
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 7), b"z", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        // A receive made now waits behind both posted ones.
        let got = b
            .take(want(0, ANY_SOURCE, ANY_TAG), soon(), &mut go)
            .unwrap()
            .unwrap();
        assert_eq!(got.payload(), b"z");
        assert_eq!(
            b.finish(second, now(), &mut go).unwrap().unwrap().payload(),
            b"y"
        );
        assert_eq!(
            b.finish(first, now(), &mut go).unwrap().unwrap().payload(),
            b"x"
        );
        assert!(matches!(
            b.finish(first, now(), &mut go),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn a_cancelled_receive_takes_nothing_and_one_that_matched_is_not_cancelled() {
        let mut boxes = job(2);
        let b = &mut boxes[1];
        let first = b.post(want(0, 0, 1));
        let second = b.post(want(0, 0, 1));
        assert!(b.cancel(first).unwrap());
        assert!(matches!(b.cancel(first), Err(Error::Invalid(_))));
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 1), b"m", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        assert_eq!(
            b.finish(second, soon(), &mut go)
                .unwrap()
                .unwrap()
                .payload(),
            b"m"
        );
        let third = b.post(want(0, 0, 2));
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 2), b"n", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        assert!(b.wait_message(soon(), &mut go).unwrap());
        assert!(!b.cancel(third).unwrap(), "its message came first");
        assert_eq!(
            b.finish(third, now(), &mut go).unwrap().unwrap().payload(),
            b"n"
        );
    }

    #[test]
    fn a_post_takes_what_is_pending() {
        let mut boxes = job(2);
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 3), b"early", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        assert!(b.peek(want(0, 0, 3), soon(), &mut go).unwrap().is_some());
        let id = b.post(want(0, 0, 3));
        assert!(b.arrived(id));
        assert!(b.peek(want(0, 0, 3), now(), &mut go).unwrap().is_none());
        assert_eq!(
            b.finish(id, now(), &mut go).unwrap().unwrap().payload(),
            b"early"
        );
    }

    #[test]
    fn peek_reports_without_taking() {
        let mut boxes = job(2);
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 9), b"12345", soon(), &mut go)
            .unwrap();
        let b = &mut boxes[1];
        let (e, n) = b
            .peek(want(0, ANY_SOURCE, ANY_TAG), soon(), &mut go)
            .unwrap()
            .unwrap();
        assert_eq!((e.source, e.tag, n), (0, 9, 5));
        assert_eq!(
            b.take(want(0, 0, 9), now(), &mut go)
                .unwrap()
                .unwrap()
                .payload(),
            b"12345"
        );
    }

    #[test]
    fn an_abort_fails_every_receive_after_it() {
        let mut boxes = job(2);
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 1), b"before", soon(), &mut go)
            .unwrap();
        assert!(boxes[0].outbox().try_abort(1, "rank 0 died").unwrap());
        let b = &mut boxes[1];
        // The wait for a message that never came meets the abort.
        match b.take(want(0, 0, 2), soon(), &mut go) {
            Err(Error::JobEnded(why)) => assert_eq!(why, "rank 0 died"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.ended(), Some("rank 0 died"));
        // A message that came before it is still received; nothing after it is.
        let got = b.take(want(0, 0, 1), now(), &mut go).unwrap().unwrap();
        assert_eq!(got.payload(), b"before");
        assert!(matches!(
            b.wait_message(now(), &mut go),
            Err(Error::JobEnded(_))
        ));
    }

    #[test]
    fn a_receive_times_out_with_nothing_sent() {
        let mut boxes = job(1);
        let b = &mut boxes[0];
        let got = b.take(
            want(0, ANY_SOURCE, ANY_TAG),
            Wait::Until(Some(Instant::now() + Duration::from_millis(5))),
            &mut go,
        );
        assert!(got.unwrap().is_none());
        assert!(!b.wait_message(now(), &mut go).unwrap());
    }

    #[test]
    fn bad_ranks_are_refused() {
        let boxes = job(2);
        assert!(matches!(
            boxes[0]
                .outbox()
                .send(2, env(0, 0, 0), b"", soon(), &mut go),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Mailbox::new(2, boxes[0].outbox()),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn small_and_large_messages_keep_their_order() {
        // Small ones go through the fastbox while it is free, the rest (and every large
        // one, several fragments long) through the inbox: the receiver sees them in order.
        let boxes = job(2);
        let mut it = boxes.into_iter();
        let (sender, mut receiver) = (it.next().unwrap(), it.next().unwrap());
        let t = std::thread::spawn(move || {
            for i in 0..3000u32 {
                let len = if i % 7 == 0 {
                    5000
                } else {
                    4 + (i as usize % 50)
                };
                let mut body = vec![(i % 251) as u8; len];
                body[..4].copy_from_slice(&i.to_le_bytes());
                assert!(sender
                    .outbox()
                    .send(1, env(0, 0, 0), &body, soon(), &mut go)
                    .unwrap());
            }
        });
        for i in 0..3000u32 {
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2)); // (let the fastbox and inbox fill)
            }
            let m = receiver
                .take(want(0, 0, 0), soon(), &mut go)
                .unwrap()
                .unwrap();
            assert_eq!(m.payload()[..4], i.to_le_bytes());
        }
        t.join().unwrap();
    }

    #[test]
    fn a_look_begins_no_message_longer_than_the_inbox_and_read_whole_does() {
        let mut boxes = job(2);
        let mut receiver = boxes.pop().unwrap();
        let sender = boxes.pop().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let t = std::thread::spawn({
            let big = big.clone();
            move || {
                let letter = sender.outbox().letter(env(0, 0, 0), &big).unwrap();
                assert!(!sender
                    .outbox()
                    .post(1, &letter, Wait::Look, &mut go)
                    .unwrap());
                assert!(sender.outbox().post(1, &letter, soon(), &mut go).unwrap());
            }
        });
        while !receiver.mid_message() {
            std::thread::sleep(Duration::from_millis(1)); // (its first fragments come)
        }
        assert!(receiver
            .take(want(0, 0, 0), Wait::Look, &mut go)
            .unwrap()
            .is_none());
        assert!(receiver.mid_message());
        assert!(receiver.read_whole(None, &mut go).unwrap());
        let m = receiver
            .take(want(0, 0, 0), Wait::Look, &mut go)
            .unwrap()
            .unwrap();
        assert_eq!(m.payload(), &big[..]);
        t.join().unwrap();
    }

    #[test]
    fn a_waiting_sender_drains_its_own_inbox_so_two_full_ranks_go_on() {
        // Both ranks send more than an inbox holds before receiving: each, waiting for
        // room, takes in its own mail, as MPI's eager sends let them.
        let boxes = job(2);
        let handles: Vec<_> = boxes
            .into_iter()
            .map(|mut b| {
                std::thread::spawn(move || {
                    let me = b.rank();
                    let peer = 1 - me;
                    let body = [7u8; 1000];
                    for i in 0..400u32 {
                        let letter = b
                            .outbox()
                            .letter(
                                env(0, me as i32, 0),
                                &[&i.to_le_bytes()[..], &body].concat(),
                            )
                            .unwrap();
                        loop {
                            let until =
                                Wait::Until(Some(Instant::now() + Duration::from_millis(1)));
                            if b.outbox().post(peer, &letter, until, &mut go).unwrap() {
                                break;
                            }
                            b.drain().unwrap();
                        }
                    }
                    for i in 0..400u32 {
                        let m = b
                            .take(want(0, peer as i32, 0), soon(), &mut go)
                            .unwrap()
                            .unwrap();
                        assert_eq!(m.payload()[..4], i.to_le_bytes());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_waiter_wakes_for_mail_or_when_told() {
        let boxes = job(2);
        let waiter = boxes[1].waiter();
        assert!(!waiter.ready());
        let t = std::thread::spawn({
            let waiter = waiter.clone();
            move || waiter.wait(|| false, soon_instant(), &mut go)
        });
        std::thread::sleep(Duration::from_millis(20));
        boxes[0]
            .outbox()
            .send(1, env(0, 0, 0), b"x", soon(), &mut go)
            .unwrap();
        t.join().unwrap().unwrap();
        assert!(waiter.ready());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut boxes = boxes;
        assert!(boxes[1].drain().unwrap() && !waiter.ready());
        let t = std::thread::spawn({
            let (waiter, flag) = (waiter.clone(), flag.clone());
            move || waiter.wait(|| flag.load(Ordering::SeqCst), soon_instant(), &mut go)
        });
        std::thread::sleep(Duration::from_millis(20));
        flag.store(true, Ordering::SeqCst);
        waiter.wake();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn ranks_on_threads_exchange_in_order() {
        let boxes = job(3);
        let handles: Vec<_> = boxes
            .into_iter()
            .map(|mut b| {
                std::thread::spawn(move || {
                    let me = b.rank() as i32;
                    for i in 0..500u32 {
                        for dest in 0..3 {
                            if dest != b.rank() {
                                b.outbox()
                                    .send(dest, env(0, me, 0), &i.to_le_bytes(), soon(), &mut go)
                                    .unwrap();
                            }
                        }
                    }
                    for source in (0..3).filter(|&s| s != me) {
                        for i in 0..500u32 {
                            let m = b
                                .take(want(0, source, 0), soon(), &mut go)
                                .unwrap()
                                .unwrap();
                            assert_eq!(m.payload(), i.to_le_bytes());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
