"""A lazy map's results on a cluster (``imap``, ``imap_unordered``, an executor's
``map``): chunks go out as the input is read, by a thread of its own for an input of no
length (a generator, perhaps slow or endless: at most `window` chunks ahead of the
results taken), all at once for a list; results come back in order, or as they finish."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator

from .._errors import PoolTimeoutError, load_error
from .._progress import Progress

__all__ = ["Stream", "call_outcome", "chunked", "outcome_error"]


def outcome_error(value: Any) -> BaseException:
    """A failed item's exception, rebuilt from what the worker sent (see `task`)."""
    return load_error(value) if isinstance(value, bytes) else value


def call_outcome(future: Future) -> tuple[bool, Any]:
    """A call's ``(ok, value)`` from its cluster Future (see `Cluster.call`): its value,
    or the exception the task raised (rebuilt) or the cluster's, if it lost the task."""
    try:
        [(ok, value)] = future.result()
    except BaseException as e:  # noqa: BLE001 - the cluster lost it
        return False, e
    return ok, value if ok else outcome_error(value)


def chunked(items: Iterator, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    while True:
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == size:
                break
        if not chunk:
            return
        yield chunk
        if len(chunk) < size:
            return


class _Flow:
    """Iterates over the results of `send(chunk)` (a Future of the chunk's outcomes) for
    each chunk of `chunks`. `ordered`: in the input's order, else as chunks finish. A
    failed item raises in its place; with `stop_after_error`, the iteration ends there
    (as ``Executor.map`` and multiprocessing's ``imap`` with chunks of several items do).
    `cancel` is called with the Futures still out when the iteration is abandoned
    (`finish`); `fed` once the whole input has gone out (or failed, or was cancelled)."""

    def __init__(self, send: Callable[[list], Future], chunks: Iterator[list], sized: bool, ordered: bool,
                 window: int, stop_after_error: bool, bar: Progress | None,
                 cancel: Callable[[list[Future]], None], wrap: Callable[[BaseException], BaseException] = lambda e: e,
                 fed: Callable[[], None] = lambda: None) -> None:
        self._send, self._ordered, self._window, self._fed = send, ordered, window, fed
        self._stop_after_error, self._bar, self._cancel, self._wrap = stop_after_error, bar, cancel, wrap
        self._cond = threading.Condition(threading.Lock())
        self._out: dict[int, Future] = {}  # chunks sent and not yet yielded, by number
        self._arrived: deque[int] = deque()  # chunks done, in the order they finished
        self._sent = 0
        self._taken = 0  # chunks yielded (ordered: the next one's number)
        self._items = 0  # items read
        self._ended = False  # the input is read to its end
        self._input_error: BaseException | None = None
        self._current: deque[tuple[bool, Any]] = deque()
        self._finished = False
        self._failure: BaseException | None = None  # (the pool's end: `fail`)
        if sized:
            try:
                for chunk in chunks:
                    self._post(chunk)
            finally:
                self._ended = True
                fed()
        else:
            self._chunks = chunks
            threading.Thread(target=self._feed, name="paralelo-cluster-feeder", daemon=True).start()

    def _post(self, chunk: list) -> None:
        future = self._send(chunk)
        with self._cond:
            number = self._sent
            self._sent += 1
            self._items += len(chunk)
            self._out[number] = future
        future.add_done_callback(lambda _f: self._done(number, len(chunk)))

    def _done(self, number: int, items: int) -> None:
        if self._bar is not None:
            self._bar.advance(items)
        with self._cond:
            if not self._ordered:
                self._arrived.append(number)
            self._cond.notify_all()

    def _feed(self) -> None:
        try:
            for chunk in self._chunks:
                with self._cond:
                    while self._sent - self._taken >= self._window and not self._finished:
                        self._cond.wait()
                    if self._finished:
                        return
                self._post(chunk)
        except BaseException as e:  # noqa: BLE001 - raised to the consumer, after what was read
            with self._cond:
                self._input_error = e
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._chunks = iter(())
            self._fed()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``TimeoutError`` if none comes within `timeout` seconds."""
        while not self._current:
            if self._failure is not None:
                raise self._failure
            if self._finished:
                raise StopIteration
            future = self._take(timeout)
            if future is None:
                self._finish()
                if self._input_error is not None:
                    error, self._input_error = self._input_error, None
                    raise error
                raise StopIteration
            try:
                self._current.extend(future.result())
            except BaseException as e:  # noqa: BLE001 - the cluster lost the chunk: each of its items fails
                self._current.append((False, e))
        ok, value = self._current.popleft()
        if ok:
            return value
        if self._stop_after_error:
            self._current.clear()
            self._finish()
        raise self._wrap(outcome_error(value))

    def _take(self, timeout: float | None) -> Future | None:
        """The next chunk's Future once done (None at the end of the results)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._ordered:
                    future = self._out.get(self._taken)
                    if future is not None and future.done():
                        break
                elif self._arrived:
                    number = self._arrived.popleft()
                    future = self._out[number]
                    break
                if self._ended and self._taken == self._sent:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolTimeoutError
                self._cond.wait(left)
            del self._out[number if not self._ordered else self._taken]
            self._taken += 1
            self._cond.notify_all()  # (room for the feeder)
        return future

    def _finish(self) -> None:
        if self._finished:
            return
        with self._cond:
            self._finished = True
            left = list(self._out.values())
            self._out.clear()
            self._cond.notify_all()
        if left:
            self._cancel(left)
        if self._bar is not None:
            if self._input_error is None and self._ended:
                self._bar.finish(self._items)
            else:
                self._bar.close()

    def release(self) -> None:
        """Nobody will take the results (the iterator was dropped): the rest of the input
        goes out with no window, so every item still runs, as with multiprocessing."""
        with self._cond:
            self._window = float("inf")  # type: ignore[assignment]
            self._cond.notify_all()
        if self._bar is not None:
            self._bar.close()  # (left where it got to, as a loop left early leaves it)

    def fail(self, error: BaseException) -> None:
        """Ends the iteration with `error` (the pool was terminated)."""
        with self._cond:
            self._failure = error
            self._cond.notify_all()
        self._finish()


class Stream:
    """The iterator a lazy map returns (see `_Flow`, which its feeder thread holds: so
    dropping this one lets the map run on to its end, as multiprocessing's does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._flow = _Flow(*args, **kwargs)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        return self._flow.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; a ``TimeoutError`` if none comes within `timeout` seconds."""
        return self._flow.next(timeout)

    def close(self) -> None:
        """Abandons the iteration: what is still out is cancelled."""
        self._flow._finish()

    def __del__(self) -> None:
        flow = getattr(self, "_flow", None)
        if flow is not None and not flow._finished:
            flow.release()


