"""``paralelo.profile()``: cProfile across the parent and every worker, merged.

Inside ``with paralelo.profile("run.prof") as prof:``, the calling thread is profiled,
and so are the tasks handed meanwhile to paralelo's thread pools (``ThreadPool``,
``ThreadPoolExecutor``: each thread under a profile of its own, see
``_probing.ThreadProfiles``), and every worker of every paralelo pool and executor
(those alive, and those that start meanwhile): each is told to start (``PROFILE``) and runs its tasks under its own
``cProfile.Profile``. At the end each sends what it measured (``PROFILED``: a worker
busy in a task answers once the task ends; one that leaves meanwhile, after
``maxtasksperchild``, sends it as it goes), and the statistics are merged into one
``pstats.Stats`` (``prof.stats``: print it, sort it), saved to the path given if any: a
``.prof`` file that snakeviz, gprof2dot and ``python -m pstats`` open.

With ``lines=[f, g]`` (line_profiler installed), the same processes also time those
functions line by line (``LINES``; named by module and qualified name, so each process
finds its own copy), merged into ``prof.lines`` (a ``line_profiler.LineStats``: print
it with ``prof.print_lines()``), saved beside the ``.prof`` as ``.lprof``, which
``python -m line_profiler`` shows.
"""

from __future__ import annotations

import cProfile
import marshal
import os
import pstats
import pickle
import sys
import time
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterable, Iterator

from . import _probing
from ._wire import PROBE_LINES, PROBE_PROFILE

__all__ = ["Profile", "profile"]


class _Loaded:
    """What ``pstats.Stats.add`` takes: anything with ``create_stats`` and ``stats``."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        pass


class Profile:
    """The outcome of ``paralelo.profile()``: ``stats`` (a ``pstats.Stats`` merging the
    caller's thread, the thread pools' threads and the workers'), once the block ended;
    ``workers`` (how many worker processes sent theirs), ``threads`` (how many thread-pool
    threads ran tasks), ``missing`` (how many of either did not end in time), ``path``
    (where it was saved);
    with ``lines=``, ``lines`` (a ``line_profiler.LineStats`` merging every process's
    line timings) and ``lines_path`` (the ``.lprof`` saved beside ``path``)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.stats: pstats.Stats | None = None
        self.workers = 0
        self.threads = 0
        self.missing = 0
        self.lines: Any = None
        self.lines_path: str | None = None

    def print_lines(self, stream: IO[str] | None = None) -> None:
        """Prints the line-by-line timings (``lines=``), as ``kernprof -lv`` does."""
        if self.lines is None:
            raise ValueError("no line timings: profile(lines=[function, ...]) collects them")
        self.lines.print(stream=stream or sys.stdout)

    def __repr__(self) -> str:
        state = "running" if self.stats is None else f"{self.workers} workers merged"
        return f"<paralelo.Profile {state}{'' if self.path is None else ' ' + repr(self.path)}>"


@contextmanager
def profile(path: str | os.PathLike[str] | None = None, timeout: float = 30.0,
            lines: Iterable[Callable] | None = None) -> Iterator[Profile]:
    """Profiles the calling thread, the tasks handed to paralelo's thread pools, and
    every paralelo worker process for the duration of the block; yields a `Profile` whose ``stats`` (a ``pstats.Stats``) is set at the end,
    and saved to `path` if given. Workers have `timeout` seconds from the block's end to
    send theirs (a worker busy in a long task answers when it ends); those that did not
    are counted in ``missing``. `lines`: functions to time line by line as well, in the
    caller and every worker (needs line_profiler): ``Profile.lines``."""
    from ._engine.engine import switch_probe

    result = Profile(None if path is None else os.fspath(path))
    line_probe = None
    if lines is not None:
        if callable(lines):
            raise TypeError("lines= takes a list of functions: lines=[work], not lines=work")
        lines = list(lines)
        wanted = _probing.wanted(lines)
        try:
            import line_profiler  # noqa: F401
        except ImportError as e:
            raise ImportError("profile(lines=...) needs line_profiler: pip install line_profiler") from e
        line_probe = _probing.LineProbe(wanted)
        for fn in lines:
            line_probe.saw(fn)  # (the caller's own, whatever their names)
        line_started = switch_probe(PROBE_LINES, True, pickle.dumps(wanted, 5))
    started = switch_probe(PROBE_PROFILE, True)
    outer, in_threads = _probing.threads, _probing.ThreadProfiles()
    _probing.threads = in_threads
    own = cProfile.Profile()
    own.enable()
    try:
        yield result
    finally:
        own.disable()
        _probing.threads = outer
        own_lines = None
        if line_probe is not None:  # (off first: nothing after the block is timed line by line)
            line_ended = switch_probe(PROBE_LINES, False)
            own_lines = line_probe.stop()
        ended = switch_probe(PROBE_PROFILE, False)
        deadline = time.monotonic() + timeout
        stats = pstats.Stats(own)
        threads, result.missing = in_threads.end(deadline)
        for one in threads:
            stats.add(_Loaded(marshal.loads(one)))  # type: ignore[arg-type]
        result.threads = len(threads)
        for one in _gathered(PROBE_PROFILE, started, ended, deadline, result):
            stats.add(_Loaded(marshal.loads(one)))  # type: ignore[arg-type]
        result.stats = stats
        if result.path is not None:
            stats.dump_stats(result.path)
        if own_lines is not None:
            from line_profiler import LineStats

            merged = [LineStats(*own_lines)]
            merged += [LineStats(*pickle.loads(one))
                       for one in _gathered(PROBE_LINES, line_started, line_ended, deadline, None)]
            result.lines = LineStats.from_stats_objects(*merged)
            if result.path is not None:
                result.lines_path = os.path.splitext(result.path)[0] + ".lprof"
                result.lines.to_file(result.lines_path)


def _gathered(kind: int, started: list, ended: list, deadline: float, counts: Profile | None) -> list[bytes]:
    """What the workers of the engines switched (`ended`, then `started` ones that ended
    first) sent for probe `kind` by `deadline`; counted in `counts` if given."""
    out: list[bytes] = []
    for engine in ended + [engine for engine in started if engine not in ended]:
        got, missing = engine.probes.gather(engine, kind, deadline)
        out += got
        if counts is not None:
            counts.workers += len(got)
            counts.missing += missing
    return out


