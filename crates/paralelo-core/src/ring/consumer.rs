//! The reading end of a ring. Payloads are copied out of shared memory as they are read:
//! the caller never holds a reference into bytes another process may overwrite.
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::primitive::{fence, Ordering};
use crate::sync::Poll;
use crate::{Corruption, Error, Result, Segment};

use super::frame::{
    check_frame, padded, FrameHeader, FRAG_MORE, FRAME_HEADER, MAX_MESSAGE, TAG_ABORT, TAG_SKIP,
};
use super::mem::{RingMem, RingPlace};
use super::probe::Probe;

/// The most a consumer keeps allocated between fragmented messages.
const KEEP_PARTIAL: usize = 1 << 20;

/// The reading end.
pub struct Consumer {
    mem: RingMem,
    /// Our copy of `tail` (we are its only writer).
    tail: u64,
    /// Fragments of a message not yet complete.
    partial: Vec<u8>,
    in_partial: bool,
    /// The message being reassembled is dropped when complete: its first fragments went
    /// to another consumer (of a ring shared under a lock, see `channel`) that left.
    discard: bool,
    /// Messages dropped half-received (aborted by their producer, or the rest of one
    /// another consumer took the start of) since [`Self::take_dropped`].
    dropped: u32,
    /// The producer broke the protocol: nothing more is read until [`Self::reset`].
    poisoned: Option<Corruption>,
}

impl Consumer {
    /// The consumer end of the ring at `place` in `seg`; `init` on the side that created it.
    pub fn new(seg: Arc<Segment>, place: RingPlace, init: bool) -> Result<Self> {
        let mem = RingMem::new(seg, place, init)?;
        let (_, tail) = mem.indices()?;
        Ok(Consumer {
            mem,
            tail,
            partial: Vec::new(),
            in_partial: false,
            discard: false,
            dropped: 0,
            poisoned: None,
        })
    }

    /// A lock-free view of this ring, to wait for data without holding this end.
    pub fn probe(&self) -> Probe {
        Probe::new(self.mem.clone())
    }

    /// Whether published bytes are waiting (maybe only a fragment of a message).
    pub fn has_data(&self) -> bool {
        // Acquire: pairs with the producer's Release store of `head`.
        self.mem.header().head.load(Ordering::Acquire) != self.tail
    }

    /// Bytes released so far (this end's own copy of `tail`).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Whether the consumer holds the first fragments of a message still arriving.
    pub fn in_partial(&self) -> bool {
        self.in_partial
    }

    /// Takes the shared `tail` as it is now: another consumer (of a ring shared under a
    /// lock, see `channel`) may have read since this end last did. `mid_message`: that
    /// consumer left half-way through a message, whose remaining fragments are skipped.
    pub fn resync(&mut self, mid_message: bool) -> Result<()> {
        let (_, tail) = self.mem.indices()?;
        self.tail = tail;
        self.drop_partial();
        self.in_partial = mid_message;
        self.discard = mid_message;
        Ok(())
    }

    /// Drops the message being reassembled (its producer gave up on it).
    pub fn drop_message(&mut self) {
        self.lose_partial();
    }

    /// How many messages were dropped half-received since the last call.
    pub fn take_dropped(&mut self) -> u32 {
        std::mem::take(&mut self.dropped)
    }

    /// Drops the message being reassembled, counting it as lost.
    fn lose_partial(&mut self) {
        if self.in_partial || self.discard {
            self.dropped += 1;
        }
        self.drop_partial();
    }

    /// Whether this ring was found corrupt (and is read no more until reset).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Copies every complete message now in the ring (at most `max`) to the end of `out`,
    /// calling `f(header, range of out)` for each, and returns how many. A frame that the
    /// producer could not have written under the protocol is [`Error::Corrupt`]: messages
    /// before it are delivered and released, nothing at or past it is read, and every
    /// later drain fails the same way until [`Self::reset`].
    pub fn drain(
        &mut self,
        max: usize,
        out: &mut Vec<u8>,
        f: impl FnMut(FrameHeader, Range<usize>),
    ) -> Result<usize> {
        let out = self.drain_held(max, out, f, false);
        self.release(); // (nothing to publish if poisoned before: the tail did not move)
        out
    }

    /// As [`Self::drain`], but the bytes read stay unreleased (the producer cannot reuse
    /// them) until [`Self::release`]: a caller records what it read first (see `channel`).
    /// `whole_only`: stops before the first fragment of a message of several, so the
    /// drain never leaves a message half-read (a caller that must not wait for the rest).
    pub fn drain_held(
        &mut self,
        max: usize,
        out: &mut Vec<u8>,
        mut f: impl FnMut(FrameHeader, Range<usize>),
        whole_only: bool,
    ) -> Result<usize> {
        if let Some(c) = &self.poisoned {
            return Err(Error::Corrupt(c.clone()));
        }
        let mut delivered = 0;
        let outcome = self.drain_checked(max, out, &mut f, &mut delivered, whole_only);
        match outcome {
            Ok(()) => Ok(delivered),
            Err(c) => {
                self.poisoned = Some(c.clone());
                Err(Error::Corrupt(c))
            }
        }
    }

    fn drain_checked(
        &mut self,
        max: usize,
        out: &mut Vec<u8>,
        f: &mut impl FnMut(FrameHeader, Range<usize>),
        delivered: &mut usize,
        whole_only: bool,
    ) -> Result<(), Corruption> {
        let cap = self.mem.cap;
        // Acquire: pairs with the producer's Release store of `head`.
        let head = self.mem.header().head.load(Ordering::Acquire);
        if head.wrapping_sub(self.tail) > cap {
            return Err(Corruption::Indices {
                head,
                tail: self.tail,
                capacity: cap,
            });
        }
        let max_fragment = cap as usize / 4 - FRAME_HEADER;
        while self.tail != head && *delivered < max {
            let published = head.wrapping_sub(self.tail); // <= cap, checked above
            if published < FRAME_HEADER as u64 {
                return Err(Corruption::FrameOverrun { len: 0, published });
            }
            let mut raw = [0u8; FRAME_HEADER];
            self.mem.copy_out(self.tail, &mut raw);
            let (len, fh) = FrameHeader::decode(&raw);
            if fh.tag == TAG_SKIP {
                // Nothing until the end of the data area: it must end exactly there.
                let to_end = cap - self.tail % cap;
                if len as u64 + FRAME_HEADER as u64 != to_end || published < to_end {
                    return Err(Corruption::SkipMisplaced {
                        len: len as u64,
                        to_end,
                    });
                }
                self.tail = self.tail.wrapping_add(to_end);
                continue;
            }
            check_frame(len, max_fragment, published)?;
            let body = self.tail.wrapping_add(FRAME_HEADER as u64);
            let len = len as usize;
            if whole_only && fh.tag & FRAG_MORE != 0 && !self.in_partial {
                break;
            }
            if fh.tag == TAG_ABORT {
                self.lose_partial();
            } else if fh.tag & FRAG_MORE != 0 || self.in_partial {
                if self.discard {
                    // The rest of a message another consumer took the start of: skipped.
                } else if self.partial.len() + len > MAX_MESSAGE {
                    return Err(Corruption::MessageTooLong {
                        max: MAX_MESSAGE as u64,
                    });
                } else {
                    room(&mut self.partial, len);
                    self.mem.append_to(body, len, &mut self.partial);
                }
                self.in_partial = fh.tag & FRAG_MORE != 0;
                if !self.in_partial && self.discard {
                    self.lose_partial();
                } else if !self.in_partial {
                    let start = out.len();
                    if start == 0 {
                        // The whole message is the first delivered: hand over the buffer
                        // rather than copy it (and keep none as large as it).
                        std::mem::swap(out, &mut self.partial);
                    } else {
                        out.extend_from_slice(&self.partial);
                    }
                    self.drop_partial();
                    f(fh, start..out.len());
                    *delivered += 1;
                }
            } else {
                let start = out.len();
                self.mem.append_to(body, len, out);
                f(fh, start..out.len());
                *delivered += 1;
            }
            self.tail = body.wrapping_add(padded(len));
        }
        Ok(())
    }

    /// Publishes how far we read, and rings the producer if it waits for room.
    pub fn release(&mut self) {
        let hdr = self.mem.header();
        if hdr.tail.load(Ordering::Relaxed) == self.tail {
            return;
        }
        // Release: pairs with the producer's Acquire load of `tail` before it reuses bytes.
        hdr.tail.store(self.tail, Ordering::Release);
        // Pairs with the fence in `Probe::want_room_on`.
        fence(Ordering::SeqCst);
        if hdr.wants_room.load(Ordering::Relaxed) != 0 {
            self.mem.room_bell().ring();
        }
    }

    /// Waits until data is published (see [`crate::Doorbell::wait_until`]).
    pub fn wait(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.mem
            .data_bell()
            .wait_until(|| self.has_data(), deadline, poll)
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
        self.drop_partial();
        self.poisoned = None;
    }

    /// Forgets the message being reassembled, keeping at most KEEP_PARTIAL allocated: one
    /// huge message must not pin its size.
    fn drop_partial(&mut self) {
        self.partial.clear();
        self.in_partial = false;
        self.discard = false;
        if self.partial.capacity() > KEEP_PARTIAL {
            self.partial = Vec::new();
        }
    }
}

/// Makes room for `more` bytes in a message being put together. Past 1 MiB it grows to at
/// least 64 MiB at once: so large an allocation is mapped afresh by malloc and unmapped
/// when freed, where the doublings in between would be left in the collector thread's
/// malloc arena, resident even after `malloc_trim`, in a program that once freed a large
/// array (glibc then raises its mmap threshold up to 32 MiB). Pages never written cost
/// nothing.
fn room(buf: &mut Vec<u8>, more: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() && need > 1 << 20 {
        buf.reserve_exact(need.next_power_of_two().max(64 << 20) - buf.len());
    }
}
