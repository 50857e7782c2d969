"""multiprocessing's context functions, for code written against multiprocessing.

A pool's workers are forked from its zygote (see ``_zygote``). With 'fork' (the default)
the zygote is a copy of the parent made with the pool, so workers see the parent as
multiprocessing's fork shows it; with 'spawn' or 'forkserver' it is a fresh interpreter
that imported the script as a spawned child does (see ``_fresh``), so they see what a
spawned worker sees, and are named as multiprocessing names them (``SpawnPoolWorker-N``).
A ``Process`` follows the start method too: forked by paralelo with 'fork', started the
standard library's way with 'spawn' or 'forkserver' (see ``process``).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
from typing import Any

_METHODS = ("fork", "spawn", "forkserver")
_method: str | None = None


def _check(method: str | None) -> None:
    if method is not None and method not in _METHODS:
        raise ValueError(f"cannot find context for {method!r}")


#: Modules whose pools and queues reach into their primitives' private parts
#: (``_semlock``, ``_reader``): given a paralelo context, they get the standard library's.
_STDLIB = ("multiprocessing.", "concurrent.futures.")


def _standard_for_stdlib(method: Any) -> Any:
    """`method`, except that the standard library's own code calling it (its
    ProcessPoolExecutor or Pool given a paralelo context) gets the standard library's
    object of the same start method."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Context, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_globals.get("__name__", "").startswith(_STDLIB):
            return getattr(multiprocessing.get_context(self.get_start_method()), name)(*args, **kwargs)
        return method(self, *args, **kwargs)

    return wrapper


class Context:
    """What ``get_context()`` returns: the library's classes under one roof."""

    def __init__(self, method: str | None = None) -> None:
        _check(method)
        self._method = method

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return self._method or get_start_method(allow_none)

    def cpu_count(self) -> int:
        return cpu_count()

    @property
    def Process(self) -> type:
        """The ``Process`` class of this context's start method."""
        from .process import PROCESS_FOR_METHOD, Process

        return PROCESS_FOR_METHOD[self._method] if self._method else Process

    @_standard_for_stdlib
    def Lock(self) -> Any:
        """A process-shared lock (``synchronize.Lock``)."""
        from .synchronize import Lock

        return Lock(ctx=self)

    @_standard_for_stdlib
    def RLock(self) -> Any:
        """A process-shared re-entrant lock (``synchronize.RLock``)."""
        from .synchronize import RLock

        return RLock(ctx=self)

    @_standard_for_stdlib
    def Semaphore(self, value: int = 1) -> Any:
        """A process-shared semaphore (``synchronize.Semaphore``)."""
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self)

    @_standard_for_stdlib
    def BoundedSemaphore(self, value: int = 1) -> Any:
        """A process-shared bounded semaphore (``synchronize.BoundedSemaphore``)."""
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self)

    @_standard_for_stdlib
    def Condition(self, lock: Any = None) -> Any:
        """A process-shared condition variable (``synchronize.Condition``)."""
        from .synchronize import Condition

        return Condition(lock, ctx=self)

    @_standard_for_stdlib
    def Event(self) -> Any:
        """A process-shared event (``synchronize.Event``)."""
        from .synchronize import Event

        return Event(ctx=self)

    @_standard_for_stdlib
    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None) -> Any:
        """A process-shared barrier (``synchronize.Barrier``)."""
        from .synchronize import Barrier

        return Barrier(parties, action, timeout, ctx=self)

    @staticmethod
    def Pipe(duplex: bool = True) -> Any:
        """A pair of connected ``Connection``s (``connection.Pipe``)."""
        from .connection import Pipe

        return Pipe(duplex)

    @_standard_for_stdlib
    def Queue(self, maxsize: int = 0) -> Any:
        """A process-shared queue (``queues.Queue``)."""
        from .queues import Queue

        return Queue(maxsize, ctx=self)

    @_standard_for_stdlib
    def JoinableQueue(self, maxsize: int = 0) -> Any:
        """A process-shared queue with ``task_done`` and ``join`` (``queues.JoinableQueue``)."""
        from .queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self)

    @_standard_for_stdlib
    def SimpleQueue(self) -> Any:
        """A simplified process-shared queue (``queues.SimpleQueue``)."""
        from .queues import SimpleQueue

        return SimpleQueue(ctx=self)

    @_standard_for_stdlib
    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
        """A shared ctypes object behind a lock (``sharedctypes.Value``)."""
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self)

    @_standard_for_stdlib
    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
        """A shared ctypes array behind a lock (``sharedctypes.Array``)."""
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self)

    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:
        """A shared ctypes object without a lock (``sharedctypes.RawValue``)."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:
        """A shared ctypes array without a lock (``sharedctypes.RawArray``)."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    @staticmethod
    def current_process() -> Any:
        from .process import current_process

        return current_process()

    @staticmethod
    def parent_process() -> Any:
        from .process import parent_process

        return parent_process()

    @staticmethod
    def active_children() -> list:
        from .process import active_children

        return active_children()

    def Manager(self) -> Any:
        """A started ``SyncManager`` whose server is a process of this context."""
        from .managers import Manager

        return Manager(self)

    def Pool(self, processes: int | None = None, initializer: Any = None, initargs: Any = (),
             maxtasksperchild: int | None = None) -> Any:
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self)

    @property
    def TimeoutError(self) -> type:
        from ._errors import TimeoutError

        return TimeoutError

    # The rest of multiprocessing's context API, as the library's module has it.
    ProcessError = multiprocessing.ProcessError
    BufferTooShort = multiprocessing.BufferTooShort
    AuthenticationError = multiprocessing.AuthenticationError

    @staticmethod
    def get_context(method: str | None = None) -> Context:
        return get_context(method)

    @staticmethod
    def set_start_method(method: str | None, force: bool = False) -> None:
        set_start_method(method, force)

    @staticmethod
    def get_all_start_methods() -> list[str]:
        return get_all_start_methods()

    @staticmethod
    def get_logger() -> Any:
        return multiprocessing.get_logger()

    @staticmethod
    def log_to_stderr(level: Any = None) -> Any:
        return multiprocessing.log_to_stderr(level)

    @staticmethod
    def freeze_support() -> None:
        multiprocessing.freeze_support()

    @staticmethod
    def set_executable(executable: str) -> None:
        multiprocessing.set_executable(executable)

    @staticmethod
    def set_forkserver_preload(module_names: list[str]) -> None:
        multiprocessing.set_forkserver_preload(module_names)

    @staticmethod
    def allow_connection_pickling() -> None:
        multiprocessing.allow_connection_pickling()

    @property
    def reducer(self) -> Any:
        return multiprocessing.reducer


def get_context(method: str | None = None) -> Context:
    """A context; ``method`` is one of 'fork', 'spawn', 'forkserver' or None."""
    return Context(method)


def get_start_method(allow_none: bool = False) -> str | None:
    """The start method set with ``set_start_method``, else 'fork'; with ``allow_none``,
    None if none was set."""
    if _method is None and allow_none:
        return None
    return _method or "fork"


def set_start_method(method: str | None, force: bool = False) -> None:
    """Records the start method, as multiprocessing does (RuntimeError if already set)."""
    global _method
    if _method is not None and not force:
        raise RuntimeError("context has already been set")
    _check(method)
    _method = method


#: What multiprocessing names a pool's workers, and an executor's processes, by start method.
POOL_WORKER = {"fork": "ForkPoolWorker", "spawn": "SpawnPoolWorker", "forkserver": "ForkServerPoolWorker"}
PROCESS = {"fork": "ForkProcess", "spawn": "SpawnProcess", "forkserver": "ForkServerProcess"}


def start_method_of(context: Any) -> str:
    """The start method of a pool made with `context`: a paralelo or multiprocessing
    context's, else (None, or a default context) the one set with paralelo's
    ``set_start_method``, else multiprocessing's (``torch.multiprocessing`` sets that
    one), else 'fork'."""
    method = None
    if context is not None:
        get = getattr(context, "get_start_method", None)
        if not callable(get):
            raise TypeError(f"context must be a multiprocessing or paralelo context, not {type(context).__name__}")
        method = get(allow_none=True)
    if method is None:
        import multiprocessing

        method = _method or multiprocessing.get_start_method(allow_none=True) or "fork"
    _check(method)
    return method


def get_all_start_methods() -> list[str]:
    return list(_METHODS)


def default_workers() -> int:
    """How many workers a pool gets by default: ``PARALELO_WORKERS`` if set (as
    ``paralelo scaling`` sets it), else the CPUs this process may run on."""
    given = os.environ.get("PARALELO_WORKERS")
    if given:
        try:
            n = int(given)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"PARALELO_WORKERS must be a count of 1 or more, not {given!r}")
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_count() -> int:
    """The number of CPUs in the system, as ``multiprocessing.cpu_count``."""
    n = os.cpu_count()
    if n is None:
        raise NotImplementedError("cannot determine number of cpus")
    return n
