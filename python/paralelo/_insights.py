"""Insights: where a pool's time went, worker by worker, from what its engine measures
anyway (mpire's insights, for paralelo's pools and executors).

``pool.insights()`` gives an `Insights`: per worker, the tasks it ran, its time working
and waiting for work, the time the parent spent pickling its tasks and unpickling its
results, the bytes each way, and its start-up time; and for the pool, how unevenly the
work fell (`imbalance`) and how busy the workers were (`utilisation`). ``str()`` of it is
a table. ``pool.reset_insights()`` starts a new window.

The engine keeps a `Figures` per worker and adds to it where it already handles each
message: a few integer additions a message, nothing per item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Figures", "Insights", "WorkerInsights"]


class Figures:
    """One worker's running counts (kept by the engine, under its lock)."""

    __slots__ = ("name", "pid", "spawned", "ready", "ended", "tasks", "busy_ns", "pickling_ns",
                 "bytes_out", "bytes_in")

    def __init__(self, name: str, spawned: float) -> None:
        self.name = name
        self.pid = 0
        self.spawned = spawned  # monotonic: when the parent asked for it
        self.ready: float | None = None  # when it said it was ready (its initializer ran)
        self.ended: float | None = None  # when it was seen gone
        self.tasks = 0  # items of maps, calls: what it ran
        self.busy_ns = 0  # its own measure of its tasks: unpickling, running, pickling
        self.pickling_ns = 0  # the parent's, for it: its tasks pickled, its results unpickled
        self.bytes_out = 0  # its tasks, as sent
        self.bytes_in = 0  # its results, as received

    def restart(self) -> None:
        """Counts afresh (a new window)."""
        self.tasks = self.busy_ns = self.pickling_ns = self.bytes_out = self.bytes_in = 0


@dataclass(frozen=True)
class WorkerInsights:
    """One worker's share of a window (times in seconds)."""

    name: str
    pid: int
    alive: bool
    tasks: int
    working: float
    waiting: float
    pickling: float
    bytes_sent: int
    bytes_received: int
    startup: float | None


@dataclass(frozen=True)
class Insights:
    """Where a pool's time went since it started (or since ``reset_insights()``)."""

    window: float  # seconds
    workers: tuple[WorkerInsights, ...]

    @property
    def tasks(self) -> int:
        """Tasks run in the window, by every worker."""
        return sum(w.tasks for w in self.workers)

    @property
    def imbalance(self) -> float:
        """How unevenly the work fell among the workers there now: the busiest one's
        working time over the mean, less one (0.0: even; 1.0: the busiest worked twice the
        mean; a replaced worker's share is not the pool's imbalance). 0.0 with no work."""
        live = [w for w in self.workers if w.alive] or list(self.workers)
        working = [w.working for w in live]
        mean = sum(working) / len(working) if working else 0.0
        return max(working) / mean - 1.0 if mean > 0 else 0.0

    @property
    def utilisation(self) -> float:
        """The workers' working time over the time they were there to work (0.0–1.0)."""
        there = sum(w.working + w.waiting for w in self.workers)
        return sum(w.working for w in self.workers) / there if there > 0 else 0.0

    def __str__(self) -> str:
        head = ("worker", "pid", "tasks", "working s", "waiting s", "pickling s", "sent", "received", "start-up ms")
        rows = [head]
        for w in self.workers:
            rows.append((w.name + ("" if w.alive else " (gone)"), str(w.pid), str(w.tasks), f"{w.working:.3f}",
                         f"{w.waiting:.3f}", f"{w.pickling:.3f}", _size(w.bytes_sent), _size(w.bytes_received),
                         "-" if w.startup is None else f"{w.startup * 1e3:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
                 for r in rows]
        lines.insert(1, "  ".join("-" * n for n in widths))
        lines.append(f"{self.tasks} task{'' if self.tasks == 1 else 's'} in {self.window:.3f} s; workers busy "
                     f"{self.utilisation:.0%} of their "
                     f"time; imbalance {self.imbalance:.0%} (the busiest worker's time over the mean, less one)")
        return "\n".join(lines)


def _size(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


#: Gone workers listed one by one; past this, the oldest are summed into one row.
GONE_SHOWN = 64


def fold_gone(figures: list[Figures], count: int) -> list[Figures]:
    """`figures` with its `count` oldest gone workers summed into one row ("N earlier
    workers", the first), so a pool that replaces workers without end keeps a bounded list."""
    gone = [f for f in figures if f.ended is not None][:count]
    if not gone:
        return figures
    folded = next((f for f in gone if f.name.endswith(" earlier workers")), None)
    base = 0 if folded is None else int(folded.name.split()[0]) - 1
    total = Figures(f"{base + len(gone)} earlier workers", min(f.spawned for f in gone))
    total.ready = None  # (their start-ups are theirs: the sum has none)
    total.ended = max(f.ended for f in gone if f.ended is not None)
    for f in gone:
        total.tasks += f.tasks
        total.busy_ns += f.busy_ns
        total.pickling_ns += f.pickling_ns
        total.bytes_out += f.bytes_out
        total.bytes_in += f.bytes_in
    taken = set(map(id, gone))
    return [total] + [f for f in figures if id(f) not in taken]


def report(figures: list[Figures], since: float, now: float | None = None) -> Insights:
    """The `Insights` of `figures` over the window from `since` to `now`."""
    now = time.monotonic() if now is None else now
    out = []
    for f in figures:
        working = f.busy_ns * 1e-9
        start = max(since, f.ready if f.ready is not None else f.spawned)
        end = f.ended if f.ended is not None else now
        waiting = max(0.0, end - start - working)
        startup = None if f.ready is None else f.ready - f.spawned
        out.append(WorkerInsights(f.name, f.pid, f.ended is None, f.tasks, working, waiting, f.pickling_ns * 1e-9,
                                  f.bytes_out, f.bytes_in, startup))
    return Insights(now - since, tuple(out))
