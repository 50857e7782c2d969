"""``paralelo.trace("run.json")``: a timeline of the parallel work, in the Chrome
trace-event format that Perfetto (ui.perfetto.dev) and chrome://tracing open.

Inside the block every worker of every paralelo pool and executor (those alive, and
those made meanwhile) records each task it runs: a span named after the task's function,
on the worker's own track, from the moment it took the task (unpickling it) to the moment
its result was packed. The parent records its own side on its threads' tracks: the
pickling of each message of tasks and the unpickling of each message of results, and the
workers' births, readiness and deaths as instants on their tracks. Every process traced
(the parent, the workers) also records each blocking wait on paralelo's locks, events,
semaphores, conditions, barriers and queues (``wait: Lock``, ``wait: Queue.get``...),
with whether it got what it waited for. At the block's end the workers send their spans
(see ``_engine.probes``) and the file is written.

Off, it costs nothing: a worker looks at one local per task, the engine at one
attribute per message, and the primitives' methods are their own (they are wrapped only
while a trace runs).
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from . import _probing
from ._wire import PROBE_TRACE

__all__ = ["Trace", "trace"]


class Trace:
    """The outcome of ``paralelo.trace()``: the file written (``path``), how many events
    it holds (``events``), how many workers' tracks (``workers``), and how many workers
    did not send their spans in time (``missing``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events = 0
        self.workers = 0
        self.missing = 0

    def __repr__(self) -> str:
        return f"<paralelo.Trace {self.path!r}: {self.events} events, {self.workers} workers>"


@contextmanager
def trace(path: str | os.PathLike[str] = "paralelo-trace.json", timeout: float = 30.0) -> Iterator[Trace]:
    """Records a timeline of every paralelo worker's tasks (and the parent's pickling,
    and the workers' births and deaths) for the duration of the block, and writes it to
    `path` as Chrome trace-event JSON (open it in ui.perfetto.dev or chrome://tracing).
    Workers have `timeout` seconds from the block's end to send their spans."""
    from ._engine.engine import switch_probe

    result = Trace(os.fspath(path))
    origin = time.perf_counter_ns()
    started = switch_probe(PROBE_TRACE, True)
    waits: list = []
    _probing.trace_waits(waits)  # (the parent's own waits on paralelo's primitives)
    try:
        yield result
    finally:
        _probing.trace_waits(None)
        ended = switch_probe(PROBE_TRACE, False)
        deadline = time.monotonic() + timeout
        workers: dict[int, tuple[str, list]] = {}
        parent: list = []
        for engine in ended + [engine for engine in started if engine not in ended]:
            got, missing = engine.probes.gather(engine, PROBE_TRACE, deadline)
            result.missing += missing
            for payload in got:
                pid, name, spans = pickle.loads(payload)
                workers.setdefault(pid, (name, []))[1].extend(spans)
            parent.extend(engine.probes.parent())
        me = os.getpid()
        parent.extend((label, category, start, end, args, me, args["thread"])
                      for label, category, start, end, args in waits)
        events = _events(origin, workers, parent)
        result.events, result.workers = len(events), len(workers)
        with open(result.path, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms",
                       "otherData": {"producer": "paralelo.trace"}}, f)


def _events(origin: int, workers: dict[int, tuple[str, list]], parent: list) -> list[dict[str, Any]]:
    """The trace events: a track per worker (pid), the parent's threads on its own."""
    def us(ns: int) -> float:
        return (ns - origin) / 1000

    me = os.getpid()
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": me, "args": {"name": f"parent (pid {me})"}},
        {"ph": "M", "name": "process_sort_index", "pid": me, "args": {"sort_index": 0}},
    ]
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in sorted({span[6] for span in parent if span[5] == me}):
        events.append({"ph": "M", "name": "thread_name", "pid": me, "tid": tid,
                       "args": {"name": names.get(tid, f"thread {tid}")}})
    for index, (pid, (name, spans)) in enumerate(sorted(workers.items()), 1):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"{name} (pid {pid})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": index}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": pid, "args": {"name": name}})
        for label, category, start, end, args in spans:
            events.append({"ph": "X", "name": label, "cat": category, "pid": pid, "tid": pid,
                           "ts": us(start), "dur": (end - start) / 1000, "args": args})
    for label, category, start, end, args, pid, tid in parent:
        if end is None:
            events.append({"ph": "i", "s": "t", "name": label, "cat": category, "pid": pid, "tid": tid,
                           "ts": us(start), "args": args})
        else:
            events.append({"ph": "X", "name": label, "cat": category, "pid": pid, "tid": tid,
                           "ts": us(start), "dur": (end - start) / 1000, "args": args})
    return events
