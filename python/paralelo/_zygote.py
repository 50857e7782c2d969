"""A pool's zygote: a copy of the parent, forked when the pool is made, that forks the
pool's workers on request.

Workers must see the parent as it was when their pool was made (its globals, its
initializer's arguments, its cwd, environment, ``sys.path`` and logging), as with
multiprocessing's fork; but the parent has threads by then (its collectors, the user's,
numpy's), and its state moves on. So the parent forks once per pool, at its creation, and
the copy, which has exactly one thread, serves the pool: every later worker, first or
replacement, is forked from it, and so sees the same state (the very first may be forked
by the parent itself in the same moment: `fork_child`). It also holds, in memory, the
objects handed to ``Zygote(inherited)`` (the initializer and its arguments): they reach
the workers without being pickled, so objects that can only be inherited work.

Forking a threaded parent copies the locks other threads hold. paralelo's own threads
hold none of paralelo's locks a child takes: collectors and readers touch only their own
pool's state, which a child never uses (`_engine` disowns inherited pools); the death
watch (Rust) starts afresh in a child; cloudpickle's class tracker lock is renewed in the
child (`_pickling`), and logging re-creates its locks itself. User code (callbacks on a
collector, input iterators on a reader) and the user's own threads are as with
multiprocessing's fork: a lock one of them holds at that moment stays held in the workers.

Lifetime: the zygote exits when its parent closes the socket (the pool ended), or when
the parent process exits, which it learns from a pidfd on it, so even a SIGKILLed parent
leaves nothing behind. Its children get SIGKILL from the kernel when it dies
(PR_SET_PDEATHSIG). The parent's end of every zygote's socket is closed in forked
children, so only the parent holds it.

The socket speaks a small binary format (SOCK_SEQPACKET, one message per request):

    request  = op:u8  id:u32  length:u32  body    (little endian)
      SPAWN  body = entry (utf-8 "module:function") NUL pickle(args tuple); the fds travel
             as SCM_RIGHTS. The entry runs as ``entry(fds, inherited, *args)``, where
             ``fds`` ends with a pidfd on the zygote's parent (readable once it exits)
      STATUS body = pid:i32
    reply    = kind:u8  id:u32  value:i32  body (id: the request's, so a reply left over
               from an interrupted request is recognised and disposed of)
      PID     value = pid, with the child's pidfd as SCM_RIGHTS
      STATUS  value = the wait status of an exited child
      UNKNOWN the zygote knows no such child
      ERROR   value = errno, body = utf-8 message (a malformed, truncated or failed
              request; the zygote serves on)

A zygote made with ``first`` processes starts them before it reads any request and
answers them as PID replies to requests 1..N, unasked (the parent numbers its own requests
from N+1).
"""

from __future__ import annotations

import errno
import gc
import importlib
import os
import pickle
import select
import signal
from _signal import pthread_sigmask as _sigmask  # (signal's wrapper makes enum sets: 20 µs a call)
import socket
import struct
import sys
import time
import threading
import warnings
import weakref
from array import array
from typing import Any, Callable, NoReturn, Sequence

# (_arena first: its at-fork hooks are registered before this module's, so its `before`
# runs after ours takes `_making`, in every fork: one order for the two locks.)
from . import _arena  # noqa: F401
from . import _ending, _native

# Python 3.12+ warns on every fork of a threaded process; forking one is this module's
# design (see above), so the warning is silenced for this module's own fork only.
warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning,
                        module=__name__)

#: Every zygote this process made and has not closed: a forked child closes their sockets.
_zygotes: weakref.WeakSet[Zygote] = weakref.WeakSet()
#: Held from a zygote's socketpair until both ends are where they belong (ours in
#: `_zygotes`, theirs closed), and by every fork (`register_at_fork` below): so no other
#: thread's fork copies a socket end that its child would not know to close.
_making = threading.RLock()

_REQUEST = struct.Struct("<BII")
_REPLY = struct.Struct("<BIi")
#: Most fds one request passes.
_MAX_FDS = 16
SPAWN, STATUS = 1, 2
PID, EXIT_STATUS, UNKNOWN, ERROR = 1, 2, 3, 4
_MAX_MESSAGE = 1 << 16
#: A passed fd, as SCM_RIGHTS carries it.
_FD = array("i")


class Zygote:
    """The parent's handle on a zygote forked now, holding `inherited` (see the module).

    With `first` = ``(entry, [args, ...], fds)``, the zygote starts those processes as
    soon as it runs, as if asked by spawn requests 1, 2, ...: collect them, in order, with
    `first_spawned` (other requests may come between: their replies keep those). A pool's
    first workers so start without a round trip each to a zygote that is still starting
    (on two cores, about a millisecond each)."""

    def __init__(self, inherited: Any = None, first: tuple[str, list[tuple], list[int]] | None = None) -> None:
        entry, batch, fds = first or ("", [], [])
        self._expect(len(batch))
        parent = os.getpid()
        flush_stdio()
        with _making:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock = ours
            # The zygote's own copies of `fds`: made under `_making`, so no other thread's
            # fork copies them, and closed here once the zygote has them.
            given = [os.dup(fd) for fd in fds]
            try:
                pid = os.fork()
                if pid == 0:  # the zygote
                    code = 0
                    try:
                        ours.close()
                        _serve(theirs, parent, inherited, (entry, batch, given))
                        # (It holds the queues and pipes the parent had: it may be the
                        # last to, once its workers are gone.)
                        _ending.end()
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
            finally:
                for fd in given:
                    os.close(fd)
            theirs.close()
            self._took(pid)

    def _expect(self, first: int) -> None:
        """Readies the handle for the replies to the zygote's `first` processes."""
        self._lock = threading.Lock()
        self._next_id = first
        self._first = list(range(1, first + 1))  # replies to come unasked, in order
        self._early: dict[int, tuple[int, int, int, bytes, list[int]]] = {}  # read by another request

    def _took(self, pid: int) -> None:
        """The zygote is process `pid`, and `sock` is its socket: called under `_making`."""
        self.pid = pid
        # Reaped through this, never by pid: a user's waitpid(-1) may have taken it,
        # and its pid be another child's by then.
        self.pidfd = os.pidfd_open(pid)
        _zygotes.add(self)

    def close(self, wait: bool = True) -> None:
        """Ends the zygote (and any child it still has); with `wait`, reaps it too."""
        with self._lock:
            if self.sock.fileno() < 0:
                return
            _zygotes.discard(self)
            self.sock.close()
            for _kind, _answered, _value, _rest, got in self._early.values():
                for fd in got:  # pidfds of first processes nobody took
                    os.close(fd)
            self._early.clear()
        if wait:
            self.reap()

    def reap(self) -> None:
        """Waits for the closed zygote to exit (it does as soon as it sees its socket close,
        within its grace for its children: see `_Children.end`)."""
        if self.pidfd >= 0:
            fd, self.pidfd = self.pidfd, -1
            try:
                reap(fd, wait=True)
            finally:
                os.close(fd)

    def spawn(self, entry: str, args: tuple, fds: list[int]) -> tuple[int, int]:
        """Forks a process that runs ``entry(fds, inherited, *args)`` (``entry`` is
        "module:function"; ``fds`` are passed to it, followed by a pidfd on this process):
        returns its pid and a pidfd."""
        body = entry.encode() + b"\0" + pickle.dumps(tuple(args), pickle.HIGHEST_PROTOCOL)
        return self._pid_of(self._ask(SPAWN, body, fds))

    @staticmethod
    def _pid_of(reply: tuple[int, int, bytes, list[int]]) -> tuple[int, int]:
        kind, value, _, got = reply
        if kind != PID or not got:
            for fd in got:
                os.close(fd)
            if kind == PID:
                # No pidfd came (this process is out of fds): the child must not run on
                # unwatched. It is the zygote's and not yet reaped, so its pid is still its.
                os.kill(value, signal.SIGKILL)
                raise OSError(errno.EMFILE, "cannot receive a process's pidfd: too many open files")
            raise OSError(errno.EPROTO, f"paralelo's zygote answered {kind} to a spawn")
        return value, got[0]

    def first_spawned(self, wait: bool = False) -> tuple[int, int] | None:
        """The pid and a pidfd of the next of the processes given as `first`; without
        `wait`, None if the zygote has not started it yet."""
        with self._lock:
            reply = self._reply_to(self._first[0], 0 if wait else socket.MSG_DONTWAIT)
            if reply is None:
                return None
            self._first.pop(0)
        return self._pid_of(reply)

    def exit_status(self, pid: int) -> int | None:
        """The wait status of a process it started that has exited (its pidfd said so),
        or None if the zygote no longer knows it."""
        kind, value, _, _ = self._ask(STATUS, struct.pack("<i", pid), [])
        return value if kind == EXIT_STATUS else None

    def _ask(self, op: int, body: bytes, fds: list[int]) -> tuple[int, int, bytes, list[int]]:
        """Sends a request and waits for its reply."""
        if len(body) + _REQUEST.size > _MAX_MESSAGE or len(fds) > _MAX_FDS:
            raise ValueError(f"a zygote request carries at most {_MAX_MESSAGE - _REQUEST.size} "
                             f"bytes and {_MAX_FDS} fds")
        with self._lock:
            self._next_id = request = (self._next_id + 1) & 0xFFFFFFFF
            socket.send_fds(self.sock, [_REQUEST.pack(op, request, len(body)) + body], fds)
            reply = self._reply_to(request)
        assert reply is not None
        return reply

    def _reply_to(self, request: int, flags: int = 0) -> tuple[int, int, bytes, list[int]] | None:
        """Reads replies until the one to `request` (with MSG_DONTWAIT in `flags`: None if
        it has not come yet). A reply to a first process not collected yet is kept for
        `first_spawned`; any other is stale, and disposed of. Called with `_lock` held."""
        while True:
            reply = self._early.pop(request, None) or self._receive(flags)
            if reply is None:
                return None
            kind, answered, value, rest, got = reply
            if answered == request:
                break
            if answered in self._first:
                self._early[answered] = reply
            else:
                _dispose(kind, got)  # the reply to a request interrupted before it came
        if kind == ERROR:
            for fd in got:
                os.close(fd)
            raise OSError(value, rest.decode(errors="replace"))
        return kind, value, rest, got

    def _receive(self, flags: int) -> tuple[int, int, int, bytes, list[int]] | None:
        """The next reply, parsed, with the fds it carries (close-on-exec); None if none
        came yet (with MSG_DONTWAIT: `socket.recv_fds` ignores its flags before 3.13)."""
        try:
            msg, got, _dropped = receive(self.sock, _MAX_MESSAGE, 1, flags)  # (no pidfd: see `_pid_of`)
        except BlockingIOError:
            return None
        if len(msg) < _REPLY.size:
            for fd in got:
                os.close(fd)
            raise OSError("paralelo's zygote process exited; cannot start processes")
        kind, answered, value = _REPLY.unpack_from(msg)
        return kind, answered, value, msg[_REPLY.size:], got


def receive(sock: socket.socket, size: int, most_fds: int, flags: int = 0) -> tuple[bytes, list[int], bool]:
    """One message of at most `size` bytes from `sock`, with the descriptors it carries
    (at most `most_fds`, close-on-exec), and whether some were dropped (this process is
    out of descriptors, or more came)."""
    msg, ancillary, got_flags, _addr = sock.recvmsg(size, socket.CMSG_SPACE(most_fds * _FD.itemsize),
                                                    flags | socket.MSG_CMSG_CLOEXEC)
    got: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got.extend(array(_FD.typecode, data[:len(data) - len(data) % _FD.itemsize]))
    return msg, got, bool(got_flags & socket.MSG_CTRUNC)


def _dispose(kind: int, fds: list[int]) -> None:
    """A stale reply: a process spawned for a request nobody waits for any more is killed."""
    for fd in fds:
        if kind == PID:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        os.close(fd)


def describe_exit(status: int | None) -> str:
    """Words for a wait status: 'killed by SIGKILL', 'exited with code 3'."""
    if status is None or status == REAPED_ELSEWHERE:
        return "it exited or was killed unexpectedly"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"it was killed by {name}"
    return f"it exited with code {os.WEXITSTATUS(status)}"


def _forget_after_fork() -> None:
    # A forked child does not share its parent's zygotes: it closes its copies of their
    # sockets, so that each zygote sees its parent's end close with its pool.
    global _making
    _making = threading.RLock()
    for z in list(_zygotes):
        try:
            z.sock.close()
            if z.pidfd >= 0:
                os.close(z.pidfd)
                z.pidfd = -1
        except OSError:
            pass
    _zygotes.clear()


os.register_at_fork(before=lambda: _making.acquire(), after_in_parent=lambda: _making.release(),
                    after_in_child=_forget_after_fork)


#: How long an ending zygote waits for its killed children to be reaped.
END_GRACE = 5.0
#: Exit statuses kept for the parent to ask about; older ones are dropped past this.
_KEEP_STATUSES = 4096


def _resolve(entry: str) -> Any:
    module, _, name = entry.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _serve(sock: socket.socket, parent: int, inherited: Any, first: tuple[str, list[tuple], list[int]]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What came from the parent is permanent here and in every worker: their collections
    # never walk it (so never copy its pages), and garbage the parent's other threads
    # left half-made is never finalized in a process that has none of those threads.
    gc.freeze()
    try:
        parent_fd = os.pidfd_open(parent)
    except ProcessLookupError:
        return  # the parent is already gone
    if os.getppid() != parent:
        return  # it died (and its pid may be reused) before we watched it
    waiter = select.poll()
    waiter.register(sock.fileno(), select.POLLIN)
    waiter.register(parent_fd, select.POLLIN)
    children = _Children(waiter)
    try:
        entry, batch, given = first
        for request, args in enumerate(batch, 1):
            children.add(_spawn(sock, request, entry, args, [os.dup(fd) for fd in given], parent_fd, inherited,
                                [*given, *children.pids]))
        for fd in given:
            os.close(fd)
        _serve_requests(sock, parent_fd, inherited, waiter, children)
    finally:
        children.end()


class _Children:
    """The zygote's children, each watched by a pidfd in its poll: reaped the moment it
    exits (no zombie waits for the next request), its wait status kept for the parent to
    ask; killed and reaped when the zygote ends, so none is ever left for whoever adopts
    orphans (PID 1 in a container, or a subreaper, may never reap them)."""

    def __init__(self, waiter: select.poll) -> None:
        self.waiter = waiter
        self.pids: dict[int, int] = {}  # pidfd -> pid
        self.statuses: dict[int, int] = {}  # reaped children's wait statuses, oldest first

    def add(self, child: tuple[int, int] | None) -> None:
        if child is not None:
            pid, pidfd = child
            self.pids[pidfd] = pid
            self.waiter.register(pidfd, select.POLLIN)

    def reap(self, fds: Any) -> None:
        """Reaps those of `fds` that are children's pidfds and have exited: always through
        the pidfd, never by pid (a pid may be a new child's by then)."""
        for fd in [fd for fd in fds if fd in self.pids]:
            status = reap(fd)
            if status is None:
                continue  # not exited after all
            pid = self.pids.pop(fd)
            self.waiter.unregister(fd)
            os.close(fd)
            if status != REAPED_ELSEWHERE:
                self.statuses[pid] = status
            if len(self.statuses) > _KEEP_STATUSES:
                del self.statuses[next(iter(self.statuses))]

    def status(self, pid: int) -> int | None:
        """The wait status of child `pid`, which exited (its pidfd said so to the parent):
        reaped now through its pidfd if the poll has not yet; None if unknown."""
        for fd, child in list(self.pids.items()):
            if child == pid:
                self.reap([fd])
        return self.statuses.pop(pid, None)

    def end(self) -> None:
        """Kills every child still here and reaps them, waiting at most END_GRACE: one
        stuck in the kernel (uninterruptible I/O) is left to PR_SET_PDEATHSIG, rather than
        keep the pool's join() waiting for ever."""
        for fd in self.pids:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        end = time.monotonic() + END_GRACE
        while self.pids and time.monotonic() < end:
            self.reap(list(self.pids))
            if self.pids:
                exits = select.poll()
                for fd in self.pids:
                    exits.register(fd, select.POLLIN)
                exits.poll(max(0.0, end - time.monotonic()) * 1000)
        for fd in self.pids:
            os.close(fd)
        self.pids.clear()


def _serve_requests(sock: socket.socket, parent_fd: int, inherited: Any, waiter: select.poll,
                    children: _Children) -> None:
    """Answers the parent's requests until it closes its end or exits."""
    while True:
        ready = dict(waiter.poll())
        if parent_fd in ready:
            return  # the parent exited
        children.reap(ready)
        if sock.fileno() not in ready:
            continue
        try:
            msg, fds, flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
        except ConnectionResetError:
            return
        if not msg:
            return  # the parent closed its end
        request = _REQUEST.unpack_from(msg)[1] if len(msg) >= _REQUEST.size else 0
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise OSError(errno.EMSGSIZE, "request truncated (too long, or too many fds)")
            if len(msg) < _REQUEST.size:
                raise OSError(errno.EPROTO, "short request")
            op, _, length = _REQUEST.unpack_from(msg)
            body = msg[_REQUEST.size:]
            if length != len(body):
                raise OSError(errno.EPROTO, f"request says {length} bytes, carries {len(body)}")
            if op == STATUS:
                _status(sock, request, body, children)
            elif op == SPAWN:
                entry_b, _, args_b = body.partition(b"\0")
                children.add(_spawn(sock, request, entry_b.decode(), pickle.loads(args_b), fds, parent_fd, inherited,
                                    list(children.pids)))
                fds = []  # closed by _spawn
            else:
                raise OSError(errno.EPROTO, f"unknown request {op}")
        except Exception as e:  # noqa: BLE001 - a bad request is answered, not fatal
            _reply(sock, ERROR, request, getattr(e, "errno", None) or errno.EPROTO, str(e).encode())
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _reply(sock: socket.socket, kind: int, request: int, value: int, body: bytes = b"",
           fds: tuple[int, ...] = ()) -> None:
    socket.send_fds(sock, [_REPLY.pack(kind, request, value) + body], list(fds))


def _status(sock: socket.socket, request: int, body: bytes, children: _Children) -> None:
    (pid,) = struct.unpack("<i", body)
    status = children.status(pid)
    if status is None:
        _reply(sock, UNKNOWN, request, 0)
    else:
        _reply(sock, EXIT_STATUS, request, status)


def _spawn(sock: socket.socket, request: int, entry: str, args: tuple, fds: list[int], parent_fd: int,
           inherited: Any, not_theirs: Sequence[int] = ()) -> tuple[int, int] | None:
    """Forks a child that runs `entry` with `fds` (then closed here); `not_theirs` are
    the zygote's own fds the child closes (the others' pidfds among them). Its pid and a
    pidfd the zygote keeps (None if it could not start)."""
    me = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        for fd in fds:
            os.close(fd)
        _reply(sock, ERROR, request, e.errno or 0, str(e).encode())
        return None
    if pid == 0:
        try:
            sock.close()
            for fd in not_theirs:
                os.close(fd)
            _run_child(entry, args, fds, me, parent_fd, inherited)
        finally:
            os._exit(1)  # never back into the zygote's loop
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)  # unwatched, it must not run (still ours: safe by pid)
        os.waitpid(pid, 0)
        raise
    try:
        _reply(sock, PID, request, pid, b"", (pidfd,))
    except BaseException:
        os.close(pidfd)
        raise
    return pid, pidfd


def _run_child(entry: str, args: tuple, fds: list[int], forker: int, owner_fd: int | None,
               inherited: Any) -> NoReturn:
    """In a child just forked by `forker`: dies with it, then runs ``entry(fds + [a
    pidfd on the pool's owner], inherited, *args)`` (`owner_fd`; None: the forker is the
    owner, and it is opened here); never returns."""
    code = 0
    try:
        _native.die_with_parent()
        if os.getppid() != forker:
            os._exit(1)  # it died (and its pid may be reused) before we were bound to it
        if owner_fd is None:
            owner_fd = os.pidfd_open(forker)
        _resolve(entry)([*fds, owner_fd], inherited, *args)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def fork_child(entry: str, args: tuple, fds: list[int], inherited: Any,
               keep: Callable[[int, int], None]) -> None:
    """Forks, from this very process, a child that runs `entry` as a zygote's child does
    (see `Zygote.spawn`): a pool's first worker, which so starts one fork sooner (about
    a millisecond here) than through the zygote made just after it. See `fork_here` for
    `keep`. Call from the main thread only: PR_SET_PDEATHSIG ties the child to the thread
    that forks it, and the main thread lives as long as the process."""

    def worker(given: list[int], parent: int, mask: set) -> NoReturn:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _sigmask(signal.SIG_SETMASK, mask)
        gc.freeze()  # as the zygote does for its children (see `_serve`)
        _run_child(entry, args, given, parent, None, inherited)

    fork_here(worker, fds, keep)


def fork_here(child: Callable[[list[int], int, set], NoReturn], fds: list[int],
              keep: Callable[[int, int], None]) -> None:
    """Forks this very process (paralelo's one way to start a process from the caller:
    a pool's first worker, a ``Process``). The child runs ``child(fds, parent_pid, mask)``
    with its own copies of `fds`, and with Ctrl-C held off until it restores the signal
    mask `mask`; it must never return. In the parent, `keep(pid, pidfd)` takes the child
    while Ctrl-C is still held off (restoring the signal mask runs a pending Ctrl-C's
    handler: the child must be the caller's by then, to be killed and reaped); the caller
    reaps it."""
    parent = os.getpid()
    pid = 0
    flush_stdio()
    # Ctrl-C is held off from the fork until the child is watched: neither process may
    # unwind half-way (the child into the caller's code, the parent leaving it unwatched).
    mask = _sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _making:
            given = [os.dup(fd) for fd in fds]  # the child's copies, made where no other fork copies them
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        child(given, parent, mask)
                    finally:
                        os._exit(1)  # (`child` never returns; if it raises, it unwinds no further)
            finally:
                for fd in given:
                    os.close(fd)
        pidfd = os.pidfd_open(pid)
    except BaseException:
        if pid:
            os.kill(pid, signal.SIGKILL)  # not watched, so it must not run
            os.waitpid(pid, 0)  # (still ours, not reaped: safe by pid)
        _sigmask(signal.SIG_SETMASK, mask)
        raise
    try:
        keep(pid, pidfd)
    finally:
        _sigmask(signal.SIG_SETMASK, mask)


#: Above this resident size, a pool's first worker comes from its zygote too: forking
#: the parent twice (the worker, then the zygote) costs it more than the worker's head
#: start saves (a 400 MB parent: ≈ 1 ms more to its first thousand tasks).
DIRECT_FORK_MAX_RSS = 256 << 20


def small_process() -> bool:
    """Whether this process is small enough to fork its pool's first worker itself."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return False
    # Dropped large results kept for reuse are no working set of the parent's, and a
    # fork does not copy them.
    recycled = sys.modules.get("paralelo._recycled")
    if recycled is not None:
        resident -= recycled.spared_at_fork()
    return resident <= DIRECT_FORK_MAX_RSS


def flush_stdio() -> None:
    """Flushes this process's stdout and stderr, as multiprocessing does before it forks
    and as a worker does before each reply and each wait: text printed but still
    buffered is then written once, not once more by every copy of the buffer (or never,
    by a worker that is killed)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - closed, replaced by anything, a broken pipe
            pass


#: What `reap` returns for a child someone else reaped (a user's waitpid(-1)): gone, its
#: status unknown.
REAPED_ELSEWHERE = -1


def reap(pidfd: int, wait: bool = False) -> int | None:
    """Reaps this process's child behind `pidfd` if it has exited (with `wait`, once it
    does): its wait status as `os.waitpid` gives it; None if it has not exited;
    REAPED_ELSEWHERE if someone else reaped it."""
    try:
        got = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | (0 if wait else os.WNOHANG))
    except ChildProcessError:
        return REAPED_ELSEWHERE
    if got is None:
        return None
    if got.si_code == os.CLD_EXITED:
        return (got.si_status & 0xFF) << 8
    return got.si_status | (0x80 if got.si_code == os.CLD_DUMPED else 0)
