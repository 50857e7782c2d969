//! Running a program over arrays: the iteration space cut into chunks that rayon spreads
//! over every core, each chunk walked in blocks small enough that a block's registers
//! stay in the core's cache, each block through the whole program. Contiguous operands
//! are read and written in place; strided ones go through a register; a broadcast one
//! (stride 0 along the walk) is a scalar. A reduction folds each block as it comes, and
//! the chunks' partial results are combined in order, so a result does not depend on
//! how many threads ran.

use num_complex::Complex64 as C64;
use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{ExprError, Result};
use crate::kernels::{run, Arg, Col, Out};
use crate::ops::Reduce;
use crate::program::{Operand, Program};
use crate::rowfold::{Partial, RowFold};
use crate::stored::{Elem, Stored, Swap};
use crate::view::{self, Addr};

/// Elements in a block of an elementwise program: every register of the block stays in
/// the first-level cache between instructions, and each operand's next cache lines are
/// still being fetched while the block's later instructions run (256 measured against
/// 512, 1,024 and 4,096 side by side: `2*a + 3*b` into a given array 10.1 ms to 6.3,
/// float32 `a*b + c` 5.0 to 4.0, `sin(a)` 48 either way; 1,024 was the slowest).
pub const BLOCK: usize = 256;
/// Elements in a block of a program with a lazy `where`: splitting a block's positions,
/// gathering and placing cost per block (the guide's `where(a > 0.5, sin(a)**2, cos(b))`
/// 68 ms at 256, 62.8 at 1,024, 56.8 at 4,096, 56.4 at 8,192).
pub const LAZY_BLOCK: usize = 8192;
/// Elements in a block of a reduction: its result register is folded at once, and stays
/// in the first-level cache at this size (1,024 measured up to twice as fast as 4,096 on
/// `sum(x*x)`, and faster than 256).
pub const REDUCTION_BLOCK: usize = 1024;
/// Elements a parallel task takes at least (whole blocks of every size); a call on fewer
/// runs on the caller's thread.
const CHUNK: usize = 16 * LAZY_BLOCK;
/// The parts a reduction is cut into, whatever the threads: its chunks' partial results
/// combine in order, so their bounds, not the threads, set the order of the sums (cut
/// by the threads, `sum(x * 2)` over 3 M doubles differed in its last bit between 1
/// thread and 2).
const REDUCTION_PARTS: usize = 64;
/// Rows this short (an (N, 3) array of points, a reduction along a short axis) are
/// walked in tiles: a block goes down each column of a tile of rows, so that a row's
/// few elements do not each pay a block's fixed costs (`p * s` over (1 M, 3) with s of
/// (3,): 25 ms a row at a time, numexpr 5.3).
pub(crate) const SHORT_ROW: usize = 16;
/// Elements a reduction's tile of rows spans, about: rows of up to a block's length are
/// tiled by the block, longer ones by fewer rows (at least `MIN_TILE_ROWS`), so that tiles
/// spread over the cores (`sum(a, axis=0)` over (5000, 2000) made two tiles of 1,024 rows).
const TILE: usize = 16 * REDUCTION_BLOCK;
/// Rows a reduction needs, at least, to be tiled for its rows' elements lying farther
/// apart than its rows; rows cut into chunks need `FEW_ACROSS_ROWS`. A tile's column
/// of few rows is a block that pays its fixed costs (some 60 ns) for little; a row
/// alone pays a cache line an element once its elements are 128 bytes apart. Measured
/// `sum(a, axis=0)`: (1 M, 10) 34 ms tiled, 20 a row at a time; (1 M, 16) 28.5, 56;
/// (200,000, 63) 9.5, 24; (20,000, 20), one chunk a row, 1.2, 0.3.
const ACROSS_ROWS: usize = 64;
const FEW_ACROSS_ROWS: usize = 16;
/// Rows a reduction's tile takes at least: a column of a tile is a block, whose fixed
/// costs fewer rows would pay more often.
const MIN_TILE_ROWS: usize = 256;

/// An array of the caller's: its first element's address, its kind, and its strides in
/// bytes along each dimension of the iteration shape (0 where it is broadcast).
#[derive(Clone, Copy, Debug)]
pub struct ArrayArg<'a> {
    pub addr: usize,
    pub dtype: DType,
    pub strides: &'a [isize],
    /// How its elements sit in memory, where not as `dtype`'s (an input only; the CPU
    /// converts a block at a time, a device takes `dtype`'s alone).
    pub stored: Stored,
}

/// Runs `program` over `inputs` (in `program.inputs`' order), all of `shape`, into `out`.
/// Without a reduction `out` has `shape` too; with one, `out`'s strides are 0 along
/// what is reduced: along every dimension for `axis=None`, along the last for a
/// reduction over one axis (the caller moves that axis last).
///
/// # Safety
/// Every address with its strides must stay inside a live allocation of valid elements
/// of its kind for every index of `shape`; `out` must be written by nobody else, and
/// read by nobody else (no input overlaps it), for the call.
pub unsafe fn evaluate(
    program: &Program,
    inputs: &[ArrayArg],
    shape: &[usize],
    out: ArrayArg,
) -> Result<()> {
    check_operands(program, inputs, shape, &out)?;
    let rows = matches!(program.reduce, Some((_, Some(_))));
    let mut layout = Layout::new(shape, inputs, out, rows);
    let total: usize = layout.shape.iter().product();
    if program.reduce.is_some() {
        layout.block = if layout.tiled {
            (TILE / layout.row_len()).clamp(MIN_TILE_ROWS, REDUCTION_BLOCK) // (rows a tile)
        } else {
            REDUCTION_BLOCK
        };
    } else if !program.lazy.is_empty() {
        layout.block = LAZY_BLOCK;
    }
    if total < CHUNK {
        // One chunk: run here (handing it to a pool thread and waiting cost more than the
        // work: 20 µs of a 30 µs call on 100 elements).
        return run_program(program, &layout, total, 1);
    }
    let pool = crate::pool::threads();
    let threads = pool.current_num_threads();
    pool.install(|| run_program(program, &layout, total, threads))
}

/// That `inputs` and `out` are what `program` takes: as many inputs, each of its kind, each
/// with a stride per dimension of `shape`.
pub(crate) fn check_operands(
    program: &Program,
    inputs: &[ArrayArg],
    shape: &[usize],
    out: &ArrayArg,
) -> Result<()> {
    if inputs.len() != program.inputs.len() {
        return Err(ExprError::Value(format!(
            "the program takes {} inputs, {} were given",
            program.inputs.len(),
            inputs.len()
        )));
    }
    for (a, (name, want)) in inputs.iter().zip(&program.inputs) {
        a.stored.check(a.dtype)?;
        if a.dtype != *want {
            return Err(ExprError::Value(format!(
                "input '{name}' is a {} array: the program was compiled for {}",
                a.dtype.name(),
                want.name()
            )));
        }
        if a.strides.len() != shape.len() {
            return Err(ExprError::Value(format!(
                "input '{name}' has {} strides for {} dimensions",
                a.strides.len(),
                shape.len()
            )));
        }
    }
    if out.dtype != program.out || out.strides.len() != shape.len() {
        return Err(ExprError::Value(format!(
            "the output is not a {} array of the shape given",
            program.out.name()
        )));
    }
    Ok(())
}

/// Runs over `total` elements on `threads` (inside their pool, unless `total` is less
/// than a chunk).
fn run_program(program: &Program, layout: &Layout, total: usize, threads: usize) -> Result<()> {
    match program.reduce {
        None => {
            let chunks = chunks(total, 4 * threads, layout.align());
            let work = |regs: &mut Regs, (start, end): (usize, usize)| {
                layout.walk(start, end, |at, n| {
                    regs.block(program, layout, at, n, Some(layout.out))
                });
            };
            if chunks.len() == 1 {
                work(&mut Regs::new(program, layout.block.min(total)), chunks[0]);
            } else {
                chunks
                    .into_par_iter()
                    .for_each_init(|| Regs::new(program, layout.block.min(total)), work);
            }
            Ok(())
        }
        Some((red, _)) if layout.reduces_rows() && layout.tiled => {
            // Rows walked in tiles: each column of a tile of rows is a block, folded into
            // the rows' running values (`rowfold.rs`) as each row alone folds. Rows long
            // enough to be cut into chunks are folded a chunk of every tile at a time, in
            // parallel, the chunks' values then merged in order: a single tile of long
            // rows still spreads over the cores.
            let row_len = layout.row_len();
            let cut = reduction_chunks(row_len);
            let ranges = chunks(total, REDUCTION_PARTS, layout.align());
            let rows_in = |(start, end): (usize, usize)| (end - start) / row_len;
            let state = || {
                let rows = layout.block.min(total / row_len);
                (
                    Regs::new(program, rows),
                    RowFold::new(red, program.out, rows, row_len),
                )
            };
            // (a range's rows, a tile after another, over the columns `cols`; `tile`
            // takes each tile's output address and row stride once its columns are in)
            let fold = |(regs, fold): &mut (Regs, RowFold),
                        range: (usize, usize),
                        cols: (usize, usize),
                        tile: &mut dyn FnMut(&mut RowFold, Addr, isize) -> Result<()>|
             -> Result<()> {
                let mut done = Ok(());
                let (start, end) = (range.0 / row_len, range.1 / row_len);
                layout.walk_tile_columns(start, end, cols, |at, n, c| match c {
                    Some(c) => {
                        if c == cols.0 {
                            fold.start(n, c);
                        }
                        regs.block(program, layout, at, n, None);
                        fold.column(c, regs.result(program, n));
                    }
                    None => {
                        if cols.0 == cols.1 {
                            fold.start(n, cols.0); // (no columns: the tile's rows alone)
                        }
                        let (out, stride) = (at[at.len() - 1], layout.row_stride(at.len() - 1));
                        if done.is_ok() {
                            done = tile(fold, out, stride);
                        }
                    }
                });
                done
            };
            let write = |fold: &mut RowFold, out: Addr, stride: isize| {
                // SAFETY: the tile's rows' output elements, in bounds as `evaluate`'s
                // caller promised, each row in one tile only.
                unsafe { fold.finish(out, stride) }
            };
            if cut.len() == 1 {
                let work = |s: &mut (Regs, RowFold), range| fold(s, range, cut[0], &mut { write });
                return if ranges.len() == 1 {
                    work(&mut state(), ranges[0])
                } else {
                    ranges.into_par_iter().try_for_each_init(state, work)
                };
            }
            let k = cut.len();
            let parts: Vec<Partial> = (0..ranges.len() * k)
                .into_par_iter()
                .map_init(state, |s, t| {
                    let mut part = Partial::new(program.out, rows_in(ranges[t / k]));
                    let mut keep = |fold: &mut RowFold, _: Addr, _: isize| {
                        part.extend(fold);
                        Ok(())
                    };
                    fold(s, ranges[t / k], cut[t % k], &mut keep).map(|()| part)
                })
                .collect::<Result<_>>()?;
            (0..ranges.len())
                .into_par_iter()
                .try_for_each_init(state, |s, i| {
                    let mut row = 0;
                    let mut merged = |fold: &mut RowFold, out: Addr, stride: isize| {
                        let n = fold.rows();
                        for part in &parts[i * k..(i + 1) * k] {
                            fold.merge(part, row, n);
                        }
                        row += n;
                        write(fold, out, stride)
                    };
                    // (no columns: each tile's rows and output, and the chunks' values)
                    fold(s, ranges[i], (0, 0), &mut merged)
                })
        }
        Some((red, _)) if layout.reduces_rows() => {
            // One result per row (the reduced axis is the last): rows spread over the cores.
            let rows = total / layout.row_len();
            let row_len = layout.row_len();
            if row_len >= CHUNK {
                // Long rows: each folded as the row alone is (`sum(r)`: in chunks of it,
                // combined in order), every row's chunks spread over the cores (a row a
                // core left all but four idle for `sum(a, axis=1)` over (4, 50 M)).
                let cut = reduction_chunks(row_len);
                let k = cut.len();
                let parts: Vec<Acc> = (0..rows * k)
                    .into_par_iter()
                    .map_init(
                        || Regs::new(program, layout.block),
                        |regs, t| {
                            let (base, (start, end)) = ((t / k) * row_len, cut[t % k]);
                            fold_part(program, layout, red, regs, base + start, base + end)
                        },
                    )
                    .collect();
                for (row, accs) in parts.chunks(k).enumerate() {
                    let acc = merged(red, accs);
                    let mut at = layout.out;
                    layout.walk(row * row_len, row * row_len + 1, |a, _| at = a[a.len() - 1]);
                    // SAFETY: the row's output element, in bounds as `evaluate`'s caller
                    // promised.
                    unsafe { acc.finish(red, program.out, row_len)?.write(at) };
                }
                return Ok(());
            }
            let work = |regs: &mut Regs, row: usize| -> Result<()> {
                let mut acc = Acc::start(red, program.out);
                let mut first = None;
                layout.walk(row * row_len, (row + 1) * row_len, |at, n| {
                    first.get_or_insert(at[at.len() - 1]);
                    regs.block(program, layout, at, n, None);
                    acc.fold(red, regs.result(program, n));
                });
                // SAFETY: the row's output element, in bounds as `evaluate`'s caller promised.
                unsafe {
                    acc.finish(red, program.out, row_len)?
                        .write(first.unwrap_or(layout.out))
                };
                Ok(())
            };
            if rows * row_len < CHUNK {
                let mut regs = Regs::new(program, layout.block.min(total));
                (0..rows).try_for_each(|r| work(&mut regs, r))
            } else {
                (0..rows)
                    .into_par_iter()
                    .try_for_each_init(|| Regs::new(program, layout.block.min(total)), work)
            }
        }
        Some((red, _)) => {
            let part = |regs: &mut Regs, (start, end): (usize, usize)| {
                fold_part(program, layout, red, regs, start, end)
            };
            // (whole rows of a tiled layout: a multiple of its tiles; of any other, the
            // chunks a row alone is cut into, `reduction_chunks`)
            let chunks = chunks(total, REDUCTION_PARTS, layout.align());
            let parts: Vec<Acc> = if chunks.len() == 1 {
                vec![part(
                    &mut Regs::new(program, layout.block.min(total)),
                    chunks[0],
                )]
            } else {
                chunks
                    .into_par_iter()
                    .map_init(|| Regs::new(program, layout.block.min(total)), part)
                    .collect()
            };
            let acc = merged(red, &parts);
            // SAFETY: the one output element, as `evaluate`'s caller promised.
            unsafe { acc.finish(red, program.out, total)?.write(layout.out) };
            Ok(())
        }
    }
}

/// The elements `[start, end)` folded, from the reduction's start, a block at a time.
fn fold_part(
    program: &Program,
    layout: &Layout,
    red: Reduce,
    regs: &mut Regs,
    start: usize,
    end: usize,
) -> Acc {
    let mut acc = Acc::start(red, program.out);
    layout.walk(start, end, |at, n| {
        regs.block(program, layout, at, n, None);
        acc.fold(red, regs.result(program, n));
    });
    acc
}

/// A reduction's chunks' values merged in order (`chunks` gives at least one).
fn merged(red: Reduce, parts: &[Acc]) -> Acc {
    parts.iter().fold(Acc::Empty, |a, b| a.merge(red, *b))
}

/// Whether, in every input that moves along both of the last two dimensions, a row's
/// elements lie farther apart than its rows do (and some input moves along both).
fn runs_down_columns(inputs: &[Vec<isize>], n: usize) -> bool {
    let mut told = false;
    for s in inputs {
        let (along, down) = (s[n - 1].unsigned_abs(), s[n - 2].unsigned_abs());
        if along != 0 && down != 0 {
            if along <= down {
                return false;
            }
            told = true;
        }
    }
    told
}

/// The parts a whole reduction of `len` elements is cut into (a row alone, and so each
/// row of a reduction over an axis: `rowfold.rs`).
pub(crate) fn reduction_chunks(len: usize) -> Vec<(usize, usize)> {
    chunks(len, REDUCTION_PARTS, LAZY_BLOCK)
}

/// `[start, end)` ranges covering `total` elements, at least `CHUNK` each but the last,
/// about `parts` of them where there is that much, each a multiple of `align` long.
fn chunks(total: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let size = (total / parts.max(1)).max(CHUNK).div_ceil(align) * align;
    let mut out = Vec::new();
    let mut start = 0;
    while start < total {
        out.push((start, (start + size).min(total)));
        start += size;
    }
    if out.is_empty() {
        out.push((0, 0));
    }
    out
}

/// The iteration space with its dimensions merged where every operand allows it.
struct Layout {
    shape: Vec<usize>,
    /// Per operand (the inputs, then the output): its base address and strides.
    bases: Vec<Addr>,
    strides: Vec<Vec<isize>>,
    kinds: Vec<DType>,
    /// Per input, how its elements are stored.
    stored: Vec<Stored>,
    out: Addr,
    /// Elements a block takes (`BLOCK`, `LAZY_BLOCK` or `REDUCTION_BLOCK`); rows a tile
    /// takes when `tiled`.
    block: usize,
    /// Whether rows are short (`SHORT_ROW`) and walked in tiles (`walk_tiles`).
    tiled: bool,
}

impl Layout {
    /// `rows`: a reduction over the last axis (which then stays a dimension of its own).
    fn new(shape: &[usize], inputs: &[ArrayArg], out: ArrayArg, rows: bool) -> Layout {
        let operands: Vec<&ArrayArg> = inputs.iter().chain(std::iter::once(&out)).collect();
        let strides: Vec<&[isize]> = operands.iter().map(|a| a.strides).collect();
        let (dims, strides) = crate::dims::merged(shape, &strides, rows);
        // (a tile's blocks are as long as the dimension above the rows is: tiles pay only
        // where that is well longer than a row; (N, 2, 16) * (N, 1, 16) took 4 to 7
        // times longer tiled, 2 rows a tile)
        let n = dims.len();
        let short = n >= 2 && dims[n - 1] <= SHORT_ROW && dims[n - 2] >= (2 * dims[n - 1]).max(8);
        // (a reduction's rows whose elements lie farther apart than the rows do, as
        // `sum(a, axis=0)` over a C-ordered `a` makes them: down a tile's columns, memory
        // is read in runs; along the rows, an element a cache line or a page)
        // (and rows enough for a tile's columns to be blocks worth their fixed costs)
        let across = rows
            && n >= 2
            && (dims[n - 2] >= ACROSS_ROWS
                || dims[n - 2] >= FEW_ACROSS_ROWS && dims[n - 1] >= CHUNK)
            && runs_down_columns(&strides[..inputs.len()], n);
        let tiled = short || across;
        Layout {
            tiled,
            shape: dims,
            bases: operands.iter().map(|a| Addr(a.addr)).collect(),
            strides,
            kinds: operands.iter().map(|a| a.dtype).collect(),
            stored: inputs.iter().map(|a| a.stored).collect(),
            out: Addr(out.addr),
            block: BLOCK,
        }
    }

    fn row_len(&self) -> usize {
        *self.shape.last().expect("at least one dimension")
    }

    /// Whether the output is one element per row (a reduction over the last axis), not
    /// one for all.
    fn reduces_rows(&self) -> bool {
        let out = self.strides.last().expect("the output");
        out.iter().any(|s| *s != 0) && out[out.len() - 1] == 0
    }

    /// What chunks' lengths are multiples of: whole blocks, and whole tiles when tiled.
    fn align(&self) -> usize {
        if self.tiled {
            self.block * self.row_len()
        } else {
            LAZY_BLOCK
        }
    }

    /// Calls `block(addresses, n)` for the elements `[start, end)` (whole rows when
    /// `tiled`) in blocks of at most `block`: each operand's address of the block's first
    /// element; its next ones are `inner_stride` apart.
    fn walk(&self, start: usize, end: usize, mut block: impl FnMut(&[Addr], usize)) {
        if self.tiled {
            let len = self.row_len();
            debug_assert!(start.is_multiple_of(len) && end.is_multiple_of(len));
            return self.walk_tiles(start / len, end / len, |at, n, c| {
                if c.is_some() {
                    block(at, n)
                }
            });
        }
        let len = self.row_len();
        let mut at = vec![Addr(0); self.bases.len()];
        let mut i = start;
        while i < end {
            let (row, col) = (i / len, i % len);
            let stop = end.min(i - col + len);
            // The row's offset in each operand, from its index along the outer dimensions.
            let mut rest = row;
            for (k, base) in self.bases.iter().enumerate() {
                at[k] = base.offset(self.strides[k][self.shape.len() - 1] * col as isize);
            }
            for d in (0..self.shape.len() - 1).rev() {
                let idx = rest % self.shape[d];
                rest /= self.shape[d];
                for (k, slot) in at.iter_mut().enumerate() {
                    *slot = slot.offset(self.strides[k][d] * idx as isize);
                }
            }
            while i < stop {
                let n = (stop - i).min(self.block);
                block(&at, n);
                for (k, slot) in at.iter_mut().enumerate() {
                    *slot = slot.offset(self.strides[k][self.shape.len() - 1] * n as isize);
                }
                i += n;
            }
        }
    }

    /// Tiled: for the rows `[start, end)`, a tile of at most `block` rows at a time
    /// (never across the next dimension up), calls `step(addresses, n, Some(c))` for
    /// each column `c` of the tile, then `step(addresses, n, None)`: each operand's
    /// address of the tile's first element (of column `c`); a column's elements are a
    /// row's stride apart (`inner_stride`).
    fn walk_tiles(
        &self,
        start: usize,
        end: usize,
        step: impl FnMut(&[Addr], usize, Option<usize>),
    ) {
        self.walk_tile_columns(start, end, (0, self.row_len()), step);
    }

    /// `walk_tiles` over the columns `[first, last)` of each tile only.
    fn walk_tile_columns(
        &self,
        start: usize,
        end: usize,
        (first, last): (usize, usize),
        mut step: impl FnMut(&[Addr], usize, Option<usize>),
    ) {
        let dims = self.shape.len();
        let height = self.shape[dims - 2];
        let mut at = vec![Addr(0); self.bases.len()];
        let mut col_at = at.clone();
        let mut row = start;
        while row < end {
            let n = self.block.min(end - row).min(height - row % height);
            // The tile's offset in each operand, from its row's index along each dimension.
            let mut rest = row;
            at.copy_from_slice(&self.bases);
            for d in (0..dims - 1).rev() {
                let idx = rest % self.shape[d];
                rest /= self.shape[d];
                for (k, slot) in at.iter_mut().enumerate() {
                    *slot = slot.offset(self.strides[k][d] * idx as isize);
                }
            }
            for c in first..last {
                for (k, slot) in col_at.iter_mut().enumerate() {
                    *slot = at[k].offset(self.strides[k][dims - 1] * c as isize);
                }
                step(&col_at, n, Some(c));
            }
            step(&at, n, None);
            row += n;
        }
    }

    /// The stride between a block's elements: along a row, or down a column when tiled.
    fn inner_stride(&self, operand: usize) -> isize {
        let dims = self.shape.len();
        self.strides[operand][if self.tiled { dims - 2 } else { dims - 1 }]
    }

    /// The stride between rows (tiled).
    fn row_stride(&self, operand: usize) -> isize {
        self.strides[operand][self.shape.len() - 2]
    }
}

/// A block-sized buffer of one kind.
enum Buf {
    B(Vec<u8>),
    I(Vec<i32>),
    L(Vec<i64>),
    F(Vec<f32>),
    D(Vec<f64>),
    C(Vec<C64>),
    /// Lent out while an instruction writes it.
    Taken,
}

impl Buf {
    /// Room for `len` elements.
    fn new(kind: DType, len: usize) -> Buf {
        match kind {
            DType::Bool => Buf::B(vec![0; len]),
            DType::Int => Buf::I(vec![0; len]),
            DType::Long => Buf::L(vec![0; len]),
            DType::Float => Buf::F(vec![0.0; len]),
            DType::Double => Buf::D(vec![0.0; len]),
            DType::Complex => Buf::C(vec![C64::new(0.0, 0.0); len]),
        }
    }

    fn col(&self, n: usize) -> Col<'_> {
        match self {
            Buf::B(v) => Col::B(Arg::V(&v[..n])),
            Buf::I(v) => Col::I(Arg::V(&v[..n])),
            Buf::L(v) => Col::L(Arg::V(&v[..n])),
            Buf::F(v) => Col::F(Arg::V(&v[..n])),
            Buf::D(v) => Col::D(Arg::V(&v[..n])),
            Buf::C(v) => Col::C(Arg::V(&v[..n])),
            Buf::Taken => unreachable!("a register is read while written"),
        }
    }

    /// Writes `values` as column `c` of this tile of rows `len` long.
    fn out(&mut self, n: usize) -> Out<'_> {
        match self {
            Buf::B(v) => Out::B(&mut v[..n]),
            Buf::I(v) => Out::I(&mut v[..n]),
            Buf::L(v) => Out::L(&mut v[..n]),
            Buf::F(v) => Out::F(&mut v[..n]),
            Buf::D(v) => Out::D(&mut v[..n]),
            Buf::C(v) => Out::C(&mut v[..n]),
            Buf::Taken => unreachable!("a register is written twice at once"),
        }
    }
}

/// A thread's registers, a buffer per input for gathering strided blocks, and what a
/// lazy `where` gathers (`Compact`).
struct Regs {
    regs: Vec<Buf>,
    gathered: Vec<Buf>,
    compact: Compact,
}

/// A lazy `where`'s scratch: the positions each branch takes, and, per input and per
/// register, its values at those positions.
struct Compact {
    picked: Vec<u32>,
    other: Vec<u32>,
    inputs: Vec<Buf>,
    regs: Vec<Buf>,
}

macro_rules! by_kind {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            DType::Bool => {
                type $t = u8;
                $body
            }
            DType::Int => {
                type $t = i32;
                $body
            }
            DType::Long => {
                type $t = i64;
                $body
            }
            DType::Float => {
                type $t = f32;
                $body
            }
            DType::Double => {
                type $t = f64;
                $body
            }
            DType::Complex => {
                type $t = C64;
                $body
            }
        }
    };
}

/// Wraps a typed operand as a `Col` of its kind.
trait Wrap: Copy + 'static {
    fn col(a: Arg<'_, Self>) -> Col<'_>;
    fn out(v: &mut [Self]) -> Out<'_>;
    fn buf(b: &mut Buf) -> &mut Vec<Self>;
}
macro_rules! wrap {
    ($t:ty, $v:ident) => {
        impl Wrap for $t {
            fn col(a: Arg<'_, Self>) -> Col<'_> {
                Col::$v(a)
            }
            fn out(v: &mut [Self]) -> Out<'_> {
                Out::$v(v)
            }
            fn buf(b: &mut Buf) -> &mut Vec<Self> {
                match b {
                    Buf::$v(v) => v,
                    _ => unreachable!("a buffer of another kind"),
                }
            }
        }
    };
}
wrap!(u8, B);
wrap!(i32, I);
wrap!(i64, L);
wrap!(f32, F);
wrap!(f64, D);
wrap!(C64, C);

/// An input's block: in place, a scalar (stride 0), or gathered into `buf`.
///
/// # Safety
/// `n` elements from `at`, `stride` apart, are valid (see `evaluate`).
unsafe fn input<'a, T: Wrap>(at: Addr, stride: isize, n: usize, buf: &'a mut Buf) -> Col<'a> {
    if stride == 0 {
        // SAFETY: the one element, valid as promised.
        return T::col(Arg::S(unsafe { view::read::<T>(at) }));
    }
    if view::is_slice::<T>(at, stride) {
        // SAFETY: contiguous, aligned and valid as promised; nothing writes inputs.
        return T::col(Arg::V(unsafe { view::slice::<T>(at, n) }));
    }
    let v = &mut T::buf(buf)[..n];
    // SAFETY: each element valid as promised.
    unsafe { view::gather(at, stride, v) };
    T::col(Arg::V(v))
}

/// An input's block read from elements stored as `stored` (`Stored::check`ed against
/// `kind`), converted into `buf` as numpy's `astype` converts them; a scalar for stride 0.
///
/// # Safety
/// `n` elements from `at`, `stride` apart, are valid elements as `stored` says.
unsafe fn converted<'a>(
    stored: Stored,
    kind: DType,
    at: Addr,
    stride: isize,
    n: usize,
    buf: &'a mut Buf,
) -> Col<'a> {
    /// # Safety
    /// As `converted`'s.
    unsafe fn read<'a, S: Swap, T: Wrap>(
        swapped: bool,
        at: Addr,
        stride: isize,
        n: usize,
        buf: &'a mut Buf,
        widen: impl Fn(S) -> T,
    ) -> Col<'a> {
        let one = |s: S| widen(if swapped { s.swap() } else { s });
        if stride == 0 {
            // SAFETY: the one element, valid as promised.
            return T::col(Arg::S(one(unsafe { view::read::<S>(at) })));
        }
        let v = &mut T::buf(buf)[..n];
        // SAFETY: each element valid as promised.
        unsafe { view::gather_with(at, stride, v, one) };
        T::col(Arg::V(v))
    }
    let s = stored.swapped;
    // SAFETY: each arm reads elements of the type `stored` names, as the caller promised.
    unsafe {
        match (stored.elem, kind) {
            (Elem::I8, DType::Int) => read(s, at, stride, n, buf, |x: i8| i32::from(x)),
            (Elem::U8, DType::Int) => read(s, at, stride, n, buf, |x: u8| i32::from(x)),
            (Elem::I16, DType::Int) => read(s, at, stride, n, buf, |x: i16| i32::from(x)),
            (Elem::U16, DType::Int) => read(s, at, stride, n, buf, |x: u16| i32::from(x)),
            (Elem::U32, DType::Long) => read(s, at, stride, n, buf, |x: u32| i64::from(x)),
            (Elem::U64, DType::Long) => read(s, at, stride, n, buf, |x: u64| x as i64),
            (Elem::F16, DType::Float) => read(s, at, stride, n, buf, f16_to_f32),
            (Elem::C64, DType::Complex) => read(s, at, stride, n, buf, |[re, im]: [f32; 2]| {
                C64::new(re.into(), im.into())
            }),
            (Elem::Kind, DType::Bool) => read(s, at, stride, n, buf, |x: u8| x),
            (Elem::Kind, DType::Int) => read(s, at, stride, n, buf, |x: i32| x),
            (Elem::Kind, DType::Long) => read(s, at, stride, n, buf, |x: i64| x),
            (Elem::Kind, DType::Float) => read(s, at, stride, n, buf, |x: f32| x),
            (Elem::Kind, DType::Double) => read(s, at, stride, n, buf, |x: f64| x),
            (Elem::Kind, DType::Complex) => read(s, at, stride, n, buf, |x: C64| x),
            (elem, kind) => unreachable!("{elem:?} read as {kind:?}: refused by check_operands"),
        }
    }
}

/// A half's value as a float, its NaNs' payloads and signalling bit kept, as numpy's
/// `astype` keeps them (`half` quiets them).
fn f16_to_f32(bits: u16) -> f32 {
    let bits32 = u32::from(bits);
    if bits32 & 0x7c00 == 0x7c00 && bits32 & 0x03ff != 0 {
        return f32::from_bits(((bits32 & 0x8000) << 16) | 0x7f80_0000 | ((bits32 & 0x03ff) << 13));
    }
    half::f16::from_bits(bits).to_f32()
}

impl Regs {
    /// Registers for blocks of at most `len` elements (a block's length, or fewer for a
    /// small call: zeroing whole blocks' registers cost a 100-element call microseconds).
    fn new(program: &Program, len: usize) -> Regs {
        let lazy = !program.lazy.is_empty();
        let kinds = |ks: Vec<DType>| {
            if lazy {
                ks.into_iter().map(|k| Buf::new(k, len)).collect()
            } else {
                Vec::new()
            }
        };
        Regs {
            regs: program.regs.iter().map(|k| Buf::new(*k, len)).collect(),
            gathered: program
                .inputs
                .iter()
                .map(|(_, k)| Buf::new(*k, len))
                .collect(),
            compact: Compact {
                picked: Vec::with_capacity(if lazy { len } else { 0 }),
                other: Vec::with_capacity(if lazy { len } else { 0 }),
                inputs: kinds(program.inputs.iter().map(|(_, k)| *k).collect()),
                regs: kinds(program.regs.clone()),
            },
        }
    }

    fn result(&self, program: &Program, n: usize) -> Col<'_> {
        self.regs[program.result].col(n)
    }

    /// Runs the program over one block of `n` elements at `at` (per operand); with
    /// `out`, writes the result there (the output's base: its address is `at`'s last).
    fn block(
        &mut self,
        program: &Program,
        layout: &Layout,
        at: &[Addr],
        n: usize,
        out: Option<Addr>,
    ) {
        let Regs {
            regs,
            gathered,
            compact,
        } = self;
        let mut cols: Vec<Col> = Vec::with_capacity(at.len() - 1);
        for ((k, buf), kind) in gathered.iter_mut().enumerate().zip(&layout.kinds) {
            let (stride, stored) = (layout.inner_stride(k), layout.stored[k]);
            cols.push(if stored.is_kind() {
                // SAFETY: the block's elements of input `k`, valid as `evaluate`'s caller
                // promised.
                by_kind!(kind, T => unsafe { input::<T>(at[k], stride, n, buf) })
            } else {
                // SAFETY: as above, stored as `stored` says (checked by `check_operands`).
                unsafe { converted(stored, *kind, at[k], stride, n, buf) }
            });
        }
        let out_at = out.map(|_| at[at.len() - 1]);
        let out_stride = layout.inner_stride(at.len() - 1);
        let direct =
            out_at.is_some_and(|a| by_kind!(program.out, T => view::is_slice::<T>(a, out_stride)));
        let last = program.instrs.len() - 1;
        let target = |i: usize| match out_at {
            // (the last instruction writes the output in place when it can)
            Some(a) if direct && i == last => Some(a),
            _ => None,
        };
        let mut lazy = program.lazy.iter().peekable();
        let mut i = 0;
        while i < program.instrs.len() {
            if let Some(lz) = lazy.next_if(|lz| lz.a.start.min(lz.b.start) == i) {
                if lazy_where(
                    program,
                    lz,
                    regs,
                    compact,
                    &cols,
                    n,
                    target(lz.end),
                    program.out,
                ) {
                    i = lz.end + 1;
                    continue;
                }
            }
            let ins = &program.instrs[i];
            let mut dst = std::mem::replace(&mut regs[ins.dst], Buf::Taken);
            {
                let mut args = [Col::B(Arg::S(0)); 3];
                for (slot, a) in args.iter_mut().zip(&ins.args) {
                    *slot = match a {
                        Operand::Input(k) => cols[*k],
                        Operand::Reg(r) => regs[*r].col(n),
                        Operand::Scalar(s) => Col::scalar(*s),
                    };
                }
                let out = match target(i) {
                    Some(a) => {
                        // SAFETY: the block's output elements: contiguous, aligned, ours alone.
                        by_kind!(program.out, T => T::out(unsafe { view::slice_mut::<T>(a, n) }))
                    }
                    None => dst.out(n),
                };
                run(ins.op, ins.kind, &args[..ins.args.len()], out);
            }
            regs[ins.dst] = dst;
            i += 1;
        }
        if let (Some(a), false) = (out_at, direct) {
            let r = &mut regs[program.result];
            // SAFETY: the block's output elements, ours alone as promised.
            by_kind!(program.out, T => unsafe { view::scatter(&T::buf(r)[..n], a, out_stride) });
        }
    }
}

/// Runs the lazy `where` `lz` over a block of `n`: its condition (computed already) splits
/// the block's positions; each branch's instructions run over its positions alone, their
/// operands from outside the branch gathered there; the `where` then places each
/// branch's results. Writes `out_at` when given (the program's output, in place), else
/// the `where`'s register. False (nothing done) for a constant condition.
#[allow(clippy::too_many_arguments)]
fn lazy_where(
    program: &Program,
    lz: &crate::program::LazyWhere,
    regs: &mut [Buf],
    compact: &mut Compact,
    cols: &[Col],
    n: usize,
    out_at: Option<Addr>,
    out_kind: DType,
) -> bool {
    let at_end = &program.instrs[lz.end];
    fn full<'a>(op: &Operand, regs: &'a [Buf], cols: &[Col<'a>], n: usize) -> Col<'a> {
        match op {
            Operand::Input(k) => cols[*k],
            Operand::Reg(r) => regs[*r].col(n),
            Operand::Scalar(s) => Col::scalar(*s),
        }
    }
    let Col::B(Arg::V(cond)) = full(&at_end.args[0], regs, cols, n) else {
        return false;
    };
    if compact.picked.len() < n {
        // (Kept at full length after: zeroing them again each block cost a pass.)
        compact.picked.resize(n, 0);
        compact.other.resize(n, 0);
    }
    let (t, f) = split(cond, &mut compact.picked[..n], &mut compact.other[..n]);
    let Compact {
        picked,
        other,
        inputs,
        regs: gathered,
    } = compact;
    let (picked, other) = (&picked[..t], &other[..f]);
    for (range, positions) in [(lz.a.clone(), picked), (lz.b.clone(), other)] {
        let k = positions.len();
        if k == 0 {
            continue;
        }
        let mut written: Vec<usize> = Vec::with_capacity(range.len());
        for ins in &program.instrs[range] {
            let mut dst = std::mem::replace(&mut regs[ins.dst], Buf::Taken);
            for a in &ins.args {
                match a {
                    Operand::Reg(r) if !written.contains(r) => {
                        gather_into(regs[*r].col(n), positions, &mut gathered[*r])
                    }
                    Operand::Input(i) => gather_into(cols[*i], positions, &mut inputs[*i]),
                    _ => {}
                }
            }
            let mut args = [Col::B(Arg::S(0)); 3];
            for (slot, a) in args.iter_mut().zip(&ins.args) {
                *slot = match a {
                    Operand::Reg(r) if written.contains(r) => regs[*r].col(k),
                    Operand::Reg(r) => gathered[*r].col(k),
                    Operand::Input(i)
                        if matches!(
                            cols[*i],
                            Col::B(Arg::S(_))
                                | Col::I(Arg::S(_))
                                | Col::L(Arg::S(_))
                                | Col::F(Arg::S(_))
                                | Col::D(Arg::S(_))
                                | Col::C(Arg::S(_))
                        ) =>
                    {
                        cols[*i]
                    }
                    Operand::Input(i) => inputs[*i].col(k),
                    Operand::Scalar(s) => Col::scalar(*s),
                };
            }
            run(ins.op, ins.kind, &args[..ins.args.len()], dst.out(k));
            regs[ins.dst] = dst;
            written.push(ins.dst);
        }
    }
    // The `where`: each position from its branch, computed compactly or read in full.
    let mut dst = std::mem::replace(&mut regs[at_end.dst], Buf::Taken);
    {
        let out = match out_at {
            // SAFETY: the block's output elements: contiguous, aligned, ours alone.
            Some(a) => by_kind!(out_kind, T => T::out(unsafe { view::slice_mut::<T>(a, n) })),
            None => dst.out(n),
        };
        let regs = &*regs;
        let branch = |op: &Operand, range: &std::ops::Range<usize>, k: usize| match op {
            Operand::Reg(r) if program.instrs[range.clone()].iter().any(|i| i.dst == *r) => {
                (regs[*r].col(k), true)
            }
            other => (full(other, regs, cols, n), false),
        };
        let (a, a_compact) = branch(&at_end.args[1], &lz.a, picked.len());
        let (b, b_compact) = branch(&at_end.args[2], &lz.b, other.len());
        place(out, picked, a, a_compact, other, b, b_compact);
    }
    regs[at_end.dst] = dst;
    true
}

/// Splits the positions `0..cond.len()` into those where `cond` holds (the first of the
/// two counts returned, written to `picked`) and the others. Branch-free: each position
/// is written to both lists and kept by one (a condition true half the time would
/// mispredict every other branch).
fn split(cond: &[u8], picked: &mut [u32], other: &mut [u32]) -> (usize, usize) {
    assert!(picked.len() >= cond.len() && other.len() >= cond.len());
    let (mut t, mut f) = (0, 0);
    for (p, c) in cond.iter().enumerate() {
        // SAFETY: `t` and `f` count positions before `p`, so both are at most
        // `p < cond.len()`, which both lists hold (asserted above).
        unsafe {
            *picked.get_unchecked_mut(t) = p as u32;
            *other.get_unchecked_mut(f) = p as u32;
        }
        let taken = usize::from(*c != 0);
        t += taken;
        f += 1 - taken;
    }
    (t, f)
}

/// `col` at `positions`, gathered into `buf` (a scalar is left alone: it is read as it is).
fn gather_into(col: Col<'_>, positions: &[u32], buf: &mut Buf) {
    fn pick<T: Wrap>(a: Arg<'_, T>, positions: &[u32], buf: &mut Buf) {
        if let Arg::V(v) = a {
            debug_assert!(positions.is_sorted());
            assert!(positions.last().is_none_or(|p| (*p as usize) < v.len()));
            for (slot, p) in T::buf(buf)[..positions.len()].iter_mut().zip(positions) {
                // SAFETY: positions ascend (`split`), and the last is in bounds (asserted).
                *slot = unsafe { *v.get_unchecked(*p as usize) };
            }
        }
    }
    match col {
        Col::B(a) => pick(a, positions, buf),
        Col::I(a) => pick(a, positions, buf),
        Col::L(a) => pick(a, positions, buf),
        Col::F(a) => pick(a, positions, buf),
        Col::D(a) => pick(a, positions, buf),
        Col::C(a) => pick(a, positions, buf),
    }
}

/// Writes `out` from two branches: position `pa[j]` from `a` (its `j`th value if
/// `a_compact`, else its value there), `pb[j]` likewise from `b`.
fn place(out: Out, pa: &[u32], a: Col, a_compact: bool, pb: &[u32], b: Col, b_compact: bool) {
    fn fill<T: Copy>(o: &mut [T], positions: &[u32], src: Arg<T>, compact: bool) {
        debug_assert!(positions.is_sorted());
        assert!(positions.last().is_none_or(|p| (*p as usize) < o.len()));
        assert!(
            compact || matches!(src, Arg::V(v) if v.len() >= o.len()) || matches!(src, Arg::S(_))
        );
        // SAFETY: every index is a position, and positions ascend (`split`) with the last
        // in bounds of `o` (asserted), and of `v` where `v` is read at positions (it is
        // at least as long as `o`: asserted).
        unsafe {
            match src {
                Arg::S(s) => positions
                    .iter()
                    .for_each(|p| *o.get_unchecked_mut(*p as usize) = s),
                Arg::V(v) if compact => {
                    for (p, x) in positions.iter().zip(v) {
                        *o.get_unchecked_mut(*p as usize) = *x;
                    }
                }
                Arg::V(v) => positions.iter().for_each(|p| {
                    *o.get_unchecked_mut(*p as usize) = *v.get_unchecked(*p as usize)
                }),
            }
        }
    }
    match (out, a, b) {
        (Out::B(o), Col::B(a), Col::B(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        (Out::I(o), Col::I(a), Col::I(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        (Out::L(o), Col::L(a), Col::L(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        (Out::F(o), Col::F(a), Col::F(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        (Out::D(o), Col::D(a), Col::D(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        (Out::C(o), Col::C(a), Col::C(b)) => (fill(o, pa, a, a_compact), fill(o, pb, b, b_compact)),
        _ => unreachable!("where's branches and result are of one kind"),
    };
}

/// A reduction's running value: floats summed in double.
#[derive(Clone, Copy, Debug)]
enum Acc {
    I(i32),
    L(i64),
    F(f32),
    D(f64),
    C(C64),
    /// Nothing folded yet (min and max have no identity).
    Empty,
}

impl Acc {
    // (inlined into each kind's loop over short rows: the matches on kinds fold away)
    #[inline(always)]
    fn start(red: Reduce, kind: DType) -> Acc {
        let one = red == Reduce::Prod;
        match (red, kind) {
            (Reduce::Min | Reduce::Max, _) => Acc::Empty,
            (_, DType::Int) => Acc::I(i32::from(one)),
            (_, DType::Long) => Acc::L(i64::from(one)),
            (_, DType::Float | DType::Double) => Acc::D(if one { 1.0 } else { 0.0 }),
            (_, DType::Complex) => Acc::C(C64::new(if one { 1.0 } else { 0.0 }, 0.0)),
            (_, DType::Bool) => unreachable!("refused when typed"),
        }
    }

    #[inline(always)]
    fn fold(&mut self, red: Reduce, col: Col) {
        let part = match col {
            Col::I(Arg::V(x)) => fold_ints(red, x.iter().map(|v| i64::from(*v)), true),
            Col::L(Arg::V(x)) => fold_ints(red, x.iter().copied(), false),
            Col::F(Arg::V(x)) => match red {
                Reduce::Sum | Reduce::Prod => Acc::D(lanes(x, red)),
                _ => extreme(x, red).map_or(Acc::Empty, Acc::F),
            },
            Col::D(Arg::V(x)) => match red {
                Reduce::Sum | Reduce::Prod => Acc::D(lanes(x, red)),
                _ => extreme(x, red).map_or(Acc::Empty, Acc::D),
            },
            Col::C(Arg::V(x)) => Acc::C(match red {
                Reduce::Sum => x.iter().sum(),
                _ => x.iter().product(),
            }),
            _ => unreachable!("a result is a register"),
        };
        *self = self.merge(red, part);
    }

    #[inline(always)]
    fn merge(self, red: Reduce, other: Acc) -> Acc {
        use Acc::*;
        match (self, other) {
            (Empty, x) | (x, Empty) => x,
            (I(a), I(b)) => I(if red == Reduce::Sum {
                a.wrapping_add(b)
            } else if red == Reduce::Prod {
                a.wrapping_mul(b)
            } else {
                pick(red, a, b)
            }),
            (L(a), L(b)) => L(if red == Reduce::Sum {
                a.wrapping_add(b)
            } else if red == Reduce::Prod {
                a.wrapping_mul(b)
            } else {
                pick(red, a, b)
            }),
            (F(a), F(b)) => F(pick_float(red, a, b)),
            (D(a), D(b)) => D(match red {
                Reduce::Sum => a + b,
                Reduce::Prod => a * b,
                _ => pick_float(red, a, b),
            }),
            (C(a), C(b)) => C(if red == Reduce::Sum { a + b } else { a * b }),
            (a, b) => unreachable!("partial results of one kind: {a:?} and {b:?}"),
        }
    }

    /// The final value, of `kind`, over `count` elements.
    #[inline(always)]
    fn finish(self, red: Reduce, kind: DType, count: usize) -> Result<Acc> {
        Ok(match (self, kind) {
            (Acc::Empty, _) => {
                let name = if red == Reduce::Min {
                    "minimum"
                } else {
                    "maximum"
                };
                debug_assert_eq!(count, 0);
                return Err(ExprError::Value(format!(
                    "zero-size array to reduction operation {name} which has no identity"
                )));
            }
            (Acc::D(v), DType::Float) => Acc::F(v as f32),
            (acc, _) => acc,
        })
    }

    /// Writes the value at `at`.
    ///
    /// # Safety
    /// `at` is an output element of the value's kind, ours alone.
    #[inline(always)]
    unsafe fn write(self, at: Addr) {
        // SAFETY: as the caller promised.
        unsafe {
            match self {
                Acc::I(v) => view::write(at, v),
                Acc::L(v) => view::write(at, v),
                Acc::F(v) => view::write(at, v),
                Acc::D(v) => view::write(at, v),
                Acc::C(v) => view::write(at, v),
                Acc::Empty => unreachable!("finished first"),
            }
        }
    }
}

fn pick<T: PartialOrd>(red: Reduce, a: T, b: T) -> T {
    // (a select: which of two values wins is a coin toss on data in no order)
    std::hint::select_unpredictable((red == Reduce::Min) == (b < a), b, a)
}

pub(crate) fn pick_float<T: PartialOrd + Copy>(red: Reduce, a: T, b: T) -> T {
    // NaN wins, as in numpy's min and max.
    #[allow(clippy::eq_op)]
    if a != a {
        return a;
    }
    #[allow(clippy::eq_op)]
    if b != b {
        return b;
    }
    pick(red, a, b)
}

fn fold_ints(red: Reduce, x: impl Iterator<Item = i64>, narrow: bool) -> Acc {
    let wrap = |v: i64| if narrow { Acc::I(v as i32) } else { Acc::L(v) };
    match red {
        // (in the element's own width, wrapping, as numexpr's integer sums do)
        Reduce::Sum if narrow => Acc::I(x.fold(0i32, |a, v| a.wrapping_add(v as i32))),
        Reduce::Sum => Acc::L(x.fold(0i64, i64::wrapping_add)),
        Reduce::Prod if narrow => Acc::I(x.fold(1i32, |a, v| a.wrapping_mul(v as i32))),
        Reduce::Prod => Acc::L(x.fold(1i64, i64::wrapping_mul)),
        Reduce::Min => x.min().map_or(Acc::Empty, wrap),
        Reduce::Max => x.max().map_or(Acc::Empty, wrap),
    }
}

/// A block's minimum or maximum (NaN wins, as numpy's), in eight lanes: branch-free, so
/// vectorised (an element at a time through `Acc::merge` ran at a third of numexpr's
/// speed).
#[inline]
fn extreme<T: Copy + PartialOrd>(x: &[T], red: Reduce) -> Option<T> {
    let first = *x.first()?;
    let step = |lane: T, v: T| extreme_step(red, lane, v);
    if x.len() <= SHORT_ROW {
        // (a short row's: one lane, element after element, as `fold_rows` folds a tile's
        // rows; eight lanes, most of them empty, then their NaN-checked fold, cost an
        // (N, 3) array's rows twice numexpr's)
        return Some(x[1..].iter().fold(first, |lane, v| step(lane, *v)));
    }
    let mut acc = [first; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (slot, v) in acc.iter_mut().zip(c) {
            *slot = step(*slot, *v);
        }
    }
    for (slot, v) in acc.iter_mut().zip(rest) {
        *slot = step(*slot, *v);
    }
    Some(acc.into_iter().fold(first, |a, b| pick_float(red, a, b)))
}

/// One step of a minimum (maximum): keeps a NaN `lane`; takes a NaN `v`; else the
/// smaller (the larger). (`better` is only read when neither is NaN; of equal values,
/// only 0.0 and -0.0 differ, and which of them wins depends on the lanes, as in numpy's
/// own vectorised max.)
#[inline(always)]
pub(crate) fn extreme_step<T: Copy + PartialOrd>(red: Reduce, lane: T, v: T) -> T {
    let better = if red == Reduce::Min {
        v < lane
    } else {
        v >= lane
    };
    #[allow(clippy::eq_op)]
    std::hint::select_unpredictable(lane == lane && (v != v || better), v, lane)
}

/// A block's sum or product in eight lanes (vectorised, and pairwise enough that long
/// sums lose less than a running one).
fn lanes<T: Copy + Into<f64>>(x: &[T], red: Reduce) -> f64 {
    let sum = red == Reduce::Sum;
    if x.len() <= 8 {
        // (a short row's: the same sums, without the lanes' array, whose element-wise
        // stores then paired reads stalled each row as long as the row's whole fold)
        let lane = |j: usize| {
            x.get(j).map_or(if sum { 0.0 } else { 1.0 }, |v| {
                if sum {
                    0.0 + (*v).into()
                } else {
                    1.0 * (*v).into()
                }
            })
        };
        return if sum {
            ((lane(0) + lane(4)) + (lane(1) + lane(5)))
                + ((lane(2) + lane(6)) + (lane(3) + lane(7)))
        } else {
            (0..8).map(lane).product()
        };
    }
    let mut acc = [if sum { 0.0 } else { 1.0 }; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (slot, v) in acc.iter_mut().zip(c) {
            if sum {
                *slot += (*v).into();
            } else {
                *slot *= (*v).into();
            }
        }
    }
    for (slot, v) in acc.iter_mut().zip(rest) {
        if sum {
            *slot += (*v).into();
        } else {
            *slot *= (*v).into();
        }
    }
    if sum {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    } else {
        acc.iter().product()
    }
}
