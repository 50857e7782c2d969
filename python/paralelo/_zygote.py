"""The zygote: a single-threaded process that forks workers on request.

The parent never forks once it has threads (its collector thread, or the user's), because
a fork copies locks held by other threads. Instead, one zygote per parent process is made
while the parent is still single-threaded (forked: cheap, and it shares the parent's
imports), or — if the parent already has threads — started fresh with exec. Every worker
is then forked by the zygote, which never has threads.

Lifetime: the zygote exits (killing its workers) when the parent's end of its socket
closes, which happens even if the parent is SIGKILLed. Workers get SIGKILL from the kernel
when the zygote dies (PR_SET_PDEATHSIG), so nothing outlives the parent.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading

from . import _native

_lock = threading.Lock()
_zygote: Zygote | None = None


def _threads_in_process() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count() + 1


class Zygote:
    """The parent's handle on its zygote: ``spawn(fd, slot)`` → (pid, pidfd)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self._lock = threading.Lock()
        if _threads_in_process() == 1:
            pid = os.fork()
            if pid == 0:  # the zygote
                code = 0
                try:
                    ours.close()
                    _serve(theirs, threading.current_thread() is threading.main_thread())
                except BaseException:  # noqa: BLE001
                    code = 1
                finally:
                    os._exit(code)
            self.pid = pid
        else:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            on_main = threading.current_thread() is threading.main_thread()
            cmd = [
                sys.executable,
                "-c",
                "from paralelo._zygote import main; main()",
                str(theirs.fileno()),
                "1" if on_main else "0",
            ]
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=env, close_fds=True)
            self.pid = proc.pid
            self._proc = proc  # keeps the Popen so it is reaped
        theirs.close()

    def spawn(self, fd: int, slot: int) -> tuple[int, int]:
        """Forks a worker attached to ``slot`` of the hub whose memfd is ``fd``:
        returns its pid and a pidfd."""
        pid, fds = self._ask(("spawn", slot), [fd])
        if not fds:  # SCM_RIGHTS truncated: this process is out of file descriptors
            raise OSError(errno.EMFILE, "cannot receive a worker's pidfd: too many open files")
        return pid, fds[0]

    def alive(self) -> bool:
        """Whether the zygote process still runs."""
        proc = getattr(self, "_proc", None)
        if proc is not None:
            return proc.poll() is None
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def exit_status(self, pid: int) -> int | None:
        """The wait status of a worker that has exited (its pidfd said so), or None if the
        zygote no longer knows it."""
        status, _ = self._ask(("status", pid), [])
        return status

    def _ask(self, request: tuple, fds: list[int]) -> tuple:
        with self._lock:
            socket.send_fds(self.sock, [pickle.dumps(request)], fds)
            msg, got, _flags, _addr = socket.recv_fds(self.sock, 1024, 1)
        if not msg:
            raise OSError("paralelo's zygote process exited; cannot start workers")
        answer = pickle.loads(msg)
        if isinstance(answer, BaseException):
            raise answer
        return answer, got


def describe_exit(status: int | None) -> str:
    """Words for a wait status: 'killed by SIGKILL', 'exited with code 3'."""
    if status is None:
        return "it exited or was killed unexpectedly"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"it was killed by {name}"
    return f"it exited with code {os.WEXITSTATUS(status)}"


def get() -> Zygote:
    """This process's zygote, made on first use."""
    global _zygote
    with _lock:
        if _zygote is None or not _zygote.alive():
            if _zygote is not None:
                _zygote.sock.close()  # a dead zygote (killed?) is replaced, not reused
            _zygote = Zygote()
        return _zygote


def _forget_after_fork() -> None:
    # A forked child does not share its parent's zygote; it makes its own when needed.
    global _zygote, _lock
    _zygote = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


#: Exit statuses kept for the parent to ask about; older ones are dropped past this.
_KEEP_STATUSES = 4096


def _serve(sock: socket.socket, die_with_parent: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if die_with_parent:
        parent = os.getppid()
        _native.die_with_parent()
        if os.getppid() != parent:
            return
    statuses: dict[int, int] = {}  # reaped workers' wait statuses, oldest first
    # Workers die with us (PR_SET_PDEATHSIG), so returning is all the cleanup there is.
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1024, 4)
        except ConnectionResetError:
            return
        if not msg:
            return  # the parent is gone
        _reap(statuses)
        kind, arg = pickle.loads(msg)
        if kind == "status":
            status = statuses.pop(arg, None)
            if status is None:
                try:  # its pidfd said it exited: this returns at once
                    status = os.waitpid(arg, 0)[1]
                except ChildProcessError:
                    status = None
            sock.send(pickle.dumps(status))
            continue
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            sock.send(pickle.dumps(e))
            continue
        if pid == 0:
            sock.close()
            _native.die_with_parent()
            if os.getppid() != me:
                os._exit(1)
            from . import _worker

            _worker.main(fds[0], arg)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        socket.send_fds(sock, [pickle.dumps(pid)], [pidfd])
        os.close(pidfd)


def _reap(statuses: dict[int, int]) -> None:
    """Collects every exited worker (no zombies pile up between requests)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = status
        if len(statuses) > _KEEP_STATUSES:
            del statuses[next(iter(statuses))]


def main() -> None:
    """Entry point of an exec'ed zygote (used when the parent already had threads)."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        _serve(sock, die_with_parent=sys.argv[2] == "1")
    finally:
        os._exit(0)
