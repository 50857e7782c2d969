#![allow(unsafe_code)]
//! Closing a descriptor whose owning object is abandoned.
use std::os::fd::{AsRawFd, BorrowedFd};

/// Closes `fd`, which belongs to an object the caller abandons (never uses nor drops
/// again): in a forked child, state whose thread did not come along and so can never
/// release it (see `proc::forget_inherited`).
pub(crate) fn close_abandoned(fd: BorrowedFd<'_>) {
    // SAFETY: the caller guarantees that the descriptor's owner is never used or dropped
    // again, so this is the descriptor's only close and nothing reads it afterwards.
    unsafe { rustix::io::close(fd.as_raw_fd()) };
}
