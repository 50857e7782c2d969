"""A worker's probes (see ``_engine.probes``): what it measures while the parent asks,
and how that travels back."""

from __future__ import annotations

import functools
import inspect
import marshal
import multiprocessing
import os
import pickle
import sys
import threading
import time
from typing import Any, Callable

from ._wire import PROBE_LINES, PROBE_PROFILE, PROBE_TRACE

__all__ = ["LineProbe", "ThreadProfiles", "in_thread_pool", "measured", "start", "trace_waits"]


def start(kind: int, settings: bytes = b"") -> Any:
    """Starts probe `kind` here: a running ``cProfile.Profile``, the list its tasks'
    spans go to (``(name, category, start_ns, end_ns, args)``, perf_counter clock), or a
    `LineProbe` on the functions `settings` names."""
    if kind == PROBE_LINES:
        return LineProbe(pickle.loads(settings))
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
    if kind == PROBE_LINES:
        return pickle.dumps(probe.stop(), 5)
    trace_waits(None)
    return pickle.dumps((os.getpid(), multiprocessing.current_process().name, probe), 5)


class ThreadProfiles:
    """cProfile in thread-pool threads while ``paralelo.profile()`` runs (``threads``).

    cProfile (before Python 3.12) profiles only the thread that enables it, so each pool
    thread runs its tasks under a ``cProfile.Profile`` of its own, enabled for the task
    alone; `end` collects them once none is running one. A thread already profiled (the
    caller's own, running a task inline) is left as it is."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.on = True
        self.mine = threading.local()
        self.idle: list[Any] = []  # (profiles not running a task)
        self.busy = 0

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, profiled on this thread's own profile."""
        if not self.on or sys.getprofile() is not None:
            return fn(*args, **kwargs)
        with self.cond:
            profiler = None
            if self.on:  # (else ended meanwhile: its profiles are being read)
                profiler = getattr(self.mine, "profiler", None)
                if profiler is None:
                    import cProfile

                    profiler = self.mine.profiler = cProfile.Profile()
                else:
                    self.idle.remove(profiler)
                self.busy += 1
        if profiler is None:
            return fn(*args, **kwargs)
        try:
            try:
                profiler.enable()
            except ValueError:  # (Python 3.12+: one profiler a process, the caller's)
                return fn(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            finally:
                profiler.disable()
        finally:
            with self.cond:
                self.idle.append(profiler)
                self.busy -= 1
                self.cond.notify_all()

    def end(self, deadline: float) -> tuple[list[bytes], int]:
        """Stops profiling new tasks; what the threads measured (``marshal``-ed stats, as
        `measured` gives) once their running tasks ended, or by `deadline`, and how many
        were still running then."""
        with self.cond:
            self.on = False
            self.cond.wait_for(lambda: not self.busy, max(0.0, deadline - time.monotonic()))
            done, busy = list(self.idle), self.busy
        out = []
        for profiler in done:
            profiler.create_stats()
            out.append(marshal.dumps(profiler.stats))
        return out, busy


#: The thread-pool profiles of the running ``paralelo.profile()`` block, if any.
threads: ThreadProfiles | None = None


def in_thread_pool(fn: Callable) -> Callable:
    """`fn` as a thread pool runs it: profiled, while a ``paralelo.profile()`` block
    that was running when it was handed over still is."""
    profiles = threads
    if profiles is None:
        return fn
    return functools.partial(profiles.run, fn)


class LineProbe:
    """line_profiler on the functions `wanted` names (``[(module, qualname, (file, first
    line, name))]``, see `wanted`): those this process has by those names, and any it
    loads later with the same code's place (a task's function sent by value is a copy,
    with code of its own). `stop` gives the timings, as ``line_profiler.LineStats``
    keeps them."""

    def __init__(self, wanted: list[tuple[str, str, tuple[str, int, str]]]) -> None:
        from line_profiler import LineProfiler

        self.profiler = LineProfiler()
        self.places = {place for _, _, place in wanted}
        for module, qualname, _ in wanted:
            found: Any = sys.modules.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is not None:
                self.saw(found)
        self.profiler.enable_by_count()

    def saw(self, fn: Any) -> None:
        """Profiles `fn` too if its code is one of those wanted."""
        code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
        if code is not None and (code.co_filename, code.co_firstlineno, code.co_name) in self.places:
            self.profiler.add_function(inspect.unwrap(fn))

    def stop(self) -> tuple[Any, float]:
        self.profiler.disable_by_count()
        stats = self.profiler.get_stats()
        return stats.timings, stats.unit


def wanted(functions: Any) -> list[tuple[str, str, tuple[str, int, str]]]:
    """The functions to line-profile, as a `LineProbe` finds them in another process; a
    TypeError names what is not a Python function."""
    out = []
    for fn in functions:
        code = getattr(inspect.unwrap(fn), "__code__", None) if callable(fn) else None
        if code is None:
            raise TypeError(f"lines= takes Python functions to line-profile, not {fn!r}")
        out.append((fn.__module__, fn.__qualname__, (code.co_filename, code.co_firstlineno, code.co_name)))
    return out


# -- waits, while traced ----------------------------------------------------------------

#: Where this process's blocking waits on paralelo's locks, events, barriers and queues
#: go while it is traced (a worker's TRACE probe list; the parent's own during
#: `paralelo.trace()`), else None: then the primitives are left exactly as they are.
waits: list | None = None
_saved: list[tuple[type, str, Any]] = []
#: What a rank of ``paralelo run`` waits in: the collectives and the blocking receives.
_COMM_WAITS = ("barrier", "Barrier", "bcast", "scatter", "gather", "allgather", "alltoall", "reduce", "allreduce",
               "scan", "exscan", "Bcast", "Scatter", "Gather", "Allgather", "Alltoall", "Reduce", "Allreduce",
               "recv", "Recv", "probe", "Probe", "sendrecv", "Sendrecv")
_INHERITED = object()  # (a method the class had from a base: taken off again)


def trace_waits(spans: list | None) -> None:
    """Starts recording this process's waits into `spans` (their methods are wrapped), or
    stops (None: the methods are put back)."""
    global waits
    from . import synchronize

    waits = spans
    if spans is not None and not _saved:
        _wrap()
        synchronize.rebind_all()
    elif spans is None and _saved:
        for cls, name, method in reversed(_saved):
            if method is _INHERITED:
                delattr(cls, name)  # (the base's own again)
            else:
                setattr(cls, name, method)
        _saved.clear()
        synchronize.rebind_all()


def _waited(what: str, start: int, done: bool) -> None:
    spans = waits
    if spans is not None:
        spans.append((f"wait: {what}", "wait", start, time.perf_counter_ns(),
                      {"done": done, "thread": threading.get_native_id()}))


def traced_acquire(acquire: Callable[..., Any], what: str) -> Callable[..., bool]:
    """`acquire` (a semaphore's, bound), recording a span for each wait (see `_acquiring`)."""
    def traced(block: bool = True, timeout: float | None = None, *, blocking: bool | None = None) -> bool:
        return _acquiring(acquire, what, block if blocking is None else blocking, timeout)

    return traced


def _acquiring(acquire: Callable[..., Any], what: str, block: bool, timeout: float | None) -> bool:
    """``acquire(block, timeout)``, a span recorded if it had to wait: taken at once, or
    refused without blocking, it records nothing."""
    if acquire(False):
        return True
    if not block:
        return False
    start = time.perf_counter_ns()
    got = bool(acquire(True, timeout))
    _waited(what, start, got)
    return got


def traced_wait(wait: Callable[[float | None], Any], ready: Callable[[], Any], what: str) -> Callable[..., Any]:
    """`wait(timeout)` (bound), recording a span for each wait (none when `ready()`)."""
    def traced(timeout: float | None = None) -> Any:
        return True if ready() else _spanned(what, lambda: wait(timeout), bool)

    return traced


def _spanned(what: str, call: Callable[[], Any], got: Callable[[Any], bool] = lambda _: True) -> Any:
    """`call()`, recorded as a wait for `what` (done if it returned and `got` its result)."""
    start = time.perf_counter_ns()
    done = False
    try:
        result = call()
        done = got(result)
        return result
    finally:
        _waited(what, start, done)


def _wrap() -> None:
    import queue as std_queue

    from .queues import Queue, SimpleQueue
    from .synchronize import Barrier, Condition, _Lock

    def put(cls: type, name: str, method: Any) -> None:
        _saved.append((cls, name, cls.__dict__.get(name, _INHERITED)))
        setattr(cls, name, method)

    acquire_now = _Lock.acquire  # (the native one, or lock debugging's)

    def acquire(self: Any, block: bool = True, timeout: float | None = None, *, blocking: bool | None = None) -> bool:
        return _acquiring(acquire_now.__get__(self), type(self).__name__, block if blocking is None else blocking,
                          timeout)

    def enter(self: Any) -> bool:
        return acquire(self)

    barrier_wait, condition_wait = Barrier.wait, Condition.wait
    queue_get, simple_get = Queue.get, SimpleQueue.get

    def wait_barrier(self: Any, timeout: float | None = None) -> int:
        return _spanned("Barrier", lambda: barrier_wait(self, timeout))

    def wait_condition(self: Any, timeout: float | None = None) -> bool:
        return _spanned("Condition", lambda: condition_wait(self, timeout), bool)

    def get(self: Any, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return queue_get(self, False)
        except std_queue.Empty:
            if not block:
                raise
        return _spanned(type(self).__name__ + ".get", lambda: queue_get(self, True, timeout))

    def simple(self: Any) -> Any:
        if not self.empty():
            return simple_get(self)
        return _spanned("SimpleQueue.get", lambda: simple_get(self))

    from ._communicator import Comm

    def collective(name: str, call: Any) -> Any:
        def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _spanned(f"comm.{name}", lambda: call(self, *args, **kwargs))

        return traced

    for name in _COMM_WAITS:
        put(Comm, name, collective(name, getattr(Comm, name)))
    put(_Lock, "acquire", acquire)
    put(_Lock, "__enter__", enter)
    put(Condition, "wait", wait_condition)
    put(Barrier, "wait", wait_barrier)
    put(Queue, "get", get)
    put(SimpleQueue, "get", simple)
