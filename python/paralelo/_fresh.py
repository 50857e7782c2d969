"""A pool's zygote as a fresh interpreter: the 'spawn' and 'forkserver' start methods.

A program asks for those when its workers must not inherit its memory: CUDA or another
library that breaks in a forked child, threads holding locks, a large parent. The pool's
zygote is then a new interpreter, started as multiprocessing starts a spawned process
(``multiprocessing.util.spawnv_passfds``: only the zygote's socket passes), which readies
itself as a spawned multiprocessing child does (``multiprocessing.spawn.prepare``: the
parent's ``sys.path``, ``sys.argv``, working directory and authkey, then the script
imported as ``__mp_main__``, its ``if __name__ == "__main__":`` block left out). From
then on it serves like any zygote (see ``_zygote``): every worker, first or replacement,
is forked from it. So the script is imported once per pool rather than once per worker,
and a worker starts in a millisecond: multiprocessing's forkserver, one per pool. Workers
are named as multiprocessing names them (``SpawnPoolWorker-N``, ``ForkServerProcess-N``).

Before it serves, the zygote and its parent speak twice over its socket, each message one
blob in a memfd (an initializer's arguments may be large) with descriptors after it:

    parent  PREPARE  pickle(preparation data)                 fds: the arena, if any
    zygote           pickle((True, main_objects()) or (False, traceback text))
    parent  BEGIN    u32 n, then the setup's pickle          fds: n for the first workers,
                     (setup, entry, first workers' args)       then those the setup took
    zygote           pickle((True, None) or (False, traceback text))

The parent pickles the setup (the initializer and its arguments) as for a spawned child:
``__main__`` functions and classes by reference where the zygote has the same definition
(`_pickling.MainNames` with `only`), the others by value; multiprocessing's locks and
paralelo's primitives pickle as they do for a spawned process, their descriptors passed
along (`_Spawning`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import socket
import struct
import traceback
from array import array
import multiprocessing.context
import multiprocessing.process
import multiprocessing.spawn
import multiprocessing.util
from typing import Any, NoReturn

from . import _arena, _ending, _pickling
from ._broken import broken
from ._errors import RemoteTraceback
from ._zygote import Zygote, _making, _serve, describe_exit, flush_stdio, reap

# multiprocessing's private spawning machinery, which the zygote follows (typed loosely).
mp_context: Any = multiprocessing.context
mp_process: Any = multiprocessing.process
mp_spawn: Any = multiprocessing.spawn
mp_util: Any = multiprocessing.util

#: The most descriptors one handshake message carries (the kernel's own limit).
_MAX_PASSED = 253
_COUNT = struct.Struct("<I")
#: What a fresh zygote calls itself (its workers take their own names).
_NAME = "ParaleloZygote"
#: The preparation data's key for paralelo's own start method.
_METHOD = "paralelo_start_method"
#: The preparation data's key for the pid of the zygote's parent.
_PARENT = "paralelo_parent"


class FreshZygote(Zygote):
    """The parent's handle on a zygote that is a fresh interpreter (see the module), started
    now and ready once this returns: it has imported the script, and `names` holds its
    ``__main__`` functions and classes (`_pickling.main_objects`). `begin` then hands it
    the pool's setup and its first workers. Raises ``BrokenProcessPool`` (its cause the
    zygote's traceback) if the script cannot be imported there."""

    def __init__(self, method: str) -> None:
        self._expect(0)
        self.method = method
        # (First: in a process that is itself importing the script, this raises
        # multiprocessing's RuntimeError about `if __name__ == "__main__":`.)
        prep = _preparation(method)
        exe = mp_spawn.get_executable()
        # The interpreter finds paralelo where this one did (the script may have put it
        # on sys.path itself); the parent's own sys.path replaces it once prepared.
        home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        flush_stdio()
        with _making:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock = ours
            try:
                code = f"import sys; sys.path.insert(0, {home!r}); from paralelo._fresh import serve; " \
                       f"serve({theirs.fileno()})"
                pid = mp_util.spawnv_passfds(exe, [exe, *mp_util._args_from_interpreter_flags(), "-c", code],
                                             [theirs.fileno()])
            finally:
                theirs.close()
            self._took(pid)
        try:
            arena = _arena.arena()
            _send(self.sock, [prep], [arena.fd] if arena is not None else [])
            self.names: dict[str, tuple] = self._answer("importing the main module")
        except BaseException:
            self._abandon()
            raise

    def begin(self, setup: Any, main: _pickling.MainNames, first: tuple[str, list[tuple], list[int]]) -> None:
        """Hands the zygote the pool's `setup` (pickled with `main`) and has it start the
        `first` workers, as `Zygote` does with its own `first`."""
        entry, batch, fds = first
        self._expect(len(batch))
        try:
            # (Big buffers and paralelo's primitives go through the arena, given to the
            # zygote with the message.)
            data, passed = _for_child(_pickling.dumps, (setup, entry, batch), main, _arena.GIVE)
            data = _arena.commit(data)
            try:
                _send(self.sock, [_COUNT.pack(len(fds)), data], [*fds, *passed])
            except BaseException:
                _arena.ungive(data)
                raise
            self._answer("loading the pool's initializer and its arguments")
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Ends a zygote that is not serving yet: killed, as it may be busy importing the
        script for a long while (Ctrl-C in ``Pool()``), and reaped."""
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
        self.close()

    def _answer(self, doing: str) -> Any:
        """The zygote's answer to the last message: its value, or the error it reported."""
        got = _receive(self.sock)
        if got is None:
            self.close(wait=False)
            fd, self.pidfd = self.pidfd, -1
            try:
                status = reap(fd, wait=True)
            finally:
                os.close(fd)
            raise broken(f"cannot start the pool's workers: the fresh interpreter of the {self.method!r} start "
                         f"method ended while {doing} ({describe_exit(status)})")
        data, fds = got
        for fd in fds:
            os.close(fd)
        ok, value = pickle.loads(data)
        if not ok:
            raise broken(f"cannot start the pool's workers: the fresh interpreter of the {self.method!r} start "
                         f"method failed while {doing}", RemoteTraceback(value))
        return value


def _preparation(method: str) -> bytes:
    """What a spawned multiprocessing child is given to become its parent's likeness
    (``multiprocessing.spawn.get_preparation_data``), with paralelo's start method,
    pickled (for a child: the authkey pickles only so). The standard library's own start
    method is passed on only if the program set it: asking for it would fix its default."""
    from . import context

    default = mp_context._default_context
    chosen = default._actual_context
    try:
        data = mp_spawn.get_preparation_data(_NAME)
    finally:
        default._actual_context = chosen
    if chosen is None:
        data.pop("start_method", None)
    data[_METHOD] = context.get_start_method(allow_none=True)
    data[_PARENT] = os.getpid()
    return _for_child(pickle.dumps, data, pickle.HIGHEST_PROTOCOL)[0]


def _for_child(dumps: Any, *args: Any) -> tuple[bytes, list[int]]:
    """``dumps(*args)`` as for a spawned child (see `_Spawning`), and the descriptors
    the pickle takes along."""
    spawning = _Spawning()
    mp_context.set_spawning_popen(spawning)
    try:
        return dumps(*args), spawning.fds
    finally:
        mp_context.set_spawning_popen(None)


class _Spawning:
    """Stands in for the Popen of a process being spawned while the setup is pickled
    (multiprocessing's ``get_spawning_popen``), as its forkserver's does: multiprocessing's
    locks and queues and paralelo's primitives then pickle for a child, and the
    descriptors they take along (``reduction.DupFd``) go with the setup, by index."""

    _paralelo_arena = True  # (the zygote maps the arena from the handshake: see `_arena.for_spawning`)

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1

    @staticmethod
    def DupFd(index: int) -> _Passed:  # noqa: N802 - multiprocessing's name
        return _Passed(index)


#: In a fresh zygote, while it unpickles the setup: the descriptors that came with it.
_passed: list[int] = []


class _Passed:
    """A descriptor the setup took along (see `_Spawning`), as the zygote got it."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return os.dup(_passed[self.index])


def _send(sock: socket.socket, parts: list[bytes], fds: list[int]) -> None:
    """One handshake message: `parts` in a memfd, then `fds`."""
    blob = os.memfd_create("paralelo-zygote", os.MFD_CLOEXEC)
    try:
        with open(blob, "wb", closefd=False) as f:
            for part in parts:
                f.write(part)
        socket.send_fds(sock, [b"B"], [blob, *fds])
    finally:
        os.close(blob)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next handshake message (its blob and its descriptors, close-on-exec); None if
    the other side closed its end."""
    msg, ancillary, _flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(_MAX_PASSED * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array("i", data[:len(data) - len(data) % 4]))
    if not msg or not fds:
        for fd in fds:
            os.close(fd)
        return None
    with open(fds[0], "rb") as f:  # (the sender's file position: it wrote the blob)
        f.seek(0)
        return f.read(), fds[1:]


def _answered(sock: socket.socket, value: Any = None, error: str | None = None) -> None:
    _send(sock, [pickle.dumps((error is None, value if error is None else error), pickle.HIGHEST_PROTOCOL)], [])


def serve(fd: int) -> NoReturn:
    """The fresh zygote's entry point (its socket is `fd`): readies itself, then serves
    its pool; never returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to decide
    code = 0
    try:
        _ready_and_serve(socket.socket(fileno=fd))
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        flush_stdio()
        os._exit(code)


def _ready_and_serve(sock: socket.socket) -> None:
    """The zygote's two handshakes (see the module), then its serving."""
    got = _receive(sock)
    if got is None:
        return
    data, fds = got
    for arena_fd in fds:
        _arena.adopt_fd(arena_fd)
    prep = pickle.loads(data)
    parent = prep.pop(_PARENT)
    try:
        names = _prepare(prep)
    except BaseException:  # noqa: BLE001 - the parent reports it
        _answered(sock, error=traceback.format_exc())
        return
    _answered(sock, names)
    got = _receive(sock)
    if got is None:
        return
    data, fds = got
    (count,) = _COUNT.unpack_from(data)
    first_fds, _passed[:] = fds[:count], fds[count:]
    try:
        setup, entry, batch = _pickling.loads(data[_COUNT.size:])
    except BaseException:  # noqa: BLE001 - the parent reports it
        _answered(sock, error=traceback.format_exc())
        return
    finally:
        for passed in _passed:
            os.close(passed)
        _passed.clear()
    _answered(sock)
    # Its workers see this interpreter's __main__: what they pickle by reference is
    # what it holds.
    setup = dataclasses.replace(setup, main=_pickling.MainNames())
    _serve(sock, parent, setup, (entry, batch, first_fds))
    _ending.end()


def _prepare(prep: dict) -> dict[str, tuple]:
    """Becomes the parent's likeness as a spawned multiprocessing child does (the script
    imported as ``__mp_main__``); what ``__main__`` then holds (`main_objects`)."""
    from . import context

    me: Any = mp_process.current_process()
    method = prep.pop(_METHOD, None)
    # (Set while the script is imported: a pool it makes outside its main block raises
    # multiprocessing's own RuntimeError about the missing `if __name__ == "__main__":`.)
    me._inheriting = True
    try:
        mp_spawn.prepare(prep)
    finally:
        me._inheriting = False
    context.set_start_method(method, force=True)
    from . import _worker  # noqa: F401 - loaded once here rather than in every worker

    return _pickling.main_objects()


__all__ = ["FreshZygote", "serve"]
