//! The threads expressions run on: a rayon pool of this process's own. rayon's global
//! pool, made before a fork, has no threads in the child, and the child's first
//! parallel call would wait on them for ever (a pool's worker calling `evaluate` after
//! its parent did); a pool made by another process is left alone and a new one made.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

static OWNER: AtomicU32 = AtomicU32::new(0);
static POOL: AtomicPtr<rayon::ThreadPool> = AtomicPtr::new(std::ptr::null_mut());

/// This process's pool, made on first use (one thread per CPU it may run on).
pub fn threads() -> &'static rayon::ThreadPool {
    let me = std::process::id();
    let current = POOL.load(Ordering::Acquire);
    if OWNER.load(Ordering::Acquire) == me && !current.is_null() {
        // SAFETY: a pool stored by this process is leaked, so it lives for ever.
        return unsafe { &*current };
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("paralelo-expr-{i}"))
        .build()
        .expect("cannot start the expression engine's threads");
    // Leaked: a pool another process made (before a fork) is never dropped here, its
    // threads not being ours; two threads racing here each leak one, and one is kept.
    let fresh: *mut rayon::ThreadPool = Box::into_raw(Box::new(pool));
    match POOL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            OWNER.store(me, Ordering::Release);
            // SAFETY: just stored, and leaked: it lives for ever.
            unsafe { &*fresh }
        }
        // SAFETY: another thread of this process stored its own (leaked) pool first.
        Err(won) => unsafe { &*won },
    }
}
