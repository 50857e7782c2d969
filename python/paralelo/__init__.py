"""paralelo: parallel processing for Python on a Rust engine.

A drop-in for ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``:
change the import, keep the code. Workers talk to the parent through shared-memory rings;
functions travel by value, so lambdas and closures work; a dead worker fails only its own
task; nothing outlives the program.
"""

import importlib
from typing import TYPE_CHECKING, Any

from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    as_completed,
    wait,
)
from multiprocessing import AuthenticationError, BufferTooShort, ProcessError
# multiprocessing's own: they configure its logger, and the 'spawn' and 'forkserver'
# starts a paralelo Process shares with it.
from multiprocessing import (
    allow_connection_pickling,
    freeze_support,
    get_logger,
    log_to_stderr,
    set_executable,
    set_forkserver_preload,
)

from ._errors import (
    CorruptRingError,
    AbandonedLockError,
    RemoteError,
    RemoteTraceback,
    ResultPicklingError,
    TimeoutError,
    TaskTimeoutError,
)
from .context import (
    Context,
    cpu_count,
    get_all_start_methods,
    get_context,
    get_start_method,
    set_start_method,
)

if TYPE_CHECKING:
    from . import aio
    from ._broken import BrokenProcessPool, ResultUnpicklingError, TaskUnpicklingError, WorkerLostError
    from .futures import ProcessPoolExecutor
    from .pool import AsyncResult, Pool, ThreadPool
    from .threads import BrokenThreadPool, ThreadPoolExecutor
    from ._lockdebug import debug_locks
    from .connection import Pipe
    from .amdahl import Scaling, scaling
    from ._profiling import Profile, profile
    from ._tracing import Trace, trace
    from ._cluster import set_backend
    from .expressions import (cuda_available, detect_number_of_cores, evaluate, get_num_threads, ncores, re_evaluate,
                              set_num_threads, validate)
    from .managers import Manager
    from .process import Process, active_children, current_process, parent_process
    from .queues import JoinableQueue, Queue, SimpleQueue
    from .sharedarray import SharedArray
    from .sharedctypes import Array, RawArray, RawValue, Value
    from .synchronize import (Barrier, BoundedSemaphore, BrokenBarrierError, Condition, Event, Lock,
                              RLock, Semaphore)

# Imported on first use: a program pays only for what it uses. Modules cost milliseconds
# to import and, in every fork after, the copying of their memory and mappings (with the
# pool's modules loaded, a bare fork takes 1.3 ms here against 0.8 ms without).
# (A dotted module is the standard library's.)
_LAZY = {
    "Pool": "pool", "AsyncResult": "pool", "ProcessPoolExecutor": "futures",
    "BrokenProcessPool": "_broken", "WorkerLostError": "_broken",
    "TaskUnpicklingError": "_broken", "ResultUnpicklingError": "_broken",
    "ThreadPoolExecutor": "threads", "BrokenThreadPool": "threads", "ThreadPool": "pool",
    "debug_locks": "_lockdebug",
    "util": "multiprocessing.util", "reduction": "multiprocessing.reduction", "dummy": "multiprocessing.dummy",
    "Process": "process", "active_children": "process", "current_process": "process",
    "parent_process": "process", "Lock": "synchronize", "RLock": "synchronize",
    "Semaphore": "synchronize", "BoundedSemaphore": "synchronize", "Condition": "synchronize",
    "Event": "synchronize", "Barrier": "synchronize", "BrokenBarrierError": "synchronize",
    "Value": "sharedctypes", "Array": "sharedctypes", "RawValue": "sharedctypes",
    "RawArray": "sharedctypes", "Queue": "queues", "SimpleQueue": "queues",
    "JoinableQueue": "queues", "Pipe": "connection", "SharedArray": "sharedarray",
    "Manager": "managers", "aio": "paralelo.aio", "scaling": "amdahl", "Scaling": "amdahl",
    "profile": "_profiling", "Profile": "_profiling", "trace": "_tracing", "Trace": "_tracing",
    "set_backend": "_cluster", "evaluate": "expressions", "re_evaluate": "expressions", "validate": "expressions",
    "cuda_available": "expressions", "set_num_threads": "expressions", "get_num_threads": "expressions",
    "detect_number_of_cores": "expressions", "ncores": "expressions",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'paralelo' has no attribute {name!r}")
    found = importlib.import_module(module if "." in module else f"{__name__}.{module}")
    value = found if module.endswith(f".{name}") else getattr(found, name)  # (a module itself: util)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

if __import__("os").environ.get("PARALELO_DEBUG_LOCKS"):
    from . import _lockdebug  # noqa: F401  (turns lock debugging on: see there)

__version__ = "0.1.0"

__all__ = [
    "aio",
    "set_backend",
    "evaluate",
    "re_evaluate",
    "cuda_available",
    "validate",
    "set_num_threads",
    "get_num_threads",
    "detect_number_of_cores",
    "ncores",
    "debug_locks",
    "BrokenThreadPool",
    "ThreadPool",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Semaphore",
    "AbandonedLockError",
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Array",
    "AsyncResult",
    "AuthenticationError",
    "BrokenExecutor",
    "BrokenProcessPool",
    "BufferTooShort",
    "CancelledError",
    "Context",
    "CorruptRingError",
    "Executor",
    "Future",
    "InvalidStateError",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "ProcessError",
    "Process",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Scaling",
    "scaling",
    "Profile",
    "profile",
    "Trace",
    "trace",
    "ProcessPoolExecutor",
    "RemoteError",
    "RemoteTraceback",
    "SharedArray",
    "SimpleQueue",
    "ResultPicklingError",
    "ResultUnpicklingError",
    "TaskUnpicklingError",
    "ThreadPoolExecutor",
    "TimeoutError",
    "TaskTimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "allow_connection_pickling",
    "as_completed",
    "cpu_count",
    "freeze_support",
    "current_process",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "wait",
]

# joblib's "paralelo" back end: registered once joblib is imported too (see `_joblib`).
from . import _joblib as _joblib_backend  # noqa: E402

_joblib_backend.install()
