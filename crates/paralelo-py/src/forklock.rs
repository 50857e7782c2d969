//! A lock that a fork can hold open. The process's bookkeeping of arena views is taken
//! before `fork()` and released on both sides after it, so a child never inherits it held
//! by a thread that does not exist there (a std `Mutex` can only be released by its
//! guard, which the forking thread cannot keep across the Python hooks). While it is held
//! across a fork, the forking thread may take it again (a view freed by a collection that
//! another at-fork hook set off, or in the child before the hooks ran): that thread is the
//! only one that touches it then, and it is the thread the child is made of.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub(crate) struct ForkLock<T> {
    held: AtomicBool,
    /// The thread holding it across a fork (see `me`), else 0.
    fork_owner: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a guard; `held` admits one guard at a time,
// except the forking thread's own while it holds the lock across a fork, when the held
// guard is forgotten (never dereferenced again) and that thread is the only one let in.
unsafe impl<T: Send> Sync for ForkLock<T> {}

thread_local! {
    static ME: u8 = const { 0 };
}

/// This thread, as a number that survives a fork in the thread that forked (the address
/// of a thread-local); 0 while the thread is being torn down.
fn me() -> usize {
    ME.try_with(|m| m as *const u8 as usize).unwrap_or(0)
}

impl<T> ForkLock<T> {
    pub(crate) fn new(value: T) -> Self {
        ForkLock {
            held: AtomicBool::new(false),
            fork_owner: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (held only for map look-ups and arena bookkeeping, and across a
    /// fork: a yield, not a sleep, while another thread has it). `wait` runs each wait: a
    /// caller holding the GIL releases it there, for the forking thread may need the GIL
    /// (to run other at-fork hooks) before it lets go.
    pub(crate) fn lock_with(&self, wait: impl Fn(&(dyn Fn() + Sync))) -> ForkGuard<'_, T> {
        let me = me();
        loop {
            if self
                .held
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return ForkGuard {
                    lock: self,
                    release: true,
                };
            }
            if me != 0 && self.fork_owner.load(Ordering::Acquire) == me {
                // The forking thread, again, while it holds the lock across the fork.
                return ForkGuard {
                    lock: self,
                    release: false,
                };
            }
            let (held, owner) = (&self.held, &self.fork_owner);
            wait(&|| {
                while held.load(Ordering::Relaxed)
                    && (me == 0 || owner.load(Ordering::Relaxed) != me)
                {
                    std::thread::yield_now();
                }
            });
        }
    }

    /// Keeps the lock taken by `guard` past the guard, for this thread: until
    /// `release_after_fork`.
    pub(crate) fn hold_for_fork(guard: ForkGuard<'_, T>) {
        if guard.release {
            guard.lock.fork_owner.store(me(), Ordering::Release);
            std::mem::forget(guard);
        }
    }

    /// Releases the lock `hold_for_fork` kept, in the parent and in the child.
    pub(crate) fn release_after_fork(&self) {
        self.fork_owner.store(0, Ordering::Relaxed);
        self.held.store(false, Ordering::Release);
    }
}

pub(crate) struct ForkGuard<'a, T> {
    lock: &'a ForkLock<T>,
    /// False for the forking thread's re-entry: the hold across the fork stays.
    release: bool,
}

impl<T> Deref for ForkGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only live one (see `Sync` above).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for ForkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard is the only live one (see `Sync` above).
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for ForkGuard<'_, T> {
    fn drop(&mut self) {
        if self.release {
            self.lock.held.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_keeps_other_threads_out_and_a_failed_try_releases_nothing() {
        let lock = ForkLock::new(0u32);
        let guard = lock.lock_with(|spin| spin());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                *lock.lock_with(|spin| spin()) += 1;
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "kept out while held");
            assert!(lock.held.load(Ordering::Relaxed));
            drop(guard);
        });
        assert_eq!(*lock.lock_with(|spin| spin()), 1);
    }

    #[test]
    fn across_a_fork_only_the_forking_thread_gets_in() {
        let lock = ForkLock::new(0u32);
        ForkLock::hold_for_fork(lock.lock_with(|spin| spin()));
        *lock.lock_with(|spin| spin()) += 1; // this thread, again: let in, still held after
        assert!(lock.held.load(Ordering::Relaxed));
        std::thread::scope(|s| {
            let other = s.spawn(|| *lock.lock_with(|spin| spin()));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !other.is_finished(),
                "another thread waits for the fork to end"
            );
            lock.release_after_fork();
            assert_eq!(other.join().unwrap(), 1);
        });
    }
}
