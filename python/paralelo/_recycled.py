"""Large result arrays in recycled memory.

The C library maps every allocation of 32 MiB or more afresh and unmaps it when freed,
so each large ``numpy.empty`` pays the kernel for zeroed pages as they are first
written: about 4 ms of a 10 ms ``evaluate("2*a + 3*b")`` over 10 M doubles. A result
made here lives in a private anonymous mapping that goes back to a small pool once the
array, every view of it and anything else holding its memory are gone; the next result
of that size takes it, its pages resident already. At most ``KEEP`` bytes wait in the
pool, the oldest let go first (``PARALELO_KEEP_RESULTS_MB``, 256 by default; 0 turns
recycling off), and a forked child starts with none.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys
import threading
import weakref
from typing import Any

#: Results smaller than this come from numpy (the C library's heap reuses their memory).
MIN_BYTES = 32 << 20
#: Bytes of dropped results kept for reuse, at most.
KEEP = int(float(os.environ.get("PARALELO_KEEP_RESULTS_MB", "256")) * (1 << 20))
#: Mappings are sized in whole huge pages, so that near sizes share them.
_GRAIN = 2 << 20

#: Reentrant: a result in a reference cycle may be collected, and given back, while this
#: thread holds it.
_lock = threading.RLock()
#: Dropped results' mappings, oldest first.
_free: list[mmap.mmap] = []


def empty(np: Any, shape: tuple, dtype: Any, order: str) -> Any:
    """``numpy.empty(shape, dtype, order=order)``, in recycled memory when large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or KEEP < nbytes:
        return np.empty(shape, dtype, order=order)
    size = -(-nbytes // _GRAIN) * _GRAIN
    memory = _take(size)
    if memory is None:
        try:
            # Private: a forked child's writes, and this process's next results, are
            # never each other's.
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        except OSError:
            return np.empty(shape, dtype, order=order)  # (numpy says MemoryError)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                memory.madvise(mmap.MADV_HUGEPAGE)  # (fewer, cheaper faults the first time)
            except OSError:
                pass
    # The array's base holds the mapping open (its `close` cannot unmap it under the
    # array) and is not the mapping itself.
    holder = (ctypes.c_char * size).from_buffer(memory)
    array = np.ndarray(shape, dtype, buffer=holder, order=order)
    # (A view of the result keeps the result alive, so the memory waits for the views too.)
    weakref.finalize(array, _give_back, memory, os.getpid()).atexit = False
    return array


def release() -> None:
    """Lets go of every kept mapping."""
    with _lock:
        _free.clear()


def kept() -> int:
    """Bytes of dropped results waiting for reuse."""
    with _lock:
        return sum(len(m) for m in _free)


def _count(maps: list, i: int) -> int:
    return sys.getrefcount(maps[i])


#: `_count` of a mapping the pool alone holds. One counted higher is still reached from
#: elsewhere: a result collected in a reference cycle is given back before a finalizer
#: of that cycle may revive it, and a result's base may outlive the result.
_ALONE = _count([object()], 0)


def _take(size: int) -> mmap.mmap | None:
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if len(_free[i]) == size and _count(_free, i) <= _ALONE:
                return _free.pop(i)
    return None


def _give_back(memory: mmap.mmap, pid: int) -> None:
    if pid != os.getpid():
        return  # (a forked child's copy of its parent's result)
    with _lock:
        _free.append(memory)
        total = sum(len(m) for m in _free)
        while total > KEEP and _free:
            total -= len(_free.pop(0))


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.RLock()
    _free.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
