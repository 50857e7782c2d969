//! Shared memory: segments backed by memfd, mapped once and kept mapped, and the arena
//! that large buffers cross processes in.
#[cfg(not(loom))]
mod arena;
mod segment;

#[cfg(not(loom))]
pub use arena::{Arena, BlockRef, KEEP_RESIDENT, MAX_BLOCKS, MAX_PARTICIPANTS, UNIT};
pub use segment::Segment;
