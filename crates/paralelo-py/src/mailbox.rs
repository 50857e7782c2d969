//! `_native.Mailbox`: a rank's mailbox (`paralelo_core::comm::Mailbox`) under
//! `paralelo.comm`, and the collectives' hot paths: a small object goes out pickled here
//! (`flat`) and comes back loaded here, and a barrier runs without returning to Python.
//!
//! A wait first spins a few microseconds holding the GIL (a peer that is already there
//! answers in well under one, and letting go of the GIL costs about as much as a whole
//! message), then lets go of it. Receives of several threads of one rank take turns on
//! the mailbox, each holding it for at most `SLICE` at a time, so that one waiting for a
//! message never keeps another from the one it wants. Sends need no turn.
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use paralelo_core::comm::{
    Barrier, Envelope, Group, Kind, Mailbox, Message, Outbox, Pattern, Wait,
};
use paralelo_core::{Error, Poll};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::channel::load_message;
use crate::door;
use crate::errors::{mpi_error, to_py, ERR_TYPE};
use crate::flat;
use crate::sync::PyEvent;

/// How long a wait spins holding the GIL before it lets go of it.
const HELD: Duration = Duration::from_micros(5);
/// The longest a waiting receive keeps the mailbox from the rank's other threads.
const SLICE: Duration = Duration::from_millis(20);
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
    /// The launcher's event, set as it ends a failed job: a wait for room in a dead
    /// rank's inbox (which no abort message can reach) ends on it.
    aborted: Option<Py<PyEvent>>,
    rank: usize,
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

/// A held wait's error: its poll stops it only when the job's `aborted` event is set.
fn ended_or(e: Error) -> PyErr {
    match e {
        Error::Interrupted => to_py(Error::JobEnded(ENDED.into())),
        e => to_py(e),
    }
}

/// `(source, tag, kind, payload)`, as the Python side takes a message.
fn message_tuple<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyTuple>> {
    let e = m.envelope;
    (e.source, e.tag, e.kind as u8, PyBytes::new(py, m.payload())).into_pyobject(py)
}

impl PyMailbox {
    fn aborted(&self) -> bool {
        self.aborted
            .as_ref()
            .is_some_and(|e| e.get().shared().is_set())
    }

    /// The mailbox, for a receive: `held` (holding the GIL), only if no other thread has
    /// it (None then), else waiting for it.
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

    /// Runs `step` until it gives a value, or once if not `block`, or until `timeout`
    /// passes (None: for ever). `step(held, wait, poll)` says None when its `wait` ran out
    /// first, and is called again to go on; `held`: it runs holding the GIL (so it must
    /// not wait for a lock another thread may hold while that one waits for the GIL).
    fn wait<T: Send>(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        mut step: impl FnMut(bool, Wait, Poll<'_>) -> paralelo_core::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        let mut poll = || !self.aborted();
        // A look first: what is already there is taken without reading a clock.
        match step(true, Wait::Look, &mut poll) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) if !block => return Ok(None),
            Ok(None) => {}
            Err(e) => return Err(ended_or(e)),
        }
        let deadline = door::deadline(timeout)?;
        let spin = Wait::Briefly(earlier(deadline, Instant::now() + HELD));
        match step(true, spin, &mut poll) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) if past(deadline) => return Ok(None),
            Ok(None) => {}
            Err(e) => return Err(ended_or(e)),
        }
        door::blocking(py, None, |_, poll| {
            let mut ended = false;
            let mut check = || {
                if self.aborted() {
                    ended = true;
                    return false;
                }
                poll()
            };
            loop {
                let until = Wait::Until(Some(earlier(deadline, Instant::now() + SLICE)));
                match step(false, until, &mut check) {
                    Ok(Some(v)) => return Ok(Some(v)),
                    Ok(None) if past(deadline) => return Ok(None),
                    Ok(None) => {}
                    Err(Error::Interrupted) if ended => return Err(Error::JobEnded(ENDED.into())),
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// As `wait`, for a step on the mailbox (a receive's).
    fn receive<T: Send>(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        mut step: impl FnMut(&mut Mailbox, Wait, Poll<'_>) -> paralelo_core::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        self.wait(py, block, timeout, |held, wait, poll| {
            match self.turn(held) {
                Some(mut mailbox) => step(&mut mailbox, wait, poll),
                None => Ok(None),
            }
        })
    }

    /// Sends `payload` to each of `dests` (world ranks), waiting for room if need be.
    fn send_all(
        &self,
        py: Python<'_>,
        dests: &[usize],
        e: Envelope,
        payload: &[u8],
    ) -> PyResult<()> {
        for &dest in dests {
            self.wait(py, true, None, |_, wait, poll| {
                Ok(self
                    .outbox
                    .send(dest, e, payload, wait, poll)?
                    .then_some(()))
            })?;
        }
        Ok(())
    }

    /// The next message matching `want`, waiting up to `timeout`.
    fn take_message(
        &self,
        py: Python<'_>,
        want: Pattern,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Message>> {
        self.receive(py, block, timeout, |mailbox, wait, poll| {
            mailbox.take(want, wait, poll)
        })
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
            state: Mutex::new(mailbox),
            aborted,
            rank,
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
        self.send_all(
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
        self.send_all(
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

    /// The object a collective's message from `source` with `tag` holds (waiting for it).
    fn take_object<'py>(
        &self,
        py: Python<'py>,
        context: i32,
        source: i32,
        tag: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let want = Pattern {
            context,
            source,
            tag,
        };
        let m = self
            .take_message(py, want, true, None)?
            .expect("a wait for ever");
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
        self.receive(py, true, None, |mailbox, wait, poll| {
            Ok(barrier
                .advance(mailbox, &group, tag, wait, poll)?
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
        let got = self.receive(py, block, None, |mailbox, wait, poll| {
            mailbox.peek(want, wait, poll)
        })?;
        Ok(got.map(|(e, n)| (e.source, e.tag, n)))
    }

    /// Posts a receive (irecv): it gets the first matching message not taken yet,
    /// before any receive made after it. Its id is for `finish`.
    fn post(&self, py: Python<'_>, context: i32, source: i32, tag: i32) -> u64 {
        let want = Pattern {
            context,
            source,
            tag,
        };
        py.detach(|| self.turn(false).expect("a turn waited for").post(want))
    }

    /// Cancels posted receive `id` if no message matched it yet: whether it did.
    fn cancel(&self, py: Python<'_>, id: u64) -> PyResult<bool> {
        py.detach(|| self.turn(false).expect("a turn waited for").cancel(id))
            .map_err(to_py)
    }

    /// Posted receive `id`'s message as `take` gives it, waiting for it if `block`; None
    /// if it has not come.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        id: u64,
        block: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.receive(py, block, None, |mailbox, wait, poll| {
            mailbox.finish(id, wait, poll)
        })?
        .map(|m| message_tuple(py, &m))
        .transpose()
    }

    /// Waits for the next message and files it: what waits for any of several requests
    /// does, since only a message completes one.
    fn wait_message(&self, py: Python<'_>) -> PyResult<()> {
        self.receive(py, true, None, |mailbox, wait, poll| {
            Ok(mailbox.wait_message(wait, poll)?.then_some(()))
        })?;
        Ok(())
    }
}
