#![allow(unsafe_code)]
//! Fastboxes: one message slot per (sender, receiver) pair of a job, in memory every rank
//! maps, for small messages. A channel message costs a lock, the ring's two indices and
//! its bytes, each a cache line that crosses between the cores; a fastbox message is the
//! slot's two lines, written by one side and then read by the other (the way MPICH's
//! shared-memory transport passes its small messages). A slot holds one message: a sender
//! that finds it full sends through the receiver's inbox channel instead.
//!
//! Order per sender. A sender puts a message in its slot only when the receiver has taken
//! every message it sent through the channel (`consumed`, which the receiver counts in
//! the slot, equals what the sender counts it sent). So a message in the slot is older
//! than every channel message of the same sender that is still to be taken, and the
//! receiver, before a channel message of a sender, takes that sender's slot first.
//!
//! A slot's state goes EMPTY → CLAIMED (a sender's compare-and-swap: one sender thread at
//! a time) → FULL (its bytes written, Release) → READING (a receiver's compare-and-swap:
//! one reader at a time) → EMPTY (it read them, Release).
//! A sender that dies between CLAIMED and FULL leaves the slot claimed: the job is over
//! then (the launcher ends it), so nothing waits on it.
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{Error, Result, Segment};

const EMPTY: u32 = 0;
const CLAIMED: u32 = 1;
const FULL: u32 = 2;
const READING: u32 = 3;
/// Bytes of a slot: two cache lines, which the hardware moves together.
const SLOT: usize = 128;
/// Bytes of message a slot holds (what is left of it after its words).
pub const CAPACITY: usize = SLOT - 16;
/// Jobs of more ranks have no fastboxes (their n² slots would not pay for themselves).
pub const MOST_RANKS: usize = 256;

#[repr(C, align(128))]
struct Slot {
    state: AtomicU32,
    /// Bytes of `data` in use; the sender's, written before it publishes FULL.
    len: AtomicU32,
    /// How many channel messages of this slot's sender the receiver took.
    consumed: AtomicU64,
    data: UnsafeCell<[u8; CAPACITY]>,
}

const _: () = assert!(std::mem::size_of::<Slot>() == SLOT);

/// The slots of a job of `ranks` ranks (slot `to * ranks + from`: a receiver's are
/// together, for its look at all of them).
pub struct Fastboxes {
    seg: Segment,
    base: NonNull<Slot>,
    ranks: usize,
}

// SAFETY: every field of a slot but `data` is atomic; `data` is written only by the
// sender that claimed the slot and read only by its receiver after the sender published
// it (Release/Acquire on `state`), so no two threads of any process touch it at once.
unsafe impl Send for Fastboxes {}
// SAFETY: as for Send.
unsafe impl Sync for Fastboxes {}

impl Fastboxes {
    /// Zeroed slots (all empty) for a job of `ranks` ranks; made before the ranks are
    /// forked, so that all of them map it.
    pub fn create(ranks: usize) -> Result<Self> {
        if ranks == 0 || ranks > MOST_RANKS {
            return Err(Error::Invalid(format!(
                "fastboxes are for jobs of 1 to {MOST_RANKS} ranks, not {ranks}"
            )));
        }
        let seg = Segment::create("paralelo-fastboxes", ranks * ranks * SLOT)?;
        let base = NonNull::new(seg.at::<Slot>(0)?).expect("mapping is non-null");
        Ok(Fastboxes { seg, base, ranks })
    }

    fn slot(&self, from: usize, to: usize) -> &Slot {
        assert!(
            from < self.ranks && to < self.ranks,
            "fastbox {from}->{to} of {}",
            self.ranks
        );
        let i = to * self.ranks + from;
        debug_assert!((i + 1) * SLOT <= self.seg.len());
        // SAFETY: in bounds (i < ranks², the segment holds ranks² slots), aligned (the
        // mapping is page-aligned, slots are SLOT bytes); alive as long as `seg`. Shared
        // references only: `data` is reached through its UnsafeCell.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// Puts `parts` (concatenated, at most `CAPACITY` bytes) in the slot `from` → `to`, if
    /// it is empty and the receiver took all `sent` channel messages `from` sent it; false
    /// (nothing written) otherwise.
    pub fn try_put(&self, from: usize, to: usize, parts: &[&[u8]], sent: u64) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > CAPACITY {
            return false;
        }
        let slot = self.slot(from, to);
        // Acquire: what the receiver read of the slot's last message is behind us.
        if slot
            .state
            .compare_exchange(EMPTY, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Acquire: pairs with the receiver's Release count after it took a message.
        if slot.consumed.load(Ordering::Acquire) != sent {
            slot.state.store(EMPTY, Ordering::Release);
            return false;
        }
        let mut at = slot.data.get().cast::<u8>();
        for part in parts {
            // SAFETY: the slot is ours (CLAIMED by our compare-and-swap, and its receiver
            // reads it only once FULL); the parts fit, `len <= CAPACITY` checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
        }
        slot.len.store(len as u32, Ordering::Relaxed);
        // Release: the bytes and length before the state.
        slot.state.store(FULL, Ordering::Release);
        true
    }

    /// Whether any slot to `to` holds a message.
    pub fn any_full(&self, to: usize) -> bool {
        (0..self.ranks).any(|from| self.is_full(from, to))
    }

    /// Whether slot `from` → `to` holds a message.
    pub fn is_full(&self, from: usize, to: usize) -> bool {
        self.slot(from, to).state.load(Ordering::Relaxed) == FULL
    }

    /// Takes the message in slot `from` → `to` into `out` (appended), if there is one.
    pub fn take(&self, from: usize, to: usize, out: &mut Vec<u8>) -> bool {
        let slot = self.slot(from, to);
        // Acquire: pairs with the sender's Release of FULL (its bytes are visible). One
        // reader wins; a second (a second mailbox of the rank) finds it taken.
        if slot
            .state
            .compare_exchange(FULL, READING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // (A length past the slot can only be another process's scribble: clamped.)
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(CAPACITY);
        // SAFETY: READING (ours, from FULL): the sender is done writing, no one writes
        // until we store EMPTY, and no other reader got it; `len <= CAPACITY`.
        let data = unsafe { std::slice::from_raw_parts(slot.data.get().cast::<u8>(), len) };
        out.extend_from_slice(data);
        // Release: our read of the bytes before the sender's next claim.
        slot.state.store(EMPTY, Ordering::Release);
        true
    }

    /// Counts one more channel message from `from` taken by `to` (only `to` calls it).
    pub fn consumed(&self, from: usize, to: usize) {
        let c = &self.slot(from, to).consumed;
        // Release: the message was taken out of the channel before the sender sees it.
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_one_message_at_a_time() {
        let boxes = Fastboxes::create(2).unwrap();
        assert!(!boxes.any_full(1));
        assert!(boxes.try_put(0, 1, &[b"ab", b"cd"], 0));
        assert!(boxes.any_full(1));
        assert!(!boxes.any_full(0));
        assert!(!boxes.try_put(0, 1, &[b"x"], 0), "full");
        let mut out = Vec::new();
        assert!(boxes.take(0, 1, &mut out));
        assert_eq!(out, b"abcd");
        assert!(!boxes.take(0, 1, &mut out));
        assert!(boxes.try_put(0, 1, &[b"x"], 0));
    }

    #[test]
    fn a_sender_with_channel_messages_in_flight_is_refused() {
        let boxes = Fastboxes::create(2).unwrap();
        assert!(
            !boxes.try_put(1, 0, &[b"x"], 1),
            "one channel message not taken yet"
        );
        boxes.consumed(1, 0);
        assert!(boxes.try_put(1, 0, &[b"x"], 1));
    }

    #[test]
    fn too_big_or_too_many_is_refused() {
        let boxes = Fastboxes::create(1).unwrap();
        assert!(!boxes.try_put(0, 0, &[&[0; CAPACITY + 1]], 0));
        assert!(boxes.try_put(0, 0, &[&[7; CAPACITY]], 0));
        assert!(Fastboxes::create(0).is_err());
        assert!(Fastboxes::create(MOST_RANKS + 1).is_err());
    }

    #[test]
    fn messages_pass_between_threads_whole_and_in_order() {
        let boxes = std::sync::Arc::new(Fastboxes::create(2).unwrap());
        let sender = std::thread::spawn({
            let boxes = boxes.clone();
            move || {
                for i in 0..20_000u64 {
                    let bytes = i.to_le_bytes();
                    while !boxes.try_put(0, 1, &[&bytes, &bytes], 0) {
                        std::hint::spin_loop();
                    }
                }
            }
        });
        let mut out = Vec::new();
        for i in 0..20_000u64 {
            out.clear();
            while !boxes.take(0, 1, &mut out) {
                std::hint::spin_loop();
            }
            assert_eq!(out.len(), 16);
            assert_eq!(&out[..8], i.to_le_bytes());
            assert_eq!(&out[8..], i.to_le_bytes());
        }
        sender.join().unwrap();
    }
}
