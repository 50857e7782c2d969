//! A condition variable's waiting in shared memory (the lock it goes with is a separate
//! [`SharedLock`](crate::SharedLock)): waiters count themselves in, a notify turns up to
//! n of them into permits, and whoever is waiting takes a permit and goes. Exact: at
//! most n waiters leave a notify(n), as with the standard library's Condition.
//!
//! Protocol (the caller holds the lock in `enter`, `notify` and `leave_unnotified`, and
//! not in `wait`): `waiting` counts waiters not yet picked; `notify(n)` moves
//! k = min(n, waiting) of them to `permits` and rings. A waiter leaves `wait` by taking a
//! permit (whoever takes it, one of the k leaves: the count stays exact). One that gave
//! up (timeout, Ctrl-C) settles under the lock: it takes a permit if one is left (it was
//! notified after all), else it stops counting itself as waiting.
use std::time::Instant;

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::sync::semaphore::take_unit;
use crate::{Error, Result};

/// Plain data: lives in shared memory; zero-initialised has no waiters.
#[repr(C)]
#[derive(Default)]
pub struct SharedCondvar {
    waiting: AtomicU32,
    permits: AtomicU32,
    bell: Doorbell,
}

impl SharedCondvar {
    /// Bytes a condition variable takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedCondvar>();

    /// Counts the caller in as a waiter (under the lock, before releasing it to `wait`).
    pub fn enter(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
    }

    fn take_permit(&self) -> bool {
        take_unit(&self.permits)
    }

    /// Waits (not holding the lock) for a permit: true once taken; false if `deadline`
    /// passed first, [`Error::Interrupted`] if `poll` said stop. Either way but true,
    /// call [`leave_unnotified`](Self::leave_unnotified) once the lock is held again.
    pub fn wait(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<bool> {
        match self.bell.wait_until(|| self.take_permit(), deadline, poll) {
            Ok(()) => Ok(true),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Settles a waiter whose `wait` gave up (under the lock): true if it was notified
    /// after all (it took a permit), false if it merely stops waiting.
    pub fn leave_unnotified(&self) -> bool {
        if self.take_permit() {
            return true;
        }
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| w.checked_sub(1));
        false
    }

    /// Lets up to `n` waiters go (under the lock): how many it picked.
    pub fn notify(&self, n: u32) -> u32 {
        let waiting = self.waiting.load(Ordering::SeqCst);
        let k = waiting.min(n);
        if k > 0 {
            self.waiting.fetch_sub(k, Ordering::SeqCst);
            // Release: pairs with `take_permit`'s Acquire.
            self.permits.fetch_add(k, Ordering::Release);
            self.bell.ring();
        }
        k
    }

    /// Waiters counted in and not yet picked (for diagnostics and tests).
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A waiter as a Condition's `wait` runs it: in under the lock, wait without it,
    /// settle under it.
    fn wait(lock: &Mutex<()>, cv: &SharedCondvar, deadline: Option<Instant>) -> bool {
        let g = lock.lock().unwrap();
        cv.enter();
        drop(g);
        let got = cv.wait(deadline, &mut || true).unwrap();
        let _g = lock.lock().unwrap();
        got || cv.leave_unnotified()
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
            assert_eq!(cv.notify(3), 3);
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(
            woken.load(Ordering::SeqCst),
            3,
            "three notified, one timed out"
        );
        assert_eq!((cv.waiting(), cv.permits.load(Ordering::SeqCst)), (0, 0));
    }

    #[test]
    fn a_notify_with_no_waiters_is_not_kept_for_later_ones() {
        let lock = Mutex::new(());
        let cv = SharedCondvar::default();
        assert_eq!(cv.notify(1), 0);
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!wait(&lock, &cv, Some(soon)));
    }
}
