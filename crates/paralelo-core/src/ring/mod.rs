#![allow(unsafe_code)]
//! A single-producer single-consumer ring of framed byte messages in shared memory.
//! `README.md` beside this file gives the protocol and its invariants.
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::sync::{Doorbell, Poll};
use crate::{Error, Result, Segment};

const RING_MAGIC: u64 = 0x676e_6972_6f6c_6170; // "paloring"
/// Bytes of a frame header: len u32, tag u32, job u64, seq u64, aux u64.
pub const FRAME_HEADER: usize = 32;
/// Set on every fragment of a message but the last.
const FRAG_MORE: u32 = 1 << 31;
/// Tells the consumer to drop a half-received message (its producer gave up mid-way).
const TAG_ABORT: u32 = FRAG_MORE - 1;
/// The largest tag a caller may use.
pub const MAX_TAG: u32 = TAG_ABORT - 1;

/// The plain-data head of a ring. Producer and consumer indices sit on separate cache lines.
#[repr(C)]
pub struct RingHeader {
    magic: u64,
    capacity: u64,
    /// Bytes ever written; only the producer stores it.
    head: CachePadded<AtomicU64>,
    /// Bytes ever consumed; only the consumer stores it.
    tail: CachePadded<AtomicU64>,
    /// Rung by the consumer when it frees room, if `wants_room` (unless the ring's place
    /// names another bell).
    room_bell: CachePadded<Doorbell>,
    /// Set by a producer that waits for room; the consumer rings only then.
    wants_room: CachePadded<AtomicU32>,
}

/// What travels with every message besides its payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u32,
    pub job: u64,
    pub seq: u64,
    pub aux: u64,
}

/// Where a ring lives inside a segment, and which doorbell announces data in it (its own,
/// or one shared by many rings so that one thread can wait on all of them).
#[derive(Clone, Copy)]
pub struct RingPlace {
    pub header: usize,
    pub data: usize,
    pub capacity: usize,
    pub data_bell: usize,
    /// `None`: the ring header's own room bell.
    pub room_bell: Option<usize>,
}

impl RingPlace {
    /// Bytes a ring of `capacity` needs for its header.
    pub const HEADER_BYTES: usize = std::mem::size_of::<RingHeader>();
}

/// The memory a ring end works on; keeps its segment alive.
struct RingMem {
    _seg: Arc<Segment>,
    hdr: NonNull<RingHeader>,
    data: NonNull<u8>,
    data_bell: NonNull<Doorbell>,
    room_bell: NonNull<Doorbell>,
    cap: u64,
}

// SAFETY: the pointers point into `seg`, which is kept alive by the Arc and is shared
// memory by design; all cross-thread access to it is through atomics or disjoint ranges.
unsafe impl Send for RingMem {}
// SAFETY: as above; shared references only read atomics and the immutable capacity.
unsafe impl Sync for RingMem {}

impl RingMem {
    fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let cap = place.capacity;
        if cap < 4 * (FRAME_HEADER + 8) || !cap.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "ring capacity must be a power of two of at least {} bytes, not {cap}",
                4 * (FRAME_HEADER + 8)
            )));
        }
        let hdr = NonNull::new(seg.at::<RingHeader>(place.header)?).expect("mapping is non-null");
        let data_bell =
            NonNull::new(seg.at::<Doorbell>(place.data_bell)?).expect("mapping is non-null");
        let own_room = place.header + std::mem::offset_of!(RingHeader, room_bell);
        let room_bell = NonNull::new(seg.at::<Doorbell>(place.room_bell.unwrap_or(own_room))?)
            .expect("mapping is non-null");
        seg.at::<u8>(place.data + cap - 1)?; // bounds check of the data area
        let data = NonNull::new(seg.at::<u8>(place.data)?).expect("mapping is non-null");
        let mem = RingMem { _seg: seg, hdr, data, data_bell, room_bell, cap: cap as u64 };
        if init {
            // SAFETY: the creator initialises the header before any other process maps it;
            // magic and capacity are plain words nobody else writes.
            unsafe {
                (*hdr.as_ptr()).magic = RING_MAGIC;
                (*hdr.as_ptr()).capacity = cap as u64;
            }
        } else {
            let h = mem.header();
            if h.magic != RING_MAGIC || h.capacity != cap as u64 {
                return Err(Error::BadLayout { what: "ring" });
            }
        }
        Ok(mem)
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: `hdr` is in bounds and aligned (checked by `Segment::at`), lives as long
        // as `seg`, and is only mutated through atomics after initialisation.
        unsafe { self.hdr.as_ref() }
    }

    fn data_bell(&self) -> &Doorbell {
        // SAFETY: as for `header`; a doorbell is only touched through atomics.
        unsafe { self.data_bell.as_ref() }
    }

    fn room_bell(&self) -> &Doorbell {
        // SAFETY: as for `header`; a doorbell is only touched through atomics.
        unsafe { self.room_bell.as_ref() }
    }

    /// Copies `src` into the ring at stream position `pos`, wrapping at the end.
    ///
    /// # Safety
    /// `[pos, pos + src.len())` must be free room the caller (the producer) owns.
    unsafe fn write_at(&self, pos: u64, src: &[u8]) {
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

    /// The ring bytes at stream position `pos`, as up to two slices (the second non-empty
    /// when the range wraps).
    ///
    /// # Safety
    /// `[pos, pos + len)` must be published data the caller (the consumer) has not released;
    /// the slices must be dropped before the consumer releases it.
    unsafe fn read_at(&self, pos: u64, len: usize) -> (&[u8], &[u8]) {
        let off = (pos % self.cap) as usize;
        let first = len.min(self.cap as usize - off);
        // SAFETY: in bounds as in `write_at`; the producer does not write published,
        // unreleased bytes, so nobody mutates them while the slices live.
        unsafe {
            (
                std::slice::from_raw_parts(self.data.as_ptr().add(off), first),
                std::slice::from_raw_parts(self.data.as_ptr(), len - first),
            )
        }
    }
}

fn padded(len: usize) -> u64 {
    (len as u64).next_multiple_of(8)
}

fn encode(h: &FrameHeader, len: usize) -> [u8; FRAME_HEADER] {
    let mut b = [0u8; FRAME_HEADER];
    b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    b[4..8].copy_from_slice(&h.tag.to_le_bytes());
    b[8..16].copy_from_slice(&h.job.to_le_bytes());
    b[16..24].copy_from_slice(&h.seq.to_le_bytes());
    b[24..32].copy_from_slice(&h.aux.to_le_bytes());
    b
}

fn decode(first: &[u8], second: &[u8]) -> (usize, FrameHeader) {
    // A header may wrap round the ring's end like any other bytes.
    let mut a = [0u8; FRAME_HEADER];
    a[..first.len()].copy_from_slice(first);
    a[first.len()..].copy_from_slice(second);
    let u32_at = |i: usize| u32::from_le_bytes(a[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(a[i..i + 8].try_into().expect("8 bytes"));
    let h = FrameHeader { tag: u32_at(4), job: u64_at(8), seq: u64_at(16), aux: u64_at(24) };
    (u32_at(0) as usize, h)
}

/// The writing end. Only one may exist per ring (that is the protocol, not a type check:
/// the other end is usually in another process).
pub struct Producer {
    mem: RingMem,
    /// Our copy of `head` (we are its only writer).
    head: u64,
    /// Last `tail` we read; refreshed only when the ring looks full.
    tail_seen: u64,
    /// A fragmented send was abandoned half-way: the next send first tells the consumer.
    broken: bool,
    /// Published since the consumer was last told: [`Self::notify`] rings then.
    unrung: bool,
}

impl Producer {
    /// The producer end of the ring at `place` in `seg`; `init` on the side that created it.
    pub fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let mem = RingMem::new(seg, place, init)?;
        let head = mem.header().head.load(Ordering::Relaxed);
        let tail_seen = mem.header().tail.load(Ordering::Acquire);
        Ok(Producer { mem, head, tail_seen, broken: false, unrung: false })
    }

    /// The largest payload one frame carries; longer messages go as several fragments.
    pub fn max_fragment(&self) -> usize {
        self.mem.cap as usize / 4 - FRAME_HEADER
    }

    fn free(&mut self) -> u64 {
        // Acquire: pairs with the consumer's Release store of `tail` after it read the bytes.
        self.tail_seen = self.mem.header().tail.load(Ordering::Acquire);
        self.mem.cap - (self.head - self.tail_seen)
    }

    fn has_room(&mut self, need: u64) -> bool {
        self.mem.cap - (self.head - self.tail_seen) >= need || self.free() >= need
    }

    fn put(&mut self, h: &FrameHeader, tag: u32, payload: &[u8]) {
        let hdr = encode(&FrameHeader { tag, ..*h }, payload.len());
        // SAFETY: `has_room` confirmed padded(len) + FRAME_HEADER bytes past `head` are free,
        // and only this producer writes there.
        unsafe {
            self.mem.write_at(self.head, &hdr);
            self.mem.write_at(self.head + FRAME_HEADER as u64, payload);
        }
        self.head += FRAME_HEADER as u64 + padded(payload.len());
        // Release: pairs with the consumer's Acquire load of `head` before it reads the bytes.
        self.mem.header().head.store(self.head, Ordering::Release);
        self.unrung = true;
    }

    /// Wakes the consumer if it sleeps and something was published since the last call.
    /// Publishing alone does not wake: a sender of many messages rings once, at the end,
    /// which saves a futex wake (≈ 21 µs here) per message when the consumer is idle.
    pub fn notify(&mut self) {
        if std::mem::take(&mut self.unrung) {
            self.mem.data_bell().ring();
        }
    }

    /// Sends a message if it fits now without waiting; `false` if the ring lacks room.
    /// Messages larger than [`Self::max_fragment`] always return `false`: use [`Self::send`]
    /// or [`Self::offer`].
    pub fn try_send(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<bool> {
        if payload.len() > self.max_fragment() {
            check_tag(h.tag)?;
            return Ok(false);
        }
        let done = self.offer(h, payload, &mut 0)?;
        self.notify();
        Ok(done)
    }

    /// Writes as much of a message as fits now, without waiting: whole fragments, starting
    /// at byte `*sent` of `payload`, advancing `*sent`. `true` once the message is complete.
    /// Does not wake the consumer: call [`Self::notify`].
    /// A caller that gives up on a message with `0 < *sent` must call [`Self::abandon`].
    pub fn offer(&mut self, h: &FrameHeader, payload: &[u8], sent: &mut usize) -> Result<bool> {
        check_tag(h.tag)?;
        if self.broken {
            if !self.has_room(FRAME_HEADER as u64) {
                return Ok(false);
            }
            self.put(h, TAG_ABORT, &[]);
            self.broken = false;
        }
        let max = self.max_fragment();
        loop {
            let rest = &payload[*sent..];
            let piece = &rest[..rest.len().min(max)];
            let last = piece.len() == rest.len();
            if !self.has_room(FRAME_HEADER as u64 + padded(piece.len())) {
                return Ok(false);
            }
            self.put(h, if last { h.tag } else { h.tag | FRAG_MORE }, piece);
            *sent += piece.len();
            if last {
                return Ok(true);
            }
        }
    }

    /// Gives up on a message [`Self::offer`] started: the consumer drops its fragments.
    pub fn abandon(&mut self) {
        self.broken = true;
    }

    /// Bytes of room the next fragment of a message needs, `*sent` bytes into `payload`.
    pub fn room_needed(&self, payload: &[u8], sent: usize) -> u64 {
        let piece = (payload.len() - sent).min(self.max_fragment());
        FRAME_HEADER as u64 + padded(piece) + if self.broken { FRAME_HEADER as u64 } else { 0 }
    }

    /// Whether `need` bytes are free now.
    pub fn has_room_for(&self, need: u64) -> bool {
        // Acquire: pairs with the consumer's Release store of `tail`.
        self.mem.cap - (self.head - self.mem.header().tail.load(Ordering::Acquire)) >= need
    }

    /// Asks the consumer to ring the room bell whenever it frees room (or stops asking).
    pub fn want_room(&self, on: bool) {
        self.mem.header().wants_room.store(on as u32, Ordering::SeqCst);
        // Pairs with the fence in `Consumer::drain`: either it sees the flag or we see its
        // new `tail` when we re-check room after this.
        fence(Ordering::SeqCst);
    }

    /// Sends a message of any size, waiting for room as needed. A message larger than a
    /// fragment streams through the ring while the consumer drains it, so it never needs
    /// the whole message to fit.
    pub fn send(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        let mut sent = 0;
        while !self.offer(h, payload, &mut sent)? {
            self.notify(); // the consumer must drain what is in before more fits
            let need = self.room_needed(payload, sent);
            if let Err(e) = self.wait_room(need, deadline, poll) {
                if sent > 0 {
                    self.abandon();
                }
                return Err(e);
            }
        }
        self.notify();
        Ok(())
    }

    fn wait_room(&mut self, need: u64, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        if self.has_room(need) {
            return Ok(());
        }
        self.want_room(true);
        let out = self.mem.room_bell().wait_until(|| self.has_room_for(need), deadline, poll);
        self.want_room(false);
        self.free();
        out
    }

    /// Empties the ring, as if freshly created, and forgets sleepers on its data bell (so
    /// that bell must be this ring's own). Only sound when no consumer is running
    /// (its process is gone) — the hub uses it to reuse a dead worker's slot.
    pub fn reset(&mut self) {
        let hdr = self.mem.header();
        hdr.head.store(0, Ordering::Release);
        hdr.tail.store(0, Ordering::Release);
        self.head = 0;
        self.tail_seen = 0;
        self.broken = false;
        self.unrung = false;
        // The dead consumer may have died asleep on its data bell.
        self.mem.data_bell().forget_sleepers();
    }
}

fn check_tag(tag: u32) -> Result<()> {
    if tag > MAX_TAG {
        return Err(Error::Invalid(format!("message tag {tag} is reserved (max {MAX_TAG})")));
    }
    Ok(())
}

/// The reading end.
pub struct Consumer {
    mem: RingMem,
    /// Our copy of `tail` (we are its only writer).
    tail: u64,
    /// Fragments of a message not yet complete.
    partial: Vec<u8>,
    in_partial: bool,
}

impl Consumer {
    /// The consumer end of the ring at `place` in `seg`; `init` on the side that created it.
    pub fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let mem = RingMem::new(seg, place, init)?;
        let tail = mem.header().tail.load(Ordering::Relaxed);
        Ok(Consumer { mem, tail, partial: Vec::new(), in_partial: false })
    }

    /// Whether published bytes are waiting (maybe only a fragment of a message).
    pub fn has_data(&self) -> bool {
        // Acquire: pairs with the producer's Release store of `head`.
        self.mem.header().head.load(Ordering::Acquire) != self.tail
    }

    /// Hands every complete message now in the ring to `f` as (header, first part, second
    /// part): the payload is the two parts concatenated (the second is non-empty when it
    /// wraps round the ring's end). Returns how many messages were handed over; stops early
    /// after `max` messages. A frame that does not fit in what was published means the
    /// other process wrote garbage: [`Error::Corrupt`], and nothing past it is read.
    pub fn drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(&FrameHeader, &[u8], &[u8]),
    ) -> Result<usize> {
        let hdr = self.mem.header();
        // Acquire: pairs with the producer's Release store of `head`.
        let head = hdr.head.load(Ordering::Acquire);
        let mut delivered = 0;
        let mut pos = self.tail;
        while pos != head && delivered < max {
            let (len, fh) = {
                // SAFETY: [pos, head) is published and not yet released by us, and a whole
                // frame header precedes `head` (frames are published whole).
                let (a, b) = unsafe { self.mem.read_at(pos, FRAME_HEADER) };
                decode(a, b)
            };
            if head - pos < FRAME_HEADER as u64 + padded(len) || head - pos > self.mem.cap {
                self.tail = pos;
                hdr.tail.store(pos, Ordering::Release);
                return Err(Error::Corrupt { len, published: head - pos });
            }
            let body = pos + FRAME_HEADER as u64;
            // SAFETY: as above; the payload lies before `head` because the producer
            // publishes whole frames.
            let (a, b) = unsafe { self.mem.read_at(body, len) };
            pos = body + padded(len);
            if fh.tag == TAG_ABORT {
                self.partial.clear();
                self.in_partial = false;
            } else if fh.tag & FRAG_MORE != 0 {
                self.partial.extend_from_slice(a);
                self.partial.extend_from_slice(b);
                self.in_partial = true;
            } else if self.in_partial {
                self.partial.extend_from_slice(a);
                self.partial.extend_from_slice(b);
                f(&fh, &self.partial, &[]);
                self.partial.clear();
                self.in_partial = false;
                delivered += 1;
            } else {
                f(&fh, a, b);
                delivered += 1;
            }
        }
        if pos != self.tail {
            self.tail = pos;
            // Release: pairs with the producer's Acquire load of `tail` before reuse.
            hdr.tail.store(pos, Ordering::Release);
            // Pairs with the fence in `Producer::want_room`.
            fence(Ordering::SeqCst);
            if hdr.wants_room.load(Ordering::Relaxed) != 0 {
                self.mem.room_bell().ring();
            }
        }
        Ok(delivered)
    }

    /// Waits until data is published (see [`Doorbell::wait_until`]).
    pub fn wait(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.mem.data_bell().wait_until(|| self.has_data(), deadline, poll)
    }

    /// Empties the ring, as if freshly created, and forgets sleepers on its room bell (so
    /// that bell must be this ring's own). Only sound when no producer is running
    /// (its process is gone) — the hub uses it to reuse a dead worker's slot.
    pub fn reset(&mut self) {
        let hdr = self.mem.header();
        hdr.head.store(0, Ordering::Release);
        hdr.tail.store(0, Ordering::Release);
        // The dead producer may have died asleep waiting for room.
        hdr.wants_room.store(0, Ordering::SeqCst);
        self.mem.room_bell().forget_sleepers();
        self.tail = 0;
        self.partial.clear();
        self.in_partial = false;
    }

}

#[cfg(test)]
mod tests;
