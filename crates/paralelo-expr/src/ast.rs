//! An expression as parsed: Python's expression syntax, before any typing.

use num_complex::Complex64;

/// A literal as Python reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Literal {
    Bool(bool),
    /// Exact, as Python's ints are, within 128 bits: numexpr folds constants with
    /// Python's arithmetic, and an int past 64 bits is still a double beside doubles.
    Int(i128),
    Float(f64),
    Complex(Complex64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Pos,
    Invert,
    /// `not`: parsed so that it is refused with numexpr's message.
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    LShift,
    RShift,
    BitAnd,
    BitOr,
    BitXor,
    MatMul,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    /// `in`, `not in`, `is`, `is not`: refused.
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Literal(Literal),
    /// `None`, a string: refused when typed.
    Unsupported(&'static str),
    Name(String),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `a < b`, or a chain `a < b < c` (refused, as Python's `and` is).
    Compare(Box<Expr>, Vec<(CompareOp, Expr)>),
    /// `and` / `or`, and `x if c else y`: refused with numexpr's message.
    Logical,
    Call {
        func: String,
        args: Vec<Expr>,
        kwargs: Vec<(String, Expr)>,
    },
    Attribute(Box<Expr>, String),
}

impl Expr {
    /// Every name the expression reads (not those it calls), each once, sorted, as
    /// numexpr orders its inputs.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect(&self, out: &mut Vec<String>) {
        match self {
            Expr::Name(n) => out.push(n.clone()),
            Expr::Unary(_, e) | Expr::Attribute(e, _) => e.collect(out),
            Expr::Binary(_, a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Expr::Compare(first, rest) => {
                first.collect(out);
                for (_, e) in rest {
                    e.collect(out);
                }
            }
            Expr::Call { args, kwargs, .. } => {
                for e in args.iter().chain(kwargs.iter().map(|(_, e)| e)) {
                    e.collect(out);
                }
            }
            Expr::Literal(_) | Expr::Unsupported(_) | Expr::Logical => {}
        }
    }
}
