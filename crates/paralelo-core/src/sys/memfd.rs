use std::os::fd::OwnedFd;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

use crate::{Error, Result};

/// An anonymous memory file of `len` bytes. Nothing appears in /dev/shm: the memory is
/// freed when the last descriptor and mapping are gone, even after SIGKILL.
pub(crate) fn create(name: &str, len: u64) -> Result<OwnedFd> {
    let fd = memfd_create(name, MemfdFlags::CLOEXEC).map_err(|e| Error::os("memfd_create", e))?;
    ftruncate(&fd, len).map_err(|e| Error::os("ftruncate", e))?;
    Ok(fd)
}
