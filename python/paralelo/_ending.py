"""What a process does as it ends normally: each module that keeps something on behalf
of this process registers how to let go of it (`at_end`), and every way a process of
the program ends runs them once (`end`): at exit, as a multiprocessing child's last
finalizer, and before the ``os._exit`` of workers, zygotes and ``Process`` children,
which run no finalizer. A process that dies (killed, crashed) runs none: what it left
is found by the others (a channel's last holder, an abandoned lock, a dead party)."""

from __future__ import annotations

import atexit
import os
from multiprocessing import util
from typing import Any, Callable

_callbacks: list[Callable[[], None]] = []
#: The pid that ran `end` (a forked child runs it afresh).
_ended = 0


def at_end(callback: Callable[[], None]) -> None:
    """Runs `callback` as this process ends normally (and in each forked child, as it
    does)."""
    _callbacks.append(callback)


def end() -> None:
    """This process is ending: runs every callback, once (errors are not reported:
    there is no one left to tell)."""
    global _ended
    if _ended == os.getpid():
        return
    _ended = os.getpid()
    for callback in _callbacks:
        try:
            callback()
        except Exception:  # noqa: BLE001
            pass


def _at_child_exit(_: Any) -> None:
    # A multiprocessing child ends with os._exit after its finalizers: one more (last).
    util.Finalize(None, end, exitpriority=-100)


class _Marker:
    """What `_at_child_exit` is registered on (multiprocessing holds it weakly)."""


_marker = _Marker()
util.register_after_fork(_marker, _at_child_exit)
atexit.register(end)
