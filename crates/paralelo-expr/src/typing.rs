//! From the parsed expression to a typed tree, as numexpr builds its own: constants
//! folded with Python's arithmetic, operations typed by `ops::typed`, `optimization`'s
//! rewrites (powers into products, division by a constant into a product), and the one
//! reduction allowed, last.

use num_complex::Complex64;

use crate::ast::{BinaryOp, CompareOp, Expr, Literal, UnaryOp};
use crate::dtype::{DType, Scalar};
use crate::error::{ExprError, Result};
use crate::fold::{self, as_int, complex_of};
use crate::ops::{self, Func, Op, Reduce};

/// numexpr's `optimization` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Optimization {
    None,
    Moderate,
    Aggressive,
}

/// A typed node.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Input {
        index: usize,
        dtype: DType,
    },
    /// A Python constant; its kind is numexpr's best for it (`literal_kind`).
    Const(Literal),
    /// A constant of a set kind: a function of constants, folded as numpy computes it
    /// (`abs(2)` is numpy's int64, so numexpr's `long`).
    Scalar(Scalar),
    /// `op` on `args`, cast to `kind`, giving `out`.
    Op {
        op: Op,
        kind: DType,
        out: DType,
        args: Vec<Node>,
    },
}

impl Node {
    pub fn dtype(&self) -> DType {
        match self {
            Node::Input { dtype, .. } => *dtype,
            Node::Const(lit) => literal_kind(*lit),
            Node::Scalar(s) => s.dtype(),
            Node::Op { out, .. } => *out,
        }
    }
}

/// The whole expression typed: its tree, and its reduction (with its axis) if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Typed {
    pub root: Node,
    pub reduce: Option<(Reduce, Option<usize>)>,
}

/// numexpr's kind for a Python constant: ints that fit 32 bits are `int`, others `long`
/// (those past 64 bits too: numexpr converts them when it knows their use); Python floats
/// are `double`.
pub fn literal_kind(lit: Literal) -> DType {
    match lit {
        Literal::Bool(_) => DType::Bool,
        Literal::Int(v) if i32::try_from(v).is_ok() => DType::Int,
        Literal::Int(_) => DType::Long,
        Literal::Float(_) => DType::Double,
        Literal::Complex(_) => DType::Complex,
    }
}

/// The constant as a scalar of kind `to` (its own or one it is cast to). An int past 64
/// bits is converted from its exact value, so it may be a double or a complex but no
/// integer (numexpr's OverflowError).
pub fn literal_scalar(lit: Literal, to: DType) -> Result<Scalar> {
    Ok(match lit {
        Literal::Bool(b) => Scalar::Bool(b).cast(to),
        // (i128 to f64 rounds once, to nearest, as Python's float(int); numpy makes a
        // float32 of a Python int through that double)
        Literal::Int(v) => match (i64::try_from(v), to) {
            (_, DType::Float) => Scalar::Float(v as f64 as f32),
            (_, DType::Double) => Scalar::Double(v as f64),
            (_, DType::Complex) => Scalar::Complex(Complex64::new(v as f64, 0.0)),
            (Ok(v), to) => i32::try_from(v)
                .map_or(Scalar::Long(v), Scalar::Int)
                .cast(to),
            (Err(_), _) => return Err(overflow()),
        },
        Literal::Float(v) => Scalar::Double(v).cast(to),
        Literal::Complex(v) => Scalar::Complex(v).cast(to),
    })
}

const BOOLEAN_OPERATORS: &str = "You can't use Python's standard boolean operators in NumExpr expressions. You \
                                 should use their bitwise counterparts instead: '&' instead of 'and', '|' instead \
                                 of 'or', and '~' instead of 'not'; `where(c, a, b)` instead of `a if c else b`.";

pub struct Typer<'a> {
    /// The expression's inputs, in order (`Expr::names`), with their kinds.
    pub inputs: &'a [(String, DType)],
    pub optimization: Optimization,
}

impl Typer<'_> {
    pub fn typed(&self, e: &Expr) -> Result<Typed> {
        if let Expr::Unsupported("strings") = e {
            // (numexpr makes an array of a string alone, and numpy refuses its itemsize)
            return Err(ExprError::Value(
                "a string alone is not an expression paralelo.evaluate can compute".into(),
            ));
        }
        if let Expr::Call { func, args, kwargs } = e {
            if let Some(red) = Reduce::by_name(func) {
                let (arg, axis) = reduction_arguments(func, args, kwargs)?;
                let node = self.node(arg)?;
                let node = match node {
                    // (a number written there has no axis to reduce along; a constant
                    // folded from an expression is reduced to itself, as in numexpr)
                    Node::Const(_) if axis.is_some() && matches!(arg, Expr::Literal(_)) => {
                        return Err(ExprError::Value("reduction axis is out of bounds".into()))
                    }
                    // (numexpr reduces a constant to itself)
                    Node::Const(_) => {
                        return Ok(Typed {
                            root: node,
                            reduce: None,
                        })
                    }
                    n => n,
                };
                red.typed(node.dtype())?;
                return Ok(Typed {
                    root: node,
                    reduce: Some((red, axis)),
                });
            }
        }
        Ok(Typed {
            root: self.node(e)?,
            reduce: None,
        })
    }

    fn node(&self, e: &Expr) -> Result<Node> {
        match e {
            Expr::Literal(lit) => Ok(Node::Const(*lit)),
            Expr::Unsupported(what) => Err(ExprError::Type(format!(
                "{what} are not supported in expressions"
            ))),
            Expr::Logical | Expr::Unary(UnaryOp::Not, _) => {
                Err(ExprError::Type(BOOLEAN_OPERATORS.into()))
            }
            Expr::Name(name) => match self.inputs.iter().position(|(n, _)| n == name) {
                Some(index) => Ok(Node::Input {
                    index,
                    dtype: self.inputs[index].1,
                }),
                None => Err(ExprError::Type(format!("no value was given for '{name}'"))),
            },
            Expr::Unary(UnaryOp::Pos, a) => self.node(a),
            Expr::Unary(op, a) => {
                let a = self.node(a)?;
                let op = if *op == UnaryOp::Neg {
                    Op::Neg
                } else {
                    Op::Invert
                };
                match a {
                    Node::Const(lit) => Ok(Node::Const(fold::unary(op, lit)?)),
                    a => apply(op, vec![a]),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (self.node(a)?, self.node(b)?);
                self.binary(*op, a, b)
            }
            Expr::Compare(first, rest) => {
                if rest.len() > 1 {
                    return Err(ExprError::Type(BOOLEAN_OPERATORS.into()));
                }
                let (op, second) = &rest[0];
                let (a, b) = (self.node(first)?, self.node(second)?);
                // numexpr has only > and >=: a < b is b > a.
                let (op, a, b) = match op {
                    CompareOp::Lt => (Op::Gt, b, a),
                    CompareOp::Le => (Op::Ge, b, a),
                    CompareOp::Gt => (Op::Gt, a, b),
                    CompareOp::Ge => (Op::Ge, a, b),
                    CompareOp::Eq => (Op::Eq, a, b),
                    CompareOp::Ne => (Op::Ne, a, b),
                    CompareOp::Other => {
                        return Err(ExprError::Type(
                            "'in' and 'is' are not supported in expressions".into(),
                        ));
                    }
                };
                if let (Node::Const(x), Node::Const(y)) = (&a, &b) {
                    return Ok(Node::Const(fold::compare(op, *x, *y)?));
                }
                apply(op, vec![a, b])
            }
            Expr::Attribute(a, attr) => {
                let f = match attr.as_str() {
                    "real" => Func::Real,
                    "imag" => Func::Imag,
                    other => {
                        return Err(ExprError::Attribute(format!(
                            "expressions have no attribute '{other}'"
                        )))
                    }
                };
                match self.node(a)? {
                    Node::Const(lit) => {
                        let z = complex_of(lit);
                        Ok(Node::Const(Literal::Float(if f == Func::Real {
                            z.re
                        } else {
                            z.im
                        })))
                    }
                    a => apply(Op::Func(f), vec![a]),
                }
            }
            Expr::Call { func, args, kwargs } => self.call(func, args, kwargs),
        }
    }

    fn call(&self, name: &str, args: &[Expr], kwargs: &[(String, Expr)]) -> Result<Node> {
        if Reduce::by_name(name).is_some() {
            return Err(ExprError::Runtime(format!(
                "a reduction ({name}) must be the expression's last operation, as in numexpr"
            )));
        }
        if !kwargs.is_empty() {
            return Err(ExprError::Type(format!(
                "{name}() takes no keyword arguments"
            )));
        }
        if name == "where" {
            if args.len() != 3 {
                return Err(ExprError::Type(format!(
                    "where() takes 3 arguments ({} given)",
                    args.len()
                )));
            }
            let condition = self.node(&args[0])?;
            if let Node::Const(c) = &condition {
                // (numexpr picks the branch of a constant condition, and never types the
                // other: `-where(True, 0.5, -b)` of a boolean `b` is -0.5)
                let pick = complex_of(*c) != Complex64::new(0.0, 0.0);
                return self.node(&args[if pick { 1 } else { 2 }]);
            }
            let nodes = vec![condition, self.node(&args[1])?, self.node(&args[2])?];
            return apply(Op::Where, nodes);
        }
        if name == "contains" {
            // (numexpr's, for strings: on numbers it has no kernel either)
            return Err(if args.len() == 2 {
                ExprError::NotImplemented(
                    "contains() looks for strings in strings, and paralelo.evaluate takes \
                     no string arrays"
                        .into(),
                )
            } else {
                ExprError::Type(format!(
                    "contains() takes 2 arguments ({} given)",
                    args.len()
                ))
            });
        }
        let f = Func::by_name(name).ok_or_else(|| {
            ExprError::Type(format!(
                "'{name}' is not a function numexpr expressions know"
            ))
        })?;
        let nodes = args
            .iter()
            .map(|a| self.node(a))
            .collect::<Result<Vec<_>>>()?;
        if nodes.len() != f.arity() {
            let message = format!(
                "{name}() takes {} argument(s) ({} given)",
                f.arity(),
                nodes.len()
            );
            // numexpr takes any count of operands and finds no kernel for a wrong one;
            // only constants alone go to numpy's function, which refuses them.
            let all_constant = nodes
                .iter()
                .all(|n| matches!(n, Node::Const(_) | Node::Scalar(_)));
            return Err(if all_constant {
                ExprError::Type(message)
            } else {
                ExprError::NotImplemented(message)
            });
        }
        let constants: Vec<Literal> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Const(c) => Some(*c),
                Node::Scalar(Scalar::Long(v)) => Some(Literal::Int((*v).into())), // (numpy's int64 from a fold)
                _ => None,
            })
            .collect();
        if constants.len() == nodes.len() {
            if let Some(folded) = fold_func(f, &constants) {
                return Ok(folded);
            }
        }
        apply(Op::Func(f), nodes)
    }

    fn binary(&self, op: BinaryOp, a: Node, b: Node) -> Result<Node> {
        if let (Node::Const(x), Node::Const(y)) = (&a, &b) {
            return Ok(Node::Const(fold::binary(op, *x, *y)?));
        }
        let opt = self.optimization;
        match op {
            BinaryOp::Div => {
                // x / c is x * (1/c) where both are the same float kind (numexpr's rewrite).
                if let Node::Const(c) = b {
                    let same = literal_kind(c) == a.dtype() && a.dtype() >= DType::Float;
                    if opt != Optimization::None && same {
                        return apply(
                            Op::Mul,
                            vec![
                                a,
                                Node::Const(fold::binary(BinaryOp::Div, Literal::Float(1.0), c)?),
                            ],
                        );
                    }
                }
                apply(Op::Div, vec![a, b])
            }
            BinaryOp::Pow => self.power(a, b),
            BinaryOp::MatMul => Err(ExprError::Type(
                "the @ operator is not supported in expressions".into(),
            )),
            _ => {
                let kernel = match op {
                    BinaryOp::Add => Op::Add,
                    BinaryOp::Sub => Op::Sub,
                    BinaryOp::Mul => Op::Mul,
                    BinaryOp::FloorDiv => Op::FloorDiv,
                    BinaryOp::Mod => Op::Mod,
                    BinaryOp::LShift => Op::LShift,
                    BinaryOp::RShift => Op::RShift,
                    BinaryOp::BitAnd => Op::And,
                    BinaryOp::BitOr => Op::Or,
                    BinaryOp::BitXor => Op::Xor,
                    BinaryOp::Div | BinaryOp::Pow | BinaryOp::MatMul => {
                        unreachable!("handled above")
                    }
                };
                // bool + bool is |, bool * bool is & (numexpr's rule).
                let both_bool = a.dtype() == DType::Bool && b.dtype() == DType::Bool;
                let kernel = match kernel {
                    Op::Add if both_bool => Op::Or,
                    Op::Mul if both_bool => Op::And,
                    k => k,
                };
                apply(kernel, vec![a, b])
            }
        }
    }

    /// `a ** b`, with numexpr's rewrites of constant exponents.
    fn power(&self, a: Node, b: Node) -> Result<Node> {
        let Node::Const(c) = b else {
            return apply(Op::Pow, vec![a, b]);
        };
        let x = match c {
            Literal::Bool(v) => f64::from(u8::from(v)),
            Literal::Int(v) => v as f64,
            Literal::Float(v) => v,
            Literal::Complex(_) => return apply(Op::Pow, vec![a, b]),
        };
        if a.dtype().is_integer() && literal_kind(c).is_integer() && x < 0.0 {
            return Err(ExprError::Value(
                "Integers to negative integer powers are not allowed.".into(),
            ));
        }
        let float_of = |node: &Node| {
            if node.dtype().is_integer() {
                DType::Double
            } else {
                node.dtype()
            }
        };
        // (powers of booleans as numexpr makes them: products are `&`, and there is no
        // boolean square root)
        let product = |x: Node, y: Node| {
            let op = if x.dtype() == DType::Bool && y.dtype() == DType::Bool {
                Op::And
            } else {
                Op::Mul
            };
            apply(op, vec![x, y])
        };
        let root = |a: Node| {
            let kind = float_of(&a);
            if kind == DType::Bool {
                return Err(ops::no_kernel("sqrt", &[kind], kind));
            }
            Ok(Node::Op {
                op: Op::Func(Func::Sqrt),
                kind,
                out: kind,
                args: vec![a],
            })
        };
        match self.optimization {
            Optimization::Aggressive if (2.0 * x).fract() == 0.0 && x.abs() <= 50.0 => {
                // Binary powering with products, a square root for a half power.
                let mut n = x.abs() as u32;
                let half = (2.0 * x.abs()) as u32 % 2 == 1;
                let mut r: Option<Node> = None;
                let mut p = a.clone();
                loop {
                    if n & 1 == 1 {
                        r = Some(match r {
                            None => p.clone(),
                            Some(r) => product(r, p.clone())?,
                        });
                    }
                    n >>= 1;
                    if n == 0 {
                        break;
                    }
                    p = product(p.clone(), p)?;
                }
                if half {
                    let root = root(a.clone())?;
                    r = Some(match r {
                        None => root,
                        Some(r) => product(r, root)?,
                    });
                }
                let r = match r {
                    Some(r) => r,
                    None => apply(Op::Func(Func::OnesLike), vec![a])?,
                };
                if x < 0.0 {
                    return apply(Op::Div, vec![Node::Const(Literal::Int(1)), r]);
                }
                Ok(r)
            }
            Optimization::Moderate | Optimization::Aggressive => match x {
                // (numexpr's plain `div` here, not true division: 1 / a boolean is an int32)
                -1.0 if a.dtype() == DType::Bool => Ok(Node::Op {
                    op: Op::Div,
                    kind: DType::Int,
                    out: DType::Int,
                    args: vec![Node::Const(Literal::Int(1)), a],
                }),
                -1.0 => apply(Op::Div, vec![Node::Const(Literal::Int(1)), a]),
                0.0 => apply(Op::Func(Func::OnesLike), vec![a]),
                0.5 => root(a),
                1.0 => Ok(a),
                2.0 => product(a.clone(), a),
                _ => apply(Op::Pow, vec![a, b]),
            },
            Optimization::None => apply(Op::Pow, vec![a, b]),
        }
    }
}

/// A function of constants, as numexpr folds it (with numpy: integer results are numpy's
/// int64, real ones float64); None where it is left to run. A float, complex or boolean
/// is a Python constant again, as numpy's float64 and bool_ are to numexpr; an integer
/// stays numpy's int64, or, past 64 bits, the Python int numpy gives then.
fn fold_func(f: Func, args: &[Literal]) -> Option<Node> {
    let ints = args
        .iter()
        .all(|a| matches!(a, Literal::Int(_) | Literal::Bool(_)));
    let complex = args.iter().any(|a| matches!(a, Literal::Complex(_)));
    let x = complex_of(args[0]);
    // (numpy's integer functions of ints, and its maximum and minimum of an int and a
    // boolean: `minimum(-1, False)` is int64 -1)
    let extreme = matches!(f, Func::Maximum | Func::Minimum);
    let with_bool = args.iter().any(|a| matches!(a, Literal::Bool(_)));
    let with_int = args.iter().any(|a| matches!(a, Literal::Int(_)));
    if ints && extreme && !with_int {
        // (numpy's maximum and minimum of booleans are booleans)
        let (a, b) = (as_int(args[0])? != 0, as_int(*args.get(1)?)? != 0);
        return Some(Node::Const(Literal::Bool(if f == Func::Maximum {
            a | b
        } else {
            a & b
        })));
    }
    if ints && (!with_bool || extreme && with_int) {
        let v = as_int(args[0])?;
        if args
            .iter()
            .any(|a| as_int(*a).is_some_and(|v| i64::try_from(v).is_err()))
        {
            // numpy works on Python ints past 64 bits: abs and sign give Python ints; the
            // real functions fold to floats (numexpr refuses them: numpy's object arrays),
            // the rest is left to run, and refused there as an integer.
            return match f {
                Func::Abs => v.checked_abs().map(|v| Node::Const(Literal::Int(v))),
                Func::Sign => Some(Node::Const(Literal::Int(v.signum()))),
                _ => fold_real(f, args).map(python),
            };
        }
        // numpy's int64, wrapping as it does (abs(-2**63) is -2**63).
        let (v, other) = (
            v as i64,
            args.get(1).and_then(|a| as_int(*a)).map(|w| w as i64),
        );
        return Some(Node::Scalar(Scalar::Long(match f {
            Func::Abs => v.wrapping_abs(),
            Func::Round | Func::Copy | Func::Conj | Func::Floor | Func::Ceil | Func::Trunc => v,
            Func::Sign => v.signum(),
            Func::OnesLike => 1,
            Func::Maximum => v.max(other?),
            Func::Minimum => v.min(other?),
            _ => return fold_real(f, args).map(python),
        })));
    }
    if complex {
        return match f {
            Func::Abs => Some(Scalar::Double(crate::kernels::modulus(x))),
            Func::Real => Some(Scalar::Double(x.re)),
            Func::Imag => Some(Scalar::Double(x.im)),
            _ => None, // (complex functions of constants run as they would on arrays)
        }
        .map(python);
    }
    fold_real(f, args).map(python)
}

/// numpy's float64, complex128 or bool_ as numexpr takes them: Python constants again.
fn python(s: Scalar) -> Node {
    match s {
        Scalar::Double(v) => Node::Const(Literal::Float(v)),
        Scalar::Complex(v) => Node::Const(Literal::Complex(v)),
        Scalar::Bool(v) => Node::Const(Literal::Bool(v)),
        other => Node::Scalar(other),
    }
}

fn fold_real(f: Func, args: &[Literal]) -> Option<Scalar> {
    use crate::kernels::Real;
    let x = complex_of(args[0]).re;
    Some(match f {
        Func::IsNan | Func::IsFinite | Func::IsInf | Func::SignBit => Scalar::Bool(x.test(f)),
        Func::Complex => Scalar::Complex(Complex64::new(x, complex_of(args[1]).re)),
        Func::Copy | Func::OnesLike | Func::Conj | Func::Real | Func::Imag => return None,
        _ if f.arity() == 2 => Scalar::Double(x.call2(complex_of(args[1]).re, f)),
        _ => Scalar::Double(x.call(f)),
    })
}

/// `op` on `args`, typed.
fn apply(op: Op, args: Vec<Node>) -> Result<Node> {
    let kinds: Vec<DType> = args.iter().map(Node::dtype).collect();
    let (kind, out) = ops::typed(op, &kinds)?;
    Ok(Node::Op {
        op,
        kind,
        out,
        args,
    })
}

fn reduction_arguments<'e>(
    name: &str,
    args: &'e [Expr],
    kwargs: &'e [(String, Expr)],
) -> Result<(&'e Expr, Option<usize>)> {
    let mut axis_expr = None;
    for (k, v) in kwargs {
        if k != "axis" || axis_expr.is_some() {
            return Err(ExprError::Type(format!(
                "{name}() got an unexpected keyword argument '{k}'"
            )));
        }
        axis_expr = Some(v);
    }
    let arg = match args {
        [a] => a,
        [a, axis] if axis_expr.is_none() => {
            axis_expr = Some(axis);
            a
        }
        _ => {
            return Err(ExprError::Type(format!(
                "{name}() takes an expression and an optional axis"
            )))
        }
    };
    let axis = match axis_expr {
        None | Some(Expr::Unsupported("None")) => None,
        Some(Expr::Literal(Literal::Int(v))) if *v >= 0 => {
            if *v > 254 {
                return Err(ExprError::Value("cannot encode axis".into()));
            }
            Some(*v as usize)
        }
        Some(Expr::Unary(UnaryOp::Neg, _)) => {
            return Err(ExprError::Value("negative axis are not supported".into()))
        }
        Some(_) => {
            return Err(ExprError::Type(format!(
                "{name}()'s axis must be a constant integer"
            )))
        }
    };
    Ok((arg, axis))
}

/// numexpr's error for an int past 64 bits used as an integer.
fn overflow() -> ExprError {
    ExprError::Overflow("Python int too large to convert to C long".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn typed(src: &str, inputs: &[(&str, DType)]) -> Result<Typed> {
        let inputs: Vec<(String, DType)> =
            inputs.iter().map(|(n, d)| (n.to_string(), *d)).collect();
        Typer {
            inputs: &inputs,
            optimization: Optimization::Aggressive,
        }
        .typed(&parse(src)?)
    }

    #[test]
    fn kinds_follow_numexpr() {
        use DType::*;
        let t = |src: &str, k: DType| typed(src, &[("x", k), ("y", k)]).map(|t| t.root.dtype());
        assert_eq!(t("x + y", Int), Ok(Int));
        assert_eq!(t("x / y", Int), Ok(Double));
        assert_eq!(t("x + y", Bool), Ok(Bool)); // (an or)
        assert!(matches!(
            t("x - y", Bool),
            Err(ExprError::NotImplemented(_))
        ));
        assert_eq!(t("x * 2", Float), Ok(Float));
        assert_eq!(t("x * 2.0", Float), Ok(Double));
        assert_eq!(t("x * 2**40", Int), Ok(Long));
        assert_eq!(t("sin(x)", Int), Ok(Double));
        assert_eq!(t("sin(x)", Bool), Ok(Float));
        assert!(t("x < y", Complex).is_err());
        assert_eq!(t("x == y", Complex), Ok(Bool));
        assert_eq!(t("round(x)", Int), Ok(Int));
        assert_eq!(t("conj(x)", Int), Ok(Double));
        assert_eq!(t("conj(x)", Double), Ok(Complex));
        assert_eq!(t("x.real", Complex), Ok(Double));
        let mixed = typed("x + y", &[("x", Long), ("y", Float)]).unwrap();
        assert_eq!(mixed.root.dtype(), Float);
    }

    #[test]
    fn ints_past_64_bits_fold_exactly_and_are_floats_only() {
        let two_70 = 1i128 << 70;
        assert_eq!(
            typed("2**70 + 1 - 1", &[]).unwrap().root,
            Node::Const(Literal::Int(two_70))
        );
        assert_eq!(
            typed("2**70 + 1 == 2**70", &[]).unwrap().root,
            Node::Const(Literal::Bool(false))
        );
        let lit = Literal::Int(two_70 + 1);
        assert_eq!(literal_kind(lit), DType::Long);
        assert_eq!(
            literal_scalar(lit, DType::Double),
            Ok(Scalar::Double(1.1805916207174113e21))
        );
        assert!(matches!(
            literal_scalar(lit, DType::Long),
            Err(ExprError::Overflow(_))
        ));
        // (a float32 through the double, as numpy makes one of a Python int)
        let v = (1i128 << 60) + (1 << 36) + 1;
        assert_eq!(
            literal_scalar(Literal::Int(v), DType::Float),
            Ok(Scalar::Float((1u64 << 60) as f32))
        );
        assert!(matches!(typed("2**127", &[]), Err(ExprError::Overflow(_))));
    }

    #[test]
    fn folding_and_refusals() {
        assert_eq!(
            typed("2 * 3 + 1", &[]).unwrap().root,
            Node::Const(Literal::Int(7))
        );
        assert_eq!(
            typed("-7 // 2", &[]).unwrap().root,
            Node::Const(Literal::Int(-4))
        );
        assert_eq!(
            typed("7 % -2", &[]).unwrap().root,
            Node::Const(Literal::Int(-1))
        );
        assert_eq!(
            typed("2 ** -1", &[]).unwrap().root,
            Node::Const(Literal::Float(0.5))
        );
        assert!(matches!(
            typed("1 // 0", &[]),
            Err(ExprError::ZeroDivision(_))
        ));
        assert!(matches!(
            typed("x ** -1", &[("x", DType::Int)]),
            Err(ExprError::Value(_))
        ));
        assert!(matches!(
            typed("x and x", &[("x", DType::Bool)]),
            Err(ExprError::Type(_))
        ));
        assert!(matches!(
            typed("sum(x) + 1", &[("x", DType::Double)]),
            Err(ExprError::Runtime(_))
        ));
        assert!(matches!(
            typed("sum(x, axis=-1)", &[("x", DType::Double)]),
            Err(ExprError::Value(_))
        ));
        assert!(matches!(
            typed("x.foo", &[("x", DType::Double)]),
            Err(ExprError::Attribute(_))
        ));
        let r = typed("sum(x * x, axis=1)", &[("x", DType::Double)]).unwrap();
        assert_eq!(r.reduce, Some((Reduce::Sum, Some(1))));
    }
}
