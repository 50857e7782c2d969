//! A reduction over the last axis folded a tile of rows at a time, across the columns:
//! column `c` of every row of the tile at once (vectorised, and reading memory in runs
//! where the rows lie closer together than a row's elements), no column kept. Each row
//! folds bit for bit as the row alone does as a whole reduction (`exec::fold_part` over
//! its chunks, merged in order): the same chunks, the same blocks within them, the same
//! lanes within a block, merged in the same order. (A NaN's sign aside: which of two
//! NaNs a sum keeps is the compiler's order of operands; and a float32 minimum or
//! maximum, folded in double, keeps a signalling NaN as a quiet one.)

use num_complex::Complex64 as C64;

use crate::dtype::DType;
use crate::error::{ExprError, Result};
use crate::exec::{extreme_step, pick_float, REDUCTION_BLOCK, SHORT_ROW};
use crate::kernels::{Arg, Col};
use crate::ops::Reduce;
use crate::view::{self, Addr};

/// Lanes a block's sum, product, minimum or maximum is folded in (`exec::lanes`,
/// `exec::extreme`).
const LANES: usize = 8;

/// The running values of a tile's rows (`cap` rows at most).
pub(crate) struct RowFold {
    red: Reduce,
    /// The result's kind.
    kind: DType,
    /// The parts a whole reduction of a row is cut into: `[start, end)` columns.
    chunks: Vec<(usize, usize)>,
    /// Rows in the tile now.
    n: usize,
    cap: usize,
    /// The chunk the next column is in.
    chunk: usize,
    /// Whether the row's total, and the chunk's, have a value yet (min and max start
    /// with none).
    total_open: bool,
    chunk_open: bool,
    /// Floats (float32 in double): a block's lanes (`LANES` × `cap`), its first
    /// elements (min and max), the chunk's value and the row's.
    lanes: Vec<f64>,
    firsts: Vec<f64>,
    part: Vec<f64>,
    total: Vec<f64>,
    /// Integers, wrapping in 64 bits (what 32 bits keep of it is what 32-bit wrapping
    /// gives; any order folds them alike): the chunk's value and the row's.
    ints: Vec<i64>,
    int_total: Vec<i64>,
    /// Complex sums and products: the block's, the chunk's, the row's.
    c_block: Vec<C64>,
    c_part: Vec<C64>,
    c_total: Vec<C64>,
}

impl RowFold {
    /// For tiles of up to `cap` rows of `len` elements, reduced by `red` into `kind`.
    pub(crate) fn new(red: Reduce, kind: DType, cap: usize, len: usize) -> RowFold {
        let floats = matches!(kind, DType::Float | DType::Double);
        let size = |yes: bool, n: usize| if yes { n } else { 0 };
        RowFold {
            red,
            kind,
            chunks: crate::exec::reduction_chunks(len),
            n: 0,
            cap,
            chunk: 0,
            total_open: false,
            chunk_open: false,
            lanes: vec![0.0; size(floats, LANES * cap)],
            firsts: vec![0.0; size(floats, cap)],
            part: vec![0.0; size(floats, cap)],
            total: vec![0.0; size(floats, cap)],
            ints: vec![0; size(matches!(kind, DType::Int | DType::Long), cap)],
            int_total: vec![0; size(matches!(kind, DType::Int | DType::Long), cap)],
            c_block: vec![C64::default(); size(kind == DType::Complex, cap)],
            c_part: vec![C64::default(); size(kind == DType::Complex, cap)],
            c_total: vec![C64::default(); size(kind == DType::Complex, cap)],
        }
    }

    /// Starts a tile of `n` rows, from column `first` (the first of a chunk).
    pub(crate) fn start(&mut self, n: usize, first: usize) {
        debug_assert!(n <= self.cap);
        self.n = n;
        self.chunk = self.chunks.iter().position(|c| c.0 == first).unwrap_or(0);
        self.total_open = false;
    }

    /// Rows in the tile.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Merges in a chunk's values for the tile's rows (the chunks in order), from row
    /// `from` of `part`.
    pub(crate) fn merge(&mut self, part: &Partial, from: usize, n: usize) {
        match part {
            Partial::F(v) => self.part[..n].copy_from_slice(&v[from..from + n]),
            Partial::I(v) => self.ints[..n].copy_from_slice(&v[from..from + n]),
            Partial::C(v) => self.c_part[..n].copy_from_slice(&v[from..from + n]),
        }
        self.close_chunk();
    }

    /// Folds in column `c` (the columns come in order, from 0): `values`, a row's each.
    pub(crate) fn column(&mut self, c: usize, values: Col) {
        let (chunk_start, chunk_end) = self.chunks[self.chunk];
        let block_start = chunk_start + (c - chunk_start) / REDUCTION_BLOCK * REDUCTION_BLOCK;
        let block_len = (block_start + REDUCTION_BLOCK).min(chunk_end) - block_start;
        let at = c - block_start;
        if c == chunk_start {
            self.chunk_open = false;
        }
        let n = self.n;
        let red = self.red;
        let sum = red == Reduce::Sum;
        match values {
            Col::F(Arg::V(v)) => self.floats(at, block_len, v[..n].iter().map(|x| f64::from(*x))),
            Col::D(Arg::V(v)) => self.floats(at, block_len, v[..n].iter().copied()),
            Col::I(Arg::V(v)) => self.ints(c == chunk_start, v[..n].iter().map(|x| i64::from(*x))),
            Col::L(Arg::V(v)) => self.ints(c == chunk_start, v[..n].iter().copied()),
            Col::C(Arg::V(v)) => {
                let one = C64::new(if sum { 0.0 } else { 1.0 }, 0.0);
                let step = |a: C64, b: C64| if sum { a + b } else { a * b };
                if at == 0 {
                    self.c_block[..n].fill(one);
                }
                for (a, x) in self.c_block[..n].iter_mut().zip(&v[..n]) {
                    *a = step(*a, *x);
                }
                if at + 1 == block_len {
                    // (a chunk starts from the identity, as `Acc::start`; the row's total
                    // from its first chunk, as the chunks' merge)
                    if !self.chunk_open {
                        self.c_part[..n].fill(one);
                    }
                    for (p, b) in self.c_part[..n].iter_mut().zip(&self.c_block[..n]) {
                        *p = step(*p, *b);
                    }
                    self.chunk_open = true;
                }
            }
            _ => unreachable!("a reduction's result is a register of its kind"),
        }
        if c + 1 == chunk_end {
            self.close_chunk();
            self.chunk += 1;
        }
    }

    /// Column `at` of a block of `block_len`, of floats (as doubles).
    fn floats(&mut self, at: usize, block_len: usize, v: impl Iterator<Item = f64> + Clone) {
        let (n, cap, red) = (self.n, self.cap, self.red);
        let sum = red == Reduce::Sum;
        let lanes = &mut self.lanes;
        match red {
            Reduce::Sum | Reduce::Prod => {
                let identity = if sum { 0.0 } else { 1.0 };
                let lane = &mut lanes[(at % LANES) * cap..][..n];
                // (a lane's first element starts it: no lanes to clear first)
                let fresh = at < LANES;
                for (a, x) in lane.iter_mut().zip(v) {
                    let before = if fresh { identity } else { *a };
                    *a = if sum { before + x } else { before * x };
                }
                if at + 1 == block_len {
                    let (part, open) = (&mut self.part[..n], self.chunk_open);
                    // (lanes the block did not reach are the identity, never read)
                    match block_len.min(LANES) {
                        1 => close_lanes::<1>(lanes, cap, part, open, sum),
                        2 => close_lanes::<2>(lanes, cap, part, open, sum),
                        3 => close_lanes::<3>(lanes, cap, part, open, sum),
                        4 => close_lanes::<4>(lanes, cap, part, open, sum),
                        5 => close_lanes::<5>(lanes, cap, part, open, sum),
                        6 => close_lanes::<6>(lanes, cap, part, open, sum),
                        7 => close_lanes::<7>(lanes, cap, part, open, sum),
                        _ => close_lanes::<8>(lanes, cap, part, open, sum),
                    }
                    self.chunk_open = true;
                }
            }
            Reduce::Min | Reduce::Max => {
                let step = |a: f64, x: f64| extreme_step(red, a, x);
                if block_len <= SHORT_ROW {
                    // (element after element, from the first)
                    let lane = &mut lanes[..n];
                    if at == 0 {
                        for (a, x) in lane.iter_mut().zip(v) {
                            *a = x;
                        }
                    } else {
                        for (a, x) in lane.iter_mut().zip(v) {
                            *a = step(*a, x);
                        }
                    }
                } else {
                    if at == 0 {
                        for (f, x) in self.firsts[..n].iter_mut().zip(v.clone()) {
                            *f = x;
                        }
                        for j in 0..LANES {
                            lanes[j * cap..][..n].copy_from_slice(&self.firsts[..n]);
                        }
                    }
                    let lane = &mut lanes[(at % LANES) * cap..][..n];
                    for (a, x) in lane.iter_mut().zip(v) {
                        *a = step(*a, x);
                    }
                }
                if at + 1 == block_len {
                    let long = block_len > SHORT_ROW;
                    let (part, open, firsts) = (&mut self.part, self.chunk_open, &self.firsts);
                    for (r, p) in part[..n].iter_mut().enumerate() {
                        let value = if long {
                            (0..LANES)
                                .fold(firsts[r], |a, j| pick_float(red, a, lanes[j * cap + r]))
                        } else {
                            lanes[r]
                        };
                        *p = if open {
                            pick_float(red, *p, value)
                        } else {
                            value
                        };
                    }
                    self.chunk_open = true;
                }
            }
        }
    }

    /// A column of integers (`first`: the chunk's first).
    fn ints(&mut self, first: bool, v: impl Iterator<Item = i64>) {
        let (n, red) = (self.n, self.red);
        let acc = &mut self.ints[..n];
        if first {
            match red {
                Reduce::Sum => acc.fill(0),
                Reduce::Prod => acc.fill(1),
                Reduce::Min | Reduce::Max => {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a = x;
                    }
                    return;
                }
            }
        }
        for (a, x) in acc.iter_mut().zip(v) {
            *a = match red {
                Reduce::Sum => a.wrapping_add(x),
                Reduce::Prod => a.wrapping_mul(x),
                Reduce::Min => (*a).min(x),
                Reduce::Max => (*a).max(x),
            };
        }
    }

    /// A chunk's value into the row's total (the first chunk's is the total).
    fn close_chunk(&mut self) {
        let (n, red, open) = (self.n, self.red, self.total_open);
        match self.kind {
            DType::Float | DType::Double => {
                for (t, p) in self.total[..n].iter_mut().zip(&self.part[..n]) {
                    *t = if !open {
                        *p
                    } else {
                        match red {
                            Reduce::Sum => *t + *p,
                            Reduce::Prod => *t * *p,
                            _ => pick_float(red, *t, *p),
                        }
                    };
                }
            }
            DType::Int | DType::Long => {
                for (t, p) in self.int_total[..n].iter_mut().zip(&self.ints[..n]) {
                    *t = if !open {
                        *p
                    } else {
                        match red {
                            Reduce::Sum => t.wrapping_add(*p),
                            Reduce::Prod => t.wrapping_mul(*p),
                            Reduce::Min => (*t).min(*p),
                            Reduce::Max => (*t).max(*p),
                        }
                    };
                }
            }
            DType::Complex => {
                for (t, p) in self.c_total[..n].iter_mut().zip(&self.c_part[..n]) {
                    *t = match (open, red) {
                        (false, _) => *p,
                        (true, Reduce::Sum) => *t + *p,
                        (true, _) => *t * *p,
                    };
                }
            }
            _ => {}
        }
        self.total_open = true;
    }

    /// Writes each row's value: row `r`'s at `out` + `r` × `stride`.
    ///
    /// # Safety
    /// Those are the tile's output elements, of the result's kind, written by no one
    /// else.
    pub(crate) unsafe fn finish(&self, out: Addr, stride: isize) -> Result<()> {
        if !self.total_open {
            // (rows of no element: the identity, or min and max's error)
            if matches!(self.red, Reduce::Min | Reduce::Max) {
                let name = if self.red == Reduce::Min {
                    "minimum"
                } else {
                    "maximum"
                };
                return Err(ExprError::Value(format!(
                    "zero-size array to reduction operation {name} which has no identity"
                )));
            }
        }
        /// Writes row `r`'s value at `out` + `r` × `stride`, for each row.
        ///
        /// # Safety
        /// As `finish`'s.
        unsafe fn put<T: Copy>(out: Addr, stride: isize, values: impl Iterator<Item = T>) {
            for (r, v) in values.enumerate() {
                // SAFETY: row `r`'s output element, as the caller promised.
                unsafe { view::write(out.offset(stride * r as isize), v) };
            }
        }
        let (n, open) = (self.n, self.total_open);
        let one = self.red == Reduce::Prod;
        let (fi, ii) = (f64::from(u8::from(one)), i64::from(one));
        // SAFETY: the tile's rows' output elements, as the caller promised.
        unsafe {
            match (self.kind, open) {
                (DType::Float, true) => put(out, stride, self.total[..n].iter().map(|v| *v as f32)),
                (DType::Float, false) => put(out, stride, std::iter::repeat_n(fi as f32, n)),
                (DType::Double, true) => put(out, stride, self.total[..n].iter().copied()),
                (DType::Double, false) => put(out, stride, std::iter::repeat_n(fi, n)),
                (DType::Int, true) => {
                    put(out, stride, self.int_total[..n].iter().map(|v| *v as i32))
                }
                (DType::Int, false) => put(out, stride, std::iter::repeat_n(ii as i32, n)),
                (DType::Long, true) => put(out, stride, self.int_total[..n].iter().copied()),
                (DType::Long, false) => put(out, stride, std::iter::repeat_n(ii, n)),
                (DType::Complex, true) => put(out, stride, self.c_total[..n].iter().copied()),
                (DType::Complex, false) => {
                    put(out, stride, std::iter::repeat_n(C64::new(fi, 0.0), n))
                }
                (DType::Bool, _) => unreachable!("no reduction of booleans"),
            }
        }
        Ok(())
    }
}

/// A block's lanes (`U` of them reached) combined as `exec::lanes` combines them, into
/// each row's chunk value `part` (from the identity where the chunk is not `open`).
#[inline(always)]
fn close_lanes<const U: usize>(lanes: &[f64], cap: usize, part: &mut [f64], open: bool, sum: bool) {
    let identity = if sum { 0.0 } else { 1.0 };
    for (r, p) in part.iter_mut().enumerate() {
        let l = |j: usize| if j < U { lanes[j * cap + r] } else { identity };
        let value = if sum {
            ((l(0) + l(4)) + (l(1) + l(5))) + ((l(2) + l(6)) + (l(3) + l(7)))
        } else {
            (0..LANES).map(l).product()
        };
        let before = if open { *p } else { identity };
        *p = if sum { before + value } else { before * value };
    }
}

/// A chunk's values for the rows of a range of tiles, in their order.
pub(crate) enum Partial {
    F(Vec<f64>),
    I(Vec<i64>),
    C(Vec<C64>),
}

impl Partial {
    /// For `rows` rows of a reduction into `kind`.
    pub(crate) fn new(kind: DType, rows: usize) -> Partial {
        match kind {
            DType::Float | DType::Double => Partial::F(Vec::with_capacity(rows)),
            DType::Complex => Partial::C(Vec::with_capacity(rows)),
            _ => Partial::I(Vec::with_capacity(rows)),
        }
    }

    /// Appends the chunk's values of `fold`'s tile (its one chunk, closed).
    pub(crate) fn extend(&mut self, fold: &RowFold) {
        let n = fold.n;
        match self {
            Partial::F(v) => v.extend_from_slice(&fold.total[..n]),
            Partial::I(v) => v.extend_from_slice(&fold.int_total[..n]),
            Partial::C(v) => v.extend_from_slice(&fold.c_total[..n]),
        }
    }
}
