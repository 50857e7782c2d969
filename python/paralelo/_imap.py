"""Results of ``imap``/``imap_unordered`` (and ``Executor.map``) as they arrive.

A lazy map's input is read by the job's reader thread (``Engine.stream``); the consumer
sleeps until a result it can yield arrives (nothing polls), and wakes the reader when
taking results makes room in the read-ahead.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ._completions import after_pending
from ._errors import PoolTimeoutError, as_pool_error
from ._native import unpack_numbers
from ._outcomes import Segments

if TYPE_CHECKING:
    from ._engine import Engine, MapJob
    from ._progress import Progress

_END = object()


def not_in_callback(pool: Any) -> None:
    """Raises if called on a pool's collector thread (inside one of its callbacks)."""
    # Callbacks run on the pool's collector thread, the one that delivers results: waiting
    # there for another result would wait for ever.
    if pool is None:
        return
    engine = pool._engine
    delivering = engine.thread if engine is not None else getattr(pool, "_delivery_thread", None)
    if delivering is not None and threading.current_thread() is delivering:
        raise RuntimeError("cannot wait for a pool's results inside one of its callbacks")


class IMapIterator:
    """Results of ``imap``/``imap_unordered`` (and ``Executor.map``) as they arrive."""

    fails_whole = False  # a failed chunk raises at its place; the rest still come

    def __init__(self, engine: Engine, ordered: bool) -> None:
        self._engine = engine
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._ready: dict[int, tuple[int, bool, Any]] = {}
        self._arrived: deque[tuple[int, bool, Any]] = deque()
        self._next_start = 0
        self._yielded = 0
        self._total: int | None = None
        self._failure: BaseException | None = None
        self._input_failure: BaseException | None = None
        self._current: Iterator = iter(())
        self._waiting = False  # the consumer sleeps on _cond
        # multiprocessing's imap with chunksize > 1 ends at the first failed chunk.
        self.stop_after_error = False
        self._stopped = False
        self._job: Callable[[], MapJob | None] = lambda: None
        self._pool: Any = None
        self._async_waiters: list[Callable[[], None]] = []  # `async for`s waiting (see aio)
        self._progress: Progress | None = None  # the map's bar, if it has one

    def __del__(self) -> None:
        # Dropped before its end (a loop that broke off, or raised): its bar stops where it
        # got to, as its loop ends (the map still runs, as multiprocessing's does).
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.close()

    @property
    def job(self) -> MapJob | None:
        """The map this iterator yields the results of, while it runs."""
        return self._job()

    @job.setter
    def job(self, job: MapJob) -> None:
        # Weakly: the job holds this iterator (its sink), and a cycle would keep both,
        # with the job's input, until a collection (the engine holds the job while it
        # runs).
        self._job = weakref.ref(job)

    # sink protocol (called by the engine with its lock held). What it makes visible to the
    # consumer waits, once something is deferred in the same hold (`after_pending`): the
    # log records the workers sent before these results are handled first.
    def chunks(self, chunks: list[tuple[int, int, bool, Any]]) -> None:
        after_pending(self._chunks, chunks)

    def _chunks(self, chunks: list[tuple[int, int, bool, Any]]) -> None:
        chunks = [(s, n, ok, unpack_numbers(v) if type(v) is bytes else v) for s, n, ok, v in chunks]
        if any(type(c[3]) is Segments or (not c[2] and c[1] > 1) for c in chunks):
            chunks = list(_split_segments(chunks, self.stop_after_error))
        with self._cond:
            if self._ordered:
                ready = self._ready
                for start, count, ok, values in chunks:
                    ready[start] = (count, ok, values)
                # Only the result the consumer waits for is worth waking it for.
                if self._next_start in ready:
                    self._wake()
            else:
                self._arrived.extend((count, ok, values) for _, count, ok, values in chunks)
                self._wake()

    def _wake(self) -> None:
        """Wakes the consumer, if it waits (holding `_cond`)."""
        if self._waiting:
            self._cond.notify()
        waiters = self._async_waiters
        if waiters:
            self._async_waiters = []
            for waiter in waiters:
                waiter()

    def expect(self, total: int) -> None:
        pass

    def settle(self) -> None:
        pass  # (arrays were unpacked as they came: a consumer may be waiting for them)

    def end(self, total: int) -> None:
        after_pending(self._end, total)

    def _end(self, total: int) -> None:
        with self._cond:
            self._total = total
            self._cond.notify_all()
            self._wake()

    def fail(self, exc: BaseException) -> None:
        after_pending(self._fail, exc)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self._failure = exc
            self._wake()

    def input_failed(self, position: int, exc: BaseException) -> None:
        after_pending(self._input_failed, position, exc)

    def _input_failed(self, position: int, exc: BaseException) -> None:
        # Raised in its place: after the results of the items read before it.
        with self._cond:
            self._total = position
            self._input_failure = exc
            self._wake()

    def consumed_items(self) -> int:
        return self._yielded

    def __iter__(self) -> Iterator:
        # A generator over the same state: `yield from` hands out each chunk at C speed.
        return self._each()

    def _each(self) -> Iterator:
        while True:
            try:
                first = self.next()
            except StopIteration:
                return
            yield first
            yield from self._current

    def __next__(self) -> Any:
        return self.next()

    def __aiter__(self) -> IMapIterator:
        """``async for result in pool.imap(...)``: each result as it comes, the event loop
        running on meanwhile (see ``paralelo.aio``); several tasks may share one. A task
        cancelled while it waits runs nothing more of the map; breaking out of the loop
        does not stop it (as with a plain ``for``)."""
        return self

    async def __anext__(self) -> Any:
        value = next(self._current, _END)
        if value is not _END:
            return value
        import asyncio

        from . import aio

        loop = asyncio.get_running_loop()
        post = aio.wake(loop)
        while True:
            fut = loop.create_future()
            resolve = aio.resolver(fut)

            def waiter() -> None:
                post(*resolve)

            with self._cond:  # (before looking: a result that comes after it wakes us)
                self._async_waiters.append(waiter)
            try:
                try:
                    return self.next(timeout=0)
                except StopIteration:
                    raise StopAsyncIteration from None
                except PoolTimeoutError:
                    pass  # (none yet)
                await fut
            except asyncio.CancelledError:
                job = self.job
                if job is not None:
                    self._engine.cancel(job)
                raise
            finally:
                with self._cond:
                    if waiter in self._async_waiters:
                        self._async_waiters.remove(waiter)

    def next(self, timeout: float | None = None) -> Any:
        """The next result; a ``TimeoutError`` (also a ``multiprocessing.TimeoutError``)
        if none comes within ``timeout``."""
        value = next(self._current, _END)
        if value is not _END:
            return value
        if self._stopped:
            raise StopIteration
        job = self.job
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = False
        while True:
            with self._cond:
                ok, values = self._take()
                if values:
                    break
                if self._total is not None and self._yielded >= self._total:
                    if self._input_failure is not None:
                        failure, self._input_failure = self._input_failure, None
                        raise failure
                    ended = True
                    break
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    self._total = self._yielded  # nothing comes after a failed job
                    raise failure
                not_in_callback(self._pool)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolTimeoutError
                self._waiting = True
                try:
                    # Woken by a result we can yield, or by the job's end or failure.
                    self._cond.wait(left)
                finally:
                    self._waiting = False
        if ended:
            if self._progress is not None:
                # Every result was taken: the bar is full and closed before the loop that
                # read them goes on (the collector's own update may come later).
                self._progress.finish(self._yielded)
            raise StopIteration
        # Restart a held-back input once the consumer has taken half of the read-ahead, not
        # on every result: each restart takes the engine lock from the collector.
        if job is not None and job.held and job.sent_items - self._yielded <= job.ahead_limit() // 2:
            self._engine.kick()
        if job is not None and job.reader is not None and not job.fed_all:
            job.starved()  # room was made: the reader may read on
        if not ok:
            if self._progress is not None:
                self._progress.close()  # (where it got to, as a tqdm loop that raises)
            if self.stop_after_error:
                self._stopped = True  # nothing after it, as in multiprocessing
                if job is not None:
                    self._engine.cancel(job)  # and nothing more runs
            raise values[0] if self._pool is None else as_pool_error(values[0])
        self._current = iter(values)
        return next(self._current)

    def _take(self) -> tuple[bool, list]:
        """Every result that is next in line now, up to the first failed chunk:
        `(True, values)`, or `(False, [exception])` when a failed chunk is next."""
        out: list = []
        while True:
            if self._ordered:
                got = self._ready.get(self._next_start)
            else:
                got = self._arrived[0] if self._arrived else None
            if got is None:
                return True, out
            count, ok, values = got
            if not ok and out:
                return True, out  # the failure waits for its turn
            if self._ordered:
                del self._ready[self._next_start]
                self._next_start += count
            else:
                self._arrived.popleft()
            self._yielded += count
            if not ok:
                return False, [values]
            out += values


def _split_segments(chunks: list[tuple[int, int, bool, Any]],
                    whole_chunks: bool) -> Iterator[tuple[int, int, bool, Any]]:
    """Chunks whose items partly failed, as separate pieces: each error in its place. A
    chunk that failed as a whole (its worker died, its results could not travel) fails
    each of its items, so results stay in line with inputs, unless chunks fail whole
    (`whole_chunks`: an explicit chunksize, as multiprocessing)."""
    for start, count, ok, values in chunks:
        if not ok and count > 1 and not whole_chunks:
            for i in range(count):
                yield start + i, 1, False, values
            continue
        if type(values) is not Segments:
            yield start, count, ok, values
            continue
        for seg_ok, seg in values:
            n = len(seg) if seg_ok else 1
            if n:
                yield start, n, seg_ok, seg
            start += n


class IMapUnorderedIterator(IMapIterator):
    """Results of ``imap_unordered``, in completion order."""


