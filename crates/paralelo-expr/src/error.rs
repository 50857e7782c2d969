//! What can go wrong with an expression, by the Python exception numexpr raises for it.

/// An expression that cannot be compiled or run. Each variant is the exception numexpr
/// raises in the same case, so the bindings map them once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// Not an expression (Python's `SyntaxError`).
    #[error("{0}")]
    Syntax(String),
    /// An operation on the wrong kind of thing, or Python's own boolean operators
    /// (`TypeError`).
    #[error("{0}")]
    Type(String),
    /// No kernel for these types (`NotImplementedError`, as numexpr's "couldn't find
    /// matching opcode").
    #[error("{0}")]
    NotImplemented(String),
    /// A bad value: a negative axis, an integer to a negative integer power
    /// (`ValueError`).
    #[error("{0}")]
    Value(String),
    /// A reduction that is not the expression's last operation (`RuntimeError`).
    #[error("{0}")]
    Runtime(String),
    /// An integer constant too large for the kind it is used in (`OverflowError`).
    #[error("{0}")]
    Overflow(String),
    /// A constant division by zero (`ZeroDivisionError`).
    #[error("{0}")]
    ZeroDivision(String),
    /// An attribute other than `.real` and `.imag` (`AttributeError`).
    #[error("{0}")]
    Attribute(String),
    /// No GPU, driver or NVRTC, or one that failed (`RuntimeError`).
    #[error("{0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, ExprError>;
