//! A lock that a fork can hold open. The process's bookkeeping of arena views is taken
//! before `fork()` and released on both sides after it, so a child never inherits it held
//! by a thread that does not exist there (a std `Mutex` can only be released by its
//! guard, which the forking thread cannot keep across the Python hooks).
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct ForkLock<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a guard, and `held` admits one guard at a time.
unsafe impl<T: Send> Sync for ForkLock<T> {}

impl<T> ForkLock<T> {
    pub(crate) fn new(value: T) -> Self {
        ForkLock {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (held only for map look-ups and arena bookkeeping, and across a
    /// fork: a yield, not a sleep, while another thread has it). `wait` runs each wait: a
    /// caller holding the GIL releases it there, for the forking thread may need the GIL
    /// (to run other at-fork hooks) before it lets go.
    pub(crate) fn lock_with(&self, wait: impl Fn(&(dyn Fn() + Sync))) -> ForkGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            let held = &self.held;
            wait(&|| {
                while held.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
            });
        }
    }

    fn try_lock(&self) -> Option<ForkGuard<'_, T>> {
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(ForkGuard { lock: self })
    }

    /// Keeps the lock taken by `guard` past the guard: until `release_after_fork`.
    pub(crate) fn hold_for_fork(guard: ForkGuard<'_, T>) {
        std::mem::forget(guard);
    }

    /// Releases the lock `hold_for_fork` kept, in the parent and in the child.
    pub(crate) fn release_after_fork(&self) {
        self.held.store(false, Ordering::Release);
    }
}

pub(crate) struct ForkGuard<'a, T> {
    lock: &'a ForkLock<T>,
}

impl<T> Deref for ForkGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (see `lock`).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for ForkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard is the only one (see `lock`).
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for ForkGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
    }
}
