"""``paralelo.profile()``: cProfile in the caller and every worker (of pools alive and
made meanwhile, respawned ones, ones that leave after maxtasksperchild), merged into one
``pstats.Stats`` naming the worker functions with their call counts, saved as ``.prof``."""

from __future__ import annotations

import os
import pstats
import signal
import sys
import textwrap
import time

import pytest

import paralelo

from scripts import run_group

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


_THREADS = textwrap.dedent("""
    import threading, time
    from concurrent.futures import wait
    import paralelo

    def leaf(n):
        return sum(range(n))

    def work(x):
        return leaf(100) + x

    def slow(x):
        time.sleep(0.3)
        return leaf(100)

    if __name__ == "__main__":
        tp, ex = paralelo.ThreadPool(3), paralelo.ThreadPoolExecutor(2)
        tp.map(work, range(5))  # (before: not profiled)
        with paralelo.profile() as prof:
            assert tp.map(work, range(30), chunksize=4) == [leaf(100) + x for x in range(30)]
            assert tp.apply_async(work, (1,)).get() == leaf(100) + 1
            assert sorted(tp.imap_unordered(work, range(10))) == [leaf(100) + x for x in range(10)]
            wait([ex.submit(work, i) for i in range(7)])
            assert list(ex.map(work, range(5))) == [leaf(100) + x for x in range(5)]
            late = ex.submit(slow, 0)  # still running as the block ends: waited for
            time.sleep(0.05)
        assert late.done()
        tp.map(work, range(5))  # (after: not profiled)
        list(ex.map(work, range(5)))
        tp.close(); tp.join(); ex.shutdown()
        calls = {name: sum(v[1] for f, v in prof.stats.stats.items() if f[2] == name) for name in ("work", "leaf", "slow")}
        assert calls == {"work": 53, "leaf": 54 + 46, "slow": 1}, calls  # (46: the asserts, in the caller)
        assert 1 <= prof.threads <= 5 and prof.missing == 0, (prof.threads, prof.missing)
        print("ok")
""")


def test_thread_pools_tasks_are_profiled_on_their_threads(tmp_path):
    """cProfile (before 3.12) sees one thread: each pool thread runs its tasks under its
    own profile, merged with the rest; a task running as the block ends is waited for."""
    script = tmp_path / "script.py"
    script.write_text(_THREADS)
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


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


def test_lines_times_the_named_functions_in_every_worker_and_the_caller(tmp_path):
    """As users write it, the functions in a script's __main__: each worker's line counts
    and the caller's are merged, and saved as .lprof beside the .prof."""
    pytest.importorskip("line_profiler")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import pickle, sys
        import paralelo

        def helper(x):
            total = 0
            for i in range(x):
                total += i
            return total

        def work(x):
            return helper(x % 10)

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool:
                with paralelo.profile(sys.argv[1], lines=[work, helper]) as prof:
                    results = pool.map(work, range(300), chunksize=10)
                    work(3)
            timings = {name: {line: hits for line, hits, _ in rows}
                       for (_, _, name), rows in prof.lines.timings.items()}
            print(prof.workers, timings["work"], timings["helper"])
            prof.print_lines()
            with open(prof.lines_path, "rb") as f:
                print(type(pickle.load(f)).__name__)
    """))
    out = run_group([sys.executable, str(script), str(tmp_path / "run.prof")], 60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    # 300 calls in the workers and one in the caller; helper's loop ran sum(x % 10) + 3 times.
    loops = sum(x % 10 for x in range(300)) + 3
    assert first == f"2 {{12: 301}} {{6: 301, 7: {loops + 301}, 8: {loops}, 9: 301}}"
    assert "Function: work at line 11" in out.stdout and out.stdout.rstrip().endswith("LineStats")


def test_lines_refuses_what_is_not_a_function():
    with pytest.raises(TypeError, match="lines= takes Python functions"):
        with paralelo.profile(lines=[len]):
            pass
    with pytest.raises(TypeError, match=r"lines=\[work\], not lines=work"):
        with paralelo.profile(lines=leaf):
            pass


def test_lines_finds_a_function_that_travelled_by_value(tmp_path):
    """Made after the pool (so its workers do not have it by name): each worker times
    the copy it was sent."""
    pytest.importorskip("line_profiler")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import paralelo

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool, paralelo.ProcessPoolExecutor(2) as ex:
                def late(x):
                    return x + 1
                with paralelo.profile(lines=[late]) as prof:
                    print(sum(pool.map(late, range(500), chunksize=10)))
                    print(sum(pool.apply_async(late, (i,)).get() for i in range(20)))  # calls, each by value
                    print(sum(ex.submit(late, i).result() for i in range(20)))
            print({name: rows[0][1] for (_, _, name), rows in prof.lines.timings.items()})
    """))
    out = run_group([sys.executable, str(script)], 60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["125250", "210", "210", "{'late': 540}"]


def test_lines_without_line_profiler_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "line_profiler", None)
    with pytest.raises(ImportError, match="pip install line_profiler"):
        with paralelo.profile(lines=[leaf]):
            pass
