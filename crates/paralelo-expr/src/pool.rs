//! The threads expressions run on: a rayon pool of this process's own. rayon's global
//! pool, made before a fork, has no threads in the child, and the child's first
//! parallel call would wait on them for ever (a pool's worker calling `evaluate` after
//! its parent did); a pool made by another process is left alone and a new one made.
//! Its size is one thread per CPU the process may run on unless set (`set_threads`,
//! numexpr's `set_num_threads`); a pool of each size asked for is made once and kept,
//! so that a caller switching sizes back and forth starts no threads each time.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

static OWNER: AtomicU32 = AtomicU32::new(0);
static POOL: AtomicPtr<rayon::ThreadPool> = AtomicPtr::new(std::ptr::null_mut());
/// Threads asked for; 0 for one per CPU.
static WANT: AtomicUsize = AtomicUsize::new(0);
/// Pools made, by the process that made them and the size asked for.
static MADE: Mutex<Vec<(u32, usize, &'static rayon::ThreadPool)>> = Mutex::new(Vec::new());

/// This process's pool, made on first use.
pub fn threads() -> &'static rayon::ThreadPool {
    let me = std::process::id();
    let current = POOL.load(Ordering::Acquire);
    if OWNER.load(Ordering::Acquire) == me && !current.is_null() {
        // SAFETY: a pool stored by this process is one of `MADE`'s, leaked: it lives for
        // ever.
        return unsafe { &*current };
    }
    let want = WANT.load(Ordering::Acquire);
    let pool = made(me, want);
    // (two threads racing here store the same pool, or one of two sizes being set)
    POOL.store(pool as *const _ as *mut _, Ordering::Release);
    OWNER.store(me, Ordering::Release);
    pool
}

/// Runs expressions on `n` threads from now on (0: one per CPU); the number it ran on.
pub fn set_threads(n: usize) -> usize {
    let before = current_threads();
    WANT.store(n, Ordering::Release);
    // (made, or taken again from `MADE`, when next needed)
    POOL.store(std::ptr::null_mut(), Ordering::Release);
    before
}

/// How many threads expressions run on (without starting them).
pub fn current_threads() -> usize {
    match WANT.load(Ordering::Acquire) {
        // (rayon's own default: RAYON_NUM_THREADS, else the CPUs this process may use)
        0 => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n: &usize| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// The pool of `want` threads this process made, made now if there is none: leaked, as
/// a pool another process made (before a fork) is never dropped here, its threads not
/// being ours.
fn made(me: u32, want: usize) -> &'static rayon::ThreadPool {
    // (Tried, not waited for: a child forked while another of its parent's threads held
    // the list would wait for ever. Whoever fails to take it makes a pool uncounted.)
    let mut made = MADE.try_lock().ok();
    if let Some(made) = &made {
        if let Some((_, _, pool)) = made.iter().find(|(pid, n, _)| *pid == me && *n == want) {
            return pool;
        }
    }
    let pool: &'static rayon::ThreadPool = Box::leak(Box::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("paralelo-expr-{i}"))
            .build()
            .expect("cannot start the expression engine's threads"),
    ));
    if let Some(made) = &mut made {
        made.push((me, want, pool));
    }
    pool
}
