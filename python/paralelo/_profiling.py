"""``paralelo.profile()``: cProfile across the parent and every worker, merged.

Inside ``with paralelo.profile("run.prof") as prof:``, the calling thread is profiled,
and so is every worker of every paralelo pool and executor (those alive, and those that
start meanwhile): each is told to start (``PROFILE``) and runs its tasks under its own
``cProfile.Profile``. At the end each sends what it measured (``PROFILED``: a worker
busy in a task answers once the task ends; one that leaves meanwhile, after
``maxtasksperchild``, sends it as it goes), and the statistics are merged into one
``pstats.Stats`` (``prof.stats``: print it, sort it), saved to the path given if any: a
``.prof`` file that snakeviz, gprof2dot and ``python -m pstats`` open.
"""

from __future__ import annotations

import cProfile
import marshal
import os
import pstats
import time
from contextlib import contextmanager
from typing import Iterator

from ._wire import PROBE_PROFILE

__all__ = ["Profile", "profile"]


class _Loaded:
    """What ``pstats.Stats.add`` takes: anything with ``create_stats`` and ``stats``."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        pass


class Profile:
    """The outcome of ``paralelo.profile()``: ``stats`` (a ``pstats.Stats`` merging the
    caller's thread and the workers'), once the block ended; ``workers`` (how many sent
    theirs), ``missing`` (how many did not in time), ``path`` (where it was saved)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.stats: pstats.Stats | None = None
        self.workers = 0
        self.missing = 0

    def __repr__(self) -> str:
        state = "running" if self.stats is None else f"{self.workers} workers merged"
        return f"<paralelo.Profile {state}{'' if self.path is None else ' ' + repr(self.path)}>"


@contextmanager
def profile(path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> Iterator[Profile]:
    """Profiles the calling thread and every paralelo worker for the duration of the
    block; yields a `Profile` whose ``stats`` (a ``pstats.Stats``) is set at the end,
    and saved to `path` if given. Workers have `timeout` seconds from the block's end to
    send theirs (a worker busy in a long task answers when it ends); those that did not
    are counted in ``missing``."""
    from ._engine.engine import switch_probe

    result = Profile(None if path is None else os.fspath(path))
    started = switch_probe(PROBE_PROFILE, True)
    own = cProfile.Profile()
    own.enable()
    try:
        yield result
    finally:
        own.disable()
        ended = switch_probe(PROBE_PROFILE, False)
        deadline = time.monotonic() + timeout
        stats = pstats.Stats(own)
        for engine in ended + [engine for engine in started if engine not in ended]:
            got, missing = engine.probes.gather(engine, PROBE_PROFILE, deadline)
            for one in got:
                stats.add(_Loaded(marshal.loads(one)))  # type: ignore[arg-type]
            result.workers += len(got)
            result.missing += missing
        result.stats = stats
        if result.path is not None:
            stats.dump_stats(result.path)


