"""The channels under queues and pipes, as this process holds them.

Each ``_native.Channel`` handle holds its channel (an flock'd file description, shared
by forks, let go by death); the last handle anywhere to let go takes the unread messages
and lets go of what they hold in the arena (``Channel.let_go``, also run when a handle
is collected). Here: making and opening handles, passing one to another process, and
letting go of them all as a process ends, so a child that outlived every other holder
leaves nothing held behind it.
"""

from __future__ import annotations

import os
import weakref
from multiprocessing import reduction
from typing import Any

from . import _ending
from ._native import Channel
from ._pickling import once

#: Every handle this process holds (a forked child's copies included).
_held: weakref.WeakSet[Channel] = weakref.WeakSet()


def new(counting: int = 0) -> Channel:
    """A new channel (see ``_native.Channel``)."""
    ch = Channel(counting=counting)
    _held.add(ch)
    return ch


def opened(dup: Any) -> Channel:
    """The channel a `pass_on` descriptor brought (its descriptor closed here)."""
    fd = dup.detach()
    try:
        ch = Channel.open(fd)
    finally:
        os.close(fd)
    _held.add(ch)
    return ch


def pass_on(ch: Channel) -> Any:
    """How a channel is pickled to another process: a descriptor that holds it (see
    ``Channel.hold_for_passing``) until the receiver opened it, so the last handle here
    going meanwhile does not let go of the messages that process is to read. Passed by
    the starting process's Popen while spawning, else through multiprocessing's
    resource sharer (which holds a copy until it is taken). Once per pickling: `dumps`
    may pickle twice, and a registration made for the discarded one would stay."""
    return once(ch, lambda: _pass(ch), unpass)


def unpass(dup: Any) -> None:
    """Takes back a descriptor `_pass` (or ``reduction.DupFd``) registered with
    multiprocessing's resource sharer for a pickle that will never be sent (its pickling
    failed): the sharer would keep it open for the program's life. (One passed while
    spawning is its Popen's, closed with it.)"""
    from multiprocessing import resource_sharer

    key = getattr(dup, "_id", None)
    if type(dup) is not resource_sharer.DupFd or not isinstance(key, tuple):
        return
    sharer: Any = resource_sharer._resource_sharer  # type: ignore[attr-defined]
    with sharer._lock:
        entry = sharer._cache.pop(key[1], None)
    if entry is not None:
        entry[1]()  # (its close)


def _pass(ch: Channel) -> Any:
    from multiprocessing import context

    fd = ch.hold_for_passing()
    popen = context.get_spawning_popen()
    try:
        dup = reduction.DupFd(fd)
    except BaseException:
        os.close(fd)
        raise
    if popen is None:
        os.close(fd)
    else:
        _Passed.of(popen).fds.append(fd)
    return dup


class _Passed:
    """The holds passed to a process being started: it has its own copies once started,
    and ``paralelo.Process`` closes these then (`close_passed`); a Popen of the standard
    library's, when it goes."""

    __slots__ = ("fds", "__weakref__")

    def __init__(self) -> None:
        self.fds: list[int] = []

    @classmethod
    def of(cls, popen: Any) -> _Passed:
        passed = popen.__dict__.get("_paralelo_passed")
        if passed is None:
            passed = popen._paralelo_passed = cls()
            weakref.finalize(popen, passed.close)
        return passed

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def close_passed(popen: Any) -> None:
    """Closes the holds passed to the process `popen` started (which has its own now)."""
    passed = getattr(popen, "_paralelo_passed", None)
    if passed is not None:
        passed.close()


def let_go_all() -> None:
    """This process is ending: lets go of every handle now (a process that ends with
    ``os._exit`` collects nothing), so if it was the last holder of a channel, what that
    channel's unread messages hold in the arena goes too."""
    for ch in list(_held):
        try:
            ch.let_go()
        except Exception:  # noqa: BLE001 - (ending: nothing to report it to)
            pass


_ending.at_end(let_go_all)
