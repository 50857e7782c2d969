//! A process-wide death watch: one thread sleeps in epoll on the pidfds of every watched
//! process and runs a callback the moment one exits. So the engine learns of a death at
//! once (and rings whatever doorbell the callback rings) without anyone polling.
//!
//! The thread is started on first use, in each process: after a fork the child starts its
//! own (the parent's thread did not come along) and forgets the parent's registrations.
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::event::epoll;
use rustix::io::Errno;

use crate::primitive::{AtomicU64, Ordering};
use crate::{Error, Result};

type OnExit = Box<dyn FnOnce() + Send>;

/// A registration; pass it to [`unwatch`] to cancel it before the process exits.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Watch(u64);

struct Watcher {
    /// The process this watcher (and its thread) belongs to.
    owner: u32,
    epoll: OwnedFd,
    /// id -> the pidfd (kept open while watched) and what to run when it fires.
    entries: Mutex<HashMap<u64, (OwnedFd, OnExit)>>,
    next_id: AtomicU64,
}

static WATCHER: Mutex<Option<Arc<Watcher>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is an insert or a remove: never half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn watcher() -> Result<Arc<Watcher>> {
    let mut slot = lock(&WATCHER);
    let me = std::process::id();
    if let Some(w) = slot.as_ref().filter(|w| w.owner == me) {
        return Ok(w.clone());
    }
    // None yet, or one inherited through fork whose thread did not come along: dropping it
    // closes the inherited epoll fd and the parent's pidfds in this process.
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::os("epoll_create", e))?;
    let w = Arc::new(Watcher {
        owner: me,
        epoll,
        entries: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    let run = w.clone();
    std::thread::Builder::new()
        .name("paralelo-deaths".into())
        .spawn(move || run.serve())
        .map_err(|e| Error::os("spawn the death-watch thread", e))?;
    *slot = Some(w.clone());
    Ok(w)
}

impl Watcher {
    fn serve(&self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), None) {
                Ok(_) | Err(Errno::INTR) => {}
                // The epoll fd is ours and valid: anything else is a bug, not a condition.
                Err(e) => panic!("epoll_wait failed: {e}"),
            }
            for ev in &events {
                let data = ev.data;
                let entry = lock(&self.entries).remove(&data.u64());
                if let Some((pidfd, on_exit)) = entry {
                    let _ = epoll::delete(&self.epoll, &pidfd);
                    drop(pidfd);
                    on_exit();
                }
            }
        }
    }
}

/// Runs `on_exit` (on the watch thread: it must be quick and must not block) once the
/// process behind `pidfd` has exited; at once if it already has. The pidfd is duplicated.
pub fn watch(pidfd: BorrowedFd<'_>, on_exit: impl FnOnce() + Send + 'static) -> Result<Watch> {
    let w = watcher()?;
    let fd = pidfd.try_clone_to_owned().map_err(|e| Error::os("dup pidfd", e))?;
    let id = w.next_id.fetch_add(1, Ordering::Relaxed);
    // Registered before it is armed, so the thread finds the entry when the event comes.
    let mut entries = lock(&w.entries);
    epoll::add(&w.epoll, fd.as_fd(), epoll::EventData::new_u64(id), epoll::EventFlags::IN)
        .map_err(|e| Error::os("epoll_ctl(ADD) on a pidfd", e))?;
    entries.insert(id, (fd, Box::new(on_exit)));
    Ok(Watch(id))
}

/// Cancels a watch; `true` if it had not fired yet (its callback will never run).
pub fn unwatch(watch: Watch) -> bool {
    let Ok(w) = watcher() else { return false };
    let entry = lock(&w.entries).remove(&watch.0);
    match entry {
        Some((pidfd, _)) => {
            let _ = epoll::delete(&w.epoll, &pidfd);
            true
        }
        None => false,
    }
}
