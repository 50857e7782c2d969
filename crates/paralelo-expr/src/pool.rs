//! The threads expressions run on: a rayon pool of this process's own. rayon's global
//! pool, made before a fork, has no threads in the child, and the child's first
//! parallel call would wait on them for ever (a pool's worker calling `evaluate` after
//! its parent did); a pool made by another process is left alone and a new one made.
//! Its size is one thread per CPU the process may run on unless set (`set_threads`,
//! numexpr's `set_num_threads`). A pool replaced by one of another size ends its
//! threads once the calls running on it return.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// The current pool, the process that made it and the size asked for.
struct Current {
    pid: u32,
    want: usize,
    pool: Arc<rayon::ThreadPool>,
}

static CURRENT: ArcSwapOption<Current> = ArcSwapOption::const_empty();
/// Threads asked for; 0 for one per CPU.
static WANT: AtomicUsize = AtomicUsize::new(0);

/// This process's pool, made on first use and anew after its size is set.
pub fn threads() -> Arc<rayon::ThreadPool> {
    let (me, want) = (std::process::id(), WANT.load(Ordering::Acquire));
    if let Some(current) = &*CURRENT.load() {
        if current.pid == me && current.want == want {
            return current.pool.clone();
        }
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("paralelo-expr-{i}"))
            .build()
            .expect("cannot start the expression engine's threads"),
    );
    let made = Arc::new(Current {
        pid: me,
        want,
        pool: pool.clone(),
    });
    if let Some(old) = CURRENT.swap(Some(made)) {
        if old.pid != me {
            // (a parent's, before a fork: its threads are not ours to end, nor its memory
            // ours to free under them)
            std::mem::forget(old);
        }
    }
    pool
}

/// Runs expressions on `n` threads from now on (0: one per CPU); the number they ran on.
pub fn set_threads(n: usize) -> usize {
    let before = current_threads();
    WANT.store(n, Ordering::Release);
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
