//! How one call runs on the device: the kernels launched in order, each grid's size, and
//! the one argument block they all read (addresses, sizes, merged shape and strides).

use crate::dims::merged;
use crate::dtype::DType;
use crate::error::{ExprError, Result};
use crate::exec::{check_operands, ArrayArg};
use crate::ops::Reduce;
use crate::program::Program;

/// Numbers in the argument block: a kernel parameter of 2 KiB, under CUDA's 4 KiB.
pub const ARGS: usize = 256;

/// The argument block every kernel of a program takes by value (`px_args` in the
/// source): see [`Slots`] for what sits where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Args(pub [i64; ARGS]);

/// Where each number sits in [`Args`], for a program of `nin` inputs over `ndim` merged
/// dimensions: the operands' addresses (inputs, then the output), the scratch memory's
/// address, the element count, the row length (a reduction over an axis), the count of
/// partial results (a reduction to one value), the dimensions, then each operand's
/// strides in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slots {
    pub nin: usize,
    pub ndim: usize,
}

impl Slots {
    pub fn scratch(self) -> usize {
        self.nin + 1
    }
    pub fn count(self) -> usize {
        self.nin + 2
    }
    pub fn row(self) -> usize {
        self.nin + 3
    }
    pub fn parts(self) -> usize {
        self.nin + 4
    }
    pub fn dims(self) -> usize {
        self.nin + 5
    }
    pub fn strides(self) -> usize {
        self.dims() + self.ndim
    }
    fn len(self) -> usize {
        self.strides() + (self.nin + 1) * self.ndim
    }
}

/// One kernel launch: `grid` blocks of `block` threads.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub kernel: &'static str,
    pub grid: u32,
    pub block: u32,
}

/// A call's launches.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// The merged dimensions' count: the source is made for it (`kernel_source`).
    pub ndim: usize,
    pub args: Args,
    pub steps: Vec<Step>,
    /// Bytes of device memory the steps share (partial results), 0 for none: its address
    /// goes in with `set_scratch`.
    pub scratch: usize,
    slots: Slots,
}

impl Launch {
    pub fn set_scratch(&mut self, addr: u64) {
        self.args.0[self.slots.scratch()] = addr as i64;
    }
}

/// The kind a reduction folds in: numexpr's, with float32 sums and products in double.
pub fn accumulator(red: Reduce, out: DType) -> DType {
    match (red, out) {
        (Reduce::Sum | Reduce::Prod, DType::Float) => DType::Double,
        (_, kind) => kind,
    }
}

/// The launches that run `program` over `inputs` (device addresses; strides as
/// `exec::evaluate` takes them) into `out`, `block` threads a block (the source's
/// `PX_BLOCK`: `BLOCK` unless the source is built otherwise) and at most `max_blocks`
/// blocks a grid (a few per multiprocessor: each thread strides on).
pub fn plan(
    program: &Program,
    inputs: &[ArrayArg],
    shape: &[usize],
    out: ArrayArg,
    block: u32,
    max_blocks: u32,
) -> Result<Launch> {
    check_operands(program, inputs, shape, &out)?;
    if inputs.iter().any(|a| !a.stored.is_kind()) {
        return Err(ExprError::Value(
            "a device reads inputs of their kernel kinds alone: convert them first".into(),
        ));
    }
    if !block.is_power_of_two() {
        return Err(ExprError::Value(format!(
            "{block} threads a block: the kernels' folds want a power of two"
        )));
    }
    let rows = matches!(program.reduce, Some((_, Some(_))));
    let operands: Vec<&[isize]> = inputs
        .iter()
        .chain(std::iter::once(&out))
        .map(|a| a.strides)
        .collect();
    let (dims, strides) = merged(shape, &operands, rows);
    let slots = Slots {
        nin: inputs.len(),
        ndim: dims.len(),
    };
    if slots.len() > ARGS {
        return Err(ExprError::Value(format!(
            "{} inputs over {} dimensions do not fit a CUDA kernel's arguments",
            inputs.len(),
            dims.len()
        )));
    }
    let total: usize = dims.iter().product();
    let mut args = [0i64; ARGS];
    for (k, a) in inputs.iter().chain(std::iter::once(&out)).enumerate() {
        args[k] = a.addr as i64;
    }
    args[slots.count()] = total as i64;
    args[slots.row()] = *dims.last().expect("at least one dimension") as i64;
    for (d, n) in dims.iter().enumerate() {
        args[slots.dims() + d] = *n as i64;
    }
    for (k, s) in strides.iter().enumerate() {
        for (d, v) in s.iter().enumerate() {
            args[slots.strides() + k * dims.len() + d] = *v as i64;
        }
    }
    let grid = |work: usize| (work.div_ceil(block as usize).max(1)).min(max_blocks as usize) as u32;
    let out_strides = strides.last().expect("the output");
    let (steps, scratch) = match program.reduce {
        None => (vec![step("px_map", grid(total), block)], 0),
        Some(_) if rows && out_strides.iter().any(|s| *s != 0) => {
            let len = args[slots.row()].max(1) as usize;
            let rows = total / len;
            if len < block as usize || rows >= max_blocks as usize * block as usize / 8 {
                // A row per thread: short rows, or enough of them to busy the device.
                (vec![step("px_row_threads", grid(rows), block)], 0)
            } else {
                // A block per row: few long rows, the block's threads share each.
                let blocks = rows.clamp(1, max_blocks as usize) as u32;
                (vec![step("px_rows", blocks, block)], 0)
            }
        }
        Some((red, _)) => {
            let parts = grid(total);
            args[slots.parts()] = i64::from(parts);
            let size = accumulator(red, program.out).size();
            (
                vec![
                    step("px_partial", parts, block),
                    step("px_finish", 1, block),
                ],
                parts as usize * size,
            )
        }
    };
    Ok(Launch {
        ndim: dims.len(),
        args: Args(args),
        steps,
        scratch,
        slots,
    })
}

fn step(kernel: &'static str, grid: u32, block: u32) -> Step {
    Step {
        kernel,
        grid,
        block,
    }
}
