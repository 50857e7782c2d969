"""Soak, short: ~300,000 tiny tasks through one Pool in rounds; memory must stay flat.

The long version is bench/bench_soak.py (10,000,000 tasks, reports instead of asserting).
"""

from __future__ import annotations

import itertools
import os

import pytest

import paralelo

WORKERS = 2
ROUNDS = 6
#: Tasks per round: half through one imap, half through map.
PER_ROUND = 50_000
#: Allowed RSS growth (MB) from the end of round 2 to the end of the last round, i.e. over
#: (ROUNDS - 2) * PER_ROUND = 200,000 tasks, about half of them run by each worker. The
#: parent's bound is exceeded by a leak of ~100 bytes per task; a worker's by one of
#: ~130 bytes per task it runs (measured: 150-byte objects kept per task grow each worker
#: ~23 MB). Without a leak the growth is well under 2 MB.
PARENT_MB = 20
WORKER_MB = 12


# -- functions sent to workers (module level, so they pickle by reference) ------------------


def inc(x):
    return x + 1


# -- helpers -----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sample(pool: paralelo.Pool) -> tuple[float, dict[int, float]]:
    """(parent MB, {worker pid: MB}) now."""
    workers = {}
    for pid in pool._engine.pids():
        mb = rss_mb(pid)
        if mb is not None:
            workers[pid] = mb
    parent = rss_mb(os.getpid())
    assert parent is not None
    return parent, workers


def run_round(pool: paralelo.Pool, start: int) -> None:
    """PER_ROUND tasks from ``start``: half through imap (read in blocks), half through map."""
    half = PER_ROUND // 2
    it = pool.imap(inc, range(start, start + half))
    done = start
    while True:
        block = list(itertools.islice(it, 5_000))
        if not block:
            break
        assert block == list(range(done + 1, done + 1 + len(block)))
        done += len(block)
    assert done == start + half
    out = pool.map(inc, range(start + half, start + PER_ROUND))
    assert out == list(range(start + half + 1, start + PER_ROUND + 1))


# -- the test ------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
@pytest.mark.timeout(120)
def test_memory_stays_flat_over_many_tiny_tasks():
    pool = paralelo.Pool(WORKERS)
    ok = False
    try:
        pool.map(inc, range(100))  # started and warm
        samples = []
        for r in range(ROUNDS):
            run_round(pool, r * PER_ROUND)
            samples.append(sample(pool))
        ok = True
    finally:
        if ok:
            pool.close()
        else:
            pool.terminate()
        pool.join()

    # Round 1 is warm-up (allocator arenas, caches, buffers reaching their working size).
    (parent_base, workers_base), (parent_last, workers_last) = samples[1], samples[-1]
    report = "\n".join(f"after round {i + 1}: parent {p:.1f} MB, workers "
                       + ", ".join(f"{pid}: {mb:.1f} MB" for pid, mb in sorted(w.items()))
                       for i, (p, w) in enumerate(samples))

    assert len(workers_last) == WORKERS, report
    assert parent_last - parent_base < PARENT_MB, f"parent RSS grew too much:\n{report}"
    # Workers that lived through the whole window (a replaced worker starts fresh, so its
    # growth says nothing); with no maxtasksperchild and no crashes, that is all of them.
    lived = sorted(set(workers_base) & set(workers_last))
    assert lived, f"no worker lived from round 2 to the end:\n{report}"
    for pid in lived:
        grown = workers_last[pid] - workers_base[pid]
        assert grown < WORKER_MB, f"worker {pid} RSS grew {grown:.1f} MB:\n{report}"
