#![allow(unsafe_code)]
//! The arena: one big memfd that every process of a program maps once and keeps mapped,
//! carved into blocks for large buffers that cross processes out of band (protocol in
//! `README.md` in this folder).
//!
//! A block lives while someone holds it: a *holder* (a process registered as a
//! participant, one bit per block) or a message in *transit* (a count: the sender handed
//! the block over, the receiver has not taken it yet). The last release frees it; a dead
//! participant's holds are swept. All bookkeeping sits in the segment's first pages, under
//! one [`SharedLock`], and is untrusted: every offset and index read from it is checked.
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use rustix::mm::{MapFlags, ProtFlags};

use crate::sync::{caller_ids, SharedLock};
use crate::{sys, Error, Result, Segment};

const MAGIC: u64 = u64::from_le_bytes(*b"PRLARENA");
const VERSION: u32 = 2;
/// Blocks start and end on this boundary: page-aligned for any dtype, and coarse enough
/// that a few thousand blocks cover the arena without a free list.
pub const UNIT: u64 = 1 << 16;
/// Participants: processes that may hold blocks (a bit each per block).
pub const MAX_PARTICIPANTS: usize = 1024;
/// Blocks alive at once.
pub const MAX_BLOCKS: usize = 8192;
/// The largest arena: its residency map has a bit per unit of it.
pub const MAX_SIZE: u64 = 1 << 36;
const HOLDER_WORDS: usize = MAX_PARTICIPANTS / 64;
const RESIDENT_WORDS: usize = (MAX_SIZE / UNIT / 64) as usize;
const PARTICIPANTS_AT: usize = 4096;
const BLOCKS_AT: usize = PARTICIPANTS_AT + MAX_PARTICIPANTS * std::mem::size_of::<Participant>();
const RESIDENT_AT: usize = BLOCKS_AT + MAX_BLOCKS * std::mem::size_of::<Block>();
/// Where data starts: after the bookkeeping, on a UNIT boundary.
const DATA_AT: u64 = ((RESIDENT_AT + RESIDENT_WORDS * 8) as u64).next_multiple_of(UNIT);
/// The table sizes, as a build that maps the arena must share them.
const LAYOUT: u64 = (MAX_PARTICIPANTS as u64) << 48
    | (MAX_BLOCKS as u64) << 24
    | (std::mem::size_of::<Block>() as u64) << 8
    | UNIT.trailing_zeros() as u64;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    /// Index bound: every block in use has an index below it.
    blocks_hi: AtomicU32,
    layout: AtomicU64,
    size: AtomicU64,
    id: AtomicU64,
    /// Free memory kept resident for reuse (see KEEP_RESIDENT), in units.
    keep_units: AtomicU64,
    /// Units written since they were last given back (the residency map's set bits).
    resident_units: AtomicU64,
    /// Units in blocks in use.
    used_units: AtomicU64,
    lock: SharedLock,
}

#[repr(C)]
struct Participant {
    pid: AtomicU32,
    _pad: u32,
    /// The process's start time (clock ticks after boot; 0: unknown): a reused pid is
    /// not the holder.
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

impl Block {
    /// One more message carries it (under the arena's lock).
    fn enter_transit(&self) {
        self.transit
            .store(self.transit.load(Relaxed).saturating_add(1), Relaxed);
    }
}

/// A block as a descriptor names it: what the receiver of a message needs to find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub index: u32,
    pub gen: u32,
    /// From the start of the segment.
    pub offset: u64,
    /// The bytes asked for (`alloc`), the block's length (`lookup`), or, in a reference
    /// to check, how far into the block it reaches.
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

fn bit(s: usize) -> (usize, u64) {
    (s / 64, 1 << (s % 64))
}

impl Arena {
    /// Creates an arena of `size` bytes of address space (memory is used only as blocks
    /// are written), with identity `id`.
    pub fn create(size: u64, id: u64) -> Result<Self> {
        let size = size.min(MAX_SIZE).next_multiple_of(UNIT);
        if size < DATA_AT + UNIT {
            return Err(Error::Invalid(format!(
                "an arena needs at least {} bytes",
                DATA_AT + UNIT
            )));
        }
        let len = usize::try_from(size).map_err(|_| Error::Invalid("arena too large".into()))?;
        let arena = Arena {
            seg: Segment::create("paralelo-arena", len)?,
        };
        arena.seg.advise_huge_pages(0, len);
        let h = arena.header();
        h.size.store(size, Relaxed);
        h.id.store(id, Relaxed);
        h.layout.store(LAYOUT, Relaxed);
        h.keep_units.store(KEEP_RESIDENT / UNIT, Relaxed);
        h.version.store(VERSION, Relaxed);
        h.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
        Ok(arena)
    }

    /// Maps an arena another process created.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self> {
        let seg = Segment::open(fd)?;
        if seg.len() < DATA_AT as usize + UNIT as usize || seg.len() as u64 > MAX_SIZE {
            return Err(Error::BadLayout {
                what: "arena (its size)",
            });
        }
        seg.advise_huge_pages(0, seg.len());
        let arena = Arena { seg };
        let h = arena.header();
        if h.magic.load(std::sync::atomic::Ordering::Acquire) != MAGIC
            || h.version.load(Relaxed) != VERSION
            || h.layout.load(Relaxed) != LAYOUT
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
        let at = PARTICIPANTS_AT + i * std::mem::size_of::<Participant>();
        // SAFETY: in bounds (i < MAX_PARTICIPANTS, table below DATA_AT); atomics only.
        unsafe { &*self.seg.at::<Participant>(at).expect("in bounds") }
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

    fn resident_word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(w < RESIDENT_WORDS);
        // SAFETY: in bounds (w < RESIDENT_WORDS, map below DATA_AT); atomics only.
        unsafe {
            &*self
                .seg
                .at::<AtomicU64>(RESIDENT_AT + w * 8)
                .expect("in bounds")
        }
    }

    fn lock(&self) -> Result<Locked<'_>> {
        let me = caller_ids().1;
        // A holder that died mid-operation left at most one block entry half-written (its
        // `len` is written last on allocation, first on free: see `alloc`, `free`), and
        // sweeps and joins can be run again: the lock is taken over as it is.
        self.header().lock.acquire(me, true, None, &mut || true)?;
        Ok(Locked { arena: self, me })
    }

    fn blocks_hi(&self) -> usize {
        (self.header().blocks_hi.load(Relaxed) as usize).min(MAX_BLOCKS)
    }

    fn check_slot(&self, s: u32) -> Result<usize> {
        let s = s as usize;
        if s >= MAX_PARTICIPANTS {
            return Err(Error::Invalid(format!("no arena participant {s}")));
        }
        Ok(s)
    }

    /// Registers process `pid` as a participant (again, if it already is one): its slot.
    pub fn join(&self, pid: u32) -> Result<u32> {
        let start = sys::thread::start_time(pid).unwrap_or(0);
        let _l = self.lock()?;
        let slot = self.free_slot(Some((pid, start)))?;
        self.set_identity(slot, pid, start);
        Ok(slot as u32)
    }

    /// A slot for a new participant (or `me`'s own, if registered): an empty one first,
    /// else one whose process died (swept first). Under the lock.
    fn free_slot(&self, me: Option<(u32, u64)>) -> Result<usize> {
        let mut empty = None;
        for i in 0..MAX_PARTICIPANTS {
            let p = self.participant(i);
            let pid = p.pid.load(Relaxed);
            if me.is_some_and(|(m, start)| pid == m && p.start.load(Relaxed) == start) {
                return Ok(i);
            }
            if pid == 0 && empty.is_none() {
                empty = Some(i);
            }
        }
        if let Some(i) = empty {
            self.sweep_slot(i); // (bits a crash left behind)
            return Ok(i);
        }
        for i in 0..MAX_PARTICIPANTS {
            if !self.alive(self.participant(i)) {
                self.sweep_slot(i);
                return Ok(i);
            }
        }
        Err(Error::Invalid(format!(
            "the arena has {MAX_PARTICIPANTS} live participants already"
        )))
    }

    fn set_identity(&self, slot: usize, pid: u32, start: u64) {
        let p = self.participant(slot);
        p.start.store(start, Relaxed);
        p.pid.store(pid, Relaxed);
    }

    fn alive(&self, p: &Participant) -> bool {
        let pid = p.pid.load(Relaxed);
        let start = p.start.load(Relaxed);
        pid != 0
            && sys::thread::exists(pid)
            && (start == 0 || sys::thread::start_time(pid).is_none_or(|s| s == start))
    }

    /// Before a fork: a slot for the child-to-be, holding every block `parent` holds, and
    /// named as `parent` until the child claims it (`claim`): if the fork fails, it goes
    /// when the parent does.
    pub fn reserve_for_child(&self, parent: u32) -> Result<u32> {
        let parent = self.check_slot(parent)?;
        let _l = self.lock()?;
        let p = self.participant(parent);
        let (pid, start) = (p.pid.load(Relaxed), p.start.load(Relaxed));
        let child = self.free_slot(None)?;
        let ((pw, pb), (cw, cb)) = (bit(parent), bit(child));
        for i in 0..self.blocks_hi() {
            let b = self.block(i);
            if b.len.load(Relaxed) != 0 && b.holders[pw].load(Relaxed) & pb != 0 {
                b.holders[cw].fetch_or(cb, Relaxed);
            }
        }
        self.set_identity(child, pid, start);
        Ok(child as u32)
    }

    /// The child of a fork takes the slot reserved for it (`reserve_for_child`).
    pub fn claim(&self, slot: u32, pid: u32) -> Result<()> {
        let slot = self.check_slot(slot)?;
        let start = sys::thread::start_time(pid).unwrap_or(0);
        let _l = self.lock()?;
        self.set_identity(slot, pid, start);
        Ok(())
    }

    /// Participant `slot` lets go of everything it holds and leaves (a process ending).
    pub fn leave(&self, slot: u32) -> Result<()> {
        let slot = self.check_slot(slot)?;
        let _l = self.lock()?;
        self.sweep_slot(slot);
        self.set_identity(slot, 0, 0);
        Ok(())
    }

    /// Allocates a block of `len` bytes, held by participant `holder`, or in transit (given
    /// to a message) if None. None if the arena has no room (after sweeping the dead).
    pub fn alloc(&self, len: u64, holder: Option<u32>) -> Result<Option<BlockRef>> {
        if len == 0 {
            return Err(Error::Invalid("an arena block cannot be empty".into()));
        }
        let holder = holder.map(|s| self.check_slot(s)).transpose()?;
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
                let (w, m) = bit(s);
                b.holders[w].store(m, Relaxed);
                b.transit.store(0, Relaxed);
            }
            None => b.transit.store(1, Relaxed),
        }
        b.offset.store(offset, Relaxed);
        let h = self.header();
        if index as u32 >= h.blocks_hi.load(Relaxed) {
            h.blocks_hi.store(index as u32 + 1, Relaxed);
        }
        b.len.store(units, Relaxed); // last: the entry is in use from here
        h.used_units.fetch_add(units / UNIT, Relaxed);
        self.mark_resident(offset, units);
        drop(l);
        Ok(Some(BlockRef {
            index: index as u32,
            gen,
            offset,
            len,
        }))
    }

    /// A free entry, and the lowest gap of `units` bytes whose first unit is resident, else
    /// the lowest gap (the most likely to be resident already). Under the lock.
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
        used.push((size, 0)); // the end, as a last block
        let (mut at, mut lowest) = (DATA_AT, None);
        for (off, len) in used {
            if off.checked_sub(at).is_some_and(|gap| gap >= units) {
                if self.is_resident(at) {
                    return Some((entry, at));
                }
                lowest = lowest.or(Some(at));
            }
            at = at.max(off.saturating_add(len));
        }
        lowest.map(|at| (entry, at))
    }

    fn is_resident(&self, offset: u64) -> bool {
        let u = (offset / UNIT) as usize;
        u / 64 < RESIDENT_WORDS && self.resident_word(u / 64).load(Relaxed) & (1 << (u % 64)) != 0
    }

    /// Marks `len` bytes at `offset` resident (about to be written).
    fn mark_resident(&self, offset: u64, len: u64) {
        let mut new = 0;
        for u in offset / UNIT..(offset + len) / UNIT {
            let (w, m) = bit(u as usize);
            if w < RESIDENT_WORDS && self.resident_word(w).fetch_or(m, Relaxed) & m == 0 {
                new += 1;
            }
        }
        self.header().resident_units.fetch_add(new, Relaxed);
    }

    /// Gives `len` bytes at `offset` back to the kernel (they read as zeros after).
    fn punch(&self, offset: u64, len: u64) {
        let _ = sys::memfd::punch(self.fd(), offset, len);
        let mut gone = 0;
        for u in offset / UNIT..(offset + len) / UNIT {
            let (w, m) = bit(u as usize);
            if w < RESIDENT_WORDS && self.resident_word(w).fetch_and(!m, Relaxed) & m != 0 {
                gone += 1;
            }
        }
        let h = self.header();
        h.resident_units
            .store(h.resident_units.load(Relaxed).saturating_sub(gone), Relaxed);
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
        let (w, m) = bit(self.check_slot(holder)?);
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
            b.holders[w].fetch_or(m, Relaxed); // first: a crash in between leaks, never frees
            b.transit.store(t - 1, Relaxed);
        } else {
            b.holders[w].fetch_or(m, Relaxed);
        }
        Ok(())
    }

    /// Gives block `r` to a message (one more in transit); its holders keep theirs.
    pub fn give(&self, r: &BlockRef) -> Result<()> {
        let _l = self.lock()?;
        self.live(r)?.enter_transit();
        Ok(())
    }

    /// Participant `holder` hands its hold on block `r` to a message it is about to send:
    /// one more in transit, and its bit goes.
    pub fn hand_over(&self, holder: u32, r: &BlockRef) -> Result<()> {
        let (w, m) = bit(self.check_slot(holder)?);
        let _l = self.lock()?;
        let b = self.live(r)?;
        b.enter_transit();
        b.holders[w].fetch_and(!m, Relaxed);
        Ok(())
    }

    /// A message that carried `r` will never be received (it failed to go out, or was
    /// read and could not be taken): one less in transit.
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
        let (w, m) = bit(self.check_slot(holder)?);
        let _l = self.lock()?;
        let b = self.live(r)?;
        b.holders[w].fetch_and(!m, Relaxed);
        self.free_if_unheld(r.index as usize);
        Ok(())
    }

    fn free_if_unheld(&self, i: usize) {
        let b = self.block(i);
        if b.transit.load(Relaxed) != 0 || b.holders.iter().any(|w| w.load(Relaxed) != 0) {
            return;
        }
        let (off, len) = (b.offset.load(Relaxed), b.len.load(Relaxed));
        // The generation first: an old descriptor never matches the entry's next block.
        b.gen.store(b.gen.load(Relaxed).wrapping_add(1), Relaxed);
        b.len.store(0, Relaxed); // the entry is free from here
        let h = self.header();
        h.used_units.store(
            h.used_units.load(Relaxed).saturating_sub(len / UNIT),
            Relaxed,
        );
        let resident_free = h
            .resident_units
            .load(Relaxed)
            .saturating_sub(h.used_units.load(Relaxed));
        if resident_free > h.keep_units.load(Relaxed)
            && off >= DATA_AT
            && off.checked_add(len).is_some_and(|e| e <= self.size())
        {
            self.punch(off, len);
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
                self.set_identity(i, 0, 0);
                swept += 1;
            }
        }
        swept
    }

    fn sweep_slot(&self, s: usize) {
        let (w, m) = bit(s);
        for i in 0..self.blocks_hi() {
            let b = self.block(i);
            if b.len.load(Relaxed) != 0 && b.holders[w].fetch_and(!m, Relaxed) & m != 0 {
                self.free_if_unheld(i);
            }
        }
    }

    /// Maps block `r`'s range of *this process's* mapping again: privately (copy on write:
    /// what this process writes from now on is its own, and what it has not written still
    /// reads the arena) or shared (as the whole arena is mapped). A fork gives each side
    /// its own copy of what it held, as fork does with all other memory; a block must be
    /// mapped shared again before this process lets go of it, or its next use here would
    /// read a stale private copy.
    pub fn remap(&self, r: &BlockRef, private: bool) -> Result<()> {
        let end = r
            .offset
            .checked_add(r.len)
            .filter(|&e| e <= self.size() && r.offset >= DATA_AT);
        if end.is_none() || !r.offset.is_multiple_of(UNIT) {
            return Err(Error::Invalid(format!(
                "arena block {} is outside the data",
                r.index
            )));
        }
        let len = usize::try_from(r.len.next_multiple_of(UNIT))
            .map_err(|_| Error::Invalid("block too large".into()))?;
        let flags = if private {
            MapFlags::PRIVATE
        } else {
            MapFlags::SHARED
        } | MapFlags::FIXED;
        // SAFETY: the range lies inside this arena's own mapping (checked above), which
        // MAP_FIXED replaces in place with a mapping of the same file range: the addresses
        // stay valid and read the same bytes; nothing else is unmapped.
        unsafe {
            rustix::mm::mmap(
                self.base().add(r.offset as usize).cast(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                self.fd(),
                r.offset,
            )
        }
        .map_err(|e| Error::os("mmap(MAP_FIXED)", e))?;
        // (A new mapping: the advice given to the old one is gone with it.)
        self.seg.advise_huge_pages(r.offset as usize, len);
        Ok(())
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

    /// Bytes written and not given back since: for tests and diagnostics.
    pub fn resident(&self) -> u64 {
        self.header().resident_units.load(Relaxed) * UNIT
    }

    /// Keeps at most `bytes` of freed memory resident (default KEEP_RESIDENT).
    pub fn set_keep(&self, bytes: u64) {
        self.header().keep_units.store(bytes / UNIT, Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn data_at() -> u64 {
        DATA_AT
    }
}

#[cfg(test)]
mod tests;
