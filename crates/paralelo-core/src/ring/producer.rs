#![allow(unsafe_code)]
//! The writing end of a ring.
use std::sync::Arc;
use std::time::Instant;

use crate::primitive::{AtomicBool, Ordering};
use crate::sync::Poll;
use crate::{Result, Segment};

use super::frame::{check_tag, padded, FrameHeader, FRAG_MORE, FRAME_HEADER, TAG_ABORT, TAG_SKIP};
use super::mem::{RingMem, RingPlace};
use super::probe::Probe;

/// The writing end. Only one may exist per ring (that is the protocol, not a type check:
/// the other end is usually in another process).
pub struct Producer {
    mem: RingMem,
    /// Our copy of `head` (we are its only writer).
    head: u64,
    /// Last `tail` we read and checked; refreshed only when the ring looks full.
    tail_seen: u64,
    /// A fragmented send was abandoned half-way: the next send first tells the consumer.
    broken: bool,
    /// No rewind is tried before `head` reaches this (after a try found the ring busy, an
    /// eighth of the ring later): the consumer's `tail` is not read for it per message.
    rewind_after: u64,
    /// Published since the consumer was last told: [`Self::notify`] rings then. Atomic so
    /// that another thread may notify without holding this end.
    unrung: AtomicBool,
}

impl Producer {
    /// The producer end of the ring at `place` in `seg`; `init` on the side that created it.
    pub fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let mem = RingMem::new(seg, place, init)?;
        let (head, tail) = mem.indices()?;
        Ok(Producer {
            mem,
            head,
            tail_seen: tail,
            broken: false,
            rewind_after: head,
            unrung: AtomicBool::new(false),
        })
    }

    /// A lock-free view of this ring, to wait for room without holding this end.
    pub fn probe(&self) -> Probe {
        Probe::new(self.mem.clone())
    }

    /// Bytes published so far (this end's own copy of `head`).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The largest payload one frame carries; longer messages go as several fragments.
    pub fn max_fragment(&self) -> usize {
        self.mem.cap as usize / 4 - FRAME_HEADER
    }

    /// Free bytes now, from a fresh and checked read of the consumer's `tail`. The one
    /// place room is computed; a tail that does not fit our head is corruption.
    fn free(&mut self) -> Result<u64> {
        // Acquire: pairs with the consumer's Release store of `tail` after it read the bytes.
        let tail = self.mem.header().tail.load(Ordering::Acquire);
        let free = self.mem.free(self.head, tail)?;
        self.tail_seen = tail;
        Ok(free)
    }

    fn has_room(&mut self, need: u64) -> Result<bool> {
        // `tail_seen` was checked when read, so this cannot underflow.
        // `tail_seen` was checked when read: this distance is at most the capacity.
        Ok(self.mem.cap - self.head.wrapping_sub(self.tail_seen) >= need || self.free()? >= need)
    }

    /// When the ring is empty, our position is past its first quarter, and a frame of
    /// `need` bytes fits before it, skips the rest of the data area (one header, nothing
    /// else written), so the frame goes at its beginning: the bytes in use stay within the
    /// pages that recent messages warmed (a quarter of the ring and a message), instead of
    /// touching the whole ring in turn (on a fresh ring, a page fault per 4 KB in each
    /// process over its first passes). Not sooner: rewinding after every small message
    /// made 20,000 small calls 35% slower here.
    fn rewind_if_empty(&mut self, need: u64) -> Result<()> {
        let cap = self.mem.cap;
        let at = self.head % cap;
        let skip = cap - at;
        // (Stream positions wrap: "before" is a negative wrapping distance.)
        let early = (self.head.wrapping_sub(self.rewind_after) as i64) < 0;
        if at < cap / 4 || skip < FRAME_HEADER as u64 || need > at || early {
            return Ok(());
        }
        if self.head != self.tail_seen && self.free()? != cap {
            // Not empty: the consumer still reads behind us.
            self.rewind_after = self.head.wrapping_add(cap / 8);
            return Ok(());
        }
        let hdr = FrameHeader::default().encode(TAG_SKIP, (skip - FRAME_HEADER as u64) as u32);
        // SAFETY: the ring is empty, so all `cap` bytes past `head` are free; only this
        // producer writes there.
        unsafe { self.mem.write_at(self.head, &hdr) };
        // Published with the frame that follows (`put`, which the caller runs next: it fits),
        // so a consumer never wakes to find a skip and nothing after it.
        self.head = self.head.wrapping_add(skip);
        Ok(())
    }

    fn put(&mut self, h: &FrameHeader, tag: u32, payload: &[u8]) {
        let hdr = h.encode(tag, payload.len() as u32);
        // SAFETY: `has_room` confirmed padded(len) + FRAME_HEADER bytes past `head` are free,
        // only this producer writes there, and a fragment is at most a quarter of the ring.
        unsafe {
            self.mem.write_at(self.head, &hdr);
            self.mem
                .write_at(self.head.wrapping_add(FRAME_HEADER as u64), payload);
        }
        self.head = self
            .head
            .wrapping_add(FRAME_HEADER as u64 + padded(payload.len()));
        // Release: pairs with the consumer's Acquire load of `head` before it reads the bytes.
        self.mem.header().head.store(self.head, Ordering::Release);
        // Release: pairs with the Acquire swap in `notify`, which may run on another thread.
        self.unrung.store(true, Ordering::Release);
    }

    /// Wakes the consumer if it sleeps and something was published since the last call.
    /// Publishing alone does not wake: a sender of many messages rings once, at the end,
    /// which saves a futex wake (≈ 21 µs here) per message when the consumer is idle.
    pub fn notify(&self) {
        if self.unrung.swap(false, Ordering::Acquire) {
            self.mem.data_bell().ring();
        }
    }

    /// Sends a message if it fits now without waiting; `false` if the ring lacks room.
    /// Messages larger than [`Self::max_fragment`] always return `false`: use [`Self::send`]
    /// or [`Self::offer`]. Does not wake the consumer: call [`Self::notify`].
    pub fn try_send(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<bool> {
        if payload.len() > self.max_fragment() {
            check_tag(h.tag)?;
            return Ok(false);
        }
        self.offer(h, payload, &mut 0)
    }

    /// Writes as much of a message as fits now, without waiting: whole fragments, starting
    /// at byte `*sent` of `payload`, advancing `*sent`. `true` once the message is complete.
    /// Does not wake the consumer: call [`Self::notify`].
    /// A caller that gives up on a message with `0 < *sent` must call [`Self::abandon`].
    pub fn offer(&mut self, h: &FrameHeader, payload: &[u8], sent: &mut usize) -> Result<bool> {
        check_tag(h.tag)?;
        if self.broken {
            if !self.has_room(FRAME_HEADER as u64)? {
                return Ok(false);
            }
            self.put(h, TAG_ABORT, &[]);
            self.broken = false;
        }
        let max = self.max_fragment();
        if *sent == 0 {
            self.rewind_if_empty(FRAME_HEADER as u64 + padded(payload.len().min(max)))?;
        }
        loop {
            let rest = &payload[*sent..];
            let piece = &rest[..rest.len().min(max)];
            let last = piece.len() == rest.len();
            if !self.has_room(FRAME_HEADER as u64 + padded(piece.len()))? {
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

    /// Asks the consumer to ring the room bell whenever it frees room (or stops asking).
    pub fn want_room(&self, on: bool) {
        Probe::want_room_on(&self.mem, on);
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
            if let Err(e) = self
                .probe()
                .wait_room_after(self.head, need, deadline, poll)
            {
                if sent > 0 {
                    self.abandon();
                }
                return Err(e);
            }
        }
        self.notify();
        Ok(())
    }

    /// Takes the shared indices as they are now: another producer (of a ring shared under
    /// a lock, see `channel`) may have published since this end last wrote. `broken`:
    /// the last message was left half-sent, so the consumer must first be told to drop it.
    pub fn resync(&mut self, broken: bool) -> Result<()> {
        // Acquire: pairs with the Release store of the producer that published last.
        let head = self.mem.header().head.load(Ordering::Acquire);
        // The tail only moves forward, so the one we saw last still bounds the room from
        // below, unless the head has moved more than a ring past it: only then is it read
        // again (a read per message is a cache miss per message, the consumer writes it).
        if head.wrapping_sub(self.tail_seen) > self.mem.cap {
            self.tail_seen = self.mem.indices()?.1;
        }
        self.head = head;
        self.broken = broken;
        if (self.rewind_after.wrapping_sub(head) as i64) < 0 {
            self.rewind_after = head;
        }
        Ok(())
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
        self.rewind_after = 0;
        self.unrung.store(false, Ordering::Relaxed);
        // The dead consumer may have died asleep on its data bell.
        self.mem.data_bell().forget_sleepers();
    }
}
