//! Futex wait and wake on words in *shared* memory: never `FUTEX_PRIVATE`, which would key
//! the wait on this process's address space and never see another process's wake.
//!
//! Under `--cfg loom` the futex is modelled (see `loom_futex` below) so that a lost
//! wake-up hangs the model, which loom reports as a deadlock.
#[cfg(loom)]
pub(crate) use loom_futex::{wait, wake_all, wake_one};

#[cfg(not(loom))]
use std::sync::atomic::AtomicU32;
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use rustix::io::Errno;
#[cfg(not(loom))]
use rustix::thread::futex::{self, Flags, Timespec};

/// Sleeps while `*word == expected`, at most `timeout`. Spurious returns are fine: callers loop.
#[cfg(not(loom))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    match futex::wait(word, Flags::empty(), expected, Some(&ts)) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) | Err(Errno::TIMEDOUT) => {}
        // Anything else means the word is not a valid futex address: a bug, not a condition.
        Err(e) => panic!("futex wait failed: {e}"),
    }
}

/// Wakes every waiter on `word`.
#[cfg(not(loom))]
pub(crate) fn wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, Flags::empty(), i32::MAX as u32);
}

/// Wakes one waiter on `word` (a lock's release: only one can take it).
#[cfg(not(loom))]
pub(crate) fn wake_one(word: &AtomicU32) {
    let _ = futex::wake(word, Flags::empty(), 1);
}

/// The futex as loom sees it. The kernel checks the word and queues the waiter atomically
/// with respect to wakes (both under its hash-bucket lock); here one mutex plays that lock
/// and one condition variable every futex queue. Wakes on one word reach waiters on
/// others too, which is a spurious return the protocol allows. What the model must not
/// do is return when the real futex would not: there is no timeout, so a waiter whose
/// wake-up was lost sleeps for ever and loom reports the deadlock.
#[cfg(loom)]
mod loom_futex {
    use std::time::Duration;

    use loom::sync::{Condvar, Mutex};

    use crate::primitive::{AtomicU32, Ordering};

    loom::lazy_static! {
        static ref QUEUE: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    /// Sleeps while `*word == expected`, until some wake. `timeout` is ignored (see above).
    pub(crate) fn wait(word: &AtomicU32, expected: u32, _timeout: Duration) {
        let (lock, queue) = &*QUEUE;
        let guard = lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        drop(queue.wait(guard).unwrap());
    }

    /// Wakes every waiter (on every word).
    pub(crate) fn wake_all(_word: &AtomicU32) {
        let (lock, queue) = &*QUEUE;
        let _guard = lock.lock().unwrap();
        queue.notify_all();
    }

    /// Wakes one waiter (on any word: the lock's models wait on one word only, so this
    /// is exact there, and a lost hand-over of a wake-up shows as a deadlock).
    pub(crate) fn wake_one(_word: &AtomicU32) {
        let (lock, queue) = &*QUEUE;
        let _guard = lock.lock().unwrap();
        queue.notify_one();
    }
}
