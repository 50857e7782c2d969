//! An event in shared memory: a flag that threads of any process set, clear and wait for.
use std::time::Instant;

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::{Error, Result};

/// Plain data: lives in shared memory; zero-initialised is a clear event.
#[repr(C)]
#[derive(Default)]
pub struct SharedEvent {
    /// Bit 0: set. The rest: how many `set`s there were, so that a waiter woken by a
    /// set that a `clear` undid before it looked still returns true, as with the
    /// standard library's. One word: a waiter sees a set's flag and its count at once
    /// (two words let a waiter take one set's late count for the next).
    word: AtomicU32,
    _pad: u32,
    bell: Doorbell,
}

const SET: u32 = 1;

impl SharedEvent {
    /// Bytes an event takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedEvent>();

    pub fn is_set(&self) -> bool {
        // Acquire: pairs with `set`'s Release (what the setter wrote before is seen).
        self.word.load(Ordering::Acquire) & SET != 0
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            let new = (w | SET).wrapping_add(2); // (the count, above the flag bit)
            match self
                .word
                .compare_exchange_weak(w, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        if w & SET == 0 {
            self.bell.ring();
        }
    }

    pub fn clear(&self) {
        self.word.fetch_and(!SET, Ordering::Relaxed);
    }

    /// Waits until the flag is set, or a set happened since the call (true), or
    /// `deadline` passes (false), in slices between which `poll` runs
    /// ([`Error::Interrupted`]).
    pub fn wait(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<bool> {
        let start = self.word.load(Ordering::Acquire) | SET;
        // Set now, or set since the start (the count moved: the word differs even with
        // the flag bit forced on).
        let done = || {
            let w = self.word.load(Ordering::Acquire);
            w & SET != 0 || w | SET != start
        };
        match self.bell.wait_until(done, deadline, poll) {
            Ok(()) => Ok(true),
            Err(Error::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn waiters_wake_when_it_is_set_and_time_out_while_it_is_clear() {
        let e = Arc::new(SharedEvent::default());
        let mut poll = || true;
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(!e.wait(soon, &mut poll).unwrap());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || e.wait(None, &mut || true).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(60));
        e.set();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        assert!(e.is_set());
        e.clear();
        assert!(!e.is_set());
    }

    #[test]
    fn a_set_cleared_at_once_still_wakes_who_waited() {
        let e = Arc::new(SharedEvent::default());
        let waiter = {
            let e = e.clone();
            std::thread::spawn(move || {
                e.wait(Some(Instant::now() + Duration::from_secs(5)), &mut || true)
            })
        };
        while e.bell.sleepers() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        e.set();
        e.clear();
        assert!(waiter.join().unwrap().unwrap(), "woken by the pulse");
    }
}
