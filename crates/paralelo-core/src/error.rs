//! The engine's errors. The bindings map each variant to one Python exception.
use std::io;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed (memfd, mmap, futex, ...).
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A segment handed to us does not hold the layout this build expects.
    #[error("shared segment is not a paralelo {what} (bad magic or layout version)")]
    BadLayout { what: &'static str },
    /// A ring holds a frame that does not fit in what its producer published: the other
    /// process wrote outside the protocol (a memory-corrupting crash, or a foreign writer).
    #[error("corrupt ring: a {len}-byte frame in {published} published bytes")]
    Corrupt { len: usize, published: u64 },
    /// A worker slot's result ring is corrupt; the worker in it must be replaced.
    #[error("worker slot {slot}: {detail}")]
    CorruptSlot { slot: usize, detail: String },
    /// An argument is out of range (slot index, capacity, ...).
    #[error("{0}")]
    Invalid(String),
    /// A wait's deadline passed.
    #[error("timed out")]
    Timeout,
    /// A wait was stopped by its poll callback (a signal, or the peer died).
    #[error("wait interrupted")]
    Interrupted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Os { op, source: source.into() }
    }
}
