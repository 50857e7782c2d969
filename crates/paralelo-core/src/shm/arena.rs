#![allow(unsafe_code)]
//! The arena: one big memfd that every process of a program maps once and keeps mapped,
//! carved into blocks for large buffers that cross processes out of band (protocol in
//! `README.md` in this folder).
//!
//! A block lives while someone holds it: a *holder* (a process registered as a
//! participant, one bit per block) or a message in *transit* (a count: the sender gave the
//! block away, the receiver has not taken it yet). The last release frees it; a dead
//! participant's holds are swept. All bookkeeping sits in the segment's first pages, under
//! one [`SharedLock`], and is untrusted: every offset and index read from it is checked.
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::sync::{caller_ids, SharedLock};
use crate::{sys, Error, Result, Segment};

const MAGIC: u64 = u64::from_le_bytes(*b"PRLARENA");
const VERSION: u32 = 1;
/// Blocks start and end on this boundary: page-aligned for any dtype, and coarse enough
/// that a few thousand blocks cover the arena without a free list.
pub const UNIT: u64 = 1 << 16;
/// Participants: processes that may hold blocks (a bit each per block).
pub const MAX_PARTICIPANTS: usize = 256;
/// Blocks alive at once.
pub const MAX_BLOCKS: usize = 8192;
const HOLDER_WORDS: usize = MAX_PARTICIPANTS / 64;
const PARTICIPANTS_AT: usize = 4096;
const BLOCKS_AT: usize = PARTICIPANTS_AT + MAX_PARTICIPANTS * std::mem::size_of::<Participant>();
/// Where data starts: after the bookkeeping, on a UNIT boundary.
const DATA_AT: u64 =
    ((BLOCKS_AT + MAX_BLOCKS * std::mem::size_of::<Block>()) as u64).next_multiple_of(UNIT);

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    /// Index bound: every block in use has an index below it.
    blocks_hi: AtomicU32,
    size: AtomicU64,
    id: AtomicU64,
    /// Data below this offset may be resident (written since the last trim); above, it is
    /// a hole that reads as zeros.
    top: AtomicU64,
    /// Free memory kept resident for reuse (see KEEP_RESIDENT).
    keep: AtomicU64,
    lock: SharedLock,
}

#[repr(C)]
struct Participant {
    pid: AtomicU32,
    _pad: u32,
    /// The process's start time (clock ticks after boot): a reused pid is not the holder.
    start: AtomicU64,
}

#[repr(C)]
struct Block {
    /// 0: the entry is free.
    len: AtomicU64,
    offset: AtomicU64,
    /// Bumped at every free: a stale descriptor names a generation that is gone.
    gen: AtomicU32,
    transit: AtomicU32,
    holders: [AtomicU64; HOLDER_WORDS],
}

/// A block as a descriptor names it: what the receiver of a message needs to find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub index: u32,
    pub gen: u32,
    /// From the start of the segment.
    pub offset: u64,
    pub len: u64,
}

/// Free memory kept resident for reuse by default (writing fresh pages costs ≈ 20x
/// writing touched ones); past it, freed blocks are given back to the kernel.
pub const KEEP_RESIDENT: u64 = 512 << 20;

/// One arena, mapped whole.
pub struct Arena {
    seg: Segment,
}

/// The lock over the bookkeeping, released on drop.
struct Locked<'a> {
    arena: &'a Arena,
    me: u32,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.arena.header().lock.release(self.me, true);
    }
}

impl Arena {
    /// Creates an arena of `size` bytes of address space (memory is used only as blocks
    /// are written), with identity `id`.
    pub fn create(size: u64, id: u64) -> Result<Self> {
        let size = size.next_multiple_of(UNIT);
        if size < DATA_AT + UNIT {
            return Err(Error::Invalid(format!(
                "an arena needs at least {} bytes",
                DATA_AT + UNIT
            )));
        }
        let seg = Segment::create(
            "paralelo-arena",
            usize::try_from(size).map_err(|_| Error::Invalid("arena too large".into()))?,
        )?;
        let arena = Arena { seg };
        let h = arena.header();
        h.size.store(size, Relaxed);
        h.id.store(id, Relaxed);
        h.top.store(DATA_AT, Relaxed);
        h.keep.store(KEEP_RESIDENT, Relaxed);
        h.version.store(VERSION, Relaxed);
        h.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
        Ok(arena)
    }

    /// Maps an arena another process created.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self> {
        let seg = Segment::open(fd)?;
        if seg.len() < DATA_AT as usize + UNIT as usize {
            return Err(Error::BadLayout {
                what: "arena (too small)",
            });
        }
        let arena = Arena { seg };
        let h = arena.header();
        if h.magic.load(std::sync::atomic::Ordering::Acquire) != MAGIC
            || h.version.load(Relaxed) != VERSION
            || h.size.load(Relaxed) != arena.seg.len() as u64
        {
            return Err(Error::BadLayout { what: "arena" });
        }
        Ok(arena)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.seg.fd()
    }

    pub fn id(&self) -> u64 {
        self.header().id.load(Relaxed)
    }

    pub fn size(&self) -> u64 {
        self.seg.len() as u64
    }

    /// The first byte of the mapping: a block's data is at `base() + offset`, valid while
    /// `self` lives (the mapping is never shrunk: its size is sealed).
    pub fn base(&self) -> *mut u8 {
        // `at::<u8>(0)` cannot fail on a non-empty segment.
        self.seg.at::<u8>(0).unwrap_or(std::ptr::null_mut())
    }

    fn header(&self) -> &Header {
        // SAFETY: the segment is at least DATA_AT bytes (checked at create/open), the
        // header is at offset 0, and its fields are atomics, valid for any bit pattern.
        unsafe { &*self.seg.at::<Header>(0).expect("arena header in bounds") }
    }

    fn participant(&self, i: usize) -> &Participant {
        debug_assert!(i < MAX_PARTICIPANTS);
        // SAFETY: in bounds (i < MAX_PARTICIPANTS, table below DATA_AT); atomics only.
        unsafe {
            &*self
                .seg
                .at::<Participant>(PARTICIPANTS_AT + i * std::mem::size_of::<Participant>())
                .expect("in bounds")
        }
    }

    fn block(&self, i: usize) -> &Block {
        debug_assert!(i < MAX_BLOCKS);
        // SAFETY: in bounds (i < MAX_BLOCKS, table below DATA_AT); atomics only.
        unsafe {
            &*self
                .seg
                .at::<Block>(BLOCKS_AT + i * std::mem::size_of::<Block>())
                .expect("in bounds")
        }
    }

    fn lock(&self) -> Result<Locked<'_>> {
        let me = caller_ids().1;
        // A holder that died mid-operation left at most one block entry half-written; the
        // table is the only state (no free list to rebuild), so it is taken over as is.
        self.header().lock.acquire(me, true, None, &mut || true)?;
        Ok(Locked { arena: self, me })
    }

    fn blocks_hi(&self) -> usize {
        (self.header().blocks_hi.load(Relaxed) as usize).min(MAX_BLOCKS)
    }

    /// Registers process `pid` as a participant (again, if it already is one): its slot.
    pub fn join(&self, pid: u32) -> Result<u32> {
        let start = sys::thread::start_time(pid).unwrap_or(0);
        let _l = self.lock()?;
        let mut free = None;
        for i in 0..MAX_PARTICIPANTS {
            let p = self.participant(i);
            let other = p.pid.load(Relaxed);
            if other == pid && p.start.load(Relaxed) == start {
                return Ok(i as u32);
            }
            if free.is_none() && (other == 0 || !self.alive(p)) {
                free = Some(i);
            }
        }
        let Some(i) = free else {
            return Err(Error::Invalid(format!(
                "the arena has {MAX_PARTICIPANTS} live participants already"
            )));
        };
        self.sweep_slot(i); // a dead one's holds go first
        let p = self.participant(i);
        p.start.store(start, Relaxed);
        p.pid.store(pid, Relaxed);
        Ok(i as u32)
    }

    fn alive(&self, p: &Participant) -> bool {
        let pid = p.pid.load(Relaxed);
        pid != 0
            && sys::thread::exists(pid)
            && sys::thread::start_time(pid).is_none_or(|s| s == p.start.load(Relaxed))
    }

    /// Allocates a block of `len` bytes, held by participant `holder`, or in transit (given
    /// to a message) if None. None if the arena has no room (after sweeping the dead).
    pub fn alloc(&self, len: u64, holder: Option<u32>) -> Result<Option<BlockRef>> {
        if len == 0 {
            return Err(Error::Invalid("an arena block cannot be empty".into()));
        }
        let Some(units) = len.checked_next_multiple_of(UNIT) else {
            return Ok(None);
        };
        let l = self.lock()?;
        let mut found = self.find_room(units);
        if found.is_none() && self.reclaim_locked() > 0 {
            found = self.find_room(units);
        }
        let Some((index, offset)) = found else {
            return Ok(None);
        };
        let b = self.block(index);
        let gen = b.gen.load(Relaxed);
        for w in &b.holders {
            w.store(0, Relaxed);
        }
        match holder {
            Some(s) => {
                let s = self.check_slot(s)?;
                b.holders[s / 64].store(1 << (s % 64), Relaxed);
                b.transit.store(0, Relaxed);
            }
            None => b.transit.store(1, Relaxed),
        }
        b.offset.store(offset, Relaxed);
        b.len.store(units, Relaxed); // last: the entry is in use from here
        let h = self.header();
        if index as u32 >= h.blocks_hi.load(Relaxed) {
            h.blocks_hi.store(index as u32 + 1, Relaxed);
        }
        if offset + units > h.top.load(Relaxed) {
            h.top.store(offset + units, Relaxed);
        }
        drop(l);
        Ok(Some(BlockRef {
            index: index as u32,
            gen,
            offset,
            len,
        }))
    }

    fn check_slot(&self, s: u32) -> Result<usize> {
        let s = s as usize;
        if s >= MAX_PARTICIPANTS {
            return Err(Error::Invalid(format!("no arena participant {s}")));
        }
        Ok(s)
    }

    /// A free entry and the lowest gap of `units` bytes (lowest: the most likely to be
    /// resident already), from the entries in use. Under the lock.
    fn find_room(&self, units: u64) -> Option<(usize, u64)> {
        let size = self.size();
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut entry = None;
        for i in 0..self.blocks_hi() {
            let b = self.block(i);
            let len = b.len.load(Relaxed);
            if len == 0 {
                entry = entry.or(Some(i));
                continue;
            }
            let off = b.offset.load(Relaxed);
            // A corrupt entry (outside the data) is skipped, never trusted as a bound.
            if off >= DATA_AT && off.checked_add(len).is_some_and(|end| end <= size) {
                used.push((off, len));
            }
        }
        let entry = match entry {
            Some(i) => i,
            None if self.blocks_hi() < MAX_BLOCKS => self.blocks_hi(),
            None => return None,
        };
        used.sort_unstable();
        let mut at = DATA_AT;
        for (off, len) in used {
            if off >= at + units {
                break;
            }
            at = at.max(off + len);
        }
        (at + units <= size).then_some((entry, at))
    }

    /// The block `r` names, checked: in use, of that generation, inside the data.
    fn live(&self, r: &BlockRef) -> Result<&Block> {
        let stale = || {
            Error::Invalid(format!(
                "arena block {} (generation {}) is no longer there",
                r.index, r.gen
            ))
        };
        if r.index as usize >= MAX_BLOCKS {
            return Err(stale());
        }
        let b = self.block(r.index as usize);
        let len = b.len.load(Relaxed);
        if len == 0
            || b.gen.load(Relaxed) != r.gen
            || b.offset.load(Relaxed) != r.offset
            || r.len > len
        {
            return Err(stale());
        }
        if r.offset < DATA_AT
            || r.offset
                .checked_add(len)
                .is_none_or(|end| end > self.size())
        {
            return Err(Error::BadLayout {
                what: "arena block (outside the data)",
            });
        }
        Ok(b)
    }

    /// The whole block that reference `r` lies in (`r.len`: the bytes it needs from the
    /// block's start), checked as `hold` checks it.
    pub fn lookup(&self, r: &BlockRef) -> Result<BlockRef> {
        let _l = self.lock()?;
        let b = self.live(r)?;
        Ok(BlockRef {
            len: b.len.load(Relaxed),
            ..*r
        })
    }

    /// Participant `holder` takes block `r`: from a message in transit (`from_transit`),
    /// or alongside a holder that keeps it alive meanwhile (a lent block).
    pub fn hold(&self, holder: u32, r: &BlockRef, from_transit: bool) -> Result<()> {
        let s = self.check_slot(holder)?;
        let _l = self.lock()?;
        let b = self.live(r)?;
        if from_transit {
            let t = b.transit.load(Relaxed);
            if t == 0 {
                return Err(Error::Invalid(format!(
                    "arena block {} was taken already",
                    r.index
                )));
            }
            b.transit.store(t - 1, Relaxed);
        }
        b.holders[s / 64].fetch_or(1 << (s % 64), Relaxed);
        Ok(())
    }

    /// Gives block `r` to a message (one more in transit); its holders keep theirs.
    pub fn give(&self, r: &BlockRef) -> Result<()> {
        let _l = self.lock()?;
        let b = self.live(r)?;
        b.transit
            .store(b.transit.load(Relaxed).saturating_add(1), Relaxed);
        Ok(())
    }

    /// A message that carried `r` will never be received (it failed to go out): one less
    /// in transit.
    pub fn ungive(&self, r: &BlockRef) -> Result<()> {
        let _l = self.lock()?;
        let b = self.live(r)?;
        b.transit
            .store(b.transit.load(Relaxed).saturating_sub(1), Relaxed);
        self.free_if_unheld(r.index as usize);
        Ok(())
    }

    /// Participant `holder` lets go of block `r`.
    pub fn release(&self, holder: u32, r: &BlockRef) -> Result<()> {
        let s = self.check_slot(holder)?;
        let _l = self.lock()?;
        let b = self.live(r)?;
        b.holders[s / 64].fetch_and(!(1 << (s % 64)), Relaxed);
        self.free_if_unheld(r.index as usize);
        Ok(())
    }

    fn free_if_unheld(&self, i: usize) {
        let b = self.block(i);
        if b.transit.load(Relaxed) != 0 || b.holders.iter().any(|w| w.load(Relaxed) != 0) {
            return;
        }
        let (off, len) = (b.offset.load(Relaxed), b.len.load(Relaxed));
        b.len.store(0, Relaxed); // first: the entry is free from here
        b.gen.store(b.gen.load(Relaxed).wrapping_add(1), Relaxed);
        self.trim(off, len);
    }

    /// Gives memory back once more than KEEP_RESIDENT of it is free below `top`: the
    /// unused top first, then the block just freed.
    fn trim(&self, freed_at: u64, freed_len: u64) {
        let h = self.header();
        let top = h.top.load(Relaxed).min(self.size());
        let (mut used_below, mut used_end) = (0u64, DATA_AT);
        for i in 0..self.blocks_hi() {
            let b = self.block(i);
            let len = b.len.load(Relaxed);
            if len != 0 {
                let end = b.offset.load(Relaxed).saturating_add(len);
                used_end = used_end.max(end.min(top));
                used_below += len.min(top.saturating_sub(b.offset.load(Relaxed)));
            }
        }
        let keep = h.keep.load(Relaxed);
        let mut free = top.saturating_sub(DATA_AT).saturating_sub(used_below);
        if free <= keep {
            return;
        }
        if used_end < top {
            let _ = sys::memfd::punch(self.fd(), used_end, top - used_end);
            free -= top - used_end;
            h.top.store(used_end, Relaxed);
        }
        if free > keep && freed_at + freed_len <= used_end {
            let _ = sys::memfd::punch(self.fd(), freed_at, freed_len);
        }
    }

    /// Sweeps participants that died: their holds go, and blocks only they held are freed.
    /// How many were swept.
    pub fn reclaim_dead(&self) -> Result<usize> {
        let _l = self.lock()?;
        Ok(self.reclaim_locked())
    }

    fn reclaim_locked(&self) -> usize {
        let mut swept = 0;
        for i in 0..MAX_PARTICIPANTS {
            let p = self.participant(i);
            if p.pid.load(Relaxed) != 0 && !self.alive(p) {
                self.sweep_slot(i);
                p.pid.store(0, Relaxed);
                swept += 1;
            }
        }
        swept
    }

    fn sweep_slot(&self, s: usize) {
        for i in 0..self.blocks_hi() {
            let b = self.block(i);
            if b.len.load(Relaxed) != 0
                && b.holders[s / 64].fetch_and(!(1 << (s % 64)), Relaxed) & (1 << (s % 64)) != 0
            {
                self.free_if_unheld(i);
            }
        }
    }

    /// Bytes in blocks in use, and how many: for tests and diagnostics.
    pub fn usage(&self) -> Result<(u64, usize)> {
        let _l = self.lock()?;
        let (mut bytes, mut n) = (0, 0);
        for i in 0..self.blocks_hi() {
            let len = self.block(i).len.load(Relaxed);
            if len != 0 {
                bytes += len;
                n += 1;
            }
        }
        Ok((bytes, n))
    }

    /// The resident bound: for tests.
    #[cfg(test)]
    pub(crate) fn top(&self) -> u64 {
        self.header().top.load(Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn data_at() -> u64 {
        DATA_AT
    }

    /// Keeps at most `bytes` of free memory resident (default KEEP_RESIDENT).
    pub fn set_keep(&self, bytes: u64) {
        self.header().keep.store(bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests;
