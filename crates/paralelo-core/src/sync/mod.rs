//! Waiting and waking. See `README.md` beside this file for the doorbell protocol.
//!
//! * [`Doorbell`]: a futex word in shared memory that processes sleep on and ring.
//! * [`Turn`]: one thread at a time through a multi-step operation, within a process.
//! * [`SharedLock`]: a (recursive or plain) lock in shared memory, across processes.
//! * [`SharedSemaphore`], [`SharedEvent`], [`SharedCondvar`], [`SharedBarrier`]: the
//!   rest of the standard library's primitives, in shared memory, across processes.
mod barrier;
mod condvar;
mod doorbell;
mod event;
mod lock;
mod semaphore;
mod turn;

pub use barrier::{Broke, SharedBarrier};
pub use condvar::SharedCondvar;
pub use event::SharedEvent;
pub use semaphore::SharedSemaphore;

pub use doorbell::{Doorbell, Poll, SLICE};
pub use lock::{caller_ids, caller_pid, forget_caller_ids, SharedLock, Taken};
pub use turn::{Turn, TurnGuard};
