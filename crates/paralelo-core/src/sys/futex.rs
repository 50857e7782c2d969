//! Futex wait and wake on words in *shared* memory: never `FUTEX_PRIVATE`, which would key
//! the wait on this process's address space and never see another process's wake.
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// Sleeps while `*word == expected`, at most `timeout`. Spurious returns are fine: callers loop.
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
pub(crate) fn wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, Flags::empty(), i32::MAX as u32);
}
