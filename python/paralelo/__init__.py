"""paralelo: parallel processing for Python on a Rust engine.

A drop-in for ``multiprocessing.Pool`` and ``concurrent.futures.ProcessPoolExecutor``:
change the import, keep the code. Workers talk to the parent through shared-memory rings;
functions travel by value, so lambdas and closures work; a dead worker fails only its own
task; nothing outlives the program.
"""

from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool

from ._errors import (
    CorruptRingError,
    LockOwnerDiedWarning,
    RemoteError,
    RemoteTraceback,
    ResultPicklingError,
    ResultUnpicklingError,
    TaskUnpicklingError,
    TimeoutError,
    TaskTimeoutError,
    WorkerLostError,
)
from .context import (
    Context,
    cpu_count,
    get_all_start_methods,
    get_context,
    get_start_method,
    set_start_method,
)
from .futures import ProcessPoolExecutor
from .pool import AsyncResult, Pool
from .process import Process, active_children, current_process, parent_process
from .sharedctypes import Array, RawArray, RawValue, Value
from .synchronize import Lock, RLock

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Array",
    "AsyncResult",
    "BrokenExecutor",
    "BrokenProcessPool",
    "CancelledError",
    "Context",
    "CorruptRingError",
    "Executor",
    "Future",
    "InvalidStateError",
    "Lock",
    "LockOwnerDiedWarning",
    "Pool",
    "Process",
    "RLock",
    "RawArray",
    "RawValue",
    "ProcessPoolExecutor",
    "RemoteError",
    "RemoteTraceback",
    "ResultPicklingError",
    "ResultUnpicklingError",
    "TaskUnpicklingError",
    "ThreadPoolExecutor",
    "TimeoutError",
    "TaskTimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "as_completed",
    "cpu_count",
    "current_process",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "parent_process",
    "set_start_method",
    "wait",
]
