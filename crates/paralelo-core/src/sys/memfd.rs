use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{
    fallocate, fcntl_add_seals, ftruncate, memfd_create, FallocateFlags, MemfdFlags, SealFlags,
};

use crate::{Error, Result};

/// An anonymous memory file of `len` bytes. Nothing appears in /dev/shm: the memory is
/// freed when the last descriptor and mapping are gone, even after SIGKILL. Its size is
/// sealed: another process holding it cannot shrink it under our mapping (which would
/// turn our next read into SIGBUS) nor grow it.
pub(crate) fn create(name: &str, len: u64) -> Result<OwnedFd> {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error::os("memfd_create", e))?;
    ftruncate(&fd, len).map_err(|e| Error::os("ftruncate", e))?;
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| Error::os("fcntl(F_ADD_SEALS)", e))?;
    Ok(fd)
}

/// Gives `len` bytes at `offset` of memfd `fd` back to the kernel: they read as zeros
/// after, in every process that maps them. The size stays (sealed, and kept).
pub(crate) fn punch(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<()> {
    fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .map_err(|e| Error::os("fallocate(PUNCH_HOLE)", e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_segment_cannot_be_resized_by_whoever_holds_it() {
        let fd = super::create("seal-test", 4096).unwrap();
        assert!(
            rustix::fs::ftruncate(&fd, 0).is_err(),
            "shrinking is sealed"
        );
        assert!(
            rustix::fs::ftruncate(&fd, 1 << 20).is_err(),
            "growing is sealed"
        );
    }
}
