"""``breakpoint()`` in a worker or a ``paralelo.Process``: a pdb session on the terminal
the program runs in, one process's session at a time.

A worker's stdin is /dev/null (as with multiprocessing), where pdb would read an end of
file and quit the task. Here the hook opens the controlling terminal (``/dev/tty``) for
pdb's input and output, and takes an exclusive lock on that terminal's device (``flock``)
while the session stops the process, so that two workers never read the same keystrokes.
A session that continues with breakpoints set lets go of the lock until one of them is
hit: another worker's session may run meanwhile. With no terminal
(a service, CI), it says so on stderr, naming the process, and the task goes on.
``PYTHONBREAKPOINT`` is honoured as Python honours it (``0`` turns breakpoints off).
"""

from __future__ import annotations

import fcntl
import os
import pdb
import sys
from typing import Any

__all__ = ["install"]


class _TerminalPdb(pdb.Pdb):
    """pdb on `tty`, holding its lock (taken by the caller) while it stops the process."""

    def __init__(self, tty_in: Any, tty_out: Any, lock: int, who: str) -> None:
        super().__init__(stdin=tty_in, stdout=tty_out)
        self.use_rawinput = False  # (input() would read stdin, not the terminal)
        self.ttys: tuple[Any, ...] = (tty_in, tty_out)
        self.lock = lock
        self.who = who
        self.held = True

    def interaction(self, frame: Any, tb: Any) -> None:
        if self.ttys and not self.held:  # a breakpoint hit after a `continue`
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            self.held = True
            print(f"\n--- pdb in {self.who} ---", file=self.ttys[1], flush=True)
        super().interaction(frame, tb)

    def _end(self) -> None:
        ttys, self.ttys = self.ttys, ()
        if ttys:
            try:
                os.close(self.lock)  # (and its flock with it)
            finally:
                for tty in ttys:
                    tty.close()

    def set_continue(self) -> None:
        super().set_continue()
        if not self.breaks:
            self._end()
        elif self.held:  # (the session goes on at the next breakpoint: the terminal is free till then)
            self.held = False
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def set_quit(self) -> None:
        super().set_quit()
        self._end()


_told = False  # this process said why its breakpoints are skipped


def _hook(*args: Any, **kwargs: Any) -> None:
    if os.environ.get("PYTHONBREAKPOINT"):
        return sys.__breakpointhook__(*args, **kwargs)  # (0, or the user's own hook)
    import multiprocessing

    who = f"{multiprocessing.current_process().name} (pid {os.getpid()})"
    try:
        tty_in = open("/dev/tty")
    except OSError:
        tty_in = None
    try:
        tty_out = open("/dev/tty", "w") if tty_in is not None else None
    except OSError:
        tty_in.close()  # type: ignore[union-attr]
        tty_out = None
    if tty_in is None or tty_out is None:
        global _told
        if not _told:  # (once a process: a map's every item may hit it)
            _told = True
            hint = (" Run the pool inline (Pool(inline=True), or PARALELO_INLINE=1) to debug in the calling "
                    "process." if who.startswith(("ForkPoolWorker", "ForkProcess")) else "")
            print(f"paralelo: breakpoint() in {who} skipped (and any more in it): no terminal to debug on."
                  f"{hint}", file=sys.stderr, flush=True)
        return None
    # One session at a time on this terminal: locked on the terminal's own device
    # (/dev/tty is one node for every terminal of the machine).
    try:
        lock = os.open(os.ttyname(tty_in.fileno()), os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        lock = os.dup(tty_in.fileno())
    fcntl.flock(lock, fcntl.LOCK_EX)
    print(f"\n--- pdb in {who} ---", file=tty_out, flush=True)
    _TerminalPdb(tty_in, tty_out, lock, who).set_trace(sys._getframe(1))
    return None


def install() -> None:
    """In a worker or child process: ``breakpoint()`` debugs on the terminal, unless the
    program (or an IDE's debugger) set a hook of its own."""
    if sys.breakpointhook is sys.__breakpointhook__:
        sys.breakpointhook = _hook
