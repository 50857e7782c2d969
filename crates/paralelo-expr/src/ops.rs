//! The operations a program runs, and numexpr's typing rules for each: which kind its
//! operands are cast to, which kind it gives, and which kinds it refuses.

use crate::dtype::DType;
use crate::error::{ExprError, Result};

/// A function of the expression language (numexpr's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Sqrt,
    Sin,
    Cos,
    Tan,
    Arcsin,
    Arccos,
    Arctan,
    Sinh,
    Cosh,
    Tanh,
    Arcsinh,
    Arccosh,
    Arctanh,
    Log,
    Log1p,
    Log10,
    Log2,
    Exp,
    Expm1,
    Abs,
    Ceil,
    Floor,
    Round,
    Trunc,
    Sign,
    Real,
    Imag,
    Conj,
    IsNan,
    IsFinite,
    IsInf,
    SignBit,
    Copy,
    OnesLike,
    Arctan2,
    Fmod,
    Hypot,
    Nextafter,
    Copysign,
    Maximum,
    Minimum,
    Complex,
}

impl Func {
    pub fn by_name(name: &str) -> Option<Func> {
        use Func::*;
        Some(match name {
            "sqrt" => Sqrt,
            "sin" => Sin,
            "cos" => Cos,
            "tan" => Tan,
            "arcsin" => Arcsin,
            "arccos" => Arccos,
            "arctan" => Arctan,
            "sinh" => Sinh,
            "cosh" => Cosh,
            "tanh" => Tanh,
            "arcsinh" => Arcsinh,
            "arccosh" => Arccosh,
            "arctanh" => Arctanh,
            "log" => Log,
            "log1p" => Log1p,
            "log10" => Log10,
            "log2" => Log2,
            "exp" => Exp,
            "expm1" => Expm1,
            "abs" => Abs,
            "ceil" => Ceil,
            "floor" => Floor,
            "round" => Round,
            "trunc" => Trunc,
            "sign" => Sign,
            "real" => Real,
            "imag" => Imag,
            "conj" => Conj,
            "isnan" => IsNan,
            "isfinite" => IsFinite,
            "isinf" => IsInf,
            "signbit" => SignBit,
            "copy" => Copy,
            "ones_like" => OnesLike,
            "arctan2" => Arctan2,
            "fmod" => Fmod,
            "hypot" => Hypot,
            "nextafter" => Nextafter,
            "copysign" => Copysign,
            "maximum" => Maximum,
            "minimum" => Minimum,
            "complex" => Complex,
            _ => return None,
        })
    }

    /// Whether a call costs more than a few arithmetic operations (a lazy `where` skips
    /// it where it is not picked).
    pub fn is_costly(self) -> bool {
        use Func::*;
        !matches!(
            self,
            Abs | Ceil
                | Floor
                | Round
                | Trunc
                | Sign
                | Real
                | Imag
                | Conj
                | IsNan
                | IsFinite
                | IsInf
                | SignBit
                | Copy
                | OnesLike
                | Copysign
                | Maximum
                | Minimum
                | Complex
        )
    }

    pub fn arity(self) -> usize {
        use Func::*;
        match self {
            Arctan2 | Fmod | Hypot | Nextafter | Copysign | Maximum | Minimum | Complex => 2,
            _ => 1,
        }
    }

    /// The kind its operands are cast to and the kind it gives, for operands whose
    /// common kind is `k` (numexpr's `func(..., minkind, maxkind)` and its opcodes).
    fn typed(self, k: DType) -> Option<(DType, DType)> {
        use DType::{Bool, Double, Float, Int, Long};
        use Func::*;
        const CPLX: DType = DType::Complex;
        // Integers go to double, except in the functions numpy keeps integral.
        let float_like = |k: DType| match k {
            Bool => Float,
            Int | Long => Double,
            other => other,
        };
        let same = |kind: DType| Some((kind, kind));
        match self {
            Sqrt | Sin | Cos | Tan | Arcsin | Arccos | Arctan | Sinh | Cosh | Tanh | Arcsinh
            | Arccosh | Arctanh | Log | Log1p | Log10 | Log2 | Exp | Expm1 | Abs => {
                same(float_like(k))
            }
            Ceil | Floor => (k != CPLX).then(|| (float_like(k), float_like(k))),
            Round | Sign => match k {
                Int | Long => same(k),
                CPLX => same(CPLX),
                _ => same(Double),
            },
            Trunc => (k != CPLX).then_some((Double, Double)),
            Real | Imag => Some(if k == CPLX {
                (CPLX, Double)
            } else {
                (Double, Double)
            }),
            Conj => match k {
                Int | Long => same(Double), // (numexpr casts integers to double first)
                _ => same(CPLX),
            },
            IsNan | IsFinite | IsInf => Some((if k == CPLX { CPLX } else { Double }, Bool)),
            SignBit => (k != CPLX).then_some((Double, Bool)),
            Copy => same(k),
            OnesLike => (k != Bool).then_some((k, k)),
            Arctan2 | Fmod => (k != CPLX).then(|| same(float_like(k)).unwrap()),
            Hypot | Nextafter | Copysign | Maximum | Minimum => {
                (k != CPLX).then_some((Double, Double))
            }
            Func::Complex => matches!(k, Bool | Float | Double).then_some((Double, CPLX)),
        }
    }
}

/// A reduction: the expression's last operation only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Prod,
    Min,
    Max,
}

impl Reduce {
    pub fn by_name(name: &str) -> Option<Reduce> {
        Some(match name {
            "sum" => Reduce::Sum,
            "prod" => Reduce::Prod,
            "min" => Reduce::Min,
            "max" => Reduce::Max,
            _ => return None,
        })
    }

    /// The kind it runs in: its operand's, where numexpr has the reduction.
    pub fn typed(self, k: DType) -> Result<DType> {
        let refused = match self {
            Reduce::Sum | Reduce::Prod => k == DType::Bool,
            Reduce::Min | Reduce::Max => matches!(k, DType::Bool | DType::Complex),
        };
        if refused {
            return Err(no_kernel(&format!("{self:?}").to_lowercase(), &[k], k));
        }
        Ok(k)
    }
}

/// An operation of a program's instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Widens its operand to the instruction's kind.
    Cast,
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    LShift,
    RShift,
    And,
    Or,
    Xor,
    Neg,
    Invert,
    Gt,
    Ge,
    Eq,
    Ne,
    Where,
    Func(Func),
}

impl Op {
    /// numexpr's name for it (as in its opcodes: "sqrt", "ones_like", "add").
    pub fn name(self) -> String {
        match self {
            Op::Func(Func::OnesLike) => "ones_like".into(),
            Op::Func(f) => format!("{f:?}").to_lowercase(),
            other => format!("{other:?}").to_lowercase(),
        }
    }
}

/// numexpr's error for an operation it has no kernel for.
pub fn no_kernel(name: &str, args: &[DType], out: DType) -> ExprError {
    let sig: String = std::iter::once(out)
        .chain(args.iter().copied())
        .map(DType::code)
        .collect();
    ExprError::NotImplemented(format!("couldn't find matching opcode for '{name}_{sig}'"))
}

/// The kind `op` casts its operands (of kinds `args`) to, and the kind it gives; or
/// numexpr's error where it has no such kernel.
pub fn typed(op: Op, args: &[DType]) -> Result<(DType, DType)> {
    use DType::*;
    let k = args.iter().copied().max().unwrap_or(Bool);
    let refuse = || no_kernel(&op.name(), args, k);
    let out = match op {
        Op::Cast => return Ok((k, k)),
        Op::Add | Op::Mul => (k != Bool).then_some((k, k)), // (bool + and * are | and &: see `typing`)
        Op::Sub | Op::Pow => (k != Bool).then_some((k, k)),
        Op::Div => Some(match k {
            Bool | Int | Long => (Double, Double),
            other => (other, other),
        }),
        Op::FloorDiv | Op::Mod => (!matches!(k, Bool | Complex)).then_some((k, k)),
        Op::LShift | Op::RShift => k.is_integer().then_some((k, k)),
        Op::And | Op::Or | Op::Xor => matches!(k, Bool | Int | Long).then_some((k, k)),
        Op::Neg => (k != Bool).then_some((k, k)),
        Op::Invert => matches!(k, Bool | Int | Long).then_some((k, k)),
        Op::Gt | Op::Ge => (k != Complex).then_some((k, Bool)),
        Op::Eq | Op::Ne => Some((k, Bool)),
        Op::Where => {
            if args[0] != Bool {
                return Err(refuse());
            }
            let k = args[1].max(args[2]);
            Some((k, k))
        }
        Op::Func(f) => f.typed(k),
    };
    out.ok_or_else(refuse)
}
