//! A barrier in shared memory for threads of any process, with the standard library's
//! semantics (a round passes when `parties` have arrived and the last one's action ran;
//! abort, reset and a timeout break it for whoever waits), and one more: a party of the
//! round under way that died breaks it, instead of leaving the others waiting for ever.
//!
//! Rounds are numbered; each round's end (passed, or ended by a reset) is written in a
//! small log before the number moves on, so a waiter that wakes late, after later rounds
//! and resets, still learns how its own round ended.
use std::time::{Duration, Instant};

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::sync::lock::{SharedLock, Taken};
use crate::sys::thread;
use crate::{Error, Result};

/// Parties of a round whose death is noticed (past them, it is not).
pub const KNOWN: usize = 32;
/// Rounds whose end is remembered for late waiters.
const LOG: usize = 64;
/// A waiter that has waited this long looks for dead parties (system calls).
const LOOK_AFTER: Duration = Duration::from_millis(10);
/// In the log: the round ended by a reset (its waiters are told it broke).
const RESET: u32 = 1 << 31;

/// Plain data: lives in shared memory; zero-initialised, then [`init`](Self::init)ed.
#[repr(C)]
pub struct SharedBarrier {
    parties: AtomicU32,
    /// Arrived in the round under way.
    count: AtomicU32,
    /// The round under way.
    round: AtomicU32,
    /// 1: broken (abort, a timeout, a failed action, a dead party) until reset.
    broken: AtomicU32,
    /// 1 while the last party runs the action: a waiter's timeout waits for it, as the
    /// standard library's does (its action runs under the barrier's lock).
    passing: AtomicU32,
    _pad: u32,
    /// Guards every change (held for a few instructions).
    lock: SharedLock,
    bell: Doorbell,
    /// How recent rounds ended: the round's number (low 31 bits) and RESET, or 0.
    log: [AtomicU32; LOG],
    /// The pids of the round's parties, by index.
    arrived: [AtomicU32; KNOWN],
}

impl Default for SharedBarrier {
    fn default() -> Self {
        Self {
            parties: AtomicU32::default(),
            count: AtomicU32::default(),
            round: AtomicU32::default(),
            broken: AtomicU32::default(),
            passing: AtomicU32::default(),
            _pad: 0,
            lock: SharedLock::default(),
            bell: Doorbell::default(),
            log: std::array::from_fn(|_| AtomicU32::default()),
            arrived: std::array::from_fn(|_| AtomicU32::default()),
        }
    }
}

/// Why a wait did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// Broken by abort, reset, a timeout or a failed action.
    Broken,
    /// Broken because process `pid`, a party of the round, died.
    Died { pid: u32 },
}

type Outcome = std::result::Result<(), Broke>;

impl SharedBarrier {
    /// Bytes a barrier takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedBarrier>();

    /// Call once, on fresh (zeroed) memory, before it is shared.
    pub fn init(&self, parties: u32) {
        self.parties.store(parties, Ordering::Relaxed);
    }

    pub fn parties(&self) -> u32 {
        self.parties.load(Ordering::Relaxed)
    }

    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) == 1
    }

    /// Waiting in this round (0 while broken).
    pub fn n_waiting(&self) -> u32 {
        if self.broken() {
            0
        } else {
            self.count.load(Ordering::Relaxed)
        }
    }

    /// Runs `f` under the barrier's lock (taken as process `pid`). A holder that died in
    /// it left the counts unknown: the barrier breaks.
    fn locked<T>(&self, pid: u32, f: impl FnOnce() -> T) -> Result<T> {
        let taken = self.lock.acquire(pid, false, None, &mut || true)?;
        if let Taken::FromDead { .. } = taken {
            self.broken.store(1, Ordering::Release);
        }
        let out = f();
        let _ = self.lock.release(pid, false);
        Ok(out)
    }

    /// Ends the round under way (under the lock): logged, the next begins.
    fn end_round(&self, how: u32) {
        let round = self.round.load(Ordering::Relaxed);
        self.log[round as usize % LOG].store(round & !RESET | how, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
        self.passing.store(0, Ordering::Relaxed);
        for a in &self.arrived {
            a.store(0, Ordering::Relaxed);
        }
        // Release: pairs with the waiters' Acquire (what the parties wrote before
        // arriving is seen by all after).
        self.round.store(round.wrapping_add(1), Ordering::Release);
    }

    /// Arrives, as process `pid`: (its index in the round, the round), or [`Broke`] if
    /// the barrier is broken. The index `parties - 1` is the last: the caller runs the
    /// action, then [`pass`](Self::pass)es the round (or [`abort`](Self::abort)s it).
    pub fn arrive(&self, pid: u32) -> Result<std::result::Result<(u32, u32), Broke>> {
        self.locked(pid, || {
            if self.broken() {
                return Err(Broke::Broken);
            }
            let index = self.count.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = self.arrived.get(index as usize) {
                a.store(pid, Ordering::Relaxed);
            }
            if index + 1 >= self.parties() {
                // The last: a party that died waiting (and was reaped) must not count as
                // arrived. (A signal-0 probe of each, once a round; a killed party not yet
                // reaped is found by the waiters' slower look instead.)
                let count = (index as usize + 1).min(KNOWN);
                let dead = self.arrived[..count]
                    .iter()
                    .map(|a| a.load(Ordering::Relaxed))
                    .find(|&p| p != 0 && p != pid && thread::reaped(p));
                if let Some(dead) = dead {
                    self.broken.store(1, Ordering::Release);
                    return Err(Broke::Died { pid: dead });
                }
                self.passing.store(1, Ordering::Relaxed);
            }
            Ok((index, self.round.load(Ordering::Relaxed)))
        })
    }

    /// Lets round `round`'s waiters go (its last arrival, after the action): whether it
    /// passed (not if it broke meanwhile: then the last party is told too).
    pub fn pass(&self, pid: u32, round: u32) -> Result<bool> {
        let passed = self.locked(pid, || {
            if self.round.load(Ordering::Relaxed) == round && !self.broken() {
                self.end_round(0);
                true
            } else {
                self.passing.store(0, Ordering::Relaxed);
                false
            }
        })?;
        self.bell.ring();
        Ok(passed)
    }

    /// How round `round` ended, once it has (None while it has not).
    fn outcome(&self, round: u32) -> Option<Outcome> {
        if self.round.load(Ordering::Acquire) == round {
            return self.broken().then_some(Err(Broke::Broken));
        }
        let logged = self.log[round as usize % LOG].load(Ordering::Relaxed);
        // (Logged as reset, or overwritten after 64 more rounds: it broke, or is too old
        // to tell, and a waiter that slept that long was surely not let through.)
        if logged == round & !RESET {
            Some(Ok(()))
        } else {
            Some(Err(Broke::Broken))
        }
    }

    /// Waits for round `round` to end: Ok if it passed, else [`Broke`]. A timeout or a
    /// stop by `poll` breaks the round first (as the standard library's does; not while
    /// the action runs: a timeout then waits for it), then returns `Broke::Broken` or
    /// [`Error::Interrupted`].
    pub fn wait(
        &self,
        pid: u32,
        round: u32,
        mut deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<Outcome> {
        loop {
            let (mut died, started) = (None, Instant::now());
            let mut look = || {
                if !cfg!(loom) && started.elapsed() >= LOOK_AFTER {
                    // (see `Semaphore::acquire`)
                    died = self.find_dead(pid);
                }
                died.is_none() && poll()
            };
            let ended = || self.outcome(round).is_some();
            let waited = self.bell.wait_until(ended, deadline, &mut look);
            if let Some(outcome) = self.outcome(round) {
                return Ok(outcome);
            }
            match waited {
                Ok(()) => {}
                Err(Error::Interrupted) if died.is_some() => {
                    let dead = Broke::Died {
                        pid: died.unwrap_or(0),
                    };
                    self.abort_round(pid, round)?;
                    return Ok(match self.outcome(round) {
                        Some(Ok(())) => Ok(()), // (it passed meanwhile)
                        _ => Err(dead),
                    });
                }
                Err(Error::Timeout) => {
                    if self.passing.load(Ordering::Relaxed) == 1 {
                        deadline = None; // the action runs: its end decides
                        continue;
                    }
                    self.abort_round(pid, round)?;
                    return Ok(self.outcome(round).unwrap_or(Err(Broke::Broken)));
                }
                Err(e) => {
                    self.abort_round(pid, round)?;
                    return Err(e);
                }
            }
        }
    }

    /// Breaks round `round` if it is still under way (and its action is not running).
    fn abort_round(&self, pid: u32, round: u32) -> Result<()> {
        self.locked(pid, || {
            if self.round.load(Ordering::Relaxed) == round
                && self.passing.load(Ordering::Relaxed) == 0
            {
                self.broken.store(1, Ordering::Release);
            }
        })?;
        self.bell.ring();
        Ok(())
    }

    /// Breaks the barrier: its waiters, and any later arrival until a reset, are told.
    pub fn abort(&self, pid: u32) -> Result<()> {
        self.locked(pid, || {
            self.broken.store(1, Ordering::Release);
            self.passing.store(0, Ordering::Relaxed);
        })?;
        self.bell.ring();
        Ok(())
    }

    /// Back to its first state: the waiters of the round under way are told it broke.
    pub fn reset(&self, pid: u32) -> Result<()> {
        self.locked(pid, || {
            if self.count.load(Ordering::Relaxed) > 0 || self.broken() {
                self.end_round(RESET);
            }
            self.broken.store(0, Ordering::Release);
        })?;
        self.bell.ring();
        Ok(())
    }

    /// A party of the round under way that died (`me` is alive: not looked at).
    fn find_dead(&self, me: u32) -> Option<u32> {
        let count = (self.count.load(Ordering::Relaxed) as usize).min(KNOWN);
        self.arrived[..count]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .find(|&pid| pid != 0 && pid != me && !thread::exists(pid))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn me() -> u32 {
        std::process::id()
    }

    /// One party's wait, as the Python side runs it: its index, or how it broke.
    fn party(b: &SharedBarrier, timeout: Option<Duration>) -> std::result::Result<u32, Broke> {
        let (index, round) = b.arrive(me()).unwrap()?;
        if index + 1 == b.parties() {
            return if b.pass(me(), round).unwrap() {
                Ok(index)
            } else {
                Err(Broke::Broken)
            };
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        b.wait(me(), round, deadline, &mut || true).unwrap()?;
        Ok(index)
    }

    #[test]
    fn rounds_pass_when_all_parties_arrive() {
        let b = Arc::new(SharedBarrier::default());
        b.init(3);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| party(&b, None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let indices: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for round in 0..200 {
            let mut got: Vec<u32> = indices.iter().map(|i| i[round]).collect();
            got.sort_unstable();
            assert_eq!(got, [0, 1, 2], "each round hands out every index once");
        }
        assert_eq!(b.n_waiting(), 0);
    }

    #[test]
    fn a_timeout_breaks_it_until_a_reset() {
        let b = SharedBarrier::default();
        b.init(2);
        assert_eq!(
            party(&b, Some(Duration::from_millis(20))),
            Err(Broke::Broken)
        );
        assert!(b.broken());
        assert_eq!(party(&b, None), Err(Broke::Broken));
        b.reset(me()).unwrap();
        assert!(!b.broken());
        let b = Arc::new(b);
        let other = {
            let b = b.clone();
            std::thread::spawn(move || party(&b, None))
        };
        let mine = party(&b, None).unwrap();
        assert_eq!(mine + other.join().unwrap().unwrap(), 1);
    }

    #[test]
    fn a_late_waiter_learns_its_own_round_was_reset_after_later_resets() {
        let b = SharedBarrier::default();
        b.init(2);
        let (_, round) = b.arrive(me()).unwrap().unwrap();
        b.reset(me()).unwrap();
        b.abort(me()).unwrap();
        b.reset(me()).unwrap();
        let (_, later) = b.arrive(me()).unwrap().unwrap();
        let (_, same) = b.arrive(me()).unwrap().unwrap();
        assert_eq!(later, same);
        assert!(b.pass(me(), later).unwrap());
        assert_eq!(
            b.wait(me(), round, None, &mut || true).unwrap(),
            Err(Broke::Broken)
        );
        assert_eq!(b.wait(me(), later, None, &mut || true).unwrap(), Ok(()));
    }

    #[test]
    fn a_timeout_while_the_action_runs_waits_for_it() {
        let b = Arc::new(SharedBarrier::default());
        b.init(2);
        let (_, round) = b.arrive(me()).unwrap().unwrap();
        let (_, _) = b.arrive(me()).unwrap().unwrap(); // the last: its action runs
        let passer = {
            let b = b.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(60));
                b.pass(me(), round).unwrap()
            })
        };
        let soon = Some(Instant::now() + Duration::from_millis(10));
        assert_eq!(b.wait(me(), round, soon, &mut || true).unwrap(), Ok(()));
        assert!(passer.join().unwrap());
        assert!(!b.broken());
    }

    #[test]
    fn the_last_arrival_does_not_count_a_party_that_died_waiting() {
        let dead = (1 << 22) + 21;
        let b = SharedBarrier::default();
        b.init(2);
        let _ = b.arrive(dead).unwrap().unwrap();
        assert_eq!(b.arrive(me()).unwrap(), Err(Broke::Died { pid: dead }));
        assert!(b.broken());
    }

    #[test]
    fn a_party_of_the_round_that_died_breaks_it_and_is_named() {
        let dead = (1 << 22) + 13;
        let b = SharedBarrier::default();
        b.init(3);
        let _ = b.arrive(dead).unwrap().unwrap();
        let (_, round) = b.arrive(me()).unwrap().unwrap();
        assert_eq!(
            b.wait(me(), round, None, &mut || true).unwrap(),
            Err(Broke::Died { pid: dead })
        );
        assert!(b.broken());
        b.reset(me()).unwrap();
        assert!(b.arrived.iter().all(|a| a.load(Ordering::Relaxed) == 0));
    }
}
