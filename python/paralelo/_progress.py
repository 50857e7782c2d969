"""Progress bars for maps: ``progress=True`` (or a dict of tqdm options) on a pool's maps
and an executor's ``map`` draws a tqdm bar that the engine's completion counts advance.

The counts come from the collector, under the engine lock, a chunk at a time (not an item
at a time: a map of 100,000 trivial items moves the bar a few hundred times); the bar is
drawn once the lock is released (``run_or_defer``), so a slow terminal never holds the
engine up. tqdm itself limits how often it redraws.

A default bar (``progress=True``) is first drawn REVEAL seconds after its map starts, or
at its end, whichever comes first: drawing is most of a bar's cost (tqdm formats its line,
≈ 35 µs), and a map that ends sooner would show its 0% line for less than tqdm's own
refresh interval. `_Reveals`, one thread per process, draws the ones still running then.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ._completions import run_or_defer

__all__ = ["Counted", "Progress", "finishing", "progress_bar", "starting"]

#: What `progress=` takes.
ProgressOption = bool | Mapping[str, Any] | None


class Progress:
    """A map's bar: `advance`, `end` and `close` may be called with the engine lock held,
    from any thread; the bar is touched after the lock is released, and not after it
    closed. It draws at most every DRAW_EVERY seconds (tqdm's own update costs
    microseconds: a thread pool advances it per item), and closes itself once every
    item of the map (`items`, once known) is counted. A total the caller gave
    (``{"total": n}``) is shown as given."""

    __slots__ = ("bar", "make", "counted", "drawn", "items", "fixed", "closed", "lock", "due")

    #: Seconds between two draws (tqdm's own `mininterval` is 0.1).
    DRAW_EVERY = 0.05
    #: Seconds before a default bar's first draw (see the module's docstring).
    REVEAL = 0.1

    def __init__(self, bar: Any, items: int | None, fixed: bool = False,
                 make: Callable[[], Any] | None = None) -> None:
        # The tqdm bar, or None until `attach` makes it with `make` (see `progress_bar`).
        self.bar = bar
        self.make = make
        self.counted = self.drawn = 0
        self.items = items  # the map's items, once known
        self.fixed = fixed  # the bar's total was the caller's
        self.closed = False
        # The collector advances it; the consumer of a lazy map finishes it (`finish`).
        self.lock = threading.Lock()
        self.due = 0.0  # when the next draw may be

    def attach(self) -> None:
        """Makes the bar now (on the caller's thread, once its map was handed to the
        workers: tqdm's making, ≈ 50 µs and more on a busy machine, then overlaps their
        work), showing what was counted meanwhile, and closing it if the map ended."""
        if self.make is None:
            return
        bar, self.make = self.make(), None
        with self.lock:
            self.bar = bar
            if not self.closed:
                _reveals.add(self, self.REVEAL)
            if not self.fixed and self.items is not None and bar.total != self.items:
                bar.total = self.items
            self._draw()
            if self.closed:
                self._unveil()  # (its end is drawn: the map ended while it was made)
                bar.close()

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
            if not self.closed:
                self.counted = max(self.counted, total)
                self._total(total)
                self._close()

    def _advance(self, items: int) -> None:
        with self.lock:
            if self.closed:
                return
            self.counted += items
            if self.items is not None and self.counted >= self.items:
                self._close()
                return
            now = time.monotonic()
            if now >= self.due:
                self.due = now + self.DRAW_EVERY
                self._draw()

    def _end(self, total: int) -> None:
        with self.lock:
            if self.closed:
                return
            self._total(total)
            if self.counted >= total:
                self._close()

    def _total(self, total: int) -> None:
        self.items = total
        if self.bar is not None and not self.fixed and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def _draw(self) -> None:
        if self.bar is not None and self.counted > self.drawn:
            self.bar.update(self.counted - self.drawn)
            self.drawn = self.counted

    def _closing(self) -> None:
        with self.lock:
            self._close()

    def reveal(self) -> None:
        """Draws the bar now if it was not yet (tqdm's `delay` held it back)."""
        with self.lock:
            if not self.closed and self.bar is not None:
                self._unveil()
                self._draw()
                self.bar.refresh()

    def _unveil(self) -> None:
        # From now on tqdm draws it: on updates, and at its close (which draws nothing
        # for a bar whose `delay` has not run out).
        self.bar.delay = 0

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.bar is not None:  # (else `attach` closes it as it makes it)
                self._draw()
                self._unveil()
                self.bar.close()


class _Reveals:
    """The thread that draws default bars still running REVEAL seconds after they were
    made. It looks every DRAW_EVERY seconds while there are bars to draw, and a while
    after (a program making bar after bar does not wake it for each); then it sleeps
    until the next bar."""

    LINGER = 2.0  # seconds it keeps looking with nothing to draw

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.due: list[tuple[float, int, Progress]] = []  # a heap
        self.made = 0
        self.thread: threading.Thread | None = None
        self.looking = False  # looks again within DRAW_EVERY, without a notify

    def forget(self) -> None:
        """In a forked child: the parent's bars and thread are not its own, and the lock
        may have been held by that thread at the fork."""
        self.__init__()  # type: ignore[misc]

    def add(self, bar: Progress, after: float) -> None:
        with self.cond:
            self.made += 1
            heapq.heappush(self.due, (time.monotonic() + after, self.made, bar))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="paralelo-progress", daemon=True)
                self.thread.start()
            elif not self.looking:
                self.cond.notify()

    def _run(self) -> None:
        idle_since = None
        while True:
            with self.cond:
                now = time.monotonic()
                ready = []
                while self.due and (self.due[0][0] <= now or self.due[0][2].closed):
                    ready.append(heapq.heappop(self.due)[2])
                if self.due:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                self.looking = idle_since is None or now - idle_since < self.LINGER
            for bar in ready:  # (drawn now, not after the wait; and not held through it)
                bar.reveal()
            ready.clear()
            with self.cond:
                # (Bars added meanwhile are in `due`: `add` notified no one while looking.)
                self.cond.wait(Progress.DRAW_EVERY if self.due or self.looking else None)


_reveals = _Reveals()
os.register_at_fork(after_in_child=_reveals.forget)


def progress_bar(progress: ProgressOption, iterable: Any, later: bool = False) -> Progress | None:
    """The bar `progress` asks for over `iterable` (None for none): ``True`` for tqdm's
    defaults, or a dict of options passed to ``tqdm(**options)``. Its total is the
    input's length when it has one (an option's ``total`` wins). With `later`, tqdm's
    defaults are made by `Progress.attach` (options are tried now: a bad one raises
    before any work starts)."""
    if progress is None:
        return None
    if not isinstance(progress, Mapping):
        if isinstance(progress, str) or progress not in (True, False):  # (1 and numpy's True_ count)
            raise TypeError(f"progress must be True, False or a dict of tqdm options, not {progress!r}")
        if not progress:
            return None
    given = None if progress is True or not isinstance(progress, Mapping) else progress.get("total")
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
        raise TypeError(f"progress's total must be a count of items or None, not {given!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress bars need tqdm: pip install tqdm (or pip install 'paralelo[progress]')") from e
    options: dict[str, Any] = dict(progress) if isinstance(progress, Mapping) else {}
    try:
        items: int | None = len(iterable)
    except TypeError:
        items = None  # (known at the input's end)
    fixed = options.get("total") is not None
    if not fixed:
        options["total"] = items
    if later and progress is True:
        # (A notebook's widget is shown only by a first draw that `delay` held back: there
        # the bar is drawn at once.)
        delay = 0.0 if tqdm.__module__.startswith("tqdm.notebook") else Progress.REVEAL
        return Progress(None, items, fixed, make=lambda: tqdm(delay=delay, **options))
    return Progress(tqdm(**options), items, fixed)


@contextmanager
def starting(bar: Progress | None) -> Iterator[None]:
    """Around handing a map with `bar` to the workers: if that fails, no bar is left
    drawn; once done, the bar is made (`Progress.attach`), while the workers start."""
    try:
        yield
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        bar.attach()


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
            self.bar._advance(1)  # (never under an engine lock: nothing to defer)


class finishing:  # noqa: N801 - used as a function: finishing(results, bar)
    """`results` as they are taken; `bar` finished at their end (closed where it got to
    if the caller stops early). With `count`, each result taken advances it (a map whose
    items the bar cannot see run). Keeps the results' ``next(timeout)`` (an imap's)."""

    def __init__(self, results: Iterator, bar: Progress, count: bool = False) -> None:
        self._results, self._bar, self._count = results, bar, count
        self._taken = 0

    def __iter__(self) -> finishing:
        return self

    def __next__(self) -> Any:
        return self._took(lambda: next(self._results))

    def next(self, timeout: float | None = None) -> Any:
        """The next result, within `timeout` seconds where the results allow one."""
        step = getattr(self._results, "next", None)
        return self._took(lambda: next(self._results) if step is None else step(timeout))

    def _took(self, step: Callable[[], Any]) -> Any:
        try:
            value = step()
        except StopIteration:
            self._bar.finish(self._taken)
            raise
        except TimeoutError:
            raise  # (`next(timeout)`: the caller may ask again)
        except BaseException:
            self._bar.close()  # (where it got to, as a tqdm loop that raises)
            raise
        self._taken += 1
        if self._count:
            self._bar.advance(1)
        return value

    def close(self) -> None:
        """Stops early: the results' own clean-up runs now (what has not run is dropped)."""
        close = getattr(self._results, "close", None)
        if close is not None:
            close()
        self._bar.close()

    def __del__(self) -> None:
        bar = getattr(self, "_bar", None)
        if bar is not None:
            self.close()
