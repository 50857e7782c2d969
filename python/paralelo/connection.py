"""multiprocessing.connection's ``Pipe``, ``Connection`` and ``wait``, on the engine's
shared-memory channels; ``Listener`` and ``Client`` (sockets between programs that did
not start each other) are the standard library's.

A ``Pipe`` is a channel per direction (a ring in shared memory: a message is copied in
and out, with no system call while the receiver is awake), a Unix socket pair and an
eventfd per direction beside them:

- The socket is what the kernel keeps per end, so it says when the other end is closed
  everywhere (by ``close`` or by death): ``recv`` raises EOFError once nothing is left,
  and ``send`` raises BrokenPipeError.
- ``fileno()`` is an epoll descriptor over the socket and the eventfd of the incoming
  direction, for ``select`` and event loops: while anyone waits on descriptors, senders
  poke the eventfd (between the fragments of a large message too), and a receiver leaves
  it readable while data is left. (A sender's poke can land just after the receiver took
  its message: rarely, it is readable with nothing to read, as a socket can be.)
"""

from __future__ import annotations

import os
import select
import socket
import time
import weakref
from multiprocessing import AuthenticationError, BufferTooShort, reduction, util
from multiprocessing import connection as _mp
from multiprocessing.connection import Client, Listener, answer_challenge, deliver_challenge
from typing import Any, Callable

from . import _arena, _channels, aio
from ._native import Channel
from ._arena import commit, ungive
from ._pickling import once
from .queues import dumps

__all__ = [
    "AuthenticationError", "BufferTooShort", "Client", "Connection", "Listener", "Pipe",
    "answer_challenge", "deliver_challenge", "wait",
]

#: Connections alive in this process: a forked child's copies hold no registration of
#: their own (the parent's stays the parent's).
_live: weakref.WeakSet = weakref.WeakSet()


def _forget_watches_after_fork() -> None:
    for c in list(_live):
        c._after_fork()


os.register_at_fork(after_in_child=_forget_watches_after_fork)


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


#: The largest message ``send_async`` tries to send in the loop's own thread: one that
#: starts going out is sent whole, however slowly the other end reads, so it must fit
#: in one fragment (a quarter of the ring: 256 KiB for a Pipe's).
_SEND_NOW_MOST = 64 << 10

class Connection:
    """One end of a ``Pipe`` (multiprocessing's ``Connection``): ``send``/``recv`` of
    picklable objects, ``send_bytes``/``recv_bytes``/``recv_bytes_into``, ``poll``,
    ``fileno``, ``close``, ``closed``, ``readable``, ``writable``."""

    def __init__(self, sock: socket.socket, incoming: Channel | None, outgoing: Channel | None,
                 in_event: int = -1, out_event: int = -1) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._in = incoming
        self._out = outgoing
        self._in_event = in_event  # readable while data may be left (see `fileno`)
        self._out_event = out_event  # poked after a send while the receiver watches
        self._readable = incoming is not None
        self._writable = outgoing is not None
        self._epoll: select.epoll | None = None
        self._unwatch: util.Finalize | None = None
        _live.add(self)

    def _after_fork(self) -> None:
        if self._epoll is not None:
            aio.drop_readers(self._epoll.fileno())  # (an awaited recv looks again: closed)
            self._epoll.close()  # (this process's copy: the parent's stays)
            self._epoll = None
            self._unwatch = None  # (the parent's registration, not ours to undo)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._fd}"
        return f"<{type(self).__module__}.{type(self).__qualname__} {state}>"

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._sock is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def _reading(self) -> Channel:
        if self._sock is None:
            raise OSError("handle is closed")
        if self._in is None or not self._readable:
            raise OSError("connection is write-only")
        return self._in

    def _writing(self) -> Channel:
        if self._sock is None:
            raise OSError("handle is closed")
        if self._out is None:
            raise OSError("connection is read-only")
        return self._out

    def fileno(self) -> int:
        """A descriptor that is readable while a receive would not block (data waits, or
        the other end is closed), for ``select`` and event loops. (The first call turns
        on the wake-ups that keep it so: each send then makes one system call.)"""
        if self._sock is None:
            raise OSError("handle is closed")
        if self._in is None:
            return self._fd
        if self._epoll is None:
            ep = select.epoll()
            ep.register(self._in_event, select.EPOLLIN)
            ep.register(self._fd, select.EPOLLIN | select.EPOLLRDHUP)
            self._in.watch(True)
            # Unregistered at close, or at this process's exit (a Process's child never
            # runs `__del__`): a registration left behind costs every later send a poke.
            self._unwatch = util.Finalize(self, self._in.watch, (False,), exitpriority=0)
            self._in.settle_wake(self._in_event)  # readable if data already waits
            self._epoll = ep
        return self._epoll.fileno()

    def close(self) -> None:
        """Closes this end (in this process; copies other processes hold stay open)."""
        self._close(os.close)

    def _close(self, close_fd: Callable[[int], None]) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._epoll is not None:
            aio.drop_readers(self._epoll.fileno())  # (an awaited recv looks again: closed)
            self._epoll.close()
            self._epoll = None
            if self._unwatch is not None:
                self._unwatch()
        out = self._out
        self._in = self._out = None
        sock.close()
        if out is not None:
            out.wake_receivers()  # (asleep, they look whether this was the last copy)
        for fd in (self._in_event, self._out_event):
            if fd >= 0:
                close_fd(fd)
        self._in_event = self._out_event = -1

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self, _close_fd: Callable[[int], None] = os.close) -> None:
        # (At the interpreter's end, module globals such as `os` may be gone already.)
        if getattr(self, "_sock", None) is not None:
            self._close(_close_fd)

    def send(self, obj: Any) -> None:
        """Sends a picklable object to the other end."""
        out, data = self._writing(), commit(dumps(obj))
        try:
            out.send(data, None, self._fd, self._out_event)
        except BaseException:
            ungive(data)  # (never sent: its blocks go)
            raise

    async def send_async(self, obj: Any) -> None:
        """``send`` from asyncio: at once when the ring has room for a small message;
        else a wait thread sends it while the loop runs on (a cancelled send that
        started still sends)."""
        out, data = self._writing(), commit(dumps(obj))
        if len(data) <= _SEND_NOW_MOST:
            try:
                out.send(data, 0.0, self._fd, self._out_event)
                return
            except TimeoutError:
                pass  # (no room now: nothing went)
            except BaseException:
                ungive(data)
                raise
        await aio.waited(out.send, data, None, self._fd, self._out_event, undo=lambda: ungive(data))

    async def recv_async(self) -> Any:
        """``recv`` from asyncio: the loop watches the connection's descriptor (no
        thread) until a receive would not block. EOFError when none is left and the
        other end is closed."""
        while not self.poll(0):
            await aio.readable(self.fileno())
        return self.recv()

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends bytes from a bytes-like object (``offset`` and ``size`` in bytes)."""
        out = self._writing()
        m = memoryview(buf)
        if m.format != "B":
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        data: Any = m[offset:offset + size]
        if size >= _arena.OOB_MIN:
            framed = _arena.raw_frame(data)
            if framed is not None:
                data = commit(framed)
        try:
            out.send(data, None, self._fd, self._out_event)
        except BaseException:
            ungive(data)  # (never sent: its block goes)
            raise

    def recv(self) -> Any:
        """Receives an object the other end sent (EOFError when none is left and the
        other end is closed)."""
        return self._reading().recv(None, self._fd, self._in_event, True)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives a message of bytes; OSError (and no more reading) if it is longer
        than ``maxlength``."""
        inc = self._reading()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = _arena.in_band(inc.recv(None, self._fd, self._in_event))
        if maxlength is not None and len(data) > maxlength:
            # As multiprocessing: no more reading (a write-only end is closed).
            if self._writable:
                self._readable = False
            else:
                self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receives a message of bytes into ``buf`` from byte ``offset``; returns its
        length. BufferTooShort (holding the message) if it does not fit."""
        inc = self._reading()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            if offset > bytesize:
                raise ValueError("offset too large")
            data = _arena.in_band(inc.recv(None, self._fd, self._in_event))
            size = len(data)
            if bytesize < offset + size:
                raise BufferTooShort(data)
            m.cast("B")[offset:offset + size] = data
            return size

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a receive would not block, waiting up to ``timeout`` seconds for it
        (None: for ever)."""
        inc = self._reading()
        if timeout is not None and timeout < 0:
            timeout = 0.0
        return inc.wait_data(timeout, self._fd)

    def _has_data(self) -> bool:
        """For ``wait`` (registered as a watcher): whether data is waiting, its eventfd
        left readable exactly then."""
        return self._in is not None and self._in.settle_wake(self._in_event)

    def __reduce__(self) -> tuple:
        if self._sock is None:
            raise OSError("handle is closed")
        # Descriptors go through the starting process's Popen while spawning, else
        # through multiprocessing's resource sharer (so a pool's task may take one):
        # once per pickling, though `dumps` may pickle twice (see `_pickling.once`).
        def dup(fd: int) -> Any:
            return None if fd < 0 else reduction.DupFd(fd)

        return once(self, lambda: (_rebuild, (
            dup(self._fd),
            None if self._in is None else _channels.pass_on(self._in),
            None if self._out is None else _channels.pass_on(self._out),
            dup(self._in_event), dup(self._out_event), _arena.for_spawning())), _unpass_all)


def _unpass_all(reduced: tuple) -> None:
    for dup in reduced[1]:
        _channels.unpass(dup)


def _open(dup: Any) -> Channel | None:
    return None if dup is None else _channels.opened(dup)


def _rebuild(sock: Any, incoming: Any, outgoing: Any, in_event: Any = None, out_event: Any = None,
             arena: Any = None) -> Connection:
    _arena.adopt(arena)
    return Connection(socket.socket(fileno=sock.detach()), _open(incoming), _open(outgoing),
                      -1 if in_event is None else in_event.detach(),
                      -1 if out_event is None else out_event.detach())


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pair of connected ``Connection``s; with ``duplex=False``, the first only
    receives and the second only sends."""
    _arena.arena()  # (so processes forked from here on map it: big objects go through it)
    a, b = socket.socketpair()
    if duplex:
        ab, ba = _channels.new(), _channels.new()
        ab_event, ba_event = _eventfd(), _eventfd()
        return (Connection(a, ba, ab, ba_event, ab_event),
                Connection(b, ab, ba, os.dup(ab_event), os.dup(ba_event)))
    ch, event = _channels.new(), _eventfd()
    return Connection(a, ch, None, event, -1), Connection(b, None, ch, -1, os.dup(event))


def wait(object_list: Any, timeout: float | None = None) -> list:
    """Waits until one or more of ``object_list`` is ready (multiprocessing's
    ``connection.wait``): paralelo connections with data or whose other end closed, and
    anything ``select`` can wait on (the standard library's connections, sockets, process
    sentinels, descriptors). Returns the ready ones; ``[]`` when ``timeout`` passes."""
    ours = [o for o in object_list if isinstance(o, Connection) and o._in is not None and o._sock is not None]
    others = [o for o in object_list if not any(o is c for c in ours)]
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    by_fd = {fd: c for c in ours for fd in (c._in_event, c._fd)}
    watched = [c._in for c in ours if c._in is not None]
    for ch in watched:
        ch.watch(True)  # senders poke our eventfds from now on
    try:
        while True:
            ready: list = [c for c in ours if c._has_data()]
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            woke = _mp.wait([*others, *by_fd], 0.0 if ready else left)
            for o in woke:
                c = by_fd.get(o) if type(o) is int else None
                if c is None:
                    ready.append(o)
                elif o == c._fd or c._has_data():  # its socket: the other end closed
                    if not any(r is c for r in ready):
                        ready.append(c)
            if ready or (left is not None and left <= 0):
                return ready
    finally:
        for ch in watched:
            ch.watch(False)
