//! The one place where engine errors become Python exceptions.
use paralelo_core::Error;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::PyErr;

pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::Os { .. } => PyOSError::new_err(e.to_string()),
        Error::BadLayout { .. } | Error::Invalid(_) => PyValueError::new_err(e.to_string()),
        Error::Corrupt { .. } | Error::CorruptSlot { .. } => PyRuntimeError::new_err(e.to_string()),
        Error::Timeout => PyTimeoutError::new_err("timed out waiting on a paralelo ring"),
        // The door replaces this with the error its poll saw; reaching here is a bug.
        Error::Interrupted => PyOSError::new_err("wait interrupted"),
    }
}
