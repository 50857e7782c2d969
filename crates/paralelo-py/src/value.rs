//! `_native.SyncValue`: a `Value`'s `value` (a ctypes object in shared memory) read and
//! written under its lock in one native call. multiprocessing's `Synchronized.value` is a
//! Python property that calls the lock's `acquire` and `release` through Python: three
//! Python calls per access, most of the cost of `with v.get_lock(): v.value += 1`.
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::lock::PyLock;

/// Subclassed in Python (`sharedctypes.Synchronized`), which adds what is not hot.
#[pyclass(name = "SyncValue", module = "paralelo._native", frozen, subclass)]
pub(crate) struct PySyncValue {
    obj: Py<PyAny>,
    lock: Py<PyLock>,
}

impl PySyncValue {
    /// Runs `f` on the ctypes object with the lock held (taken again if the caller holds
    /// it: it is recursive); releases it whatever `f` returns.
    fn locked<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> PyResult<T> {
        let lock = self.lock.get();
        lock.acquire(py, true, None)?;
        let out = f(self.obj.bind(py));
        lock.release()?;
        out
    }
}

#[pymethods]
impl PySyncValue {
    /// `obj`, a ctypes object in shared memory, behind `lock` (a paralelo lock).
    #[new]
    fn new(obj: Py<PyAny>, lock: Py<PyLock>) -> Self {
        PySyncValue { obj, lock }
    }

    /// The object's value, read under the lock.
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.locked(py, |obj| Ok(obj.getattr(intern!(py, "value"))?.unbind()))
    }

    /// Writes the object's value under the lock (ctypes converts and checks it).
    #[setter]
    fn set_value(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<()> {
        self.locked(py, |obj| obj.setattr(intern!(py, "value"), value))
    }

    /// The ctypes object itself (no lock taken).
    fn get_obj(&self, py: Python<'_>) -> Py<PyAny> {
        self.obj.clone_ref(py)
    }

    /// The lock.
    fn get_lock(&self, py: Python<'_>) -> Py<PyLock> {
        self.lock.clone_ref(py)
    }

    /// Takes the lock (as the lock's `acquire`).
    #[pyo3(signature = (block = true, timeout = None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        self.lock.get().acquire(py, block, timeout)
    }

    /// Releases the lock.
    fn release(&self) -> PyResult<()> {
        self.lock.get().release()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.lock.get().acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.lock.get().release()
    }
}
