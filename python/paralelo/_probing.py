"""A worker's probes (see ``_engine.probes``): what it measures while the parent asks,
and how that travels back."""

from __future__ import annotations

import marshal
import multiprocessing
import os
import pickle
from typing import Any

from ._wire import PROBE_PROFILE, PROBE_TRACE

__all__ = ["measured", "start"]


def start(kind: int) -> Any:
    """Starts probe `kind` here: a running ``cProfile.Profile``, or the list its tasks'
    spans go to (``(name, category, start_ns, end_ns, args)``, perf_counter clock)."""
    if kind == PROBE_PROFILE:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        return profiler
    if kind == PROBE_TRACE:
        return []
    raise ValueError(f"unknown probe {kind}")


def measured(kind: int, probe: Any) -> bytes:
    """Stops `probe` and packs what it measured for the parent: a profile in the
    ``marshal`` form of ``.prof`` files; spans pickled with this process's pid and name."""
    if kind == PROBE_PROFILE:
        probe.disable()
        probe.create_stats()
        return marshal.dumps(probe.stats)
    return pickle.dumps((os.getpid(), multiprocessing.current_process().name, probe), 5)
