//! A hub: one shared segment holding, for each worker slot, a task ring (parent → worker)
//! and a result ring (worker → parent). All result rings announce data on one shared
//! doorbell, so a single parent thread waits for results from every worker at once; the
//! death watch rings the same doorbell when a worker exits, so that thread learns of
//! deaths without polling. `README.md` beside this file gives the protocol.
//!
//! Sending from the parent never blocks: what does not fit in a task ring waits in that
//! slot's outbox (in the parent's memory) and is flushed by the thread that waits for
//! results, which the worker wakes through the same shared doorbell when it frees room.
//! So a parent thread never sleeps on a full task ring while a worker sleeps on a full
//! result ring.
//!
//! Threads: every method may be called from any thread. No lock is held while a call
//! waits (waits read the rings' indices through lock-free probes), so a caller holding a
//! lock of its own (Python's GIL) never deadlocks against a waiter.
mod layout;
mod outbox;
mod port;
mod state;

use std::ops::Range;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::primitive::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::proc::{self, Watch};
use crate::ring::{check_tag, Consumer, FrameHeader, Probe, Producer};
use crate::sync::Poll;
use crate::{Corruption, Error, Result, Segment};

use layout::Words;
pub use layout::{HubLayout, MAX_SLOTS};
use outbox::Outbox;
pub use port::Port;
pub use state::{SlotState, MAX_ID};

pub(crate) fn check_slot(slots: usize, slot: usize) -> Result<()> {
    if slot >= slots {
        return Err(Error::Invalid(format!(
            "slot {slot} out of range (the hub has {slots})"
        )));
    }
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a ring end leaves nothing half-written that a retry would
    // misread (indices are published last), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something that happened to a slot's worker, reported by [`Hub::drain_results`] after
/// the messages it sent before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotEvent {
    /// The watched process `pid` in `slot` has exited (see [`Hub::watch`]).
    Exited { slot: usize, pid: u32 },
    /// Process `pid`, which left its slot before it exited, has exited (see
    /// [`Hub::watch_left`]): its parent may reap it now.
    Left { pid: u32 },
    /// A ring of `slot` broke the protocol; the slot is read no more until reset. Its
    /// worker (`pid`, the slot's watched process, 0 if none) must be killed and replaced.
    Corrupt {
        slot: usize,
        pid: u32,
        source: Corruption,
    },
}

/// What one drain found: message payloads copied into one buffer, each message with its
/// slot and range in it, then events.
#[derive(Default, Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub messages: Vec<(usize, FrameHeader, Range<usize>)>,
    pub events: Vec<SlotEvent>,
}

impl Received {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.events.is_empty()
    }
}

/// Events raised off the receiving thread (the death watch, a post that found a corrupt
/// ring), waiting for the next drain.
#[derive(Default)]
struct Mailbox {
    events: Mutex<Vec<SlotEvent>>,
    /// Set after pushing: lets a waiter check for events without the lock.
    pending: AtomicBool,
}

impl Mailbox {
    fn push(&self, e: SlotEvent) {
        lock(&self.events).push(e);
        // Release: pairs with the Acquire swap in `take` and load in `wait_results`.
        self.pending.store(true, Ordering::Release);
    }

    /// Drops the events of `slot` still waiting: they were about a worker now replaced.
    fn forget(&self, slot: usize) {
        lock(&self.events).retain(|e| match e {
            SlotEvent::Exited { slot: s, .. } | SlotEvent::Corrupt { slot: s, .. } => *s != slot,
            SlotEvent::Left { .. } => true, // no slot's news: about a process that left one
        });
    }

    fn take(&self) -> Vec<SlotEvent> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        let mut events = std::mem::take(&mut *lock(&self.events));
        // A worker's corruption before its death: the receiver then knows the cause of the
        // death (a stable sort keeps everything else in order).
        events.sort_by_key(|e| matches!(e, SlotEvent::Exited { .. }));
        events
    }
}

/// The parent's side: sends tasks to any slot, receives results from all.
pub struct Hub {
    words: Words,
    layout: HubLayout,
    tasks: Vec<Mutex<Outbox>>,
    task_probes: Vec<Probe>,
    /// Per slot: the task ring's `head` as we published it. Room is judged from our own
    /// copy, never from the one in shared memory, which the worker could overwrite.
    task_heads: Vec<AtomicU64>,
    /// Per slot: bytes of room the outbox waits for (0: nothing waiting). Lets the waiter
    /// check for room without taking the outbox locks.
    need: Vec<AtomicU64>,
    results: Mutex<Vec<Consumer>>,
    result_probes: Vec<Probe>,
    /// Per slot: the result ring's `tail` as we released it (ours, for the same reason).
    result_tails: Vec<AtomicU64>,
    /// Per slot: the watched worker's pid (0: none), named in its corruption events.
    pids: Vec<AtomicU32>,
    /// Per slot: a ring was found corrupt; not read, nor waited on, until reset.
    poisoned: Vec<AtomicBool>,
    mailbox: Arc<Mailbox>,
    watches: Mutex<Vec<Option<Watch>>>,
    /// Watches of processes that left their slots (see [`Self::watch_left`]).
    leavers: Mutex<Vec<Watch>>,
    /// Set by [`Hub::wake`]: ends the current (or next) wait for results.
    woken: AtomicBool,
}

impl Hub {
    /// Creates a hub of `slots` worker slots whose rings hold `capacity` bytes each.
    pub fn create(slots: usize, capacity: usize) -> Result<Self> {
        let layout = HubLayout::new(slots, capacity)?;
        let seg = Arc::new(Segment::create("paralelo-hub", layout.total_bytes())?);
        Words::init(&seg, &layout)?;
        let mut tasks = Vec::with_capacity(slots);
        let mut results = Vec::with_capacity(slots);
        for i in 0..slots {
            tasks.push(Producer::new(seg.clone(), layout.tasks(i), true)?);
            results.push(Consumer::new(seg.clone(), layout.results(i), true)?);
        }
        Ok(Hub {
            words: Words::new(seg, &layout)?,
            layout,
            task_probes: tasks.iter().map(Producer::probe).collect(),
            task_heads: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            result_tails: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            pids: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            tasks: tasks
                .into_iter()
                .map(|r| Mutex::new(Outbox::new(r)))
                .collect(),
            need: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            result_probes: results.iter().map(Consumer::probe).collect(),
            results: Mutex::new(results),
            poisoned: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            mailbox: Arc::default(),
            watches: Mutex::new((0..slots).map(|_| None).collect()),
            leavers: Mutex::new(Vec::new()),
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

    /// Reports the exit of process `pid` (the worker in `slot`, behind `pidfd`) as a
    /// [`SlotEvent::Exited`] through [`Self::drain_results`], waking the receiver. A slot's
    /// earlier watch is cancelled: only its current worker's death is news.
    pub fn watch(&self, slot: usize, pid: u32, pidfd: BorrowedFd<'_>) -> Result<()> {
        check_slot(self.layout.slots, slot)?;
        let mailbox = self.mailbox.clone();
        let words = self.words.clone();
        let w = proc::watch(pidfd, move || {
            mailbox.push(SlotEvent::Exited { slot, pid });
            words.header().results_bell.ring();
        })?;
        if let Some(old) = lock(&self.watches)[slot].replace(w) {
            proc::unwatch(old);
        }
        self.pids[slot].store(pid, Ordering::Release);
        Ok(())
    }

    /// Reports the exit of process `pid` (behind `pidfd`), which has left its slot but not
    /// exited yet, as [`SlotEvent::Left`], waking the receiver: a parent that must reap
    /// it learns when, though the slot watches its successor by then.
    pub fn watch_left(&self, pid: u32, pidfd: BorrowedFd<'_>) -> Result<()> {
        let mailbox = self.mailbox.clone();
        let words = self.words.clone();
        let w = proc::watch(pidfd, move || {
            mailbox.push(SlotEvent::Left { pid });
            words.header().results_bell.ring();
        })?;
        let mut leavers = lock(&self.leavers);
        leavers.retain(proc::watching); // those that fired are done
        leavers.push(w);
        Ok(())
    }

    /// A slot's ring broke the protocol: stop reading it and tell the receiver.
    fn poison(&self, slot: usize, source: Corruption) {
        if let Some(e) = self.poison_event(slot, source) {
            self.mailbox.push(e);
            self.words.header().results_bell.ring();
        }
    }

    /// Marks `slot` poisoned; the event to report, the first time only.
    fn poison_event(&self, slot: usize, source: Corruption) -> Option<SlotEvent> {
        self.need[slot].store(0, Ordering::Release);
        if self.poisoned[slot].swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(SlotEvent::Corrupt {
            slot,
            pid: self.pids[slot].load(Ordering::Acquire),
            source,
        })
    }

    /// Sends one message to `slot`'s worker without ever waiting: what does not fit now
    /// is copied to the slot's outbox and flushed by [`Self::flush`] as room appears.
    /// With `notify`, the worker is woken if it sleeps; without, call [`Self::notify`]
    /// after posting a batch. A corrupt task ring is not an error here: it is reported
    /// as a [`SlotEvent::Corrupt`], and the message dropped with the worker.
    pub fn post(&self, slot: usize, h: &FrameHeader, payload: &[u8], notify: bool) -> Result<()> {
        check_slot(self.layout.slots, slot)?;
        check_tag(h.tag)?;
        if self.poisoned[slot].load(Ordering::Acquire) {
            return Ok(());
        }
        let mut out = lock(&self.tasks[slot]);
        let need = match out.post(h, payload) {
            Ok(need) => need,
            Err(Error::Corrupt(c)) => {
                drop(out);
                self.poison(slot, c);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.task_heads[slot].store(out.ring.head(), Ordering::Release);
        self.need[slot].store(need, Ordering::Release);
        if notify {
            out.ring.notify();
        }
        drop(out);
        if need != 0 {
            // The worker may have freed room (and rung) before `need` was stored: ring once
            // more so the waiter re-checks now, not a slice later.
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
            if need.load(Ordering::Acquire) == 0 || self.poisoned[slot].load(Ordering::Acquire) {
                continue;
            }
            let mut out = lock(&self.tasks[slot]);
            match out.flush() {
                Ok(left) => {
                    self.task_heads[slot].store(out.ring.head(), Ordering::Release);
                    need.store(left, Ordering::Release);
                }
                Err(Error::Corrupt(c)) => {
                    drop(out);
                    self.poison(slot, c);
                    continue;
                }
                Err(e) => return Err(e),
            }
            out.ring.notify();
        }
        Ok(())
    }

    /// Bytes waiting in `slot`'s outbox (queued messages, not counting the ring).
    pub fn backlog(&self, slot: usize) -> Result<usize> {
        check_slot(self.layout.slots, slot)?;
        Ok(lock(&self.tasks[slot]).backlog())
    }

    /// What the worker in `slot` is doing (readable after it died).
    pub fn state(&self, slot: usize) -> Result<SlotState> {
        check_slot(self.layout.slots, slot)?;
        Ok(self.words.state(slot))
    }

    /// How many threads of `slot`'s worker sleep waiting for tasks (diagnostics; after the
    /// worker died and the slot was reset, 0: a dead sleeper is forgotten).
    pub fn idle_waiters(&self, slot: usize) -> Result<u32> {
        check_slot(self.layout.slots, slot)?;
        Ok(self.task_probes[slot].data_bell_sleepers())
    }

    fn ready(&self) -> bool {
        let poisoned = |slot: usize| self.poisoned[slot].load(Ordering::Acquire);
        let results = |slot: usize| {
            let tail = self.result_tails[slot].load(Ordering::Acquire);
            !poisoned(slot) && self.result_probes[slot].has_data_after(tail)
        };
        let room = |slot: usize| {
            let need = self.need[slot].load(Ordering::Acquire);
            let head = self.task_heads[slot].load(Ordering::Acquire);
            need != 0 && !poisoned(slot) && self.task_probes[slot].has_room_after(head, need)
        };
        // Acquire: pairs with the Release stores in `wake` and `Mailbox::push`. `woken` is
        // consumed by the check that sees it, so a wake is never lost to a later clear.
        self.woken.swap(false, Ordering::AcqRel)
            || self.mailbox.pending.load(Ordering::Acquire)
            || (0..self.layout.slots).any(|s| results(s) || room(s))
    }

    /// Waits until a result, an event or room for an outbox is there (then drain, which
    /// flushes), or [`Self::wake`] is called. Holds no lock while it waits.
    pub fn wait_results(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.words
            .header()
            .results_bell
            .wait_until(|| self.ready(), deadline, poll)
    }

    /// Ends the current wait for results (or the next one, if none is under way), so the
    /// receiving thread looks at the parent's own state again.
    pub fn wake(&self) {
        // Release: pairs with the Acquire load in `ready`.
        self.woken.store(true, Ordering::Release);
        self.words.header().results_bell.ring();
    }

    /// Flushes outboxes, then copies every complete result message now waiting into
    /// `out`, then appends the events: a worker's death comes after everything it sent
    /// before dying. Returns how many messages and events were added.
    pub fn drain_results(&self, out: &mut Received) -> Result<usize> {
        self.flush()?;
        // Taken before the rings are read: whatever a dead worker published before it
        // died is read below.
        let events = self.mailbox.take();
        let before = out.messages.len() + out.events.len();
        {
            let mut results = lock(&self.results);
            for (slot, c) in results.iter_mut().enumerate() {
                if self.poisoned[slot].load(Ordering::Acquire) {
                    continue; // poisoned here or by a post: reported already
                }
                let messages = &mut out.messages;
                let drained = c.drain(usize::MAX, &mut out.bytes, |h, r| {
                    messages.push((slot, h, r))
                });
                self.result_tails[slot].store(c.tail(), Ordering::Release);
                if let Err(Error::Corrupt(source)) = drained {
                    out.events.extend(self.poison_event(slot, source));
                }
            }
        }
        out.events.extend(events);
        // This drain's corruption before the mailbox's deaths, as in `Mailbox::take`.
        out.events
            .sort_by_key(|e| matches!(e, SlotEvent::Exited { .. }));
        Ok(out.messages.len() + out.events.len() - before)
    }

    /// Empties both rings of `slot` for a new worker, and drops events still waiting about
    /// the old one. Only sound once the old worker is gone (dead, or said it writes no
    /// more); results it left are to be drained first.
    pub fn reset_slot(&self, slot: usize) -> Result<()> {
        check_slot(self.layout.slots, slot)?;
        lock(&self.tasks[slot]).reset();
        self.need[slot].store(0, Ordering::Release);
        self.task_heads[slot].store(0, Ordering::Release);
        lock(&self.results)[slot].reset();
        self.result_tails[slot].store(0, Ordering::Release);
        self.words.set_state(slot, SlotState::Idle)?;
        self.mailbox.forget(slot);
        self.poisoned[slot].store(false, Ordering::Release);
        Ok(())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for w in lock(&self.watches).iter_mut().filter_map(Option::take) {
            proc::unwatch(w);
        }
        for w in lock(&self.leavers).drain(..) {
            proc::unwatch(w);
        }
        // The last hub gone: the death watch's fds too, if nothing else is watched (a
        // hub is dropped where `watch` is called: with the GIL held, in the bindings).
        proc::release_if_idle();
    }
}

#[cfg(test)]
mod tests;
