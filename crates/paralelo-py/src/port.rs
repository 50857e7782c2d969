//! `_native.Port`: a worker's end of one hub slot.
use std::os::fd::BorrowedFd;

use paralelo_core::{FrameHeader, Port, SlotState};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::door;
use crate::errors::to_py;

/// A worker's view of its slot: tasks in, results out.
#[pyclass(name = "Port", module = "paralelo._native", frozen)]
pub(crate) struct PyPort {
    inner: Port,
    scratch: door::Scratch<Tasks>,
}

/// Task messages copied out of the ring, and where each lies.
#[derive(Default)]
struct Tasks {
    bytes: Vec<u8>,
    items: Vec<(FrameHeader, std::ops::Range<usize>)>,
}

impl door::Drained for Tasks {
    fn held(&self) -> usize {
        self.bytes.capacity()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }
}

#[pymethods]
impl PyPort {
    /// Attaches to `slot` of the hub whose memfd is `fd` (the fd is duplicated).
    #[new]
    fn new(fd: i32, slot: usize) -> PyResult<Self> {
        if fd < 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "bad fd {fd}"
            )));
        }
        // SAFETY: `Port::open` only duplicates the fd during this call; an invalid fd makes
        // that dup fail with EBADF, reported as OSError.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(PyPort {
            inner: Port::open(fd, slot).map_err(to_py)?,
            scratch: Default::default(),
        })
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
        door::receive(
            py,
            timeout,
            &self.scratch,
            |t: &mut Tasks| {
                let Tasks { bytes, items } = t;
                self.inner
                    .drain_tasks(max, bytes, |h, r| items.push((h, r)))
            },
            |deadline, poll| self.inner.wait_tasks(deadline, poll),
            |got| {
                door::messages(
                    py,
                    &got.bytes,
                    got.items.iter().map(|(h, r)| (None, *h, r.clone())),
                )
            },
        )
    }

    /// Sends a result message, waiting for room (GIL released) up to `timeout` seconds.
    /// With `notify=False` the parent is not woken yet (unless the ring is full): call
    /// [`notify`](Self::notify) after a batch. Safe from several threads at once.
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
        door::blocking(py, timeout, |deadline, poll| {
            self.inner.send(&h, payload, deadline, poll)
        })
    }

    /// Wakes the parent if results were sent with `notify=False` since.
    fn notify(&self) {
        self.inner.notify();
    }

    /// Marks this worker idle (between units).
    fn idle(&self) -> PyResult<()> {
        self.inner.set_state(SlotState::Idle).map_err(to_py)
    }

    /// Marks this worker as executing the unit `ticket` (so the parent knows it if this
    /// process dies).
    fn running(&self, ticket: u64) -> PyResult<()> {
        self.inner
            .set_state(SlotState::Running(ticket))
            .map_err(to_py)
    }

    /// Marks this worker as unpacking a batch whose first unit is `ticket`.
    fn unpacking(&self, ticket: u64) -> PyResult<()> {
        self.inner
            .set_state(SlotState::Unpacking(ticket))
            .map_err(to_py)
    }

    /// Marks this worker as loading the function of job `job`.
    fn loading(&self, job: u64) -> PyResult<()> {
        self.inner
            .set_state(SlotState::LoadingFunction(job))
            .map_err(to_py)
    }

    /// Marks this worker as running the pool's initializer.
    fn initializing(&self) -> PyResult<()> {
        self.inner.set_state(SlotState::Initializing).map_err(to_py)
    }
}
