//! `_native.Channel`: the engine's [`Channel`], under `paralelo.Queue`, `SimpleQueue`,
//! `JoinableQueue` and `Pipe`'s connections. Payloads are bytes the Python side pickled.
//! A pipe's connection names its socket (`peer`): the peer's end closed everywhere
//! ends a wait (EOFError for a receive, BrokenPipeError for a send), and receivers that
//! wait on the socket's descriptor are poked through it.
use std::os::fd::BorrowedFd;

use paralelo_core::channel::{hung_up, poke};
use paralelo_core::{Channel, Error};
use pyo3::exceptions::{PyBrokenPipeError, PyEOFError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes};

use crate::door;
use crate::errors::to_py;

/// `pickle.dumps` and `pickle.loads`, looked up once: a queue's put and get call them
/// from here, which saves a Python call each on a path of well under a microsecond.
static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// The pickle protocol of messages (the highest: 5).
const PROTOCOL: u8 = 5;

#[pyclass(name = "Channel", module = "paralelo._native", frozen)]
pub(crate) struct PyChannel {
    inner: Channel,
}

/// How a wait with a peer ended.
enum Waited<T> {
    Done(T),
    PeerGone,
}

/// A borrowed socket descriptor, or None for -1.
fn socket(fd: i32) -> Option<BorrowedFd<'static>> {
    // SAFETY: the Python side passes the descriptor of a socket object it keeps open for
    // as long as the call runs (the connection holding it); an fd closed by a racing
    // thread makes the poll report POLLNVAL, taken as "gone", never undefined behaviour.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Runs a blocking wait whose poll also ends it when `peer`'s other end is gone.
fn with_peer<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    peer: i32,
    wait: impl FnOnce(Option<std::time::Instant>, paralelo_core::Poll<'_>) -> paralelo_core::Result<T>
        + Send,
) -> PyResult<Waited<T>> {
    let peer = socket(peer);
    door::blocking(py, timeout, |deadline, poll| {
        let mut gone = false;
        let mut check = || {
            if peer.is_some_and(hung_up) {
                gone = true;
                return false;
            }
            poll()
        };
        match wait(deadline, &mut check) {
            Err(Error::Interrupted) if gone => Ok(Waited::PeerGone),
            other => other.map(Waited::Done),
        }
    })
}

#[pymethods]
impl PyChannel {
    /// A new channel whose ring holds `capacity` bytes (a power of two).
    #[new]
    #[pyo3(signature = (capacity = 1 << 20))]
    fn new(capacity: usize) -> PyResult<Self> {
        Ok(PyChannel {
            inner: Channel::create(capacity).map_err(to_py)?,
        })
    }

    /// The channel whose segment is `fd` (duplicated: the caller keeps its own).
    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!("bad fd {fd}")));
        }
        // SAFETY: `Channel::open` only duplicates the fd during this call; an invalid fd
        // makes that dup fail with EBADF, reported as OSError.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(PyChannel {
            inner: Channel::open(fd).map_err(to_py)?,
        })
    }

    /// The segment's descriptor (this object's own: duplicate it to pass it on).
    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    /// The largest message that goes as one frame (longer ones stream in fragments).
    #[getter]
    fn max_whole(&self) -> usize {
        self.inner.max_whole()
    }

    /// Sends `data` whole now if nothing is in the way (the send lock free, room in the
    /// ring, one frame); False (nothing sent) otherwise. Never waits. `peer`: a socket to
    /// poke if a receiver waits on its descriptor.
    #[pyo3(signature = (data, peer = -1))]
    fn try_send(&self, data: &[u8], peer: i32) -> PyResult<bool> {
        let sent = self.inner.try_send(data).map_err(to_py)?;
        if sent {
            self.poke(peer);
        }
        Ok(sent)
    }

    /// A queue's put when nothing is in the way: counts `obj` in (unless `maxsize` are
    /// in), pickles it (by reference, with the standard pickler), counts it unfinished
    /// (`joinable`) and sends it. True once sent; its pickle (bytes, counted in and
    /// unfinished) if the ring has no room now or the send lock is busy; None (nothing
    /// counted) if the queue is full or the standard pickler refused `obj`: the caller
    /// then takes its own, slower path.
    fn put<'py>(
        &self,
        py: Python<'py>,
        obj: &Bound<'py, PyAny>,
        maxsize: u32,
        joinable: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let now = Some(std::time::Instant::now());
        if self.inner.reserve(maxsize, now, &mut || true).is_err() {
            return Ok(None);
        }
        let dumps = DUMPS.import(py, "pickle", "dumps")?;
        let data = match dumps
            .call1((obj, PROTOCOL))
            .and_then(|d| Ok(d.cast_into::<PyBytes>()?))
        {
            Ok(data) => data,
            Err(_) => {
                self.inner.unreserve();
                return Ok(None);
            }
        };
        if joinable {
            self.inner.add_unfinished();
        }
        if self.inner.try_send(data.as_bytes()).map_err(to_py)? {
            return Ok(Some(PyBool::new(py, true).to_owned().into_any()));
        }
        Ok(Some(data.into_any()))
    }

    /// Sends `data` (any bytes-like object, any size), waiting (the GIL released) for the
    /// send lock and room. TimeoutError if `timeout` passes before it starts going out;
    /// BrokenPipeError if `peer`'s other end is gone.
    #[pyo3(signature = (data, timeout = None, peer = -1))]
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        peer: i32,
    ) -> PyResult<()> {
        let owned;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                owned = pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?;
                &owned
            }
        };
        if self.inner.try_send(bytes).map_err(to_py)? {
            self.poke(peer);
            return Ok(());
        }
        match with_peer(py, timeout, peer, |deadline, poll| {
            self.inner.send(bytes, deadline, poll)
        })? {
            Waited::Done(()) => {
                self.poke(peer);
                Ok(())
            }
            Waited::PeerGone => Err(PyBrokenPipeError::new_err("[Errno 32] Broken pipe")),
        }
    }

    /// Receives one message (waiting up to `timeout` seconds for one to start; None: for
    /// ever); TimeoutError if none came, EOFError if none is left and `peer`'s other end
    /// is gone. `count`: the message was counted in by `reserve` (a queue's get).
    /// `load`: returns the message unpickled (`pickle.loads`) rather than its bytes.
    #[pyo3(signature = (timeout = None, count = false, peer = -1, load = false))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        count: bool,
        peer: i32,
        load: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut out = Vec::new();
        // A look first, without releasing the GIL (which costs more than a whole receive).
        let taken = self.inner.try_recv(&mut out).map_err(to_py)?;
        if !taken {
            match with_peer(py, timeout, peer, |deadline, poll| {
                self.inner.recv(&mut out, deadline, poll)
            })? {
                Waited::Done(()) => {}
                Waited::PeerGone => return Err(PyEOFError::new_err(())),
            }
        }
        if count {
            self.inner.unreserve();
        }
        let data = PyBytes::new(py, &out);
        if load {
            return LOADS.import(py, "pickle", "loads")?.call1((data,));
        }
        Ok(data.into_any())
    }

    /// Whether a message (or the start of one) is waiting.
    fn has_data(&self) -> bool {
        self.inner.has_data()
    }

    /// Waits up to `timeout` seconds for data, taking none: True when some is waiting, or
    /// when `peer`'s other end is gone (a receive would then not block either).
    #[pyo3(signature = (timeout = None, peer = -1))]
    fn wait_data(&self, py: Python<'_>, timeout: Option<f64>, peer: i32) -> PyResult<bool> {
        if self.inner.has_data() {
            return Ok(true);
        }
        if socket(peer).is_some_and(hung_up) {
            return Ok(true);
        }
        match with_peer(py, timeout, peer, |deadline, poll| {
            match self.inner.wait_data(deadline, poll) {
                Ok(()) => Ok(true),
                Err(Error::Timeout) => Ok(false),
                Err(e) => Err(e),
            }
        })? {
            Waited::Done(ready) => Ok(ready),
            Waited::PeerGone => Ok(true),
        }
    }

    /// Counts a message in, waiting (the GIL released) while `maxsize` are in (0: no
    /// bound); TimeoutError if `timeout` passes (`block=False`: at once).
    #[pyo3(signature = (maxsize, block = true, timeout = None))]
    fn reserve(
        &self,
        py: Python<'_>,
        maxsize: u32,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        // A look first, without releasing the GIL.
        if self
            .inner
            .reserve(maxsize, Some(std::time::Instant::now()), &mut || true)
            .is_ok()
        {
            return Ok(());
        }
        if !block {
            return Err(to_py(Error::Timeout));
        }
        let timeout = timeout.map(|t| t.max(0.0));
        door::blocking(py, timeout, |deadline, poll| {
            self.inner.reserve(maxsize, deadline, poll)
        })
    }

    /// Counts a message out (a put that failed after `reserve`).
    fn unreserve(&self) {
        self.inner.unreserve();
    }

    /// Messages counted in and not yet out.
    fn count(&self) -> u32 {
        self.inner.count()
    }

    /// One more message to be marked done (a `JoinableQueue`'s put).
    fn add_unfinished(&self) {
        self.inner.add_unfinished();
    }

    /// Marks one message done; ValueError if none is pending.
    fn task_done(&self) -> PyResult<()> {
        self.inner.task_done().map_err(to_py)
    }

    /// Messages not yet marked done.
    fn unfinished(&self) -> u32 {
        self.inner.unfinished()
    }

    /// Waits (the GIL released) until every message put was marked done; False if
    /// `timeout` passed first.
    #[pyo3(signature = (timeout = None))]
    fn wait_finished(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        door::blocking(py, timeout, |deadline, poll| {
            match self.inner.wait_finished(deadline, poll) {
                Ok(()) => Ok(true),
                Err(Error::Timeout) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// Registers (`on`) or unregisters a thread waiting on a socket for this channel's
    /// data: while any is, senders poke the socket.
    fn watch(&self, on: bool) {
        self.inner.watch(on);
    }
}

impl PyChannel {
    fn poke(&self, peer: i32) {
        if let Some(fd) = socket(peer) {
            if self.inner.fd_watched() {
                poke(fd);
            }
        }
    }
}

/// Reads away the wake-up bytes waiting on socket `fd`, without blocking.
#[pyfunction]
pub(crate) fn drain_pokes(fd: i32) {
    if let Some(fd) = socket(fd) {
        paralelo_core::channel::drain_pokes(fd);
    }
}

/// Whether the other end of socket `fd` is closed everywhere.
#[pyfunction]
pub(crate) fn peer_gone(fd: i32) -> bool {
    socket(fd).is_none_or(hung_up)
}
