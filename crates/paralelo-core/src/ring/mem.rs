#![allow(unsafe_code)]
//! The memory a ring lives in: its plain-data header and data area inside a segment, and
//! the only code that touches their bytes. Nothing here hands out a reference into the
//! data area: bytes are copied in by the producer and copied out by the consumer, since
//! another process may write them at any time.
use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use crate::sync::Doorbell;
use crate::{Corruption, Error, Result, Segment};

use super::frame::FRAME_HEADER;

const RING_MAGIC: u64 = 0x676e_6972_6f6c_6170; // "paloring"
/// Fragments carry u32 lengths and are at most a quarter of the ring.
pub const MAX_CAPACITY: usize = 1 << 31;
/// Four frames with a word of payload each must fit.
pub const MIN_CAPACITY: usize = (4 * (FRAME_HEADER + 8)).next_power_of_two();

/// The plain-data head of a ring. Producer and consumer indices sit on separate cache lines.
#[repr(C)]
pub struct RingHeader {
    // Written once by the creator, but another process could write them too: atomics (std's
    // even under loom, where they are not part of any model), read Relaxed.
    magic: std::sync::atomic::AtomicU64,
    capacity: std::sync::atomic::AtomicU64,
    /// Bytes ever written; only the producer stores it.
    pub(crate) head: CachePadded<AtomicU64>,
    /// Bytes ever consumed; only the consumer stores it.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Rung by the consumer when it frees room, if `wants_room` (unless the ring's place
    /// names another bell).
    room_bell: CachePadded<Doorbell>,
    /// Set by a producer that waits for room; the consumer rings only then.
    pub(crate) wants_room: CachePadded<AtomicU32>,
    /// Under loom, one tracked cell per 8 bytes of the data area: the byte copies touch
    /// them, so loom reports a producer write and a consumer read that are not ordered
    /// by the indices' Release/Acquire (a data race in the real ring).
    #[cfg(loom)]
    shadow: [loom::cell::UnsafeCell<()>; LOOM_SHADOW],
}

/// Data cells tracked under loom: rings up to `8 * LOOM_SHADOW` bytes are tracked exactly
/// (frames are 8-byte aligned, so no two frames share a cell); larger rings are not tracked.
#[cfg(loom)]
const LOOM_SHADOW: usize = 64;

/// Where a ring lives inside a segment, and which doorbell announces data in it (its own,
/// or one shared by many rings so that one thread can wait on all of them).
#[derive(Clone, Copy, Debug)]
pub struct RingPlace {
    pub header: usize,
    pub data: usize,
    pub capacity: usize,
    pub data_bell: usize,
    /// `None`: the ring header's own room bell.
    pub room_bell: Option<usize>,
}

impl RingPlace {
    /// Bytes a ring needs for its header.
    pub const HEADER_BYTES: usize = std::mem::size_of::<RingHeader>();
}

/// The memory a ring end works on; keeps its segment alive.
#[derive(Clone)]
pub(crate) struct RingMem {
    _seg: Arc<Segment>,
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    data_bell: NonNull<Doorbell>,
    room_bell: NonNull<Doorbell>,
    pub(crate) cap: u64,
}

// SAFETY: the pointers point into `seg`, which is kept alive by the Arc and is shared
// memory by design; all cross-thread access to it is through atomics or byte copies.
unsafe impl Send for RingMem {}
// SAFETY: as above; shared references only read atomics and the immutable capacity.
unsafe impl Sync for RingMem {}

impl RingMem {
    pub(crate) fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let cap = place.capacity;
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) || !cap.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "ring capacity must be a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes, not {cap}"
            )));
        }
        let hdr = NonNull::new(seg.at::<RingHeader>(place.header)?).expect("mapping is non-null");
        let data_bell =
            NonNull::new(seg.at::<Doorbell>(place.data_bell)?).expect("mapping is non-null");
        let own_room = place.header + std::mem::offset_of!(RingHeader, room_bell);
        let room_bell = NonNull::new(seg.at::<Doorbell>(place.room_bell.unwrap_or(own_room))?)
            .expect("mapping is non-null");
        let last = place
            .data
            .checked_add(cap - 1)
            .ok_or(Error::BadLayout { what: "ring" })?;
        seg.at::<u8>(last)?; // bounds check of the data area
        let data = NonNull::new(seg.at::<u8>(place.data)?).expect("mapping is non-null");
        let mem = RingMem {
            _seg: seg,
            hdr,
            data,
            data_bell,
            room_bell,
            cap: cap as u64,
        };
        #[cfg(loom)]
        if init {
            // SAFETY: as below, the creator owns the memory until it hands it out.
            unsafe { mem.loom_init() };
        }
        let h = mem.header();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if init {
            // The fd is shared only after this (which orders these stores for the others).
            h.magic.store(RING_MAGIC, relaxed);
            h.capacity.store(cap as u64, relaxed);
        } else if h.magic.load(relaxed) != RING_MAGIC || h.capacity.load(relaxed) != cap as u64 {
            return Err(Error::BadLayout { what: "ring" });
        }
        Ok(mem)
    }

    /// Loom's atomics and cells are objects in its model, not plain data, so zero-filled
    /// memory does not hold valid ones: the creator writes fresh ones (an idle, empty ring
    /// and idle doorbells) over the header and both bells. A bell shared by many rings is
    /// rewritten by each: models build all their rings before starting any thread.
    ///
    /// # Safety
    /// No other thread may use this ring's header or bells yet.
    #[cfg(loom)]
    unsafe fn loom_init(&self) {
        use std::ptr::{addr_of_mut, write};
        let h = self.hdr.as_ptr();
        // SAFETY: the header and bells are in bounds and aligned (`Segment::at`), and the
        // caller vouches nobody else uses them; the old contents are zero bytes, not live
        // objects, so overwriting them without dropping leaks nothing.
        unsafe {
            write(addr_of_mut!((*h).head), CachePadded::new(AtomicU64::new(0)));
            write(addr_of_mut!((*h).tail), CachePadded::new(AtomicU64::new(0)));
            write(
                addr_of_mut!((*h).room_bell),
                CachePadded::new(Doorbell::default()),
            );
            write(
                addr_of_mut!((*h).wants_room),
                CachePadded::new(AtomicU32::new(0)),
            );
            write(
                addr_of_mut!((*h).shadow),
                std::array::from_fn(|_| loom::cell::UnsafeCell::new(())),
            );
            write(self.data_bell.as_ptr(), Doorbell::default());
            write(self.room_bell.as_ptr(), Doorbell::default());
        }
    }

    /// Tells loom that `[pos, pos + len)` of the stream is read, or written: it panics if
    /// the access races with the other end's last one there.
    #[cfg(loom)]
    fn loom_touch(&self, pos: u64, len: usize, write: bool) {
        let cells = self.cap / 8;
        if len == 0 || cells > LOOM_SHADOW as u64 {
            return;
        }
        let shadow = &self.header().shadow;
        for cell in pos / 8..(pos + len as u64).div_ceil(8) {
            let cell = &shadow[(cell % cells) as usize];
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
    }

    pub(crate) fn header(&self) -> &RingHeader {
        // SAFETY: `hdr` is in bounds and aligned (checked by `Segment::at`) and lives as
        // long as `seg`; every field of a header is an atomic (or, under loom, a cell),
        // so a shared reference is sound whatever another process writes.
        unsafe { self.hdr.as_ref() }
    }

    pub(crate) fn data_bell(&self) -> &Doorbell {
        // SAFETY: as for `header`; a doorbell is only touched through atomics.
        unsafe { self.data_bell.as_ref() }
    }

    pub(crate) fn room_bell(&self) -> &Doorbell {
        // SAFETY: as for `header`; a doorbell is only touched through atomics.
        unsafe { self.room_bell.as_ref() }
    }

    /// `(head, tail)` as the other side published them, checked: the tail never passes
    /// the head and they are never more than a capacity apart.
    pub(crate) fn indices(&self) -> Result<(u64, u64), Corruption> {
        let h = self.header();
        // Acquire: pairs with the producer's Release store of `head` (data published) and
        // the consumer's Release store of `tail` (bytes no longer read).
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Acquire);
        self.free(head, tail).map(|_| (head, tail))
    }

    /// Free bytes between a `head` and a `tail`: the one formula for room, checked (the
    /// tail never passes the head, and they are never more than a capacity apart).
    pub(crate) fn free(&self, head: u64, tail: u64) -> Result<u64, Corruption> {
        // Positions count modulo 2^64 (a capacity, a power of two, divides it), so a peer
        // may start them anywhere: only their distance matters.
        match head.wrapping_sub(tail) {
            used if used <= self.cap => Ok(self.cap - used),
            _ => Err(Corruption::Indices {
                head,
                tail,
                capacity: self.cap,
            }),
        }
    }

    /// Copies `src` into the ring at stream position `pos`, wrapping at the end.
    ///
    /// # Safety
    /// `[pos, pos + src.len())` must be free room the caller (the producer) owns, and
    /// `src.len() <= cap`.
    pub(crate) unsafe fn write_at(&self, pos: u64, src: &[u8]) {
        #[cfg(loom)]
        self.loom_touch(pos, src.len(), true);
        let off = (pos % self.cap) as usize;
        let first = src.len().min(self.cap as usize - off);
        // SAFETY: both pieces lie inside the data area (off < cap, first <= cap - off,
        // src.len() - first <= off since src.len() <= cap), and the caller owns them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(off), first);
            std::ptr::copy_nonoverlapping(
                src.as_ptr().add(first),
                self.data.as_ptr(),
                src.len() - first,
            );
        }
    }

    /// Copies `len` ring bytes at stream position `pos` to `dst`, wrapping at the end.
    /// Under the protocol nobody writes these bytes while we copy them (the Acquire load of
    /// `head` ordered their writing before). A process that breaks the protocol can race
    /// the copy: the bytes are then garbage, which the caller validates like any other
    /// input; the copy goes through raw pointers into our own buffer, so no Rust reference
    /// ever sees them change. (Memory shared with another process is outside Rust's model;
    /// this is the assumption every shared-memory transport makes.)
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes, and `len <= cap`.
    unsafe fn copy_into(&self, pos: u64, dst: *mut u8, len: usize) {
        #[cfg(loom)]
        self.loom_touch(pos, len, false);
        let off = (pos % self.cap) as usize;
        let first = len.min(self.cap as usize - off);
        // SAFETY: both source pieces lie inside the data area (as in `write_at`); the
        // caller vouches for `dst`; no reference into the shared bytes is made.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.as_ptr().add(off), dst, first);
            std::ptr::copy_nonoverlapping(self.data.as_ptr(), dst.add(first), len - first);
        }
    }

    /// Copies the ring bytes at stream position `pos` into `dst`.
    pub(crate) fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        assert!(
            dst.len() as u64 <= self.cap,
            "a read never exceeds the ring"
        );
        // SAFETY: `dst` is a valid, exclusive buffer of its length, checked above.
        unsafe { self.copy_into(pos, dst.as_mut_ptr(), dst.len()) }
    }

    /// Appends `len` ring bytes at stream position `pos` to `out`.
    pub(crate) fn append_to(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        assert!(len as u64 <= self.cap, "a read never exceeds the ring");
        out.reserve(len);
        let start = out.len();
        // SAFETY: `reserve` made room for `len` more bytes after `start`; `copy_into`
        // initialises exactly those bytes before `set_len` exposes them.
        unsafe {
            self.copy_into(pos, out.as_mut_ptr().add(start), len);
            out.set_len(start + len);
        }
    }
}
