"""paralelo.ProcessPoolExecutor: concurrent.futures' process pool on paralelo's engine."""

from __future__ import annotations

import concurrent.futures as _cf
import functools
import operator
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Generator, Iterable, Iterator, Literal

from . import _engine, _inline, aio
from ._cluster import choice as _cluster
from ._broken import broken
from ._imap import IMapIterator
from ._insights import Insights, report
from ._progress import ProgressOption, finishing, progress_bar, starting
from .context import PROCESS, default_workers, start_method_of


class AwaitableFuture(Future):
    """A ``concurrent.futures.Future`` that asyncio code can also ``await`` directly (see
    ``paralelo.aio``): no thread waits for it, and cancelling the await cancels it."""

    def __await__(self) -> Generator[Any, None, Any]:
        return aio.awaiting(lambda fn: self.add_done_callback(lambda _f: fn()), self.done,
                            self.cancel, self.result)


def _settle(future: Future, ok: bool, value: Any) -> None:
    """Completes `future` (its done-callbacks run here)."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except _cf.InvalidStateError:
        pass  # cancelled (or failed by a broken pool) meanwhile


def _cluster_executor() -> type:
    from ._cluster.executor import ClusterExecutor

    return ClusterExecutor


class ProcessPoolExecutor(_cf.Executor):
    """A ``concurrent.futures.Executor`` running calls in worker processes.

    ``submit`` returns a standard ``concurrent.futures.Future``, so ``as_completed``,
    ``wait``, ``asyncio.wrap_future`` and ``loop.run_in_executor`` work unchanged.
    Workers are forked from a copy of this process made when the executor is made, so
    they see its globals and the initializer's arguments as multiprocessing's fork does;
    lambdas, closures and functions defined later travel by value (cloudpickle). A worker
    that dies fails only the task it ran (``WorkerLostError``, a ``BrokenProcessPool``);
    the executor replaces it and stays usable.

    Beyond the standard library: ``task_timeout`` (seconds) kills the worker of a task
    that runs longer and fails that task with ``TaskTimeoutError``; ``retries`` runs a
    task again, that many times, when its worker dies under it (never when it raises).

    ``backend="dask"`` or ``"ray"`` (and ``address=``) runs the calls on a cluster, as
    ``Pool``'s do; ``paralelo.set_backend()`` and ``PARALELO_BACKEND`` set the default.
    """

    def __new__(cls, *args: Any, backend: str | None = None, address: str | None = None,
                **kwargs: Any) -> ProcessPoolExecutor:
        return super().__new__(_cluster.pool_class(cls, backend, address, kwargs.get("inline"), _cluster_executor))

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None, task_timeout: float | None = None,
                 retries: int = 0, inline: bool | None = None, backend: str | None = None,
                 address: str | None = None) -> None:
        if max_workers is None:
            max_workers = default_workers()
        max_workers = operator.index(max_workers)  # TypeError for 2.0 or "2", as the stdlib
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._max_workers = max_workers
        _engine.check_limits(task_timeout, retries)
        start = start_method_of(mp_context)
        self._make_engine = functools.partial(
            _engine.Engine, max_workers, initializer, tuple(initargs), max_tasks_per_child,
            kind=PROCESS[start], daemon=False, task_timeout=task_timeout, retries=retries, start=start)
        self._started: _engine.Engine | None = None
        # Inline (see `_inline`): tasks run here, from the first use on.
        self._inline: _inline.Runner | None = None
        self._inline_broken: BaseException | None = None
        self._inline_told = False  # the broken initializer was reported through a Future
        self._make_inline = functools.partial(_inline.Runner, initializer, tuple(initargs)) \
            if _inline.wanted(inline) else None
        self._start_lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._pending: weakref.WeakSet[Future] = weakref.WeakSet()

    @property
    def _engine(self) -> _engine.Engine:
        """The engine, started on first use: as concurrent.futures does with fork, the
        workers are forked at the first submit (or map), so they see what the program set
        up to then."""
        engine = self._started
        if engine is None:
            with self._start_lock:
                engine = self._started
                if engine is None:
                    engine = self._make_engine()
                    engine.finish_at_exit = True  # like concurrent.futures: pending work still runs
                    # Dropped without shutdown: like concurrent.futures, finish what was submitted.
                    finalizer = weakref.finalize(self, engine.close)
                    finalizer.atexit = False  # at exit, the engine's own hook decides
                    self._started = engine
        return engine

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedules ``fn(*args, **kwargs)``; returns its Future."""
        with self._shutdown_lock:
            if self._started is not None and self._started.broken is not None:
                raise _cf.process.BrokenProcessPool(str(self._started.broken))
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future = AwaitableFuture()
            try:
                runner = self._runner()
            except _cf.process.BrokenProcessPool as e:
                if self._inline_told:
                    raise  # (later submits raise, as a broken pool's do)
                self._inline_told = True
                future.set_exception(e)  # (the first call's Future fails, as a worker's death fails it)
                return future
            if runner is None:

                def on_done(ok: bool, value: Any) -> None:
                    # Done-callbacks are user code: never under the engine lock.
                    _engine.run_or_defer(_settle, future, ok, value)

                self._pending.add(future)
                self._engine.submit(self._engine.call_job(fn, args, kwargs, on_done,
                                                          future.set_running_or_notify_cancel))
                return future
        # Inline: the task runs here, not under the lock (it may submit, or another thread
        # shut down, meanwhile).
        future.set_running_or_notify_cancel()
        _settle(future, *runner.call(fn, args, kwargs))
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None, progress: ProgressOption = None) -> Iterator:
        """``map(fn, *iterables)`` in parallel; results in order, lazily. ``timeout``
        counts from this call; ``chunksize=None`` picks chunk sizes adaptively;
        ``progress=True`` (or a dict of tqdm options) draws a tqdm bar of the items done."""
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        if "submit" in vars(self) or type(self).submit is not ProcessPoolExecutor.submit:
            # submit was replaced (tqdm's process_map counts items that way, subclasses
            # may log or throttle): map goes through it, as concurrent.futures' map does.
            results = super().map(fn, *iterables, timeout=timeout)
            bar = None if progress is None else progress_bar(progress, _shortest(iterables))
            return results if bar is None else finishing(results, bar, count=True)
        end = None if timeout is None else time.monotonic() + timeout
        # Like the standard executor, the input is read now, and each item goes out as
        # it is read (not under our lock: the input may submit to this executor itself).
        # A list is copied, as the caller may reuse it while the results come. One
        # iterable needs no tuples.
        star = len(iterables) != 1
        items = zip(*iterables) if star else iterables[0]
        if type(items) is list:
            items = list(items)
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            runner = self._runner()
        if runner is not None:
            # Every item runs now, as concurrent.futures submits every one at the call (a
            # map nobody reads still runs); each failure raises in its place as read.
            bar = None if progress is None else progress_bar(progress, _shortest(iterables))
            outcomes = list(runner.each(fn, list(items), star, bar))
            if bar is not None:
                bar.finish(len(outcomes))
            return _inline.Results(iter(outcomes), False)
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            bar = None if progress is None else progress_bar(progress, _shortest(iterables), later=True)
            with starting(bar):
                it = IMapIterator(self._engine, ordered=True)
                job = self._engine.map_job(fn, items, star, chunksize, it)
                job.progress = it._progress = bar
                job.eager = True
                it.job = job
                self._engine.submit(job)
        if job.sliceable is None:
            job.feed(self._engine.kick)
            self._engine.kick()  # (the last items read, or the input's end)
            if job.input_error is not None:
                if it._progress is not None:
                    it._progress.close()
                raise job.input_error  # (from map(), as concurrent.futures raises it)
        return _results(it, job, self._engine, end)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the standard executor's workers die of it too (they share the
            # terminal's process group), so its shutdown returns at once. Ours ignore it
            # (a task never sees the parent's Ctrl-C): what they run is stopped here.
            self._interrupt()
            return False
        self.shutdown(wait=True)
        return False

    def _interrupt(self) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        for f in list(self._pending):
            f.cancel()
        engine = self._started
        if engine is not None:
            engine.terminate(_cf.process.BrokenProcessPool("the executor was interrupted (Ctrl-C)"))
            engine.join()

    def _runner(self) -> _inline.Runner | None:
        """The inline runner, made at the first use (its initializer runs then), if this
        executor runs inline. An initializer that raises breaks the executor, as a
        worker's does."""
        if self._make_inline is not None and self._inline is None:
            if self._inline_broken is not None:
                raise self._inline_broken
            try:
                self._inline = self._make_inline()
            except Exception as e:
                self._inline_broken = broken("a worker's initializer raised an exception", e)
                raise self._inline_broken from e
        return self._inline

    def insights(self) -> Insights:
        """Where the executor's time went since its workers started (or since
        ``reset_insights``), worker by worker: see ``Pool.insights``. Empty before its
        first use."""
        if self._inline is not None:
            return self._inline.insights()
        engine = self._started
        return report([], time.monotonic()) if engine is None else engine.insights()

    def reset_insights(self) -> None:
        """Starts a new window for ``insights``."""
        if self._inline is not None:
            self._inline.reset_insights()
        engine = self._started
        if engine is not None:
            engine.reset_insights()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work; with ``cancel_futures``, cancels what has not started;
        with ``wait``, returns once everything is done and the workers have exited."""
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            for f in list(self._pending):
                f.cancel()
        engine = self._started
        if engine is None:
            return  # never used: no workers were started
        engine.close()
        if wait:
            engine.join()


def _shortest(iterables: tuple[Iterable, ...]) -> Any:
    """What a bar over ``zip(*iterables)`` takes as its input: the shortest, if all have a
    length (an iterator has none: the total is then known at its end)."""
    try:
        return min(iterables, key=len) if iterables else ()  # type: ignore[arg-type]
    except TypeError:
        return iter(())  # (no length)


def _results(it: IMapIterator, job: _engine.MapJob, engine: _engine.Engine, end: float | None) -> Iterator:
    try:
        while True:
            try:
                first = it.next(None if end is None else max(0.0, end - time.monotonic()))
            except StopIteration:
                return
            yield first
            yield from it._current  # the rest of what arrived with it: no waiting
    finally:
        if not job.finished:  # the caller stopped early: do not run the rest
            engine.cancel(job)


_interpreter_shutdown = False


def _at_interpreter_shutdown() -> None:
    global _interpreter_shutdown
    _interpreter_shutdown = True


# As concurrent.futures does: set when the interpreter starts shutting down (threading's
# exit hooks run before atexit's), so a submit from an atexit handler is refused.
threading._register_atexit(_at_interpreter_shutdown)  # type: ignore[attr-defined]
