"""``paralelo.SharedArray``: a numpy array in shared memory, passed to other processes by
handle. A worker that receives one (as a task's argument or result, through a queue or a
pipe, or inherited by a forked ``Process``) maps the same memory: nothing is copied, and
what either side writes the other sees.

An array lives in a block of the program's arena (``_arena``: one memfd every process
keeps mapped, so a new array reuses memory that is already resident, and a transfer maps
nothing). It pickles as the bytes it spans in its block, out of band (pickle protocol
5: paralelo's messages carry the block itself, lent or handed over with the message like
any big buffer, so the block lives until the receiver holds it, even if the sender lets
go or ends first; a plain pickler copies the bytes), and where its first element lies
among them, with its shape, strides and dtype, so a view (a slice, a transpose) travels
as a view of the same memory. With an older protocol, the pickle made while spawning a
process is given the block at once; any other copies it. The block is freed when the last
array of it, in any process, is gone.
"""

from __future__ import annotations

import pickle
from typing import Any, cast

try:
    import numpy as np
except ImportError:  # pragma: no cover (numpy is in the test extras)
    raise ImportError("paralelo.SharedArray needs numpy: pip install numpy") from None

from . import _arena, _native

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]

__all__ = ["SharedArray"]


def _rebuild(buffer: Any, first: int, shape: tuple, strides: tuple, dtype: Any) -> np.ndarray:
    """A SharedArray from its span: the block itself when it came out of band (a view of
    the arena), else an ordinary array holding the copy a plain pickle made."""
    if type(buffer) is _native.ArenaBuffer:
        _arena.current().mark_shared(buffer)  # type: ignore[union-attr]
        return np.ndarray.__new__(SharedArray, shape, dtype, buffer=cast(Any, buffer), offset=first, strides=strides)
    return np.ndarray(shape, dtype, buffer=buffer, offset=first, strides=strides)


def _views_arena(a: np.ndarray) -> bool:
    """Whether `a`'s memory is an arena block's (its base chain ends in one)."""
    base = a.base
    while isinstance(base, np.ndarray):
        base = base.base
    return type(base) is _native.ArenaBuffer


def _attach(descriptor: bytes, first: int, shape: tuple, strides: tuple, dtype: Any, arena: Any,
            arena_id: int) -> SharedArray:
    _arena.adopt(arena)
    a = _arena.current()
    if a is None or a.id != arena_id:
        raise RuntimeError("this SharedArray's memory is in an arena this process does not map (one it "
                           "made itself before the array arrived: at import, say)")
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

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # What a ufunc or a reduction made is ordinary memory (a plain array, or a scalar):
        # only results written into shared memory (``out=``) stay SharedArrays.
        if type(array) is SharedArray and _views_arena(array):
            return array
        plain = array.view(np.ndarray) if isinstance(array, np.ndarray) else array
        if return_scalar and isinstance(plain, np.ndarray) and plain.ndim == 0:
            return plain[()]
        return plain

    def copy(self, order: Any = "C") -> np.ndarray:  # type: ignore[override]
        """A copy, in ordinary memory (``SharedArray.from_array`` makes a shared one)."""
        return np.array(self, order=order, copy=True, subok=False)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        a = _arena.current()
        if self.size and a is not None:
            lo, hi = _byte_bounds(self)
            # (Where the first element is: with negative strides, not the lowest byte.)
            first = self.__array_interface__["data"][0] - lo
            if protocol >= 5:
                # Out of band: paralelo's frames lend or hand over the span with its
                # message (never before it goes out, so a pickle made twice or never sent
                # costs nothing); any other pickler copies it in-band.
                span = a.share_span(lo, hi - lo)
                if span is not None:
                    return _rebuild, (pickle.PickleBuffer(cast(Any, span)), first, self.shape, self.strides, self.dtype)
            elif _arena.spawning():
                # (multiprocessing's pickler, spawning a process: the one pickle is taken
                # there, so the block is given to it now.)
                descriptor = a.give_span(lo, hi - lo)
                if descriptor is not None:
                    return _attach, (descriptor, first, self.shape, self.strides, self.dtype,
                                     _arena.for_spawning(), a.id)
        return np.asarray(self).view(np.ndarray).__reduce_ex__(protocol)  # type: ignore[return-value]

    def __reduce__(self) -> tuple:
        return self.__reduce_ex__(2)
