"""``paralelo.profile()``: cProfile in the caller and every worker (of pools alive and
made meanwhile, respawned ones, ones that leave after maxtasksperchild), merged into one
``pstats.Stats`` naming the worker functions with their call counts, saved as ``.prof``."""

from __future__ import annotations

import os
import pstats
import signal
import time

import paralelo

T = 30


def leaf(n):
    return sum(range(n))


def work(x):
    return leaf(100) + x


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def _calls(stats: pstats.Stats, name: str) -> int:
    return sum(v[1] for (_, _, fn), v in stats.stats.items() if fn == name)  # type: ignore[attr-defined]


def test_the_merged_profile_counts_every_workers_calls(tmp_path):
    path = tmp_path / "run.prof"
    expected = 50 * leaf(100) + sum(range(50))
    with paralelo.Pool(2) as pool:
        pool.map(work, range(4))  # (before: not profiled)
        with paralelo.profile(path) as prof:
            pool.map(work, range(300), chunksize=10)
            with paralelo.ProcessPoolExecutor(2) as ex:  # made, used and shut inside
                assert sum(ex.map(work, range(50))) == expected  # (the caller's own calls count too)
        pool.map(work, range(4))  # (after: not profiled)
    assert prof.workers == 4 and prof.missing == 0
    assert _calls(prof.stats, "work") == 350 and _calls(prof.stats, "leaf") == 350
    assert _calls(prof.stats, "map") >= 1  # the caller's own side
    saved = pstats.Stats(str(path))
    assert _calls(saved, "work") == 350


def test_workers_that_leave_or_are_replaced_still_count():
    with paralelo.Pool(2, maxtasksperchild=5) as pool:  # (5 chunks of 5 a worker)
        with paralelo.profile() as prof:
            assert pool.map(work, range(200), chunksize=5) == [leaf(100) + x for x in range(200)]
    # Workers left every 25 items, and sent their profiles as they went.
    assert _calls(prof.stats, "work") == 200
    assert prof.workers >= 8


def test_a_worker_killed_meanwhile_costs_only_its_own_profile():
    with paralelo.Pool(2) as pool:
        with paralelo.profile(timeout=T) as prof:
            victim = pool.apply_async(nap, (0.01,)).get(T)
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.2)
            assert pool.map(work, range(40), chunksize=1) == [leaf(100) + x for x in range(40)]
        assert prof.missing == 0  # (none waited for the dead one)
        assert _calls(prof.stats, "work") == 40  # all after the death, by live workers


def test_a_worker_busy_past_the_timeout_is_counted_missing():
    with paralelo.Pool(1) as pool:
        pool.map(work, range(2))
        with paralelo.profile(timeout=0.3) as prof:
            slow = pool.apply_async(nap, (2.0,))
            time.sleep(0.1)
        assert prof.missing == 1 and prof.workers == 0
        slow.get(T)
        assert pool.map(work, range(3)) == [leaf(100) + x for x in range(3)]  # the pool goes on


def test_no_profile_leaves_workers_unprofiled():
    with paralelo.Pool(1) as pool:
        with paralelo.profile() as first:
            pool.map(work, range(5))
        pool.map(work, range(5))
        with paralelo.profile() as second:
            pool.map(work, range(7))
    assert _calls(first.stats, "work") == 5 and _calls(second.stats, "work") == 7
