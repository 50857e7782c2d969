"""``insights()``: per-worker figures from what the engine measures (tasks, time working
and waiting, pickling, bytes, start-up), which add up to the window's wall time; the
pool's imbalance and utilisation; a readable table; ``reset_insights()`` for a new window."""

from __future__ import annotations

import os
import signal
import time

import pytest

import paralelo

T = 30


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_the_figures_add_up_to_the_wall_time():
    with paralelo.Pool(2) as pool:
        pids = pool.map(nap, [0.02] * 20, chunksize=1)
        blob = pool.apply_async(bytes, (100_000,)).get(T)
        ins = pool.insights()
    assert len(blob) == 100_000
    assert ins.tasks == 21
    assert set(pids) <= {w.pid for w in ins.workers}
    for w in ins.workers:
        ran = pids.count(w.pid)
        assert w.tasks in (ran, ran + 1)  # (+ the call, on one of them)
        assert 0.02 * ran * 0.9 <= w.working <= 0.02 * ran + 0.5  # its own measure of its naps
        assert w.startup is not None and 0 < w.startup < 5
        assert 0 <= w.waiting < ins.window
        assert w.bytes_sent > 0 and w.bytes_received > 0 and w.pickling >= 0
    assert sum(w.bytes_received for w in ins.workers) > 100_000  # the call's result
    assert 0 < ins.utilisation <= 1
    assert ins.imbalance >= 0


def test_uneven_work_shows_as_imbalance():
    with paralelo.Pool(2) as pool:
        long = pool.apply_async(nap, (0.4,))
        short = [pool.apply_async(nap, (0.01,)) for _ in range(3)]
        for r in [long, *short]:
            r.get(T)
        ins = pool.insights()
    assert ins.imbalance > 0.5  # one worker napped 0.4 s, the other 0.03 s
    busiest = max(ins.workers, key=lambda w: w.working)
    assert busiest.working >= 0.4


def test_the_table_names_every_worker():
    with paralelo.Pool(2) as pool:
        pool.map(abs, range(-100, 0))
        table = str(pool.insights())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["worker", "pid", "tasks"]
    assert sum("ForkPoolWorker-" in line for line in lines) == 2
    assert "100 tasks in" in lines[-1] and "imbalance" in lines[-1]


def test_reset_starts_a_new_window():
    with paralelo.Pool(2) as pool:
        pool.map(abs, range(-100, 0))
        pool.reset_insights()
        fresh = pool.insights()
        assert fresh.tasks == 0 and fresh.window < 1
        assert all(w.working == 0 and w.bytes_sent == 0 for w in fresh.workers)
        pool.map(abs, range(-10, 0))
        assert pool.insights().tasks == 10


def test_a_dead_worker_is_shown_gone_and_its_replacement_counts():
    with paralelo.Pool(2) as pool:
        victim = pool.apply_async(nap, (0.01,)).get(T)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + T
        while True:
            ins = pool.insights()
            if any(w.pid == victim and not w.alive for w in ins.workers) and len(ins.workers) == 3:
                break
            assert time.monotonic() < deadline, ins
            time.sleep(0.01)
        assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
        assert sum(w.alive for w in pool.insights().workers) == 2
        assert "(gone)" in str(pool.insights())


def test_an_executor_has_insights_too():
    with paralelo.ProcessPoolExecutor(2) as ex:
        assert ex.insights().workers == ()  # not started yet
        assert list(ex.map(abs, range(-30, 0))) == list(range(30, 0, -1))
        ins = ex.insights()
        assert ins.tasks == 30 and len(ins.workers) == 2
        assert all(w.name.startswith("ForkProcess-") for w in ins.workers)
        ex.reset_insights()
        assert ex.insights().tasks == 0


@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_an_inline_pool_shows_the_caller_as_its_one_worker(kind):
    """Inline, the calling process ran every task: it is the one row, with all of them."""
    if kind == "pool":
        runner = paralelo.Pool(2, inline=True)
        run = lambda: runner.map(nap, [0.001] * 20)  # noqa: E731
    else:
        runner = paralelo.ProcessPoolExecutor(2, inline=True)
        run = lambda: list(runner.map(nap, [0.001] * 20))  # noqa: E731
    with runner:
        run()
        seen = runner.insights()
        assert [w.pid for w in seen.workers] == [os.getpid()]
        assert seen.tasks == 20 and seen.workers[0].working >= 0.02
        assert seen.workers[0].bytes_sent > 0 and "inline" in str(seen)
        runner.reset_insights()
        assert runner.insights().tasks == 0
