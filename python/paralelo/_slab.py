"""Small pieces of the arena, for the synchronisation primitives: each lives in a piece
of a slab (one arena block, cut in cache-line multiples, never reused while the block
lives), so a lock or a semaphore is shared with every process that maps the arena, and
can be passed to them by handle: to a ``Process``, and in a pool's or an executor's
task, a queue or a pipe, where multiprocessing's may only be inherited.

A piece travels as a pickle-5 buffer of its span of the block: paralelo's messages lend
or hand over the block with the message, as they do a SharedArray's, so it lives until
the receiver holds it. While spawning a process, the block is given to the one pickle.
Any other pickler is refused, as multiprocessing refuses its locks: a copy of a lock is
not the lock.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any, Callable, cast

from . import _arena, _lockdebug, _native, _pickling

#: A slab's size: one arena block, many pieces.
SLAB = 1 << 16
#: Pieces start and end on cache lines: two primitives never share one.
LINE = 64

_lock = threading.Lock()
_slab: Any = None
_used = 0


def _forget_slab_after_fork() -> None:
    # The rest of the parent's slab is the parent's to hand out: a child handing out the
    # same pieces would make two primitives of one.
    global _slab, _used, _lock
    _slab, _used, _lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_slab_after_fork)


def piece(nbytes: int, what: str) -> Any:
    """A zero-filled piece of `nbytes` for a `what` (its name, for errors), held while
    the returned view (an ``ArenaBuffer``) lives."""
    global _slab, _used
    size = -(-nbytes // LINE) * LINE
    with _lock:
        if _slab is None or _used + size > len(_slab):
            a = _arena.arena()
            slab = a.alloc(max(SLAB, size)) if a is not None else None
            if slab is None:
                raise MemoryError(f"no room for a {what} in the shared-memory arena")
            _slab, _used = slab, 0
        got = _arena.current().share_span(_slab.address + _used, size)  # type: ignore[union-attr]
        _used += size
    return got


def reduce(buf: Any, rebuild: Callable, args: tuple, what: str, board: bool = True) -> tuple:
    """How a primitive living in `buf` (a `piece`) pickles: ``rebuild(buffer, *args)``
    in the receiver, `buffer` the same piece (see the module's docstring). With lock
    debugging on, the pickle carries its board too (`board`), for the receiver to join."""
    a = _arena.current()
    joins = _lockdebug.shared() if board else None
    if a is not None and _pickling.in_pickling():
        span = a.share_span(buf.address, len(buf))
        if span is not None:
            return _from_span, (rebuild, pickle.PickleBuffer(cast(Any, span)), args, what, joins)
    elif a is not None and _arena.spawning():
        descriptor = a.give_span(buf.address, len(buf))
        if descriptor is not None:
            return _from_given, (rebuild, descriptor, _arena.for_spawning(), a.id, args, joins)
    _native.slow_path_if_fast()  # (a queue's fast put: pickled again, the slow way)
    raise RuntimeError(
        f"{what} objects should only be shared between processes through inheritance, or passed "
        f"to paralelo's processes, pools, executors, queues and pipes (not pickled by another pickler)")


def _from_span(rebuild: Callable, buffer: Any, args: tuple, what: str, _board: Any = None) -> Any:
    if type(buffer) is not _native.ArenaBuffer:
        raise RuntimeError(f"this {what} was copied by a pickler that does not carry paralelo's "
                           f"shared memory: a copy of a {what} is not the {what}")
    _arena.current().mark_shared(buffer)  # type: ignore[union-attr]
    return rebuild(buffer, *args)


def _from_given(rebuild: Callable, descriptor: bytes, arena: Any, arena_id: int, args: tuple,
                _board: Any = None) -> Any:
    _arena.adopt(arena)
    a = _arena.current()
    if a is None or a.id != arena_id:
        raise RuntimeError("this primitive lives in an arena this process does not map")
    return rebuild(a.take(descriptor, True, True), *args)
