//! The descriptors beside a pipe's channel. A socket pair, one end per connection: the
//! kernel tells each end when the other is closed everywhere (by `close` or by death).
//! An eventfd per direction: readable while the receiver may have data, for a receiver
//! that waits on a descriptor (`select`, `connection.wait`) rather than the data bell.
use std::os::fd::BorrowedFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::{read, write, Errno};

/// Whether the peer's end of socket `fd` is closed everywhere (or the socket failed),
/// without waiting.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => true,
    }
}

/// Makes eventfd `fd` readable (never blocks: a counter near overflow is readable anyway).
pub fn poke(fd: BorrowedFd<'_>) {
    let _ = write(fd, &1u64.to_ne_bytes());
}

/// Makes eventfd `fd` unreadable until the next poke (it must be non-blocking).
pub fn drain_pokes(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    loop {
        match read(fd, &mut buf) {
            Err(Errno::INTR) => continue,
            _ => return,
        }
    }
}
