"""Task functions shared by the benchmarks (importable, so every library can pickle them)."""

import time


def inc(x):
    return x + 1


def burn(seconds):
    """Spends `seconds` of this thread's CPU time (not wall time, so preemption by other
    processes does not shorten the work)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


def pareto_durations(n=200, total=4.0, seed=12345, shape=1.5):
    """Heavy-tailed task durations (Pareto, fixed seed) scaled to sum to `total` seconds."""
    import random

    rng = random.Random(seed)
    raw = [rng.paretovariate(shape) for _ in range(n)]
    scale = total / sum(raw)
    return [r * scale for r in raw]
