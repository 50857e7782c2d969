"""Crash attribution: when a worker dies, what it was doing decides what fails.

The worker's slot state (one word in shared memory, see the engine's hub README) names
what it was doing when it died:

- running a unit: that unit fails with ``WorkerLostError`` (or runs again, with
  ``retries``), and a chunk paralelo made runs again item by item, so that only the item
  that kills its worker fails; the units queued behind it are re-dispatched;
- unpacking a batch: the batch's units are retried one per message, so the culprit is
  found;
- loading a job's function: twice, and that job fails (once could be an outside kill);
- in the pool's initializer: the pool is broken, as concurrent.futures does;
- anything else, three times in a row with no message from any worker in between: the
  workers cannot start, and the pool is broken rather than respawning for ever.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .. import _arena
from .._broken import WorkerLostError, broken
from .._errors import TaskTimeoutError
from .._pickling import from_array
from .._wire import TASK
from .jobs import Unit

if TYPE_CHECKING:
    from .engine import Engine
    from .slot import Slot

#: Workers dying outside any task this many times in a row break the pool.
MAX_UNEXPLAINED_DEATHS = 3


def retire(engine: Engine, slot: Slot, death: str | None, left: str = "maxtasks") -> None:
    """The worker in `slot` is gone (`death` says how) or leaving (None; `left` says why:
    after maxtasks, or at the pool's end): fail what it was running, hand back what it
    had not started, start another."""
    kind, ticket = engine.hub.state(slot.index) if death is not None else ("idle", 0)
    slot.alive = False
    slot.figures.ended = time.monotonic()
    engine.probes.lost(slot.index)  # (what it measured will not come: none waits for it)
    engine.mark(slot, f"left ({left})" if death is None else f"died: {death}")
    cause = slot.corrupt
    if death is not None:
        if cause is not None:
            death = f"{death} after its ring was found corrupt ({cause})"
        _explain(engine, slot, kind, ticket, death)
        _arena.reclaim_dead()
    units = list(slot.inflight.values())
    slot.inflight.clear()
    slot.outgoing = []
    engine.hub.reset_slot(slot.index)
    fd, slot.pidfd = slot.pidfd, -1  # marked closed first: a fork meanwhile skips it
    os.close(fd)
    own = engine.own_children.get(slot.pid)
    if death is None and own is not None:
        # Leaving, not gone yet, and ours to reap: the slot will watch its successor.
        try:
            engine.hub.watch_left(slot.pid, own)
        except OSError:
            pass  # (out of fds) then reaped at the pool's end
    slot.corrupt = None
    for unit in units:
        unit.job.outstanding -= 1
        if kind == "unpacking" and unit.batch == ticket:
            unit.solo = True  # died unpickling a batch: retry its units one by one
        job = unit.job
        if slot.timed_out and unit is slot.timed:
            job.lost(unit, TaskTimeoutError(
                f"the task ran past its time limit of {job.timeout:g} s: its worker process "
                f"(pid {slot.pid}) was killed and replaced"))
            engine.forget_if_done(job)
        elif death is not None and kind == "running" and unit.seq == ticket:
            if unit.count > 1 and job.counts_items:
                # A chunk paralelo made (the caller chose no chunksize): its items run
                # again one by one, so only the one that kills its worker fails.
                items = from_array(unit.payload)
                for i in reversed(range(unit.count)):
                    piece = Unit(job, TASK, items[i:i + 1], unit.start + i, 1)
                    piece.solo = True
                    engine.requeue(piece)
                continue
            if unit.tries < job.retries:
                unit.tries += 1  # lost to its worker's death, not to its own exception
                engine.requeue(unit)  # (pickled afresh as it is sent again: calls and chunks alike)
                continue
            tried = f" (tried {unit.tries + 1} times)" if unit.tries else ""
            err = WorkerLostError(f"the worker process (pid {slot.pid}) running this task died{tried}: {death}")
            err.__cause__ = cause
            job.lost(unit, err)
            engine.forget_if_done(job)
        else:
            engine.requeue(unit)
    if (not engine.closing or engine.jobs) and engine.broken is None:
        try:
            engine.start(slot)
        except OSError as e:
            engine.break_pool(broken(f"cannot start a replacement worker: {e}", e))


def _explain(engine: Engine, slot: Slot, kind: str, ticket: int, death: str) -> None:
    """Deaths outside a task: see the module's docstring."""
    if kind == "initializing":
        where = "while importing the main module or in the pool's initializer" if engine.start_method == "spawn" \
            else "in the pool's initializer"
        engine.break_pool(broken(f"a worker process (pid {slot.pid}) died {where}: {death}"))
    elif kind == "loading" and ticket in engine.jobs:
        job = engine.jobs[ticket]
        job.func_deaths += 1
        if job.func_deaths >= 2:
            job.fail(WorkerLostError(
                f"worker processes (the last pid {slot.pid}) died unpickling this job's function: {death}"))
    elif not slot.answered and kind != "unpacking" and not (kind == "running" and ticket in slot.inflight):
        # A worker that dies before saying anything, again and again: it cannot start.
        engine.unexplained_deaths += 1
        if engine.unexplained_deaths >= MAX_UNEXPLAINED_DEATHS:
            engine.break_pool(broken(
                f"{engine.unexplained_deaths} worker processes died in a row outside any task, "
                f"the last (pid {slot.pid}) because {death}"))
