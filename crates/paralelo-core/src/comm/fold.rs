//! Element-wise reductions for collectives: MPI's predefined operators over typed slices,
//! computed as numpy computes them (integers wrap, a NaN wins `Max` and `Min`, logical
//! operators give 1 or 0), in loops the compiler vectorises: one pass at memory speed.
//!
//! [`fold`] combines in place (`out = out op b`), [`fold_into`] from two inputs (`out =
//! a op b`): a reduction folds each rank's part in rank order, the lower ranks' result
//! on the left, as MPI defines it for operators that do not commute.
use crate::{Error, Result};

/// A predefined reduction operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sum,
    Prod,
    Max,
    Min,
    LogicalAnd,
    LogicalOr,
    LogicalXor,
    BitAnd,
    BitOr,
    BitXor,
}

impl Op {
    /// The operator MPI names `name` (`"SUM"`, `"MAX"`, `"BXOR"`...).
    pub fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "SUM" => Op::Sum,
            "PROD" => Op::Prod,
            "MAX" => Op::Max,
            "MIN" => Op::Min,
            "LAND" => Op::LogicalAnd,
            "LOR" => Op::LogicalOr,
            "LXOR" => Op::LogicalXor,
            "BAND" => Op::BitAnd,
            "BOR" => Op::BitOr,
            "BXOR" => Op::BitXor,
            _ => return None,
        })
    }
}

/// A plain number a reduction runs on: how each operator combines two of them (None:
/// the operator does not apply, as bitwise ones to floats).
pub trait Element: Copy + Send + Sync + 'static {
    /// `out[i] = out[i] op b[i]`; false if `op` does not apply to this type.
    fn fold(op: Op, out: &mut [Self], b: &[Self]) -> bool;
    /// `out[i] = a[i] op b[i]`; false if `op` does not apply to this type.
    fn fold_into(op: Op, out: &mut [Self], a: &[Self], b: &[Self]) -> bool;
}

#[inline(always)]
fn each_in_place<T: Copy>(out: &mut [T], b: &[T], f: impl Fn(T, T) -> T) {
    for (o, &y) in out.iter_mut().zip(b) {
        *o = f(*o, y);
    }
}

#[inline(always)]
fn each_into<T: Copy>(out: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

/// Both entry points over one table of operators: `$each` runs a closure over the data.
macro_rules! dispatch {
    (int, $t:ty, $op:expr, $each:ident!($($data:expr),*)) => {
        match $op {
            Op::Sum => $each!($($data),*; |x: $t, y: $t| x.wrapping_add(y)),
            Op::Prod => $each!($($data),*; |x: $t, y: $t| x.wrapping_mul(y)),
            Op::Max => $each!($($data),*; |x: $t, y: $t| x.max(y)),
            Op::Min => $each!($($data),*; |x: $t, y: $t| x.min(y)),
            Op::LogicalAnd => $each!($($data),*; |x: $t, y: $t| (x != 0 && y != 0) as $t),
            Op::LogicalOr => $each!($($data),*; |x: $t, y: $t| (x != 0 || y != 0) as $t),
            Op::LogicalXor => $each!($($data),*; |x: $t, y: $t| ((x != 0) != (y != 0)) as $t),
            Op::BitAnd => $each!($($data),*; |x: $t, y: $t| x & y),
            Op::BitOr => $each!($($data),*; |x: $t, y: $t| x | y),
            Op::BitXor => $each!($($data),*; |x: $t, y: $t| x ^ y),
        }
    };
    (float, $t:ty, $op:expr, $each:ident!($($data:expr),*)) => {
        match $op {
            Op::Sum => $each!($($data),*; |x: $t, y: $t| x + y),
            Op::Prod => $each!($($data),*; |x: $t, y: $t| x * y),
            // (numpy's: a NaN on either side is the result)
            Op::Max => $each!($($data),*; |x: $t, y: $t| if x.is_nan() || x > y { x } else { y }),
            Op::Min => $each!($($data),*; |x: $t, y: $t| if x.is_nan() || x < y { x } else { y }),
            Op::LogicalAnd => $each!($($data),*; |x: $t, y: $t| (x != 0.0 && y != 0.0) as u8 as $t),
            Op::LogicalOr => $each!($($data),*; |x: $t, y: $t| (x != 0.0 || y != 0.0) as u8 as $t),
            Op::LogicalXor => $each!($($data),*; |x: $t, y: $t| ((x != 0.0) != (y != 0.0)) as u8 as $t),
            Op::BitAnd | Op::BitOr | Op::BitXor => return false,
        }
    };
}

macro_rules! in_place {
    ($out:expr, $b:expr; $f:expr) => {
        each_in_place($out, $b, $f)
    };
}

macro_rules! into {
    ($out:expr, $a:expr, $b:expr; $f:expr) => {
        each_into($out, $a, $b, $f)
    };
}

macro_rules! element {
    ($kind:ident: $($t:ty),*) => {$(
        impl Element for $t {
            fn fold(op: Op, out: &mut [Self], b: &[Self]) -> bool {
                dispatch!($kind, $t, op, in_place!(out, b));
                true
            }
            fn fold_into(op: Op, out: &mut [Self], a: &[Self], b: &[Self]) -> bool {
                dispatch!($kind, $t, op, into!(out, a, b));
                true
            }
        }
    )*};
}

element!(int: i8, i16, i32, i64, u8, u16, u32, u64);
element!(float: f32, f64);

fn same_len(out: usize, other: usize) -> Result<()> {
    if out != other {
        return Err(Error::Invalid(format!(
            "a reduction's parts differ in length: {out} and {other} elements"
        )));
    }
    Ok(())
}

/// `out = out op b`, element by element. Err if the lengths differ or `op` does not
/// apply to `T` (bitwise operators on floats).
pub fn fold<T: Element>(op: Op, out: &mut [T], b: &[T]) -> Result<()> {
    same_len(out.len(), b.len())?;
    if T::fold(op, out, b) {
        Ok(())
    } else {
        Err(not_for(op))
    }
}

/// `out = a op b`, element by element (`a` on the left: the lower ranks' part).
pub fn fold_into<T: Element>(op: Op, out: &mut [T], a: &[T], b: &[T]) -> Result<()> {
    same_len(out.len(), a.len())?;
    same_len(out.len(), b.len())?;
    if T::fold_into(op, out, a, b) {
        Ok(())
    } else {
        Err(not_for(op))
    }
}

fn not_for(op: Op) -> Error {
    Error::Invalid(format!("{op:?} does not apply to floating-point values"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_on_integers_as_numpy_computes_it() {
        let a = [3i32, -4, 0, i32::MAX];
        let b = [5i32, 2, 7, 1];
        let mut out = [0i32; 4];
        let cases: [(Op, [i32; 4]); 10] = [
            (Op::Sum, [8, -2, 7, i32::MIN]), // (wraps, as numpy does)
            (Op::Prod, [15, -8, 0, i32::MAX]),
            (Op::Max, [5, 2, 7, i32::MAX]),
            (Op::Min, [3, -4, 0, 1]),
            (Op::LogicalAnd, [1, 1, 0, 1]),
            (Op::LogicalOr, [1, 1, 1, 1]),
            (Op::LogicalXor, [0, 0, 1, 0]),
            (Op::BitAnd, [1, 0, 0, 1]),
            (Op::BitOr, [7, -2, 7, i32::MAX]),
            (Op::BitXor, [6, -2, 7, i32::MAX - 1]),
        ];
        for (op, expected) in cases {
            fold_into(op, &mut out, &a, &b).unwrap();
            assert_eq!(out, expected, "{op:?}");
            let mut inplace = a;
            fold(op, &mut inplace, &b).unwrap();
            assert_eq!(inplace, expected, "{op:?} in place");
        }
    }

    #[test]
    fn floats_let_nan_win_max_and_min_and_refuse_bitwise() {
        let a = [1.0f64, f64::NAN, 2.0];
        let b = [f64::NAN, 0.5, 3.0];
        let mut out = [0.0; 3];
        fold_into(Op::Max, &mut out, &a, &b).unwrap();
        assert!(out[0].is_nan() && out[1].is_nan() && out[2] == 3.0);
        fold_into(Op::Min, &mut out, &a, &b).unwrap();
        assert!(out[0].is_nan() && out[1].is_nan() && out[2] == 2.0);
        fold_into(Op::LogicalXor, &mut out, &[0.0, 1.0, 2.0], &[0.0, 0.0, 3.0]).unwrap();
        assert_eq!(out, [0.0, 1.0, 0.0]);
        assert!(fold(Op::BitXor, &mut out, &b).is_err());
    }

    #[test]
    fn parts_of_different_lengths_are_refused() {
        let mut out = [0u8; 3];
        assert!(fold(Op::Sum, &mut out, &[1, 2]).is_err());
        assert!(fold_into(Op::Sum, &mut out, &[1, 2, 3], &[1]).is_err());
    }

    #[test]
    fn names_are_mpis() {
        assert_eq!(Op::from_name("BXOR"), Some(Op::BitXor));
        assert_eq!(Op::from_name("MAXLOC"), None);
    }
}
