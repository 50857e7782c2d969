"""paralelo.ThreadPoolExecutor beside concurrent.futures', and paralelo.pool.ThreadPool
beside multiprocessing's, on the same programs."""

from __future__ import annotations

import threading

import pytest

import paralelo
from scripts import side_by_side

SAME_AS_CONCURRENT_FUTURES = """
import sys, time, threading, logging
import numpy as np
logging.basicConfig(level=logging.CRITICAL + 1)  # (the initializer's failure is logged: not compared)
if sys.argv[1] == "paralelo":
    from paralelo import ThreadPoolExecutor, BrokenThreadPool
else:
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.thread import BrokenThreadPool
from concurrent.futures import CancelledError, as_completed, wait

def show(f):
    try:
        return f()
    except BaseException as e:
        return f"{type(e).__name__}: {e}"

def fails_on_3(x):
    if x == 3:
        raise ValueError(x)
    return x * x

seen = []
def init(tag):
    global mark
    mark = tag

def read_mark(_):
    return mark

def bad_init():
    raise OSError("no")

if __name__ == "__main__":
    before = threading.active_count()
    with ThreadPoolExecutor(4, thread_name_prefix="box") as ex:
        print(list(ex.map(lambda x: x + 1, range(10))))
        print(list(ex.map(pow, [2, 3], [5, 2])))
        got = []
        it = ex.map(fails_on_3, range(6))
        print(show(lambda: [got.append(v) for v in it]), got)
        print(show(lambda: list(ex.map(time.sleep, [0.5, 0.5], timeout=0.05))))
        print(list(ex.map(abs, range(-5, 0), chunksize=2)))
        f = ex.submit(fails_on_3, 3)
        print(show(f.result), type(f.exception()).__name__)
        fs = [ex.submit(fails_on_3, i) for i in (1, 2)]
        print(sorted(f.result() for f in as_completed(fs)), len(wait(fs).done))
        print(all(n.startswith("box_") for n in ex.map(lambda _: threading.current_thread().name, range(20))))
    print(show(lambda: ex.submit(abs, 1)))
    with ThreadPoolExecutor(2, initializer=init, initargs=("set",)) as ex:
        print(set(ex.map(read_mark, range(8))))
    ex = ThreadPoolExecutor(1)
    slow = ex.submit(time.sleep, 0.2)
    queued = [ex.submit(abs, -i) for i in range(3)]
    ex.shutdown(wait=True, cancel_futures=True)
    print(slow.done(), [f.cancelled() for f in queued])
    ex = ThreadPoolExecutor(2, initializer=bad_init)
    f = ex.submit(abs, 1)
    print(show(f.result))
    print(show(lambda: ex.submit(abs, 1)))
    ex.shutdown()
    print(show(lambda: ThreadPoolExecutor(0)), show(lambda: ThreadPoolExecutor(initializer=5)))
    time.sleep(0.05)
    print("threads left", threading.active_count() - before)
    ex = ThreadPoolExecutor(2)
    ex.submit(lambda: (time.sleep(0.2), print("pending work ran at exit")))
"""


def test_the_executor_matches_concurrent_futures(tmp_path) -> None:
    par, std = side_by_side(tmp_path, SAME_AS_CONCURRENT_FUTURES, timeout=60)
    assert par == std
    assert par.endswith("threads left 0\npending work ran at exit")


SAME_AS_MULTIPROCESSING = """
import sys, threading
if sys.argv[1] == "paralelo":
    from paralelo.pool import ThreadPool
else:
    from multiprocessing.pool import ThreadPool

def add(a, b):
    return a + b

if __name__ == "__main__":
    with ThreadPool(3) as pool:
        print(pool.map(abs, range(-4, 4)), pool.starmap(add, [(1, 2), (3, 4)]))
        print(sorted(pool.imap_unordered(abs, [-1, -2])), pool.apply(add, (5, 6)))
        print(pool.apply_async(abs, (-7,)).get(10))
        print(all(t.name.startswith("Thread-") or "Dummy" in t.name for t in threading.enumerate()[1:]))
"""


def test_the_thread_pool_matches_multiprocessing(tmp_path) -> None:
    par, std = side_by_side(tmp_path, SAME_AS_MULTIPROCESSING, timeout=60)
    assert par == std


@pytest.mark.parametrize("chunksize", [0, -3, 2.5, "x"])
def test_a_chunksize_the_standard_thread_executor_ignores_is_ignored(chunksize) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for make in (paralelo.ThreadPoolExecutor, ThreadPoolExecutor):
        with make(2) as ex:
            assert list(ex.map(abs, [-1, -2, -3], chunksize=chunksize)) == [1, 2, 3]


def test_the_thread_pool_reduces() -> None:
    with paralelo.ThreadPool(3) as pool:
        assert pool.reduce(lambda a, b: a + b, ["a", "b", "c", "d", "e"]) == "abcde"
        assert pool.map_reduce(abs, max, [-5, 3, -9]) == 9
        with pytest.raises(TypeError, match="empty iterable"):
            pool.reduce(max, [])


def test_a_dropped_executor_s_threads_end() -> None:
    before = set(threading.enumerate())  # (an earlier test's threads may still be ending)
    ex = paralelo.ThreadPoolExecutor(3)
    assert list(ex.map(abs, range(-30, 0))) == list(range(30, 0, -1))
    threads = list(ex._state.threads)
    del ex
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert not set(threading.enumerate()) - before


@pytest.mark.parametrize("leave", ["break", "raise"])
def test_a_map_left_part_way_starts_no_more_calls_than_the_standard_one(leave) -> None:
    # The caller takes five results, then leaves (or the fifth raised) while the threads
    # are in calls that wait: the standard executor cancels every call not started; so
    # does this one, item by item inside the chunks running (here of five items).
    from concurrent.futures import ThreadPoolExecutor

    def calls(make) -> list:
        ran, gate = [], threading.Event()

        def work(i):
            ran.append(i)
            if i == 4 and leave == "raise":
                raise ValueError(i)
            if i >= 5:
                gate.wait(5)
            return i

        with make(2) as ex:
            it = ex.map(work, range(40), chunksize=5)
            try:
                for _ in range(5):
                    next(it)
            except ValueError:
                pass
            it.close()
            gate.set()
        return sorted(ran)

    # Five taken, and at most what the two threads were in when the caller left (the
    # standard one's count varies with timing: 6 or 7; this one's was 15).
    ours, theirs = calls(paralelo.ThreadPoolExecutor), calls(ThreadPoolExecutor)
    assert len(ours) <= 5 + 2 and len(theirs) <= 5 + 2, (ours, theirs)


def test_a_map_closed_part_way_runs_no_chunk_that_had_not_started() -> None:
    # As the standard map cancels its futures that had not started.
    import time

    ran = []

    def slow(x):
        time.sleep(0.002)
        ran.append(x)

    with paralelo.ThreadPoolExecutor(1) as ex:
        it = ex.map(slow, range(100), chunksize=10)
        next(it)  # the first chunk is done; the second may be running
        it.close()
    assert 10 <= len(ran) <= 20
