//! `_native.Port`: a worker's end of one hub slot.
use std::os::fd::BorrowedFd;

use paralelo_core::{FrameHeader, Port};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::door::{self, Batch};
use crate::errors::to_py;

/// A worker's view of its slot: tasks in, results out.
#[pyclass(name = "Port", module = "paralelo._native", frozen)]
pub(crate) struct PyPort {
    inner: Port,
}

#[pymethods]
impl PyPort {
    /// Attaches to `slot` of the hub whose memfd is `fd` (the fd is duplicated).
    #[new]
    fn new(fd: i32, slot: usize) -> PyResult<Self> {
        if fd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!("bad fd {fd}")));
        }
        // SAFETY: `Port::open` only duplicates the fd during this call; an invalid fd makes
        // that dup fail with EBADF, reported as OSError.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(PyPort { inner: Port::open(fd, slot).map_err(to_py)? })
    }

    /// Waits up to `timeout` seconds for tasks, then returns up to `max` waiting messages as
    /// `(tag, job, seq, aux, payload)` tuples; `[]` when the time ran out.
    #[pyo3(signature = (timeout = None, max = 4096))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let drain =
            |batch: &mut Batch| self.inner.drain_tasks(max, |h, a, b| batch.push(0, h, a, b));
        door::receive(py, timeout, false, drain, |deadline, poll| {
            self.inner.wait_tasks(deadline, poll)
        })
    }

    /// Sends a result message, waiting for room (GIL released) up to `timeout` seconds.
    /// With `notify=False` the parent is not woken yet (unless the ring is full): call
    /// [`notify`](Self::notify) after a batch.
    #[pyo3(signature = (tag, job, seq, aux, payload, timeout = None, notify = true))]
    #[allow(clippy::too_many_arguments)] // mirrors the frame header, field by field
    fn send(
        &self,
        py: Python<'_>,
        tag: u32,
        job: u64,
        seq: u64,
        aux: u64,
        payload: &[u8],
        timeout: Option<f64>,
        notify: bool,
    ) -> PyResult<()> {
        let h = FrameHeader { tag, job, seq, aux };
        if self.inner.try_send(&h, payload, notify).map_err(to_py)? {
            return Ok(());
        }
        door::blocking(py, timeout, |deadline, poll| self.inner.send(&h, payload, deadline, poll))
    }

    /// Wakes the parent if results were sent with `notify=False` since.
    fn notify(&self) {
        self.inner.notify();
    }

    /// Records the message being executed (so the parent knows it if this process dies).
    fn set_current(&self, job: u64, seq: u64) {
        self.inner.set_current(job, seq);
    }
}
