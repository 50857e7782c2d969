"""Large result arrays in recycled memory.

The C library maps every allocation of 32 MiB or more afresh and unmaps it when freed,
so each large ``numpy.empty`` pays the kernel for zeroed pages as they are first
written: about 4 ms of a 10 ms ``evaluate("2*a + 3*b")`` over 10 M doubles. A result
made here lives in a private anonymous mapping that goes back to a small pool once the
array, every view of it and anything else holding its memory are gone; the next result
of that size takes it, its pages resident already. At most ``KEEP`` bytes wait in the
pool, the oldest let go first (``PARALELO_KEEP_RESULTS_MB``, 256 by default; 0 turns
recycling off). A fork copies none of the pool's mappings that no one else holds (the
child has them zeroed, and lets go of them at once): kept memory costs a fork nothing,
and a forked child starts with an empty pool.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import weakref
from typing import Any

#: Results smaller than this come from numpy (the C library's heap reuses their memory).
MIN_BYTES = 32 << 20


def _keep() -> int:
    value = os.environ.get("PARALELO_KEEP_RESULTS_MB", "").strip() or "256"
    try:
        mb = float(value)
        if not mb >= 0:
            raise ValueError("not a number of MiB, 0 or more")
        return int(min(mb, 1 << 40) * (1 << 20))
    except ValueError as e:
        import warnings

        warnings.warn(f"PARALELO_KEEP_RESULTS_MB={value!r} ignored ({e}): 256 MiB are kept", RuntimeWarning,
                      stacklevel=2)
        return 256 << 20


#: Bytes of dropped results kept for reuse, at most.
KEEP = _keep()
#: Mappings are sized in whole huge pages, so that near sizes share them.
_GRAIN = 2 << 20
#: Linux's advice that a child gets a range zeroed rather than copied, and its undoing
#: (the mmap module names them from Python 3.12).
_WIPE_ON_FORK = getattr(mmap, "MADV_WIPEONFORK", 18)
_KEEP_ON_FORK = getattr(mmap, "MADV_KEEPONFORK", 19)

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
    holder = (_ctypes().c_char * size).from_buffer(memory)
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


def spared_at_fork() -> int:
    """Bytes of this process's resident memory that a fork will not copy: the pool's
    mappings no one else holds (see `_before_fork`), as far as their pages are in memory."""
    with _lock:
        return sum(_resident(_free[i]) for i in range(len(_free)) if _count(_free, i) <= _ALONE)


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
                memory = _free.pop(i)
                _advise(memory, _KEEP_ON_FORK)  # (a result's: a child may read it)
                return memory
    return None


def _give_back(memory: mmap.mmap, pid: int) -> None:
    if pid != os.getpid():
        return  # (a forked child's copy of its parent's result)
    with _lock:
        _free.append(memory)
        total = sum(len(m) for m in _free)
        while total > KEEP and _free:
            total -= len(_free.pop(0))


def _advise(memory: mmap.mmap, advice: int) -> None:
    try:
        memory.madvise(advice)
    except (OSError, ValueError):
        pass  # (a kernel before 4.14: forks copy the pool, as any memory)


def _resident(memory: mmap.mmap) -> int:
    """Bytes of `memory` in RAM (mincore), 0 where that cannot be told."""
    ctypes = _ctypes()
    pages = -(-len(memory) // mmap.PAGESIZE)
    found = (ctypes.c_ubyte * pages)()
    start = ctypes.c_char.from_buffer(memory)
    try:
        failed = _libc.mincore(ctypes.addressof(start), len(memory), found)
    finally:
        del start  # (its export would keep the mapping from being closed)
    return 0 if failed else (pages - bytes(found).count(0)) * mmap.PAGESIZE


_libc: Any = None


def _ctypes() -> Any:
    """ctypes, with the C library's mincore, loaded when a large result first needs them
    (importing ctypes cost a process's first `evaluate` a millisecond)."""
    global _libc
    import ctypes

    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        _libc = libc
    return ctypes


def _before_fork() -> None:
    # The pool's mappings no one else holds are zeroed in the child, not copied: a fork
    # then copies none of their page tables (3.5 ms per 256 MiB of small pages), and the
    # child drops its pool anyway. One still held elsewhere (a dropped result's base
    # kept) is copied, as the child may read it.
    with _lock:
        for i in range(len(_free)):
            if _count(_free, i) <= _ALONE:
                _advise(_free[i], _WIPE_ON_FORK)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.RLock()
    _free.clear()


os.register_at_fork(before=_before_fork, after_in_child=_forget_after_fork)
