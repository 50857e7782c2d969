"""Lock debugging: ``paralelo.debug_locks()`` (or ``PARALELO_DEBUG_LOCKS=<seconds>`` in
the environment), off by default and free when off: nothing of it runs until it is
turned on.

When on, paralelo's ``Lock``, ``RLock``, ``Semaphore`` and ``BoundedSemaphore`` record
who holds them, with the stack where they were taken, on a board in the program's arena,
and who waits for what. The board is shared with the processes forked after it was
turned on, and travels with every primitive passed on (to a spawned process, a pool's or
an executor's task, a queue or a pipe): a process that receives one joins the board, so
it is watched too. A wait that lasts longer than the threshold logs a warning (logger
``paralelo.locks``) naming each holder (pid, thread, and the stack where it acquired),
again each time the wait has doubled; a cycle of waits
(this thread waits for a lock whose holder waits for another ... held by this thread),
across processes, is logged as an error naming every lock and holder in it. The wait
goes on either way: this reports, it does not decide.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import struct
import threading
import time
import traceback
from typing import Any, Iterator, cast

from ._errors import AbandonedLockError


log = logging.getLogger("paralelo.locks")

#: (Record: used u32, pid u32, tid u32, state u32, key u64, since f64, then the stack.)
_HEAD = struct.Struct("<IIIIQd")
_RECORD = 1024
_RECORDS = 512
_HOLDS, _WAITS = 1, 2

#: The board's own lock, at its start (a cache line).
_LOCK_BYTES = 64

_board: Any = None
_board_lock: Any = None
_board_buf: Any = None  # the board's piece of the arena: its lock, then the records
_threshold = 1.0
_installed = False
#: On, but with no board yet (see `_from_environment`): made at first use, unless a
#: primitive brings its parent's first.
_wanted = False
#: Held while this process takes a board (two threads may unpickle primitives at once).
_taking = threading.Lock()


def enabled() -> bool:
    return _board is not None or _wanted


def debug_locks(threshold: float = 1.0) -> None:
    """Turns lock debugging on (see the module's docstring): waits longer than
    `threshold` seconds are reported. Processes forked after this share the board."""
    global _threshold
    if threshold <= 0:
        raise ValueError(f"threshold must be a positive number of seconds, not {threshold!r}")
    _threshold = float(threshold)
    _board_now()


def _board_now() -> Any:
    """The board, made now if this process has none yet."""
    if _board is None:
        from . import _slab

        with _taking:
            if _board is None:
                _use(_slab.piece(_LOCK_BYTES + _RECORD * _RECORDS, "lock-debugging board"))
    return _board


def _use(buf: Any) -> None:
    """Records on the board in `buf` (a piece of the arena: its lock, then the records),
    for the rest of this process's life (and its forked children's): a process that
    changed boards would hide its waits from those on the first."""
    global _board, _board_lock, _board_buf, _wanted
    from ._native import SharedLock

    view = memoryview(cast(Any, buf))
    # (The board's own lock is the engine's, not a watched one.)
    _board_lock = SharedLock(view[:_LOCK_BYTES], False)
    _board_buf = buf
    _board = view[_LOCK_BYTES:]  # (set last: `_board` set means the rest is)
    _wanted = False
    _install()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Holds the board's lock. One taken from a process that died holding it (killed
    while it noted something) is taken again: the board only informs, and nothing it
    records is worth failing the caller's acquire or release for."""
    while True:
        try:
            _board_lock.acquire()
            break
        except AbandonedLockError:
            continue  # (released again by the report: free to take now)
    try:
        yield
    finally:
        _board_lock.release()


class _Shared:
    """The board, in the pickle of a primitive passed on: unpickled, the receiving
    process joins it (see `_joined`)."""

    __slots__ = ()

    def __reduce__(self) -> tuple:
        from . import _slab

        return _slab.reduce(_board_buf, _joined, (_threshold,), "lock-debugging board", board=False)


_SHARED = _Shared()


def shared() -> _Shared | None:
    """What a primitive's pickle carries of lock debugging: the board, once there is one."""
    return None if _board is None else _SHARED


def _joined(buf: Any, threshold: float) -> None:
    """A primitive brought the board in `buf`: this process records on it from now on,
    if it has no board yet (a process keeps the first it has)."""
    global _threshold
    if _board is not None:
        return
    with _taking:
        if _board is None:
            if not _wanted:
                _threshold = threshold
            _use(buf)


def _key(prim: Any) -> int:
    """A primitive's name on the board: where it lives in the arena (the same in every
    process, wherever each maps the arena)."""
    return int(prim._buf.offset)


def _records() -> Any:
    for i in range(_RECORDS):
        yield i, _HEAD.unpack_from(_board, i * _RECORD)


#: What a record's primitive is (its code, in the state's second byte).
_KINDS = ("lock", "Lock", "RLock", "Semaphore", "BoundedSemaphore")
#: Frames of paralelo itself are left out of the stacks recorded.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _kind(prim: Any) -> int:
    name = type(prim).__name__
    return _KINDS.index(name) if name in _KINDS else 0


def _named(state: int, key: int) -> str:
    return f"the {_KINDS[(state >> 8) % len(_KINDS)]} at {key:#x}"


def _stack_here() -> bytes:
    """This thread's name and the innermost of its caller's frames that fit a record,
    whole."""
    head = f"{threading.current_thread().name!r}\n"
    room = _RECORD - _HEAD.size - len(head.encode("utf8", "replace"))
    kept: list[str] = []
    for frame in reversed(traceback.format_list(
            [f for f in traceback.extract_stack() if not f.filename.startswith(_PACKAGE)])):
        size = len(frame.encode("utf8", "replace"))
        if size > room:
            break
        kept.append(frame)
        room -= size
    return (head + "".join(reversed(kept))).encode("utf8", "replace")[:_RECORD - _HEAD.size]


def _note(state: int, key: int) -> None:
    """Records this thread holding or waiting for `key`, with the stack here."""
    stack = _stack_here()
    _board_now()
    with _locked():
        for i, (used, *_rest) in _records():
            if not used:
                at = i * _RECORD
                _HEAD.pack_into(_board, at, 1, os.getpid(), threading.get_native_id(), state, key, time.time())
                _board[at + _HEAD.size:at + _RECORD] = stack.ljust(_RECORD - _HEAD.size, b"\0")
                return


def _forget(state: int, key: int, mine: bool = True, every: bool = False) -> None:
    """Drops a record of `key` in `state` (this thread's, unless not `mine`: a plain lock
    may be released by any thread; `every`: all of them, as a condition's wait releases
    every level of a recursive lock)."""
    me = (os.getpid(), threading.get_native_id())
    if _board is None:
        return  # (nothing noted yet)
    with _locked():
        for i, (used, pid, tid, st, k, _since) in _records():
            if used and st & 0xFF == state & 0xFF and k == key and (not mine or (pid, tid) == me):
                _board[i * _RECORD:i * _RECORD + 4] = b"\0\0\0\0"
                if not every:
                    return


def _stack(i: int) -> str:
    return bytes(_board[i * _RECORD + _HEAD.size:(i + 1) * _RECORD]).rstrip(b"\0").decode("utf8", "replace")


def _gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # (someone else's: it exists)
    return False


def _report(key: int, state: int, waited: float, cycles: bool) -> bool:
    """A wait for `key` has lasted `waited` seconds: who holds it, and (if `cycles`) any
    cycle of waits through it. Records of processes that are gone are dropped. Whether
    a cycle was reported."""
    _board_now()
    with _locked():
        records = []
        for i, r in _records():
            if r[0] and _gone(r[1]):
                _board[i * _RECORD:i * _RECORD + 4] = b"\0\0\0\0"  # (it ended: nothing it noted holds)
            elif r[0]:
                records.append((i, r))
    holders = [(i, r) for i, r in records if r[3] & 0xFF == _HOLDS and r[4] == key]
    lines = [f"waited {waited:.1f} s for {_named(state, key)} (paralelo, placed in the arena) held by:"]
    for i, (_u, pid, tid, _s, _k, since) in holders:
        name, _, stack = _stack(i).partition("\n")
        lines.append(f"  pid {pid}, thread {tid} ({name}), for {time.time() - since:.1f} s, taken at:\n{stack}")
    if not holders:
        lines.append("  (no recorded holder: taken before debugging was on, or by a process that cannot see the board)")
    log.warning("\n".join(lines))
    if not cycles:
        return False
    # A cycle: follow waits-for from this thread through the holders' own waits.
    waits = {(r[1], r[2]): (r[4], r[3]) for _i, r in records if r[3] & 0xFF == _WAITS}
    holds: dict[int, list[tuple[int, int]]] = {}
    for _i, r in records:
        if r[3] & 0xFF == _HOLDS:
            holds.setdefault(r[4], []).append((r[1], r[2]))
    me = (os.getpid(), threading.get_native_id())
    path, seen, who = [], set(), me
    while who in waits and who not in seen:
        seen.add(who)
        lock, st = waits[who]
        owners = holds.get(lock, [])
        if not owners:
            return False
        path.append((who, lock, st, owners[0]))
        who = owners[0]
    if who == me and path:
        log.error("deadlock: " + "; ".join(
            f"pid {w[0]} thread {w[1]} waits for {_named(st, k)}, held by pid {o[0]} thread {o[1]}"
            for w, k, st, o in path))
        return True
    return False


def acquire(prim: Any, native_acquire: Any, native_release: Any, block: bool = True,
            timeout: float | None = None) -> bool:
    """`prim`'s acquire, watched (see the module's docstring). A long wait is reported
    at the threshold, then each time it has doubled; a deadlock it is part of, once."""
    key, kind = _key(prim), _kind(prim) << 8
    if native_acquire(False):
        _holding(key, kind, native_release)
        return True
    if not block:
        return False
    end = None if timeout is None else time.monotonic() + max(0.0, timeout)
    start = time.monotonic()
    report_at, cycle_told = start + _threshold, False
    _note(_WAITS | kind, key)
    try:
        while True:
            now = time.monotonic()
            step = max(0.0, report_at - now) if end is None else max(0.0, min(report_at, end) - now)
            if native_acquire(True, step):
                _holding(key, kind, native_release)
                return True
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            if now >= report_at:
                cycle_told = _report(key, _WAITS | kind, now - start, not cycle_told) or cycle_told
                report_at = start + 2 * (report_at - start)
    finally:
        _forget(_WAITS, key)


def _holding(key: int, kind: int, native_release: Any) -> None:
    """Notes a hold just taken; if that fails (Ctrl-C in the note), the hold is given
    back before the failure goes on: the caller never learnt it had it."""
    try:
        _note(_HOLDS | kind, key)
    except BaseException:
        native_release()
        raise


def release(prim: Any, native_release: Any, mine: bool) -> None:
    native_release()
    _forget(_HOLDS, _key(prim), mine)


def _install() -> None:
    """Puts the watched acquire and release on the lock classes (semaphores made from now
    on bind them too)."""
    global _installed
    if _installed:
        return
    _installed = True
    from ._native import SharedLock
    from .synchronize import _Lock

    def lock_acquire(self: Any, block: bool = True, timeout: float | None = None, *,
                     blocking: bool | None = None) -> bool:
        block = block if blocking is None else blocking
        return acquire(self, lambda b=True, t=None: SharedLock.acquire(self, b, t),
                       lambda: SharedLock.release(self), block, timeout)

    def lock_release(self: Any) -> None:
        release(self, lambda: SharedLock.release(self), self._recursive)

    def lock_enter(self: Any) -> bool:
        return lock_acquire(self)

    def lock_exit(self: Any, *exc: Any) -> None:
        lock_release(self)

    def lock_release_save(self: Any) -> int:
        depth = SharedLock._release_save(self)
        _forget(_HOLDS, _key(self), every=True)  # (a condition's wait: held no more)
        return depth

    def lock_acquire_restore(self: Any, depth: int) -> None:
        try:
            SharedLock._acquire_restore(self, depth)
        finally:  # (held again even when taking it over from a dead holder raises)
            if SharedLock._is_mine(self):
                _note(_HOLDS | _kind(self) << 8, _key(self))

    _Lock._release_save, _Lock._acquire_restore = lock_release_save, lock_acquire_restore  # type: ignore[method-assign]
    _Lock.acquire, _Lock.release = lock_acquire, lock_release  # type: ignore[method-assign,assignment]
    _Lock.__enter__, _Lock.__exit__ = lock_enter, lock_exit  # type: ignore[method-assign,assignment]


def _from_environment(value: str) -> None:
    """``PARALELO_DEBUG_LOCKS``: on from the start. The main process makes its board at
    once (its children forked later share it); a spawned one, which inherits the
    variable, waits: the first primitive it gets brings its parent's board, and it makes
    one of its own only if it notes something first (one made at import would also keep
    it from taking its parent's arena)."""
    global _threshold, _wanted
    try:
        threshold = float(value) if value not in ("1", "on", "yes", "true") else 1.0
    except ValueError:
        threshold = 1.0
    if threshold <= 0:
        threshold = 1.0
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        _threshold, _wanted = threshold, True
        _install()
    else:
        debug_locks(threshold)


_env = os.environ.get("PARALELO_DEBUG_LOCKS")
if _env:
    _from_environment(_env)
