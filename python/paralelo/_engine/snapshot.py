"""Items of a lazy input, pickled as they are read.

A generator may change the object it yielded once it is asked for the next (a buffer it
refills, a dict it updates), so an item that could change is pickled by the input's
reader (``MapJob.feed``) before it reads on, as multiprocessing's task handler pickles
each item as it reads it. Values that cannot change (numbers, strings, bytes, None, and
tuples of them, numpy's scalars, dates, enum members...) are taken as they are.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import math
import pickle
import sys
from typing import Any

from .._arena import LEND, OOB_MIN
from .._pickling import FLAT, MainNames, dumps, loads

#: Whether values of a type can change (see `frozen`); past MOST types, it starts afresh
#: (a type made at run time is not kept alive for ever).
_FROZEN: dict[type, bool] = {}
_MOST = 1024
_ALWAYS = (int, float, str, bytes, bool, type(None), complex, range,
           datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone,
           decimal.Decimal, fractions.Fraction)


def _frozen_type(t: type) -> bool | None:
    """True if no value of `t` can change; None if a value's items decide (a tuple-like
    type without attributes of its own, such as a namedtuple, or a frozenset); False."""
    if t in _ALWAYS or issubclass(t, enum.Enum):  # (an enum member pickles as its name)
        return True
    if issubclass(t, (tuple, frozenset)) and (t in (tuple, frozenset) or not t.__dictoffset__):
        return None
    np = sys.modules.get("numpy")
    return np is not None and t is not np.void and issubclass(t, np.generic)


def frozen(item: Any) -> bool:
    """Whether `item` can be pickled later with the same result as now."""
    t = type(item)
    if t is tuple and FLAT.issuperset(map(type, item)):
        return True
    try:
        known = _FROZEN[t]
    except KeyError:
        if len(_FROZEN) >= _MOST:
            _FROZEN.clear()
        known = _FROZEN[t] = _frozen_type(t)  # type: ignore[assignment]
    return all(map(frozen, item)) if known is None else known


class Snapshot:
    """An item pickled as it was read. Its big buffers go to the arena at once, lent,
    when its job never runs an item twice (`mode` ``LEND``); else they stay in its pickle
    (a worker that ran it before dying may have written to lent blocks), apart from a
    SharedArray's own block, which is shared by design. An item that cannot be pickled
    raises when its chunk is, as one read directly would."""

    __slots__ = ("blob", "error", "trace")

    def __init__(self, item: Any, main: MainNames | None, mode: int) -> None:
        self.blob: bytes = b""
        self.error: BaseException | None = None
        try:
            self.blob = dumps(item, main, LEND, OOB_MIN if mode == LEND else math.inf)
        except BaseException as e:  # noqa: BLE001 - raised when its chunk is pickled
            self.error, self.trace = e, e.__traceback__

    @property
    def oob(self) -> int:
        """Bytes it holds in the arena."""
        return getattr(self.blob, "oob", 0)

    def sendable(self) -> Any:
        """Its pickle as a chunk carries it: plain bytes (a frame's blocks stay held
        here), or a buffer if big, which may go out of band with the chunk."""
        if self.error is not None:
            raise self.error.with_traceback(self.trace)  # (each time as first raised)
        blob = self.blob
        if len(blob) >= OOB_MIN:
            return pickle.PickleBuffer(blob)
        return blob if type(blob) is bytes else bytes(blob)

    def __reduce__(self) -> tuple:
        # (Alone: an item of a chunk cut up after its worker died.)
        return _unsnap, (self.sendable(),)


def _unsnap(blob: Any) -> Any:
    # (A view into the arena if the blob went out of band.)
    return loads(blob if type(blob) is bytes else memoryview(blob))


def snapshot(item: Any, main: MainNames | None, mode: int) -> Any:
    """`item` itself if it cannot change, else a `Snapshot` of it."""
    return item if frozen(item) else Snapshot(item, main, mode)


class Snapped(list):
    """A chunk's items, some of them snapshots (at `at`): pickled as their pickles, each
    unpickled in its place by the worker, with one call for the whole chunk."""

    __slots__ = ("at",)
    at: list[int]

    def __reduce__(self) -> tuple:
        out = list(self)
        for i in self.at:
            out[i] = out[i].sendable()
        return _unsnap_all, (out, self.at)


def _unsnap_all(items: list, at: list[int]) -> list:
    plain = pickle.loads
    for i in at:
        blob = items[i]
        # (A plain pickle, the usual case, without a call more.)
        items[i] = plain(blob) if type(blob) is bytes and blob[:1] == b"\x80" else _unsnap(blob)
    return items


def snapped(items: list) -> tuple[list, int]:
    """A chunk cut from a lazy input's items: (its payload, the bytes its snapshots hold
    in the arena)."""
    at = [i for i, x in enumerate(items) if type(x) is Snapshot]
    if not at:
        return items, 0
    out = Snapped(items)
    out.at = at
    return out, sum(items[i].oob for i in at)
