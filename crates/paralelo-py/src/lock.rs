//! `_native.SharedLock`: the engine's [`SharedLock`] placed in a writable buffer (shared
//! memory the Python side allocates and every process maps), as multiprocessing's Lock
//! (`recursive=False`: any thread may release it) or RLock (`recursive=True`).
use paralelo_core::sync::{caller_ids, caller_pid};
use paralelo_core::{Error, SharedLock, Taken};
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::door;
use crate::errors::{abandoned, to_py};
use crate::sync::{at_least_zero, Looked, Placed};

/// Subclassed in Python (`synchronize.Lock`, `RLock`), which allocates the buffer; the
/// hot methods (`acquire`, `release`, `__enter__`, `__exit__`) stay native.
#[pyclass(name = "SharedLock", module = "paralelo._native", frozen, subclass)]
pub(crate) struct PyLock {
    lock: Placed<SharedLock>,
    recursive: bool,
    /// When a non-blocking acquire last looked whether the holder died.
    looked: Looked,
}

impl PyLock {
    fn lock(&self) -> &SharedLock {
        self.lock.get()
    }

    /// What a holder id names: a thread for a recursive lock, a process else.
    fn holder_kind(&self) -> &'static str {
        if self.recursive {
            "thread"
        } else {
            "process"
        }
    }

    /// Who takes the lock: this thread (recursive: only it may release), else this
    /// process (any of its threads may release; only its death abandons the lock).
    fn me(&self) -> u32 {
        if self.recursive {
            caller_ids().1
        } else {
            caller_pid()
        }
    }
}

/// True once taken; a lock taken from a holder that died holding it is released again
/// and reported (`paralelo.AbandonedLockError`): free, so the next acquire takes it.
fn taken(py: Python<'_>, how: Taken, lock: &PyLock) -> PyResult<bool> {
    if let Taken::FromDead { holder } = how {
        let _ = lock.lock().release(lock.me(), lock.recursive);
        return Err(abandoned(py, "the lock", lock.holder_kind(), holder));
    }
    Ok(true)
}

/// In a forked child: the lock holder ids cached before the fork are its parent's.
#[pyfunction]
pub(crate) fn forget_lock_ids() {
    paralelo_core::sync::forget_caller_ids();
}

#[pymethods]
impl PyLock {
    /// Bytes a lock takes in its buffer.
    #[classattr]
    const SIZE: usize = SharedLock::SIZE;

    /// A lock living in `buffer` (writable, `SIZE` bytes from its start, 4-byte aligned,
    /// zero-filled for a free lock), which this object keeps alive.
    #[new]
    fn new(buffer: &Bound<'_, PyAny>, recursive: bool) -> PyResult<Self> {
        Ok(Self {
            lock: Placed::new(buffer, "lock")?,
            recursive,
            looked: Looked::default(),
        })
    }

    /// Takes the lock: at once if it is free, else waiting (the GIL released) up to
    /// `timeout` seconds (None: for ever; with `block=False`, not at all). True once
    /// taken, False if the time ran out.
    /// (`blocking` is threading's name for `block`.)
    #[pyo3(signature = (block = true, timeout = None, *, blocking = None))]
    pub(crate) fn acquire(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<f64>,
        blocking: Option<bool>,
    ) -> PyResult<bool> {
        let block = blocking.unwrap_or(block);
        let (me, lock) = (self.me(), self.lock());
        if let Some(how) = lock.try_acquire(me, self.recursive) {
            return taken(py, how, self);
        }
        if !block {
            // No wait at all (and so no waiter's mark for the holder's release to pay for).
            // A look at the holder costs system calls: a polling loop makes it rarely.
            if !self.looked.due() {
                return Ok(false);
            }
            return match lock.try_acquire_or_recover(me, self.recursive) {
                Some(how) => taken(py, how, self),
                None => Ok(false),
            };
        }
        let got = door::blocking(py, at_least_zero(timeout), |deadline, poll| {
            match lock.acquire(me, self.recursive, deadline, poll) {
                Ok(how) => Ok(Some(how)),
                Err(Error::Timeout) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match got {
            Some(how) => taken(py, how, self),
            None => Ok(false),
        }
    }

    /// Releases the lock (one level of a recursive one).
    pub(crate) fn release(&self) -> PyResult<()> {
        // Only a recursive lock checks who releases it (any thread may release a plain one).
        let me = if self.recursive { self.me() } else { 0 };
        match self.lock().release(me, self.recursive) {
            Ok(_) => Ok(()),
            // multiprocessing's messages, which programs and tests match.
            Err(Error::NotHeld) => Err(PyValueError::new_err(
                "semaphore or lock released too many times",
            )),
            Err(Error::NotOwner) => Err(PyAssertionError::new_err(
                "attempt to release recursive lock not owned by thread",
            )),
            Err(e) => Err(to_py(e)),
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None, None)
    }

    // (Three plain arguments: a tuple of them would cost a third of a `with`.)
    #[pyo3(signature = (_kind = None, _value = None, _trace = None))]
    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _trace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.release()
    }

    /// Releases it wholly (every level of a recursive one), as a condition's wait does:
    /// how many levels, for `_acquire_restore`.
    fn _release_save(&self) -> PyResult<u32> {
        match self.lock().release_all(self.me(), self.recursive) {
            Ok(depth) => Ok(depth),
            Err(Error::NotOwner) | Err(Error::NotHeld) => {
                Err(PyRuntimeError::new_err("cannot release un-acquired lock"))
            }
            Err(e) => Err(to_py(e)),
        }
    }

    /// Takes it again after `_release_save`, at the depth it had. Taken from a holder
    /// that died, it stays held (the waiter's `with` releases it) and the death is
    /// raised (AbandonedLockError): a condition's waiter always leaves holding its lock.
    fn _acquire_restore(&self, py: Python<'_>, depth: u32) -> PyResult<()> {
        let (me, lock) = (self.me(), self.lock());
        let how = match lock.try_acquire(me, self.recursive) {
            Some(how) => how,
            None => door::blocking(py, None, |deadline, poll| {
                lock.acquire(me, self.recursive, deadline, poll)
            })?,
        };
        lock.restore_depth(me, depth);
        match how {
            Taken::FromDead { holder } => Err(abandoned(
                py,
                "the condition's lock",
                self.holder_kind(),
                holder,
            )),
            _ => Ok(()),
        }
    }

    /// Whether the caller holds it (this thread for a recursive lock, this process else).
    fn _is_mine(&self) -> bool {
        self.lock().holder() == Some(self.me())
    }

    /// How many times the caller took it (0 if it is not the holder's).
    fn _count(&self) -> u32 {
        if self._is_mine() {
            self.lock().depth()
        } else {
            0
        }
    }

    /// The holder's id (a tid for a recursive lock, a pid else), or None when free.
    fn holder(&self) -> Option<u32> {
        self.lock().holder()
    }

    /// Whether its holder died holding it (a condition's wait stops waiting then: nobody
    /// can notify it without first taking the lock over).
    fn _abandoned(&self) -> bool {
        self.lock().abandoned()
    }

    #[getter]
    fn recursive(&self) -> bool {
        self.recursive
    }
}
