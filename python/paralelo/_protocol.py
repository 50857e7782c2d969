"""Message tags between the parent and its workers, and how errors travel.

Parent → worker: INIT, FUNC, TASK, TASKS, CALL, DROP, EXIT.
Worker → parent: OK, OK_ARRAY, ERR, RESULTS, BYE, INIT_ERR.
Small units travel several to a message (TASKS, RESULTS): each is still scheduled, run,
timed and accounted on its own; only the pickling and the wake-ups are shared.
The frame header carries (tag, job, seq, aux); payloads are pickles.
"""

from __future__ import annotations

import pickle
import traceback
from array import array
from typing import Any

import cloudpickle

from ._errors import RemoteError, RemoteTraceback

INIT = 1  # payload: cloudpickle((initializer, initargs, maxtasks))
FUNC = 2  # job: payload cloudpickle((function, star))
TASK = 3  # job, seq: payload pickle(list of items)
TASKS = 7  # job: payload pickle((seqs, [list of items per seq])): several units in one message
CALL = 4  # job, seq: payload cloudpickle((function, args, kwargs))
DROP = 5  # job: forget FUNC
EXIT = 6  # finish and exit

OK = 16  # job, seq, aux=ns busy: payload pickle(results list, or the call's result)
ERR = 17  # job, seq: payload pickle((exception, traceback text))
BYE = 18  # leaving after maxtasks; sends nothing after this
INIT_ERR = 19  # the initializer raised: payload as ERR
OK_ARRAY = 20  # as OK, for a results list of only ints (or only floats): see pack_results
RESULTS = 21  # job: payload pickle([(seq, ok, results or dump_error bytes, busy_ns), ...])

PROTOCOL = pickle.HIGHEST_PROTOCOL

# What a worker marks as "executing" (its slot header's seq) outside a single unit, so that
# the parent can blame a death on the right thing:
BATCH = 1 << 63  # | first seq: unpickling a TASKS batch (which unit is not known yet)
LOADING_FUNC = (1 << 62) + 1  # unpickling a job's function (FUNC)
IN_INITIALIZER = (1 << 62) + 2  # running the pool's initializer (INIT)


def dumps(obj: Any) -> bytes:
    """Pickles arguments and results: the C pickler (fast) when it can, cloudpickle when
    the data refers to ``__main__`` or to classes made at run time. Those travel by value:
    the other process may not have them (an exec'ed zygote, or a class defined after the
    fork), and cloudpickle maps a class that went out and comes back to the original."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)
    # A memchr-speed scan; a false hit (the string in the data) only costs a slower pickle.
    if b"__main__" in data:
        return cloudpickle.dumps(obj, PROTOCOL)
    return data


#: Below this many results, pickle is as fast as anything.
_ARRAY_MIN = 256


def pack_results(out: list) -> tuple[int, bytes]:
    """(tag, payload) for a chunk's results. A list of only ints that fit in 64 bits, or
    only floats, travels as a machine array: rebuilding it in the parent is ≈ 3x cheaper
    than unpickling, and the parent is where a map's serial work is."""
    if len(out) >= _ARRAY_MIN:
        kind = type(out[0])
        if (kind is int or kind is float) and len(set(map(type, out))) == 1:
            code = "q" if kind is int else "d"
            try:
                return OK_ARRAY, code.encode() + array(code, out).tobytes()
            except OverflowError:
                pass  # an int beyond 64 bits: pickle it
    return OK, dumps(out)


def unpack_results(tag: int, payload: bytes) -> Any:
    """The inverse of pack_results (and of plain pickled results)."""
    if tag == OK_ARRAY:
        arr = array(chr(payload[0]))
        arr.frombytes(memoryview(payload)[1:])
        return arr.tolist()
    return pickle.loads(payload)


class Segments(list):
    """A chunk's outcome when some of its items raised (lazy maps, adaptive chunks):
    `[(True, [results...]), (False, error), (True, [...]), ...]` in item order, so each
    result and each exception arrives in its own place, as with chunksize=1. In a worker
    an error is `dump_error` bytes; `loaded()` turns them into exceptions."""

    def loaded(self) -> Segments:
        return Segments((ok, v if ok else load_error(v)) for ok, v in self)


def run_each(fn: Any, star: bool, items: Any) -> list:
    """Calls `fn` on every item; an item that raises becomes an error segment and the
    rest still run."""
    out: list = []
    segments = None
    for item in items:
        try:
            out.append(fn(*item) if star else fn(item))
        except BaseException as e:  # noqa: BLE001 - reported in its place
            if segments is None:
                segments = Segments()
            segments.append((True, out))
            segments.append((False, dump_error(e)))
            out = []
    if segments is None:
        return out
    segments.append((True, out))
    return segments


def pack_replies(replies: list[tuple]) -> bytes:
    """Pickles a RESULTS batch; a unit whose results cannot be pickled becomes an error
    of its own instead of failing the batch."""
    try:
        return dumps(replies)
    except Exception:
        safe = []
        for seq, ok, value, busy in replies:
            try:
                dumps(value)
            except Exception as e:
                ok, value = False, dump_error(e)
            safe.append((seq, ok, value, busy))
        return dumps(safe)


def dump_error(exc: BaseException) -> bytes:
    """Pickles an exception with its formatted traceback, falling back to a RemoteError
    that names it when it cannot be pickled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\n{tb}"""'
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        inner = dumps(exc)
    except Exception:
        inner = pickle.dumps(RemoteError(name), PROTOCOL)
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
