//! A single-producer single-consumer ring of framed byte messages in shared memory.
//! `README.md` beside this file gives the protocol, its invariants and the tests that
//! prove each.
//!
//! * [`frame`]: the 32-byte header before every payload, and the checks on it.
//! * [`mem`]: the ring's plain-data header and the only code that touches its bytes.
//! * [`Producer`], [`Consumer`]: the two ends. [`Probe`]: a lock-free view for waiting.
mod consumer;
mod frame;
mod mem;
mod probe;
mod producer;

pub use consumer::Consumer;
pub(crate) use frame::check_tag;
pub use frame::{FrameHeader, FRAME_HEADER, MAX_MESSAGE, MAX_TAG};
pub use mem::{RingHeader, RingPlace, MAX_CAPACITY, MIN_CAPACITY};
pub use probe::Probe;
pub use producer::Producer;

#[cfg(test)]
mod tests;
