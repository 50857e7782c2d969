"""A worker slot: one worker process and what the parent has committed to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._insights import Figures

if TYPE_CHECKING:
    from .jobs import Unit


class Slot:
    """One worker process and what it holds."""

    __slots__ = ("index", "pid", "pidfd", "inflight", "loaded", "alive", "outgoing", "answered",
                 "corrupt", "taken", "timed", "timed_started", "timed_out", "figures")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.pidfd = -1
        self.inflight: dict[int, Unit] = {}  # by ticket
        self.loaded: set[int] = set()  # jobs whose function the worker has
        self.alive = False
        self.outgoing: list[Unit] = []  # committed map chunks not yet posted
        self.answered = False  # its worker has sent anything since it started
        self.corrupt: BaseException | None = None  # its ring broke the protocol: being killed
        self.taken = 0  # what its worker counts toward maxtasks: items or units sent to it
        self.timed: Unit | None = None  # the unit with a time limit it runs, if any
        self.timed_started = True  # its clock runs (False: waiting to see the worker run it)
        self.timed_out = False  # `timed` ran past its limit: its worker is being killed
        self.figures = Figures("", 0.0)  # its worker's (see `_insights`): a new one per worker
