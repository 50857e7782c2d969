"""paralelo's exceptions. They subclass the standard library's, so ``except`` clauses
written for multiprocessing or concurrent.futures keep working."""

from __future__ import annotations

import builtins
import multiprocessing
import pickle
import threading
import traceback
from typing import Any


#: What every timeout paralelo or concurrent.futures raises is: the built-in
#: ``TimeoutError`` (which is ``concurrent.futures.TimeoutError`` on 3.11), so
#: ``except paralelo.TimeoutError`` catches ``Future.result``'s, ``as_completed``'s and
#: ``wait``'s too.
TimeoutError = builtins.TimeoutError  # noqa: A001


class PoolTimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """A Pool's wait (``AsyncResult.get``, ``IMapIterator.next``) ran out of time.

    Raised where multiprocessing raises ``multiprocessing.TimeoutError``, so both that and
    the built-in ``TimeoutError`` (``paralelo.TimeoutError``) catch it.
    """


class TaskTimeoutError(builtins.TimeoutError):
    """A task ran past its time limit (``task_timeout``): its worker was killed and
    replaced, and only this task fails. A ``TimeoutError``, so ``except
    paralelo.TimeoutError`` catches it."""


class ResultPicklingError(pickle.PicklingError):
    """A task's result could not be pickled in the worker (a ``pickle.PicklingError``;
    a Pool raises multiprocessing's ``MaybeEncodingError`` instead, as multiprocessing
    does). ``__cause__`` carries the worker's traceback; ``args`` are the message, the
    result's repr and the reason's repr (what ``MaybeEncodingError`` shows)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unpicklable_result(result: Any, e: BaseException) -> ResultPicklingError:
    """The error for `result`, which pickling failed on with `e` (its cause)."""
    shown = repr(result)
    if len(shown) > 1000:
        shown = shown[:1000] + "..."
    err = ResultPicklingError(f"cannot pickle the task's result: {type(e).__name__}: {e}", shown, repr(e))
    err.__cause__ = e
    return err


class _Shown:
    """Stands for a value by the repr the worker saw (MaybeEncodingError reprs its args)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def as_pool_error(exc: BaseException) -> BaseException:
    """What a Pool raises for `exc`: multiprocessing's ``MaybeEncodingError`` for a result
    the worker could not pickle (caused by it), else `exc` itself."""
    if isinstance(exc, ResultPicklingError):
        from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]

        shown, reason = exc.args[1:3] if len(exc.args) >= 3 else ("<the task's result>", repr(exc))
        err = MaybeEncodingError(_Shown(reason), _Shown(shown))
        err.__cause__ = exc
        return err
    return exc


def interrupted(e: BaseException) -> bool:
    """Whether `e` is Ctrl-C on the main thread, to re-raise (not a task's failure). Elsewhere
    a KeyboardInterrupt can only come from user code (a ``__reduce__``): a failure like any."""
    return isinstance(e, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()


def pickling_failed(what: str, cause: BaseException) -> BaseException:
    """What is raised for `what` (say "the task") that could not be pickled in this
    process: `cause` itself, as multiprocessing and concurrent.futures raise it (an
    ``except TypeError`` written for them still catches it), with a note naming what was
    being pickled. A cause that is no ``Exception`` (a ``__reduce__`` that raised
    SystemExit, or KeyboardInterrupt off the main thread) is never raised raw: a
    ``pickle.PicklingError`` caused by it instead."""
    if isinstance(cause, Exception):
        cause.add_note(f"(raised while pickling {what} for a worker)")
        return cause
    err = pickle.PicklingError(f"cannot pickle {what}: {type(cause).__name__}: {cause}")
    err.__cause__ = cause
    return err


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker; attached as the
    ``__cause__`` of the exception the caller sees."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """An exception raised in a worker that could not be sent back as itself (it could
    not be pickled or unpickled); its type name and message are kept."""


class CorruptRingError(RuntimeError):
    """A worker wrote to shared memory outside the protocol (a memory-corrupting crash,
    or a foreign writer). The engine stops reading that worker's ring, kills and replaces
    the worker, and fails or retries its tasks; the exception is their ``__cause__``.

    ``slot`` is the worker's slot in its pool (None where no slot applies)."""

    def __init__(self, slot: int | None, detail: str) -> None:
        where = "a shared ring" if slot is None else f"worker slot {slot}"
        super().__init__(f"{where}: corrupt ring: {detail}")
        self.slot = slot
        self.detail = detail

    def __reduce__(self) -> tuple:
        return (type(self), (self.slot, self.detail))


# How exceptions cross from a worker to the parent.


def dump_error(exc: BaseException) -> bytes:
    """Pickles an exception with its formatted traceback, falling back to a RemoteError
    that names it when it cannot be pickled."""
    from ._pickling import PROTOCOL, dumps

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\n{tb}"""'
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        inner = dumps(exc)
    except BaseException as e:  # noqa: BLE001 - even a __reduce__ that exits
        # As a result that cannot be pickled (a Pool raises MaybeEncodingError, as
        # multiprocessing does), naming the exception and why.
        try:
            shown = repr(exc)
        except BaseException:  # noqa: BLE001
            shown = name
        inner = pickle.dumps(ResultPicklingError(
            f"cannot pickle the task's exception {name}: {type(e).__name__}: {e}", shown, repr(e)), PROTOCOL)
    # The exception is pickled inside: if it cannot be rebuilt in the parent, the traceback
    # and its name still arrive.
    return pickle.dumps((inner, tb, name), PROTOCOL)


def load_error(payload: bytes) -> BaseException:
    """The exception a worker sent, with its traceback text as ``__cause__``."""
    inner, tb, name = pickle.loads(payload)
    try:
        exc = pickle.loads(inner)
    except Exception as e:  # the exception type cannot be rebuilt here
        exc = RemoteError(f"{name} (the exception could not be unpickled here: {e!r})")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class AbandonedLockError(RuntimeError):
    """A lock, semaphore or condition's lock whose holder died holding it (its process
    killed or ended, or, for an RLock, its thread ended), where the standard library
    would wait for ever. Raised by the ``acquire`` that found it; the lock is free again
    (a semaphore has the dead holder's units back), so the next ``acquire`` takes it.
    What it guarded may have been left half-updated. ``holder`` is the dead pid (a
    thread id for an RLock)."""

    def __init__(self, message: str, holder: int | None = None) -> None:
        super().__init__(message)
        self.holder = holder

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.holder))


class MPIError(RuntimeError):
    """An MPI error, as mpi4py's ``MPI.Exception``: ``error_class`` and ``Get_error_class()``
    say which (``ERR_RANK``, ``ERR_TAG``, ``ERR_TRUNCATE``, ``ERR_OTHER``...)."""

    def __init__(self, error_class: int, message: str) -> None:
        super().__init__(message)
        self.error_class = self.error_code = error_class

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error_class, str(self))

    def Get_error_class(self) -> int:  # noqa: N802 - mpi4py's name
        return self.error_class

    def Get_error_code(self) -> int:  # noqa: N802 - mpi4py's name
        return self.error_code

    def Get_error_string(self) -> str:  # noqa: N802 - mpi4py's name
        return str(self)
