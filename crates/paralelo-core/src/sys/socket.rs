//! The socket beside a pipe's channel: the kernel tells each end when the other is gone
//! (every copy of its descriptor closed, by `close` or by death), and a receiver that
//! waits on the descriptor (`select`, `connection.wait`) is woken by a byte on it.
use std::os::fd::BorrowedFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{recv, send, RecvFlags, SendFlags};

/// Writes one wake-up byte to the peer, never blocking: a full socket is readable anyway.
pub fn poke(fd: BorrowedFd<'_>) {
    let _ = send(fd, &[0], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// Whether the peer's end is closed everywhere (or the socket failed), without waiting.
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

/// Reads away the wake-up bytes waiting on `fd`, never blocking.
pub fn drain_pokes(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = recv(fd, &mut buf, RecvFlags::DONTWAIT) {
        if n < buf.len() {
            break;
        }
    }
}
