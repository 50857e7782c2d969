//! Process lifetime helpers that the standard library lacks.
use pyo3::prelude::*;
use rustix::process::{set_parent_process_death_signal, Signal};

/// Asks the kernel to SIGKILL this process when the thread that forked it exits, so that
/// a worker never outlives its parent, even when the parent is SIGKILLed.
#[pyfunction]
pub(crate) fn die_with_parent() -> PyResult<()> {
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("prctl(PR_SET_PDEATHSIG): {e}")))
}

/// In a forked child: closes what the parent's death watch held (its pidfds; its epoll
/// and eventfd too when its thread was idle), which this process never uses.
#[pyfunction]
pub(crate) fn forget_inherited_watch() {
    paralelo_core::proc::forget_inherited();
}

/// Lets go of the death watch's epoll fd and eventfd if nothing is watched any more (a
/// pool's collector calls it as the pool ends).
#[pyfunction]
pub(crate) fn release_idle_watch() {
    paralelo_core::proc::release_if_idle();
}
