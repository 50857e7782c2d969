//! `_native.SyncValue`: a `Value`'s `value` (a ctypes object in shared memory) read and
//! written under its lock in one native call. multiprocessing's `Synchronized.value` is a
//! Python property that calls the lock's `acquire` and `release` through Python: three
//! Python calls per access, most of the cost of `with v.get_lock(): v.value += 1`.
//!
//! The commonest types (`c_int`, `c_long`, `c_longlong`, `c_double`) are read and written
//! here as memory, through the object's buffer, rather than through ctypes' `value`
//! attribute; a value that does not fit goes through ctypes, which wraps or refuses it as
//! it always does.
#![allow(unsafe_code)]
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};

use pyo3::buffer::PyBuffer;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyMemoryView};

use crate::lock::PyLock;

/// What a value's memory holds, when it is one of the types read here.
#[derive(Clone, Copy)]
enum Scalar {
    I32,
    I64,
    F64,
}

/// Subclassed in Python (`sharedctypes.Synchronized`), which adds what is not hot.
#[pyclass(name = "SyncValue", module = "paralelo._native", frozen, subclass)]
pub(crate) struct PySyncValue {
    obj: Py<PyAny>,
    lock: Py<PyLock>,
    /// The object's memory, and what it holds (None: through ctypes).
    raw: Option<(PyBuffer<u8>, Scalar)>,
}

/// `obj`'s buffer, if it is a writable, aligned, native scalar of a type read here.
fn raw_scalar(obj: &Bound<'_, PyAny>) -> Option<(PyBuffer<u8>, Scalar)> {
    let py = obj.py();
    // Exactly ctypes' own types: a subclass may give `value` a meaning of its own.
    let ctypes = py.import("ctypes").ok()?;
    let exact = ["c_int", "c_long", "c_longlong", "c_double"]
        .iter()
        .any(|name| ctypes.getattr(*name).is_ok_and(|t| obj.get_type().is(&t)));
    if !exact {
        return None;
    }
    let view = PyMemoryView::from(obj).ok()?;
    let format: String = view.getattr("format").ok()?.extract().ok()?;
    let item: usize = view.getattr("itemsize").ok()?.extract().ok()?;
    let scalar = match format.trim_start_matches(['<', '@', '=']) {
        "i" if item == 4 => Scalar::I32,
        "l" | "q" if item == 8 => Scalar::I64,
        "d" if item == 8 => Scalar::F64,
        _ => return None,
    };
    // As bytes, which is what a `PyBuffer<u8>` takes (it holds the view, and so `obj`).
    let bytes = view.call_method1("cast", ("B",)).ok()?;
    let buf = PyBuffer::<u8>::get(&bytes).ok()?;
    let size = match scalar {
        Scalar::I32 => 4,
        Scalar::I64 | Scalar::F64 => 8,
    };
    let aligned = (buf.buf_ptr() as usize).is_multiple_of(size);
    (!buf.readonly() && buf.len_bytes() == size && aligned).then_some((buf, scalar))
}

/// The scalar in `buf`'s memory, as an atomic of its size.
fn cell<T>(buf: &PyBuffer<u8>) -> &T {
    assert_eq!(
        buf.len_bytes(),
        std::mem::size_of::<T>(),
        "a scalar of this size"
    );
    // SAFETY: `raw_scalar` checked that the buffer is one aligned scalar, of T's size
    // (asserted above; the atomics used have the scalars' layout), and the `PyBuffer`,
    // borrowed as long as the result, keeps the exporter's memory alive. Other processes
    // write the same shared memory, so it is only ever touched as an atomic.
    unsafe { &*buf.buf_ptr().cast::<T>() }
}

impl PySyncValue {
    /// The value in `buf`'s memory.
    fn read(py: Python<'_>, buf: &PyBuffer<u8>, scalar: Scalar) -> PyResult<Py<PyAny>> {
        Ok(match scalar {
            Scalar::I32 => cell::<AtomicI32>(buf)
                .load(Ordering::Relaxed)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
            Scalar::I64 => cell::<AtomicI64>(buf)
                .load(Ordering::Relaxed)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
            Scalar::F64 => {
                let bits = cell::<AtomicU64>(buf).load(Ordering::Relaxed);
                PyFloat::new(py, f64::from_bits(bits)).into_any().unbind()
            }
        })
    }

    /// Writes `value` to `buf`'s memory if it fits its type as it is; false if ctypes
    /// must convert it (or refuse it).
    fn write(buf: &PyBuffer<u8>, scalar: Scalar, value: &Bound<'_, PyAny>) -> bool {
        match scalar {
            Scalar::I32 => value.extract::<i32>().is_ok_and(|v| {
                cell::<AtomicI32>(buf).store(v, Ordering::Relaxed);
                true
            }),
            Scalar::I64 => value.extract::<i64>().is_ok_and(|v| {
                cell::<AtomicI64>(buf).store(v, Ordering::Relaxed);
                true
            }),
            Scalar::F64 => value.cast_exact::<PyFloat>().is_ok_and(|v| {
                cell::<AtomicU64>(buf).store(v.value().to_bits(), Ordering::Relaxed);
                true
            }),
        }
    }

    /// Runs `f` on the ctypes object with the lock held (taken again if the caller holds
    /// it: it is recursive); releases it whatever `f` returns.
    fn locked<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> PyResult<T> {
        let lock = self.lock.get();
        lock.acquire(py, true, None, None)?;
        let out = f(self.obj.bind(py));
        lock.release()?;
        out
    }
}

#[pymethods]
impl PySyncValue {
    /// `obj`, a ctypes object in shared memory, behind `lock` (a paralelo lock).
    #[new]
    fn new(py: Python<'_>, obj: Py<PyAny>, lock: Py<PyLock>) -> Self {
        let raw = raw_scalar(obj.bind(py));
        PySyncValue { obj, lock, raw }
    }

    /// The object's value, read under the lock.
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.locked(py, |obj| match &self.raw {
            Some((buf, scalar)) => Self::read(py, buf, *scalar),
            None => Ok(obj.getattr(intern!(py, "value"))?.unbind()),
        })
    }

    /// Writes the object's value under the lock (ctypes converts and checks it, unless
    /// it fits as it is).
    #[setter]
    fn set_value(&self, py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<()> {
        self.locked(py, |obj| match &self.raw {
            Some((buf, scalar)) if Self::write(buf, *scalar, &value) => Ok(()),
            _ => obj.setattr(intern!(py, "value"), value),
        })
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
        self.lock.get().acquire(py, block, timeout, None)
    }

    /// Releases the lock.
    fn release(&self) -> PyResult<()> {
        self.lock.get().release()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.lock.get().acquire(py, true, None, None)
    }

    // (Three plain arguments: a tuple of them would cost a third of a `with`.)
    #[pyo3(signature = (_kind = None, _value = None, _trace = None))]
    fn __exit__(
        &self,
        _kind: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _trace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.lock.get().release()
    }
}
