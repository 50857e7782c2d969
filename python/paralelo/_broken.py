"""The errors of a pool whose worker or task was lost: ``BrokenProcessPool``'s subclasses.
They live apart from ``_errors`` because ``concurrent.futures.process`` (and the
multiprocessing modules it loads) costs a program that never makes a pool 3 ms at
import and, in every fork, the copying of ≈ 60 more memory mappings."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

__all__ = ["BrokenProcessPool", "ResultUnpicklingError", "TaskUnpicklingError", "WorkerLostError", "broken"]


class WorkerLostError(BrokenProcessPool):
    """The worker process running this task died (killed, crashed, or ``os._exit``).

    Only the tasks that worker was running fail; the pool replaces it and stays usable.
    """


class TaskUnpicklingError(BrokenProcessPool):
    """A task (its function or its arguments) could not be unpickled in the worker. The
    message names what happened; ``__cause__`` carries the worker's traceback. Only this
    task fails: the pool stays usable."""


class ResultUnpicklingError(BrokenProcessPool):
    """A task's result could not be unpickled here; ``__cause__`` is why. Only this task
    fails: the pool stays usable."""


def broken(msg: str, cause: BaseException | None = None) -> BrokenProcessPool:
    """The pool can run nothing more: ``BrokenProcessPool(msg)`` caused by ``cause``."""
    err = BrokenProcessPool(msg)
    err.__cause__ = cause
    return err
