//! An event in shared memory: a flag that threads of any process set, clear and wait for.
use std::time::Instant;

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Doorbell, Poll};
use crate::{Error, Result};

/// Plain data: lives in shared memory; zero-initialised is a clear event.
#[repr(C)]
#[derive(Default)]
pub struct SharedEvent {
    /// 1 while set.
    flag: AtomicU32,
    _pad: u32,
    bell: Doorbell,
}

impl SharedEvent {
    /// Bytes an event takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedEvent>();

    pub fn is_set(&self) -> bool {
        // Acquire: pairs with `set`'s Release (what the setter wrote before is seen).
        self.flag.load(Ordering::Acquire) == 1
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if self.flag.swap(1, Ordering::Release) == 0 {
            self.bell.ring();
        }
    }

    pub fn clear(&self) {
        self.flag.store(0, Ordering::Relaxed);
    }

    /// Waits until the flag is set (true) or `deadline` passes (false), in slices between
    /// which `poll` runs ([`Error::Interrupted`]).
    pub fn wait(&self, deadline: Option<Instant>, poll: Poll<'_>) -> Result<bool> {
        match self.bell.wait_until(|| self.is_set(), deadline, poll) {
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
}
