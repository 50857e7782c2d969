"""``Pool(backend="dask" | "ray")``: multiprocessing's Pool API on a cluster (see
`_cluster`)."""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Iterable

from .._errors import as_pool_error
from .._progress import ProgressOption, progress_bar
from ..context import default_workers
from ..pool import AsyncResult, MapResult, Pool, _check_chunksize
from .choice import chosen
from .cluster import Cluster, connect
from .stream import Stream, call_outcome, chunked, outcome_error

__all__ = ["ClusterPool", "check_options", "chunk_size"]


def check_options(backend: str, options: dict[str, Any], retries: int) -> None:
    """Refuses what the local engine offers and a cluster cannot: naming it."""
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"{name}= is not offered with backend={backend!r}: only the local engine has it")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a count (0 or more), not {retries!r}")


def chunk_size(items: int, workers: int) -> int:
    """Items per task when the caller gave no chunksize: about four tasks per worker, as
    multiprocessing's map chooses (a cluster's task costs about a millisecond)."""
    size, extra = divmod(items, workers * 4)
    return max(1, size + bool(extra))


class ClusterPool(Pool):
    """A ``Pool`` whose tasks run on a Dask or Ray cluster (see ``Pool``'s ``backend``
    and ``address``). ``processes``: the local cluster's worker processes (by default,
    as many as a local pool's); with an address, the cluster is as it is, and its size
    sets the chunks."""

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None, context: Any = None, *,
                 task_timeout: float | None = None, retries: int = 0, inline: bool | None = None,
                 backend: str | None = None, address: str | None = None) -> None:
        choice = chosen(backend, address)
        if processes is not None:
            processes = operator.index(processes)
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_options(choice.backend, {"maxtasksperchild": maxtasksperchild, "task_timeout": task_timeout,
                                       "inline": inline or None}, retries)
        self._state = "INIT"
        self._setup = None if initializer is None else (initializer, tuple(initargs))
        if processes is None and choice.address is None:
            processes = default_workers()
        self._cluster: Cluster = connect(choice, processes, retries)
        self._processes = self._cluster.workers() if self._cluster.attached else processes or self._cluster.workers()
        self._inline = None
        self._engine = None
        self._lock = threading.Lock()
        self._out: dict[Future, AsyncResult] = {}  # tasks on the cluster, and the results they settle
        self._feeding = 0  # lazy maps still reading their input
        self._flows: weakref.WeakSet = weakref.WeakSet()  # lazy maps, to end at terminate()
        self._idle = threading.Condition(self._lock)
        self._state = "RUN"
        self._finalizer = weakref.finalize(self, self._cluster.close)

    @property
    def _delivery_thread(self) -> Any:
        """The thread its results' callbacks run on (see `cluster._Delivery`)."""
        from . import cluster

        return cluster.deliver.thread

    def __repr__(self) -> str:
        return (f"<paralelo.Pool backend={self._cluster.backend!r} state={self._state} "
                f"pool_size={self._processes}>")

    def _track(self, inner: Future, result: AsyncResult) -> None:
        with self._lock:
            self._out[inner] = result

    def _untrack(self, inner: Future) -> None:
        with self._lock:
            self._out.pop(inner, None)
            if not self._out:
                self._idle.notify_all()

    def _fed(self) -> None:
        with self._lock:
            self._feeding -= 1
            self._idle.notify_all()

    def apply_async(self, func: Callable, args: tuple = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None, *,
                    task_timeout: float | None = None, retries: int | None = None) -> AsyncResult:
        """Starts ``func(*args, **kwds)`` on the cluster; returns an AsyncResult."""
        self._check_running()
        check_options(self._cluster.backend, {"task_timeout": task_timeout, "retries": retries}, 0)
        result = AsyncResult(callback, error_callback)
        result._pool = self
        inner = self._cluster.call(self._setup, func, tuple(args), dict(kwds or {}))
        self._track(inner, result)

        def done(f: Future) -> None:
            result._set(*call_outcome(f))
            self._untrack(f)

        inner.add_done_callback(done)
        return result

    def _map_async(self, func: Callable, iterable: Iterable, star: bool, chunksize: int | None,
                   callback: Callable | None, error_callback: Callable | None,
                   task_timeout: float | None, retries: int | None, progress: ProgressOption) -> MapResult:
        self._check_running()
        _check_chunksize(chunksize)
        check_options(self._cluster.backend, {"task_timeout": task_timeout, "retries": retries}, 0)
        items = list(iterable)
        result = MapResult(callback, error_callback)
        result._pool = self
        bar = progress_bar(progress, items)
        if not items:
            if bar is not None:
                bar.finish(0)
            result._set_now(True, [])
            return result
        size = chunksize or chunk_size(len(items), self._processes)
        chunks = list(chunked(iter(items), size))
        outcomes: list[list | None] = [None] * len(chunks)
        left = [len(chunks)]

        def settle(i: int, f: Future) -> None:
            try:
                got = f.result()
            except BaseException as e:  # noqa: BLE001 - the cluster lost the chunk
                got = [(False, e)]
            if bar is not None:
                bar.advance(len(chunks[i]))
            failed = next((v for ok, v in got if not ok), None)
            with self._lock:
                outcomes[i] = got
                left[0] -= 1
                last = left[0] == 0
            if failed is not None:
                result._set(False, outcome_error(failed))  # (the first failure to arrive, as multiprocessing)
            elif last:
                result._set(True, [v for chunk in outcomes for _, v in chunk])  # type: ignore[union-attr]
            self._untrack(f)

        stored: dict = {}  # (the map's large arrays, stored once for all its chunks)
        for i, chunk in enumerate(chunks):
            inner = self._cluster.chunk(self._setup, func, star, chunk, stored)
            self._track(inner, result)
            inner.add_done_callback(functools.partial(settle, i))
        return result

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int | None, ordered: bool,
              task_timeout: float | None, retries: int | None, progress: ProgressOption) -> Any:
        self._check_running()
        _check_chunksize(chunksize)
        check_options(self._cluster.backend, {"task_timeout": task_timeout, "retries": retries}, 0)
        sized = type(iterable) in (list, tuple, range)
        size = chunksize or (chunk_size(len(iterable), self._processes) if sized else 1)  # type: ignore[arg-type]
        bar = progress_bar(progress, iterable)

        stored: dict = {}  # (the map's large arrays, stored once for all its chunks)

        def send(chunk: list) -> Future:
            inner = self._cluster.chunk(self._setup, func, False, chunk, stored)
            with self._lock:
                self._out[inner] = None  # type: ignore[assignment]
            inner.add_done_callback(self._untrack)
            return inner

        with self._lock:
            self._feeding += 1  # (join waits for the input's end: see `_fed`)
        stream = Stream(send, chunked(iter(iterable), size), sized, ordered, 2 * self._processes,
                        ordered and chunksize is not None and chunksize > 1, bar, self._cluster.cancel, as_pool_error,
                        self._fed)
        self._flows.add(stream._flow)
        return stream

    def insights(self) -> Any:
        """What the cluster's workers ran for this pool, worker by worker (see
        ``Pool.insights``): tasks, and time working."""
        return self._cluster.insights()

    def reset_insights(self) -> None:
        """Starts a new window for ``insights``."""
        self._cluster.reset_insights()

    def close(self) -> None:
        """No more tasks; the cluster is let go of once the submitted ones are done
        (``join``)."""
        if self._state == "RUN":
            self._state = "CLOSE"

    def terminate(self) -> None:
        """Cancels what is still running on the cluster (its results fail with an error,
        instead of hanging) and lets go of the cluster (stopping it if the pool started
        it)."""
        self._state = "TERMINATE"
        with self._lock:
            out = dict(self._out)
            self._out.clear()
            self._idle.notify_all()
        error = RuntimeError("the pool was terminated before this task finished")
        for result in out.values():
            if result is not None:
                result._set_now(False, error)
        for flow in list(self._flows):
            flow.fail(error)
        self._cluster.cancel(list(out))
        self._finalizer()

    def join(self) -> None:
        """Waits for the submitted tasks to finish, then lets go of the cluster; call
        ``close`` or ``terminate`` first."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        with self._lock:
            self._idle.wait_for(lambda: not self._out and not self._feeding)
        self._finalizer()

    def __enter__(self) -> ClusterPool:
        self._check_running()
        return self
