//! paralelo's engine. It knows nothing of Python: the bindings in `paralelo-py` wrap it.
//!
//! * [`shm`]: memfd-backed shared segments, mapped once and kept mapped.
//! * [`sync`]: the doorbell (a futex word processes sleep on and ring) and the turn.
//! * [`ring`]: a single-producer single-consumer ring of framed byte messages.
//! * [`hub`]: one segment holding a pair of rings per worker slot, as a pool uses it.
//! * [`proc`]: the death watch on child processes' pidfds.
//! * [`comm`]: what collectives compute: element-wise reductions.
//!
//! Memory another process writes is untrusted input: every index and length read from it
//! is checked, and a violation is an [`Error::Corrupt`], never undefined behaviour.
#![deny(unsafe_code)]

pub mod channel;
pub mod comm;
pub mod error;
pub mod hub;
mod primitive;
pub mod proc;
pub mod ring;
pub mod shm;
pub mod sync;
mod sys;

pub use channel::{Channel, Counting};
pub use error::{Corruption, Error, Result};
pub use hub::{Hub, HubLayout, Port, Received, SlotEvent, SlotState};
pub use ring::{Consumer, FrameHeader, Probe, Producer, MAX_TAG};
pub use shm::Segment;
pub use sync::{Doorbell, Poll, SharedLock, Taken, Turn};
