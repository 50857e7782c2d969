"""How arguments and results are pickled: the C pickler when it can, cloudpickle for what
only exists in this process (``__main__``, classes made at run time), machine arrays for
results that are all ints or all floats."""

from __future__ import annotations

import io
import pickle
import types
from array import array
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle

from ._wire import OK, OK_ARRAY

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _code_reduce(code: types.CodeType) -> tuple:
    # cloudpickle names every code object it ships "<dynamic-code>" (for deterministic
    # payloads); we keep its file name, so a worker's traceback of a `__main__` function
    # shows the script's file and lines, as with multiprocessing.
    rebuild, args = _cloudpickle._code_reduce(code)
    return rebuild, tuple(code.co_filename if type(a) is str and a == "<dynamic-code>" else a for a in args)


class _ByValuePickler(cloudpickle.Pickler):
    # Flat, so a type's look-up misses no more often than in cloudpickle's own table.
    dispatch_table = ChainMap({types.CodeType: _code_reduce}, *cloudpickle.Pickler.dispatch_table.maps)


def by_value(obj: Any) -> bytes:
    """Pickles `obj` with cloudpickle: functions and classes that only exist here
    (``__main__``, lambdas, closures) travel by value, keeping their file names."""
    buf = io.BytesIO()
    _ByValuePickler(buf, protocol=PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps(obj: Any) -> bytes:
    """Pickles arguments and results: the C pickler (fast) when it can, cloudpickle when
    the data refers to ``__main__`` or to classes made at run time. Those travel by value:
    the other process may not have them (an exec'ed zygote, or a class defined after the
    fork), and cloudpickle maps a class that went out and comes back to the original."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        return by_value(obj)
    # A memchr-speed scan; a false hit (the string in the data) only costs a slower pickle.
    if b"__main__" in data:
        return by_value(obj)
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
