//! The atomics every shared-memory protocol uses, imported from one place so that a
//! `--cfg loom` build can swap them for loom's model-checked ones.
//!
//! Under loom an atomic is not plain data (it names an object in loom's model), so a
//! zero-filled segment does not hold valid ones: a loom build writes fresh atomics into
//! the memory it models before use (see `ring::mem`), and `tests/loom_ring.rs` models
//! only what it built that way.
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
