//! `_native.Channel`: the engine's [`Channel`], under `paralelo.Queue`, `SimpleQueue`,
//! `JoinableQueue` and `Pipe`'s connections. Payloads are bytes the Python side pickled
//! (or that `put` pickles here).
//!
//! A pipe's connection passes two descriptors: `peer`, its socket, whose other end closed
//! everywhere ends a wait (EOFError for a receive once nothing is left, BrokenPipeError for
//! a send); and `wake`, the eventfd of the direction used, which senders poke while a
//! receiver waits on descriptors, and which a receiver leaves readable while data is left.
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paralelo_core::channel::hung_up;
use paralelo_core::{Channel, Counting, Error};
use pyo3::exceptions::{
    PyAttributeError, PyBrokenPipeError, PyEOFError, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::arena::PyArenaBuffer;
use crate::door;
use crate::errors::to_py;
use crate::flat;

/// `pickle.dumps`, `pickle.loads` and `pickle.PicklingError`, looked up once: a queue's
/// put and get call them from here, which saves a Python call each on a path of well
/// under a microsecond.
static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// `paralelo._arena.unframe`: a message whose big buffers are in the arena.
static UNFRAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// `paralelo._arena.ungive`: lets go of an unread message's blocks.
static UNGIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Buffers this big belong in the arena (`_arena.OOB_MIN`): a message holding one takes
/// the Python side's path, which frames it.
const OOB_MIN: usize = 1 << 17;
/// `{"buffer_callback": oob_probe}`, for pickling what may hold protocol-5 buffers.
static PROBE_KWARGS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
/// What `oob_probe` raises to stop a pickle that found a big buffer (this very object).
static BIG_BUFFER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn big_buffer(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    BIG_BUFFER.get_or_try_init(py, || {
        Ok(PyValueError::new_err("a buffer for the arena")
            .into_value(py)
            .into_any())
    })
}

thread_local! {
    /// Set while this thread pickles for a queue's fast path (`put`): see `slow_path_if_fast`.
    static FAST_PUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called by a `__reduce__` with effects beyond its pickle (passing a descriptor on, see
/// `_pickling.once`): in a queue's fast path it stops the pickle (`BIG_BUFFER`), before
/// any effect, and the message takes the slow path, whose pickling session undoes what a
/// failed pickling did. Elsewhere nothing. (So the fast path itself needs no session: one
/// would double the cost of pickling a small message.)
#[pyfunction]
pub(crate) fn slow_path_if_fast(py: Python<'_>) -> PyResult<()> {
    if FAST_PUT.with(|f| f.get()) {
        return Err(PyErr::from_value(big_buffer(py)?.bind(py).clone()));
    }
    Ok(())
}

/// A pickler's `buffer_callback` for a queue's fast path: small buffers stay in the
/// pickle; a big one stops it (`BIG_BUFFER`), and the message goes the way that frames it.
#[pyfunction]
fn oob_probe(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Ok(raw) = buffer.call_method0(intern!(py, "raw")) else {
        return Ok(true); // (not contiguous: pickled in-band)
    };
    // (A SharedArray's span goes out of band whatever its size.)
    if raw.len()? < OOB_MIN
        && !raw
            .getattr(intern!(py, "obj"))?
            .is_instance_of::<PyArenaBuffer>()
    {
        return Ok(true);
    }
    Err(PyErr::from_value(big_buffer(py)?.bind(py).clone()))
}

/// Keyword arguments that make `pickle.dumps` probe for big buffers, unless `obj` is of
/// a type that never holds one (the common small messages pay nothing).
fn probe_kwargs<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBytes>()
        || obj.is_none()
    {
        return Ok(None);
    }
    let kwargs = PROBE_KWARGS.get_or_try_init(py, || {
        let d = PyDict::new(py);
        d.set_item("buffer_callback", wrap_pyfunction!(oob_probe, py)?)?;
        Ok::<_, PyErr>(d.unbind())
    })?;
    Ok(Some(kwargs.bind(py).clone()))
}
static PICKLING_ERROR: PyOnceLock<Py<pyo3::types::PyType>> = PyOnceLock::new();
/// The pickle protocol of messages (the highest: 5).
const PROTOCOL: u8 = 5;
/// A send looks whether its peer is gone at most this often: a look is a system call,
/// more than a whole small send.
const PEER_LOOK: Duration = Duration::from_millis(1);

#[pyclass(name = "Channel", module = "paralelo._native", frozen, weakref)]
pub(crate) struct PyChannel {
    inner: Channel,
    /// When a send last looked at its peer (nanoseconds since `EPOCH`).
    peer_looked: AtomicU64,
}

/// The instant `peer_looked` counts from.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// How a wait with a peer ended.
enum Waited<T> {
    Done(T),
    PeerGone,
}

/// A borrowed descriptor, or None for -1.
fn borrowed(raw: i32) -> Option<BorrowedFd<'static>> {
    // SAFETY: the Python side passes descriptors of objects (a socket, an eventfd) that
    // the connection holding them keeps open while the call runs. If another thread
    // closes the connection meanwhile, the system calls on the number fail (or, were the
    // number reused at once, touch the wrong descriptor, as any use of a closed fd would):
    // never memory unsafety, since only the kernel dereferences it.
    (raw >= 0).then(|| unsafe { BorrowedFd::borrow_raw(raw) })
}

impl PyChannel {
    /// Runs a blocking wait whose poll also ends it when `peer`'s other end is gone: for
    /// a send at once; for a receive (`reading`) once nothing is left to read (a message
    /// sent just before the close is still read).
    fn with_peer<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        peer: i32,
        reading: bool,
        wait: impl FnOnce(Option<Instant>, paralelo_core::Poll<'_>) -> paralelo_core::Result<T> + Send,
    ) -> PyResult<Waited<T>> {
        let peer = borrowed(peer);
        door::blocking(py, timeout, |deadline, poll| {
            let mut gone = false;
            let mut check = || {
                if peer.is_some_and(hung_up) && !(reading && self.inner.has_data()) {
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

    /// Whether `peer`'s other end is gone, looked at no more than once per `PEER_LOOK`.
    fn peer_gone_lately(&self, peer: i32) -> bool {
        let Some(peer) = borrowed(peer) else {
            return false;
        };
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64;
        let last = self.peer_looked.load(Ordering::Relaxed);
        // (0: never looked, in this process: a first send looks.)
        if last != 0 && now.saturating_sub(last) < PEER_LOOK.as_nanos() as u64 {
            return false;
        }
        self.peer_looked.store(now, Ordering::Relaxed);
        hung_up(peer)
    }

    /// After a send: wakes a receiver waiting on descriptors.
    fn wake(&self, wake: i32) {
        self.inner.wake_watchers(borrowed(wake));
    }

    /// After a receive: while receivers wait on descriptors, the eventfd stays readable
    /// while data is left.
    fn rearm(&self, wake: i32) {
        if let Some(wake) = borrowed(wake) {
            if self.inner.fd_watched() {
                self.inner.settle_wake(wake);
            }
        }
    }
}

#[pymethods]
impl PyChannel {
    /// A new channel whose ring holds `capacity` bytes (a power of two). `counting`: 0
    /// nothing (a pipe), 1 messages in and out (a queue), 2 also unfinished ones (a
    /// `JoinableQueue`).
    #[new]
    #[pyo3(signature = (capacity = 1 << 20, counting = 0))]
    fn new(capacity: usize, counting: u8) -> PyResult<Self> {
        let counting = match counting {
            0 => Counting::None,
            1 => Counting::Counted,
            2 => Counting::Joinable,
            _ => return Err(PyValueError::new_err("counting is 0, 1 or 2")),
        };
        Ok(Self::wrap(
            Channel::create(capacity, counting).map_err(to_py)?,
        ))
    }

    /// The channel whose segment is `fd` (the caller keeps, and closes, its own).
    #[staticmethod]
    fn open(fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!("bad fd {fd}")));
        }
        // SAFETY: `Channel::open` only reads the fd during this call (reopening it
        // through /proc, or duplicating it); an invalid fd makes that fail (ENOENT or
        // EBADF), reported as OSError.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(Self::wrap(Channel::open(fd).map_err(to_py)?))
    }

    /// The segment's descriptor (this object's own).
    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    /// Lets go of this handle now, as a process ends (`os._exit` collects nothing);
    /// using the channel afterwards still works, but holds it no longer.
    fn let_go(&self) {
        self.release();
    }

    /// A new descriptor to pass the channel to another process with (the caller's to
    /// close): it holds the channel until the receiver opened it, so the channel's
    /// unread messages are not let go of meanwhile (see `Channel::let_go`).
    fn hold_for_passing(&self) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        Ok(self.inner.hold_for_passing().map_err(to_py)?.into_raw_fd())
    }

    /// A queue's put when nothing is in the way: counts `obj` in (unless `maxsize` are
    /// in), pickles it (by reference, with the standard pickler) and sends it. True once
    /// sent; its pickle (bytes, counted in) if the ring has no room now or the send lock
    /// is busy; None (nothing counted) if the queue is full or the standard pickler
    /// cannot pickle `obj` (PicklingError, TypeError, AttributeError) or it holds a
    /// buffer for the arena (see `oob_probe`): the caller then takes its own, slower path.
    /// Any other exception from pickling is raised.
    fn put<'py>(
        &self,
        py: Python<'py>,
        obj: &Bound<'py, PyAny>,
        maxsize: u32,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let now = Some(Instant::now());
        if self.inner.reserve(maxsize, now, &mut || true).is_err() {
            return Ok(None);
        }
        if let Some(data) = flat::dumps(obj) {
            // (A flat value: never too big for the ring's one frame, so never left over.)
            return match self.inner.try_send(&data) {
                Ok(true) => Ok(Some(PyBool::new(py, true).to_owned().into_any())),
                Ok(false) => Ok(Some(PyBytes::new(py, &data).into_any())),
                Err(e) => {
                    self.inner.unreserve();
                    Err(to_py(e))
                }
            };
        }
        let dumps = DUMPS.import(py, "pickle", "dumps")?;
        let kwargs = probe_kwargs(py, obj)?;
        FAST_PUT.with(|f| f.set(true));
        let pickled = dumps.call((obj, PROTOCOL), kwargs.as_ref());
        FAST_PUT.with(|f| f.set(false));
        let data = match pickled {
            Ok(data) => data.cast_into::<PyBytes>()?,
            Err(e) => {
                self.inner.unreserve();
                let refused = PICKLING_ERROR.import(py, "pickle", "PicklingError")?;
                let big = big_buffer(py)?.bind(py);
                if e.value(py).is(big) {
                    // One object raised each time: the traceback it took through Python
                    // frames would keep them (and every frame they were called from, and
                    // those frames' locals) alive until the next big buffer.
                    big.setattr(intern!(py, "__traceback__"), py.None())?;
                    return Ok(None);
                }
                if e.is_instance(py, refused)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyAttributeError>(py)
                {
                    return Ok(None);
                }
                return Err(e);
            }
        };
        match self.inner.try_send(data.as_bytes()) {
            Ok(true) => Ok(Some(PyBool::new(py, true).to_owned().into_any())),
            Ok(false) => Ok(Some(data.into_any())),
            Err(e) => {
                self.inner.unreserve(); // (nothing of it went out)
                Err(to_py(e))
            }
        }
    }

    /// Sends `data` whole now if nothing is in the way (the send lock free, room in the
    /// ring, one frame); False (nothing sent) otherwise. Never waits.
    fn try_send(&self, data: &[u8]) -> PyResult<bool> {
        self.inner.try_send(data).map_err(to_py)
    }

    /// Sends `data` (any bytes-like object, any size), waiting (the GIL released) for the
    /// send lock and room. TimeoutError if `timeout` passes before it starts going out;
    /// BrokenPipeError if `peer`'s other end is gone. `wake`: the eventfd to poke for
    /// receivers waiting on descriptors.
    #[pyo3(signature = (data, timeout = None, peer = -1, wake = -1))]
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        peer: i32,
        wake: i32,
    ) -> PyResult<()> {
        if self.peer_gone_lately(peer) {
            return Err(broken_pipe());
        }
        let owned;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => {
                owned = pyo3::buffer::PyBuffer::<u8>::get(data)?.to_vec(py)?;
                &owned
            }
        };
        if !self.inner.try_send(bytes).map_err(to_py)? {
            let sent = self.with_peer(py, timeout, peer, false, |deadline, poll| {
                self.inner.send(bytes, deadline, poll, borrowed(wake))
            })?;
            if let Waited::PeerGone = sent {
                return Err(broken_pipe());
            }
        }
        self.wake(wake);
        Ok(())
    }

    /// Receives one message (waiting up to `timeout` seconds for one to start; None: for
    /// ever); TimeoutError if none came, EOFError if none is left and `peer`'s other end
    /// is gone. `wake`: the direction's eventfd, kept readable while data is left.
    /// `load`: returns the message unpickled (`pickle.loads`) rather than its bytes.
    #[pyo3(signature = (timeout = None, peer = -1, wake = -1, load = false))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        peer: i32,
        wake: i32,
        load: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut out = Vec::new();
        // A look first, without releasing the GIL (which costs more than a whole receive).
        if !self.inner.try_recv(&mut out).map_err(to_py)? {
            // (A peer already gone is seen before the wait's first sleep.)
            let got = self.with_peer(py, timeout, peer, true, |deadline, poll| {
                self.inner.recv(&mut out, deadline, poll)
            })?;
            if let Waited::PeerGone = got {
                return Err(PyEOFError::new_err(()));
            }
        }
        self.rearm(wake);
        if load {
            return load_message(py, &out);
        }
        Ok(PyBytes::new(py, &out).into_any())
    }

    /// Leaves eventfd `wake` readable exactly when data is waiting; whether it is (for
    /// `fileno()` and `connection.wait`).
    fn settle_wake(&self, wake: i32) -> bool {
        borrowed(wake).map_or_else(|| self.inner.has_data(), |w| self.inner.settle_wake(w))
    }

    /// Whether a message (or the start of one) is waiting.
    fn has_data(&self) -> bool {
        self.inner.has_data()
    }

    /// Waits up to `timeout` seconds for data, taking none: True when some is waiting, or
    /// when `peer`'s other end is gone (a receive would then not block either).
    #[pyo3(signature = (timeout = None, peer = -1))]
    fn wait_data(&self, py: Python<'_>, timeout: Option<f64>, peer: i32) -> PyResult<bool> {
        if self.inner.has_data() || borrowed(peer).is_some_and(hung_up) {
            return Ok(true);
        }
        if timeout == Some(0.0) {
            return Ok(false); // a look, not a wait (no GIL release)
        }
        let waited = self.with_peer(py, timeout, peer, true, |deadline, poll| {
            match self.inner.wait_data(deadline, poll) {
                Ok(()) => Ok(true),
                Err(Error::Timeout) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        Ok(match waited {
            Waited::Done(ready) => ready,
            Waited::PeerGone => true,
        })
    }

    /// Wakes the receivers asleep on this channel, to look again (an end was closed).
    fn wake_receivers(&self) {
        self.inner.wake_receivers();
    }

    /// Counts a message in (and unfinished, in a joinable channel), waiting (the GIL
    /// released) while `maxsize` are in (0: no bound); TimeoutError if `timeout` passes
    /// (`block=False`: at once).
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
            .reserve(maxsize, Some(Instant::now()), &mut || true)
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

    /// Undoes a `reserve` whose message will not be sent.
    fn unreserve(&self) {
        self.inner.unreserve();
    }

    /// Messages counted in and not yet out.
    fn count(&self) -> u32 {
        self.inner.count()
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

    /// Registers (`on`) or unregisters a thread waiting on descriptors for this
    /// channel's data: while any is, senders poke the direction's eventfd.
    fn watch(&self, on: bool) {
        self.inner.watch(on);
    }
}

/// As the kernel reports it to multiprocessing: `errno` 32, EPIPE.
fn broken_pipe() -> PyErr {
    PyBrokenPipeError::new_err((32, "Broken pipe"))
}

/// The object a message holds: a flat value read here, another pickle `pickle.loads`
/// reads, or an arena frame (`_arena.unframe`: its big buffers are views into the arena).
pub(crate) fn load_message<'py>(py: Python<'py>, msg: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if framed(msg) {
        return UNFRAME
            .import(py, "paralelo._arena", "unframe")?
            .call1((PyBytes::new(py, msg),));
    }
    if let Some(value) = flat::loads(py, msg) {
        return Ok(value);
    }
    LOADS
        .import(py, "pickle", "loads")?
        .call1((PyBytes::new(py, msg),))
}

/// Whether a message is an arena frame (`_arena`): a pickle starts with PROTO (0x80), a
/// frame with its mode (1 lent, 2 given, 3 raw bytes given).
fn framed(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(1..=3))
}

impl PyChannel {
    fn wrap(inner: Channel) -> Self {
        PyChannel {
            inner,
            peer_looked: AtomicU64::new(0),
        }
    }
}

impl PyChannel {
    /// Lets go of this handle (once): the last handle on the channel anywhere lets go of
    /// what its unread messages hold in the arena (`_arena.ungive`: a frame's blocks,
    /// given to the message), rather than keep it until the program ends.
    fn release(&self) {
        let left = self.inner.let_go();
        if !left.iter().any(|m| framed(m)) {
            return;
        }
        Python::attach(|py| {
            let Ok(ungive) = UNGIVE.import(py, "paralelo._arena", "ungive") else {
                return; // (the interpreter is ending: so does the program's arena)
            };
            for msg in left.iter().filter(|m| framed(m)) {
                if let Err(e) = ungive.call1((PyBytes::new(py, msg),)) {
                    e.write_unraisable(py, None);
                }
            }
        });
    }
}

impl Drop for PyChannel {
    fn drop(&mut self) {
        self.release();
    }
}
