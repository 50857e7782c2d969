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

A pool's results are also asyncio Future-like objects (`FutureLike`): ``gather``,
``wait``, ``wait_for``, ``shield`` and ``as_completed`` take them without a Task each.

IPC awaited (the ``*_async`` methods of queues, connections, locks, semaphores, events
and barriers) waits in one of three ways, by what the wait commits: on a descriptor the
loop watches (`readable`: a connection's receive); in a wait thread a slice at a time,
taking the item in the loop's thread (`until`: a queue's data, an event); or whole in
a wait thread (`waited`, `acquired`: a send that does not fit now, a lock, a barrier's
round), giving back what a cancelled wait took.
"""

from __future__ import annotations

import contextvars
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
            try:
                fn(*args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as e:  # noqa: BLE001 - one failing must not drop the rest
                loop = self.loop()
                if loop is not None:  # (reported as asyncio reports a failing callback)
                    loop.call_exception_handler({"message": f"Exception in callback {fn!r}{args!r}",
                                                 "exception": e})

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
    (``asyncio.isfuture``): ``asyncio.gather``, ``wait``, ``wait_for``, ``shield`` and
    ``as_completed`` take it as it is, with no Task wrapped around each (which costs
    more than the call it waits for). It is bound to no loop: its done-callbacks run in
    the loop that added them, woken through that loop's eventfd; so it is used from a
    running loop (``get_loop()`` outside one raises: ``run_until_complete(result)``
    cannot tell which loop it is for; a coroutine that awaits it can).

    A subclass provides ``ready()``, ``_when_ready(fn)`` (calls `fn` once ready, from
    any thread), ``_watching()`` (those `fn` not called yet), ``_unwatch(fn)`` (forgets
    such an `fn`), ``_cancel()`` (cancels the work, settling the result as cancelled),
    ``_outcome()`` (``(ok, value)`` once ready) and ``_is_cancelled()``."""

    _asyncio_future_blocking = False
    _cancel_message: Any = None  # (read by asyncio.gather from a cancelled child)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop: each loop that waits for the result is told through its
        own eventfd. RuntimeError outside a running loop."""
        loop = _running_loop()
        if loop is None:
            raise RuntimeError("a paralelo result belongs to no event loop: await it from a coroutine, "
                               "or hand it to asyncio from one that runs")
        return loop

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Any = None) -> None:
        """Calls ``fn(result)`` in the current event loop once the result is ready (soon,
        if it is already), in `context` (default: a copy of the current one), as an
        asyncio Future does."""
        cell = _Cell(fn, contextvars.copy_context() if context is None else context, _waker(self.get_loop()), self)
        self._when_ready(cell)  # type: ignore[attr-defined]

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """Forgets `fn` where it has not run yet; how many were forgotten."""
        # (Those told already are scheduled, as asyncio's are once the Future is done.)
        gone = [w for w in self._watching() if type(w) is _Cell and w.fn == fn]  # type: ignore[attr-defined]
        for cell in gone:
            self._unwatch(cell)  # type: ignore[attr-defined]
            cell.clear()
        return len(gone)

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
        self._cancel_message = msg
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
            raise self._make_cancelled_error()
        return self._outcome()  # type: ignore[attr-defined]

    def _make_cancelled_error(self) -> BaseException:
        # (asyncio.gather asks a cancelled child for its error by this name.)
        import asyncio

        return asyncio.CancelledError() if self._cancel_message is None else asyncio.CancelledError(self._cancel_message)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # (asyncio's own C function, looked up each time: this module does not import
    # asyncio, and a loop that runs has imported it.)
    events = sys.modules.get("asyncio.events")
    return None if events is None else events._get_running_loop()


class _Cell:
    """A done-callback of a `FutureLike`: told (from the thread that settles the result)
    that it is ready, it runs `fn(fut)` in its loop, once, in its context. Its slots hold
    what a lambda and its closure held: one object per callback, not six, which matters
    when thousands of results are pending (the garbage collector walks each)."""

    __slots__ = ("fn", "context", "waker", "fut")

    def __init__(self, fn: Callable[[Any], object], context: Any, waker: _Waker, fut: FutureLike) -> None:
        self.fn: Callable[[Any], object] | None = fn
        self.context: Any = context
        self.waker: _Waker | None = waker
        self.fut: FutureLike | None = fut

    def __call__(self) -> None:
        # The result is ready: run soon, in the loop (from its own thread, or woken).
        waker = self.waker
        if waker is None:
            return  # removed
        loop = waker.loop()
        if loop is not None and _running_loop() is loop:
            loop.call_soon(self.run)
        else:
            _post_if_open(waker, self.run, ())

    def run(self) -> None:
        fn, context, fut = self.fn, self.context, self.fut
        if fn is None:
            return  # removed before it ran
        self.clear()
        context.run(fn, fut)

    def clear(self) -> None:
        self.fn = self.context = self.waker = self.fut = None


# -- IPC awaited: queues, connections, locks, events, barriers ----------------------

#: How long a wait thread waits for a queue's data or an event before it hands back (a
#: wait whose task was cancelled holds its thread no longer than this).
SLICE = 0.25
#: The backoff of polled attempts (a lock's acquire, a full queue's put): from the
#: first, doubling to the last, in seconds.
POLL_FIRST, POLL_MOST = 0.0005, 0.008

class _WaitThreads:
    """The threads that wait for IPC on the loops' behalf: one for each wait under way
    (a wait never queues behind another, which may be waiting for it: a barrier's round
    for the handshake a queue read would make), reused, gone after a minute idle. Of
    their own, so waits never hold the threads of a loop's default executor; daemons, so
    a wait that never ends (a send to a reader that stopped reading) never keeps the
    program from exiting."""

    IDLE = 60.0

    def __init__(self) -> None:
        import queue

        self.work: Any = queue.SimpleQueue()
        self.lock = threading.Lock()
        #: Idle threads no submitted wait has claimed yet: each wait put in `work` claims
        #: one, or starts a thread, so there are always as many threads taking from
        #: `work` as waits in it.
        self.free = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread of its own: its ``concurrent.futures.Future``."""
        from concurrent.futures import Future

        done: Future = Future()
        with self.lock:
            claimed = self.free > 0
            if claimed:
                self.free -= 1
        self.work.put((done, fn, args))
        if not claimed:
            threading.Thread(target=self._serve, name="paralelo-aio-wait", daemon=True).start()
        return done

    def _serve(self) -> None:
        import queue

        while True:
            try:
                done, fn, args = self.work.get(timeout=self.IDLE)
            except queue.Empty:
                with self.lock:
                    if self.free > 0:  # one idle thread unclaimed: this one can go
                        self.free -= 1
                        return
                continue  # (all claimed: a wait is on its way to one of us)
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - the awaiting task's to handle
                    done.set_exception(e)
            done = fn = args = None  # (nothing of it held while idle)
            with self.lock:
                self.free += 1


_wait_threads: _WaitThreads | None = None
_wait_threads_lock = threading.Lock()


def submit_wait(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (a blocking wait) started in a wait thread: its
    ``concurrent.futures.Future``."""
    return _waits().submit(fn, *args)


def _waits() -> _WaitThreads:
    global _wait_threads
    if _wait_threads is None:
        with _wait_threads_lock:
            if _wait_threads is None:
                _wait_threads = _WaitThreads()
    return _wait_threads


def _forget_wait_threads() -> None:
    global _wait_threads, _wait_threads_lock
    _wait_threads, _wait_threads_lock = None, threading.Lock()  # (not the child's threads)


os.register_at_fork(after_in_child=_forget_wait_threads)


async def waited(fn: Callable[..., Any], *args: Any, undo: Callable[[], object] | None = None) -> Any:
    """``fn(*args)`` (a blocking wait) in a wait thread, awaited: the loop runs on.
    Cancelling the awaiting task does not stop a call that started (its outcome is
    dropped); `undo()` runs if `fn` raises or never runs (a send's buffers go)."""
    import asyncio

    def call() -> Any:
        try:
            return fn(*args)
        except BaseException:
            if undo is not None:
                undo()
            raise

    started = submit_wait(call)
    if undo is not None:
        started.add_done_callback(lambda f: f.cancelled() and undo())
    return await asyncio.wrap_future(started)


def deadline_of(timeout: float | None) -> float | None:
    """When a wait of `timeout` seconds (None: no end) ends, on ``time.monotonic()``'s
    clock; ValueError for NaN, as the blocking waits say."""
    import time

    if timeout is None:
        return None
    if not timeout == timeout:
        raise ValueError("timeout must be a non-negative number of seconds or None, not NaN")
    return time.monotonic() + max(0.0, timeout)


async def until(wait: Callable[[float], bool], timeout: float | None = None) -> bool:
    """True once ``wait(seconds)`` (a blocking wait that changes nothing: for data, for
    an event) says so, called in a wait thread a slice at a time; False when `timeout`
    passes first. The loop runs on meanwhile."""
    import time

    deadline = deadline_of(timeout)
    while True:
        left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if left <= 0:
            return False
        if await waited(wait, left):
            return True


async def polled(attempt: Callable[[], bool], timeout: float | None = None) -> bool:
    """True once ``attempt()`` (which never blocks: a put into a full queue) succeeds,
    tried in the loop's own thread, backing off between tries; False when `timeout`
    passes first."""
    import asyncio
    import time

    deadline = deadline_of(timeout)
    delay = POLL_FIRST
    while not attempt():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        await asyncio.sleep(delay if left is None else min(delay, left))
        delay = min(2 * delay, POLL_MOST)
    return True


async def readable(fd: int) -> None:
    """Returns once `fd` is readable, watched by the running loop (``add_reader``): no
    thread. Several tasks may wait on one descriptor at once."""
    import asyncio

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    waiting = _readers.setdefault(loop, {})
    futs = waiting.get(fd)
    if futs is None:
        futs = waiting[fd] = []
        loop.add_reader(fd, lambda: _release(loop, fd, waiting.pop(fd, [])))
    futs.append(fut)
    try:
        await fut
    finally:
        if fut.cancelled() and fut in futs:
            futs.remove(fut)
            if not futs and waiting.get(fd) is futs:
                del waiting[fd]
                loop.remove_reader(fd)


def _release(loop: Any, fd: int, futs: list) -> None:
    loop.remove_reader(fd)
    for f in futs:
        if not f.done():
            f.set_result(None)


def drop_readers(fd: int) -> None:
    """Wakes the tasks waiting (`readable`) on `fd`, which is about to be closed: each
    looks again, and finds what it waited on closed. The running loop's are woken now,
    before the number can be given to another descriptor; another loop's, through it."""
    running = _running_loop()
    for loop, waiting in list(_readers.items()):
        futs = waiting.pop(fd, None)
        if futs is None:
            continue
        if loop is running:
            _release(loop, fd, futs)
        else:
            loop.call_soon_threadsafe(_release, loop, fd, futs)


_readers: weakref.WeakKeyDictionary[Any, dict[int, list]] = weakref.WeakKeyDictionary()


async def acquired(acquire: Callable[..., bool], release: Callable[[], object],
                   timeout: float | None = None) -> bool:
    """True once ``acquire(True, seconds)`` (a lock's or semaphore's, which any thread may
    release) took it, in a wait thread a slice at a time: the thread sleeps on the lock
    as any waiter does, woken by the release, so it gets its turn as they do. False when
    `timeout` passes first. A cancelled acquire gives back what its thread took."""
    import asyncio
    import time

    if acquire(False):
        return True
    deadline = deadline_of(timeout)
    while True:
        left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
        if left <= 0:
            return False
        taken = submit_wait(acquire, True, left)
        handover = _Handover(release)
        taken.add_done_callback(handover.settle)
        try:
            if await asyncio.wrap_future(taken):
                return True
        except asyncio.CancelledError:
            handover.abandon(taken)
            raise


class _Handover:
    """What a wait thread took for a task that was cancelled meanwhile goes back: by the
    thread's completion, or by the task, whichever comes second."""

    __slots__ = ("release", "lock", "abandoned", "handled")

    def __init__(self, release: Callable[[], object]) -> None:
        self.release = release
        self.lock = threading.Lock()
        self.abandoned = self.handled = False

    def settle(self, taken: Any) -> None:
        with self.lock:
            if not self.abandoned or self.handled:
                return
            self.handled = True
        if not taken.cancelled() and taken.exception() is None and taken.result():
            self.release()

    def abandon(self, taken: Any) -> None:
        with self.lock:
            self.abandoned = True
        if taken.done():
            self.settle(taken)


class AsyncLock:
    """``async with`` and ``await acquire_async()`` for a lock or semaphore that any
    thread may release: see `acquired`. (The loop's thread does not hold it as a thread:
    the task does, as with asyncio's own locks.)"""

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Takes it, the loop running on meanwhile: True once taken; False if `timeout`
        seconds pass first."""
        return await acquired(self.acquire, self.release, timeout)  # type: ignore[attr-defined]

    async def __aenter__(self) -> None:
        await self.acquire_async()

    async def __aexit__(self, *exc: Any) -> None:
        self.release()  # type: ignore[attr-defined]


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
    # (A callable object with an async __call__ counts: a lambda returning a coroutine
    # cannot be told from a plain function.)
    in_loop = asyncio.iscoroutinefunction(fn) or asyncio.iscoroutinefunction(getattr(fn, "__call__", None))
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
