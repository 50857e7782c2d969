#![allow(unsafe_code)]
//! A channel: one ring in its own segment that any thread of any process holding the
//! segment sends into and receives from — the memory under multiprocessing's `Queue`,
//! `SimpleQueue`, `JoinableQueue` and `Pipe`. See `README.md` beside this file.
//!
//! The ring stays single-producer single-consumer; many senders (and many receivers) take
//! turns through a [`SharedLock`] per end, held for one message and never re-entered. A sender or receiver that
//! dies, or gives up, half-way through a message leaves a mark in the header, so the next
//! one drops that message's fragments and every other message arrives whole.
use std::cell::UnsafeCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::primitive::{fence, AtomicU32, AtomicU64, Ordering};
use crate::ring::{
    Consumer, FrameHeader, Probe, Producer, RingHeader, RingPlace, MAX_CAPACITY, MIN_CAPACITY,
};
use crate::sync::{caller_ids, Doorbell, Poll, SharedLock, Taken};
pub use crate::sys::peer::{drain_pokes, hung_up, poke};
use crate::sys::{hold, thread};
use crate::{Error, Result, Segment};

const CHANNEL_MAGIC: u64 = 0x6e61_6863_6f6c_6170; // "palochan"
const CHANNEL_VERSION: u64 = 1;
const ALIGN: usize = 128;

/// `flags`: every message was counted in by [`Channel::reserve`] (a queue), so one
/// dropped half-received is counted out by whoever drops it.
const COUNTED: u32 = 1;
/// `flags`: every message was also counted unfinished (a `JoinableQueue`).
const JOINABLE: u32 = 2;

/// What a channel counts of its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// Nothing (a pipe).
    None,
    /// Messages in and out (a queue's `qsize` and `maxsize`).
    Counted,
    /// That, and messages not yet marked done (a `JoinableQueue`).
    Joinable,
}

/// `receiving`: no receiver is part-way through a message.
const WHOLE: u64 = 0;
/// `receiving`: a receiver released the first fragments of a message, not its end.
const MID: u64 = 1;
/// `receiving`: a receiver is about to release a message's end at stream position `p`
/// (positions are multiples of 8, so the mark's low bits tell it from the two above).
const fn ending_at(p: u64) -> u64 {
    p | 4
}

/// The channel's own words, before the ring. Written by any process that holds the
/// segment: atomics only, so a shared reference is sound whatever another process writes.
#[repr(C)]
struct ChannelHeader {
    magic: std::sync::atomic::AtomicU64,
    version: std::sync::atomic::AtomicU64,
    capacity: std::sync::atomic::AtomicU64,
    /// `COUNTED` and `JOINABLE`, written once by the creator.
    flags: std::sync::atomic::AtomicU32,
    /// Held by the sender writing a message (a tid: a dead holder is taken over).
    send_lock: CachePadded<SharedLock>,
    /// 1 from before a sender publishes a message's first fragment of several until its
    /// last is out: if it is still 1 when the next sender comes, that one first tells the
    /// receiver to drop the fragments (`TAG_ABORT`).
    sending_mid: CachePadded<AtomicU32>,
    /// Held by the receiver reading a message.
    recv_lock: CachePadded<SharedLock>,
    /// `WHOLE`, `MID` or `ending_at(p)`: how far the last receiver got through a message
    /// of several fragments, so the next one knows whether the fragments at the tail
    /// start a message or finish one whose start is gone.
    receiving: CachePadded<AtomicU64>,
    /// Announces data to receivers (the ring's data bell).
    data_bell: CachePadded<Doorbell>,
    /// Threads waiting on a file descriptor rather than the data bell: senders then also
    /// write a byte to the receiver's descriptor (see the bindings' `Connection`).
    fd_watchers: CachePadded<AtomicU32>,
    /// Messages counted in (a queue's puts) and out (its gets, and puts that failed),
    /// wrapping: their difference is a queue's `qsize`, bounded by its `maxsize`. Two
    /// words on two lines, so that putters and getters do not write the same line.
    puts: CachePadded<AtomicU32>,
    gets: CachePadded<AtomicU32>,
    /// Rung when a message is counted out, for senders waiting below `maxsize`.
    count_bell: CachePadded<Doorbell>,
    /// Messages put and not yet marked done (a `JoinableQueue`'s `task_done`).
    unfinished: CachePadded<AtomicU32>,
    /// Rung when `unfinished` reaches 0.
    done_bell: CachePadded<Doorbell>,
}

/// Where the parts sit in a channel's segment.
#[derive(Clone, Copy)]
struct Layout {
    ring: RingPlace,
    total: usize,
}

impl Layout {
    const HEADER: usize = std::mem::size_of::<ChannelHeader>().next_multiple_of(ALIGN);
    const RING_HEADER: usize = std::mem::size_of::<RingHeader>().next_multiple_of(ALIGN);

    fn new(capacity: usize) -> Result<Self> {
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "a channel's capacity must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes, not {capacity}"
            )));
        }
        Ok(Layout {
            ring: RingPlace {
                header: Self::HEADER,
                data: Self::HEADER + Self::RING_HEADER,
                capacity,
                data_bell: std::mem::offset_of!(ChannelHeader, data_bell),
                room_bell: None,
            },
            total: Self::HEADER + Self::RING_HEADER + capacity,
        })
    }
}

/// One process's handle on a channel. Its methods may be called from any thread; this
/// process's ring ends are only touched by the thread holding the matching shared lock.
/// No process-local lock: one inherited locked by a forked child, or taken on a path
/// that also waits for the interpreter, would hang a process that holds none of the
/// shared locks, and with it every process using the channel.
pub struct Channel {
    seg: Arc<Segment>,
    hdr: NonNull<ChannelHeader>,
    producer: UnsafeCell<Producer>,
    consumer: UnsafeCell<Consumer>,
    /// Reads the ring's indices without holding an end (`has_data`, `wait_data`).
    probe: Probe,
    /// This handle's hold on the channel (see [`Channel::let_go`]); None once let go.
    /// (Only ever try-locked: a copy inherited locked by a forked child must not hang it.)
    hold: Mutex<Option<OwnedFd>>,
}

// SAFETY: `hdr` points into `seg`, kept alive by the Arc; it is shared memory by design,
// touched only through atomics. Each ring end is touched only through a `Held`, which
// exists only while its thread holds the end's shared lock once: no two threads, of this
// process or any other, touch an end at the same time.
unsafe impl Send for Channel {}
// SAFETY: as above.
unsafe impl Sync for Channel {}

/// An end's shared lock, held once by this thread (never re-entered): while it lives,
/// this thread alone uses the end. Releases the lock when dropped, so every exit path of
/// a send or receive frees it.
struct Held<'a, T> {
    lock: &'a SharedLock,
    me: u32,
    end: &'a UnsafeCell<T>,
}

impl<T> Held<'_, T> {
    /// Takes `lock` by `deadline` (with no time left, one look: no waiter's mark for the
    /// holder's release to pay for); [`Error::Reentrant`] if this thread holds it already
    /// (a signal handler that uses the channel the thread was using when it ran).
    fn take<'a>(
        lock: &'a SharedLock,
        end: &'a UnsafeCell<T>,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<Held<'a, T>> {
        let (_, me) = caller_ids();
        let taken = if past(deadline) {
            lock.try_acquire_or_recover(me, true)
                .ok_or(Error::Timeout)?
        } else {
            lock.acquire(me, true, deadline, poll)?
        };
        Self::taken(lock, end, me, taken)
    }

    /// Takes `lock` if it is free now (no look for a dead holder: that costs system calls);
    /// None if it is not.
    fn try_take<'a>(lock: &'a SharedLock, end: &'a UnsafeCell<T>) -> Result<Option<Held<'a, T>>> {
        let (_, me) = caller_ids();
        match lock.try_acquire(me, true) {
            None => Ok(None),
            Some(taken) => Self::taken(lock, end, me, taken).map(Some),
        }
    }

    fn taken<'a>(
        lock: &'a SharedLock,
        end: &'a UnsafeCell<T>,
        me: u32,
        how: Taken,
    ) -> Result<Held<'a, T>> {
        if how == Taken::Again {
            let _ = lock.release(me, true);
            return Err(Error::Reentrant);
        }
        Ok(Held { lock, me, end })
    }

    fn get(&mut self) -> &mut T {
        // SAFETY: this thread holds the end's shared lock at depth one (`taken` refused a
        // second level), and every use of the end goes through a `Held`: nothing else
        // touches it until this guard drops. `&mut self` keeps this borrow unique.
        unsafe { &mut *self.end.get() }
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        // We took it (recursive, by tid), so the release cannot fail.
        let _ = self.lock.release(self.me, true);
    }
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| d <= Instant::now())
}

impl Channel {
    /// A new channel whose ring holds `capacity` bytes (a power of two), counting its
    /// messages as `counting` says.
    pub fn create(capacity: usize, counting: Counting) -> Result<Self> {
        let layout = Layout::new(capacity)?;
        let seg = Arc::new(Segment::create("paralelo-channel", layout.total)?);
        let hdr = NonNull::new(seg.at::<ChannelHeader>(0)?).expect("mapping is non-null");
        // SAFETY: in bounds and aligned (`Segment::at`); all atomics.
        let h = unsafe { hdr.as_ref() };
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        // The fd is shared only after this (which orders these stores for the others).
        h.magic.store(CHANNEL_MAGIC, relaxed);
        h.version.store(CHANNEL_VERSION, relaxed);
        h.capacity.store(capacity as u64, relaxed);
        h.flags.store(
            match counting {
                Counting::None => 0,
                Counting::Counted => COUNTED,
                Counting::Joinable => COUNTED | JOINABLE,
            },
            relaxed,
        );
        Self::with(seg, hdr, layout, true)
    }

    /// The channel in a segment another process created and passed to us.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self> {
        // Mapped through a description of our own: `fd` may be a hold passed to us
        // (`hold_for_passing`), which a copy kept in the segment would keep held.
        let seg = Arc::new(match hold::reopen(fd) {
            Ok(own) => Segment::open(own.as_fd())?,
            Err(_) => Segment::open(fd)?, // (no /proc: no holds, see `let_go`)
        });
        let hdr = NonNull::new(seg.at::<ChannelHeader>(0)?).expect("mapping is non-null");
        // SAFETY: as in `create`.
        let h = unsafe { hdr.as_ref() };
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if h.magic.load(relaxed) != CHANNEL_MAGIC || h.version.load(relaxed) != CHANNEL_VERSION {
            return Err(Error::BadLayout { what: "channel" });
        }
        let capacity = usize::try_from(h.capacity.load(relaxed)).unwrap_or(usize::MAX);
        let layout = Layout::new(capacity).map_err(|_| Error::BadLayout { what: "channel" })?;
        if seg.len() < layout.total {
            return Err(Error::BadLayout { what: "channel" });
        }
        Self::with(seg, hdr, layout, false)
    }

    fn with(
        seg: Arc<Segment>,
        hdr: NonNull<ChannelHeader>,
        layout: Layout,
        init: bool,
    ) -> Result<Self> {
        let consumer = Consumer::new(seg.clone(), layout.ring, init)?;
        Ok(Channel {
            // (None without /proc: the channel's unread messages are then let go of
            // only as the program ends.)
            hold: Mutex::new(hold::take(seg.fd()).ok()),
            producer: UnsafeCell::new(Producer::new(seg.clone(), layout.ring, init)?),
            probe: consumer.probe(),
            consumer: UnsafeCell::new(consumer),
            seg,
            hdr,
        })
    }

    fn header(&self) -> &ChannelHeader {
        // SAFETY: in bounds and aligned (checked by `Segment::at`), alive as long as `seg`;
        // every field is an atomic, so a shared reference is sound whatever others write.
        unsafe { self.hdr.as_ref() }
    }

    fn flags(&self) -> u32 {
        self.header()
            .flags
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The segment's descriptor (for identity: pass [`Channel::hold_for_passing`] on).
    pub fn raw_fd(&self) -> RawFd {
        self.seg.raw_fd()
    }

    /// A descriptor to pass the channel to another process with: a hold of its own, so
    /// the channel counts as held from now until the receiver opens it and closes this
    /// (or, if it never arrives, until every copy of it is closed).
    pub fn hold_for_passing(&self) -> Result<OwnedFd> {
        hold::take(self.seg.fd()).or_else(|_| {
            // (No /proc: a plain duplicate, which holds nothing.)
            self.seg
                .fd()
                .try_clone_to_owned()
                .map_err(|e| Error::os("dup", e))
        })
    }

    /// Lets go of this handle's hold. If no other handle holds the channel, in any
    /// process (handles of dead processes hold nothing), returns the messages left in
    /// it, which no one will ever read: their owner lets go of what they hold elsewhere
    /// (the arena blocks of big buffers). Else, or if called again, an empty list.
    pub fn let_go(&self) -> Vec<Vec<u8>> {
        let Some(hold) = self.hold.try_lock().ok().and_then(|mut h| h.take()) else {
            return Vec::new();
        };
        let Some(_alone) = hold::release(hold, self.seg.fd()) else {
            return Vec::new();
        };
        // No sender is left: every message is whole in the ring (a large one in
        // fragments, which `try_recv` leaves to `recv`), and a look is enough.
        let mut left = Vec::new();
        loop {
            let mut msg = Vec::new();
            match self.recv(&mut msg, Some(Instant::now()), &mut || true) {
                Ok(()) => left.push(msg),
                Err(_) => return left,
            }
        }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.header()
            .capacity
            .load(std::sync::atomic::Ordering::Relaxed) as usize
    }

    /// Sends `payload` whole if the send lock is free and the ring has room now; `false`
    /// (nothing sent) otherwise, or if it needs several fragments. Never waits, and never
    /// makes a system call (a busy lock's holder is not looked for).
    pub fn try_send(&self, payload: &[u8]) -> Result<bool> {
        let h = self.header();
        let Some(mut held) = Held::try_take(&h.send_lock, &self.producer)? else {
            return Ok(false);
        };
        let p = held.get();
        p.resync(h.sending_mid.load(Ordering::Acquire) != 0)?;
        let sent = p.try_send(&FrameHeader::default(), payload)?;
        if sent {
            self.sent_whole(p);
        }
        Ok(sent)
    }

    /// Sends `payload` (any size), waiting for the send lock and for room. `deadline`
    /// bounds the wait until the message starts going out; once its first fragment is
    /// out, the rest follows however long the receivers take (only `poll` stops it, and
    /// the next sender then tells the receiver to drop the fragments).
    ///
    /// `wake`: an eventfd to poke (see [`Self::fd_watched`]) whenever the receivers are
    /// told of data, between fragments too: a receiver waiting on descriptors must drain
    /// the first fragments for the rest to fit.
    pub fn send(
        &self,
        payload: &[u8],
        deadline: Option<Instant>,
        poll: Poll<'_>,
        wake: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let h = self.header();
        let mut held = Held::take(&h.send_lock, &self.producer, deadline, poll)?;
        let p = held.get();
        p.resync(h.sending_mid.load(Ordering::Acquire) != 0)?;
        if payload.len() > p.max_fragment() {
            // Before the first fragment is out: a sender that dies after it leaves the mark.
            h.sending_mid.store(1, Ordering::SeqCst);
        }
        let mut sent = 0;
        while !p.offer(&FrameHeader::default(), payload, &mut sent)? {
            p.notify(); // the receiver must drain what is in before more fits
            self.wake_watchers(wake);
            let need = p.room_needed(payload, sent);
            let until = if sent == 0 { deadline } else { None };
            p.probe().wait_room_after(p.head(), need, until, poll)?;
        }
        self.sent_whole(p);
        Ok(())
    }

    /// After a whole message is published: clears a half-sent mark (ours, or one an
    /// earlier sender left that our abort frame answered) and wakes the receivers.
    fn sent_whole(&self, p: &Producer) {
        let h = self.header();
        if h.sending_mid.load(Ordering::Relaxed) != 0 {
            // Release: a receiver that reads 0 sees the last fragment published.
            h.sending_mid.store(0, Ordering::Release);
        }
        p.notify();
    }

    /// Pokes `wake` if a receiver waits on descriptors.
    pub fn wake_watchers(&self, wake: Option<BorrowedFd<'_>>) {
        if let Some(wake) = wake {
            if self.fd_watched() {
                poke(wake);
            }
        }
    }

    /// Leaves eventfd `wake` readable exactly when data is waiting (drained, then poked
    /// back if some is: the drain comes first, so a poke after the look is not lost);
    /// whether data is waiting. For receivers that wait on descriptors.
    pub fn settle_wake(&self, wake: BorrowedFd<'_>) -> bool {
        drain_pokes(wake);
        let ready = self.has_data();
        if ready {
            poke(wake);
        }
        ready
    }

    /// Wakes the receivers sleeping on the data bell, to look again (a pipe's end was
    /// closed: they check whether it was the last).
    pub fn wake_receivers(&self) {
        self.header().data_bell.ring();
    }

    /// Receives one message into `out` (cleared first) if one is complete in the ring and
    /// the receive lock is free; `false` otherwise. Never waits, never reads part of a
    /// message, never makes a system call.
    pub fn try_recv(&self, out: &mut Vec<u8>) -> Result<bool> {
        let h = self.header();
        let Some(mut held) = Held::try_take(&h.recv_lock, &self.consumer)? else {
            return Ok(false);
        };
        let c = held.get();
        self.resync_receiver(c)?;
        if c.in_partial() {
            return Ok(false); // (the rest of a message another receiver left: for `recv`)
        }
        out.clear();
        self.take_one(c, out, true)
    }

    /// Receives one message into `out` (cleared first), waiting until `deadline`
    /// ([`Error::Timeout`]) for one to start; a message that started arriving is read
    /// whole, as multiprocessing's receive reads it.
    pub fn recv(&self, out: &mut Vec<u8>, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        let mut held = Held::take(&h.recv_lock, &self.consumer, deadline, poll)?;
        let c = held.get();
        self.resync_receiver(c)?;
        out.clear();
        loop {
            if self.take_one(c, out, false)? {
                return Ok(());
            }
            if c.in_partial() {
                if self.take_rest(c, out, poll)? {
                    return Ok(());
                }
                continue;
            }
            if past(deadline) {
                return Err(Error::Timeout); // (not even the wait's spin)
            }
            c.wait(deadline, poll)?;
        }
    }

    /// Re-reads the shared tail, and whether the last receiver left part-way through a
    /// message (its rest is then dropped).
    fn resync_receiver(&self, c: &mut Consumer) -> Result<()> {
        let h = self.header();
        let mark = h.receiving.load(Ordering::Acquire);
        c.resync(false)?;
        let mid = match mark {
            WHOLE => false,
            MID => true,
            // Its end was about to be released: if the tail is not there, it was not.
            at => at & !7 != c.tail(),
        };
        if mid {
            c.resync(true)?;
            h.receiving.store(MID, Ordering::Release);
        } else if mark != WHOLE {
            h.receiving.store(WHOLE, Ordering::Release);
        }
        Ok(())
    }

    /// Reads at most one message, and publishes how far it read, marking the header
    /// first so that a receiver dying at any point leaves a true account (see
    /// `receiving`). Whether a message was delivered.
    fn take_one(&self, c: &mut Consumer, out: &mut Vec<u8>, whole_only: bool) -> Result<bool> {
        let h = self.header();
        let before = c.tail();
        let was_mid = c.in_partial();
        let got = c.drain_held(1, out, |_, _| {}, whole_only);
        let moved = c.tail() != before;
        if moved && c.in_partial() {
            h.receiving.store(MID, Ordering::SeqCst);
        } else if moved && was_mid {
            h.receiving.store(ending_at(c.tail()), Ordering::SeqCst);
        }
        c.release();
        if moved && was_mid && !c.in_partial() {
            h.receiving.store(WHOLE, Ordering::Release);
        }
        self.count_lost(c.take_dropped());
        let got = got? == 1;
        if got && self.flags() & COUNTED != 0 {
            self.count_out(1);
        }
        Ok(got)
    }

    /// Waits for the rest of a message whose first fragments were read, however long it
    /// takes (only `poll` stops it): `true` once delivered; `false` if it was dropped, its
    /// sender having left half-way (died, or was interrupted), or aborted it.
    fn take_rest(&self, c: &mut Consumer, out: &mut Vec<u8>, poll: Poll<'_>) -> Result<bool> {
        while c.in_partial() {
            let mut abandoned = false;
            let mut check = || {
                if self.sender_left() {
                    abandoned = true;
                    return false;
                }
                poll()
            };
            match c.wait(None, &mut check) {
                Ok(()) => {}
                Err(Error::Interrupted) if abandoned => {
                    if !c.has_data() {
                        c.drop_message();
                        self.count_lost(c.take_dropped());
                        self.header().receiving.store(WHOLE, Ordering::Release);
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
            if self.take_one(c, out, false)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a message is half-sent with nobody sending it: its sender died holding the
    /// send lock, or gave up and released it.
    fn sender_left(&self) -> bool {
        let h = self.header();
        if h.send_lock.holder().is_some_and(thread::exists) {
            return false;
        }
        // With the lock's word read free (or its holder dead): whatever its last holder
        // published before releasing it (its last fragment, then the cleared mark) is seen.
        fence(Ordering::Acquire);
        h.sending_mid.load(Ordering::Acquire) != 0
    }

    /// Counts out messages dropped half-received: nobody will get them, nor mark them
    /// done.
    fn count_lost(&self, n: u32) {
        if n == 0 {
            return;
        }
        let flags = self.flags();
        if flags & COUNTED != 0 {
            self.count_out(n);
        }
        if flags & JOINABLE != 0 {
            for _ in 0..n {
                let _ = self.task_done();
            }
        }
    }

    /// Whether a message (or the start of one) is waiting.
    pub fn has_data(&self) -> bool {
        self.probe.has_data()
    }

    /// Waits until data is published, taking none (see [`crate::Doorbell::wait_until`]).
    pub fn wait_data(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.probe.wait_data(deadline, poll)
    }

    /// Waits until data is published or `also()` holds, taking none: for a receiver that
    /// also takes messages from elsewhere, whose senders call [`Self::wake_receivers`].
    pub fn wait_data_or(
        &self,
        also: impl Fn() -> bool,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        self.probe.wait_data_or(also, deadline, poll)
    }

    /// Counts one more thread waiting on a descriptor for this channel's data (`on`), or
    /// one fewer: while any does, [`Self::fd_watched`] tells senders to write a byte to it.
    /// A watcher checks for data after registering, so no message slips between.
    pub fn watch(&self, on: bool) {
        let w = &self.header().fd_watchers;
        if on {
            w.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = w.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        // Pairs with the fence in `fd_watched`: a sender either sees us or we see its data.
        fence(Ordering::SeqCst);
    }

    /// After a send: whether a receiver waits on a descriptor and must be woken there.
    pub fn fd_watched(&self) -> bool {
        fence(Ordering::SeqCst);
        self.header().fd_watchers.load(Ordering::Relaxed) > 0
    }

    /// Counts a message in (a queue's put), and unfinished in a joinable channel: waits
    /// while `max` (0: no bound) are in. Before the message is sent, so that no receiver
    /// counts it out (or marks it done) first.
    pub fn reserve(&self, max: u32, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.count_in(max, deadline, poll)?;
        if self.flags() & JOINABLE != 0 {
            self.header().unfinished.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn count_in(&self, max: u32, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        if max == 0 {
            h.puts.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        loop {
            let puts = h.puts.load(Ordering::Relaxed);
            if puts.wrapping_sub(h.gets.load(Ordering::Relaxed)) < max {
                if h.puts
                    .compare_exchange(
                        puts,
                        puts.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if past(deadline) {
                return Err(Error::Timeout); // (not even the wait's spin)
            }
            h.count_bell
                .wait_until(|| self.count() < max, deadline, poll)?;
        }
    }

    /// Undoes a `reserve` whose message will never be sent (its pickling failed). A
    /// counted channel counts out what it delivers or drops by itself.
    pub fn unreserve(&self) {
        self.count_lost(1);
    }

    fn count_out(&self, n: u32) {
        let h = self.header();
        h.gets.fetch_add(n, Ordering::Relaxed);
        h.count_bell.ring();
    }

    /// Messages counted in and not yet out.
    pub fn count(&self) -> u32 {
        let h = self.header();
        // Gets first: a get counted after its put was read would show one too few, never
        // a wrapped-around "minus one".
        let gets = h.gets.load(Ordering::Relaxed);
        let puts = h.puts.load(Ordering::Relaxed);
        match puts.wrapping_sub(gets) {
            n if n > u32::MAX / 2 => 0,
            n => n,
        }
    }

    /// Marks one message done; [`Error::Invalid`] if none is pending.
    pub fn task_done(&self) -> Result<()> {
        let h = self.header();
        let left = h
            .unfinished
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::Invalid("task_done() called too many times".into()))?;
        if left == 1 {
            h.done_bell.ring();
        }
        Ok(())
    }

    /// Messages not yet marked done.
    pub fn unfinished(&self) -> u32 {
        self.header().unfinished.load(Ordering::Acquire)
    }

    /// Waits until every message put was marked done.
    pub fn wait_finished(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let h = self.header();
        h.done_bell
            .wait_until(|| h.unfinished.load(Ordering::Acquire) == 0, deadline, poll)
    }
}

#[cfg(test)]
mod tests;
