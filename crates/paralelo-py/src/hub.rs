//! `_native.Hub`: the parent's end of a worker hub.
use std::os::fd::BorrowedFd;

use paralelo_core::{FrameHeader, Hub, Received, SlotEvent};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::door;
use crate::errors::{corrupt_ring, to_py};
use crate::state::state_tuple;

/// Shared memory with a task ring and a result ring per worker slot.
#[pyclass(name = "Hub", module = "paralelo._native", frozen)]
pub(crate) struct PyHub {
    inner: Hub,
    scratch: door::Scratch<Received>,
}

impl door::Drained for Received {
    fn held(&self) -> usize {
        self.bytes.capacity()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
        self.events.clear();
    }
}

#[pymethods]
impl PyHub {
    #[new]
    #[pyo3(signature = (slots, capacity = 1 << 20))]
    fn new(slots: usize, capacity: usize) -> PyResult<Self> {
        Ok(PyHub {
            inner: Hub::create(slots, capacity).map_err(to_py)?,
            scratch: Default::default(),
        })
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
        self.inner
            .post(slot, &FrameHeader { tag, job, seq, aux }, payload, notify)
            .map_err(to_py)
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

    /// Reports the exit of process `pid` (the worker in `slot`, behind `pidfd`) through
    /// [`recv`](Self::recv), waking it. Replaces the slot's earlier watch.
    fn watch(&self, slot: usize, pid: u32, pidfd: i32) -> PyResult<()> {
        if pidfd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "bad pidfd {pidfd}"
            )));
        }
        // SAFETY: `watch` only duplicates the fd during this call; an invalid fd makes the
        // dup fail with EBADF, reported as OSError.
        let fd = unsafe { BorrowedFd::borrow_raw(pidfd) };
        self.inner.watch(slot, pid, fd).map_err(to_py)
    }

    /// Reports the exit of process `pid` (behind `pidfd`), which left its slot but may not
    /// have exited yet, as a `("left", None, pid, None)` event.
    fn watch_left(&self, pid: u32, pidfd: i32) -> PyResult<()> {
        if pidfd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "bad pidfd {pidfd}"
            )));
        }
        // SAFETY: as in `watch`: only duplicated during this call.
        let fd = unsafe { BorrowedFd::borrow_raw(pidfd) };
        self.inner.watch_left(pid, fd).map_err(to_py)
    }

    /// Waits up to `timeout` seconds for results or events, then returns
    /// `(messages, events)`: messages as `(slot, tag, job, seq, aux, payload)` tuples,
    /// events as `("exited", slot, pid, None)` or `("corrupt", slot, pid, CorruptRingError)`
    /// (pid: the slot's watched worker), a slot's events after its messages and its
    /// corruption before its death, or `("left", None, pid, None)` (see `watch_left`). Both empty when the time ran out (or when only
    /// outboxes moved on). Flushes outboxes as a side effect.
    #[pyo3(signature = (timeout = None))]
    fn recv<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyTuple>> {
        door::receive(
            py,
            timeout,
            &self.scratch,
            |r: &mut Received| self.inner.drain_results(r),
            |deadline, poll| self.inner.wait_results(deadline, poll),
            |got| {
                let msgs = door::messages(
                    py,
                    &got.bytes,
                    got.messages
                        .iter()
                        .map(|(s, h, r)| (Some(*s), *h, r.clone())),
                )?;
                let events = PyList::empty(py);
                for e in &got.events {
                    let ev = match e {
                        SlotEvent::Exited { slot, pid } => ("exited", Some(*slot), *pid, py.None())
                            .into_pyobject(py)?
                            .into_any(),
                        SlotEvent::Left { pid } => ("left", None::<usize>, *pid, py.None())
                            .into_pyobject(py)?
                            .into_any(),
                        SlotEvent::Corrupt { slot, pid, source } => {
                            let exc =
                                corrupt_ring(py, Some(*slot), source.to_string()).into_value(py);
                            ("corrupt", Some(*slot), *pid, exc)
                                .into_pyobject(py)?
                                .into_any()
                        }
                    };
                    events.append(ev)?;
                }
                PyTuple::new(py, [msgs.into_any(), events.into_any()])
            },
        )
    }

    /// What the worker in `slot` is doing, readable after it died: `("idle", 0)`,
    /// `("running", ticket)`, `("unpacking", first ticket)`, `("loading", job)` or
    /// `("initializing", 0)`.
    fn state(&self, slot: usize) -> PyResult<(&'static str, u64)> {
        self.inner.state(slot).map(state_tuple).map_err(to_py)
    }

    /// How many threads of `slot`'s worker sleep waiting for tasks.
    fn idle_waiters(&self, slot: usize) -> PyResult<u32> {
        self.inner.idle_waiters(slot).map_err(to_py)
    }

    /// Empties `slot`'s rings for a new worker; only once the old one is gone.
    fn reset_slot(&self, slot: usize) -> PyResult<()> {
        self.inner.reset_slot(slot).map_err(to_py)
    }
}
