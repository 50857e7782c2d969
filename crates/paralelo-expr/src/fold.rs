//! Python's arithmetic on constants, as numexpr folds them before it compiles: ints
//! exactly (within 128 bits here: past them an expression is refused), floats and
//! complexes as Python computes them, comparisons between ints and floats exact.

use std::cmp::Ordering;

use num_complex::Complex64;

use crate::ast::{BinaryOp, Literal};
use crate::error::{ExprError, Result};
use crate::ops::Op;

/// The constant as Python's `complex(c)`.
pub(crate) fn complex_of(lit: Literal) -> Complex64 {
    match lit {
        Literal::Bool(b) => Complex64::new(f64::from(u8::from(b)), 0.0),
        Literal::Int(v) => Complex64::new(v as f64, 0.0),
        Literal::Float(v) => Complex64::new(v, 0.0),
        Literal::Complex(v) => v,
    }
}

/// The constant as an int, if it is one (a bool is).
pub(crate) fn as_int(lit: Literal) -> Option<i128> {
    match lit {
        Literal::Bool(b) => Some(i128::from(b)),
        Literal::Int(v) => Some(v),
        _ => None,
    }
}

fn too_wide() -> ExprError {
    ExprError::Overflow(
        "an integer among the expression's constants is past 128 bits, which paralelo's \
         constants do not hold (numexpr computes with it beside floats): write it as a \
         float, as 2.0**127"
            .into(),
    )
}

/// Python's unary `-` and `~` on a constant.
pub(crate) fn unary(op: Op, lit: Literal) -> Result<Literal> {
    Ok(match (op, lit) {
        (Op::Neg, Literal::Bool(b)) => Literal::Int(-i128::from(b)),
        (Op::Neg, Literal::Int(v)) => Literal::Int(v.checked_neg().ok_or_else(too_wide)?),
        (Op::Neg, Literal::Float(v)) => Literal::Float(-v),
        (Op::Neg, Literal::Complex(v)) => Literal::Complex(-v),
        (Op::Invert, Literal::Bool(b)) => Literal::Int(!i128::from(b)),
        (Op::Invert, Literal::Int(v)) => Literal::Int(!v),
        _ => return Err(ExprError::Type("bad operand type for unary ~".into())),
    })
}

/// Python's comparison of two constants (`op` one of numexpr's: `>`, `>=`, `==`, `!=`).
pub(crate) fn compare(op: Op, a: Literal, b: Literal) -> Result<Literal> {
    let (x, y) = (complex_of(a), complex_of(b));
    if matches!(op, Op::Gt | Op::Ge) && (x.im != 0.0 || y.im != 0.0) {
        return Err(ExprError::Type(
            "'>' not supported between instances of 'complex' and 'complex'".into(),
        ));
    }
    // Exact where an int is compared: past 53 bits, numbers that differ may be one double.
    let order = match (as_int(a), as_int(b)) {
        (Some(i), Some(j)) => Some(i.cmp(&j)),
        (Some(i), None) if y.im == 0.0 => int_float(i, y.re),
        (None, Some(j)) if x.im == 0.0 => int_float(j, x.re).map(Ordering::reverse),
        _ if x.im != y.im => None,
        _ => x.re.partial_cmp(&y.re),
    };
    Ok(Literal::Bool(match op {
        Op::Eq => order == Some(Ordering::Equal),
        Op::Ne => order != Some(Ordering::Equal),
        Op::Gt => order == Some(Ordering::Greater),
        _ => matches!(order, Some(Ordering::Greater | Ordering::Equal)),
    }))
}

/// `i` against `f`, exactly (None for NaN).
fn int_float(i: i128, f: f64) -> Option<Ordering> {
    let edge = 2f64.powi(127);
    if f.is_nan() {
        return None;
    }
    if f >= edge {
        return Some(Ordering::Less); // (and +inf)
    }
    if f < -edge {
        return Some(Ordering::Greater);
    }
    let whole = f.floor(); // (an integer within i128, exactly)
    match i.cmp(&(whole as i128)) {
        Ordering::Equal if whole < f => Some(Ordering::Less),
        o => Some(o),
    }
}

/// Python's arithmetic on two constants.
pub(crate) fn binary(op: BinaryOp, a: Literal, b: Literal) -> Result<Literal> {
    let zero = |what: &str| ExprError::ZeroDivision(what.to_string());
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        let both_bool = matches!((a, b), (Literal::Bool(_), Literal::Bool(_)));
        return Ok(match op {
            BinaryOp::Add => Literal::Int(x.checked_add(y).ok_or_else(too_wide)?),
            BinaryOp::Sub => Literal::Int(x.checked_sub(y).ok_or_else(too_wide)?),
            BinaryOp::Mul => Literal::Int(x.checked_mul(y).ok_or_else(too_wide)?),
            BinaryOp::Div if y == 0 => return Err(zero("division by zero")),
            BinaryOp::Div => Literal::Float(true_div(x, y)),
            BinaryOp::FloorDiv | BinaryOp::Mod if y == 0 => {
                return Err(zero("integer division or modulo by zero"))
            }
            BinaryOp::FloorDiv => Literal::Int(floor_div(x, y)?),
            BinaryOp::Mod => Literal::Int(modulo(x, y)),
            BinaryOp::Pow if y < 0 && x == 0 => {
                return Err(zero("0.0 cannot be raised to a negative power"))
            }
            BinaryOp::Pow if y < 0 => Literal::Float((x as f64).powf(y as f64)),
            BinaryOp::Pow => Literal::Int(power(x, y)?),
            BinaryOp::LShift | BinaryOp::RShift if y < 0 => {
                return Err(ExprError::Value("negative shift count".into()))
            }
            BinaryOp::LShift if x == 0 => Literal::Int(0),
            BinaryOp::LShift => Literal::Int(
                u32::try_from(y)
                    .ok()
                    .and_then(|s| x.checked_shl(s))
                    .filter(|v| v >> y.min(127) == x)
                    .ok_or_else(too_wide)?,
            ),
            BinaryOp::RShift => Literal::Int(x >> y.min(127)),
            BinaryOp::BitAnd if both_bool => Literal::Bool(x & y != 0),
            BinaryOp::BitOr if both_bool => Literal::Bool(x | y != 0),
            BinaryOp::BitXor if both_bool => Literal::Bool(x ^ y != 0),
            BinaryOp::BitAnd => Literal::Int(x & y),
            BinaryOp::BitOr => Literal::Int(x | y),
            BinaryOp::BitXor => Literal::Int(x ^ y),
            BinaryOp::MatMul => {
                return Err(ExprError::Type(
                    "the @ operator is not supported in expressions".into(),
                ))
            }
        });
    }
    if matches!(a, Literal::Complex(_)) || matches!(b, Literal::Complex(_)) {
        let (x, y) = (complex_of(a), complex_of(b));
        return Ok(Literal::Complex(match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div if y == Complex64::new(0.0, 0.0) => {
                return Err(zero("complex division by zero"))
            }
            BinaryOp::Div => x / y,
            BinaryOp::Pow if x == Complex64::new(0.0, 0.0) && (y.re < 0.0 || y.im != 0.0) => {
                return Err(zero("0.0 to a negative or complex power"))
            }
            BinaryOp::Pow => x.powc(y),
            _ => {
                return Err(ExprError::Type(
                    "unsupported operand type(s) for complex numbers".into(),
                ))
            }
        }));
    }
    let (x, y) = (complex_of(a).re, complex_of(b).re);
    Ok(Literal::Float(match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div if y == 0.0 => return Err(zero("float division by zero")),
        BinaryOp::Div => x / y,
        BinaryOp::FloorDiv if y == 0.0 => return Err(zero("float floor division by zero")),
        BinaryOp::FloorDiv => python_floordiv(x, y),
        BinaryOp::Mod if y == 0.0 => return Err(zero("float modulo")),
        BinaryOp::Mod => {
            let r = x % y;
            if r != 0.0 && (r < 0.0) != (y < 0.0) {
                r + y
            } else {
                r
            }
        }
        BinaryOp::Pow if x == 0.0 && y < 0.0 => {
            return Err(zero("0.0 cannot be raised to a negative power"))
        }
        BinaryOp::Pow if x < 0.0 && x.is_finite() && y.is_finite() && y != y.floor() => {
            // (Python's: a negative base to a fractional power is complex)
            let (len, phase) = ((-x).powf(y), std::f64::consts::PI * y);
            let z = Complex64::new(len * phase.cos(), len * phase.sin());
            if !z.is_finite() {
                return Err(ExprError::Overflow("complex exponentiation".into()));
            }
            return Ok(Literal::Complex(z));
        }
        BinaryOp::Pow => {
            let r = x.powf(y);
            if r.is_infinite() && x.is_finite() && y.is_finite() {
                // (as Python's float power, which numexpr folds constants with)
                return Err(ExprError::Overflow(format!(
                    "(34, 'Numerical result out of range'): {x:?} ** {y:?}"
                )));
            }
            r
        }
        _ => {
            return Err(ExprError::Type(format!(
                "unsupported operand type(s) for {}: 'float' constants",
                match op {
                    BinaryOp::LShift => "<<",
                    BinaryOp::RShift => ">>",
                    BinaryOp::BitAnd => "&",
                    BinaryOp::BitOr => "|",
                    BinaryOp::BitXor => "^",
                    _ => "@",
                }
            )))
        }
    }))
}

/// `x // y` (`y` not 0), rounded down as Python's.
fn floor_div(x: i128, y: i128) -> Result<i128> {
    // (None only for i128::MIN // -1, which is 2**127)
    let q = x.checked_div_euclid(y).ok_or_else(too_wide)?;
    Ok(q - i128::from(y < 0 && modulo(x, y) != 0))
}

/// `x % y` (`y` not 0), of `y`'s sign as Python's.
fn modulo(x: i128, y: i128) -> i128 {
    let r = x.checked_rem_euclid(y).unwrap_or(0); // (None only for i128::MIN % -1: 0)
    if y < 0 && r != 0 {
        r + y
    } else {
        r
    }
}

/// `x ** y` for `y >= 0`.
fn power(x: i128, y: i128) -> Result<i128> {
    match x {
        0 => Ok(i128::from(y == 0)),
        1 => Ok(1),
        -1 => Ok(if y % 2 == 0 { 1 } else { -1 }),
        _ => u32::try_from(y)
            .ok()
            .and_then(|e| x.checked_pow(e))
            .ok_or_else(too_wide),
    }
}

/// `x / y` (`y` not 0) as Python divides ints: the exact quotient, rounded once.
fn true_div(x: i128, y: i128) -> f64 {
    const EXACT: u128 = 1 << 53;
    let (a, b) = (x.unsigned_abs(), y.unsigned_abs());
    let q = if a == 0 || (a <= EXACT && b <= EXACT) {
        a as f64 / b as f64 // (both doubles exactly: one rounding)
    } else {
        // The quotient to at least 55 bits, what is left of it a sticky last bit: that
        // number rounds to the double the exact quotient rounds to.
        let (mut q, mut r, mut shift) = (a / b, a % b, 0);
        while q < 1 << 55 {
            let twice = 2 * r; // (r < b <= 2**127: no overflow)
            q = 2 * q + u128::from(twice >= b);
            r = if twice >= b { twice - b } else { twice };
            shift += 1;
        }
        (q | u128::from(r != 0)) as f64 * 2f64.powi(-shift)
    };
    if (x < 0) != (y < 0) {
        -q
    } else {
        q
    }
}

/// Python's `x // y` on floats (its `divmod`: `1 // 0.1` is 9.0, where `floor(1 / 0.1)`
/// is 10.0), as numexpr folds constants through Python.
fn python_floordiv(x: f64, y: f64) -> f64 {
    let m = x % y;
    let mut div = (x - m) / y;
    if m != 0.0 && (y < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0_f64.copysign(x / y);
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i128) -> Literal {
        Literal::Int(v)
    }

    #[test]
    fn int_division_rounds_once_as_python() {
        // (values from Python: 9007199254740993/3, 810363810364860548331533/4971, 1/2**127)
        assert_eq!(true_div(9007199254740993, 3), 3002399751580331.0);
        assert_eq!(
            true_div(810363810364860548331533, 4971),
            1.630182680275318e20
        );
        assert_eq!(true_div(1, i128::MIN), -(2f64.powi(-127)));
        assert_eq!(true_div(i128::MIN, -1), 2f64.powi(127));
        assert_eq!(true_div(0, -(1 << 60)), -0.0);
        assert!(true_div(0, -(1 << 60)).is_sign_negative());
    }

    #[test]
    fn float_floor_division_as_python() {
        // (values from Python)
        assert_eq!(python_floordiv(1.0, 0.1), 9.0);
        assert_eq!(python_floordiv(-1.0, 0.1), -10.0);
        assert_eq!(python_floordiv(7.0, -2.0), -4.0);
        assert_eq!(python_floordiv(1e308, 1e-308), f64::INFINITY);
        assert!(python_floordiv(-0.0, 5.0).is_sign_negative());
        assert!(python_floordiv(0.5, -2.0) == -1.0);
    }

    #[test]
    fn edges_of_128_bits() {
        let min = int(i128::MIN);
        assert!(matches!(
            binary(BinaryOp::FloorDiv, min, int(-1)),
            Err(ExprError::Overflow(_))
        ));
        assert_eq!(binary(BinaryOp::Mod, min, int(-1)), Ok(int(0)));
        assert_eq!(binary(BinaryOp::FloorDiv, int(-7), int(2)), Ok(int(-4)));
        assert_eq!(binary(BinaryOp::Mod, int(7), int(-2)), Ok(int(-1)));
        assert!(matches!(unary(Op::Neg, min), Err(ExprError::Overflow(_))));
        assert_eq!(binary(BinaryOp::LShift, int(0), int(200)), Ok(int(0)));
        assert_eq!(binary(BinaryOp::Pow, int(1), int(1 << 40)), Ok(int(1)));
        assert_eq!(
            binary(BinaryOp::Pow, int(-1), int((1 << 70) + 1)),
            Ok(int(-1))
        );
        assert_eq!(binary(BinaryOp::Pow, int(0), int(0)), Ok(int(1)));
        assert!(matches!(
            binary(BinaryOp::Pow, int(2), int(127)),
            Err(ExprError::Overflow(_))
        ));
    }

    #[test]
    fn ints_meet_floats_exactly() {
        let big = int((1 << 70) + 1);
        let f = Literal::Float(2f64.powi(70));
        assert_eq!(compare(Op::Gt, big, f), Ok(Literal::Bool(true)));
        assert_eq!(compare(Op::Eq, big, f), Ok(Literal::Bool(false)));
        let odd = int((1 << 53) + 1);
        assert_eq!(
            compare(Op::Eq, odd, Literal::Float(2f64.powi(53))),
            Ok(Literal::Bool(false))
        );
        assert_eq!(
            compare(Op::Gt, Literal::Float(2.5), int(2)),
            Ok(Literal::Bool(true))
        );
        assert_eq!(
            compare(Op::Ge, int(2), Literal::Float(2.5)),
            Ok(Literal::Bool(false))
        );
        assert_eq!(
            compare(Op::Ne, int(1), Literal::Float(f64::NAN)),
            Ok(Literal::Bool(true))
        );
        assert_eq!(
            compare(Op::Gt, int(i128::MAX), Literal::Float(f64::INFINITY)),
            Ok(Literal::Bool(false))
        );
        assert_eq!(
            compare(Op::Eq, int(1), Literal::Complex(Complex64::new(1.0, 1.0))),
            Ok(Literal::Bool(false))
        );
    }
}
