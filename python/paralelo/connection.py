"""multiprocessing.connection's ``Pipe``, ``Connection`` and ``wait``, on the engine's
shared-memory channels; ``Listener`` and ``Client`` (sockets between programs that did
not start each other) are the standard library's.

A ``Pipe`` is a channel per direction (a ring in shared memory: a message is copied in
and out, with no system call while the receiver is awake) and a Unix socket pair beside
them. The socket is what the kernel keeps per end, so it says when the other end is
closed everywhere (``recv`` raises EOFError once nothing is left, ``send`` waiting for room
raises BrokenPipeError), and it is the descriptor that ``fileno()`` gives to ``select``:
while anyone waits on it, every send also writes a wake-up byte to it.
"""

from __future__ import annotations

import os
import socket
import time
from multiprocessing import AuthenticationError, BufferTooShort, reduction
from multiprocessing import connection as _mp
from multiprocessing.connection import Client, Listener, answer_challenge, deliver_challenge
from typing import Any

from ._native import Channel, drain_pokes, peer_gone
from .queues import dumps

__all__ = [
    "AuthenticationError", "BufferTooShort", "Client", "Connection", "Listener", "Pipe",
    "answer_challenge", "deliver_challenge", "wait",
]


class Connection:
    """One end of a ``Pipe`` (multiprocessing's ``Connection``): ``send``/``recv`` of
    picklable objects, ``send_bytes``/``recv_bytes``/``recv_bytes_into``, ``poll``,
    ``fileno``, ``close``, ``closed``, ``readable``, ``writable``."""

    def __init__(self, sock: socket.socket, incoming: Channel | None, outgoing: Channel | None) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._in = incoming
        self._out = outgoing
        self._readable = incoming is not None
        self._writable = outgoing is not None
        self._watched = False

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
        if self._in is None:
            raise OSError("connection is write-only")
        return self._in

    def _writing(self) -> Channel:
        if self._sock is None:
            raise OSError("handle is closed")
        if self._out is None:
            raise OSError("connection is read-only")
        return self._out

    def fileno(self) -> int:
        """The descriptor to wait on for this connection's data (with ``select`` or
        ``wait``): from now on, every message sent to it also makes it readable."""
        if self._sock is None:
            raise OSError("handle is closed")
        if self._in is not None and not self._watched:
            self._in.watch(True)
            self._watched = True
        return self._fd

    def close(self) -> None:
        """Closes this end (in this process; copies other processes hold stay open)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._watched and self._in is not None:
            self._in.watch(False)
        self._in = self._out = None
        sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()

    def send(self, obj: Any) -> None:
        """Sends a picklable object to the other end."""
        out = self._writing()
        out.send(dumps(obj), None, self._fd)

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends bytes from a bytes-like object (``offset`` and ``size`` in bytes)."""
        out = self._writing()
        m = memoryview(buf)
        if m.itemsize > 1:
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
        out.send(m[offset:offset + size], None, self._fd)

    def recv(self) -> Any:
        """Receives an object the other end sent (EOFError when none is left and the
        other end is closed)."""
        return self._reading().recv(None, False, self._fd, True)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives a message of bytes; OSError (and the connection closes) if it is
        longer than ``maxlength``."""
        inc = self._reading()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = inc.recv(None, False, self._fd)
        if maxlength is not None and len(data) > maxlength:
            # As multiprocessing: no more reading (a write-only end is closed).
            if self._writable:
                self._readable = False
                self._in = None
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
            data = inc.recv(None, False, self._fd)
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

    def _ready(self) -> bool:
        """For ``wait``: data is waiting, or the other end is gone."""
        return self._in is not None and (self._in.has_data() or peer_gone(self._fd))

    def __reduce__(self) -> tuple:
        if self._sock is None:
            raise OSError("handle is closed")
        # Descriptors go through the starting process's Popen while spawning, else
        # through multiprocessing's resource sharer (so a pool's task may take one).
        return _rebuild, (reduction.DupFd(self._fd),
                          None if self._in is None else reduction.DupFd(self._in.fd),
                          None if self._out is None else reduction.DupFd(self._out.fd))


def _open(dup: Any) -> Channel | None:
    if dup is None:
        return None
    fd = dup.detach()
    try:
        return Channel.open(fd)
    finally:
        os.close(fd)


def _rebuild(sock: Any, incoming: Any, outgoing: Any) -> Connection:
    return Connection(socket.socket(fileno=sock.detach()), _open(incoming), _open(outgoing))


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pair of connected ``Connection``s; with ``duplex=False``, the first only
    receives and the second only sends."""
    a, b = socket.socketpair()
    if duplex:
        ab, ba = Channel(), Channel()
        return Connection(a, ba, ab), Connection(b, ab, ba)
    ch = Channel()
    return Connection(a, ch, None), Connection(b, None, ch)


def wait(object_list: Any, timeout: float | None = None) -> list:
    """Waits until one or more of ``object_list`` is ready (multiprocessing's
    ``connection.wait``): paralelo connections with data or whose other end closed, and
    anything ``select`` can wait on (the standard library's connections, sockets, process
    sentinels, descriptors). Returns the ready ones; ``[]`` when ``timeout`` passes."""
    ours = [o for o in object_list if isinstance(o, Connection) and o._in is not None and o._sock is not None]
    others = [o for o in object_list if not any(o is c for c in ours)]
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    by_fd = {c._fd: c for c in ours}
    watched = [c._in for c in ours if c._in is not None]
    for ch in watched:
        ch.watch(True)  # senders poke our sockets from now on
    try:
        while True:
            for fd in by_fd:
                drain_pokes(fd)  # before looking: a poke after the look is not lost
            ready: list = [c for c in ours if c._ready()]
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            woke = _mp.wait([*others, *by_fd], 0.0 if ready else left)
            ready += [o for o in woke if not (type(o) is int and o in by_fd and o not in others)]
            if ready or (left is not None and left <= 0):
                return ready
    finally:
        for ch in watched:
            ch.watch(False)
