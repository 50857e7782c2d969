"""Message tags between the parent and its workers, and how errors travel.

Parent → worker: INIT, FUNC, TASK, CALL, DROP, EXIT. Worker → parent: OK, ERR, BYE, INIT_ERR.
The frame header carries (tag, job, seq, aux); payloads are pickles.
"""

from __future__ import annotations

import pickle
import traceback

from ._errors import RemoteError, RemoteTraceback

INIT = 1  # payload: cloudpickle((initializer, initargs, maxtasks))
FUNC = 2  # job: payload cloudpickle((function, star))
TASK = 3  # job, seq: payload pickle(list of items)
CALL = 4  # job, seq: payload cloudpickle((function, args, kwargs))
DROP = 5  # job: forget FUNC
EXIT = 6  # finish and exit

OK = 16  # job, seq, aux=ns busy: payload pickle(results list, or the call's result)
ERR = 17  # job, seq: payload pickle((exception, traceback text))
BYE = 18  # leaving after maxtasks; sends nothing after this
INIT_ERR = 19  # the initializer raised: payload as ERR

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dump_error(exc: BaseException) -> bytes:
    """Pickles an exception with its formatted traceback, falling back to a RemoteError
    that names it when it cannot be pickled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\n{tb}"""'
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    try:
        inner = pickle.dumps(exc, PROTOCOL)
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
