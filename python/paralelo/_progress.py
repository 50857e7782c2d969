"""Progress bars for maps: ``progress=True`` (or a dict of tqdm options) on a pool's maps
and an executor's ``map`` draws a tqdm bar that the engine's completion counts advance.

The counts come from the collector, under the engine lock, a chunk at a time (not an item
at a time: a map of 100,000 trivial items moves the bar a few hundred times); the bar is
drawn once the lock is released (``run_or_defer``), so a slow terminal never holds the
engine up. tqdm itself limits how often it redraws.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from ._completions import run_or_defer

__all__ = ["Counted", "Progress", "finishing", "progress_bar"]

#: What `progress=` takes.
ProgressOption = bool | Mapping[str, Any] | None


class Progress:
    """A map's bar: `advance`, `end` and `close` may be called with the engine lock held,
    from any thread; the bar is touched after the lock is released, and not after it
    closed. It closes itself once every item of a known total is counted."""

    __slots__ = ("bar", "counted", "total", "closed", "lock")

    def __init__(self, bar: Any, total: int | None) -> None:
        self.bar = bar
        self.counted = 0
        self.total = total
        self.closed = False
        # The collector advances it; the consumer of a lazy map finishes it (`finish`).
        self.lock = threading.Lock()

    def advance(self, items: int) -> None:
        """`items` more items are done (ran, or failed)."""
        run_or_defer(self._advance, items)

    def end(self, total: int) -> None:
        """The input ended after `total` items (a lazy map's total, known at its end)."""
        run_or_defer(self._end, total)

    def close(self) -> None:
        """The map ended early (failed, or its consumer stopped): the bar stays as it is."""
        run_or_defer(self._closing)

    def finish(self, total: int) -> None:
        """The map's consumer took all its `total` results: the bar shows them and closes
        now, on the consumer's thread (the collector's last `advance` may still be on its
        way, and the program's next output must not come before the bar's end)."""
        with self.lock:
            if self.closed:
                return
            self.total = total
            if self.bar.total != total:
                self.bar.total = total
            if self.counted < total:
                self.bar.update(total - self.counted)
                self.counted = total
            self._close()

    def _advance(self, items: int) -> None:
        with self.lock:
            if self.closed:
                return
            self.counted += items
            self.bar.update(items)
            if self.total is not None and self.counted >= self.total:
                self._close()

    def _end(self, total: int) -> None:
        with self.lock:
            if self.closed:
                return
            self.total = total
            if self.bar.total != total:
                self.bar.total = total
                self.bar.refresh()
            if self.counted >= total:
                self._close()

    def _closing(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bar.close()


def progress_bar(progress: ProgressOption, iterable: Any) -> Progress | None:
    """The bar `progress` asks for over `iterable` (None for none): ``True`` for tqdm's
    defaults, or a dict of options passed to ``tqdm(**options)``. Its total is the
    input's length when it has one (an option's ``total`` wins)."""
    if progress is None or progress is False:
        return None
    if progress is not True and not isinstance(progress, Mapping):
        raise TypeError(f"progress must be True, False or a dict of tqdm options, not {type(progress).__name__}")
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress bars need tqdm: pip install tqdm (or pip install 'paralelo[progress]')") from e
    options: dict[str, Any] = {} if progress is True else dict(progress)
    if "total" not in options:
        try:
            options["total"] = len(iterable)
        except TypeError:
            options["total"] = None
    total = options["total"]
    return Progress(tqdm(**options), total if isinstance(total, int) else None)


class Counted:
    """`fn`, advancing `bar` by one after each call, returned or raised (a thread pool's
    items: they run in this process, so the bar can count them where they run)."""

    __slots__ = ("fn", "bar")

    def __init__(self, fn: Callable, bar: Progress) -> None:
        self.fn, self.bar = fn, bar

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.bar.advance(1)


def finishing(results: Iterator, bar: Progress, count: bool = False) -> Iterator:
    """`results` as they are taken; `bar` finished at their end (closed where it got to
    if the caller stops early). With `count`, each result taken advances it (a map whose
    items the bar cannot see run)."""
    taken = 0
    try:
        for value in results:
            taken += 1
            if count:
                bar.advance(1)
            yield value
        bar.finish(taken)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # (a generator's own clean-up, now: what has not run is dropped)
        bar.close()
