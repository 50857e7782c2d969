"""Probes: what workers measure while the program asks (``paralelo.profile()``: cProfile;
``paralelo.trace()``: timeline spans), and gathering it back.

Switching a probe on posts ``PROBE`` (aux: kind, on; payload: its settings) to every
live worker of every running engine; engines made while it is on post it to their first
workers, and a respawned worker gets it too. Switching it off asks each live worker for what it
measured (``PROBED``, aux: kind); a worker that leaves meanwhile (maxtasks, EXIT) sends
it as it goes, and a death stops the wait for its slot.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .._wire import PROBE

if TYPE_CHECKING:
    from .engine import Engine

from .._wire import PROBE_PROFILE as PROFILE, PROBE_TRACE as TRACE  # noqa: F401 - the kinds

#: Probes switched on now, with their settings; engines made while one was on (kept until
#: it is switched off: one may end first, and its workers' measures stay in it).
_on: dict[int, bytes] = {}
_made: dict[int, list[Engine]] = {}


def settings(kind: int) -> bytes:
    """What workers starting probe `kind` are told (PROBE's payload)."""
    return _on.get(kind, b"")


def switch(kind: int, on: bool, engines: list[Engine], settings: bytes = b"") -> list[Engine]:
    """Switches probe `kind` (with its `settings`) in every engine of `engines` (the
    running ones), and in those made while it is on; the engines to gather it from."""
    if on:
        _on[kind] = settings
    told = [engine for engine in engines if engine.probes.switch(engine, kind, on)]
    if on:
        _made[kind] = []
        return told
    _on.pop(kind, None)
    made = _made.pop(kind, [])
    return told + [engine for engine in made if engine not in told]


def active() -> set[int]:
    """The probes on now (an engine being made switches them on in its workers)."""
    return set(_on)


class Probes:
    """One engine's side: which probes its workers run, what they sent back, and the
    slots whose answer is still due. Kept under the engine lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self.on: set[int] = set()
        self.came: dict[int, list[bytes]] = {}
        self.due: dict[int, set[int]] = {}
        self.changed = threading.Condition(lock)
        self.parent_spans: list | None = None

    def joined(self, engine: Engine) -> list[int]:
        """At the engine's making: the probes its first workers start with."""
        kinds = active()
        for kind in kinds:
            self.on.add(kind)
            _made.setdefault(kind, []).append(engine)
        if TRACE in kinds:
            self.parent_spans = engine.spans = []
        return sorted(kinds)

    def switch(self, engine: Engine, kind: int, on: bool) -> bool:
        """Posts the switch to `engine`'s live workers; False if it runs no more, or was
        already so."""
        with engine.locked():
            if engine.closing or engine.broken is not None or (kind in self.on) == on:
                return False
            (self.on.add if on else self.on.discard)(kind)
            if kind == TRACE:
                # The parent's own spans (pickling, unpickling, births, deaths): recorded
                # while on, taken by `parent`.
                engine.spans = [] if on else None
                if on:
                    self.parent_spans = engine.spans
            for s in engine.slots:
                if s.alive and s.corrupt is None:
                    engine.hub.post(s.index, PROBE, 0, 0, kind << 1 | int(on), settings(kind) if on else b"")
                    if not on:
                        self.due.setdefault(kind, set()).add(s.index)
            return True

    def drain(self, engine: Engine, deadline: float) -> None:
        """Before the workers are killed (terminate): switches every probe off and waits
        until `deadline` for the answers (idle workers answer at once)."""
        with self.changed:
            for kind in list(self.on):
                self.switch(engine, kind, False)
            while any(self.due.values()) and not engine.over.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(min(left, 0.1))

    def answered(self, slot_index: int, kind: int, payload: bytes) -> None:
        """A worker's PROBED (under the engine lock)."""
        self.came.setdefault(kind, []).append(payload)
        self.due.get(kind, set()).discard(slot_index)
        self.changed.notify_all()

    def lost(self, slot_index: int) -> None:
        """Its worker died (under the engine lock): none waits for its answers."""
        for due in self.due.values():
            due.discard(slot_index)
        self.changed.notify_all()

    def parent(self) -> list:
        """The parent's own spans recorded while tracing (taken once)."""
        spans, self.parent_spans = self.parent_spans or [], None
        return spans

    def gather(self, engine: Engine, kind: int, deadline: float) -> tuple[list[bytes], int]:
        """What the workers sent for `kind`, once every live worker's came or at
        `deadline` (monotonic); and how many did not come."""
        with self.changed:
            due = self.due.get(kind, set())
            while due and not engine.over.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(min(left, 0.1))
            got = self.came.pop(kind, [])
            missing = len(self.due.pop(kind, set()))
        return got, missing
