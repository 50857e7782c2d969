"""paralelo.Pool: multiprocessing.Pool's API (plus reduce and map_reduce) on paralelo's engine."""

from __future__ import annotations

import functools
import multiprocessing.pool
import operator
import os
import threading
import time
import weakref
from concurrent.futures import CancelledError
from typing import Any, Callable, Generator, Iterable, Iterator, Mapping

from . import _engine, _inline, _probing, aio
from ._cluster import choice as _cluster
from ._native import unpack_numbers
from ._errors import PoolTimeoutError, as_pool_error
from ._imap import IMapIterator, IMapUnorderedIterator, not_in_callback
from ._insights import Insights, report
from ._progress import Counted, ProgressOption, finishing, progress_bar, starting
from .context import POOL_WORKER, default_workers, start_method_of

_MISSING = object()


def _no_job() -> None:
    return None


class AsyncResult(aio.FutureLike):
    """The result of an ``apply_async`` call, as in multiprocessing; also an asyncio
    Future-like object (``await`` it, or hand it to ``asyncio.gather``, ``wait``...)."""

    def __init__(self, callback: Callable | None = None, error_callback: Callable | None = None) -> None:
        # Made by the first thread to wait (see `wait`): most results are awaited, read
        # once ready, or waited on by one thread, and a burst of calls would otherwise make
        # (and the garbage collector walk) an Event, its Condition and lock for each.
        self._event: threading.Event | None = None
        self._ready = False  # ready: settled, its callback run
        self._callback = callback
        self._error_callback = error_callback
        self._success: bool | None = None
        self._value: Any = None
        self._settled = False  # its outcome is decided (its callbacks may still be running)
        self._pool: Any = None  # keeps a temporary pool alive while its result is pending
        # Told once it is ready (see aio): one, a list of them, or None.
        self._watchers: Callable[[], None] | list[Callable[[], None]] | None = None
        self._job: Callable[[], Any] = _no_job  # (weakly: a finished job's arguments go)

    def __repr__(self) -> str:
        state = "pending" if not self._settled else "ok" if self._success else "failed"
        hooks = "".join(f" {name}={fn!r}" for name, fn in (("callback", self._callback),
                        ("error_callback", self._error_callback)) if fn is not None)
        return f"<{type(self).__name__} {state}{hooks}>"

    def ready(self) -> bool:
        """Whether the call has finished."""
        return self._ready

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError if not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._success)

    def wait(self, timeout: float | None = None) -> None:
        """Waits until the result is ready or ``timeout`` seconds pass."""
        if not self._ready:
            not_in_callback(self._pool)
            with _settling:
                if self._ready:
                    return
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
            event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the worker's exception; a ``TimeoutError`` (also a ``multiprocessing.TimeoutError``) if not
        ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self._ready:
            raise PoolTimeoutError
        if self._success:
            return self._value
        raise self._value

    def __await__(self) -> Generator[Any, None, Any]:
        """``await result``: its value (or its exception), the event loop running on
        meanwhile (see ``paralelo.aio``); cancelling the await cancels the work if it has
        not started, and discards its result otherwise."""
        # (`result`, not `get`: a result cancelled meanwhile raises asyncio's CancelledError.)
        return aio.awaiting(self._when_ready, self.ready, self._cancel, self.result)

    def _outcome(self) -> tuple[bool, Any]:
        return bool(self._success), self._value

    def _is_cancelled(self) -> bool:
        # (Settled by `_cancel`: a task's own CancelledError is what it raised.)
        return not self._success and self._value is self.__dict__.get("_cancelled_with", _MISSING)

    def _watching(self) -> list[Callable[[], None]]:
        """The watchers not yet told (see `_when_ready`)."""
        with _settling:
            return _listed(self._watchers)

    def _unwatch(self, fn: Callable[[], None]) -> None:
        with _settling:
            watchers = self._watchers
            if isinstance(watchers, list):
                if fn in watchers:
                    watchers.remove(fn)
            elif watchers is not None and watchers == fn:
                self._watchers = None

    def _when_ready(self, fn: Callable[[], None]) -> None:
        """Calls `fn` once the result is ready: now, or from the thread that settles it."""
        with _settling:
            if not self._ready:
                # One watcher (the usual: the one awaiting task, or gather) is held alone,
                # not in a list: one object less per pending result.
                watchers = self._watchers
                if watchers is None:
                    self._watchers = fn
                elif isinstance(watchers, list):
                    watchers.append(fn)
                else:
                    self._watchers = [watchers, fn]
                return
        fn()

    def _cancel(self) -> None:
        """Runs nothing more of the work; a result still to come is discarded."""
        job = self._job()
        if job is not None and self._pool is not None:
            self._pool._engine.cancel(job)
        self._cancelled_with = CancelledError()
        self._set_now(False, self._cancelled_with)

    def _set(self, ok: bool, value: Any) -> None:
        # Callbacks are user code: never under the engine lock.
        _engine.run_or_defer(self._set_now, ok, value if ok else as_pool_error(value))

    def _set_now(self, ok: bool, value: Any) -> None:
        with _settling:  # two threads may settle one result (a map's chunks fail on both)
            if self._settled:
                return
            self._settled = True
            self._success, self._value = ok, value
        try:
            if ok and self._callback is not None:
                self._callback(value)
            elif not ok and self._error_callback is not None:
                self._error_callback(value)
        finally:
            # Even when a callback raises (the engine logs it): the result is ready, and
            # the pool goes on.
            with _settling:
                self._ready = True
                event, watchers, self._watchers = self._event, self._watchers, None
            if event is not None:
                event.set()
            for fn in _listed(watchers):
                fn()


ApplyResult = AsyncResult


def _listed(watchers: Callable[[], None] | list[Callable[[], None]] | None) -> list[Callable[[], None]]:
    if watchers is None:
        return []
    return list(watchers) if isinstance(watchers, list) else [watchers]

#: Held while a result's outcome is decided (once, whichever thread comes first).
_settling = threading.Lock()


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: a list, in input order. As with
    multiprocessing, a failed chunk fails the map, which is ready once every chunk ran."""

    fails_whole = True  # the first failed chunk fails the whole map (the rest still runs)

    def __init__(self, callback: Callable | None = None, error_callback: Callable | None = None) -> None:
        super().__init__(callback, error_callback)
        # Filled in place: a Pool reads its input into a list first, so the engine always
        # says its length (`expect`) before any outcome. Made when first filled (`_list`),
        # not at `expect`: a big list's first touch costs a page fault per 4 KB (≈ 0.4 ms
        # for 100,000 items here), which then overlaps the workers' chunks instead of
        # delaying the first ones (and a packed chunk's, in `settle`, comes after the
        # collector gave the workers more). None once a chunk failed.
        self._out: list | None = None
        self._expected = 0
        self._got = 0
        self._total: int | None = None
        self._error: BaseException | None = None  # the failed chunk's that comes first in the input
        self._error_at = 0
        self._packed: list[tuple[int, bytes]] = []  # (start, machine array) not unpacked yet

    # sink protocol (called by the engine with its lock held)
    def expect(self, total: int) -> None:
        self._expected = total

    def chunks(self, chunks: list[tuple[int, int, bool, Any]]) -> None:
        for start, count, ok, values in chunks:
            self._got += count
            if not ok:
                # The map is ready once every chunk ran: it reports the failure that comes
                # first in the input (as multiprocessing's usually does), whichever came
                # first, and keeps no results.
                if self._error is None or start < self._error_at:
                    self._error, self._error_at = values, start
                self._out = None
                self._packed = []
            elif self._error is not None:
                pass  # a failed map's results are dropped
            elif type(values) is bytes:
                self._packed.append((start, values))  # a machine array: unpacked by `settle`
            else:
                self._list()[start : start + count] = values
        if self._got == self._total:
            self._finish_if_done()

    def end(self, total: int) -> None:
        self._total = total
        self._finish_if_done()

    def _list(self) -> list:
        if self._out is None:
            self._out = [None] * self._expected
        return self._out

    def settle(self) -> None:
        packed, self._packed = self._packed, []
        if packed and self._error is None:
            out = self._list()
            for start, data in packed:
                unpack_numbers(data, out, start)

    def fail(self, exc: BaseException) -> None:
        self._packed = []
        self._set(False, exc)

    def input_failed(self, position: int, exc: BaseException) -> None:
        self._set(False, exc)

    def consumed_items(self) -> int:
        return 0

    def _finish_if_done(self) -> None:
        if self._total is None or self._got != self._total or self._settled:
            return
        if self._error is not None:
            self._set(False, self._error)
            return
        self.settle()
        self._set(True, self._list())


def _first_failure(outcomes: Iterable[tuple[bool, Any]]) -> tuple[bool, Any]:
    """A map's outcome from its items': every item runs; the first failure in the input
    fails it, as multiprocessing's map reports."""
    values, failure = [], None
    for ok, value in outcomes:
        if ok:
            values.append(value)
        elif failure is None:
            failure = value
    return (True, values) if failure is None else (False, failure)


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _fold(function: Callable, block: list) -> Any:
    return functools.reduce(function, block)


def _map_fold(map_function: Callable, reduce_function: Callable, block: list) -> Any:
    return functools.reduce(reduce_function, map(map_function, block))


class Folding:
    """``reduce`` and ``map_reduce`` over a pool's ``map`` (a process ``Pool``'s or a
    ``ThreadPool``'s): the guide's ``Pool.reduce``, as parallel trees."""

    # (What the pool it is mixed into provides.)
    _processes: int
    _check_running: Callable[[], None]
    map: Callable[..., list]

    def reduce(self, function: Callable, iterable: Iterable, initializer: Any = _MISSING) -> Any:
        """``functools.reduce(function, iterable[, initializer])`` as a parallel tree.

        ``function`` must be associative; the order of operands is kept (so string
        concatenation comes out right), but it need not be commutative.
        """
        self._check_running()
        items = list(iterable)
        if initializer is not _MISSING:
            items.insert(0, initializer)
        if not items:
            raise TypeError("reduce() of empty iterable with no initial value")
        fold = functools.partial(_fold, function)
        while len(items) > 1:
            pieces = 2 * self._processes if len(items) > 4 * self._processes else self._processes
            size = max(2, -(-len(items) // pieces))
            blocks = [items[i:i + size] for i in range(0, len(items), size)]
            items = self.map(fold, blocks, chunksize=1)
        return items[0]

    def map_reduce(self, map_function: Callable, reduce_function: Callable, iterable: Iterable,
                   initializer: Any = _MISSING, chunksize: int | None = None) -> Any:
        """``reduce(reduce_function, map(map_function, iterable)[, initializer])``: each
        worker maps and folds its own blocks; the partial results are tree-reduced."""
        self._check_running()
        items = list(iterable)
        if not items:
            if initializer is _MISSING:
                raise TypeError("reduce() of empty iterable with no initial value")
            return initializer
        size = chunksize or max(1, -(-len(items) // (4 * self._processes)))
        blocks = [items[i:i + size] for i in range(0, len(items), size)]
        partials = self.map(functools.partial(_map_fold, map_function, reduce_function), blocks, chunksize=1)
        return self.reduce(reduce_function, partials, initializer)


def _cluster_pool() -> type:
    from ._cluster.pool import ClusterPool

    return ClusterPool


class Pool(Folding):
    """A pool of worker processes with the API of ``multiprocessing.Pool``.

    Workers are forked from a copy of this process made when the pool is made (see
    ``paralelo._zygote``): like multiprocessing's fork, they see its globals, cwd,
    environment and logging, and what the initializer sets, and objects that can only be
    inherited work as ``initargs``. Functions of ``__main__`` travel by reference;
    lambdas, closures and functions defined after the pool by value (cloudpickle).
    ``chunksize=None`` (the default everywhere) picks chunk sizes from measured task
    durations. Adds ``reduce`` and ``map_reduce``, per-task time limits
    (``task_timeout``) and ``retries`` for tasks whose worker died.

    ``backend="dask"`` or ``"ray"`` runs the same calls on a cluster instead: the one at
    ``address=`` (or named in the backend, ``"dask://host:8786"``, ``"ray://host:10001"``),
    else one the pool starts on this machine (127.0.0.1) with ``processes`` workers and
    stops when it ends. With no ``backend=``, ``paralelo.set_backend()`` or the
    ``PARALELO_BACKEND`` environment variable decides (the local engine if neither says).
    The initializer runs once per cluster worker process, before its first task of the
    pool; large numpy arrays in the arguments go to the cluster's object store once;
    ``maxtasksperchild``, ``task_timeout`` and ``inline`` are the local engine's only.
    """

    def __new__(cls, *args: Any, backend: str | None = None, address: str | None = None, **kwargs: Any) -> Pool:
        return super().__new__(_cluster.pool_class(cls, backend, address, kwargs.get("inline"), _cluster_pool))

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None, context: Any = None, *,
                 task_timeout: float | None = None, retries: int = 0, inline: bool | None = None,
                 backend: str | None = None, address: str | None = None) -> None:
        if processes is None:
            processes = default_workers()
        processes = operator.index(processes)  # TypeError for 2.0 or "2", as multiprocessing
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._processes = processes
        # Inline (see `_inline`): tasks run here, and there is no engine.
        self._inline = _inline.Runner(initializer, tuple(initargs)) if _inline.wanted(inline) else None
        if self._inline is not None:
            self._engine: Any = None
            self._state = "RUN"
            return
        start = start_method_of(context)
        self._engine = _engine.Engine(processes, initializer, tuple(initargs), maxtasksperchild,
                                      kind=POOL_WORKER[start], task_timeout=task_timeout, retries=retries,
                                      start=start)
        try:
            self._engine.wait_started()  # its workers exist once it is made, as multiprocessing's do
        except BaseException:  # Ctrl-C in Pool(): no pool is left behind
            self._engine.terminate()
            raise
        self._state = "RUN"
        self._finalizer = weakref.finalize(self, self._engine.terminate)
        self._finalizer.atexit = False  # at exit, _engine's own hook decides (finish or stop)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} pool_size={self._processes}>"

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    # -- single calls -----------------------------------------------------------

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None, *, task_timeout: float | None = None, retries: int | None = None) -> Any:
        """Calls ``func(*args, **kwds)`` in a worker and returns its result."""
        return self.apply_async(func, args, kwds, task_timeout=task_timeout, retries=retries).get()

    def apply_async(self, func: Callable, args: tuple = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None, *,
                    task_timeout: float | None = None, retries: int | None = None) -> AsyncResult:
        """Starts ``func(*args, **kwds)`` in a worker; returns an AsyncResult.

        Here and in every map: ``task_timeout`` (seconds) kills a task's worker if the task
        runs longer, failing it with ``TaskTimeoutError``; ``retries`` runs a task again
        that many times if its worker dies under it (never if the task raises). Both
        default to the pool's own. Every map also takes ``progress``: ``True`` (or a dict
        of options for ``tqdm(**options)``) draws a tqdm bar of the items done, its total
        the input's length when it has one (tqdm must be installed)."""
        self._check_running()
        result = AsyncResult(callback, error_callback)
        result._pool = self  # a result keeps its pool alive, as in multiprocessing
        if self._inline is not None:
            result._set(*self._inline.call(func, tuple(args), dict(kwds or {})))
            return result
        job = self._engine.call_job(func, tuple(args), dict(kwds or {}), result._set,
                                    task_timeout=task_timeout, retries=retries)
        result._job = weakref.ref(job)
        self._engine.submit(job)
        return result

    # -- maps -------------------------------------------------------------------

    def _map_async(self, func: Callable, iterable: Iterable, star: bool, chunksize: int | None,
                   callback: Callable | None, error_callback: Callable | None,
                   task_timeout: float | None, retries: int | None, progress: ProgressOption) -> MapResult:
        self._check_running()
        _check_chunksize(chunksize)
        if type(iterable) not in (list, tuple, range):
            iterable = list(iterable)  # as multiprocessing does: read here, on the caller's thread
        result = MapResult(callback, error_callback)
        result._pool = self
        if self._inline is not None:
            bar = progress_bar(progress, iterable)
            result._set(*_first_failure(self._inline.each(func, iterable, star, bar)))
            return result
        bar = progress_bar(progress, iterable, later=True)
        with starting(bar):
            job = self._engine.map_job(func, iterable, star, chunksize, result,
                                       task_timeout=task_timeout, retries=retries)
            job.progress = bar
            result._job = weakref.ref(job)
            self._engine.submit(job)
        return result

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *, task_timeout: float | None = None,
            retries: int | None = None, progress: ProgressOption = None) -> list:
        """``[func(x) for x in iterable]``, computed in parallel, in order."""
        return self._map_async(func, iterable, False, chunksize, None, None, task_timeout, retries, progress).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None, *,
                  task_timeout: float | None = None, retries: int | None = None,
                  progress: ProgressOption = None) -> MapResult:
        """Like ``map``, returning an AsyncResult."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback, task_timeout, retries,
                               progress)

    def starmap(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None, *,
                task_timeout: float | None = None, retries: int | None = None, progress: ProgressOption = None) -> list:
        """``[func(*args) for args in iterable]``, in parallel, in order."""
        return self._map_async(func, iterable, True, chunksize, None, None, task_timeout, retries, progress).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None, *,
                      task_timeout: float | None = None, retries: int | None = None,
                      progress: ProgressOption = None) -> MapResult:
        """Like ``starmap``, returning an AsyncResult."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, task_timeout, retries,
                               progress)

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int | None, ordered: bool,
              task_timeout: float | None, retries: int | None, progress: ProgressOption) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        if self._inline is not None:  # (each item runs as it is taken; a failed one raises in its place)
            bar = progress_bar(progress, iterable)
            # (Nothing after a failure with chunks of several items, as a pool's imap.)
            go_on = chunksize is None or chunksize == 1
            outcomes = self._inline.each(func, iterable, False, bar)
            if hasattr(iterable, "__len__"):
                # Run now, as a pool runs an imap nobody reads; an input of no length (a
                # generator, perhaps endless) runs an item as each is taken.
                outcomes = iter(list(outcomes))
                if bar is not None:
                    bar.finish(len(iterable))  # type: ignore[arg-type]
                    bar = None
            return _inline.Results(outcomes, go_on, as_pool_error, bar)  # type: ignore[return-value]
        it = (IMapIterator if ordered else IMapUnorderedIterator)(self._engine, ordered)
        it._pool = self
        it.stop_after_error = chunksize is not None and chunksize > 1
        hold = 4 * _engine.MAX_INFLIGHT * self._processes
        bar = progress_bar(progress, iterable, later=True)
        with starting(bar):
            job = self._engine.map_job(func, iterable, False, chunksize, it, hold, task_timeout, retries)
            job.progress = it._progress = bar
            it.job = job
            self._engine.submit(job)
        if job.sliceable is None:
            self._engine.stream(job)  # returns at once: a thread reads the input
        return it

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *,
             task_timeout: float | None = None, retries: int | None = None,
             progress: ProgressOption = None) -> IMapIterator:
        """Lazy ``map``: yields results in order as they come. Reads the input only as
        fast as results are consumed (a bounded number ahead)."""
        return self._imap(func, iterable, chunksize, True, task_timeout, retries, progress)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *,
                       task_timeout: float | None = None, retries: int | None = None,
                       progress: ProgressOption = None) -> IMapIterator:
        """Like ``imap``, yielding results in the order they finish."""
        return self._imap(func, iterable, chunksize, False, task_timeout, retries, progress)

    # -- insights -------------------------------------------------------------------

    def insights(self) -> Insights:
        """Where the pool's time went since it started (or since ``reset_insights``),
        worker by worker: tasks run, time working and waiting for work, the time spent
        pickling each worker's tasks and unpickling its results, bytes each way, start-up
        time; with the pool's ``imbalance`` and ``utilisation``. ``print()`` it for a
        table."""
        if self._inline is not None:
            return self._inline.insights()
        return report([], time.monotonic()) if self._engine is None else self._engine.insights()

    def reset_insights(self) -> None:
        """Starts a new window for ``insights``."""
        if self._inline is not None:
            self._inline.reset_insights()
        if self._engine is not None:
            self._engine.reset_insights()

    # -- lifetime -------------------------------------------------------------------

    def close(self) -> None:
        """No more tasks; workers exit once the submitted ones are done."""
        if self._state == "RUN":
            self._state = "CLOSE"
            if self._engine is not None:
                self._engine.close()

    def terminate(self) -> None:
        """Stops the workers now; unfinished results fail with an error instead of hanging."""
        self._state = "TERMINATE"
        if self._engine is not None:
            self._engine.terminate(RuntimeError("the pool was terminated before this task finished"))
            self._engine.join()

    def join(self) -> None:
        """Waits for the workers to exit; call ``close`` or ``terminate`` first."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        if self._engine is not None:
            self._engine.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


class ThreadPool(Folding, multiprocessing.pool.ThreadPool):
    """multiprocessing.pool's ``ThreadPool(processes=None, initializer=None,
    initargs=())``: the Pool API on threads (the standard library's), with paralelo's
    ``reduce`` and ``map_reduce``."""

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = ()) -> None:
        if processes is None and os.environ.get("PARALELO_WORKERS"):
            processes = default_workers()  # (as `paralelo scaling` sets it)
        super().__init__(processes, initializer, tuple(initargs))

    # The maps take ``progress``, as a process Pool's do: each item advances the bar as
    # it ends, on the thread that ran it. Calls handed over inside ``paralelo.profile()``
    # run profiled (`_probing.in_thread_pool`).

    def apply_async(self, func: Callable, args: Iterable = (), kwds: Mapping[str, Any] | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None) -> Any:
        """``apply_async`` on the threads."""
        return super().apply_async(_probing.in_thread_pool(func), args, kwds or {}, callback, error_callback)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None, *,
            progress: ProgressOption = None) -> list:
        """``map`` on the threads; ``progress=True`` (or a dict of tqdm options) draws a
        tqdm bar of the items done."""
        return self._progress_map(func, iterable, False, chunksize, None, None, progress).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None, *,
                  progress: ProgressOption = None) -> Any:
        """``map_async`` on the threads, with ``progress`` as ``map``'s."""
        return self._progress_map(func, iterable, False, chunksize, callback, error_callback, progress)

    def starmap(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None, *,
                progress: ProgressOption = None) -> list:
        """``starmap`` on the threads, with ``progress`` as ``map``'s."""
        return self._progress_map(func, iterable, True, chunksize, None, None, progress).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None, *,
                      progress: ProgressOption = None) -> Any:
        """``starmap_async`` on the threads, with ``progress`` as ``map``'s."""
        return self._progress_map(func, iterable, True, chunksize, callback, error_callback, progress)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1, *,  # type: ignore[override]
             progress: ProgressOption = None) -> Iterator:
        """``imap`` on the threads, with ``progress`` as ``map``'s."""
        return self._progress_imap(super().imap, func, iterable, chunksize, progress)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1, *,  # type: ignore[override]
                       progress: ProgressOption = None) -> Iterator:
        """``imap_unordered`` on the threads, with ``progress`` as ``map``'s."""
        return self._progress_imap(super().imap_unordered, func, iterable, chunksize, progress)

    def _progress_map(self, func: Callable, iterable: Iterable, star: bool, chunksize: int | None,
                   callback: Callable | None, error_callback: Callable | None, progress: ProgressOption) -> Any:
        run = multiprocessing.pool.ThreadPool.starmap_async if star else multiprocessing.pool.ThreadPool.map_async
        func = _probing.in_thread_pool(func)
        if progress is None or progress is False:
            return run(self, func, iterable, chunksize, callback, error_callback)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)  # (as the standard map does: its total is then known)
        bar = progress_bar(progress, iterable)
        assert bar is not None
        if bar.items == 0:
            bar.finish(0)  # (no item will count: done now)
        # Each item counts once it ended, returned or raised: the bar closes itself at
        # the total.
        return run(self, Counted(func, bar), iterable, chunksize, callback, error_callback)

    def _progress_imap(self, imap: Callable, func: Callable, iterable: Iterable, chunksize: int,
              progress: ProgressOption) -> Iterator:
        func = _probing.in_thread_pool(func)
        bar = progress_bar(progress, iterable)
        if bar is None:
            return imap(func, iterable, chunksize)
        return finishing(imap(Counted(func, bar), iterable, chunksize), bar)
