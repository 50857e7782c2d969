//! paralelo's expression engine: numexpr's language (arithmetic, comparisons, `where`,
//! its math functions, complex numbers, a final `sum`/`prod`/`min`/`max`) parsed
//! ([`parser`]), typed by numexpr's rules ([`typing`], [`ops`]), lowered to code over
//! block registers ([`program`]) and run over strided, broadcast arrays on every core
//! ([`exec`], rayon). It knows nothing of Python: the bindings hand it addresses, kinds
//! and strides.

pub mod ast;
pub mod cuda;
pub mod dims;
pub mod dtype;
pub mod error;
pub mod exec;
mod fold;
pub mod kernels;
pub mod lexer;
mod libm;
pub mod ops;
pub mod parser;
mod pool;
pub mod program;
mod rowfold;
pub mod stored;
pub mod typing;
mod view;

pub use dtype::DType;
pub use error::{ExprError, Result};
pub use exec::{evaluate, ArrayArg};
pub use ops::Reduce;
pub use pool::{current_threads, set_threads};
pub use program::{compile, names, Program};
pub use stored::{Elem, Stored};
pub use typing::Optimization;
