#![allow(unsafe_code)]
//! A memfd mapped shared and read-write. Everything placed in it is plain data (`#[repr(C)]`,
//! fixed width, offsets never pointers), so any process that maps the same fd sees the same
//! layout.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use memmap2::{MmapOptions, MmapRaw};

use crate::{sys, Error, Result};

/// A shared memory segment. Cloning the fd (or passing it to a child) shares the memory;
/// the memory is freed once the last fd and mapping are gone.
pub struct Segment {
    fd: OwnedFd,
    map: MmapRaw,
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes.
    pub fn create(name: &str, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::Invalid("a segment cannot be empty".into()));
        }
        let fd = sys::memfd::create(name, len as u64)?;
        Self::map(fd, len)
    }

    /// Maps a segment another process created and passed to us.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self> {
        let fd = fd.try_clone_to_owned().map_err(|e| Error::os("dup", e))?;
        // A segment whose size may still change could shrink under our mapping, turning a
        // read into SIGBUS: only sealed ones (as `create` makes them) are mapped.
        let seals =
            rustix::fs::fcntl_get_seals(&fd).map_err(|e| Error::os("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW) {
            return Err(Error::BadLayout {
                what: "segment (its size is not sealed)",
            });
        }
        let len = rustix::fs::fstat(&fd)
            .map_err(|e| Error::os("fstat", e))?
            .st_size as usize;
        if len == 0 {
            return Err(Error::BadLayout {
                what: "segment (it is empty)",
            });
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        // MmapRaw, never a &mut [u8]: other processes write this memory behind our back.
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&fd)
            .map_err(|e| Error::os("mmap", e))?;
        Ok(Segment { fd, map })
    }

    /// Asks for transparent huge pages over `len` bytes at `offset` (whole segment: 0,
    /// `len()`). A large array summed from 4 KiB pages runs at ≈ 60% of the speed it
    /// reaches on 2 MiB pages here (the TLB misses of a VM's nested page walk). The kernel
    /// honours the advice only where the host allows huge shared memory
    /// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`: advise, within_size or
    /// always); elsewhere it is a no-op, and never an error.
    pub fn advise_huge_pages(&self, offset: usize, len: usize) {
        let len = len.min(self.len().saturating_sub(offset));
        if len == 0 {
            return;
        }
        // SAFETY: [offset, offset + len) lies inside this mapping (len clamped above); the
        // advice changes no contents, only how pages are backed (an offset off a page
        // boundary is refused with EINVAL, ignored like any refusal).
        let _ = unsafe {
            rustix::mm::madvise(
                self.map.as_mut_ptr().add(offset).cast(),
                len,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A pointer `offset` bytes into the mapping, for a `T` that must fit and be aligned.
    /// Dereferencing it is the caller's business; the pointer is valid while `self` lives.
    pub fn at<T>(&self, offset: usize) -> Result<*mut T> {
        let size = std::mem::size_of::<T>();
        if offset.checked_add(size).is_none_or(|end| end > self.len()) {
            return Err(Error::BadLayout {
                what: "segment (too small for its layout)",
            });
        }
        // SAFETY: offset + size <= len, so the result stays inside the mapping.
        let ptr = unsafe { self.map.as_mut_ptr().add(offset) };
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(Error::BadLayout {
                what: "segment (misaligned field)",
            });
        }
        Ok(ptr.cast())
    }
}

#[cfg(test)]
impl Segment {
    /// The segment's fd, borrowed: tests re-open segments as another process would.
    pub(crate) fn as_fd_for_test(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
