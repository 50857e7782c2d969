"""``paralelo.SharedArray``: a numpy array in shared memory, passed to other processes by
handle. A worker that receives one (as a task's argument or result, through a queue or a
pipe, or inherited by a forked ``Process``) maps the same memory: nothing is copied, and
what either side writes the other sees.

An array lives in a block of the program's arena (``_arena``: one memfd every process
keeps mapped, so a new array reuses memory that is already resident, and a transfer maps
nothing). It pickles as a descriptor of the bytes it spans in its block (given to the
message: the block lives until the receiver holds it, even if the sender lets go or
ends first) and where its first element lies among them, with its shape, strides and
dtype, so a view (a slice, a transpose) travels as a view of the same memory. The block
is freed when the last array of it, in any process, is gone.
"""

from __future__ import annotations

from typing import Any, cast

try:
    import numpy as np
except ImportError:  # pragma: no cover (numpy is in the test extras)
    raise ImportError("paralelo.SharedArray needs numpy: pip install numpy") from None

from . import _arena

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]

__all__ = ["SharedArray"]


def _attach(descriptor: bytes, first: int, shape: tuple, strides: tuple, dtype: Any, arena: Any = None) -> SharedArray:
    _arena.adopt(arena)
    a = _arena.current()
    if a is None:
        raise RuntimeError("this SharedArray's memory is in another program's arena")
    view = a.take(descriptor, True, True)
    return np.ndarray.__new__(SharedArray, shape, dtype, buffer=cast(Any, view), offset=first, strides=strides)


class SharedArray(np.ndarray):
    """``SharedArray(shape, dtype=float)``: a zero-filled numpy array in shared memory,
    which other processes receive by handle (no copy; writes are seen on both sides).
    ``SharedArray.from_array(a)`` makes one holding a copy of ``a``. Slices and other
    views of it are shared too; results of arithmetic on it are ordinary memory (they
    pickle by value)."""

    def __new__(cls, shape: Any, dtype: Any = float, order: Any = "C") -> SharedArray:
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise TypeError(f"a SharedArray holds plain data, not Python objects (dtype {dtype})")
        count = 1
        for n in (shape,) if isinstance(shape, int) else shape:
            count *= int(n)
        if count < 0:
            raise ValueError("negative dimensions are not allowed")
        nbytes = count * dtype.itemsize
        if nbytes == 0:
            return np.ndarray.__new__(cls, shape, dtype, order=order)
        a = _arena.arena()
        buf = a.alloc(nbytes) if a is not None else None
        if buf is None:
            raise MemoryError(f"no room for a {nbytes}-byte SharedArray in the shared-memory arena")
        # (cast: an ArenaBuffer has the buffer protocol, which the 3.11 typeshed cannot name)
        return np.ndarray.__new__(cls, shape, dtype, buffer=cast(Any, buf), order=order)

    @classmethod
    def from_array(cls, a: Any) -> SharedArray:
        """A SharedArray holding a copy of `a` (same shape and dtype)."""
        a = np.asarray(a)
        out = cls(a.shape, a.dtype)
        out[...] = a
        return out

    def __reduce__(self) -> tuple:
        a = _arena.current()
        if self.size and a is not None:
            lo, hi = _byte_bounds(self)
            descriptor = a.give_span(lo, hi - lo)
            if descriptor is not None:
                # (Where the first element is: with negative strides, not the lowest byte.)
                first = self.__array_interface__["data"][0] - lo
                return _attach, (descriptor, first, self.shape, self.strides, self.dtype, _arena.for_spawning())
        return np.asarray(self).view(np.ndarray).__reduce__()  # type: ignore[return-value]

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return self.__reduce__()
