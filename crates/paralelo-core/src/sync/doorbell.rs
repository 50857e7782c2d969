//! A doorbell: a futex word in shared memory that waiters sleep on and producers ring.
//!
//! A producer only makes a system call when someone sleeps (`sleepers > 0`), so a busy
//! ring costs no wake-ups at all. Waiters spin briefly first: on this machine a futex
//! wake costs ≈ 21 µs, a spin that succeeds well under 1 µs.
use crate::primitive::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{sys::futex, Error, Result};

/// Spinning this long costs less than one futex round trip and lets the peer answer.
#[cfg(not(loom))]
const SPIN: Duration = Duration::from_micros(4);
/// After spinning, yield the core this long: on two cores the peer we wait for may need it.
#[cfg(not(loom))]
const YIELD: Duration = Duration::from_micros(30);
/// The longest single sleep; between sleeps the caller's [`Poll`] runs (signals, liveness).
/// (Under loom the modelled futex has no timeout: a sleep ends only when rung.)
pub const SLICE: Duration = Duration::from_millis(50);

/// Plain data: lives in shared memory, zero-initialised is a valid idle doorbell.
/// (Not under `--cfg loom`, where its atomics are loom objects that must be constructed:
/// `Default` is an idle doorbell there.)
#[repr(C)]
#[derive(Default)]
pub struct Doorbell {
    /// Bumped by every ring that finds a sleeper; the futex word.
    seq: AtomicU32,
    /// How many waiters are registered (about to sleep or asleep).
    sleepers: AtomicU32,
}

/// What a waiter does between sleep slices: `true` to keep waiting, `false` to stop
/// (the wait then returns [`Error::Interrupted`]).
pub type Poll<'a> = &'a mut dyn FnMut() -> bool;

impl Doorbell {
    /// Wakes the waiters, if any. Call after publishing what they wait for.
    #[inline]
    pub fn ring(&self) {
        // Pairs with the SeqCst fence in `wait_until`: either the waiter's re-check sees
        // what we published, or we see its registration here and wake it.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            // Release: pairs with the Acquire load of `seq` in `wait_until`.
            self.seq.fetch_add(1, Ordering::Release);
            futex::wake_all(&self.seq);
        }
    }

    /// Wakes one waiter, if any: for what only one of them can take (a semaphore's
    /// unit), so a release does not wake every waiter for all but one to sleep again. The
    /// futex wakes a waiter that is asleep, which then re-checks; one that leaves while
    /// the thing is free rings on (see `SharedSemaphore::acquire`).
    #[inline]
    pub fn ring_one(&self) {
        // As in `ring`.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            futex::wake_one(&self.seq);
        }
    }

    /// How many waiters are registered (asleep, or about to be): for diagnostics and tests.
    pub fn sleepers(&self) -> u32 {
        self.sleepers.load(Ordering::Relaxed)
    }

    /// Forgets registered sleepers. Only for a bell whose only possible sleeper is a
    /// process known to be dead: its registration would otherwise make every later ring
    /// pay a futex syscall.
    pub fn forget_sleepers(&self) {
        self.sleepers.store(0, Ordering::SeqCst);
    }

    /// Waits until `ready()` holds, the deadline passes ([`Error::Timeout`]) or `poll`
    /// says stop ([`Error::Interrupted`]); `poll` runs before the first sleep and after
    /// each slice.
    pub fn wait_until(
        &self,
        ready: impl Fn() -> bool,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<()> {
        if ready() {
            return Ok(());
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Error::Timeout); // a look, not a wait: no spin
        }
        // The spin is timed, and a model must replay the same steps each time: under loom
        // a waiter goes straight to the futex, the only part of the protocol at stake.
        #[cfg(not(loom))]
        {
            let start = Instant::now();
            loop {
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return Err(Error::Timeout); // (a short deadline bounds the spin too)
                }
                let spent = now - start;
                if spent >= SPIN + YIELD {
                    break;
                }
                if spent < SPIN {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                if ready() {
                    return Ok(());
                }
            }
        }
        // Before the first sleep too (not only after a whole slice): a waiter whose
        // peer is already gone, or whose Ctrl-C came during the spin, stops now.
        if !poll() {
            return Err(Error::Interrupted);
        }
        loop {
            let slice = match deadline {
                None => SLICE,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    _ => return Err(Error::Timeout),
                },
            };
            // Acquire: pairs with the Release bump in `ring`.
            let seen = self.seq.load(Ordering::Acquire);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            // Pairs with the fence in `ring` (see there).
            fence(Ordering::SeqCst);
            let now_ready = ready();
            if !now_ready {
                futex::wait(&self.seq, seen, slice);
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            if now_ready || ready() {
                return Ok(());
            }
            if !poll() {
                return Err(Error::Interrupted);
            }
        }
    }
}
