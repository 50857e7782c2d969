"""Deaths outside a task's body still end in an exception, never in a respawn loop or a
hang: an argument or a function that kills the worker while being unpickled, an
initializer that exits, a killed zygote, an executor dropped with work pending."""

from __future__ import annotations

import os
import signal
import time

import pytest

import paralelo

T = 30


class Bomb:
    """Kills the process that unpickles it."""

    def __reduce__(self):
        return (os._exit, (3,))


class BombFunction:
    def __call__(self, x):
        return x

    def __reduce__(self):
        return (os._exit, (4,))


def test_an_argument_that_kills_its_worker_fails_only_its_own_item() -> None:
    with paralelo.Pool(2) as pool:
        it = pool.imap(abs, [-1, -2, -3, -4, -5, Bomb(), -7, -8], chunksize=1)
        got = [next(it) for _ in range(5)]
        with pytest.raises(paralelo.WorkerLostError, match="exited with code 3"):
            next(it)
        assert got + list(it) == [1, 2, 3, 4, 5, 7, 8]
        with pytest.raises(paralelo.WorkerLostError):
            pool.map_async(abs, [1, 2, Bomb(), 4], chunksize=1).get(T)
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_a_function_that_kills_its_worker_fails_its_job_only() -> None:
    with paralelo.Pool(2) as pool:
        with pytest.raises(paralelo.WorkerLostError, match="unpickling this job's function"):
            pool.map_async(BombFunction(), [1, 2, 3]).get(T)
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_an_initializer_that_exits_breaks_the_pool_like_concurrent_futures() -> None:
    ex = paralelo.ProcessPoolExecutor(2, initializer=os._exit, initargs=(1,))
    try:
        with pytest.raises(paralelo.BrokenProcessPool, match="initializer"):
            ex.submit(abs, -1).result(T)
        with pytest.raises(paralelo.BrokenProcessPool):
            ex.submit(abs, -1)
    finally:
        ex.shutdown()


def _pending_futures() -> list:
    ex = paralelo.ProcessPoolExecutor(1)
    futures = [ex.submit(time.sleep, 0.05) for _ in range(4)]
    ex.shutdown(wait=False)
    return futures


def test_an_executor_dropped_with_work_pending_finishes_it() -> None:
    assert [f.result(T) for f in _pending_futures()] == [None] * 4
    assert list(paralelo.ProcessPoolExecutor(2).map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]


def _poison(x: int):
    class_ = Poison if x == 3 else None
    return class_() if class_ else x


class Poison:
    """Pickles fine, fails to unpickle in the parent."""

    def __reduce__(self):
        return (int, ("not an int",))


def test_a_result_that_cannot_be_unpickled_fails_only_its_own_units() -> None:
    with paralelo.Pool(2) as pool:
        with pytest.raises(paralelo.ResultUnpicklingError, match="not an int") as info:
            pool.map(_poison, range(10), chunksize=1)
        assert isinstance(info.value.__cause__, ValueError)
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_callbacks_run_outside_the_engine_lock() -> None:
    """A callback that takes the user's lock while another thread submits holding it:
    with callbacks under the engine's lock this deadlocks."""
    import threading

    lock = threading.Lock()
    seen: list[int] = []

    def callback(r: int) -> None:
        with lock:
            seen.append(r)

    with paralelo.Pool(2) as pool, paralelo.ProcessPoolExecutor(2) as ex:
        with lock:
            results = []
            for i in range(30):
                results.append(pool.apply_async(abs, (-i,), callback=callback))
                ex.submit(abs, -i).add_done_callback(lambda f: callback(f.result()))
                time.sleep(0.002)
        for r in results:
            r.get(T)
        deadline = time.monotonic() + T
        while len(seen) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(seen) == sorted(list(range(30)) * 2)


def _slow_inc(x: int) -> int:
    time.sleep(0.002)
    return x + 1


def test_imap_over_imap_on_the_same_pool_does_not_deadlock() -> None:
    """Input iterators are read on the consumer's thread, never under the engine lock or
    on the collector: an imap may read from another imap of the same pool."""
    with paralelo.Pool(2) as pool:
        assert list(pool.imap(_slow_inc, pool.imap(_slow_inc, range(20)))) == [x + 2 for x in range(20)]
        assert sorted(pool.imap_unordered(abs, pool.imap(abs, range(-30, 0)))) == list(range(1, 31))


def test_map_reads_a_generator_on_the_callers_thread_like_multiprocessing() -> None:
    def gen():
        yield from range(5)
        raise KeyError("input")

    with paralelo.Pool(2) as pool:
        with pytest.raises(KeyError):
            pool.map(abs, gen())
        assert pool.map(abs, (x for x in range(-3, 0))) == [3, 2, 1]


def _scribble_over_own_result_ring(flag: str) -> None:
    """Plays a worker whose memory got corrupted: it publishes, in its slot's result ring,
    a frame claiming a gigabyte. Then it waits (it is about to be killed)."""
    import mmap
    import struct

    for name in os.listdir("/proc/self/fd"):
        try:
            if "paralelo-hub" in os.readlink(f"/proc/self/fd/{name}"):
                fd = int(name)
                break
        except OSError:
            continue
    with mmap.mmap(fd, 0) as mem:
        # Rings in slot order (tasks, results); each header starts with its magic, its
        # capacity next, `head` on the next 128-byte line, data after the 768-byte header.
        task_ring = mem.find(b"paloring")
        results = mem.find(b"paloring", task_ring + 8)
        (capacity,) = struct.unpack_from("<Q", mem, results + 8)
        (head,) = struct.unpack_from("<Q", mem, results + 128)
        struct.pack_into("<II", mem, results + 768 + head % capacity, 1 << 30, 16)
        struct.pack_into("<Q", mem, results + 128, head + 40)
    with open(flag, "w"):
        pass
    time.sleep(60)


def test_a_worker_that_corrupts_its_ring_is_replaced_and_its_task_fails_with_the_cause(tmp_path) -> None:
    flag = str(tmp_path / "scribbled")
    with paralelo.Pool(1) as pool:
        assert pool.apply(abs, (-1,)) == 1
        # Taken before the scribble: the collector may see it (and replace the worker) on
        # its own, at the end of any 50 ms slice of its wait, before the flag is seen here.
        old = pool._engine.pids()
        r = pool.apply_async(_scribble_over_own_result_ring, (flag,))
        end = time.monotonic() + T
        while not os.path.exists(flag):
            assert time.monotonic() < end
            time.sleep(0.01)
        pool._engine.hub.wake()  # the collector looks now (a real worker's next send would)
        with pytest.raises(paralelo.WorkerLostError, match="corrupt") as info:
            r.get(T)
        cause = info.value.__cause__
        assert isinstance(cause, paralelo.CorruptRingError) and cause.slot == 0
        assert "frame" in str(cause)
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]  # a new worker took the slot
        assert pool._engine.pids() != old
