//! Shared memory: segments backed by memfd, mapped once and kept mapped.
mod segment;

pub use segment::Segment;
