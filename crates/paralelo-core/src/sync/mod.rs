//! Cross-process wake-ups. See `README.md` beside this file for the protocol.
mod doorbell;

pub use doorbell::{Doorbell, Poll};
