"""Inline mode: every task runs in the calling process, in order, through the same
pickling round trip as a worker's (the call, its result, its exception), so that pdb,
an IDE's debugger and ``breakpoint()`` stop in the task's own code, and a task that would
fail to pickle fails the same way.

``Pool(inline=True)``, ``ProcessPoolExecutor(inline=True)``, or ``PARALELO_INLINE=1``
for every pool and executor of a program. No process is started. The initializer runs
once, in the calling process, when the pool is made (an executor's at its first use).
Calls and maps run when they are made (``apply_async`` returns a ready result), as a
pool would run them even if nobody read the results; only an ``imap`` over an input of
no length (a generator, perhaps endless) runs each item as it is taken.
Time limits and retries do not apply: nothing can be killed but the caller.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator

from ._errors import dump_error, load_error, pickling_failed, unpicklable_result
from ._insights import Figures, Insights, report
from ._pickling import MainNames, dumps, dumps_call, loads, loads_call
from ._progress import Progress

__all__ = ["Results", "Runner", "wanted"]


def wanted(inline: bool | None) -> bool:
    """Whether a pool runs inline: as asked, else as ``PARALELO_INLINE`` says."""
    if inline is not None:
        return bool(inline)
    return os.environ.get("PARALELO_INLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


class Runner:
    """Runs tasks here as a pool's worker would, outcome for outcome."""

    def __init__(self, initializer: Callable | None, initargs: tuple) -> None:
        self.main = MainNames()  # (this process has its own __main__: its functions go by name)
        # The caller is the one worker of the pool's insights: its tasks, its time in them.
        self.figures = Figures("inline", time.monotonic())
        self.figures.pid = os.getpid()
        self.since = self.figures.spawned
        if initializer is not None:
            initializer(*initargs)
        self.figures.ready = time.monotonic()

    def insights(self) -> Insights:
        """The calling process's figures as the pool's one worker, since the pool was made
        or `reset_insights`."""
        return report([self.figures], self.since)

    def reset_insights(self) -> None:
        self.since = time.monotonic()
        self.figures.restart()

    def call(self, fn: Callable, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """``fn(*args, **kwargs)`` as a worker runs it: ``(True, result)``, or ``(False,
        exception)`` with the worker's error for it (its traceback the real one, for a
        post-mortem). Ctrl-C is not a task's outcome: it stops the caller."""
        figures, clock = self.figures, time.perf_counter_ns
        start = clock()
        figures.tasks += 1
        try:
            return self._call(fn, args, kwargs)
        finally:
            figures.busy_ns += clock() - start

    def _call(self, fn: Callable, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        from ._worker import _unloadable

        figures, clock = self.figures, time.perf_counter_ns
        start = clock()
        try:
            data = dumps_call((fn, args, kwargs), self.main)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - as the engine reports it
            return False, pickling_failed("the task", e)
        finally:
            figures.pickling_ns += clock() - start
        figures.bytes_out += len(data)
        try:
            fn, args, kwargs = loads_call(data)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - as a worker reports it
            return False, _unloadable("call", e)
        try:
            value = fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the task's outcome, as a worker's
            return False, load_error(dump_error(e)).with_traceback(e.__traceback__)
        start = clock()
        try:
            result = dumps(value)
            figures.bytes_in += len(result)
            return True, loads(result)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - as a worker reports it
            return False, unpicklable_result(value, e)
        finally:
            figures.pickling_ns += clock() - start

    def each(self, fn: Callable, items: Iterable, star: bool, bar: Progress | None = None) -> Iterator[tuple[bool, Any]]:
        """The outcomes of `fn` over `items`, one as each is taken (each advancing `bar`)."""
        for item in items:
            outcome = self.call(fn, tuple(item) if star else (item,), {})
            if bar is not None:
                bar.advance(1)
            yield outcome


class Results:
    """A lazy map's results inline (``imap``, ``Executor.map``): each item runs as it is
    taken; a failed item raises in its place and, with `go_on`, the next ones still come
    (as ``imap`` with one item a chunk), else the map ends there (as ``Executor.map``)."""

    def __init__(self, outcomes: Iterator[tuple[bool, Any]], go_on: bool,
                 wrap: Callable[[BaseException], BaseException] = lambda e: e, bar: Progress | None = None) -> None:
        self._outcomes, self._go_on, self._wrap, self._bar = outcomes, go_on, wrap, bar
        self._ended = False
        self._taken = 0

    def __iter__(self) -> Results:
        return self

    def __next__(self) -> Any:
        if self._ended:
            raise StopIteration
        try:
            ok, value = next(self._outcomes)
        except StopIteration:  # the input ended
            self._ended = True
            if self._bar is not None:
                self._bar.finish(self._taken)
            raise
        self._taken += 1
        if ok:
            return value
        self._ended = not self._go_on
        raise self._wrap(value)

    def __del__(self) -> None:
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.close()  # (left before its end: the bar stays where it got to)

    def next(self, timeout: float | None = None) -> Any:
        """The next result (`timeout` is moot: it is computed now)."""
        return self.__next__()

    def __aiter__(self) -> Results:
        return self

    async def __anext__(self) -> Any:
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None
