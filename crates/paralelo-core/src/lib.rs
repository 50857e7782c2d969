//! paralelo's engine. It knows nothing of Python: the bindings in `paralelo-py` wrap it.
//!
//! * [`shm`]: memfd-backed shared segments, mapped once and kept mapped.
//! * [`sync`]: the doorbell, a futex word that processes sleep on and ring.
//! * [`ring`]: a single-producer single-consumer ring of framed byte messages.
//! * [`hub`]: one segment holding a pair of rings per worker slot, as a pool uses it.
#![deny(unsafe_code)]

pub mod error;
pub mod hub;
pub mod ring;
pub mod shm;
pub mod sync;
mod sys;

pub use error::{Error, Result};
pub use hub::{Hub, HubLayout, Port};
pub use ring::{Consumer, FrameHeader, Producer, MAX_TAG};
pub use shm::Segment;
pub use sync::{Doorbell, Poll};
