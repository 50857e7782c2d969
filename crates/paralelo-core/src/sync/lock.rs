//! A lock in shared memory that threads of any process take and release: one futex word
//! holding the holder's id and a waiters bit, and the depth of a recursive hold. Never a
//! system call when uncontended; a holder that dies is found by its waiters, not waited
//! on for ever. See `README.md` beside this file.
use std::time::{Duration, Instant};

use crate::primitive::{AtomicU32, Ordering};
use crate::sync::doorbell::{Poll, SLICE};
use crate::sys::{futex, thread};
use crate::{Error, Result};

/// Set in the word while a waiter may be asleep on it: the release must wake one.
const WAITERS: u32 = 1 << 31;
/// Set by a waiter that has waited [`STARVE_AFTER`]: the next release hands the lock
/// to a sleeper ([`HANDOFF`]) instead of freeing it. Without it, a holder that takes the
/// lock again at once after each release (`while True: with lock: ...`) always wins the
/// race against the sleeper it woke, which can wait for seconds.
const STARVING: u32 = 1 << 30;
/// The holder's id (Linux pids and tids stay below 2^22).
const HOLDER: u32 = STARVING - 1;
/// The word of a lock released to its sleepers: held by no one, and taken only by a
/// waiter that has slept on it (an acquire that comes along meanwhile waits its turn).
const HANDOFF: u32 = WAITERS;
/// How long a waiter waits before it asks for the lock to be handed to the sleepers.
/// (Under loom: at once, so the models explore the hand-off.)
#[cfg(not(loom))]
const STARVE_AFTER: Duration = Duration::from_millis(2);
#[cfg(loom)]
const STARVE_AFTER: Duration = Duration::ZERO;
/// How long a contended acquire spins before it sleeps: about what sleeping costs (a
/// futex round trip is ≈ 21 µs here, and then every release by the holder pays a wake
/// call until the sleeper has the lock), so spinning never costs more than twice the best.
#[cfg(not(loom))]
const SPIN: Duration = Duration::from_micros(20);
/// When a spinning waiter first looks at a held lock again, and the longest it goes
/// between two looks (the gap doubles). Each look pulls the lock's cache line away from
/// the holder, whose next release or re-acquire must fetch it back; and a holder that
/// loops (`with lock: v.value += 1` in two processes) leaves the lock free for a third of
/// its turn, so a waiter that looks often takes it at nearly every turn, and both then
/// pay the line's trip each time. Looking rarely, the lock changes hands in runs and the
/// holder runs at its own speed: Value increments from two processes went from 1.4 to
/// 3.2 million/s here (`bench/bench_ipc.py value`), a single process's 3.4.
#[cfg(not(loom))]
const FIRST_LOOK: Duration = Duration::from_nanos(500);
#[cfg(not(loom))]
const LONGEST_GAP: Duration = Duration::from_micros(8);
/// A waiter that slept this long in one go looks whether the holder is still alive (a
/// system call: not for every wake-up of a busy lock).
const LOOK_AFTER: Duration = Duration::from_millis(10);

/// Bumped in a forked child (see [`forget_caller_ids`]): the ids cached before are its parent's.
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// (`FORKS` when cached, pid, tid) of this thread: asking the kernel costs a system
    /// call each time, more than a whole uncontended acquire.
    static IDS: std::cell::Cell<(u64, u32, u32)> = const { std::cell::Cell::new((u64::MAX, 0, 0)) };
}

/// The calling process's pid and thread's tid, as lock holder ids.
pub fn caller_ids() -> (u32, u32) {
    let forks = FORKS.load(std::sync::atomic::Ordering::Relaxed);
    IDS.with(|ids| {
        let (seen, pid, tid) = ids.get();
        if seen == forks {
            return (pid, tid);
        }
        let (pid, tid) = thread::ids();
        ids.set((forks, pid, tid));
        (pid, tid)
    })
}

/// This process's pid, cached process-wide (0: not yet, or forgotten at a fork): a plain
/// lock's holder id without the thread-local lookup `caller_ids` makes (a call into the
/// loader's TLS resolver from a shared library, on every acquire).
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The calling process's pid, as a plain lock's holder id.
pub fn caller_pid() -> u32 {
    match PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let (pid, _) = caller_ids();
            PID.store(pid, std::sync::atomic::Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Call in a forked child, before any lock is taken: the cached ids are its parent's.
pub fn forget_caller_ids() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Plain data: lives in shared memory; zero-initialised is a free lock. Its holder is
/// named by an id the caller gives: a thread's tid for a recursive lock (only that thread
/// may release it), its process's pid for a plain one (any thread of any process may
/// release it). A lock whose holder died is taken by its next waiter
/// ([`Taken::FromDead`]), which is told.
#[repr(C)]
#[derive(Default)]
pub struct SharedLock {
    /// The holder's id, or 0 when free; `WAITERS` set while someone may sleep on it.
    word: AtomicU32,
    /// How many times the holder of a recursive lock took it (only the holder writes it).
    depth: AtomicU32,
}

/// How an acquire got the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// It was free.
    Free,
    /// The caller held it already (a recursive lock): one level deeper.
    Again,
    /// Its holder had died holding it: what it guarded may be half-updated.
    FromDead { holder: u32 },
}

impl SharedLock {
    /// Bytes a lock takes in shared memory.
    pub const SIZE: usize = std::mem::size_of::<SharedLock>();

    /// Takes the lock if it is free (or, recursive, ours): None otherwise. (A dead holder
    /// is looked for only by `acquire`: that costs a system call.)
    pub fn try_acquire(&self, me: u32, recursive: bool) -> Option<Taken> {
        debug_assert!(me != 0 && me & WAITERS == 0, "an id is a pid or tid");
        let cur = self.word.load(Ordering::Relaxed);
        if recursive && cur & HOLDER == me {
            // Only the holder writes `depth`, and we are it.
            self.depth.fetch_add(1, Ordering::Relaxed);
            return Some(Taken::Again);
        }
        // Acquire: pairs with the Release swap in `release`, so what the last holder
        // wrote under the lock is visible to us.
        if cur == 0
            && self
                .word
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            self.depth.store(1, Ordering::Relaxed);
            return Some(Taken::Free);
        }
        None
    }

    /// Takes the lock, waiting until `deadline` ([`Error::Timeout`]) in slices of at most
    /// [`SLICE`], between which `poll` runs ([`Error::Interrupted`] when it says stop) and
    /// the holder's liveness is checked.
    pub fn acquire(
        &self,
        me: u32,
        recursive: bool,
        deadline: Option<Instant>,
        poll: Poll<'_>,
    ) -> Result<Taken> {
        if let Some(taken) = self.try_acquire(me, recursive) {
            return Ok(taken);
        }
        #[cfg(not(loom))]
        if deadline.is_none_or(|d| d > Instant::now()) {
            let start = Instant::now();
            let stop = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
            let (mut gap, mut next) = (FIRST_LOOK, start + FIRST_LOOK);
            loop {
                while Instant::now() < next {
                    for _ in 0..8 {
                        std::hint::spin_loop();
                    }
                }
                if self.word.load(Ordering::Relaxed) == 0 {
                    if let Some(taken) = self.try_acquire(me, recursive) {
                        return Ok(taken);
                    }
                }
                if next >= stop {
                    break;
                }
                gap = (gap * 2).min(LONGEST_GAP);
                next += gap;
            }
        }
        let (mut looked, mut slept, began) = (false, false, Instant::now());
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur == 0 || (cur == HANDOFF && slept) {
                // Free, or handed to the sleepers and we are one: taken with the waiters
                // bit, since others may be asleep, and our release must wake one of them.
                // Acquire: as in `try_acquire`.
                if self
                    .word
                    .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.depth.store(1, Ordering::Relaxed);
                    return Ok(Taken::Free);
                }
                continue;
            }
            let mut want = cur | WAITERS;
            if slept && cur & HOLDER != 0 && began.elapsed() >= STARVE_AFTER {
                want |= STARVING; // (the next release hands it to a sleeper)
            }
            if want != cur
                && self
                    .word
                    .compare_exchange(cur, want, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let slice = match deadline {
                None => SLICE,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    // Out of time: unless its holder is dead (then it is ours).
                    _ => {
                        if let Some(taken) = self.take_from_dead(want, me, recursive) {
                            return Ok(taken);
                        }
                        self.give_up();
                        return Err(Error::Timeout);
                    }
                },
            };
            if !looked {
                // Before the first sleep: a holder that died holding it is found now, not
                // after a whole slice.
                looked = true;
                if let Some(taken) = self.take_from_dead(want, me, recursive) {
                    return Ok(taken);
                }
            }
            let asleep = Instant::now();
            // Sleeps only while the word is still what we saw: a release in between
            // changed it, and the wait returns at once.
            futex::wait(&self.word, want, slice);
            slept = true;
            // (never under loom, where every holder lives: a model must replay the same
            // steps each time, whatever the machine's speed)
            if !cfg!(loom) && asleep.elapsed() >= LOOK_AFTER.min(slice) {
                // Held that long: is its holder still there?
                let now = self.word.load(Ordering::Relaxed);
                if let Some(taken) = self.take_from_dead(now, me, recursive) {
                    return Ok(taken);
                }
            }
            if !poll() {
                self.give_up();
                return Err(Error::Interrupted);
            }
        }
    }

    /// A waiter leaves without the lock (its time ran out, or Ctrl-C): its ask for a
    /// hand-off goes with it (a waiter still starving asks again at its next wake-up), a
    /// hand-off no sleeper took yet is freed (it could be the one meant for us), and a
    /// wake-up we may have taken is passed on to the next sleeper, which finds the lock
    /// free or held by someone whose release will wake one.
    fn give_up(&self) {
        self.word.fetch_and(!STARVING, Ordering::Relaxed);
        let _ = self
            .word
            .compare_exchange(HANDOFF, 0, Ordering::Relaxed, Ordering::Relaxed);
        futex::wake_one(&self.word);
    }

    /// Takes the lock without waiting if it is free, ours (recursive), or a recursive
    /// lock whose holder died: `acquire(block=False)`. Never marks itself a waiter.
    pub fn try_acquire_or_recover(&self, me: u32, recursive: bool) -> Option<Taken> {
        self.try_acquire(me, recursive).or_else(|| {
            let cur = self.word.load(Ordering::Relaxed);
            // A hand-off is taken too: `acquire(False)` never finds a lock held by no one
            // refused (one whose sleepers all left would stay so until someone blocks).
            // Acquire: as in `try_acquire`.
            if cur == HANDOFF
                && self
                    .word
                    .compare_exchange(HANDOFF, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.depth.store(1, Ordering::Relaxed);
                return Some(Taken::Free);
            }
            self.take_from_dead(cur, me, recursive)
        })
    }

    /// Takes the lock from a dead holder (the word read as `cur`), with the waiters bit
    /// set (others may sleep on it, whether or not `cur` said so). A plain lock's holder
    /// is a process: one that ended holding it (killed, or gone without releasing) left
    /// it abandoned. (Another process that meant to release it for the dead one is not
    /// told: a plain lock's release does not look at its holder. If the lock is free by
    /// then it gets `NotHeld`; if someone took it meanwhile, that hold is released.)
    fn take_from_dead(&self, cur: u32, me: u32, _recursive: bool) -> Option<Taken> {
        let holder = cur & HOLDER;
        if holder == 0 || holder == me || thread::exists(holder) {
            return None;
        }
        // Acquire: as in `try_acquire` (whatever the dead holder published is seen).
        self.word
            .compare_exchange(cur, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.depth.store(1, Ordering::Relaxed);
        Some(Taken::FromDead { holder })
    }

    /// Releases one level of the lock (a recursive lock, only by its holder, `me`; a plain
    /// one by anyone, and `me` is not looked at): true once it is free. [`Error::NotHeld`] if it was not held; [`Error::NotOwner`] if a recursive
    /// lock is held by someone else.
    pub fn release(&self, me: u32, recursive: bool) -> Result<bool> {
        if recursive {
            if self.word.load(Ordering::Relaxed) & HOLDER != me {
                return Err(Error::NotOwner);
            }
            let depth = self.depth.load(Ordering::Relaxed);
            if depth > 1 {
                self.depth.store(depth - 1, Ordering::Relaxed);
                return Ok(false);
            }
        }
        let mut prev = self.word.load(Ordering::Relaxed);
        loop {
            if prev & HOLDER == 0 {
                return Err(Error::NotHeld); // (free, or handed to the sleepers already)
            }
            // A starving waiter asked for it: to the sleepers, not to whoever comes next.
            let next = if prev & STARVING != 0 { HANDOFF } else { 0 };
            self.depth.store(0, Ordering::Relaxed);
            // Release: pairs with the Acquire of the next acquire, publishing what we wrote.
            match self
                .word
                .compare_exchange_weak(prev, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => prev = now,
            }
        }
        if prev & WAITERS != 0 {
            futex::wake_one(&self.word);
        }
        Ok(true)
    }

    /// Releases every level of a recursive lock `me` holds (one of a plain one): how many
    /// there were, for [`restore_depth`](Self::restore_depth) once it is taken again (a
    /// condition variable's wait).
    pub fn release_all(&self, me: u32, recursive: bool) -> Result<u32> {
        let depth = if recursive {
            if self.word.load(Ordering::Relaxed) & HOLDER != me {
                return Err(Error::NotOwner);
            }
            self.depth.swap(1, Ordering::Relaxed).max(1)
        } else {
            1
        };
        self.release(me, recursive)?;
        Ok(depth)
    }

    /// Sets the depth of a recursive lock `me` has just taken (see `release_all`).
    pub fn restore_depth(&self, me: u32, depth: u32) {
        if self.word.load(Ordering::Relaxed) & HOLDER == me {
            self.depth.store(depth.max(1), Ordering::Relaxed);
        }
    }

    /// Whether it is held by a thread or process that no longer exists (the next
    /// acquire takes it over, as abandoned). A look costs system calls.
    pub fn abandoned(&self) -> bool {
        self.holder().is_some_and(|h| !thread::exists(h))
    }

    /// The holder's id, or None when free.
    pub fn holder(&self) -> Option<u32> {
        match self.word.load(Ordering::Relaxed) & HOLDER {
            0 => None,
            id => Some(id),
        }
    }

    /// How many times the holder of a recursive lock took it (0 when free).
    pub fn depth(&self) -> u32 {
        if self.holder().is_some() {
            self.depth.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn never_stop() -> bool {
        true
    }

    #[test]
    fn a_plain_lock_excludes_and_may_be_released_by_anyone() {
        let lock = SharedLock::default();
        assert_eq!(lock.try_acquire(7, false), Some(Taken::Free));
        assert_eq!(lock.holder(), Some(7));
        assert_eq!(lock.try_acquire(std::process::id(), false), None);
        // A plain lock is a semaphore: another holder id may release it.
        assert!(lock.release(std::process::id(), false).unwrap());
        assert!(matches!(lock.release(7, false), Err(Error::NotHeld)));
    }

    #[test]
    fn a_recursive_lock_counts_and_only_its_holder_releases() {
        let me = std::process::id();
        let lock = SharedLock::default();
        assert_eq!(lock.try_acquire(me, true), Some(Taken::Free));
        assert_eq!(lock.try_acquire(me, true), Some(Taken::Again));
        assert_eq!(lock.depth(), 2);
        assert!(matches!(lock.release(me + 1, true), Err(Error::NotOwner)));
        assert!(!lock.release(me, true).unwrap());
        assert!(lock.release(me, true).unwrap());
        assert_eq!(lock.depth(), 0);
        assert!(matches!(lock.release(me, true), Err(Error::NotOwner)));
    }

    #[test]
    fn a_dead_holders_lock_is_taken_and_reported() {
        // An id no thread has: pid_max is at most 2^22.
        let dead = (1 << 22) + 5;
        let me = std::process::id();
        let mut poll = never_stop;
        let plain = SharedLock::default();
        assert_eq!(plain.try_acquire(dead, false), Some(Taken::Free));
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(
            plain.acquire(me, false, soon, &mut poll).unwrap(),
            Taken::FromDead { holder: dead }
        );
        assert!(plain.release(me, false).unwrap());
        assert_eq!(plain.try_acquire(dead, false), Some(Taken::Free));
        assert_eq!(
            plain.try_acquire_or_recover(me, false),
            Some(Taken::FromDead { holder: dead })
        );
        let lock = SharedLock::default();
        assert_eq!(lock.try_acquire(dead, true), Some(Taken::Free));
        let taken = lock.acquire(me, true, None, &mut poll).unwrap();
        assert_eq!(taken, Taken::FromDead { holder: dead });
        assert_eq!(lock.holder(), Some(me));
        assert!(lock.release(me, true).unwrap());
        assert_eq!(lock.try_acquire(dead, true), Some(Taken::Free));
        assert_eq!(
            lock.try_acquire_or_recover(me, true),
            Some(Taken::FromDead { holder: dead })
        );
    }

    #[test]
    fn a_timed_acquire_times_out_and_an_interrupted_one_stops() {
        let me = std::process::id();
        let lock = SharedLock::default();
        lock.try_acquire(me, false).unwrap();
        let mut poll = never_stop;
        let t = Instant::now();
        let got = lock.acquire(
            me,
            false,
            Some(Instant::now() + Duration::from_millis(30)),
            &mut poll,
        );
        assert!(matches!(got, Err(Error::Timeout)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let mut stop = || false;
        let got = lock.acquire(
            me,
            false,
            Some(Instant::now() + Duration::from_secs(5)),
            &mut stop,
        );
        assert!(matches!(got, Err(Error::Interrupted)));
    }

    #[test]
    fn a_hand_off_no_sleeper_takes_goes_to_the_next_waiter_after_a_slice() {
        // The sleeper a hand-off was for may be gone (killed): the next acquire gets it
        // once it has slept a slice, and a non-blocking one at once.
        let lock = SharedLock::default();
        lock.word.store(HANDOFF, Ordering::Relaxed);
        assert_eq!(lock.try_acquire(5, false), None);
        assert!(matches!(lock.release(5, false), Err(Error::NotHeld)));
        assert_eq!(lock.try_acquire_or_recover(5, false), Some(Taken::Free));
        assert!(lock.release(5, false).unwrap());
        lock.word.store(HANDOFF, Ordering::Relaxed);
        let mut poll = never_stop;
        let t = Instant::now();
        assert_eq!(
            lock.acquire(5, false, None, &mut poll).unwrap(),
            Taken::Free
        );
        assert!(t.elapsed() >= SLICE);
        assert!(lock.release(5, false).unwrap());
        assert_eq!(lock.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_starving_waiter_that_gives_up_leaves_no_hand_off_behind() {
        let lock = SharedLock::default();
        assert_eq!(lock.try_acquire(7, false), Some(Taken::Free));
        let mut poll = never_stop;
        // Sleeps a slice (50 ms), asks for a hand-off, then runs out of time.
        let soon = Some(Instant::now() + SLICE + Duration::from_millis(30));
        assert!(matches!(
            lock.acquire(8, false, soon, &mut poll),
            Err(Error::Timeout)
        ));
        assert_eq!(lock.word.load(Ordering::Relaxed) & STARVING, 0);
        assert!(lock.release(7, false).unwrap());
        assert_eq!(lock.word.load(Ordering::Relaxed), 0); // free, not handed to no one
        assert_eq!(lock.try_acquire(9, false), Some(Taken::Free));
    }

    #[test]
    fn threads_hammering_one_lock_never_overlap() {
        let lock = Arc::new(SharedLock::default());
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, inside) = (lock.clone(), inside.clone());
                std::thread::spawn(move || {
                    let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
                    let mut poll = never_stop;
                    for _ in 0..20_000 {
                        lock.acquire(me, true, None, &mut poll).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        assert!(lock.release(me, true).unwrap());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lock.holder(), None);
    }
}
