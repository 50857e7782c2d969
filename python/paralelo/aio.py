"""asyncio: paralelo's results awaited from a running event loop, without blocking it.

``await pool.apply_async(...)``, ``await pool.map_async(...)``, ``await
executor.submit(...)`` and ``async for x in pool.imap(...)`` suspend the awaiting task
until the result is there; the loop goes on running everything else meanwhile.

How a result reaches the loop: each loop that awaits one gets a `_Waker`, an eventfd the
loop watches (``add_reader``). The thread that settles a result (a pool's collector)
queues the wake-up and writes the eventfd once for all queued since the loop last read
it; the loop reads it and completes the awaiting futures. No thread polls, and none is
started per call or per await. A loop that is closed while results are pending drops
them when they come (and its eventfd goes with it).

Cancelling the awaiting task cancels the work if it has not started (an executor's
Future is cancelled; a pool's call or map runs nothing more of it) and discards its
result otherwise.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Generator

if TYPE_CHECKING:  # (asyncio is imported when something is first awaited: not by a pool)
    import asyncio

__all__ = ["map"]


class _Waker:
    """One event loop's wake-up: an eventfd it reads, and what to run when it wakes. It
    holds its loop weakly (the loop holds it, through its reader): a loop that is gone
    takes the waker's entry and eventfd with it."""

    __slots__ = ("loop", "fd", "pending", "lock", "rung", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pending: deque[tuple[Callable, tuple]] = deque()
        self.lock = threading.Lock()
        self.rung = False  # written since the loop last read it: no second write
        loop.add_reader(self.fd, self._woken)

    def post(self, fn: Callable, *args: Any) -> None:
        """Runs `fn(*args)` in the loop, soon; from any thread."""
        with self.lock:  # (the write too: a close in between could hand the number on)
            if self.fd < 0:
                return  # (the loop is gone: nothing waits there any more)
            self.pending.append((fn, args))
            if self.rung:
                return
            self.rung = True
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:
                pass

    def _woken(self) -> None:
        with self.lock:
            if self.fd >= 0:
                try:
                    os.eventfd_read(self.fd)
                except OSError:
                    pass
            self.rung = False
            ready, self.pending = self.pending, deque()
        for fn, args in ready:
            fn(*args)

    def close(self) -> None:
        with self.lock:
            fd, self.fd = self.fd, -1
            self.pending.clear()
            if fd < 0:
                return
            loop = self.loop()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(fd)
            os.close(fd)


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


#: The waker last looked up, with its loop held weakly: a burst of awaits from one loop
#: skips the weak dictionary.
_recent: tuple[weakref.ref, _Waker] | None = None


def _waker(loop: asyncio.AbstractEventLoop) -> _Waker:
    global _recent
    recent = _recent
    if recent is not None and recent[0]() is loop and recent[1].fd >= 0:
        return recent[1]
    waker = _wakers.get(loop)
    if waker is None or waker.fd < 0:
        with _wakers_lock:
            waker = _wakers.get(loop)
            if waker is None or waker.fd < 0:
                waker = _wakers[loop] = _Waker(loop)
                # (Its eventfd goes when the loop does: the waker does not keep it.)
                weakref.finalize(loop, waker.close)
    _recent = (weakref.ref(loop), waker)
    return waker


def _forget_after_fork() -> None:
    # A forked child runs none of its parent's loops: their eventfds are not its to hold
    # (nor a pool's workers', forked from it later). No lock is taken: another thread of
    # the parent may have held one at the fork, and it is not here to release it.
    global _wakers_lock, _recent
    _wakers_lock = threading.Lock()
    _recent = None
    for waker in list(_wakers.values()):
        waker.lock = threading.Lock()
        fd, waker.fd = waker.fd, -1
        waker.pending.clear()
        if fd >= 0:
            os.close(fd)
    _wakers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def wake(loop: asyncio.AbstractEventLoop) -> Callable[[Callable, tuple], None]:
    """What completes things in `loop` from another thread: ``post(fn, args)``."""
    waker = _waker(loop)
    return lambda fn, args: _post_if_open(waker, fn, args)


def _post_if_open(waker: _Waker, fn: Callable, args: tuple) -> None:
    loop = waker.loop()
    if loop is None or loop.is_closed():
        waker.close()  # (a closed loop runs nothing: what it awaited is dropped)
        return
    waker.post(fn, *args)


def resolver(fut: asyncio.Future) -> tuple[Callable, tuple]:
    """What `post` runs to wake the task awaiting `fut`: `fut` held weakly (the task holds
    it; a completion queued for a loop that never runs again keeps nothing alive)."""
    return _resolve, (weakref.ref(fut),)


def _resolve(ref: weakref.ref) -> None:
    fut = ref()
    if fut is not None and not fut.done():
        fut.set_result(None)


def awaiting(when_ready: Callable[[Callable[[], None]], None], ready: Callable[[], bool],
             cancel: Callable[[], object], outcome: Callable[[], Any]) -> Generator[Any, None, Any]:
    """The body of an ``__await__``: suspends until `ready()`, with `when_ready(fn)`
    calling `fn` (from any thread) once it is; then `outcome()` (the value, or raises).
    A cancelled await calls `cancel()` (the work not started is dropped)."""
    if not ready():
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        post = wake(loop)
        when_ready(lambda: post(*resolver(fut)))
        try:
            yield from fut
        except asyncio.CancelledError:
            cancel()
            raise
    return outcome()



class FutureLike:
    """What makes a result an asyncio Future-like object, the duck type asyncio documents
    (``asyncio.isfuture``): ``asyncio.gather``, ``wait``, ``wait_for``, ``shield``,
    ``as_completed`` and ``run_until_complete`` take it as it is, with no Task wrapped
    around each (which costs more than the call it waits for). Its done-callbacks run in
    the loop that added them, woken through that loop's eventfd.

    A subclass provides ``ready()``, ``_when_ready(fn)`` (calls `fn` once ready, from
    any thread), ``_cancel()`` (cancels the work, settling the result as cancelled),
    ``_outcome()`` (``(ok, value)`` once ready) and ``_is_cancelled()``."""

    _asyncio_future_blocking = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (a result is bound to none: each loop that waits for
        it is told through its own eventfd)."""
        loop = _running_loop()
        if loop is None:
            import asyncio

            loop = asyncio.get_event_loop_policy().get_event_loop()
        return loop

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        """Calls ``fn(result)`` in the current event loop once the result is ready (soon,
        if it is already), as an asyncio Future does."""
        loop = self.get_loop()
        cell = [fn, context]
        cells = self.__dict__.setdefault("_aio_cells", [])
        cells.append(cell)
        if self.ready():  # type: ignore[attr-defined]
            loop.call_soon(_run_cell, cell, self)
            return
        post = wake(loop)
        self._when_ready(lambda: post(_run_cell, (cell, self)))  # type: ignore[attr-defined]

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """Forgets `fn` where it has not run yet; how many were forgotten."""
        removed = 0
        for cell in self.__dict__.get("_aio_cells", ()):
            if cell[0] == fn:
                cell[0] = None
                removed += 1
        return removed

    def done(self) -> bool:
        """Whether the result is ready (as ``ready()``)."""
        return self.ready()  # type: ignore[attr-defined]

    def cancelled(self) -> bool:
        """Whether it was cancelled (see ``cancel``)."""
        return self.ready() and self._is_cancelled()  # type: ignore[attr-defined]

    def cancel(self, msg: Any = None) -> bool:
        """Cancels the work if it has not started (its result is discarded otherwise), and
        the result with it; False if it was ready already."""
        if self.ready():  # type: ignore[attr-defined]
            return False
        self._cancel()  # type: ignore[attr-defined]
        return self.cancelled()

    def result(self) -> Any:
        """The value, as an asyncio Future gives it: raises what the work raised,
        ``asyncio.CancelledError`` if cancelled, ``asyncio.InvalidStateError`` if not
        ready yet."""
        ok, value = self._ready_outcome()
        if not ok:
            raise value
        return value

    def exception(self) -> BaseException | None:
        """What the work raised (None if it returned), as an asyncio Future gives it."""
        ok, value = self._ready_outcome()
        return None if ok else value

    def _ready_outcome(self) -> tuple[bool, Any]:
        import asyncio

        if not self.ready():  # type: ignore[attr-defined]
            raise asyncio.InvalidStateError("Result is not ready.")
        if self._is_cancelled():  # type: ignore[attr-defined]
            raise asyncio.CancelledError()
        return self._outcome()  # type: ignore[attr-defined]

    def _make_cancelled_error(self) -> BaseException:
        # (asyncio.gather asks a cancelled child for its error by this name.)
        import asyncio

        return asyncio.CancelledError()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # (asyncio's own C function, looked up each time: this module does not import
    # asyncio, and a loop that runs has imported it.)
    events = sys.modules.get("asyncio.events")
    return None if events is None else events._get_running_loop()


def _run_cell(cell: list, fut: Any) -> None:
    fn, context = cell
    if fn is None:
        return  # removed before it ran
    cell[0] = None
    if context is None:
        fn(fut)
    else:
        context.run(fn, fut)


async def map(fn: Callable, iterable: Any, *, limit: int = 8, ordered: bool = True,
              pool: Any = None) -> AsyncIterator[Any]:
    """``async for result in paralelo.aio.map(fn, items, limit=N)``: `fn` over the items
    with at most `limit` calls in flight. A coroutine function runs in the loop; a plain
    function runs in `pool` (a ``paralelo.Pool``; by default one of `limit` workers at
    most, made for this map and ended with it). Results come in the items' order, or as
    they complete with ``ordered=False``; the first failure is raised in its place.
    Leaving the loop, or cancelling it, cancels the calls still pending. `iterable` may
    be an async iterable."""
    import asyncio

    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be an int of 1 or more, not {limit!r}")
    in_loop = asyncio.iscoroutinefunction(fn)
    own = None
    if not in_loop and pool is None:
        from .context import default_workers
        from .pool import Pool

        own = pool = Pool(min(limit, default_workers()))

    async def call(item: Any) -> Any:
        return await (fn(item) if in_loop else pool.apply_async(fn, (item,)))

    end = object()
    if hasattr(iterable, "__aiter__"):
        source: Any = iterable.__aiter__()

        async def take() -> Any:
            try:
                return await source.__anext__()
            except StopAsyncIteration:
                return end
    else:
        items = iter(iterable)

        async def take() -> Any:
            return next(items, end)
    pending: deque[asyncio.Future] = deque()
    running: set[asyncio.Future] = set()
    more = True
    try:
        while True:
            while more and len(pending if ordered else running) < limit:
                item = await take()
                if item is end:
                    more = False
                    break
                started = asyncio.ensure_future(call(item))
                (pending.append if ordered else running.add)(started)
            if ordered:
                if not pending:
                    return
                yield await pending.popleft()
            else:
                if not running:
                    return
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    yield finished.result()
    finally:
        for left in (*pending, *running):
            left.cancel()
        if own is not None:
            own.terminate()
