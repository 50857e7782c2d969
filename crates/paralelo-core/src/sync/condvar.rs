//! A condition variable's waiting in shared memory (the lock it goes with is a separate
//! [`SharedLock`](crate::SharedLock)): each waiter takes an entry with a ticket (its
//! turn), and `notify(n)` marks the n oldest entries notified, so exactly those waiters
//! leave, in the order they came, as with the standard library's Condition; a waiter
//! that comes after a notify cannot take it from the one it was for.
//!
//! Protocol: the caller holds the lock in `enter`, `notify` and `leave`, not in `wait`.
//! `enter` takes an entry; `wait` sleeps on its entry's own doorbell until the entry is
//! notified (or the time runs out), so a notify wakes only the waiters it picked; `leave` frees the entry and says whether it was notified (a notify that came as
//! the time ran out counts). A waiter of another process that died is skipped by
//! `notify` (a look costs a system call: only for other processes' waiters).
use std::time::Instant;

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::sys::thread;
use crate::{Error, Result};

/// Waiters at once.
pub const WAITERS: usize = 128;

#[repr(C)]
#[derive(Default)]
struct Waiter {
    /// 0: the entry is free; else its ticket (the order of arrival, wrapping).
    ticket: AtomicU32,
    /// 1 once notified.
    notified: AtomicU32,
    /// The waiter's process.
    pid: AtomicU32,
    _pad: u32,
    /// What this waiter sleeps on: a notify wakes the waiters it picked, not every one.
    bell: Doorbell,
}

/// Plain data: lives in shared memory; zero-initialised has no waiters.
#[repr(C)]
pub struct SharedCondvar {
    /// The last ticket handed out (under the lock).
    tickets: AtomicU32,
    _pad: u32,
    waiters: [Waiter; WAITERS],
}

impl Default for SharedCondvar {
    fn default() -> Self {
        Self {
            tickets: AtomicU32::default(),
            _pad: 0,
            waiters: std::array::from_fn(|_| Waiter::default()),
        }
    }
}

impl SharedCondvar {
    /// Bytes a condition variable takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedCondvar>();

    /// Counts the caller (process `pid`) in as a waiter, holding the lock: its entry.
    pub fn enter(&self, pid: u32) -> Result<usize> {
        let free = self.free_entry().or_else(|| {
            // Full: entries of waiters whose process died go first.
            for w in &self.waiters {
                let p = w.pid.load(Ordering::Relaxed);
                if w.ticket.load(Ordering::Relaxed) != 0 && p != pid && !thread::exists(p) {
                    w.ticket.store(0, Ordering::Relaxed);
                }
            }
            self.free_entry()
        });
        let Some(i) = free else {
            return Err(Error::Invalid(format!(
                "a paralelo Condition holds at most {WAITERS} waiters at once"
            )));
        };
        let mut ticket = self.tickets.load(Ordering::Relaxed).wrapping_add(1);
        if ticket == 0 {
            ticket = 1;
        }
        self.tickets.store(ticket, Ordering::Relaxed);
        let w = &self.waiters[i];
        // Whoever waited here before is gone: it left (and so stopped sleeping), or its
        // process died, maybe asleep and still counted (every ring would pay a wake).
        w.bell.forget_sleepers();
        w.notified.store(0, Ordering::Relaxed);
        w.pid.store(pid, Ordering::Relaxed);
        w.ticket.store(ticket, Ordering::Release);
        Ok(i)
    }

    fn free_entry(&self) -> Option<usize> {
        self.waiters
            .iter()
            .position(|w| w.ticket.load(Ordering::Relaxed) == 0)
    }

    fn entry(&self, i: usize) -> Result<&Waiter> {
        self.waiters
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("no condition entry {i}")))
    }

    /// Waits (not holding the lock) until entry `i` is notified: true; false if
    /// `deadline` passed first; [`Error::Interrupted`] if `poll` said stop. Then call
    /// [`leave`](Self::leave) holding the lock again.
    pub fn wait(&self, i: usize, deadline: Option<Instant>, poll: Poll<'_>) -> Result<bool> {
        let w = self.entry(i)?;
        // Acquire: pairs with `notify`'s Release.
        let notified = || w.notified.load(Ordering::Acquire) == 1;
        match w.bell.wait_until(notified, deadline, poll) {
            Ok(()) => Ok(true),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Frees entry `i` (holding the lock): whether it was notified.
    pub fn leave(&self, i: usize) -> Result<bool> {
        let w = self.entry(i)?;
        let notified = w.notified.load(Ordering::Acquire) == 1;
        w.ticket.store(0, Ordering::Relaxed);
        Ok(notified)
    }

    /// Notifies the `n` oldest waiters (holding the lock), as process `me`: how many.
    pub fn notify(&self, n: u32, me: u32) -> u32 {
        let last = self.tickets.load(Ordering::Relaxed);
        let mut picked = 0;
        // The oldest waiter not yet notified, n times over (a notify is usually of one,
        // and of few waiters: no sorting, no allocation under the caller's lock).
        while picked < n {
            let oldest = self
                .waiters
                .iter()
                .filter(|w| self.waits(w))
                .max_by_key(|w| last.wrapping_sub(w.ticket.load(Ordering::Relaxed)));
            let Some(w) = oldest else { break };
            let pid = w.pid.load(Ordering::Relaxed);
            if pid != me && !thread::exists(pid) {
                w.ticket.store(0, Ordering::Relaxed); // (died waiting: a notify is not for it)
                continue;
            }
            // Release: pairs with `wait`'s Acquire (what the notifier wrote is seen).
            w.notified.store(1, Ordering::Release);
            w.bell.ring();
            picked += 1;
        }
        picked
    }

    /// Whether entry `w` is a waiter not yet notified.
    fn waits(&self, w: &Waiter) -> bool {
        w.ticket.load(Ordering::Relaxed) != 0 && w.notified.load(Ordering::Relaxed) == 0
    }

    /// Waiters counted in and not yet notified (for diagnostics and tests).
    pub fn waiting(&self) -> u32 {
        self.waiters.iter().filter(|w| self.waits(w)).count() as u32
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn me() -> u32 {
        std::process::id()
    }

    /// A waiter as a Condition's `wait` runs it: in under the lock, wait without it,
    /// leave under it.
    fn wait(lock: &Mutex<()>, cv: &SharedCondvar, deadline: Option<Instant>) -> bool {
        let g = lock.lock().unwrap();
        let i = cv.enter(me()).unwrap();
        drop(g);
        let got = cv.wait(i, deadline, &mut || true).unwrap();
        let _g = lock.lock().unwrap();
        cv.leave(i).unwrap() || got
    }

    #[test]
    fn a_notify_of_n_lets_exactly_n_go() {
        let lock = Arc::new(Mutex::new(()));
        let cv = Arc::new(SharedCondvar::default());
        let woken = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (lock, cv, woken) = (lock.clone(), cv.clone(), woken.clone());
                std::thread::spawn(move || {
                    let soon = Instant::now() + Duration::from_millis(400);
                    if wait(&lock, &cv, Some(soon)) {
                        woken.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        while cv.waiting() < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        {
            let _g = lock.lock().unwrap();
            assert_eq!(cv.notify(3, me()), 3);
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(
            woken.load(Ordering::SeqCst),
            3,
            "three notified, one timed out"
        );
        assert_eq!(cv.waiting(), 0);
    }

    #[test]
    fn a_notify_goes_to_the_oldest_waiter_not_a_later_one() {
        let cv = SharedCondvar::default();
        let first = cv.enter(me()).unwrap();
        assert_eq!(cv.notify(1, me()), 1);
        let later = cv.enter(me()).unwrap(); // came after the notify: not for it
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(!cv.wait(later, soon, &mut || true).unwrap());
        assert!(!cv.leave(later).unwrap());
        assert!(cv.wait(first, None, &mut || true).unwrap());
        assert!(cv.leave(first).unwrap());
    }

    #[test]
    fn a_notify_with_no_waiters_is_not_kept_for_later_ones() {
        let lock = Mutex::new(());
        let cv = SharedCondvar::default();
        assert_eq!(cv.notify(1, me()), 0);
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!wait(&lock, &cv, Some(soon)));
    }

    #[test]
    fn a_waiter_of_a_dead_process_is_skipped() {
        let dead = (1 << 22) + 17;
        let cv = SharedCondvar::default();
        let gone = cv.enter(dead).unwrap();
        let live = cv.enter(me()).unwrap();
        assert_eq!(cv.notify(1, me()), 1);
        assert!(cv.leave(live).unwrap(), "the notify went to the living");
        let _ = gone;
        assert_eq!(cv.waiting(), 0);
    }
}
