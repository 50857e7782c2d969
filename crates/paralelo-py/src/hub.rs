//! `_native.Hub`: the parent's end of a worker hub.
use paralelo_core::{FrameHeader, Hub};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::door::{self, Batch};
use crate::errors::to_py;

/// Shared memory with a task ring and a result ring per worker slot.
#[pyclass(name = "Hub", module = "paralelo._native", frozen)]
pub(crate) struct PyHub {
    inner: Hub,
}

#[pymethods]
impl PyHub {
    #[new]
    #[pyo3(signature = (slots, capacity = 1 << 20))]
    fn new(slots: usize, capacity: usize) -> PyResult<Self> {
        Ok(PyHub { inner: Hub::create(slots, capacity).map_err(to_py)? })
    }

    /// The memfd to pass to workers (inheritable copies are the caller's business).
    #[getter]
    fn fd(&self) -> i32 {
        self.inner.raw_fd()
    }

    #[getter]
    fn slots(&self) -> usize {
        self.inner.layout().slots
    }

    /// Sends a message to `slot` without waiting: what does not fit in the ring now waits
    /// in the slot's outbox and moves on while a thread is in [`recv`](Self::recv). With
    /// `notify=False` the worker is not woken yet: call [`notify`](Self::notify) after a batch.
    #[pyo3(signature = (slot, tag, job, seq, aux, payload, notify = true))]
    #[allow(clippy::too_many_arguments)] // mirrors the frame header, field by field
    fn post(
        &self,
        slot: usize,
        tag: u32,
        job: u64,
        seq: u64,
        aux: u64,
        payload: &[u8],
        notify: bool,
    ) -> PyResult<()> {
        self.inner.post(slot, &FrameHeader { tag, job, seq, aux }, payload, notify).map_err(to_py)
    }

    /// Wakes every worker posted to with `notify=False` since.
    fn notify(&self) {
        self.inner.notify();
    }

    /// Ends the current (or next) wait in [`recv`](Self::recv) early.
    fn wake(&self) {
        self.inner.wake();
    }

    /// Bytes queued in `slot`'s outbox, not yet in its ring.
    fn backlog(&self, slot: usize) -> PyResult<usize> {
        self.inner.backlog(slot).map_err(to_py)
    }

    /// Waits up to `timeout` seconds for results, then returns every message waiting as
    /// `(slot, tag, job, seq, aux, payload)` tuples; `[]` when the time ran out (or when
    /// only outboxes moved on). Flushes outboxes as a side effect.
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
        let drain = |batch: &mut Batch| {
            self.inner.flush()?;
            self.inner.drain_results(|s, h, a, b| batch.push(s, h, a, b))
        };
        door::receive(py, timeout, true, drain, |deadline, poll| {
            self.inner.wait_results(deadline, poll)
        })
    }

    /// `(job, seq)` of the message the worker in `slot` is executing; `(0, 0)` when idle.
    fn current(&self, slot: usize) -> PyResult<(u64, u64)> {
        self.inner.current(slot).map_err(to_py)
    }

    /// Empties `slot`'s rings for a new worker; only once the old one is gone.
    fn reset_slot(&self, slot: usize) -> PyResult<()> {
        self.inner.reset_slot(slot).map_err(to_py)
    }
}
