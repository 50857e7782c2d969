//! `_native.Mailbox`: a rank's mailbox (`paralelo_core::comm::Mailbox`) under
//! `paralelo.comm`, and the collectives' hot paths: a small object goes out pickled here
//! (`flat`) and comes back loaded here, and a barrier runs without returning to Python.
//!
//! A receive looks first (what is already there costs no clock), then watches the inbox
//! and fastboxes for up to `HELD` holding the GIL (a peer that is already there answers
//! in well under a microsecond, and letting go of the GIL costs about as much as a
//! message), then lets go of it. The rank's threads share the mailbox under a mutex held
//! only to look, never across a wait: a waiting thread sleeps on the inbox's bell, which
//! a thread that took messages in rings, so that each looks again for its own. A send
//! that waits for room in another rank's inbox takes in its own rank's mail meanwhile:
//! that rank may itself be waiting for room here.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use paralelo_core::comm::{
    Barrier, Envelope, Group, Kind, Letter, Mailbox, Message, Outbox, Pattern, Wait, Waiter,
};
use paralelo_core::sync::caller_pid;
use paralelo_core::{Error, Poll};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::channel::load_message;
use crate::door;
use crate::errors::{mpi_error, to_py, ERR_OTHER, ERR_TYPE};
use crate::flat;
use crate::sync::PyEvent;

/// How long a receive watches for its message holding the GIL before it lets go of it.
const HELD: Duration = Duration::from_micros(4);
/// The longest a waiting thread sleeps before it looks again on its own.
const SLICE: Duration = Duration::from_millis(5);
/// How often a send waiting for room takes in its own rank's mail.
const SEND_SLICE: Duration = Duration::from_millis(1);
/// Why a rank's wait ended when its launcher set the job's `aborted` event.
const ENDED: &str = "the job was ended by its launcher";

/// A job's transport (every rank's inbox, and the fastboxes between ranks), made by the
/// launcher before it forks the ranks.
#[pyclass(name = "PostOffice", module = "paralelo._native", frozen)]
pub(crate) struct PyPostOffice {
    outbox: Outbox,
}

#[pymethods]
impl PyPostOffice {
    /// The transport of a job of `ranks` ranks, each inbox a ring of `inbox_bytes`.
    #[new]
    fn new(ranks: usize, inbox_bytes: usize) -> PyResult<Self> {
        Ok(PyPostOffice {
            outbox: Outbox::create(ranks, inbox_bytes).map_err(to_py)?,
        })
    }

    #[getter]
    fn ranks(&self) -> usize {
        self.outbox.ranks()
    }

    /// Tells rank `rank` the job is over (its receives fail with `why`), if its inbox
    /// has room now: whether it went.
    fn abort(&self, rank: usize, why: &str) -> PyResult<bool> {
        self.outbox.try_abort(rank, why).map_err(to_py)
    }
}

#[pyclass(name = "Mailbox", module = "paralelo._native", frozen)]
pub(crate) struct PyMailbox {
    state: Mutex<Mailbox>,
    outbox: Outbox,
    waiter: Waiter,
    /// The mailbox's `moved` count as last published: a change tells waiting threads to
    /// look again.
    moved: AtomicU64,
    /// Threads of this process waiting on the inbox's bell.
    waiters: AtomicUsize,
    /// The launcher's event, set as it ends a failed job: a wait for room in a dead
    /// rank's inbox (which no abort message can reach) ends on it.
    aborted: Option<Py<PyEvent>>,
    rank: usize,
    /// The process the rank is: a process forked from it has a copy of the mailbox whose
    /// counts are stale (see `fastbox`), so it may not use it.
    pid: u32,
}

fn kind(k: u8) -> PyResult<Kind> {
    Kind::from_u8(k).ok_or_else(|| PyValueError::new_err(format!("no message kind {k}")))
}

fn envelope(context: i32, source: i32, tag: i32, kind: Kind) -> Envelope {
    Envelope {
        context,
        source,
        tag,
        kind,
    }
}

fn earlier(deadline: Option<Instant>, than: Instant) -> Instant {
    deadline.map_or(than, |d| d.min(than))
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| d <= Instant::now())
}

/// A poll for what runs holding the mailbox or the GIL: it stops only for the job's end.
fn ended_or(e: Error) -> PyErr {
    match e {
        Error::Interrupted => to_py(Error::JobEnded(ENDED.into())),
        e => to_py(e),
    }
}

/// Why the job ended, as the launcher's message says (taken in now, after what came
/// before it), or as its event does if the message could not reach the inbox.
fn ended_with(mailbox: &mut Mailbox) -> Error {
    if let Err(e) = mailbox.drain() {
        return e;
    }
    Error::JobEnded(mailbox.ended().unwrap_or(ENDED).to_string())
}

/// `(source, tag, kind, payload)`, as the Python side takes a message.
fn message_tuple<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyTuple>> {
    let e = m.envelope;
    (e.source, e.tag, e.kind as u8, PyBytes::new(py, m.payload())).into_pyobject(py)
}

/// A step that never waits has no use for a poll.
fn no_poll() -> bool {
    true
}

impl PyMailbox {
    fn aborted(&self) -> bool {
        self.aborted
            .as_ref()
            .is_some_and(|e| e.get().shared().is_set())
    }

    /// `poll`, also stopping (and setting `ended`) once the launcher ended the job.
    fn or_ended<'a>(&'a self, poll: Poll<'a>, ended: &'a Cell<bool>) -> impl FnMut() -> bool + 'a {
        move || {
            if self.aborted() {
                ended.set(true);
                return false;
            }
            poll()
        }
    }

    fn check_process(&self, py: Python<'_>) -> PyResult<()> {
        if caller_pid() == self.pid {
            return Ok(());
        }
        Err(mpi_error(
            py,
            ERR_OTHER,
            &format!(
                "MPI_ERR_OTHER: paralelo.comm is rank {}'s (pid {}): a process forked from it cannot use it",
                self.rank, self.pid
            ),
        ))
    }

    /// The mailbox: if `held` (the GIL held), only if no other thread has it now.
    fn turn(&self, held: bool) -> Option<MutexGuard<'_, Mailbox>> {
        if !held {
            return Some(self.state.lock().unwrap_or_else(PoisonError::into_inner));
        }
        match self.state.try_lock() {
            Ok(mailbox) => Some(mailbox),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// After a turn on the mailbox: if it took messages in, tells the threads waiting
    /// without it to look again.
    fn publish(&self, mailbox: &Mailbox) {
        let moved = mailbox.moved();
        if self.moved.swap(moved, SeqCst) != moved && self.waiters.load(SeqCst) > 0 {
            self.waiter.wake();
        }
    }

    /// One look: `step` on the mailbox (None: another thread has it, and `held`).
    fn look<T>(
        &self,
        held: bool,
        step: &mut impl FnMut(&mut Mailbox) -> paralelo_core::Result<Option<T>>,
    ) -> paralelo_core::Result<Option<Option<T>>> {
        let Some(mut mailbox) = self.turn(held) else {
            return Ok(None);
        };
        let got = step(&mut mailbox);
        self.publish(&mailbox);
        got.map(Some)
    }

    /// Runs `step` (a look at the mailbox, which never waits) until it gives a value, or
    /// once if not `block`, or until `timeout` passes (None: for ever).
    fn receive<T: Send>(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        mut step: impl FnMut(&mut Mailbox) -> paralelo_core::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        self.check_process(py)?;
        if let Some(Some(v)) = self.look(true, &mut step).map_err(ended_or)? {
            return Ok(Some(v));
        }
        if !block {
            return Ok(None);
        }
        let deadline = door::deadline(timeout)?;
        // Watch, holding the GIL, for what a peer that is there already sends at once.
        let until = earlier(deadline, Instant::now() + HELD);
        loop {
            if self.waiter.ready() {
                if let Some(Some(v)) = self.look(true, &mut step).map_err(ended_or)? {
                    return Ok(Some(v));
                }
            }
            if Instant::now() >= until {
                break;
            }
            std::hint::spin_loop();
        }
        door::blocking(py, None, |_, poll| {
            let ended = Cell::new(false);
            let mut check = self.or_ended(poll, &ended);
            let mut only_the_end = || !self.aborted();
            loop {
                {
                    let mut mailbox = self.turn(false).expect("a turn waited for");
                    let got = step(&mut mailbox);
                    self.publish(&mailbox);
                    if let Some(v) = got? {
                        return Ok(Some(v));
                    }
                    if mailbox.mid_message() {
                        // (A message of several fragments: read whole, holding the mailbox.)
                        let read = mailbox.read_whole(deadline, &mut only_the_end);
                        self.publish(&mailbox);
                        match read {
                            Err(Error::Interrupted) => return Err(ended_with(&mut mailbox)),
                            read => read?,
                        };
                        continue;
                    }
                }
                if past(deadline) {
                    return Ok(None);
                }
                let seen = self.moved.load(SeqCst);
                self.waiters.fetch_add(1, SeqCst);
                let until = Some(earlier(deadline, Instant::now() + SLICE));
                let waited =
                    self.waiter
                        .wait(|| self.moved.load(SeqCst) != seen, until, &mut check);
                self.waiters.fetch_sub(1, SeqCst);
                match waited {
                    Ok(()) | Err(Error::Timeout) => {}
                    Err(Error::Interrupted) if ended.get() => return Err(self.ended()),
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// The error of a wait the launcher's event ended: why, if its message came.
    fn ended(&self) -> Error {
        let mut mailbox = self.turn(false).expect("a turn waited for");
        let error = ended_with(&mut mailbox);
        self.publish(&mailbox);
        error
    }

    /// Sends `letter` to each of `dests` (world ranks), waiting for room if need be, and
    /// taking in this rank's own mail meanwhile.
    fn send_all(&self, py: Python<'_>, dests: &[usize], letter: &Letter) -> PyResult<()> {
        self.check_process(py)?;
        for &dest in dests {
            if self
                .outbox
                .post(dest, letter, Wait::Look, &mut no_poll)
                .map_err(to_py)?
            {
                continue;
            }
            door::blocking(py, None, |_, poll| {
                let ended = Cell::new(false);
                let mut check = self.or_ended(poll, &ended);
                loop {
                    let until = Wait::Until(Some(Instant::now() + SEND_SLICE));
                    match self.outbox.post(dest, letter, until, &mut check) {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(Error::Interrupted) if ended.get() => return Err(self.ended()),
                        Err(e) => return Err(e),
                    }
                    if let Some(mut mailbox) = self.turn(true) {
                        let drained = mailbox.drain();
                        self.publish(&mailbox);
                        drained?;
                    }
                }
            })?;
        }
        Ok(())
    }

    fn send_payload(
        &self,
        py: Python<'_>,
        dests: &[usize],
        e: Envelope,
        payload: &[u8],
    ) -> PyResult<()> {
        let letter = self.outbox.letter(e, payload).map_err(to_py)?;
        self.send_all(py, dests, &letter)
    }

    /// The next message matching `want`, waiting up to `timeout`.
    fn take_message(
        &self,
        py: Python<'_>,
        want: Pattern,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Message>> {
        self.receive(py, block, timeout, |mailbox| {
            mailbox.take(want, Wait::Look, &mut no_poll)
        })
    }

    /// The next message from `source` with `tag` on `context`, waiting for it.
    fn next_message(
        &self,
        py: Python<'_>,
        context: i32,
        source: i32,
        tag: i32,
    ) -> PyResult<Message> {
        let want = Pattern {
            context,
            source,
            tag,
        };
        Ok(self
            .take_message(py, want, true, None)?
            .expect("a wait for ever"))
    }

    /// The object in `m`, which a collective sent.
    fn object<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyAny>> {
        if m.envelope.kind != Kind::Object {
            return Err(mpi_error(
                py,
                ERR_TYPE,
                "MPI_ERR_TYPE: a buffer came where an object was awaited: did every rank call the same collective?",
            ));
        }
        load_message(py, m.payload())
    }
}

#[pymethods]
impl PyMailbox {
    /// Rank `rank`'s mailbox in the job of `office`; `aborted`: the launcher's event (a
    /// `SharedEvent`), or None for a world of one.
    #[new]
    #[pyo3(signature = (office, rank, aborted = None))]
    fn new(office: &PyPostOffice, rank: usize, aborted: Option<Py<PyEvent>>) -> PyResult<Self> {
        let mailbox = Mailbox::new(rank, &office.outbox).map_err(to_py)?;
        Ok(PyMailbox {
            outbox: mailbox.outbox().clone(),
            waiter: mailbox.waiter(),
            state: Mutex::new(mailbox),
            moved: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            aborted,
            rank,
            pid: caller_pid(),
        })
    }

    #[getter]
    fn rank(&self) -> usize {
        self.rank
    }

    #[getter]
    fn size(&self) -> usize {
        self.outbox.ranks()
    }

    /// Sends a message to world rank `dest` (waiting for room in its inbox).
    #[allow(clippy::too_many_arguments)] // (an envelope's fields, as Python passes them)
    fn send(
        &self,
        py: Python<'_>,
        dest: usize,
        context: i32,
        source: i32,
        tag: i32,
        kind: u8,
        payload: &[u8],
    ) -> PyResult<()> {
        self.send_payload(
            py,
            &[dest],
            envelope(context, source, tag, self::kind(kind)?),
            payload,
        )
    }

    /// Sends `obj` to each of `dests` (world ranks) if it is a flat value (pickled here,
    /// once for all); False, sending nothing, for anything else.
    fn send_flat(
        &self,
        py: Python<'_>,
        dests: Vec<usize>,
        context: i32,
        source: i32,
        tag: i32,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let Some(payload) = flat::dumps(obj) else {
            return Ok(false);
        };
        self.send_payload(
            py,
            &dests,
            envelope(context, source, tag, Kind::Object),
            &payload,
        )?;
        Ok(true)
    }

    /// The first message matching (`context`, `source`, `tag`) that no receive posted
    /// before claims, as `(source, tag, kind, payload)`; None if none came (not `block`,
    /// or `timeout` passed).
    #[pyo3(signature = (context, source, tag, block = true, timeout = None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        context: i32,
        source: i32,
        tag: i32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let want = Pattern {
            context,
            source,
            tag,
        };
        self.take_message(py, want, block, timeout)?
            .map(|m| message_tuple(py, &m))
            .transpose()
    }

    /// As `take` (waiting for ever), with the payload of an object (`OBJECT` or `SYNC`)
    /// loaded here: `(source, tag, kind, nbytes, object or payload, loaded)`, for `recv`;
    /// if unpickling failed, `loaded` is False and the object is the error (for the
    /// caller to raise once it acknowledged an `ssend`, whose sender waits for that).
    fn take_loaded<'py>(
        &self,
        py: Python<'py>,
        context: i32,
        source: i32,
        tag: i32,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let m = self.next_message(py, context, source, tag)?;
        let e = m.envelope;
        let payload = m.payload();
        let (value, loaded) = match e.kind {
            Kind::Object | Kind::Sync => match load_message(py, payload) {
                Ok(value) => (value, true),
                Err(error) => (error.into_value(py).into_bound(py).into_any(), false),
            },
            _ => (PyBytes::new(py, payload).into_any(), true),
        };
        (e.source, e.tag, e.kind as u8, payload.len(), value, loaded).into_pyobject(py)
    }

    /// The object a collective's message from `source` with `tag` holds (waiting for it).
    fn take_object<'py>(
        &self,
        py: Python<'py>,
        context: i32,
        source: i32,
        tag: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = self.next_message(py, context, source, tag)?;
        Self::object(py, &m)
    }

    /// Every rank's object, in rank order, from a communicator's `size` ranks: `own` at
    /// `rank`, the others' messages with `tag`.
    fn collect<'py>(
        &self,
        py: Python<'py>,
        context: i32,
        size: i32,
        rank: i32,
        tag: i32,
        own: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for r in 0..size {
            if r == rank {
                out.append(own)?;
                continue;
            }
            out.append(self.take_object(py, context, r, tag)?)?;
        }
        Ok(out)
    }

    /// A barrier among the communicator whose world ranks are `ranks` (this rank at
    /// `rank`), its messages on `context` with `tag`.
    fn barrier(
        &self,
        py: Python<'_>,
        ranks: Vec<usize>,
        rank: usize,
        context: i32,
        tag: i32,
    ) -> PyResult<()> {
        let group = Group {
            ranks: &ranks,
            rank,
            context,
        };
        let mut barrier = Barrier::new();
        self.receive(py, true, None, |mailbox| {
            Ok(barrier
                .advance(mailbox, &group, tag, Wait::Look, &mut no_poll)?
                .then_some(()))
        })?;
        Ok(())
    }

    /// `(source, tag, nbytes)` of the first message matching, left to be received; None
    /// if none came (not `block`).
    fn peek(
        &self,
        py: Python<'_>,
        context: i32,
        source: i32,
        tag: i32,
        block: bool,
    ) -> PyResult<Option<(i32, i32, usize)>> {
        let want = Pattern {
            context,
            source,
            tag,
        };
        let got = self.receive(py, block, None, |mailbox| {
            mailbox.peek(want, Wait::Look, &mut no_poll)
        })?;
        Ok(got.map(|(e, n)| (e.source, e.tag, n)))
    }

    /// Posts a receive (irecv): it gets the first matching message not taken yet,
    /// before any receive made after it. Its id is for `finish`.
    fn post(&self, py: Python<'_>, context: i32, source: i32, tag: i32) -> PyResult<u64> {
        self.check_process(py)?;
        let want = Pattern {
            context,
            source,
            tag,
        };
        Ok(py.detach(|| self.turn(false).expect("a turn waited for").post(want)))
    }

    /// Cancels posted receive `id` if no message matched it yet: whether it did (False
    /// for one whose message came, or that was cancelled already).
    fn cancel(&self, py: Python<'_>, id: u64) -> PyResult<bool> {
        self.check_process(py)?;
        match py.detach(|| self.turn(false).expect("a turn waited for").cancel(id)) {
            Ok(cancelled) => Ok(cancelled),
            Err(Error::Invalid(_)) => Ok(false), // (cancelled before, or finished)
            Err(e) => Err(to_py(e)),
        }
    }

    /// Posted receive `id`'s message as `take` gives it, waiting for it if `block`; None
    /// if it has not come.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        block: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.receive(py, block, None, |mailbox| {
            mailbox.finish(id, Wait::Look, &mut no_poll)
        })?
        .map(|m| message_tuple(py, &m))
        .transpose()
    }

    /// A count that changes whenever any thread of the rank takes messages in: read it
    /// before looking at requests, and give it to `wait_message`.
    #[getter]
    fn moved(&self) -> u64 {
        self.moved.load(SeqCst)
    }

    /// Waits until messages were taken in since `moved` was `seen` (by this thread or
    /// another), filing them: what waits for any of several requests does, since only a
    /// message completes one.
    fn wait_message(&self, py: Python<'_>, seen: u64) -> PyResult<()> {
        self.receive(py, true, None, |mailbox| {
            mailbox.wait_message(Wait::Look, &mut no_poll)?;
            Ok((mailbox.moved() != seen).then_some(()))
        })?;
        Ok(())
    }
}
