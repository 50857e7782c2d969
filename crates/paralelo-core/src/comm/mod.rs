//! What collectives compute on the data they move: [`fold`], element-wise reductions.
pub mod fold;

pub use fold::{fold, fold_into, Element, Op};
