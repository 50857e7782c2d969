//! One slot's sending side in the parent: its task ring, and what did not fit yet.
use std::collections::VecDeque;

use crate::ring::{FrameHeader, Producer};
use crate::Result;

/// A message (or the rest of one) waiting for room in a task ring.
struct Pending {
    header: FrameHeader,
    payload: Vec<u8>,
    sent: usize,
}

/// A task ring and the messages queued behind it, in order: a message is never put in
/// the ring while an older one waits, so fragments of two messages never interleave.
pub(crate) struct Outbox {
    pub(crate) ring: Producer,
    queue: VecDeque<Pending>,
}

impl Outbox {
    pub(crate) fn new(ring: Producer) -> Self {
        Outbox {
            ring,
            queue: VecDeque::new(),
        }
    }

    /// Puts a message in the ring, or what does not fit behind it in the queue. Returns
    /// the room the queue's head waits for (0 when nothing waits).
    pub(crate) fn post(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<u64> {
        let mut sent = 0;
        if self.queue.is_empty() && self.ring.offer(h, payload, &mut sent)? {
            return Ok(0);
        }
        self.queue.push_back(Pending {
            header: *h,
            payload: payload.to_vec(),
            sent,
        });
        self.ring.want_room(true);
        self.flush()
    }

    /// Moves queued messages into the ring while they fit; returns the room the next one
    /// needs (0 when the queue is empty).
    pub(crate) fn flush(&mut self) -> Result<u64> {
        while let Some(p) = self.queue.front_mut() {
            if !self.ring.offer(&p.header, &p.payload, &mut p.sent)? {
                return Ok(self.ring.room_needed(&p.payload, p.sent));
            }
            self.queue.pop_front();
        }
        self.ring.want_room(false);
        Ok(0)
    }

    /// Bytes queued, not yet in the ring.
    pub(crate) fn backlog(&self) -> usize {
        self.queue.iter().map(|p| p.payload.len() - p.sent).sum()
    }

    /// Forgets everything, for a new worker in the slot.
    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.ring.reset();
        self.ring.want_room(false);
    }
}
