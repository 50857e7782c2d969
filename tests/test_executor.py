"""paralelo.ProcessPoolExecutor against concurrent.futures.ProcessPoolExecutor."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import paralelo

T = 30

os.environ.setdefault("PARALELO_TESTS_MAIN_PID", str(os.getpid()))

MP = multiprocessing.get_context("fork" if sys.version_info < (3, 12) else "forkserver")


# -- functions sent to workers ------------------------------------------------------------


def square(x):
    return x * x


def power(base, exp, mod=None):
    return pow(base, exp, mod)


def sleep_then_return(seconds, value=None):
    time.sleep(seconds)
    return value


def getpid(_=None):
    return os.getpid()


def square_and_pid(x):
    return x * x, os.getpid()


class CustomError(Exception):
    pass


def raise_custom(*args):
    raise CustomError("custom", *args)


def raise_on_3(x):
    if x == 3:
        raise CustomError("bad value", x)
    return x


def kill_self(x=None):
    if str(os.getpid()) == os.environ.get("PARALELO_TESTS_MAIN_PID"):
        raise RuntimeError("kill_self must run in a worker")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


_initialized = None


def set_global(value):
    global _initialized
    _initialized = value


def read_global(_=None):
    return _initialized


def failing_initializer():
    raise OSError("cannot initialize")


@pytest.fixture(scope="module")
def mp_executor():
    with cf.ProcessPoolExecutor(2, mp_context=MP) as ex:
        # The stdlib starts its workers on demand: start both now, so that they exist
        # before each test's check for leftover processes takes its snapshot.
        assert list(ex.map(sleep_then_return, [0.2, 0.2])) == [None, None]
        yield ex


# -- the Executor interface -------------------------------------------------------------------


def test_is_an_executor(executor):
    assert issubclass(paralelo.ProcessPoolExecutor, cf.Executor)
    assert isinstance(executor, cf.Executor)


def test_submit_returns_a_standard_future(executor, mp_executor):
    for ex in (executor, mp_executor):
        f = ex.submit(power, 2, 10)
        # (paralelo's is a subclass that asyncio can also await directly)
        assert type(f) in (cf.Future, paralelo.futures.AwaitableFuture)
        assert type(f).__mro__[1:] in ((object,), (cf.Future, object))  # cf.Future's methods, untouched
        assert f.result(T) == 1024
        assert f.done() and not f.cancelled() and not f.running()
        assert f.exception(T) is None
        assert ex.submit(power, 3, exp=3, mod=5).result(T) == 2


def test_submit_lambdas_and_closures(executor):
    base = 10

    def local(x, *, scale=1):
        return (x + base) * scale

    assert executor.submit(lambda: 42).result(T) == 42
    assert executor.submit(local, 1, scale=3).result(T) == 33
    assert executor.submit(getpid).result(T) != os.getpid()
    assert list(executor.map(lambda x: x - base, range(3))) == [-10, -9, -8]


def test_as_completed(executor, mp_executor):
    for ex in (executor, mp_executor):
        futures = {ex.submit(sleep_then_return, d, i): i for i, d in enumerate([0.3, 0.0, 0.1, 0.0])}
        done = []
        for f in cf.as_completed(futures, timeout=T):
            assert f.done()
            done.append(f.result())
        assert sorted(done) == [0, 1, 2, 3]
        assert paralelo.as_completed is cf.as_completed


def test_as_completed_timeout(executor):
    slow = executor.submit(sleep_then_return, 1.0)
    with pytest.raises(TimeoutError):
        for _ in cf.as_completed([slow], timeout=0.05):
            pass
    assert slow.result(T) is None


def test_wait_first_completed(executor):
    slow = executor.submit(sleep_then_return, 0.5, "slow")
    fast = executor.submit(sleep_then_return, 0.0, "fast")
    done, not_done = cf.wait([slow, fast], timeout=T, return_when=cf.FIRST_COMPLETED)
    assert fast in done
    assert slow in not_done
    assert slow.result(T) == "slow"


def test_wait_all_completed(executor, mp_executor):
    for ex in (executor, mp_executor):
        futures = [ex.submit(square, i) for i in range(20)]
        done, not_done = cf.wait(futures, timeout=T, return_when=cf.ALL_COMPLETED)
        assert done == set(futures) and not not_done
        assert [f.result() for f in futures] == [i * i for i in range(20)]


def test_wait_first_exception(executor):
    slow = executor.submit(sleep_then_return, 0.5)
    bad = executor.submit(raise_custom)
    done, not_done = cf.wait([slow, bad], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    assert slow.result(T) is None


def test_wait_timeout(executor):
    slow = executor.submit(sleep_then_return, 0.5)
    done, not_done = cf.wait([slow], timeout=0.01)
    assert not done and not_done == {slow}
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.01)
    with pytest.raises(cf.TimeoutError):
        slow.exception(timeout=0.01)
    assert slow.result(T) is None


def test_add_done_callback(executor):
    called = threading.Event()
    seen = []

    def callback(future):
        seen.append(future)
        called.set()

    f = executor.submit(square, 9)
    f.add_done_callback(callback)
    assert called.wait(T)
    assert seen == [f] and f.result() == 81
    # a callback added after completion runs at once
    late = []
    f.add_done_callback(late.append)
    assert late == [f]


# -- errors ---------------------------------------------------------------------------------------


def test_exception_propagation(executor, mp_executor):
    for ex, rtb in ((executor, paralelo.RemoteTraceback),
                    (mp_executor, cf.process._RemoteTraceback)):
        f = ex.submit(raise_custom, 1, 2)
        exc = f.exception(T)
        assert type(exc) is CustomError
        assert exc.args == ("custom", 1, 2)
        assert isinstance(exc.__cause__, rtb)
        assert "raise_custom" in str(exc.__cause__)
        with pytest.raises(CustomError) as exc_info:
            f.result(T)
        assert exc_info.value.args == ("custom", 1, 2)
    assert executor.submit(square, 3).result(T) == 9


def test_exception_in_map(executor, mp_executor):
    for ex in (executor, mp_executor):
        it = ex.map(raise_on_3, range(6))
        got = []
        with pytest.raises(CustomError) as exc_info:
            for v in it:
                got.append(v)
        assert got == [0, 1, 2]
        assert exc_info.value.args == ("bad value", 3)
    with pytest.raises(CustomError) as exc_info:
        list(executor.map(raise_on_3, range(6), chunksize=4))
    assert isinstance(exc_info.value.__cause__, paralelo.RemoteTraceback)
    assert "raise_on_3" in str(exc_info.value.__cause__)


def test_killed_worker_fails_only_its_future(executor):
    f = executor.submit(kill_self)
    exc = f.exception(T)
    assert isinstance(exc, paralelo.WorkerLostError)
    assert isinstance(exc, BrokenProcessPool)
    with pytest.raises(BrokenProcessPool):
        f.result(T)
    # unlike the stdlib's, the executor stays usable
    assert executor.submit(square, 5).result(T) == 25
    assert list(executor.map(square, range(10))) == [x * x for x in range(10)]


def test_failing_initializer_breaks_the_executor():
    ex = paralelo.ProcessPoolExecutor(2, initializer=failing_initializer)
    try:
        # The workers may already have failed by the time we submit (then submit raises,
        # as the stdlib's does on a broken pool) or not yet (then the future fails).
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2).result(T)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2)
    finally:
        ex.shutdown(wait=True)


# -- cancel and shutdown ----------------------------------------------------------------------


def test_cancel_a_future_that_has_not_started(executor):
    blockers = [executor.submit(sleep_then_return, 0.5, "blocker") for _ in range(2)]
    # more than the workers' queues can hold, so that the last one waits in the parent
    queued = [executor.submit(square, i) for i in range(50)]
    last = queued[-1]
    assert last.cancel() is True
    assert last.cancelled() and last.done()
    with pytest.raises(cf.CancelledError):
        last.result(T)
    with pytest.raises(cf.CancelledError):
        last.exception(T)
    assert [f.result(T) for f in blockers] == ["blocker", "blocker"]
    assert [f.result(T) for f in queued[:-1]] == [i * i for i in range(49)]


def test_cancel_a_finished_future_fails(executor):
    f = executor.submit(square, 4)
    assert f.result(T) == 16
    assert f.cancel() is False
    assert not f.cancelled()


def test_shutdown_then_submit_raises(executor, mp_executor):
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(square, 2)
    with pytest.raises(RuntimeError):
        executor.map(square, range(3))
    executor.shutdown(wait=True)  # twice is fine

    with cf.ProcessPoolExecutor(1, mp_context=MP) as ex:
        pass
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


def test_shutdown_waits_for_submitted_work():
    ex = paralelo.ProcessPoolExecutor(2)
    futures = [ex.submit(sleep_then_return, 0.05, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(0) for f in futures] == list(range(6))


def test_shutdown_without_waiting():
    ex = paralelo.ProcessPoolExecutor(2)
    futures = [ex.submit(sleep_then_return, 0.05, i) for i in range(4)]
    ex.shutdown(wait=False)
    assert [f.result(T) for f in futures] == list(range(4))


def test_shutdown_cancel_futures():
    ex = paralelo.ProcessPoolExecutor(2)
    futures = [ex.submit(sleep_then_return, 0.3, i) for i in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    cancelled = [f for f in futures if f.cancelled()]
    assert cancelled, "nothing was cancelled"
    assert futures[-1].cancelled()
    for f in cancelled:
        with pytest.raises(cf.CancelledError):
            f.result(0)
    for i, f in enumerate(futures):
        if not f.cancelled():
            assert f.result(0) == i


def test_context_manager():
    with paralelo.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(square, i) for i in range(10)]
    assert [f.result(0) for f in futures] == [i * i for i in range(10)]
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


# -- map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_map_matches_builtin_map(executor, mp_executor, chunksize):
    xs, ys = range(60), range(60, 0, -1)
    expected = list(map(power, xs, ys, [1000] * 60))
    assert list(mp_executor.map(power, xs, ys, [1000] * 60, chunksize=chunksize)) == expected
    assert list(executor.map(power, xs, ys, [1000] * 60, chunksize=chunksize)) == expected
    assert list(executor.map(power, xs, ys, [1000] * 60)) == expected


def test_map_stops_at_the_shortest_iterable(executor):
    assert list(executor.map(power, range(10), [2, 2, 2])) == list(map(power, range(10), [2, 2, 2]))
    assert list(executor.map(square, [])) == []
    assert list(executor.map(power, [], [])) == []


def test_map_timeout(executor, mp_executor):
    for ex in (executor, mp_executor):
        it = ex.map(sleep_then_return, [0.0, 1.0], timeout=0.2)
        assert next(it) is None
        with pytest.raises(TimeoutError):
            next(it)
    with pytest.raises(cf.TimeoutError):
        list(executor.map(sleep_then_return, [1.0], timeout=0.05))
    # the executor is still fine (the timed-out call may still be running)
    assert list(executor.map(square, range(3), timeout=T)) == [0, 1, 4]


def test_map_bad_chunksize(executor, mp_executor):
    for ex in (executor, mp_executor):
        with pytest.raises(ValueError):
            ex.map(square, range(3), chunksize=0)


def test_map_is_lazy_in_results(executor):
    it = executor.map(square, range(1000), chunksize=10)
    assert next(it) == 0
    assert list(it) == [x * x for x in range(1, 1000)]


# -- asyncio ------------------------------------------------------------------------------------


def test_asyncio_run_in_executor(executor):
    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(executor, square, x) for x in range(10)))
        one = await loop.run_in_executor(executor, power, 2, 5)
        return results, one

    assert asyncio.run(main()) == ([x * x for x in range(10)], 32)


def test_asyncio_wrap_future(executor):
    async def main():
        ok = await asyncio.wrap_future(executor.submit(square, 7))
        with pytest.raises(CustomError):
            await asyncio.wrap_future(executor.submit(raise_custom))
        done = await asyncio.wait_for(asyncio.wrap_future(executor.submit(sleep_then_return, 0.05, "x")), T)
        return ok, done

    assert asyncio.run(main()) == (49, "x")


# -- constructor arguments ---------------------------------------------------------------------


def test_initializer():
    with paralelo.ProcessPoolExecutor(2, initializer=set_global, initargs=("ready",)) as ex:
        assert [ex.submit(read_global).result(T) for _ in range(4)] == ["ready"] * 4
        assert list(ex.map(read_global, range(10), chunksize=1)) == ["ready"] * 10
    with cf.ProcessPoolExecutor(1, mp_context=MP, initializer=set_global, initargs=("ready",)) as ex:
        assert ex.submit(read_global).result(T) == "ready"


def test_max_tasks_per_child():
    with paralelo.ProcessPoolExecutor(2, max_tasks_per_child=1) as ex:
        futures = [ex.submit(square_and_pid, i) for i in range(12)]
        out = [f.result(T) for f in futures]
        mapped = list(ex.map(square_and_pid, range(12), timeout=T, chunksize=1))
    assert [r for r, _ in out] == [i * i for i in range(12)]
    assert [r for r, _ in mapped] == [i * i for i in range(12)]
    pids = {pid for _, pid in out}
    assert len(pids) > 2
    assert os.getpid() not in pids


def test_default_max_workers():
    with paralelo.ProcessPoolExecutor() as ex:
        assert ex.submit(square, 3).result(T) == 9


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -1}, ValueError),
        ({"max_tasks_per_child": 0}, ValueError),
        ({"max_tasks_per_child": -1}, ValueError),
        ({"max_tasks_per_child": "x"}, TypeError),
        ({"initializer": 5}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        paralelo.ProcessPoolExecutor(**kwargs)
    stdlib_kwargs = dict(kwargs)
    if "max_tasks_per_child" in kwargs:
        stdlib_kwargs["mp_context"] = multiprocessing.get_context("spawn")
    with pytest.raises(error):
        cf.ProcessPoolExecutor(**stdlib_kwargs)


class _Payload:
    """Something weakly referenceable to travel as an argument or come back as a result."""


def _make_payload(_: int) -> _Payload:
    return _Payload()


def _one(_: object) -> int:
    return 1


def test_neither_a_done_call_nor_a_result_iterator_keeps_what_it_handed_over() -> None:
    import gc
    import weakref

    with paralelo.ProcessPoolExecutor(2) as ex:
        arg = _Payload()
        sent = weakref.ref(arg)
        future = ex.submit(_one, arg)
        assert future.result(T) == 1
        del arg
        gc.collect()
        assert sent() is None, "a completed call still holds its arguments"
        for results in (ex.map(_make_payload, range(6)), (f.result() for f in cf.as_completed(
                [ex.submit(_make_payload, i) for i in range(6)]))):
            got = []
            for value in results:
                got.append(weakref.ref(value))
                del value
            gc.collect()
            assert all(w() is None for w in got), "a result iterator kept results it yielded"


CTRL_C = """
import os, signal, sys, threading, time
import paralelo

def sleeps(x):
    time.sleep(300)  # (never over: the program ends long before, or the test times out)
    return x

if __name__ == "__main__":
    # A terminal's Ctrl-C: the parent gets SIGINT (its workers ignore it).
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    if sys.argv[1] == "with":
        with paralelo.ProcessPoolExecutor(2) as ex:
            list(ex.map(sleeps, range(4)))
    else:
        ex = paralelo.ProcessPoolExecutor(2)
        list(ex.map(sleeps, range(4)))
"""


@pytest.mark.parametrize("how", ["with", "bare"])
def test_ctrl_c_stops_the_executor_s_running_work(tmp_path, how) -> None:
    # As the standard executor's workers die of the same Ctrl-C: neither the with-block's
    # shutdown nor the exit waits for the tasks to end.
    script = tmp_path / "script.py"
    script.write_text(CTRL_C)
    out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stderr.rstrip().endswith("KeyboardInterrupt"), out.stderr
