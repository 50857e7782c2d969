"""Large result arrays in recycled memory.

The C library maps every allocation of 32 MiB or more afresh and unmaps it when freed,
so each large ``numpy.empty`` pays the kernel for zeroed pages as they are first
written: about 4 ms of a 10 ms ``evaluate("2*a + 3*b")`` over 10 M doubles. A result
made here is a view of an anonymous mapping that goes back to a small pool once the
array, and every view of it, is gone; the next result of that size takes it, its pages
resident already. At most `KEEP` bytes wait in the pool, and a forked child starts with
none.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from typing import Any

#: Results smaller than this come from numpy (the C library's heap reuses their memory).
MIN_BYTES = 32 << 20
#: Bytes of dropped results kept for reuse, at most.
KEEP = 256 << 20
#: Mappings are sized in whole huge pages, so that near sizes share them.
_GRAIN = 2 << 20

#: Reentrant: a result in a reference cycle may be collected, and given back, while this
#: thread holds it.
_lock = threading.RLock()
_free: dict[int, list[mmap.mmap]] = {}
_kept = 0


def empty(np: Any, shape: tuple, dtype: Any, order: str) -> Any:
    """``numpy.empty(shape, dtype, order=order)``, in recycled memory when large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype, order=order)
    size = -(-nbytes // _GRAIN) * _GRAIN
    memory = _take(size)
    if memory is None:
        memory = mmap.mmap(-1, size)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                memory.madvise(mmap.MADV_HUGEPAGE)  # (fewer, cheaper faults the first time)
            except OSError:
                pass
    array = np.ndarray(shape, dtype, buffer=memory, order=order)
    # (A view of the result keeps the result alive, so the memory waits for the views too.)
    weakref.finalize(array, _give_back, memory, os.getpid()).atexit = False
    return array


def release() -> None:
    """Lets go of every kept mapping."""
    global _kept
    with _lock:
        _free.clear()
        _kept = 0


def _take(size: int) -> mmap.mmap | None:
    global _kept
    with _lock:
        maps = _free.get(size)
        if not maps:
            return None
        _kept -= size
        return maps.pop()


def _give_back(memory: mmap.mmap, pid: int) -> None:
    global _kept
    size = len(memory)
    if pid != os.getpid():
        return  # (a forked child's copy of its parent's result)
    with _lock:
        if _kept + size > KEEP:
            return
        _free.setdefault(size, []).append(memory)
        _kept += size


def _forget_after_fork() -> None:
    global _lock, _free, _kept
    _lock, _free, _kept = threading.RLock(), {}, 0


os.register_at_fork(after_in_child=_forget_after_fork)
