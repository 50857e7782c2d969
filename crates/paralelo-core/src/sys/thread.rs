//! Whether a thread or process still exists, by its id (a pid or a tid).
#[cfg(not(loom))]
use rustix::{io::Errno, process::Pid};

/// True unless no live thread or process has id `id`: a signal-0 probe (EPERM, someone
/// else's, still counts as existing), then its state, since a zombie (exited, not yet
/// reaped: a killed child whose parent has not joined it) still answers the probe. A
/// holder whose id was reused reads as alive.
#[cfg(not(loom))]
pub(crate) fn exists(id: u32) -> bool {
    let Some(pid) = i32::try_from(id).ok().and_then(Pid::from_raw) else {
        return false;
    };
    if matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)) {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')' (comm may hold any byte).
    match std::fs::read(format!("/proc/{id}/stat")) {
        Ok(stat) => {
            let state = stat
                .iter()
                .rposition(|&b| b == b')')
                .and_then(|end| stat.get(end + 2));
            !matches!(state, Some(b'Z' | b'X'))
        }
        Err(_) => true, // (no /proc to look in: the probe said it exists)
    }
}

/// True if no thread or process has id `id` any more (reaped): a signal-0 probe only,
/// a tenth of `exists`'s cost, for hot paths where a zombie may pass for alive.
#[cfg(not(loom))]
pub(crate) fn reaped(id: u32) -> bool {
    let Some(pid) = i32::try_from(id).ok().and_then(Pid::from_raw) else {
        return true;
    };
    matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// When process `pid` started (clock ticks after boot, /proc's field 22), or None if it
/// cannot be read: with the pid, it names a process even after its pid is reused.
#[cfg(not(loom))]
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // Fields after comm: state is field 3, so start time is the 20th after the ')'.
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(end + 2..)?).ok()?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// This process's pid and this thread's tid, from the kernel.
pub(crate) fn ids() -> (u32, u32) {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    (pid, tid)
}

/// Under loom every holder lives: the models are about the word's protocol.
#[cfg(loom)]
pub(crate) fn exists(_id: u32) -> bool {
    true
}

#[cfg(loom)]
pub(crate) fn reaped(_id: u32) -> bool {
    false
}
