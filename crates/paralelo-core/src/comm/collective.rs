//! Collectives' algorithms over a [`Mailbox`]. Each is a state machine that a wait with a
//! deadline can leave part-way and resume: the bindings first wait a few microseconds
//! holding their interpreter's lock (a peer that is already there answers in well under
//! one), and only then let go of it for the longer wait.
use super::mailbox::{Envelope, Kind, Mailbox, Pattern, Wait};
use crate::{Error, Poll, Result};

/// A communicator as the collectives see it: the world rank of each of its ranks, this
/// rank's place among them, and the context its collectives' messages go on.
#[derive(Clone, Copy, Debug)]
pub struct Group<'a> {
    pub ranks: &'a [usize],
    pub rank: usize,
    pub context: i32,
}

impl Group<'_> {
    pub fn size(&self) -> usize {
        self.ranks.len()
    }

    fn check(&self) -> Result<()> {
        if self.rank >= self.ranks.len() {
            return Err(Error::Invalid(format!(
                "rank {} in a communicator of {}",
                self.rank,
                self.ranks.len()
            )));
        }
        Ok(())
    }
}

/// A dissemination barrier in progress: in round k (distance 2^k) each rank tells the
/// rank 2^k after it and hears from the rank 2^k before it, ⌈log2 size⌉ rounds in all.
/// After the last round every rank heard, directly or not, from every other.
#[derive(Debug)]
pub struct Barrier {
    step: usize,
    told: bool,
}

impl Default for Barrier {
    fn default() -> Self {
        Self::new()
    }
}

impl Barrier {
    pub fn new() -> Self {
        Barrier {
            step: 1,
            told: false,
        }
    }

    /// Runs rounds until the barrier is done (true) or the time `wait` gives it is out
    /// (false: call again to go on). Its messages carry `tag` on the group's context.
    pub fn advance(
        &mut self,
        mailbox: &mut Mailbox,
        group: &Group<'_>,
        tag: i32,
        wait: Wait,
        poll: Poll<'_>,
    ) -> Result<bool> {
        group.check()?;
        let size = group.size();
        while self.step < size {
            if !self.told {
                let to = (group.rank + self.step) % size;
                let envelope = Envelope {
                    context: group.context,
                    source: group.rank as i32,
                    tag,
                    kind: Kind::Object,
                };
                if !mailbox
                    .outbox()
                    .send(group.ranks[to], envelope, b"", wait, poll)?
                {
                    return Ok(false);
                }
                self.told = true;
            }
            let from = (group.rank + size - self.step) % size;
            let want = Pattern {
                context: group.context,
                source: from as i32,
                tag,
            };
            if mailbox.take(want, wait, poll)?.is_none() {
                return Ok(false);
            }
            self.step <<= 1;
            self.told = false;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::mailbox::Outbox;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn no_rank_leaves_a_barrier_before_every_rank_came() {
        for size in 1..=5 {
            let outbox = Outbox::create(size, 1 << 16).unwrap();
            let ranks: Vec<usize> = (0..size).collect();
            let arrived = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..size)
                .map(|r| {
                    let (outbox, ranks, arrived) = (outbox.clone(), ranks.clone(), arrived.clone());
                    std::thread::spawn(move || {
                        let mut mailbox = Mailbox::new(r, &outbox).unwrap();
                        let group = Group {
                            ranks: &ranks,
                            rank: r,
                            context: 1,
                        };
                        for round in 1..=50 {
                            if r == round % size {
                                std::thread::sleep(Duration::from_micros(200)); // (a late rank)
                            }
                            arrived.fetch_add(1, Ordering::SeqCst);
                            let mut barrier = Barrier::new();
                            // Short deadlines: the barrier resumes where each left off.
                            while !barrier
                                .advance(
                                    &mut mailbox,
                                    &group,
                                    6,
                                    Wait::Until(Some(Instant::now() + Duration::from_micros(50))),
                                    &mut || true,
                                )
                                .unwrap()
                            {}
                            assert!(arrived.load(Ordering::SeqCst) >= round * size);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        }
    }

    #[test]
    fn a_rank_outside_its_group_is_refused() {
        let outbox = Outbox::create(1, 1 << 16).unwrap();
        let mut mailbox = Mailbox::new(0, &outbox).unwrap();
        let group = Group {
            ranks: &[0],
            rank: 1,
            context: 1,
        };
        assert!(matches!(
            Barrier::new().advance(&mut mailbox, &group, 6, Wait::Until(None), &mut || true),
            Err(Error::Invalid(_))
        ));
    }
}
