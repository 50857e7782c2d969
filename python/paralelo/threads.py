"""``ThreadPoolExecutor``: concurrent.futures' thread pool (``paralelo.pool.ThreadPool``
is multiprocessing.pool's).

It keeps concurrent.futures' behaviour (a thread started per submit until
``max_workers`` while none is idle, ``initializer`` failures breaking it with
``BrokenThreadPool``, ``shutdown(wait, cancel_futures)``, pending work finished and its
threads joined at interpreter exit, threads that end once the executor is dropped), but
its ``map`` hands the items to the threads in chunks, not one ``Future`` each: the
standard executor's per-item cost (a Future, a queue put, a lock and a wake-up per
item, ≈ 20 µs here) becomes a call and an append. The first chunks are small, so the
first results come at once; an item's exception is raised where the iteration reaches
it, as with the standard map, after the items before it.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, Callable, Iterable, Iterator

from . import _probing
from ._progress import Progress, ProgressOption, finishing, progress_bar
from .context import default_workers


__all__ = ["BrokenThreadPool", "ThreadPoolExecutor"]

_counter = itertools.count().__next__
#: Live executors' states: joined at interpreter exit, as concurrent.futures' are.
_states: weakref.WeakSet = weakref.WeakSet()
_exiting = False


class _Chunk:
    """Some of a map's items, run by one thread in one go: their outcomes, in order."""

    __slots__ = ("fn", "items", "outcomes", "done", "cancelled", "progress")

    def __init__(self, fn: Callable, items: list, progress: Progress | None = None) -> None:
        self.fn, self.items = fn, items
        self.outcomes: list[tuple[bool, Any]] = []
        self.done = False
        self.cancelled = False
        self.progress = progress

    def run(self, state: _State) -> None:
        fn, out = self.fn, self.outcomes
        for args in self.items:
            if self.cancelled:
                break  # (its map was left, or failed: what has not started does not)
            try:
                out.append((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - the caller gets it, at its item
                out.append((False, e))
        if self.progress is not None:
            self.progress.advance(len(out))
        with state.cond:
            self.done = True
            state.cond.notify_all()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _Call:
    """One ``submit``: its Future, and the call."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: Future, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs

    def run(self, state: _State) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # noqa: BLE001 - the Future carries it
            self.future.set_exception(e)
        else:
            self.future.set_result(result)

    def cancel(self) -> bool:
        return bool(self.future.cancel())


class _State:
    """What an executor's threads share (not the executor itself, so dropping it lets
    them end)."""

    def __init__(self, max_workers: int, prefix: str, initializer: Callable | None, initargs: tuple) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.work: collections.deque = collections.deque()
        self.threads: set[threading.Thread] = set()
        self.idle = 0
        self.shutdown = False
        self.broken: str | None = None
        self.max_workers, self.prefix = max_workers, prefix
        self.initializer, self.initargs = initializer, initargs

    def post(self, item: Any) -> None:
        """Queues `item` (under `cond`), starting a thread if none is idle."""
        self.work.append(item)
        if self.idle >= len(self.work):  # (an idle thread for each item waiting)
            self.cond.notify()
        elif len(self.threads) < self.max_workers:
            t = threading.Thread(name=f"{self.prefix}_{len(self.threads)}", target=self._serve)
            t.start()
            self.threads.add(t)

    def _serve(self) -> None:
        if self.initializer is not None:
            try:
                self.initializer(*self.initargs)
            except BaseException:  # noqa: BLE001 - as concurrent.futures: logged, then broken
                import logging

                logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
                self._break("A thread initializer failed, the thread pool is not usable anymore")
                return
        cond, work = self.cond, self.work
        while True:
            with cond:
                while not work and not self.shutdown and self.broken is None:
                    self.idle += 1
                    cond.wait()
                    self.idle -= 1
                if not work or self.broken is not None:
                    return
                item = work.popleft()
            profiles = _probing.threads  # (inside paralelo.profile(): each task under this thread's profile)
            if profiles is None:
                item.run(self)
            else:
                profiles.run(item.run, self)
            item = profiles = None

    def _break(self, why: str) -> None:
        with self.cond:
            self.broken = why
            pending = list(self.work)
            self.work.clear()
            self.cond.notify_all()
        for item in pending:
            if isinstance(item, _Call):
                if item.future.set_running_or_notify_cancel():
                    item.future.set_exception(BrokenThreadPool(why))
            else:
                item.cancelled = True
                with self.cond:
                    item.outcomes[:] = [(False, BrokenThreadPool(why))] * len(item.items)
                    item.done = True
                    self.cond.notify_all()

    def stop(self, cancel: bool) -> None:
        """No new work; with `cancel`, what has not started is cancelled."""
        with self.cond:
            self.shutdown = True
            pending = list(self.work) if cancel else []
            if cancel:
                self.work.clear()
            self.cond.notify_all()
        for item in pending:
            item.cancel()
        if pending:
            with self.cond:
                self.cond.notify_all()

    def join(self) -> None:
        for t in list(self.threads):
            if t is not threading.current_thread():
                t.join()


class ThreadPoolExecutor(Executor):
    """concurrent.futures' ``ThreadPoolExecutor(max_workers=None, thread_name_prefix='',
    initializer=None, initargs=())``: ``submit``, ``map(fn, *iterables, timeout=None,
    chunksize=None)`` (chunks of the items go to the threads: see the module's
    docstring), ``shutdown(wait=True, cancel_futures=False)``, ``with``."""

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "",
                 initializer: Callable | None = None, initargs: tuple = ()) -> None:
        if max_workers is None:
            # concurrent.futures' default, unless PARALELO_WORKERS says (`paralelo scaling`).
            max_workers = default_workers() if os.environ.get("PARALELO_WORKERS") else min(32, (os.cpu_count() or 1) + 4)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        prefix = thread_name_prefix or f"ThreadPoolExecutor-{_counter()}"
        self._state = _State(max_workers, prefix, initializer, tuple(initargs))
        _states.add(self._state)
        # Dropped without shutdown: its threads end once they are idle.
        weakref.finalize(self, self._state.stop, False)

    def _post(self, item: Any) -> None:
        state = self._state
        with state.cond:
            if state.broken is not None:
                raise BrokenThreadPool(state.broken)
            if state.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            state.post(item)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedules ``fn(*args, **kwargs)``; returns its Future."""
        future: Future = Future()
        self._post(_Call(future, fn, args, kwargs))
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None, progress: ProgressOption = None) -> Iterator:
        """``map(fn, *iterables)`` on the threads; results in order. The input is read
        now; `timeout` counts from this call; `chunksize` (default: growing from 1) is
        how many items a thread runs in one go (anything but an int of 1 or more: the
        default, as concurrent.futures' thread executor ignores it); ``progress=True``
        (or a dict of tqdm options) draws a tqdm bar of the items done."""
        if type(chunksize) is not int or chunksize < 1:
            chunksize = None
        end = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        bar = progress_bar(progress, items)
        chunks = []
        at, size = 0, chunksize or 1
        # (Automatic sizes double from 1 up to a share of the threads' work: the first
        # results come at once, and a long map costs a handful of hand-offs per thread.)
        most = max(1, len(items) // (4 * self._max_workers))
        while at < len(items):
            chunk = _Chunk(fn, items[at:at + size], bar)
            self._post(chunk)
            chunks.append(chunk)
            at += size
            if chunksize is None:
                size = min(2 * size, most)
        results = self._results(chunks, end)
        return results if bar is None else finishing(results, bar)

    def _results(self, chunks: list[_Chunk], end: float | None) -> Iterator:
        cond = self._state.cond
        try:
            chunks.reverse()  # (popped from the end: each is dropped once read)
            while chunks:
                chunk = chunks[-1]
                if not chunk.done:
                    with cond:
                        while not chunk.done:
                            if chunk.cancelled and self._state.broken is None:
                                from concurrent.futures import CancelledError

                                raise CancelledError()
                            left = None if end is None else end - time.monotonic()
                            if left is not None and left <= 0:
                                raise TimeoutError()
                            cond.wait(left)
                chunks.pop()
                for ok, value in chunk.outcomes:
                    if not ok:
                        raise value
                    yield value
        finally:
            for chunk in chunks:
                chunk.cancelled = True  # (not yet started: skipped)
            if chunks:
                with cond:
                    work = self._state.work
                    kept = [w for w in work if not (type(w) is _Chunk and w.cancelled)]
                    work.clear()
                    work.extend(kept)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; with `cancel_futures`, cancels what has not started; with `wait`,
        returns once the threads are done."""
        self._state.stop(cancel_futures)
        if wait:
            self._state.join()


def _join_at_exit() -> None:
    # As concurrent.futures: the work submitted still runs, then the threads are joined
    # (before the interpreter waits for non-daemon threads, which these are).
    global _exiting
    _exiting = True
    states = list(_states)
    for state in states:
        state.stop(False)
    for state in states:
        state.join()


threading._register_atexit(_join_at_exit)  # type: ignore[attr-defined]
