"""multiprocessing's ``Queue``, ``SimpleQueue`` and ``JoinableQueue`` on the engine's
shared-memory channels.

A queue is one ring in a shared memory segment that every process holding the queue
maps: ``put`` pickles the object and copies it into the ring (no pipe, no system call
unless a getter sleeps), ``get`` copies it out. Many processes and threads may put and
get at once; each message arrives whole, once, and in the order its putter put it. A
process killed half-way through a put or a get costs that one message, never the others.

As with multiprocessing, ``Queue.put`` never blocks on a full ring (only on ``maxsize``):
what does not fit waits in a feeder thread, flushed before the process exits (unless
``cancel_join_thread``). Unlike multiprocessing, ``put`` pickles at once, so an object
that cannot be pickled raises there, in the caller, instead of printing a traceback from
the feeder thread and vanishing; and what was put is visible to ``empty()`` and ``get``
at once. Queues may also be passed to a pool's tasks, not only to ``Process`` and pool
initializers.
"""

from __future__ import annotations

import collections
import operator
import os
import pickle
import sys
import threading
import time
import weakref
from multiprocessing import reduction, util
from queue import Empty, Full
from typing import Any

from ._native import Channel, dumps_flat
from . import _arena, _channels, aio
from ._arena import GIVE, commit, frame, take_buffer, uncommit, ungive
from ._pickling import FLAT, by_value, in_session

__all__ = ["Empty", "Full", "JoinableQueue", "Queue", "SimpleQueue"]

#: A maxsize at or past this is no bound (the engine counts in 32 bits).
_UNBOUNDED = 1 << 31


def dumps(obj: Any, oob: bool = True) -> bytes:
    """Pickles a message: by reference where the standard pickler can (so a ``__main__``
    class arrives as the receiver's own, as with multiprocessing's fork); else with
    multiprocessing's ``ForkingPickler`` (sockets, connections, and what libraries
    registered with it); else by value with cloudpickle (lambdas, closures, what only
    this process has). Big buffers (numpy arrays) go through the arena, given to the
    message (see `_arena`), unless not `oob`."""
    if type(obj) in FLAT:  # (no buffer, nothing to pass on)
        return dumps_flat(obj) or pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return in_session(_dumps, obj, oob)


def _dumps(obj: Any, oob: bool) -> bytes:
    found: list = []
    callback = (lambda pb: take_buffer(pb, found)) if oob else None
    try:
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL, buffer_callback=callback)
    except (pickle.PicklingError, AttributeError, TypeError):
        found.clear()
        try:
            return bytes(reduction.ForkingPickler.dumps(obj, pickle.HIGHEST_PROTOCOL))
        except (pickle.PicklingError, AttributeError, TypeError):
            data = by_value(obj, None, callback)
    if found:
        framed = frame(data, found, GIVE)
        return framed if framed is not None else _dumps(obj, False)
    return data


#: Queues alive in this process: a forked child starts each with no feeder of its own.
_live: weakref.WeakSet = weakref.WeakSet()


def _forget_feeders_after_fork() -> None:
    for q in list(_live):
        q._after_fork()


os.register_at_fork(after_in_child=_forget_feeders_after_fork)


class _Shared:
    """What every queue shares: the channel, how it pickles to another process, and how
    a forked child starts over."""

    _ch: Channel

    def _share(self, ch: Channel) -> None:
        self._ch = ch
        _arena.arena()  # (so processes forked from here on map it: big items go through it)

    def __getstate__(self) -> tuple:
        # The channel goes as a descriptor (`_channels.pass_on`: so a queue may go to a
        # running pool's task too). A spawned process gets the arena as well.
        return (_channels.pass_on(self._ch), _arena.for_spawning(), *self._extra_state())

    def __setstate__(self, state: tuple) -> None:
        _arena.adopt(state[1])
        self._share(_channels.opened(state[0]))
        self._set_extra_state(state[2:])

    def _extra_state(self) -> tuple:
        return ()

    def _set_extra_state(self, state: tuple) -> None:
        pass


class Queue(_Shared):
    """A process-shared FIFO queue (multiprocessing's ``Queue``): ``put``/``get`` with
    ``block`` and ``timeout`` (``queue.Full``/``queue.Empty``), ``put_nowait``,
    ``get_nowait``, ``qsize``, ``empty``, ``full``, ``close``, ``join_thread``,
    ``cancel_join_thread``."""

    _COUNTING = 1  # (messages in and out: see `_native.Channel`)

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        # (`ctx` is multiprocessing's signature: paralelo's queues are the same in every
        # context.)
        maxsize = operator.index(maxsize)  # (TypeError for 2.5, as multiprocessing)
        self._maxsize = maxsize if 0 < maxsize < _UNBOUNDED else 0
        self._share(_channels.new(self._COUNTING))
        self._reset()

    def _extra_state(self) -> tuple:
        return (self._maxsize,)

    def _set_extra_state(self, state: tuple) -> None:
        (self._maxsize,) = state
        self._reset()

    def _reset(self) -> None:
        self._closed = False
        self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None
        self._jointhread: util.Finalize | None = None
        self._joincancelled = False
        self._close_feeder: util.Finalize | None = None
        _live.add(self)

    def _after_fork(self) -> None:
        # The parent's feeder (and what it had yet to send) stays the parent's.
        self._reset()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts `obj` in the queue, waiting while ``maxsize`` items are in (``queue.Full``
        when `timeout` passes, or at once with ``block=False``)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        ch = self._ch
        if not self._buffer:  # (else it goes behind what waits there)
            sent = ch.put(obj, self._maxsize)
            if sent is True:
                return
            if sent is not None:
                self._feed(sent)
                return
        # Full, or not picklable by reference, or behind the feeder: the general way.
        try:
            ch.reserve(self._maxsize, block, timeout)
        except TimeoutError:
            raise Full from None
        try:
            data = dumps(obj)
        except BaseException:
            ch.unreserve()
            raise
        if not self._buffer:
            sent = commit(data)  # (its blocks are the message's from now)
            try:
                went = ch.try_send(sent)
            except BaseException:
                ungive(sent)
                ch.unreserve()
                raise
            if went:
                return
            if sent is not data:
                data = uncommit(sent)  # (ours again while it waits for the feeder)
        self._feed(data)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes the next item, waiting for one (``queue.Empty`` when `timeout` passes,
        or at once with ``block=False``)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not block:
            timeout = 0.0
        elif timeout is not None and timeout < 0:
            timeout = 0.0
        try:
            return self._ch.recv(timeout, -1, -1, True)  # (no peer, no eventfd; unpickled)
        except TimeoutError:
            raise Empty from None

    async def get_async(self, timeout: float | None = None) -> Any:
        """``get`` from asyncio: the loop runs on while a wait thread waits for data
        (taking none: the item is taken in the loop's thread, so a cancelled get loses
        nothing). ``queue.Empty`` if `timeout` seconds pass first."""
        deadline = aio.deadline_of(timeout)
        while True:
            try:
                return self.get(False)
            except Empty:
                pass
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 or not await aio.until(self._ch.wait_data, left):
                raise Empty

    async def put_async(self, obj: Any, timeout: float | None = None) -> None:
        """``put`` from asyncio: while ``maxsize`` items are in, tried again as the loop
        runs on (backing off to 8 ms). ``queue.Full`` if `timeout` seconds pass first."""
        if not await aio.polled(lambda: self._put_now(obj), timeout):
            raise Full

    def _put_now(self, obj: Any) -> bool:
        try:
            self.put(obj, False)
        except Full:
            return False
        return True

    def put_nowait(self, obj: Any) -> None:
        return self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        """Items put and not yet taken (by any process)."""
        return self._ch.count()

    def empty(self) -> bool:
        if self._closed:
            raise OSError("handle is closed")  # (as multiprocessing's closed reader)
        return not self._ch.has_data()

    def full(self) -> bool:
        return bool(self._maxsize) and self._ch.count() >= self._maxsize

    def close(self) -> None:
        """No more puts or gets from this process; the feeder thread sends what it holds,
        then ends."""
        self._closed = True
        close, self._close_feeder = self._close_feeder, None
        if close is not None:
            close()

    def join_thread(self) -> None:
        """Waits for the feeder thread to send what it holds (after ``close``)."""
        util.debug("Queue.join_thread()")
        assert self._closed, f"Queue {self!r} not closed"
        if self._jointhread:
            self._jointhread()

    def cancel_join_thread(self) -> None:
        """Lets this process exit without waiting for the feeder thread to send what it
        holds (which is then lost)."""
        util.debug("Queue.cancel_join_thread()")
        self._joincancelled = True
        try:
            if self._jointhread is not None:
                self._jointhread.cancel()
        except AttributeError:
            pass

    def _feed(self, data: bytes) -> None:
        # Items go out in order: while any waits here, every later put waits behind it.
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(data)
            self._notempty.notify()

    def _start_thread(self) -> None:
        util.debug("Queue._start_thread()")
        self._thread = threading.Thread(
            target=Queue._feeder, args=(self._buffer, self._notempty, self._ch),
            name="QueueFeederThread", daemon=True)
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = util.Finalize(self._thread, Queue._finalize_join,
                                             [weakref.ref(self._thread)], exitpriority=-5)
        self._close_feeder = util.Finalize(self, Queue._finalize_close,
                                           [self._buffer, self._notempty], exitpriority=10)

    @staticmethod
    def _finalize_join(twr: Any) -> None:
        thread = twr()
        if thread is not None:
            util.debug("joining queue thread")
            thread.join()

    @staticmethod
    def _finalize_close(buffer: collections.deque, notempty: threading.Condition) -> None:
        with notempty:
            buffer.append(_STOP)
            notempty.notify()

    @staticmethod
    def _feeder(buffer: collections.deque, notempty: threading.Condition, ch: Channel) -> None:
        while True:
            with notempty:
                while not buffer:
                    notempty.wait()
            data = buffer[0]
            if data is _STOP:
                buffer.popleft()
                return
            try:
                data = commit(data)  # (its blocks are the message's from now)
                ch.send(data)
            except Exception:  # noqa: BLE001 (a corrupt ring: nothing more can be sent)
                ch.unreserve()
                ungive(data)
                import traceback

                traceback.print_exc(file=sys.stderr)
            # Popped only once sent: a put that finds the buffer empty may send directly.
            buffer.popleft()


_STOP = object()


class JoinableQueue(Queue):
    """A ``Queue`` whose consumers mark each item done (``task_done``) and whose
    ``join`` waits until every item put was (multiprocessing's ``JoinableQueue``)."""

    _COUNTING = 2  # (and unfinished ones)

    def task_done(self) -> None:
        """Marks one item taken with ``get`` as done (ValueError if more than were put)."""
        self._ch.task_done()

    def join(self) -> None:
        """Waits until every item put was marked done."""
        self._ch.wait_finished()


class SimpleQueue(_Shared):
    """A simplified process-shared queue (multiprocessing's ``SimpleQueue``): ``put``
    (which waits while the ring is full), ``get``, ``empty``, ``close``."""

    def __init__(self, *, ctx: Any = None) -> None:
        self._share(_channels.new(1))
        self._closed = False

    def _set_extra_state(self, state: tuple) -> None:
        self._closed = False

    def _check(self) -> Channel:
        if self._closed:
            raise OSError("handle is closed")
        return self._ch

    def put(self, obj: Any) -> None:
        ch, sent = self._check(), self._counted_in(obj)
        if sent is None:
            return
        try:
            ch.send(sent)
        except BaseException:
            ungive(sent)
            raise

    def _counted_in(self, obj: Any) -> Any:
        """`obj` counted in and sent now if nothing is in the way (None), else pickled and
        committed, for the caller to send."""
        ch = self._check()
        sent = ch.put(obj, 0)  # (counted, for no one: cheaper than a second path)
        if sent is True:
            return None
        if sent is None:
            ch.reserve(0)
            try:
                sent = commit(dumps(obj))
            except BaseException:
                ch.unreserve()
                raise
        return sent

    def get(self) -> Any:
        return self._check().recv(None, -1, -1, True)  # (no peer, no eventfd; unpickled)

    async def get_async(self) -> Any:
        """``get`` from asyncio: the loop runs on while a wait thread waits for data (the
        item is taken in the loop's thread: a cancelled get loses nothing)."""
        while True:
            try:
                return self._check().recv(0.0, -1, -1, True)
            except TimeoutError:
                await aio.until(self._ch.wait_data)

    async def put_async(self, obj: Any) -> None:
        """``put`` from asyncio: sent at once when the ring has room; else a wait thread
        sends it while the loop runs on (a cancelled put whose send started still
        sends)."""
        ch, sent = self._check(), self._counted_in(obj)
        if sent is None:
            return

        def undo() -> None:  # (never sent: its blocks go, and it is counted out)
            ungive(sent)
            ch.unreserve()

        await aio.waited(ch.send, sent, undo=undo)

    def empty(self) -> bool:
        return not self._check().has_data()

    def close(self) -> None:
        self._closed = True
