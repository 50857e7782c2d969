"""A worker's probes (see ``_engine.probes``): what it measures while the parent asks,
and how that travels back."""

from __future__ import annotations

import marshal
import multiprocessing
import os
import pickle
import threading
import time
from typing import Any

from ._wire import PROBE_PROFILE, PROBE_TRACE

__all__ = ["measured", "start", "trace_waits"]


def start(kind: int) -> Any:
    """Starts probe `kind` here: a running ``cProfile.Profile``, or the list its tasks'
    spans go to (``(name, category, start_ns, end_ns, args)``, perf_counter clock)."""
    if kind == PROBE_PROFILE:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        return profiler
    if kind == PROBE_TRACE:
        spans: list = []
        trace_waits(spans)  # (its waits go with its tasks)
        return spans
    raise ValueError(f"unknown probe {kind}")


def measured(kind: int, probe: Any) -> bytes:
    """Stops `probe` and packs what it measured for the parent: a profile in the
    ``marshal`` form of ``.prof`` files; spans pickled with this process's pid and name."""
    if kind == PROBE_PROFILE:
        probe.disable()
        probe.create_stats()
        return marshal.dumps(probe.stats)
    trace_waits(None)
    return pickle.dumps((os.getpid(), multiprocessing.current_process().name, probe), 5)


# -- waits, while traced ----------------------------------------------------------------

#: Where this process's blocking waits on paralelo's locks, events, barriers and queues
#: go while it is traced (a worker's TRACE probe list; the parent's own during
#: `paralelo.trace()`), else None: then the primitives are left exactly as they are.
waits: list | None = None
_saved: list[tuple[type, str, Any]] = []
_INHERITED = object()  # (a method the class had from a base: taken off again)


def trace_waits(spans: list | None) -> None:
    """Starts recording this process's waits into `spans` (their methods are wrapped), or
    stops (None: the methods are put back)."""
    global waits
    waits = spans
    if spans is not None and not _saved:
        _wrap()
    elif spans is None and _saved:
        for cls, name, method in reversed(_saved):
            if method is _INHERITED:
                delattr(cls, name)  # (the base's own again)
            else:
                setattr(cls, name, method)
        _saved.clear()


def _waited(what: str, start: int, done: bool) -> None:
    spans = waits
    if spans is not None:
        spans.append((f"wait: {what}", "wait", start, time.perf_counter_ns(),
                      {"done": done, "thread": threading.get_native_id()}))


def _wrap() -> None:
    import queue as std_queue

    from .queues import Queue, SimpleQueue
    from .synchronize import Barrier, Event, _Lock

    def put(cls: type, name: str, method: Any) -> None:
        _saved.append((cls, name, cls.__dict__.get(name, _INHERITED)))
        setattr(cls, name, method)

    acquire_now = _Lock.acquire  # (the native one, or lock debugging's)

    def acquire(self: Any, block: bool = True, timeout: float | None = None, *, blocking: bool | None = None) -> bool:
        if acquire_now(self, False):
            return True  # (no wait: no span)
        if not (block if blocking is None else blocking):
            return False
        start = time.perf_counter_ns()
        got = bool(acquire_now(self, True, timeout))
        _waited(type(self).__name__, start, got)
        return got

    def enter(self: Any) -> bool:
        return acquire(self)

    event_wait, barrier_wait = Event.wait, Barrier.wait
    queue_get, simple_get = Queue.get, SimpleQueue.get

    def wait_event(self: Any, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        start = time.perf_counter_ns()
        got = event_wait(self, timeout)
        _waited("Event", start, got)
        return got

    def wait_barrier(self: Any, timeout: float | None = None) -> int:
        start = time.perf_counter_ns()
        done = False
        try:
            index = barrier_wait(self, timeout)
            done = True
            return index
        finally:
            _waited("Barrier", start, done)

    def get(self: Any, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return queue_get(self, False)
        except std_queue.Empty:
            if not block:
                raise
        start = time.perf_counter_ns()
        done = False
        try:
            item = queue_get(self, True, timeout)
            done = True
            return item
        finally:
            _waited(type(self).__name__ + ".get", start, done)

    def simple(self: Any) -> Any:
        if not self.empty():
            return simple_get(self)
        start = time.perf_counter_ns()
        done = False
        try:
            item = simple_get(self)
            done = True
            return item
        finally:
            _waited("SimpleQueue.get", start, done)

    put(_Lock, "acquire", acquire)
    put(_Lock, "__enter__", enter)
    put(Event, "wait", wait_event)
    put(Barrier, "wait", wait_barrier)
    put(Queue, "get", get)
    put(SimpleQueue, "get", simple)
