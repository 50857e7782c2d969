"""Completions: user code (callbacks, Future done-callbacks, progress bars) that the
engine finds while a thread holds its lock runs once the lock is released."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

# Completions that run user code (callbacks, Future done-callbacks) found while a thread
# holds an engine lock: they run once it is released, so a callback that takes the user's
# own lock cannot deadlock against a thread submitting while holding that lock.
deferred = threading.local()


_callbacks_log = logging.getLogger("concurrent.futures")


def _complete(fn: Callable, args: tuple) -> BaseException | None:
    """Runs a completion (user callbacks inside): whatever it raises is logged as
    concurrent.futures logs a failing callback, and the thread goes on. On the collector
    that includes SystemExit and KeyboardInterrupt (user code must not stop the thread
    that delivers results); on the caller's own thread those are returned, to re-raise."""
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - see above
        if not getattr(deferred, "collector", False) and not isinstance(e, Exception):
            return e
        # Named as concurrent.futures names it: the result or future whose callback failed
        # (a completion is its bound method, or takes it first).
        owner = getattr(fn, "__self__", None)
        if owner is None:
            owner = args[0] if args else fn
        try:
            _callbacks_log.exception("exception calling callback for %r", owner)
        except Exception:  # noqa: BLE001 - a handler that raises must not stop this thread
            pass
    return None


def run_or_defer(fn: Callable, *args: Any) -> None:
    """Calls `fn(*args)` now, or, inside `Engine.locked()`, right after the lock is released."""
    pending = getattr(deferred, "pending", None)
    if pending is None:
        interrupt = _complete(fn, args)
        if interrupt is not None:
            raise interrupt
    else:
        pending.append((fn, args))


def after_pending(fn: Callable, *args: Any) -> None:
    """Calls `fn(*args)` now, unless completions are already deferred in this lock hold:
    then after them, in order (a result made visible must not overtake the log records
    its task wrote, delivered that way)."""
    pending = getattr(deferred, "pending", None)
    if pending:
        pending.append((fn, args))
    else:
        fn(*args)


class Held:
    """A hold of an engine lock (see `Engine.locked`): a class, not a generator-based
    context manager, which costs several times more, on every call submitted."""

    __slots__ = ("lock", "outer")

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.outer = False

    def __enter__(self) -> None:
        self.outer = getattr(deferred, "pending", None) is None
        if self.outer:
            deferred.pending = []
        try:
            self.lock.acquire()
        except BaseException:
            if self.outer:
                deferred.pending = None
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self.lock.release()
        finally:
            if self.outer:
                pending, deferred.pending = deferred.pending, None
                if pending:
                    interrupts = [e for e in (_complete(fn, args) for fn, args in pending) if e is not None]
                    if interrupts:
                        raise interrupts[0]  # Ctrl-C in a callback on the caller's thread
