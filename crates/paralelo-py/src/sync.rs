//! `_native.SharedSemaphore`, `SharedEvent`, `SharedCondvar` and `SharedBarrier`: the
//! engine's primitives placed in a writable buffer (a piece of the arena the Python side
//! allocates, which every process maps), for `paralelo.synchronize`. Waits release the
//! GIL and stop for Ctrl-C on the main thread.
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use paralelo_core::sync::{
    caller_pid, Broke, SharedBarrier, SharedCondvar, SharedEvent, SharedSemaphore,
};
use paralelo_core::Error;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::door;
use crate::errors::{abandoned, to_py};

/// A `T` living in a Python buffer (shared memory), which this keeps alive.
pub(crate) struct Placed<T> {
    buf: PyBuffer<u8>,
    _t: std::marker::PhantomData<T>,
}

impl<T> Placed<T> {
    /// Checks that `buffer` is writable, contiguous, big enough and aligned for a `T`.
    pub(crate) fn new(buffer: &Bound<'_, PyAny>, what: &str) -> PyResult<Self> {
        let buf = PyBuffer::<u8>::get(buffer)?;
        let size = std::mem::size_of::<T>();
        if buf.readonly() || !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "a {what} needs a writable, contiguous buffer"
            )));
        }
        if buf.len_bytes() < size {
            return Err(PyValueError::new_err(format!(
                "a {what} needs {size} bytes, not {}",
                buf.len_bytes()
            )));
        }
        if !(buf.buf_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(PyValueError::new_err(format!(
                "a {what}'s buffer must be {}-byte aligned",
                std::mem::align_of::<T>()
            )));
        }
        Ok(Self {
            buf,
            _t: std::marker::PhantomData,
        })
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: `new` checked that the buffer is writable, at least size_of::<T>()
        // bytes and aligned for T; `buf` keeps it mapped while `self` lives. Every T
        // placed this way (the engine's shared primitives) is made of atomics only,
        // which other processes change concurrently by design, and any bit pattern is
        // a valid value of them.
        unsafe { &*self.buf.buf_ptr().cast::<T>() }
    }
}

/// A negative timeout waits not at all, as the standard library's (NaN is left for
/// `door::deadline` to refuse).
pub(crate) fn at_least_zero(timeout: Option<f64>) -> Option<f64> {
    timeout.map(|t| if t.is_nan() { t } else { t.max(0.0) })
}

/// When a primitive's non-blocking acquire last looked for a dead holder: a look costs
/// system calls (a signal-0 probe, /proc), so a loop polling a held lock makes one per
/// `LOOK_EVERY` rather than one per call.
#[derive(Default)]
pub(crate) struct Looked(std::sync::atomic::AtomicU64);

const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

impl Looked {
    /// Whether a look is due now (and if so, it counts as made).
    pub(crate) fn due(&self) -> bool {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
            + 1;
        let last = self.0.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < LOOK_EVERY.as_nanos() as u64 {
            return false;
        }
        self.0.store(now, Relaxed);
        true
    }
}

#[pyclass(name = "SharedSemaphore", module = "paralelo._native", frozen)]
pub(crate) struct PySemaphore {
    sem: Placed<SharedSemaphore>,
    looked: Looked,
    /// Where this process's entry in the holders table was last found.
    hint: AtomicUsize,
}

impl PySemaphore {
    fn with_hint<R>(&self, f: impl FnOnce(&mut usize) -> R) -> R {
        let mut hint = self.hint.load(Relaxed);
        let out = f(&mut hint);
        self.hint.store(hint, Relaxed);
        out
    }
}

#[pymethods]
impl PySemaphore {
    #[classattr]
    const SIZE: usize = SharedSemaphore::SIZE;

    /// A semaphore in `buffer`: made there with `value` units (`bounded`: never more)
    /// when `value` is given (the buffer zero-filled), else the one already there.
    #[new]
    #[pyo3(signature = (buffer, value = None, bounded = false))]
    fn new(buffer: &Bound<'_, PyAny>, value: Option<i64>, bounded: bool) -> PyResult<Self> {
        let sem = Placed::<SharedSemaphore>::new(buffer, "semaphore")?;
        if let Some(v) = value {
            let v = u32::try_from(v)
                .ok()
                .filter(|&v| v < u32::MAX)
                .ok_or_else(|| PyValueError::new_err("semaphore initial value must be >= 0"))?;
            sem.get().init(v, bounded);
        }
        Ok(Self {
            sem,
            looked: Looked::default(),
            hint: AtomicUsize::new(0),
        })
    }

    /// Takes a unit: at once if one is free, else waiting (the GIL released) up to
    /// `timeout` seconds (None: for ever; `block=False`: not at all). True once taken.
    /// A holder that died with units is found while waiting: its units come back and
    /// this acquire raises `paralelo.AbandonedLockError` naming it.
    /// (`blocking` is threading's name for `block`.)
    #[pyo3(signature = (block = true, timeout = None, *, blocking = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        blocking: Option<bool>,
    ) -> PyResult<bool> {
        let block = blocking.unwrap_or(block);
        let (sem, pid) = (self.sem.get(), caller_pid());
        let mut hint = self.hint.load(Relaxed);
        if sem.try_acquire(pid, &mut hint) {
            self.hint.store(hint, Relaxed);
            return Ok(true);
        }
        if !block {
            // A holder that died with units gives them back (looked at rarely: see Looked).
            if self.looked.due() {
                if let Some(holder) = sem.reclaim_dead(pid, false) {
                    return Err(abandoned(py, "the semaphore", "process", holder));
                }
            }
            return Ok(false);
        }
        let got = door::blocking(py, at_least_zero(timeout), |deadline, poll| {
            match sem.acquire(pid, &mut hint, deadline, poll) {
                Ok(()) => Ok(Ok(true)),
                Err(Error::Timeout) => Ok(Ok(false)),
                Err(Error::Abandoned { holder }) => Ok(Err(holder)),
                Err(e) => Err(e),
            }
        })?;
        self.hint.store(hint, Relaxed);
        got.map_err(|holder| abandoned(py, "the semaphore", "process", holder))
    }

    /// Gives `n` units back (threading's `n`; ValueError past a bounded semaphore's
    /// bound, the units before it given).
    #[pyo3(signature = (n = 1))]
    fn release(&self, n: i64) -> PyResult<()> {
        if n < 1 {
            return Err(PyValueError::new_err("n must be one or more"));
        }
        let (sem, pid) = (self.sem.get(), caller_pid());
        for _ in 0..n {
            match self.with_hint(|h| sem.release(pid, h)) {
                Ok(()) => {}
                Err(Error::NotHeld) => {
                    return Err(PyValueError::new_err(
                        "semaphore or lock released too many times",
                    ))
                }
                Err(e) => return Err(to_py(e)),
            }
        }
        Ok(())
    }

    fn get_value(&self) -> u32 {
        self.sem.get().value()
    }

    /// The bound of a bounded semaphore, else None.
    #[getter]
    fn bound(&self) -> Option<u32> {
        self.sem.get().bound()
    }

    /// This process is ending normally: units it took and never gave back were used up,
    /// not abandoned.
    fn disown(&self) {
        self.sem.get().disown(caller_pid());
    }
}

#[pyclass(name = "SharedEvent", module = "paralelo._native", frozen)]
pub(crate) struct PyEvent {
    event: Placed<SharedEvent>,
}

impl PyEvent {
    /// The engine's event (its memory is shared: read it without the GIL).
    pub(crate) fn shared(&self) -> &SharedEvent {
        self.event.get()
    }
}

#[pymethods]
impl PyEvent {
    #[classattr]
    const SIZE: usize = SharedEvent::SIZE;

    /// The event in `buffer` (zero-filled: a clear one).
    #[new]
    fn new(buffer: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            event: Placed::new(buffer, "event")?,
        })
    }

    fn is_set(&self) -> bool {
        self.event.get().is_set()
    }

    fn set(&self) {
        self.event.get().set();
    }

    fn clear(&self) {
        self.event.get().clear();
    }

    /// Waits (the GIL released) until it is set: True, or False if `timeout` passed.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let event = self.event.get();
        if event.is_set() {
            return Ok(true);
        }
        door::blocking(py, at_least_zero(timeout), |deadline, poll| {
            event.wait(deadline, poll)
        })
    }
}

#[pyclass(name = "SharedCondvar", module = "paralelo._native", frozen)]
pub(crate) struct PyCondvar {
    cv: Placed<SharedCondvar>,
}

#[pymethods]
impl PyCondvar {
    #[classattr]
    const SIZE: usize = SharedCondvar::SIZE;

    /// The condition variable in `buffer` (zero-filled: no waiters).
    #[new]
    fn new(buffer: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            cv: Placed::new(buffer, "condition")?,
        })
    }

    /// Counts the caller in as a waiter (holding the lock): its entry.
    fn enter(&self) -> PyResult<usize> {
        self.cv.get().enter(caller_pid()).map_err(to_py)
    }

    /// Waits (the lock released, the GIL too) for entry `entry` to be notified: True,
    /// or False if `timeout` passed; then call `leave` holding the lock again.
    #[pyo3(signature = (entry, timeout = None))]
    fn wait(&self, py: Python<'_>, entry: usize, timeout: Option<f64>) -> PyResult<bool> {
        let cv = self.cv.get();
        door::blocking(py, at_least_zero(timeout), |deadline, poll| {
            cv.wait(entry, deadline, poll)
        })
    }

    /// Frees entry `entry` (holding the lock): whether it was notified.
    fn leave(&self, entry: usize) -> PyResult<bool> {
        self.cv.get().leave(entry).map_err(to_py)
    }

    /// Notifies the `n` oldest waiters (holding the lock): how many.
    fn notify(&self, n: u64) -> u32 {
        self.cv
            .get()
            .notify(u32::try_from(n).unwrap_or(u32::MAX), caller_pid())
    }

    /// Waiters counted in and not yet notified.
    fn waiting(&self) -> u32 {
        self.cv.get().waiting()
    }
}

#[pyclass(name = "SharedBarrier", module = "paralelo._native", frozen)]
pub(crate) struct PyBarrier {
    barrier: Placed<SharedBarrier>,
}

/// `threading.BrokenBarrierError`, saying why.
fn broken(py: Python<'_>, why: Broke) -> PyErr {
    let message = match why {
        Broke::Broken => String::new(),
        Broke::Died { pid } => {
            format!("a party of the barrier (pid {pid}) died: it can never be filled")
        }
    };
    match py
        .import("threading")
        .and_then(|m| m.getattr("BrokenBarrierError"))
        .and_then(|cls| {
            if message.is_empty() {
                cls.call0()
            } else {
                cls.call1((message,))
            }
        }) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

#[pymethods]
impl PyBarrier {
    #[classattr]
    const SIZE: usize = SharedBarrier::SIZE;

    /// The barrier in `buffer`: made there for `parties` when given (the buffer
    /// zero-filled), else the one already there.
    #[new]
    #[pyo3(signature = (buffer, parties = None))]
    fn new(buffer: &Bound<'_, PyAny>, parties: Option<i64>) -> PyResult<Self> {
        let barrier = Placed::<SharedBarrier>::new(buffer, "barrier")?;
        if let Some(n) = parties {
            let n = u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| PyValueError::new_err("parties must be > 0"))?;
            barrier.get().init(n);
        }
        Ok(Self { barrier })
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.barrier.get().parties()
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        self.barrier.get().n_waiting()
    }

    #[getter]
    fn broken(&self) -> bool {
        self.barrier.get().broken()
    }

    /// Arrives: (its index in the round, the round). BrokenBarrierError if broken.
    fn arrive(&self, py: Python<'_>) -> PyResult<(u32, u32)> {
        let barrier = self.barrier.get();
        match py.detach(|| barrier.arrive(caller_pid())).map_err(to_py)? {
            Ok(got) => Ok(got),
            Err(why) => Err(broken(py, why)),
        }
    }

    /// Lets the round's waiters go (its last arrival, after the action);
    /// BrokenBarrierError if it broke meanwhile.
    fn pass_round(&self, py: Python<'_>, round: u32) -> PyResult<()> {
        let barrier = self.barrier.get();
        if py
            .detach(|| barrier.pass(caller_pid(), round))
            .map_err(to_py)?
        {
            Ok(())
        } else {
            Err(broken(py, Broke::Broken))
        }
    }

    /// Waits (the GIL released) for round `round` to pass; BrokenBarrierError if it
    /// broke (a timeout breaks it).
    #[pyo3(signature = (round, timeout = None))]
    fn wait(&self, py: Python<'_>, round: u32, timeout: Option<f64>) -> PyResult<()> {
        let barrier = self.barrier.get();
        let pid = caller_pid();
        match door::blocking(py, at_least_zero(timeout), |deadline, poll| {
            barrier.wait(pid, round, deadline, poll)
        })? {
            Ok(()) => Ok(()),
            Err(why) => {
                // A Ctrl-C to the whole process group breaks the round in whichever
                // party sees it first: the others are told of their own Ctrl-C, as
                // with the standard library, not of the broken barrier.
                py.check_signals()?;
                Err(broken(py, why))
            }
        }
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let barrier = self.barrier.get();
        py.detach(|| barrier.abort(caller_pid())).map_err(to_py)
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        let barrier = self.barrier.get();
        py.detach(|| barrier.reset(caller_pid())).map_err(to_py)
    }
}
