"""What workers print and log reaches the parent as the parent would have written it.

Printing: a worker's stdout and stderr write whole lines, each in one ``write`` (line
buffered, even under ``PYTHONUNBUFFERED=1``, where ``print("a", "b")`` would otherwise be
four writes), so lines of several workers never mix mid-line.

Logging: the handlers a worker inherited from its parent (those on any logger when the
pool was made) hand their records to the same handlers in the parent, through the
worker's result ring: records that a parent-side handler collects (in memory, a queue,
a rotating file only one process may roll, pytest's ``caplog``, a notebook's output)
get the workers' too (a plain stream or file handler on a real descriptor writes
itself, as a forked copy would, in order with the process's prints),
with the worker's ``processName`` and ``process``; what a task logs reaches them before
its result does. Handlers a worker adds itself (in its initializer, say) stay its own,
as with multiprocessing; so do the inherited ones once the worker leaves (its slot may
be its successor's by then) and in any process a task forks.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import sys
import threading
from typing import Any, Callable

__all__ = ["Relay", "deliver", "forward_logging", "handlers", "record", "relay", "stop_forwarding", "whole_lines"]


def whole_lines() -> None:
    """Makes this process's stdout and stderr write each line whole, in one write."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            try:
                stream.reconfigure(line_buffering=True, write_through=False)
            except (ValueError, OSError):  # (closed, or detached by the program)
                pass


def _loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [logging.getLogger()] + [lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger)]


def handlers() -> dict[int, logging.Handler]:
    """The handlers on every logger now whose records a forked process should hand to
    this one, by ``id`` (a process forked now has the same objects, same ids). Held for
    the pool's life: a handler the program drops or replaces later still gets its
    workers' records, as a forked worker's own copy would.

    A plain ``StreamHandler`` or ``FileHandler`` on a real file descriptor is left out:
    a child writes the very same bytes to the same file through its own copy, and so
    its log lines stay in order with its prints, as with multiprocessing."""
    out: dict[int, logging.Handler] = {}
    for logger in _loggers():
        for h in logger.handlers:
            if not _writes_itself(h):
                out.setdefault(id(h), h)
    return out


def _writes_itself(h: logging.Handler) -> bool:
    if type(h) not in (logging.StreamHandler, logging.FileHandler):
        return False  # (a subclass may keep, rotate, send or capture records)
    stream = getattr(h, "stream", None)
    try:
        return stream is not None and stream.fileno() >= 0
    except (AttributeError, ValueError, OSError):  # (a notebook's stream, a StringIO)
        return False


def deliver(handler: logging.Handler, payload: bytes) -> None:
    """Hands a worker's record to the parent's `handler`, as the worker's own logging call
    would: if its level lets it through (the handler's level now, not at the fork); if
    the handler raises, it reports it as a handler that cannot emit does (``handleError``:
    the task that logged is elsewhere). A record that does not load here arrives as a
    warning saying so."""
    try:
        rec = record(payload)
    except Exception as e:  # noqa: BLE001 - a value whose class cannot be rebuilt here
        rec = logging.makeLogRecord({"name": "paralelo", "levelno": logging.WARNING, "levelname": "WARNING",
                                     "msg": f"a worker's log record could not be unpickled here: {e!r}"})
    if rec.levelno < handler.level:
        return
    try:
        handler.handle(rec)
    except Exception:  # noqa: BLE001
        handler.handleError(rec)


#: Held while a worker's record is sent, and to stop sending (`stop_forwarding`): once
#: the worker said BYE, its slot may be a new worker's, and nothing more may go there.
_sending = threading.Lock()
_stopped = False


class _Forward(logging.Handler):
    """In a worker: stands for one of its parent's handlers, and hands it the records;
    once the worker leaves (or in a process it forks), the handler itself writes them,
    as a forked process's copy does."""

    def __init__(self, handler: logging.Handler, send: Callable[[int, bytes], None]) -> None:
        super().__init__(handler.level)  # (a record below it is not even sent)
        self.original = handler
        self.of = id(handler)
        self.send = send
        self.pid = os.getpid()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # (The parent's handler applies its own filters, formatter and lock.)
        if os.getpid() == self.pid:
            with _sending:
                if not _stopped:
                    try:
                        self.send(self.of, _packed(record))
                    except Exception:  # noqa: BLE001 - as a handler that cannot emit does
                        self.handleError(record)
                    return True
        return self.original.handle(record)  # (a child of the worker's, or after BYE)

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def stop_forwarding() -> None:
    """In a worker about to leave (BYE, EXIT): records go to its own handlers from now
    on; a record being sent is sent first."""
    global _stopped
    with _sending:
        _stopped = True


def _forked() -> None:
    global _sending
    _sending = threading.Lock()  # (a thread of the parent may have held it at the fork)


class Relay:
    """A parent's end of its ``paralelo.Process`` children's log records: one queue of
    paralelo's (a ring in shared memory, which every child forked after it inherits) and
    one daemon thread that hands each record to the parent's handler it stands for
    (`deliver`). A child ends by putting its pid: `join` waits for that (briefly), so
    what a child logged is handled before its ``join()`` returns."""

    #: How long a join waits for a child's last records (a killed child sends none).
    LAST_RECORDS = 1.0

    def __init__(self) -> None:
        from .queues import SimpleQueue

        self.queue = SimpleQueue()
        self.handlers: dict[int, logging.Handler] = {}
        self.ended: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.owner = os.getpid()
        threading.Thread(target=self._read, name="paralelo-process-logs", daemon=True).start()

    def forking(self) -> frozenset[int]:
        """In the parent, before a child is forked: the handlers it will have, by id."""
        found = handlers()
        with self.lock:
            self.handlers.update(found)
        return frozenset(found)

    def expect(self, pid: int) -> None:
        """In the parent: child `pid` will end by saying so."""
        with self.lock:
            self.ended.setdefault(pid, threading.Event())

    def send(self, handler: int, payload: bytes) -> None:
        """In a child: one record, for the parent's handler `handler`."""
        self.queue.put((handler, payload))

    def close(self) -> None:
        """In a child, as it ends: its records were all sent."""
        stop_forwarding()
        self.queue.put((0, os.getpid()))

    def joined(self, pid: int, killed: bool) -> None:
        """In the parent, once child `pid` was reaped: waits for its last records."""
        with self.lock:
            ended = self.ended.pop(pid, None)
        if ended is not None and not killed:
            ended.wait(self.LAST_RECORDS)

    def _read(self) -> None:
        while True:
            try:
                handler, payload = self.queue.get()
            except Exception:  # noqa: BLE001 - the queue is gone (interpreter exit)
                return
            if handler == 0:
                with self.lock:
                    ended = self.ended.setdefault(payload, threading.Event())
                ended.set()
                continue
            found = self.handlers.get(handler)
            if found is not None:
                try:
                    deliver(found, payload)
                except Exception:  # noqa: BLE001 - this thread must go on
                    pass


_relay: Relay | None = None
_relay_lock = threading.Lock()


def relay() -> Relay | None:
    """The relay of this process's Process children (made at the first, if the program
    has any log handler to forward to)."""
    global _relay
    if _relay is not None and _relay.owner == os.getpid():
        return _relay
    if not handlers():
        return None
    with _relay_lock:
        if _relay is None or _relay.owner != os.getpid():
            _relay = Relay()
        return _relay


os.register_at_fork(after_in_child=_forked)


def forward_logging(ids: frozenset[int], send: Callable[[int, bytes], None]) -> None:
    """In a worker: each inherited handler whose id is in `ids` (its parent's) forwards
    its records to the parent through `send(handler_id, payload)`."""
    for logger in _loggers():
        logger.handlers = [_Forward(h, send) if id(h) in ids and not isinstance(h, _Forward) else h
                           for h in logger.handlers]


#: Argument types a parent always loads: a record whose arguments are only these keeps
#: them (a handler may read ``record.args``, as it can with fork), else they are merged.
_PLAIN_ARGS = frozenset((int, float, str, bytes, bool, type(None)))


def _plain(args: Any) -> bool:
    if type(args) is tuple:
        return all(type(a) in _PLAIN_ARGS for a in args)
    return type(args) is dict and all(type(k) is str and type(v) in _PLAIN_ARGS for k, v in args.items())


def _packed(rec: logging.LogRecord) -> bytes:
    """A record as a pickle its parent can always load: its message and arguments as
    they are when those are plain values, else the message merged with its arguments
    (as ``QueueHandler.prepare`` does); an exception as its formatted text, and as
    ``exc_info`` without its traceback where the exception pickles (for handlers that
    read it); an ``extra`` value that does not pickle, as its repr."""
    d = dict(rec.__dict__)
    if not (type(rec.msg) is str and (not rec.args or _plain(rec.args))):
        d["msg"] = rec.getMessage()
        d["args"] = None
    if rec.exc_info:
        if not d.get("exc_text"):
            d["exc_text"] = logging.Formatter().formatException(rec.exc_info)
        kind, value = rec.exc_info[0], rec.exc_info[1]
        d["exc_info"] = (kind, value, None) if _pickles((kind, value)) else None
    try:
        return pickle.dumps(d, 5)
    except Exception:  # noqa: BLE001 - some value does not pickle: that one goes as its repr
        return pickle.dumps({k: v if _pickles(v) else repr(v) for k, v in d.items()}, 5)


def _pickles(v: Any) -> bool:
    try:
        pickle.dumps(v, 5)
        return True
    except Exception:  # noqa: BLE001
        return False


def record(payload: bytes) -> logging.LogRecord:
    """A record that `_packed` made."""
    return logging.makeLogRecord(pickle.loads(payload))
