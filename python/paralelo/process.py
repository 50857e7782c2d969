"""``multiprocessing.Process`` on paralelo: the same class, started by paralelo's fork.

``Process`` is a ``multiprocessing.process.BaseProcess``, so everything the standard
library builds on it holds as it is: names and identities, ``current_process()`` (from
either library), ``active_children()``, daemonic children terminated and the others
joined at exit, exit codes from ``run()``'s outcome (``sys.exit``, an exception printed
as ``Process <name>:`` and a traceback). What paralelo changes is how a process starts
and is watched (with the default start method, 'fork'):

- it is forked by the engine's one fork path (`_zygote.fork_here`), which flushes stdio
  first and holds Ctrl-C off until the child is held by its pidfd; a Ctrl-C that lands
  as ``start()`` ends kills and reaps that child, so an interrupted ``start()`` leaves
  no unwatched child;
- its ``sentinel`` is a pidfd (readable once it exits: ``connection.wait`` and
  ``select`` take it), and it is reaped, signalled and waited on through that pidfd,
  never by pid, so a pid reused after its exit is never mistaken for it;
- its parent's sentinel (``parent_process()``) is a pidfd on the parent too;
- a process started from the main thread is killed by the kernel if its parent dies
  without ending it (SIGKILL, ``os._exit``): it never outlives the program. (The kernel
  ties this to the forking *thread*, so a process started from another thread is not
  tied: that thread may end first.)

The 'spawn' and 'forkserver' start methods start a ``Process`` the standard library's
way (a fresh interpreter, or a fork server): their child unpickles the process object.
"""

from __future__ import annotations

import multiprocessing.process as _mp_process
import multiprocessing.util as _mp_util
import os
import signal
from _signal import pthread_sigmask as _sigmask  # (signal's wrapper makes enum sets: 20 µs a call)
import threading
from typing import Any, Callable, NoReturn

from . import _arena, _breakpoint, _channels, _native, _output, _zygote
from .context import get_start_method

__all__ = ["Process", "active_children", "current_process", "parent_process"]


class _ForkPopen:
    """What ``BaseProcess.start()`` makes with the 'fork' method (the standard library's
    ``popen_fork.Popen`` interface): a child forked here, held by its pidfd."""

    method = "fork"

    def __init__(self, process_obj: _mp_process.BaseProcess) -> None:
        self.returncode: int | None = None
        self.pid = 0
        self.sentinel = -1

        def keep(pid: int, pidfd: int) -> None:
            self.pid, self.sentinel = pid, pidfd

        tied = threading.current_thread() is threading.main_thread()
        # What the child logs through the handlers it inherits reaches the parent's (see
        # `_output.Relay`).
        logs = _output.relay()
        ids = logs.forking() if logs is not None else frozenset()
        try:
            _zygote.fork_here(lambda _fds, parent, mask: _run(process_obj, parent, mask, tied, logs, ids), [], keep)
        except BaseException:
            # Ctrl-C as `start()` ends (raised as the signal mask is restored): the process
            # object keeps no Popen, so the child would run unwatched. It is ended instead.
            if self.sentinel >= 0:
                try:
                    signal.pidfd_send_signal(self.sentinel, signal.SIGKILL)
                    _zygote.reap(self.sentinel, wait=True)
                finally:
                    os.close(self.sentinel)
            raise
        self.logs = logs
        if logs is not None:
            logs.expect(self.pid)
        self.finalizer = _mp_util.Finalize(self, os.close, (self.sentinel,))

    def duplicate_for_child(self, fd: int) -> int:
        return fd  # a forked child has the parent's fds already

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The exit code if the process ended (reaping it), else None; waits for it
        with ``flag=0``."""
        if self.returncode is None:
            status = _zygote.reap(self.sentinel, wait=flag == 0)
            if status is None or status == _zygote.REAPED_ELSEWHERE:
                return None  # (reaped by someone else's waitpid: as multiprocessing, unknown)
            self.returncode = os.waitstatus_to_exitcode(status)
            if self.returncode < 0:
                _arena.reclaim_dead()  # killed: what it held in the arena goes now
            if self.logs is not None:
                self.logs.joined(self.pid, self.returncode < 0)  # (its last records first)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            if timeout is not None:
                from multiprocessing.connection import wait

                if not wait([self.sentinel], timeout):
                    return None
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.sentinel, sig)
            except ProcessLookupError:
                pass  # it exited already (a zombie until reaped)

    def terminate(self) -> None:
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self.finalizer is not None:
            self.finalizer()


def _run(process_obj: _mp_process.BaseProcess, parent: int, mask: set, tied: bool,
         logs: _output.Relay | None, ids: frozenset[int]) -> NoReturn:
    """A forked ``Process``'s whole life: it exits with ``run()``'s exit code."""
    code = 1
    try:
        _sigmask(signal.SIG_SETMASK, mask)  # Ctrl-C raises here, as in the parent
        if tied:
            _native.die_with_parent()
        try:
            sentinel = os.pidfd_open(parent)
        except OSError:
            sentinel = -1
        if sentinel < 0 or os.getppid() != parent:
            # The parent died before we were tied to it (its pid may be reused already).
            os.write(2, b"paralelo: the parent of a starting process died\n")
            os._exit(1)
        _output.whole_lines()
        _breakpoint.install()
        if logs is not None:
            _output.forward_logging(ids, logs.send)
        code = process_obj._bootstrap(parent_sentinel=sentinel)  # type: ignore[attr-defined]
    finally:
        if logs is not None:
            try:
                logs.close()
            except BaseException:  # noqa: BLE001 - (the parent then waits a moment, no more)
                pass
        try:
            _arena.leave()  # (os._exit runs no finalizer: its views go now, not at a sweep)
        finally:
            os._exit(code)


def _popen_for(method: str) -> Callable[[_mp_process.BaseProcess], Any]:
    if method == "fork":
        return _ForkPopen
    if method == "spawn":
        from multiprocessing.popen_spawn_posix import Popen as SpawnPopen

        return SpawnPopen  # type: ignore[no-any-return]
    from multiprocessing.popen_forkserver import Popen as ForkServerPopen

    return ForkServerPopen  # type: ignore[no-any-return]


class Process(_mp_process.BaseProcess):
    """A process running ``target(*args, **kwargs)``, or the ``run()`` of a subclass:
    ``multiprocessing.Process``'s API (``start``, ``join``, ``is_alive``, ``exitcode``,
    ``pid``, ``sentinel``, ``terminate``, ``kill``, ``close``, ``name``, ``daemon``),
    started with the start method set (``set_start_method``; 'fork' by default)."""

    _start_method: str | None = None

    @staticmethod
    def _Popen(process_obj: _mp_process.BaseProcess) -> Any:
        method: str = process_obj._start_method or get_start_method() or "fork"  # type: ignore[attr-defined]
        popen = _popen_for(method)(process_obj)
        _channels.close_passed(popen)  # (started: the child has its copies of the channels passed)
        return popen


class ForkProcess(Process):
    """A ``Process`` started by fork, whatever the default start method."""

    _start_method = "fork"


class SpawnProcess(Process):
    """A ``Process`` started in a fresh interpreter (the standard library's spawn)."""

    _start_method = "spawn"


class ForkServerProcess(Process):
    """A ``Process`` started by the standard library's fork server."""

    _start_method = "forkserver"


PROCESS_FOR_METHOD: dict[str, type[Process]] = {
    "fork": ForkProcess, "spawn": SpawnProcess, "forkserver": ForkServerProcess,
}


def current_process() -> _mp_process.BaseProcess:
    """The object for the process this runs in (the same as multiprocessing's)."""
    return _mp_process.current_process()


def parent_process() -> _mp_process.BaseProcess | None:
    """The object for this process's parent, None in the main process."""
    return _mp_process.parent_process()


def active_children() -> list[_mp_process.BaseProcess]:
    """This process's children still running (those that ended are reaped)."""
    return _mp_process.active_children()
