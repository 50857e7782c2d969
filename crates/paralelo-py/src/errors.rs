//! The one place where engine errors become Python exceptions.
use paralelo_core::Error;
use paralelo_expr::ExprError;
use pyo3::exceptions::{
    PyAttributeError, PyNotImplementedError, PyOSError, PyOverflowError, PyRuntimeError,
    PySyntaxError, PyTimeoutError, PyTypeError, PyValueError, PyZeroDivisionError,
};
use pyo3::prelude::*;

/// An exception of class `name` from `paralelo._errors` (defined in Python, so it can
/// subclass the standard library's under abi3), made with `args`.
fn paralelo_error<'py>(
    py: Python<'py>,
    name: &str,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyErr {
    match py
        .import("paralelo._errors")
        .and_then(|m| m.getattr(name))
        .and_then(|cls| cls.call1(args))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// `paralelo.CorruptRingError(slot, detail)`.
pub(crate) fn corrupt_ring(py: Python<'_>, slot: Option<usize>, detail: String) -> PyErr {
    paralelo_error(py, "CorruptRingError", (slot, detail))
}

/// `paralelo.AbandonedLockError`: `what` (say "the lock") was held by `holder`, a
/// `who` ("process" or "thread"), which ended without releasing it; it is free again.
pub(crate) fn abandoned(py: Python<'_>, what: &str, who: &str, holder: u32) -> PyErr {
    let message = format!(
        "{what} was held by {who} {holder}, which ended (or was killed) without releasing it: it is free again, but what it guarded may be half-updated"
    );
    paralelo_error(py, "AbandonedLockError", (message, holder))
}

/// mpi4py's error classes under MPICH (`MPI.ERR_TYPE`, ...).
pub(crate) const ERR_TYPE: i32 = 3;
pub(crate) const ERR_OTHER: i32 = 15;

/// `paralelo.comm.Exception` (mpi4py's `MPI.Exception`) of `error_class`.
pub(crate) fn mpi_error(py: Python<'_>, error_class: i32, message: &str) -> PyErr {
    paralelo_error(py, "MPIError", (error_class, message))
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
        Error::Abandoned { holder } => {
            Python::attach(|py| abandoned(py, "the lock", "process", holder))
        }
        Error::NotOwner => pyo3::exceptions::PyAssertionError::new_err(e.to_string()),
        Error::Reentrant => pyo3::exceptions::PyRuntimeError::new_err(e.to_string()),
        Error::JobEnded(why) => {
            Python::attach(|py| mpi_error(py, ERR_OTHER, &format!("MPI_ERR_OTHER: {why}")))
        }
    }
}

/// An expression's error as the exception numexpr raises in the same case.
pub(crate) fn expr_to_py(e: ExprError) -> PyErr {
    let message = e.to_string();
    match e {
        ExprError::Syntax(_) => PySyntaxError::new_err(message),
        ExprError::Type(_) => PyTypeError::new_err(message),
        ExprError::NotImplemented(_) => PyNotImplementedError::new_err(message),
        ExprError::Value(_) => PyValueError::new_err(message),
        ExprError::Runtime(_) | ExprError::Device(_) => PyRuntimeError::new_err(message),
        ExprError::ZeroDivision(_) => PyZeroDivisionError::new_err(message),
        ExprError::Overflow(_) => PyOverflowError::new_err(message),
        ExprError::Attribute(_) => PyAttributeError::new_err(message),
    }
}
