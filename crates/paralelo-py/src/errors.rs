//! The one place where engine errors become Python exceptions.
use paralelo_core::Error;
use pyo3::exceptions::{PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;

/// `paralelo.CorruptRingError(slot, detail)`: defined in Python (so it can subclass
/// RuntimeError under abi3), raised from here.
pub(crate) fn corrupt_ring(py: Python<'_>, slot: Option<usize>, detail: String) -> PyErr {
    match py
        .import("paralelo._errors")
        .and_then(|m| m.getattr("CorruptRingError"))
        .and_then(|cls| cls.call1((slot, detail)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::Os { .. } => PyOSError::new_err(e.to_string()),
        Error::BadLayout { .. } | Error::Invalid(_) => PyValueError::new_err(e.to_string()),
        Error::Corrupt(c) => Python::attach(|py| corrupt_ring(py, None, c.to_string())),
        Error::CorruptSlot { slot, source } => {
            Python::attach(|py| corrupt_ring(py, Some(slot), source.to_string()))
        }
        Error::Timeout => PyTimeoutError::new_err("timed out waiting on a paralelo ring"),
        // The door replaces this with the error its poll saw; reaching here is a bug.
        Error::Interrupted => PyOSError::new_err("wait interrupted"),
        Error::NotHeld => PyValueError::new_err(e.to_string()),
        Error::NotOwner => pyo3::exceptions::PyAssertionError::new_err(e.to_string()),
        Error::Reentrant => pyo3::exceptions::PyRuntimeError::new_err(e.to_string()),
    }
}
