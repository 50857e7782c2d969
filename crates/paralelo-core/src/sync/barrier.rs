//! A barrier in shared memory for threads of any process, with the standard library's
//! semantics (a round passes when `parties` have arrived; abort and reset break it for
//! whoever waits), and one more: a process that took part and died breaks it, instead of
//! leaving the others waiting for ever for its arrival.
use std::time::{Duration, Instant};

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::sync::lock::{SharedLock, Taken};
use crate::sys::thread;
use crate::{Error, Result};

/// Processes remembered as taking part (past them, a death is not noticed).
pub const KNOWN: usize = 32;
/// A waiter that has waited this long looks for dead parties (system calls).
const LOOK_AFTER: Duration = Duration::from_millis(10);

/// Plain data: lives in shared memory; zero-initialised, then [`init`](Self::init)ed.
#[repr(C)]
#[derive(Default)]
pub struct SharedBarrier {
    parties: AtomicU32,
    /// Arrived in this round.
    count: AtomicU32,
    /// Bumped as a round passes or is reset.
    round: AtomicU32,
    /// 1: broken (abort, a timeout, a failed action, a dead party) until reset.
    broken: AtomicU32,
    /// One past the last round a reset ended (0: none): its waiters are told it broke.
    reset_round: AtomicU32,
    _pad: u32,
    /// Guards arrivals, resets and aborts (held for a few instructions).
    lock: SharedLock,
    bell: Doorbell,
    /// Processes that arrived here and did not disown it.
    known: [AtomicU32; KNOWN],
}

/// Why a wait did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// Broken by abort, reset, a timeout or a failed action.
    Broken,
    /// Broken because process `pid`, which took part, died.
    Died { pid: u32 },
}

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

    /// Arrives, as process `pid`: (its index in the round, the round), or [`Broke`] if
    /// the barrier is broken. The index `parties - 1` is the last: the caller runs the
    /// action, then [`pass`](Self::pass)es the round (or [`abort`](Self::abort)s it).
    pub fn arrive(&self, pid: u32) -> Result<std::result::Result<(u32, u32), Broke>> {
        self.locked(pid, || {
            if self.broken() {
                return Err(Broke::Broken);
            }
            let index = self.count.fetch_add(1, Ordering::Relaxed);
            self.remember(pid);
            Ok((index, self.round.load(Ordering::Relaxed)))
        })
    }

    /// Lets round `round`'s waiters go (its last arrival, after the action).
    pub fn pass(&self, pid: u32, round: u32) -> Result<()> {
        self.locked(pid, || {
            if self.round.load(Ordering::Relaxed) == round && !self.broken() {
                self.count.store(0, Ordering::Relaxed);
                // Release: pairs with the waiters' Acquire (what the parties wrote before
                // arriving is seen by all after).
                self.round.fetch_add(1, Ordering::Release);
            }
        })?;
        self.bell.ring();
        Ok(())
    }

    /// Waits for round `round` to pass: Ok, or [`Broke`]. A timeout or a stop by `poll`
    /// breaks the barrier first (as the standard library's does), then returns
    /// `Broke::Broken` or [`Error::Interrupted`].
    pub fn wait(
        &self,
        pid: u32,
        round: u32,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<std::result::Result<(), Broke>> {
        let (mut died, started) = (None, Instant::now());
        let mut look = || {
            if started.elapsed() >= LOOK_AFTER {
                died = self.find_dead(pid);
            }
            died.is_none() && poll()
        };
        let gone = || self.round.load(Ordering::Acquire) != round || self.broken();
        match self.bell.wait_until(gone, deadline, &mut look) {
            Ok(()) => {}
            Err(Error::Interrupted) if died.is_some() => {
                let pid = died.unwrap_or(0);
                self.abort(pid)?;
                return Ok(Err(Broke::Died { pid }));
            }
            Err(Error::Timeout) => {
                self.abort(pid)?;
                return Ok(Err(Broke::Broken));
            }
            Err(e) => {
                self.abort(pid)?;
                return Err(e);
            }
        }
        let now = self.round.load(Ordering::Acquire);
        if now != round && self.reset_round.load(Ordering::Relaxed) != round.wrapping_add(1) {
            Ok(Ok(()))
        } else {
            Ok(Err(Broke::Broken))
        }
    }

    /// Breaks the barrier: its waiters, and any later arrival until a reset, are told.
    pub fn abort(&self, pid: u32) -> Result<()> {
        self.locked(pid, || self.broken.store(1, Ordering::Release))?;
        self.bell.ring();
        Ok(())
    }

    /// Back to its first state: the waiters of the round under way are told it broke.
    pub fn reset(&self, pid: u32) -> Result<()> {
        self.locked(pid, || {
            let round = self.round.load(Ordering::Relaxed);
            if self.count.load(Ordering::Relaxed) > 0 || self.broken() {
                self.reset_round
                    .store(round.wrapping_add(1), Ordering::Relaxed);
                self.round.fetch_add(1, Ordering::Release);
            }
            self.count.store(0, Ordering::Relaxed);
            self.broken.store(0, Ordering::Release);
        })?;
        self.bell.ring();
        Ok(())
    }

    /// Process `pid` is ending normally: its absence from later rounds is no death.
    pub fn disown(&self, pid: u32) {
        for k in &self.known {
            let _ = k.compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn remember(&self, pid: u32) {
        if self.known.iter().any(|k| k.load(Ordering::Relaxed) == pid) {
            return;
        }
        for k in &self.known {
            if k.compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// A party that died (forgotten once found), if any (`me` is alive: not looked at).
    fn find_dead(&self, me: u32) -> Option<u32> {
        for k in &self.known {
            let pid = k.load(Ordering::Relaxed);
            if pid != 0
                && pid != me
                && !thread::exists(pid)
                && k.compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(pid);
            }
        }
        None
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
            b.pass(me(), round).unwrap();
            return Ok(index);
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
    fn a_reset_tells_the_waiters_their_round_broke() {
        let b = Arc::new(SharedBarrier::default());
        b.init(2);
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || party(&b, None))
        };
        while b.n_waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        b.reset(me()).unwrap();
        assert_eq!(waiter.join().unwrap(), Err(Broke::Broken));
        assert!(!b.broken());
    }

    #[test]
    fn a_party_that_died_breaks_it_and_is_named() {
        let dead = (1 << 22) + 13;
        let b = SharedBarrier::default();
        b.init(2);
        b.remember(dead);
        assert_eq!(party(&b, None), Err(Broke::Died { pid: dead }));
        assert!(b.broken());
        b.reset(me()).unwrap();
        b.disown(me());
        assert!(b.known.iter().all(|k| k.load(Ordering::Relaxed) == 0));
    }
}
