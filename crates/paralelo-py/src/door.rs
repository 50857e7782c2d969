//! The one door for waits: release the GIL, wait in slices, re-attach between slices so
//! Ctrl-C (and any other signal handler) runs, and map the engine's error. No engine lock
//! is held while the poll re-attaches: the engine's waits hold none.
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use paralelo_core::{Error, FrameHeader, Poll};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::errors::to_py;

/// Turns a Python timeout (seconds, `None` for ever) into a deadline.
pub(crate) fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds or None, not {t}"
        ))),
        Some(t) => Ok(Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))),
    }
}

/// Runs `wait` with the GIL released. `wait` gets the deadline and a poll that re-attaches
/// to check for signals; an exception raised by a signal handler ends the wait and is
/// returned as is.
pub(crate) fn blocking<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    wait: impl FnOnce(Option<Instant>, Poll<'_>) -> paralelo_core::Result<T> + Send,
) -> PyResult<T> {
    let deadline = deadline(timeout)?;
    let mut raised: Option<PyErr> = None;
    // Python runs signal handlers on the main thread only: elsewhere there is nothing to
    // check, and a waiting thread (a pool's collector) need not take the GIL between slices.
    let (pid, tid) = paralelo_core::sync::caller_ids();
    let on_main = pid == tid;
    let out = py.detach(|| {
        let mut poll = || {
            if !on_main {
                return true;
            }
            Python::attach(|py| match py.check_signals() {
                Ok(()) => true,
                Err(e) => {
                    raised = Some(e);
                    false
                }
            })
        };
        wait(deadline, &mut poll)
    });
    match out {
        Ok(v) => Ok(v),
        Err(Error::Interrupted) => Err(raised.unwrap_or_else(|| to_py(Error::Interrupted))),
        Err(e) => Err(to_py(e)),
    }
}

/// What a receiving end copies messages into: kept between calls (see [`Scratch`]).
pub(crate) trait Drained: Default + Send {
    /// Bytes of buffer it holds.
    fn held(&self) -> usize;
    /// Forgets its messages, keeping its buffers.
    fn clear(&mut self);
}

/// A receiving end's buffers, kept between calls: a steady stream of big messages then
/// lands in memory already mapped (a fresh buffer costs a page fault per 4 KB, and its
/// growth a copy per doubling, for every big message). A second thread receiving at the
/// same time gets fresh buffers.
#[derive(Default)]
pub(crate) struct Scratch<R>(Mutex<R>);

/// What a kept buffer may hold: one message above it (rare) is not pinned.
const KEEP: usize = 4 << 20;

impl<R: Drained> Scratch<R> {
    fn take(&self) -> R {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn give(&self, mut got: R) {
        if got.held() <= KEEP {
            got.clear();
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = got;
        }
    }
}

/// Drains what is waiting into `scratch`'s buffers; if nothing is, waits (GIL released)
/// and drains again; then hands what it got to `build` (empty when the time ran out).
pub(crate) fn receive<R: Drained, T>(
    py: Python<'_>,
    timeout: Option<f64>,
    scratch: &Scratch<R>,
    drain: impl Fn(&mut R) -> paralelo_core::Result<usize> + Sync,
    wait: impl Fn(Option<Instant>, Poll<'_>) -> paralelo_core::Result<()> + Sync,
    build: impl FnOnce(&R) -> PyResult<T>,
) -> PyResult<T> {
    let got = blocking(py, timeout, |deadline, poll| {
        let mut got = scratch.take();
        if drain(&mut got)? == 0 {
            match wait(deadline, poll) {
                Ok(()) => {}
                Err(Error::Timeout) => return Ok(got),
                Err(e) => return Err(e),
            }
            drain(&mut got)?;
        }
        Ok(got)
    })?;
    let out = build(&got);
    scratch.give(got);
    out
}

/// Messages as `(tag, job, seq, aux, payload)` tuples, with the slot first when given.
pub(crate) fn messages<'py>(
    py: Python<'py>,
    bytes: &[u8],
    items: impl Iterator<Item = (Option<usize>, FrameHeader, std::ops::Range<usize>)>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for (slot, h, range) in items {
        let mut fields = Vec::with_capacity(6);
        if let Some(slot) = slot {
            fields.push(slot.into_pyobject(py)?.into_any());
        }
        fields.push(h.tag.into_pyobject(py)?.into_any());
        fields.push(h.job.into_pyobject(py)?.into_any());
        fields.push(h.seq.into_pyobject(py)?.into_any());
        fields.push(h.aux.into_pyobject(py)?.into_any());
        fields.push(PyBytes::new(py, &bytes[range]).into_any());
        out.append(PyTuple::new(py, fields)?)?;
    }
    Ok(out)
}
