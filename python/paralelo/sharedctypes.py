"""``multiprocessing.sharedctypes`` — ``Value``, ``Array``, ``RawValue``, ``RawArray`` —
with paralelo's locks.

The objects are the standard library's own: ctypes objects in shared memory from
``multiprocessing.heap`` (so writes are seen by every process that inherits them, with
no copy), wrapped, unless ``lock=False``, in its ``Synchronized`` classes (``value``,
``get_lock()``, ``get_obj()``, indexing and slicing). What paralelo changes is the lock
they are made with: its own ``RLock`` (see ``synchronize``), a futex word that costs no
system call when uncontended and is taken from a holder that died, not waited on for
ever; and a single value's wrapper (``Value('i')`` and the like), whose ``value`` is read
and written under the lock in one native call.
"""

from __future__ import annotations

import ctypes
from multiprocessing import sharedctypes as _mp
from multiprocessing.context import assert_spawning
from typing import Any

from ._native import SharedLock, SyncValue

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


class Synchronized(SyncValue):
    """A single ctypes value in shared memory behind a paralelo lock: ``value`` (read and
    written under the lock), ``get_lock()``, ``get_obj()``, ``acquire``/``release``,
    ``with``. (multiprocessing's ``Synchronized``, its hot path native.)"""

    def __reduce__(self) -> tuple:
        assert_spawning(self)  # only to start a process, as multiprocessing's
        return synchronized, (self.get_obj(), self.get_lock())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self.get_obj()}>"


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes object in shared memory, behind a lock (paralelo's ``RLock`` with
    ``lock=True``, the one given, or none with ``lock=False``)."""
    obj = _mp.RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    if lock in (True, None):
        lock = _context(ctx).RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return synchronized(obj, lock, ctx)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes array in shared memory, behind a lock (as ``Value``)."""
    return _mp.Array(typecode_or_type, size_or_initializer, lock=lock, ctx=_context(ctx))


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """`obj` wrapped so that its accesses take `lock` (a new paralelo ``RLock`` if None)."""
    if lock is None:
        lock = _context(ctx).RLock()
    if isinstance(obj, ctypes._SimpleCData) and isinstance(lock, SharedLock):
        return Synchronized(obj, lock)
    return _mp.synchronized(obj, lock, ctx=_context(ctx))


def copy(obj: Any) -> Any:
    """A new shared ctypes object holding a copy of `obj`."""
    return _mp.copy(obj)
