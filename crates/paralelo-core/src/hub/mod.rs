#![allow(unsafe_code)]
//! A hub: one shared segment holding, for each worker slot, a task ring (parent → worker)
//! and a result ring (worker → parent). All result rings announce data on one shared
//! doorbell, so a single parent thread waits for results from every worker at once.
//!
//! Layout (offsets from the segment start, every block 128-byte aligned):
//! `HubHeader | per slot: SlotHeader, task RingHeader, task data, result RingHeader, result data`.
//!
//! Sending from the parent never blocks: what does not fit in a task ring waits in that
//! slot's outbox (in the parent's memory) and is flushed by the thread that waits for
//! results, which the worker wakes through the same shared doorbell when it frees room.
//! So a parent thread never sleeps on a full task ring while a worker sleeps on a full
//! result ring. Both ends are safe to share between threads: each ring end sits behind its
//! own mutex, uncontended in the intended use.
use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::ring::{Consumer, FrameHeader, Producer, RingHeader, RingPlace};
use crate::sync::{Doorbell, Poll};
use crate::{Error, Result, Segment};

const HUB_MAGIC: u64 = 0x6275_686f_6c61_7061; // "apalohub"
const HUB_VERSION: u64 = 1;
const ALIGN: usize = 128;

#[repr(C)]
struct HubHeader {
    magic: u64,
    version: u64,
    slots: u64,
    capacity: u64,
    results_bell: CachePadded<Doorbell>,
}

/// What a worker is executing, readable by the parent even after the worker died.
#[repr(C)]
struct SlotHeader {
    /// `job`/`seq` of the message being executed; 0/0 when idle.
    job: AtomicU64,
    seq: AtomicU64,
}

/// Where everything sits in a hub segment.
#[derive(Clone, Copy, Debug)]
pub struct HubLayout {
    pub slots: usize,
    pub capacity: usize,
}

impl HubLayout {
    const RING_HEADER: usize = std::mem::size_of::<RingHeader>().next_multiple_of(ALIGN);
    // The task ring's data doorbell sits in the padding after its header.
    const BELL: usize = std::mem::size_of::<RingHeader>();

    fn header_bytes() -> usize {
        std::mem::size_of::<HubHeader>().next_multiple_of(ALIGN)
    }
    fn slot_bytes(&self) -> usize {
        ALIGN + 2 * (Self::RING_HEADER + ALIGN + self.capacity)
    }
    pub fn total_bytes(&self) -> usize {
        Self::header_bytes() + self.slots * self.slot_bytes()
    }
    fn slot_offset(&self, slot: usize) -> usize {
        Self::header_bytes() + slot * self.slot_bytes()
    }
    fn tasks(&self, slot: usize) -> RingPlace {
        let header = self.slot_offset(slot) + ALIGN;
        let data = header + Self::RING_HEADER + ALIGN;
        let room_bell = Some(std::mem::offset_of!(HubHeader, results_bell));
        RingPlace { header, data, capacity: self.capacity, data_bell: header + Self::BELL, room_bell }
    }
    fn results(&self, slot: usize) -> RingPlace {
        let header = self.tasks(slot).data + self.capacity;
        let data = header + Self::RING_HEADER + ALIGN;
        let data_bell = std::mem::offset_of!(HubHeader, results_bell);
        RingPlace { header, data, capacity: self.capacity, data_bell, room_bell: None }
    }
}

const _: () = assert!(
    HubLayout::BELL + std::mem::size_of::<Doorbell>() <= HubLayout::RING_HEADER + ALIGN
);

/// Shared-memory words of one hub segment that are not rings: its header and slot headers.
struct Words {
    seg: Arc<Segment>,
    header: NonNull<HubHeader>,
    slots: Vec<NonNull<SlotHeader>>,
}

// SAFETY: the pointers point into `seg`, kept alive by the Arc; every field written after
// initialisation is an atomic.
unsafe impl Send for Words {}
// SAFETY: as above.
unsafe impl Sync for Words {}

impl Words {
    fn new(seg: Arc<Segment>, layout: &HubLayout) -> Result<Self> {
        let header = NonNull::new(seg.at::<HubHeader>(0)?).expect("mapping is non-null");
        let slots = (0..layout.slots)
            .map(|i| Ok(NonNull::new(seg.at::<SlotHeader>(layout.slot_offset(i))?).expect("non-null")))
            .collect::<Result<_>>()?;
        Ok(Words { seg, header, slots })
    }
    fn header(&self) -> &HubHeader {
        // SAFETY: in bounds and aligned (checked by `Segment::at`); the plain words are
        // written once by the creator before the fd is shared, the rest are atomics.
        unsafe { self.header.as_ref() }
    }
    fn slot(&self, slot: usize) -> &SlotHeader {
        // SAFETY: as for `header`; a slot header holds only atomics.
        unsafe { self.slots[slot].as_ref() }
    }
}

fn check_slot(slots: usize, slot: usize) -> Result<()> {
    if slot >= slots {
        return Err(Error::Invalid(format!("slot {slot} out of range (the hub has {slots})")));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a ring end leaves nothing half-written that a retry would
    // misread (indices are published last), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A message (or the rest of one) waiting for room in a task ring.
struct Pending {
    header: FrameHeader,
    payload: Vec<u8>,
    sent: usize,
}

/// One slot's sending side: its task ring and what did not fit yet.
struct Outbox {
    ring: Producer,
    queue: VecDeque<Pending>,
}

impl Outbox {
    /// Moves queued messages into the ring while they fit; returns the room the next one
    /// needs (0 when the queue is empty).
    fn flush(&mut self) -> Result<u64> {
        while let Some(p) = self.queue.front_mut() {
            if !self.ring.offer(&p.header, &p.payload, &mut p.sent)? {
                return Ok(self.ring.room_needed(&p.payload, p.sent));
            }
            self.queue.pop_front();
        }
        self.ring.want_room(false);
        Ok(0)
    }
}

/// The parent's side: sends tasks to any slot, receives results from all.
pub struct Hub {
    words: Words,
    layout: HubLayout,
    tasks: Vec<Mutex<Outbox>>,
    /// Per slot: bytes of room the outbox waits for (0: nothing waiting). Lets the waiter
    /// check for room without taking the outbox locks.
    need: Vec<AtomicU64>,
    results: Mutex<Vec<Consumer>>,
    /// Set by [`Hub::wake`]: ends the current (or next) wait for results.
    woken: AtomicBool,
}

impl Hub {
    /// Creates a hub of `slots` worker slots whose rings hold `capacity` bytes each.
    pub fn create(slots: usize, capacity: usize) -> Result<Self> {
        if slots == 0 {
            return Err(Error::Invalid("a hub needs at least one slot".into()));
        }
        let layout = HubLayout { slots, capacity };
        let seg = Arc::new(Segment::create("paralelo-hub", layout.total_bytes())?);
        let p = seg.at::<HubHeader>(0)?;
        // SAFETY: the segment is fresh and not yet shared; we are its only user.
        unsafe {
            (*p).magic = HUB_MAGIC;
            (*p).version = HUB_VERSION;
            (*p).slots = slots as u64;
            (*p).capacity = capacity as u64;
        }
        let mut tasks = Vec::with_capacity(slots);
        let mut results = Vec::with_capacity(slots);
        for i in 0..slots {
            let ring = Producer::new(seg.clone(), layout.tasks(i), true)?;
            tasks.push(Mutex::new(Outbox { ring, queue: VecDeque::new() }));
            results.push(Consumer::new(seg.clone(), layout.results(i), true)?);
        }
        let need = (0..slots).map(|_| AtomicU64::new(0)).collect();
        Ok(Hub {
            words: Words::new(seg, &layout)?,
            layout,
            tasks,
            need,
            results: Mutex::new(results),
            woken: AtomicBool::new(false),
        })
    }

    /// The segment's fd, to hand to workers.
    pub fn raw_fd(&self) -> RawFd {
        self.words.seg.raw_fd()
    }

    pub fn layout(&self) -> HubLayout {
        self.layout
    }

    /// Sends one message to `slot`'s worker without ever waiting: what does not fit now
    /// is copied to the slot's outbox and flushed by [`Self::flush`] as room appears.
    /// With `notify`, the worker is woken if it sleeps; without, call [`Self::notify`]
    /// after posting a batch.
    pub fn post(&self, slot: usize, h: &FrameHeader, payload: &[u8], notify: bool) -> Result<()> {
        check_slot(self.layout.slots, slot)?;
        if h.tag > crate::MAX_TAG {
            return Err(Error::Invalid(format!("message tag {} is reserved", h.tag)));
        }
        let mut out = lock(&self.tasks[slot]);
        let mut sent = 0;
        let mut queued = false;
        if !(out.queue.is_empty() && out.ring.offer(h, payload, &mut sent)?) {
            out.queue.push_back(Pending { header: *h, payload: payload.to_vec(), sent });
            out.ring.want_room(true);
            let need = out.flush()?;
            self.need[slot].store(need, Ordering::Release);
            queued = need != 0;
        }
        if notify {
            out.ring.notify();
        }
        drop(out);
        if queued {
            // The worker may have freed room (and rung) while we held the outbox: the
            // waiter then saw it busy. Ring once more so it re-checks now, not a slice later.
            self.words.header().results_bell.ring();
        }
        Ok(())
    }

    /// Wakes every worker that was posted to without being woken.
    pub fn notify(&self) {
        for out in &self.tasks {
            lock(out).ring.notify();
        }
    }

    /// Moves outboxed messages into task rings that have room again.
    pub fn flush(&self) -> Result<()> {
        for (slot, need) in self.need.iter().enumerate() {
            if need.load(Ordering::Acquire) != 0 {
                let mut out = lock(&self.tasks[slot]);
                need.store(out.flush()?, Ordering::Release);
                out.ring.notify();
            }
        }
        Ok(())
    }

    /// Bytes waiting in outboxes, per slot (queued messages, not counting the rings).
    pub fn backlog(&self, slot: usize) -> Result<usize> {
        check_slot(self.layout.slots, slot)?;
        Ok(lock(&self.tasks[slot]).queue.iter().map(|p| p.payload.len() - p.sent).sum())
    }

    /// What the worker in `slot` is executing: `(job, seq)`, `(0, 0)` when idle.
    pub fn current(&self, slot: usize) -> Result<(u64, u64)> {
        check_slot(self.layout.slots, slot)?;
        let h = self.words.slot(slot);
        // Acquire: pairs with the Release stores in `Port::set_current`.
        Ok((h.job.load(Ordering::Acquire), h.seq.load(Ordering::Acquire)))
    }

    /// Waits until any result ring has data or an outbox can move on (then call
    /// [`Self::flush`]). Only one thread should receive at a time.
    pub fn wait_results(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        let results = lock(&self.results);
        let room = |slot: usize| {
            let need = self.need[slot].load(Ordering::Acquire);
            // A busy lock means a sender is flushing right now: not our turn.
            need != 0 && self.tasks[slot].try_lock().is_ok_and(|o| o.ring.has_room_for(need))
        };
        let ready = || {
            self.woken.load(Ordering::Acquire)
                || results.iter().any(Consumer::has_data)
                || (0..self.need.len()).any(room)
        };
        let out = self.words.header().results_bell.wait_until(ready, deadline, poll);
        self.woken.store(false, Ordering::Release);
        out
    }

    /// Ends the current wait for results (or the next one, if none is under way), so the
    /// receiving thread looks at the parent's own state again.
    pub fn wake(&self) {
        // Release: pairs with the Acquire load in `wait_results`' readiness check.
        self.woken.store(true, Ordering::Release);
        self.words.header().results_bell.ring();
    }

    /// Hands every complete result message now waiting to `f(slot, header, part1, part2)`.
    /// A corrupt result ring is reported with its slot: [`Error::CorruptSlot`].
    pub fn drain_results(
        &self,
        mut f: impl FnMut(usize, &FrameHeader, &[u8], &[u8]),
    ) -> Result<usize> {
        let mut results = lock(&self.results);
        let mut n = 0;
        for (slot, c) in results.iter_mut().enumerate() {
            n += c
                .drain(usize::MAX, |h, a, b| f(slot, h, a, b))
                .map_err(|e| Error::CorruptSlot { slot, detail: e.to_string() })?;
        }
        Ok(n)
    }

    /// Empties both rings of `slot` for a new worker. Only sound once the old worker is
    /// gone (dead, or said it writes no more); results it left are to be drained first.
    pub fn reset_slot(&self, slot: usize) -> Result<()> {
        check_slot(self.layout.slots, slot)?;
        {
            let mut out = lock(&self.tasks[slot]);
            out.queue.clear();
            out.ring.reset();
            out.ring.want_room(false);
            self.need[slot].store(0, Ordering::Release);
        }
        lock(&self.results)[slot].reset();
        let h = self.words.slot(slot);
        h.job.store(0, Ordering::Release);
        h.seq.store(0, Ordering::Release);
        Ok(())
    }
}

/// The worker's side of one slot: receives tasks, sends results.
pub struct Port {
    words: Words,
    slot: usize,
    tasks: Mutex<Consumer>,
    results: Mutex<Producer>,
}

impl Port {
    /// Attaches to slot `slot` of the hub whose segment is `fd`.
    pub fn open(fd: BorrowedFd<'_>, slot: usize) -> Result<Self> {
        let seg = Arc::new(Segment::open(fd)?);
        let p = seg.at::<HubHeader>(0)?;
        // SAFETY: in bounds and aligned; these words were written before the fd was shared.
        let (magic, version, slots, capacity) =
            unsafe { ((*p).magic, (*p).version, (*p).slots, (*p).capacity) };
        if magic != HUB_MAGIC || version != HUB_VERSION {
            return Err(Error::BadLayout { what: "hub" });
        }
        let layout = HubLayout { slots: slots as usize, capacity: capacity as usize };
        if layout.total_bytes() > seg.len() {
            return Err(Error::BadLayout { what: "hub (segment shorter than its layout)" });
        }
        check_slot(layout.slots, slot)?;
        Ok(Port {
            tasks: Mutex::new(Consumer::new(seg.clone(), layout.tasks(slot), false)?),
            results: Mutex::new(Producer::new(seg.clone(), layout.results(slot), false)?),
            words: Words::new(seg, &layout)?,
            slot,
        })
    }

    /// Waits until a task message is published.
    pub fn wait_tasks(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        lock(&self.tasks).wait(deadline, poll)
    }

    /// Hands up to `max` complete task messages now waiting to `f(header, part1, part2)`.
    pub fn drain_tasks(
        &self,
        max: usize,
        f: impl FnMut(&FrameHeader, &[u8], &[u8]),
    ) -> Result<usize> {
        lock(&self.tasks).drain(max, f)
    }

    /// Sends one result message if it fits now; `false` if not. Without `notify` the
    /// parent is not woken yet: call [`Self::notify`] after a batch.
    pub fn try_send(&self, h: &FrameHeader, payload: &[u8], notify: bool) -> Result<bool> {
        let mut ring = lock(&self.results);
        if payload.len() > ring.max_fragment() {
            return Ok(false);
        }
        let done = ring.offer(h, payload, &mut 0)?;
        if notify {
            ring.notify();
        }
        Ok(done)
    }

    /// Wakes the parent if results were sent without waking it.
    pub fn notify(&self) {
        lock(&self.results).notify();
    }

    /// Sends one result message, waiting for room as needed.
    pub fn send(
        &self,
        h: &FrameHeader,
        payload: &[u8],
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        lock(&self.results).send(h, payload, deadline, poll)
    }

    /// Records what this worker executes now, so that if it dies the parent knows which
    /// message killed it. `(0, 0)` means idle.
    pub fn set_current(&self, job: u64, seq: u64) {
        let h = self.words.slot(self.slot);
        // Release: pairs with the Acquire loads in `Hub::current`.
        h.job.store(job, Ordering::Release);
        h.seq.store(seq, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
