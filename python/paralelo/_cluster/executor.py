"""``ProcessPoolExecutor(backend="dask" | "ray")``: concurrent.futures' executor on a
cluster (see `_cluster`)."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Literal

from .. import futures as _futures
from .._progress import ProgressOption, progress_bar
from ..futures import AwaitableFuture, ProcessPoolExecutor, _settle, _shortest
from .choice import chosen
from .cluster import Cluster, connect
from .pool import check_options, chunk_size
from .stream import Stream, call_outcome, chunked

__all__ = ["ClusterExecutor"]


class ClusterExecutor(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose calls run on a Dask or Ray cluster (see
    ``ProcessPoolExecutor``'s ``backend`` and ``address``)."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None, task_timeout: float | None = None,
                 retries: int = 0, inline: bool | None = None, backend: str | None = None,
                 address: str | None = None) -> None:
        choice = chosen(backend, address)
        if max_workers is not None:
            import operator

            max_workers = operator.index(max_workers)
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_options(choice.backend, {"max_tasks_per_child": max_tasks_per_child, "task_timeout": task_timeout,
                                       "inline": inline or None}, retries)
        self._setup = None if initializer is None else (initializer, tuple(initargs))
        self._cluster: Cluster = connect(choice, max_workers, retries)
        self._max_workers = self._cluster.workers() if self._cluster.attached else max_workers or self._cluster.workers()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._out: set[Future] = set()  # (the cluster tasks not finished)
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()  # (the callers' futures, for cancel_futures)
        self._idle = threading.Condition(self._shutdown_lock)
        self._started = None
        self._inline = None
        # Dropped without shutdown, or still open at exit: the cluster is let go of.
        weakref.finalize(self, self._cluster.close)

    def __repr__(self) -> str:
        return f"<paralelo.ProcessPoolExecutor backend={self._cluster.backend!r} max_workers={self._max_workers}>"

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedules ``fn(*args, **kwargs)`` on the cluster; returns its Future."""
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _futures._interpreter_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future = AwaitableFuture()
            inner = self._cluster.call(self._setup, fn, args, kwargs)
            self._out.add(inner)
            self._futures.add(future)

        def done(f: Future) -> None:
            self._forget(f)
            if future.set_running_or_notify_cancel():
                _settle(future, *call_outcome(f))

        def cancelled(f: Future) -> None:
            if f.cancelled():
                self._cluster.cancel([inner])

        inner.add_done_callback(done)
        future.add_done_callback(cancelled)
        return future

    def _forget(self, f: Future) -> None:
        with self._shutdown_lock:
            self._out.discard(f)
            if not self._out:
                self._idle.notify_all()

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None, progress: ProgressOption = None) -> Iterator:
        """``map(fn, *iterables)`` on the cluster; results in order, lazily. The input is
        read now, as concurrent.futures reads it; `chunksize` items go in each task (by
        default a quarter of an even share per worker)."""
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) != 1
        items = list(zip(*iterables)) if star else list(iterables[0])
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        bar = None if progress is None else progress_bar(progress, _shortest(iterables))
        size = chunksize or chunk_size(len(items), self._max_workers)
        stream = Stream(self._send(fn, star), chunked(iter(items), size), True, True, 0, True, bar,
                        self._cluster.cancel)
        return _results(stream, end)

    def _send(self, fn: Callable, star: bool) -> Callable[[list], Future]:
        stored: dict = {}  # (the map's large arrays, stored once for all its chunks)

        def send(chunk: list) -> Future:
            inner = self._cluster.chunk(self._setup, fn, star, chunk, stored)
            with self._shutdown_lock:
                self._out.add(inner)
            inner.add_done_callback(self._forget)
            return inner

        return send

    def insights(self) -> Any:
        """What the cluster's workers ran for this executor: see ``Pool.insights``."""
        return self._cluster.insights()

    def reset_insights(self) -> None:
        """Starts a new window for ``insights``."""
        self._cluster.reset_insights()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work; with ``cancel_futures``, cancels what has not finished;
        with ``wait``, returns once everything is done. The cluster the executor started
        is stopped once its work is done."""
        with self._shutdown_lock:
            self._shutdown = True
            pending = list(self._out)
        if cancel_futures:
            for f in list(self._futures):
                f.cancel()  # (the caller's future: cancelled() is True, its result raises CancelledError)
            self._cluster.cancel(pending)
        if wait:
            self._close_when_idle()
        else:
            threading.Thread(target=self._close_when_idle, name="paralelo-cluster-shutdown", daemon=True).start()

    def _close_when_idle(self) -> None:
        with self._shutdown_lock:
            self._idle.wait_for(lambda: not self._out)
        self._cluster.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        self.shutdown(wait=True, cancel_futures=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        return False



def _results(stream: Stream, end: float | None) -> Iterator:
    try:
        while True:
            try:
                yield stream.next(None if end is None else max(0.0, end - time.monotonic()))
            except StopIteration:
                return
    finally:
        stream.close()
