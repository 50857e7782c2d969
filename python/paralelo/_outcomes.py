"""What running a unit gives: its results, or errors in their places (``Segments``), and
how a batch of outcomes is packed for the way back."""

from __future__ import annotations

from typing import Any

from ._errors import dump_error, load_error, unpicklable_result
from ._arena import GIVE
from ._pickling import dumps


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


def _unpicklable(value: Any, e: BaseException) -> bytes:
    return dump_error(unpicklable_result(value, e))


def picklable_each(values: list) -> Segments:
    """A chunk's results (a list, or ``Segments``) with each result that cannot be pickled
    turned into an error in its place (lazy maps with adaptive chunks: one bad result must
    not sink its neighbours)."""
    segments = values if type(values) is Segments else Segments([(True, values)])
    out = Segments()
    for ok, seg in segments:
        if not ok:
            out.append((ok, seg))
            continue
        run: list = []
        for v in seg:
            try:
                dumps(v)
                run.append(v)
            except BaseException as e:  # noqa: BLE001 - that item fails in its place
                out.append((True, run))
                out.append((False, _unpicklable(v, e)))
                run = []
        out.append((True, run))
    return out


def pack_replies(replies: list[tuple], each: bool) -> bytes:
    """Pickles a RESULTS batch; a unit whose results cannot be pickled becomes an error
    of its own (with `each`, only its items that cannot be) instead of failing the batch."""
    try:
        return dumps(replies, None, GIVE)
    except BaseException:  # noqa: BLE001 - find the unit whose results cannot be pickled
        safe = []
        for ticket, ok, value, busy in replies:
            try:
                dumps(value)
            except BaseException as e:  # noqa: BLE001 - that unit fails, the batch goes
                ok, value = (True, picklable_each(value)) if ok and each else (False, _unpicklable(value, e))
            safe.append((ticket, ok, value, busy))
        return dumps(safe, None, GIVE)
