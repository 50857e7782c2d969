//! paralelo._native: thin PyO3 bindings over `paralelo-core`. Every call that can block
//! goes through [`door::blocking`]; every engine error becomes a Python exception in
//! [`errors`].
use pyo3::prelude::*;

mod arena;
mod channel;
mod door;
mod errors;
mod expr;
mod flat;
mod fold;
mod forklock;
mod hub;
mod lock;
mod mailbox;
mod numbers;
mod port;
mod process;
mod state;
mod sync;
mod value;

// `gil_used`: `numbers.rs` reads lists without locking them, which only the GIL makes
// sound; a free-threaded interpreter keeps its GIL on while this module is loaded.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<arena::PyArena>()?;
    m.add_class::<arena::PyArenaBuffer>()?;
    m.add_class::<hub::PyHub>()?;
    m.add_class::<port::PyPort>()?;
    m.add_class::<lock::PyLock>()?;
    m.add_class::<sync::PySemaphore>()?;
    m.add_class::<sync::PyEvent>()?;
    m.add_class::<sync::PyCondvar>()?;
    m.add_class::<sync::PyBarrier>()?;
    m.add_class::<channel::PyChannel>()?;
    m.add_class::<mailbox::PyMailbox>()?;
    m.add_class::<mailbox::PyPostOffice>()?;
    m.add_class::<value::PySyncValue>()?;
    m.add_class::<expr::Expression>()?;
    m.add_function(wrap_pyfunction!(expr::expression_names, m)?)?;
    m.add_function(wrap_pyfunction!(expr::cuda_missing, m)?)?;
    m.add_function(wrap_pyfunction!(expr::cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(expr::set_expression_threads, m)?)?;
    m.add_function(wrap_pyfunction!(expr::expression_threads, m)?)?;
    #[cfg(feature = "cuda")]
    {
        m.add_class::<expr::gpu::DeviceBuffer>()?;
        m.add_function(wrap_pyfunction!(expr::gpu::cuda_copy, m)?)?;
        m.add_function(wrap_pyfunction!(expr::gpu::cuda_compile, m)?)?;
        m.add_function(wrap_pyfunction!(expr::gpu::cuda_compile_cubin, m)?)?;
        m.add_function(wrap_pyfunction!(expr::gpu::cuda_pointer_device, m)?)?;
        m.add_function(wrap_pyfunction!(expr::gpu::cuda_wait_stream, m)?)?;
    }
    m.add_function(wrap_pyfunction!(lock::forget_lock_ids, m)?)?;
    m.add_function(wrap_pyfunction!(process::die_with_parent, m)?)?;
    m.add_function(wrap_pyfunction!(process::forget_inherited_watch, m)?)?;
    m.add_function(wrap_pyfunction!(process::release_idle_watch, m)?)?;
    m.add_function(wrap_pyfunction!(numbers::pack_numbers, m)?)?;
    m.add_function(wrap_pyfunction!(flat::dumps_flat, m)?)?;
    m.add_function(wrap_pyfunction!(fold::fold, m)?)?;
    m.add_function(wrap_pyfunction!(channel::slow_path_if_fast, m)?)?;
    m.add_function(wrap_pyfunction!(numbers::unpack_numbers, m)?)?;
    m.add("MAX_TAG", paralelo_core::MAX_TAG)?;
    // Locks and channels name their holders by pid and tid, which the engine caches per
    // thread: a forked child must not go on as its parent (whoever forks it).
    let forget = m.getattr("forget_lock_ids")?;
    let kwargs = pyo3::types::PyDict::new(m.py());
    kwargs.set_item("after_in_child", forget)?;
    m.py()
        .import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
