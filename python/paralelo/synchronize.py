"""``multiprocessing.synchronize``'s Lock and RLock, on the engine's futex lock.

Each lock is one word (and a depth) in shared memory, taken with one atomic instruction
when free (no system call), waited on with a futex when not (the GIL released). Its
memory comes from ``multiprocessing.heap`` (shared mappings every forked child inherits,
passed on to spawned ones), so a lock made before a ``Process`` or ``Pool`` is shared
with it, as multiprocessing's is, and, like multiprocessing's, is pickled only to start a
process (`assert_spawning`): other ways to share it are inheritance.

Unlike multiprocessing's, a lock whose holder died (its process killed or ended, even
if not yet reaped, or an RLock's thread ended) is not waited on for ever: the next
acquire raises ``AbandonedLockError`` naming the holder, and the lock is free again.
"""

from __future__ import annotations

import threading
from multiprocessing import heap
from multiprocessing import process as _mp_process
from multiprocessing.context import assert_spawning
from typing import Any, cast

from ._native import SharedLock

__all__ = ["Lock", "RLock"]


def _rebuild(cls: type, wrapper: Any) -> Any:
    return cls(_wrapper=wrapper)


class _Lock(SharedLock):
    # (The native base holds the word; acquire, release, __enter__ and __exit__ are its.)
    _recursive = False
    _wrapper: Any  # the heap block the lock lives in

    def __new__(cls, *, ctx: Any = None, _wrapper: Any = None) -> _Lock:
        wrapper = _wrapper
        if wrapper is None:
            wrapper = heap.BufferWrapper(SharedLock.SIZE)
            wrapper.create_memoryview()[:] = bytes(SharedLock.SIZE)  # free (reused heap memory is not zeroed)
        self = cast(_Lock, super().__new__(cls, wrapper.create_memoryview(), cls._recursive))
        self._wrapper = wrapper
        return self

    def __reduce__(self) -> tuple:
        assert_spawning(self)  # only to start a process, as multiprocessing's
        return _rebuild, (type(self), self._wrapper)


class Lock(_Lock):
    """A lock shared by the processes that inherit it (multiprocessing's ``Lock``):
    ``acquire(block=True, timeout=None)``, ``release()``, ``with``; any thread of any
    process may release it."""

    def __repr__(self) -> str:
        if self.holder() is None:
            owner = "None"
        elif self._is_mine():
            owner = _mp_process.current_process().name  # (some thread of this process)
        else:
            owner = "SomeOtherProcess"
        return f"<{type(self).__name__}(owner={owner})>"


class RLock(_Lock):
    """A re-entrant lock shared by the processes that inherit it (multiprocessing's
    ``RLock``): its holder thread may take it again, and only it releases it."""

    _recursive = True

    def __repr__(self) -> str:
        if self.holder() is None:
            owner, count = "None", "0"
        elif self._is_mine():
            owner = _mp_process.current_process().name
            if threading.current_thread().name != "MainThread":
                owner += "|" + threading.current_thread().name
            count = str(self._count())
        else:
            owner, count = "SomeOtherThread", "nonzero"
        return f"<{type(self).__name__}({owner}, {count})>"
