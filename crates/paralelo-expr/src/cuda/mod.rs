//! A program as CUDA kernels: its source ([`source`], plain text, built and tested
//! without a GPU), how a call launches them ([`plan`]), and, with the `cuda` feature, the
//! device that compiles them with NVRTC and runs them ([`device`], through cudarc, which
//! loads the driver and NVRTC when first asked: a build needs no CUDA).
//!
//! One thread computes one element at a time, striding over the grid; the operands are
//! described as the CPU engine has them (address and byte strides along merged
//! dimensions), so device arrays of any layout are read in place. A reduction to one
//! value folds in two launches (per-block partial results, then one block over them);
//! a reduction over an axis takes a block per row.

pub mod plan;
pub mod source;

#[cfg(feature = "cuda")]
pub mod device;

pub use plan::{plan, Args, Launch, Step};
pub use source::kernel_source;

/// Threads in a block (the kernels' tree reductions want a power of two).
pub const BLOCK: u32 = 256;
