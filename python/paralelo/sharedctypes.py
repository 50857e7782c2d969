"""``multiprocessing.sharedctypes`` — ``Value``, ``Array``, ``RawValue``, ``RawArray`` —
with paralelo's locks.

The objects are the standard library's own: ctypes objects in shared memory from
``multiprocessing.heap`` (so writes are seen by every process that inherits them, with
no copy), wrapped, unless ``lock=False``, in its ``Synchronized`` classes (``value``,
``get_lock()``, ``get_obj()``, indexing and slicing). What paralelo changes is the lock
they are made with: its own ``RLock`` (see ``synchronize``), a futex word that costs no
system call when uncontended and is taken from a holder that died, not waited on for
ever.
"""

from __future__ import annotations

from multiprocessing import sharedctypes as _mp
from typing import Any

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]


def _context(ctx: Any) -> Any:
    if ctx is not None:
        return ctx
    from .context import get_context

    return get_context()


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock."""
    return _mp.RawValue(typecode_or_type, *args)


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, without a lock."""
    return _mp.RawArray(typecode_or_type, size_or_initializer)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes object in shared memory, behind a lock (paralelo's ``RLock`` with
    ``lock=True``, the one given, or none with ``lock=False``)."""
    return _mp.Value(typecode_or_type, *args, lock=lock, ctx=_context(ctx))


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes array in shared memory, behind a lock (as ``Value``)."""
    return _mp.Array(typecode_or_type, size_or_initializer, lock=lock, ctx=_context(ctx))


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """`obj` wrapped so that its accesses take `lock` (a new paralelo ``RLock`` if None)."""
    return _mp.synchronized(obj, lock, ctx=_context(ctx))


def copy(obj: Any) -> Any:
    """A new shared ctypes object holding a copy of `obj`."""
    return _mp.copy(obj)
