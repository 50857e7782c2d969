//! The worker's side of one hub slot: receives tasks, sends results.
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::ring::{Consumer, FrameHeader, Probe, Producer};
use crate::sync::{Poll, Turn};
use crate::{Result, Segment};

use super::layout::Words;
use super::state::SlotState;
use super::{check_slot, lock};

/// A worker's end of one slot. Safe to share between threads: no lock is held while a
/// call waits, so a thread blocked in [`Port::send`] never stalls another's
/// [`Port::notify`] (nor holds anything a signal handler's Python code might need).
pub struct Port {
    words: Words,
    slot: usize,
    tasks: Mutex<Consumer>,
    tasks_probe: Probe,
    results: Mutex<Producer>,
    results_probe: Probe,
    /// One message at a time into the result ring: a message sent in fragments, waiting
    /// for room between them, must not interleave with another thread's.
    sending: Turn,
}

impl Port {
    /// Attaches to slot `slot` of the hub whose segment is `fd`.
    pub fn open(fd: BorrowedFd<'_>, slot: usize) -> Result<Self> {
        let seg = Arc::new(Segment::open(fd)?);
        let layout = Words::read_layout(&seg)?;
        check_slot(layout.slots, slot)?;
        let tasks = Consumer::new(seg.clone(), layout.tasks(slot), false)?;
        let results = Producer::new(seg.clone(), layout.results(slot), false)?;
        Ok(Port {
            tasks_probe: tasks.probe(),
            results_probe: results.probe(),
            tasks: Mutex::new(tasks),
            results: Mutex::new(results),
            words: Words::new(seg, &layout)?,
            slot,
            sending: Turn::default(),
        })
    }

    /// Waits until a task message is published. Holds nothing while it waits.
    pub fn wait_tasks(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<()> {
        self.tasks_probe.wait_data(deadline, poll)
    }

    /// Copies up to `max` complete task messages now waiting to the end of `out`, calling
    /// `f(header, range of out)` for each. A corrupt task ring is [`crate::Error::CorruptSlot`].
    pub fn drain_tasks(
        &self,
        max: usize,
        out: &mut Vec<u8>,
        f: impl FnMut(FrameHeader, Range<usize>),
    ) -> Result<usize> {
        lock(&self.tasks)
            .drain(max, out, f)
            .map_err(|e| e.in_slot(self.slot))
    }

    /// Sends one result message if it fits now; `false` if not (or if another thread is
    /// mid-way through a message). Without `notify` the parent is not woken yet: call
    /// [`Self::notify`] after a batch.
    pub fn try_send(&self, h: &FrameHeader, payload: &[u8], notify: bool) -> Result<bool> {
        let Some(_turn) = self.sending.try_take() else {
            return Ok(false);
        };
        let mut ring = lock(&self.results);
        let done = ring
            .try_send(h, payload)
            .map_err(|e| e.in_slot(self.slot))?;
        if notify {
            ring.notify();
        }
        Ok(done)
    }

    /// Wakes the parent if results were sent without waking it.
    pub fn notify(&self) {
        lock(&self.results).notify();
    }

    /// Sends one result message, waiting for room as needed (and for another thread's
    /// message to finish). The ring's lock is held only while bytes are copied in.
    pub fn send(
        &self,
        h: &FrameHeader,
        payload: &[u8],
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        let _turn = self.sending.take(deadline, poll)?;
        let mut sent = 0;
        loop {
            let (head, need) = {
                let mut ring = lock(&self.results);
                let done = ring
                    .offer(h, payload, &mut sent)
                    .map_err(|e| e.in_slot(self.slot))?;
                ring.notify(); // done, or the parent must drain before more fits
                if done {
                    return Ok(());
                }
                (ring.head(), ring.room_needed(payload, sent))
            };
            // Room after our own head: a scribbled shared head can neither fake room nor
            // keep us from sleeping (and so from our deadline).
            if let Err(e) = self
                .results_probe
                .wait_room_after(head, need, deadline, poll)
            {
                if sent > 0 {
                    lock(&self.results).abandon();
                }
                return Err(e);
            }
        }
    }

    /// Records what this worker is doing, so that if it dies the parent knows what killed
    /// it. One store.
    pub fn set_state(&self, state: SlotState) -> Result<()> {
        self.words.set_state(self.slot, state)
    }
}
