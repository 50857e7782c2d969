"""``paralelo.SharedArray``: a numpy array in shared memory, passed to other processes by
handle. A worker that receives one (as a task's argument or result, through a queue or a
pipe, or inherited by a forked ``Process``) maps the same memory: nothing is copied, and
what either side writes the other sees.

An array lives in a ``shared_memory.SharedMemory`` block (a memfd: freed when the last
process holding it lets go, never left behind). It pickles as the block's name and where
in it the array lies (offset, shape, strides, dtype), so a view (a slice, a transpose)
travels as a view of the same memory. A process keeps one mapping per block however many
arrays of it arrive, and unmaps it when its last array of that block is gone.
"""

from __future__ import annotations

import collections
import os
import time
import weakref
from multiprocessing import util
from typing import Any

try:
    import numpy as np
except ImportError:  # pragma: no cover (numpy is in the test extras)
    raise ImportError("paralelo.SharedArray needs numpy: pip install numpy") from None

from .shared_memory import SharedMemory

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]

__all__ = ["SharedArray"]


class _Block:
    """A mapped block and where it starts in this process's memory. The maker's frees
    the name when the last array of it is gone, unless it was handed to another process
    (which then holds it, and through which the name goes on attaching); a receiver's
    only unmaps."""

    __slots__ = ("shm", "base", "size", "maker", "handed", "__weakref__")

    # `maker`: the pid that made it (0: received); a forked child inherits the object,
    # not the role.

    def __init__(self, shm: SharedMemory, maker: bool) -> None:
        self.shm = shm
        self.size = shm.size
        self.base = np.frombuffer(shm.buf, np.uint8).__array_interface__["data"][0]
        self.maker = os.getpid() if maker else 0
        self.handed = False

    def holds(self, arr: np.ndarray) -> bool:
        """Whether `arr`'s memory lies inside this block."""
        if arr.size == 0:
            return True
        lo, hi = _byte_bounds(arr)
        return self.base <= lo and hi <= self.base + self.size

    def __del__(self) -> None:
        try:
            mine = self.maker == os.getpid()
            if mine and self.handed:
                self.shm._forget_name()
            elif mine:
                self.shm.unlink()
            self.shm.close()
        except Exception:  # noqa: BLE001 (at interpreter exit, even `os` may be gone)
            pass


#: Blocks this process made and pickled, kept until their receiver signs for them (so a
#: worker may return an array it made and drop it at once): (block, receipt, when).
_handed: list[tuple[_Block, int, float]] = []
#: A hand-over nobody signs for within this long (pickled, never unpickled) is let go.
_HAND_OVER_TIMEOUT = 60.0
#: At exit, a process waits at most this long for its hand-overs to be signed for (a
#: child that put an array in a queue and ends before its reader took it).
_EXIT_WAIT = 10.0
_exit_hook: Any = None


def _wait_for_receipts() -> None:
    # A poll, not a wait on a word: it runs once, at exit, only while hand-overs are
    # pending, and the receipts are bytes in other blocks' headers.
    end = time.monotonic() + _EXIT_WAIT
    while True:
        _settle()
        if not _handed or time.monotonic() >= end:
            return
        time.sleep(0.005)


def _forget_hand_overs_after_fork() -> None:
    global _exit_hook
    _handed.clear()  # (the parent's to keep: a child made none of them)
    _exit_hook = None


os.register_at_fork(after_in_child=_forget_hand_overs_after_fork)


def _settle() -> None:
    """Lets go of the handed blocks that were signed for (or waited too long)."""
    if _handed:
        now = time.monotonic()
        _handed[:] = [(b, slot, t) for b, slot, t in _handed
                      if not b.shm._signed(slot) and now - t < _HAND_OVER_TIMEOUT]


#: Blocks this process mapped from elsewhere, by name: arrays that arrive for a block
#: already mapped share its mapping.
_attached: weakref.WeakValueDictionary[str, _Block] = weakref.WeakValueDictionary()
#: The last few blocks mapped here stay mapped after their arrays are gone, while their
#: maker keeps them: a worker that gets the same array task after task maps it once (a
#: fresh mapping costs a page fault per 4 KB at first touch: 100 MB read at ≈ 7 GB/s
#: instead of at memory speed).
_recent: collections.OrderedDict[str, _Block] = collections.OrderedDict()
_KEEP = 8
#: ... and no more than this many bytes of them (an idle worker pins what it keeps).
_KEEP_BYTES = 1 << 30


def _attach(name: str, offset: int, shape: tuple, strides: tuple, dtype: Any, receipt: int = -1) -> SharedArray:
    _settle()
    for old in [n for n, b in _recent.items() if not b.shm.alive()]:
        del _recent[old]  # its maker let go: the memory goes with the last holder
    block = _attached.get(name)
    if block is None:
        try:
            block = _Block(SharedMemory(name), maker=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                2, "this SharedArray's memory is gone: every process that held it let go before this one "
                "attached (an array made in a worker must be kept there until its receiver has it)", name) from None
        _attached[name] = block
    block.shm._sign(receipt)  # (the maker may let go now: we hold it)
    _recent[name] = block
    _recent.move_to_end(name)
    while len(_recent) > _KEEP or (len(_recent) > 1 and sum(b.size for b in _recent.values()) > _KEEP_BYTES):
        _recent.popitem(last=False)
    return SharedArray._over(block, offset, shape, strides, dtype)


class SharedArray(np.ndarray):
    """``SharedArray(shape, dtype=float)``: a zero-filled numpy array in shared memory,
    which other processes receive by handle (no copy; writes are seen on both sides).
    ``SharedArray.from_array(a)`` makes one holding a copy of ``a``. Slices and other
    views of it are shared too; results of arithmetic on it are ordinary memory."""

    _block: _Block | None

    def __new__(cls, shape: Any, dtype: Any = float, order: Any = "C") -> SharedArray:
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(f"a SharedArray holds plain data, not Python objects (dtype {dtype})")
        count = 1
        for n in (shape,) if isinstance(shape, int) else shape:
            count *= int(n)
        if count < 0:
            raise ValueError("negative dimensions are not allowed")
        _settle()
        block = _Block(SharedMemory(create=True, size=max(count * dtype.itemsize, 1)), maker=True)
        arr = np.ndarray.__new__(cls, shape, dtype, buffer=block.shm.buf, order=order)
        arr._block = block
        return arr

    @classmethod
    def from_array(cls, a: Any) -> SharedArray:
        """A SharedArray holding a copy of `a` (same shape and dtype)."""
        a = np.asarray(a)
        out = cls(a.shape, a.dtype)
        out[...] = a
        return out

    @classmethod
    def _over(cls, block: _Block, offset: int, shape: tuple, strides: tuple, dtype: Any) -> SharedArray:
        arr = np.ndarray.__new__(cls, shape, dtype, buffer=block.shm.buf, offset=offset, strides=strides)
        arr._block = block
        return arr

    def __array_finalize__(self, obj: Any) -> None:
        # A view of shared memory stays shared; new memory (a ufunc's result) does not.
        block = getattr(obj, "_block", None)
        self._block = block if block is not None and block.holds(self) else None

    def __reduce__(self) -> tuple:
        block = self._block
        if block is None or not block.holds(self):
            return np.asarray(self).view(np.ndarray).__reduce__()  # type: ignore[return-value]
        # (Where the first element is: with negative strides, not the lowest byte.)
        offset = self.__array_interface__["data"][0] - block.base if self.size else 0
        receipt = -1
        if block.maker == os.getpid():
            _settle()
            block.handed = True
            receipt = block.shm._hand_out()
            _handed.append((block, receipt, time.monotonic()))
            global _exit_hook
            if _exit_hook is None:
                # After the queues' feeders flushed (their join runs at priority -5).
                _exit_hook = util.Finalize(None, _wait_for_receipts, exitpriority=-10)
        return _attach, (block.shm.name, offset, self.shape, self.strides, self.dtype, receipt)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return self.__reduce__()
