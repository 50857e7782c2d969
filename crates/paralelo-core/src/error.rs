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
    /// A ring holds what its producer could not have written under the protocol: the
    /// other process wrote outside it (a memory-corrupting crash, or a foreign writer).
    #[error("corrupt ring: {0}")]
    Corrupt(#[from] Corruption),
    /// A worker slot's ring is corrupt; the worker in it must be replaced.
    #[error("worker slot {slot}: corrupt ring: {source}")]
    CorruptSlot {
        slot: usize,
        #[source]
        source: Corruption,
    },
    /// An argument is out of range (slot index, capacity, ...).
    #[error("{0}")]
    Invalid(String),
    /// A wait's deadline passed.
    #[error("timed out")]
    Timeout,
    /// A wait was stopped by its poll callback (a signal, or the peer died).
    #[error("wait interrupted")]
    Interrupted,
    /// A lock released more times than it was taken.
    #[error("lock released too many times")]
    NotHeld,
    /// A lock or semaphore's holder died holding it: the lock is free again (the units
    /// given back), but what it guarded may be half-updated.
    #[error("the holder (pid or thread id {holder}) died holding it")]
    Abandoned { holder: u32 },
    /// A recursive lock released by someone other than its holder.
    #[error("lock not held by this thread")]
    NotOwner,
    /// A channel end used again by the thread already using it (from a signal handler
    /// that ran while it waited): refused, as the first use may be half-way through a
    /// message.
    #[error("reentrant use of a channel end: this thread is already sending or receiving on it")]
    Reentrant,
    /// A job of ranks was ended by its launcher (one rank failed): why.
    #[error("{0}")]
    JobEnded(String),
}

/// How memory written by another process broke the protocol. Never undefined behaviour:
/// every length and index read from shared memory is checked into one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A frame's payload runs past the bytes its producer published.
    #[error("a {len}-byte frame in {published} published bytes")]
    FrameOverrun { len: u64, published: u64 },
    /// A frame claims more than the largest fragment the ring carries.
    #[error("a {len}-byte frame where fragments are at most {max} bytes")]
    FrameTooLong { len: u64, max: u64 },
    /// The ring's indices cannot both be true: the tail passed the head, or they are more
    /// than a capacity apart.
    #[error("indices out of order (head {head}, tail {tail}, capacity {capacity})")]
    Indices { head: u64, tail: u64, capacity: u64 },
    /// Fragments kept coming past the largest message a consumer reassembles.
    #[error("a fragmented message grew past {max} bytes")]
    MessageTooLong { max: u64 },
    /// A skip frame that does not end exactly at the end of the data area.
    #[error("a {len}-byte skip where {to_end} bytes are left to the end of the ring")]
    SkipMisplaced { len: u64, to_end: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn os(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Os {
            op,
            source: source.into(),
        }
    }

    /// This error, blamed on a hub slot when it is a ring's corruption.
    pub(crate) fn in_slot(self, slot: usize) -> Self {
        match self {
            Error::Corrupt(source) => Error::CorruptSlot { slot, source },
            e => e,
        }
    }
}
