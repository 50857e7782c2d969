//! A lock-free view of a ring's two indices. Waiting through a probe holds no ring end,
//! so a thread may sleep for data or room while other threads keep using the ring's ends
//! (and the hub waits on many rings at once without locking any of them).
use std::time::Instant;

use crate::primitive::{fence, Ordering};
use crate::sync::Poll;
use crate::Result;

use super::mem::RingMem;

/// Reads a ring's published indices; never reads or writes its bytes.
#[derive(Clone)]
pub struct Probe {
    mem: RingMem,
}

impl Probe {
    pub(crate) fn new(mem: RingMem) -> Self {
        Probe { mem }
    }

    /// Whether published bytes are waiting (maybe only a fragment of a message). Corrupt
    /// indices count as data: the reader then drains, and the drain reports them.
    pub fn has_data(&self) -> bool {
        self.mem.indices().map_or(true, |(head, tail)| head != tail)
    }

    /// Whether `need` bytes are free. Corrupt indices count as room, for the same reason.
    pub fn has_room(&self, need: u64) -> bool {
        let h = self.mem.header();
        // Acquire: as in `RingMem::indices`.
        let (head, tail) = (
            h.head.load(Ordering::Acquire),
            h.tail.load(Ordering::Acquire),
        );
        self.mem.free(head, tail).map_or(true, |free| free >= need)
    }

    /// Whether data is published past `tail`, the consumer's own copy of its index (so
    /// a producer that scribbles over the shared `tail` cannot fake data). Corrupt indices
    /// count as data.
    pub fn has_data_after(&self, tail: u64) -> bool {
        // Acquire: pairs with the producer's Release store of `head`.
        let head = self.mem.header().head.load(Ordering::Acquire);
        head != tail
    }

    /// Whether `need` bytes are free after `head`, the producer's own copy of its index (so
    /// a consumer that scribbles over the shared `head` cannot fake room). Corrupt indices
    /// count as room: the producer's next write finds them.
    pub fn has_room_after(&self, head: u64, need: u64) -> bool {
        // Acquire: pairs with the consumer's Release store of `tail`.
        let tail = self.mem.header().tail.load(Ordering::Acquire);
        self.mem.free(head, tail).map_or(true, |free| free >= need)
    }

    /// Waiters registered on the ring's data bell.
    pub fn data_bell_sleepers(&self) -> u32 {
        self.mem.data_bell().sleepers()
    }

    /// Waits until data is published (see [`crate::Doorbell::wait_until`]).
    pub fn wait_data(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.wait_data_or(|| false, deadline, poll)
    }

    /// Waits until data is published or `also()` holds: for a receiver that also takes
    /// messages from elsewhere, whose senders ring this ring's data bell.
    pub fn wait_data_or(
        &self,
        also: impl Fn() -> bool,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        self.mem
            .data_bell()
            .wait_until(|| self.has_data() || also(), deadline, poll)
    }

    /// Waits until `need` bytes are free after `head` (the producer's own copy), asking the
    /// consumer to ring while we wait. Corrupt indices end the wait: the producer's next
    /// write reports them.
    pub fn wait_room_after(
        &self,
        head: u64,
        need: u64,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        if self.has_room_after(head, need) {
            return Ok(());
        }
        Self::want_room_on(&self.mem, true);
        let out =
            self.mem
                .room_bell()
                .wait_until(|| self.has_room_after(head, need), deadline, poll);
        Self::want_room_on(&self.mem, false);
        out
    }

    pub(crate) fn want_room_on(mem: &RingMem, on: bool) {
        mem.header().wants_room.store(on as u32, Ordering::SeqCst);
        // Pairs with the fence in `Consumer::drain`: either it sees the flag or we see its
        // new `tail` when we re-check room after this.
        fence(Ordering::SeqCst);
    }
}
