//! Holds on a shared file, released by the kernel: each is an open file description of
//! its own with a shared `flock` on it. A fork shares the description (the child holds
//! it too), a descriptor passed to another process carries it, and death or the last
//! close of it lets it go, even after SIGKILL. Whoever can take an exclusive lock on a
//! fresh description knows that no hold is left anywhere.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};

use crate::{Error, Result};

/// A new description of the file behind `fd` (its own locks, its own offset).
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::os("open(/proc/self/fd)", e))
}

/// A new hold on the file behind `fd`: it lasts while any descriptor of the returned
/// description is open, in any process.
pub(crate) fn take(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let held = reopen(fd)?;
    // Never waits: only a last holder's `release` guard excludes it, and no one then
    // holds the file to pass it on; one a child forked during that drain inherited
    // stays in that child, which must not make the next taker wait for its end.
    flock(&held, FlockOperation::NonBlockingLockShared).map_err(|e| Error::os("flock", e))?;
    Ok(held)
}

/// Lets `hold` go and says whether it was the last anywhere: then this process holds
/// the file alone, under an exclusive lock, until the returned guard drops (no one takes
/// a new hold meanwhile). `fd` is another descriptor of the same file.
pub(crate) fn release(hold: OwnedFd, fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    drop(hold);
    let probe = reopen(fd).ok()?;
    flock(probe.as_fd(), FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hold_is_known_and_a_copy_in_a_child_counts() {
        let file = crate::sys::memfd::create("hold-test", 4096).unwrap();
        let a = take(file.as_fd()).unwrap();
        let b = take(file.as_fd()).unwrap();
        assert!(release(a, file.as_fd()).is_none(), "b still holds it");
        // A duplicate (what a fork or a passed descriptor makes) holds the same description.
        let copy = b.try_clone().unwrap();
        assert!(
            release(b, file.as_fd()).is_none(),
            "its copy still holds it"
        );
        let last = release(copy, file.as_fd()).expect("the last hold");
        let c = reopen(file.as_fd()).unwrap();
        assert!(
            flock(&c, FlockOperation::NonBlockingLockShared).is_err(),
            "no new hold while the last one's guard lives"
        );
        drop(last);
        assert!(flock(&c, FlockOperation::NonBlockingLockShared).is_ok());
    }
}
