"""paralelo's exceptions. They subclass the standard library's, so ``except`` clauses
written for multiprocessing or concurrent.futures keep working."""

from __future__ import annotations

import builtins
import multiprocessing
from concurrent.futures.process import BrokenProcessPool


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time.

    Both ``multiprocessing.TimeoutError`` and the built-in ``TimeoutError`` (which is
    ``concurrent.futures.TimeoutError``) catch it.
    """


class WorkerLostError(BrokenProcessPool):
    """The worker process running this task died (killed, crashed, or ``os._exit``).

    Only the tasks that worker was running fail; the pool replaces it and stays usable.
    """


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker; attached as the
    ``__cause__`` of the exception the caller sees."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """An exception raised in a worker that could not be sent back as itself (it could
    not be pickled or unpickled); its type name and message are kept."""
