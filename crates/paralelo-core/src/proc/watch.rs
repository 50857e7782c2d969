//! A process-wide death watch: one thread sleeps in epoll on the pidfds of every watched
//! process and runs a callback the moment one exits. So the engine learns of a death at
//! once (and rings whatever doorbell the callback rings) without anyone polling.
//!
//! The thread runs only while something is watched: it exits when the last watch fires
//! or is cancelled, so a program whose pools are all closed is single-threaded again (and
//! can fork safely). After a fork the child starts its own thread on first use (the
//! parent's did not come along) and forgets the parent's registrations.
//!
//! Fork and the `WATCHER` lock: the lock is taken only by `watch`, `unwatch` and
//! `release_if_idle`, which the bindings call with Python's GIL held, and a Python
//! `os.fork` also holds the GIL; so a fork never copies the lock held (the thread itself
//! never takes it).
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::event::{epoll, eventfd, EventfdFlags};
use rustix::io::Errno;

use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

type OnExit = Box<dyn FnOnce() + Send>;

/// A registration; pass it to [`unwatch`] to cancel it before the process exits.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Watch(u64);

/// The epoll key of the eventfd that wakes the thread to look at its registrations.
const NUDGE: u64 = 0;
/// The next watch id (never NUDGE); a std atomic: the watch is not loom-modelled.
static NEXT_ID: AtomicU64 = AtomicU64::new(NUDGE + 1);

#[derive(Default)]
struct Registry {
    /// id -> the pidfd (kept open while watched) and what to run when it fires.
    entries: HashMap<u64, (OwnedFd, OnExit)>,
    /// A thread is serving this watcher (it clears this, under the lock, as it exits).
    serving: bool,
    /// The thread hit an error it cannot serve past: start afresh on next use.
    broken: bool,
}

struct Watcher {
    /// The process this watcher (and its thread) belongs to.
    owner: u32,
    epoll: OwnedFd,
    nudge: OwnedFd,
    registry: Mutex<Registry>,
}

static WATCHER: Mutex<Option<Arc<Watcher>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is an insert, a remove or a flag: never half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's watcher, if it has a working one.
fn current() -> Option<Arc<Watcher>> {
    let me = std::process::id();
    lock(&WATCHER)
        .as_ref()
        .filter(|w| w.owner == me && !lock(&w.registry).broken)
        .cloned()
}

fn watcher() -> Result<Arc<Watcher>> {
    if let Some(w) = current() {
        return Ok(w);
    }
    let mut slot = lock(&WATCHER);
    // None yet, one inherited through fork, or a broken one: dropping it closes its fds
    // (and, in a child, the parent's pidfds in this process).
    let epoll =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::os("epoll_create", e))?;
    let nudge = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| Error::os("eventfd", e))?;
    epoll::add(
        &epoll,
        nudge.as_fd(),
        epoll::EventData::new_u64(NUDGE),
        epoll::EventFlags::IN,
    )
    .map_err(|e| Error::os("epoll_ctl(ADD) on an eventfd", e))?;
    let w = Arc::new(Watcher {
        owner: std::process::id(),
        epoll,
        nudge,
        registry: Mutex::default(),
    });
    *slot = Some(w.clone());
    Ok(w)
}

impl Watcher {
    /// Starts the serving thread if none runs. Called with the registry locked.
    fn ensure_serving(self: &Arc<Self>, reg: &mut Registry) -> Result<()> {
        if reg.serving {
            return Ok(());
        }
        let run = self.clone();
        std::thread::Builder::new()
            .name("paralelo-deaths".into())
            .spawn(move || run.serve())
            .map_err(|e| Error::os("spawn the death-watch thread", e))?;
        reg.serving = true;
        Ok(())
    }

    fn serve(&self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => {
                    // Cannot happen with our own valid epoll fd; if it does, stop serving
                    // and let the next watch start a fresh watcher rather than go deaf.
                    let mut reg = lock(&self.registry);
                    reg.broken = true;
                    reg.serving = false;
                    return;
                }
            }
            for ev in &events {
                let key = ev.data.u64();
                if key == NUDGE {
                    let _ = rustix::io::read(&self.nudge, &mut [0u8; 8]);
                    continue;
                }
                let entry = lock(&self.registry).entries.remove(&key);
                if let Some((pidfd, on_exit)) = entry {
                    let _ = epoll::delete(&self.epoll, &pidfd);
                    drop(pidfd);
                    on_exit();
                }
            }
            let mut reg = lock(&self.registry);
            if reg.entries.is_empty() {
                reg.serving = false; // a later watch starts another thread
                return;
            }
        }
    }
}

/// Runs `on_exit` (on the watch thread: it must be quick and must not block) once the
/// process behind `pidfd` has exited; at once if it already has. The pidfd is duplicated.
pub fn watch(pidfd: BorrowedFd<'_>, on_exit: impl FnOnce() + Send + 'static) -> Result<Watch> {
    let w = watcher()?;
    let fd = pidfd
        .try_clone_to_owned()
        .map_err(|e| Error::os("dup pidfd", e))?;
    // Ids are never reused in this process, across watchers: a handle kept from a watcher
    // that was let go (`release_if_idle`) must never cancel a later watcher's entry.
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // Registered before it is armed, so the thread finds the entry when the event comes.
    let mut reg = lock(&w.registry);
    epoll::add(
        &w.epoll,
        fd.as_fd(),
        epoll::EventData::new_u64(id),
        epoll::EventFlags::IN,
    )
    .map_err(|e| Error::os("epoll_ctl(ADD) on a pidfd", e))?;
    reg.entries.insert(id, (fd, Box::new(on_exit)));
    if let Err(e) = w.ensure_serving(&mut reg) {
        if let Some((fd, _)) = reg.entries.remove(&id) {
            let _ = epoll::delete(&w.epoll, &fd);
        }
        return Err(e);
    }
    Ok(Watch(id))
}

/// Cancels a watch; `true` if it had not fired yet (its callback will never run).
pub fn unwatch(watch: Watch) -> bool {
    // Only this process's own watcher: in a forked child the parent's registrations are
    // gone with its thread, and starting a watcher just to cancel one would be waste.
    let Some(w) = current() else { return false };
    let mut reg = lock(&w.registry);
    let Some((pidfd, _)) = reg.entries.remove(&watch.0) else {
        return false;
    };
    let _ = epoll::delete(&w.epoll, &pidfd);
    if reg.entries.is_empty() && reg.serving {
        // Wake the thread so it sees it has nothing left to watch, and exits.
        let _ = rustix::io::write(&w.nudge, &1u64.to_ne_bytes());
    }
    true
}

/// Whether `watch` has neither fired nor been cancelled yet.
pub fn watching(watch: &Watch) -> bool {
    current().is_some_and(|w| lock(&w.registry).entries.contains_key(&watch.0))
}

/// In a forked child: lets go of the watcher inherited from the parent, closing the
/// parent's pidfds it held, its epoll fd and its eventfd (this process never uses them).
/// When the parent's watch thread was running at the fork, that thread's reference came
/// along (the thread did not), so the watcher can never be dropped here: its fds are
/// closed by hand and it is abandoned. Does nothing in the process that made the watcher.
pub fn forget_inherited() {
    let me = std::process::id();
    let inherited = {
        let mut slot = lock(&WATCHER);
        if slot.as_ref().is_some_and(|w| w.owner != me) {
            slot.take()
        } else {
            None
        }
    };
    let Some(w) = inherited else { return };
    // The lock may have been copied held by the parent's thread: then leave it be.
    if let Ok(mut reg) = w.registry.try_lock() {
        reg.entries.clear(); // closes the pidfds; the callbacks only drop references
    }
    if Arc::strong_count(&w) > 1 {
        // The only other reference is the absent thread's: abandoned, never dropped, so
        // these are the only closes of its two fds.
        crate::sys::fd::close_abandoned(w.epoll.as_fd());
        crate::sys::fd::close_abandoned(w.nudge.as_fd());
        std::mem::forget(w);
    }
}

/// Lets go of this process's watcher if it watches nothing: its epoll fd and eventfd
/// close once its thread, which is ending, drops its reference too. So a program whose
/// pools all ended holds no fd of ours; the next watch makes a new watcher. Call it, as
/// `watch` and `unwatch`, only with the GIL held (the `WATCHER` lock and fork: see above).
pub fn release_if_idle() {
    let mut slot = lock(&WATCHER);
    if slot
        .as_ref()
        .is_some_and(|w| lock(&w.registry).entries.is_empty())
    {
        slot.take();
    }
}

/// Whether this process holds a watcher (its epoll fd and eventfd): for tests.
pub fn holds_watcher() -> bool {
    lock(&WATCHER).is_some()
}

/// Whether this process's death-watch thread is running (for tests and diagnostics).
pub fn serving() -> bool {
    current().is_some_and(|w| lock(&w.registry).serving)
}
