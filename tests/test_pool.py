"""paralelo.Pool against multiprocessing.Pool: same inputs, same outputs, same errors."""

from __future__ import annotations

import ctypes
import functools
import itertools
import multiprocessing
import multiprocessing.pool
import operator
import os
import pickle
import signal
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import paralelo

from scripts import run_group

#: Every blocking call in these tests gets this timeout, so a bug shows up as a failure
#: rather than a hang.
T = 30

# Guards the functions below that kill their own process: they must only ever run in a
# worker. Set once by the test process; workers inherit it (environment) and keep it.
os.environ.setdefault("PARALELO_TESTS_MAIN_PID", str(os.getpid()))

#: The stdlib context to compare against: ``fork`` from a process with threads warns on
#: Python >= 3.12 (and warnings are errors here), so use ``forkserver`` there.
MP = multiprocessing.get_context("fork" if sys.version_info < (3, 12) else "forkserver")


# -- functions sent to workers (module level, so that the stdlib can pickle them) ----------


def square(x):
    return x * x


def add(a, b):
    return a + b


def concat(a, b):
    return a + b


def identity(x):
    return x


def power(base, exp, mod=None):
    return pow(base, exp, mod)


def sleep_then_return(seconds, value=None):
    time.sleep(seconds)
    return value


def square_and_pid(x):
    return x * x, os.getpid()


def getpid(_=None):
    return os.getpid()


class CustomError(Exception):
    pass


def raise_custom(x):
    if x == 3:
        raise CustomError("bad value", x)
    return x


def raise_value_error(*args):
    raise ValueError("nope", len(args))


def return_lock():
    return threading.Lock()


def return_lock_for(x):
    return threading.Lock() if x == 2 else x


def kill_self(x=None):
    """SIGKILLs the worker running it (never the test process)."""
    if str(os.getpid()) == os.environ.get("PARALELO_TESTS_MAIN_PID"):
        raise RuntimeError("kill_self must run in a worker")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def kill_self_on_5(x):
    if x == 5:
        kill_self()
    return x


_initialized = None


def set_global(value, other=None):
    global _initialized
    _initialized = (value, other)


def read_global(_=None):
    return _initialized


def failing_generator(n):
    yield from range(n)
    raise KeyError("input broke")


def slow_on_last(x):
    """Quick, except for the last item fed by ``failing_generator(10)``."""
    time.sleep(0.3 if x == 9 else 0.01)
    return x * x


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp_pool():
    with MP.Pool(2) as p:
        yield p


# -- the seed example ----------------------------------------------------------------------


def worker(x):
    return x * 10


def sum_squares(a, b):
    return a + b


def test_seed_example():
    with paralelo.Pool(processes=4) as pool:
        assert pool.map(worker, range(10)) == [x * 10 for x in range(10)]
        assert pool.reduce(sum_squares, pool.map(square, range(10))) == 285


# -- maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_matches_multiprocessing(pool, mp_pool, chunksize):
    xs = list(range(-50, 250))
    expected = list(map(square, xs))
    assert mp_pool.map(square, xs, chunksize or None) == expected
    assert pool.map(square, xs, chunksize) == expected


def test_map_accepts_any_iterable(pool, mp_pool):
    for make in (lambda: range(20), lambda: (x for x in range(20)), lambda: iter(list(range(20))),
                 lambda: tuple(range(20)), lambda: {x: None for x in range(20)}):
        assert pool.map(square, make()) == mp_pool.map(square, make()) == [x * x for x in range(20)]


def test_map_async_callback(pool, mp_pool):
    got, mp_got = [], []
    r = pool.map_async(square, range(30), callback=got.append)
    mr = mp_pool.map_async(square, range(30), callback=mp_got.append)
    assert r.get(T) == mr.get(T) == [x * x for x in range(30)]
    assert got == mp_got == [[x * x for x in range(30)]]
    assert r.ready() and r.successful()


def test_map_async_error_callback(pool, mp_pool):
    errors, mp_errors, called = [], [], []
    r = pool.map_async(raise_custom, range(10), chunksize=1, callback=called.append,
                       error_callback=errors.append)
    mr = mp_pool.map_async(raise_custom, range(10), chunksize=1, callback=called.append,
                           error_callback=mp_errors.append)
    for result in (r, mr):
        with pytest.raises(CustomError) as exc_info:
            result.get(T)
        assert exc_info.value.args == ("bad value", 3)
        assert result.ready() and not result.successful()
    assert called == []
    assert [type(e) for e in errors] == [type(e) for e in mp_errors] == [CustomError]
    assert errors[0].args == mp_errors[0].args


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_starmap_matches_multiprocessing(pool, mp_pool, chunksize):
    args = [(b, e, m) for b in range(2, 7) for e in range(5) for m in (7, 11)]
    expected = list(itertools.starmap(power, args))
    assert mp_pool.starmap(power, args, chunksize) == expected
    assert pool.starmap(power, args, chunksize) == expected


def test_starmap_async(pool, mp_pool):
    args = [(i, i + 1) for i in range(40)]
    got = []
    r = pool.starmap_async(add, args, callback=got.append)
    mr = mp_pool.starmap_async(add, args)
    assert r.get(T) == mr.get(T) == [2 * i + 1 for i in range(40)]
    assert got == [r.get(T)]


@pytest.mark.parametrize("chunksize", [1, 4, 64])
def test_imap_matches_multiprocessing(pool, mp_pool, chunksize):
    xs = range(300)
    expected = [x * x for x in xs]
    assert list(mp_pool.imap(square, xs, chunksize)) == expected
    assert list(pool.imap(square, xs, chunksize)) == expected
    assert list(pool.imap(square, iter(xs))) == expected  # default chunksize


@pytest.mark.parametrize("chunksize", [1, 4, 64])
def test_imap_unordered_matches_multiprocessing(pool, mp_pool, chunksize):
    xs = range(300)
    expected = sorted(x * x for x in xs)
    assert sorted(mp_pool.imap_unordered(square, xs, chunksize)) == expected
    assert sorted(pool.imap_unordered(square, xs, chunksize)) == expected
    assert sorted(pool.imap_unordered(square, iter(xs))) == expected


def test_imap_next_with_timeout(pool):
    it = pool.imap(sleep_then_return, [1.0, 0.0])
    with pytest.raises(paralelo.TimeoutError):
        it.next(timeout=0.05)
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=T) is None
    assert it.next(timeout=T) is None
    with pytest.raises(StopIteration):
        it.next(timeout=T)


def test_empty_iterables(pool, mp_pool):
    for p in (pool, mp_pool):
        assert p.map(square, []) == []
        assert p.map(square, iter(())) == []
        assert p.starmap(add, []) == []
        assert list(p.imap(square, [])) == []
        assert list(p.imap_unordered(square, iter([]))) == []
        assert p.map_async(square, []).get(T) == []
        assert p.starmap_async(add, []).get(T) == []
    got = []
    assert pool.map_async(square, [], callback=got.append).get(T) == []
    assert got == [[]]


# -- single calls ----------------------------------------------------------------------------


def test_apply(pool, mp_pool):
    for p in (pool, mp_pool):
        assert p.apply(power, (3, 4)) == 81
        assert p.apply(power, (3,), {"exp": 4, "mod": 5}) == 1
        assert p.apply(getpid) != os.getpid()


def test_apply_async_with_callback(pool, mp_pool):
    for p in (pool, mp_pool):
        got, errors = [], []
        r = p.apply_async(power, (2, 10), callback=got.append, error_callback=errors.append)
        assert r.get(T) == 1024
        assert got == [1024] and errors == []
        r = p.apply_async(raise_value_error, (1, 2), callback=got.append, error_callback=errors.append)
        with pytest.raises(ValueError):
            r.get(T)
        assert got == [1024]
        assert len(errors) == 1 and type(errors[0]) is ValueError and errors[0].args == ("nope", 2)


def test_async_result_states(pool, mp_pool):
    for p in (pool, mp_pool):
        r = p.apply_async(sleep_then_return, (0.5, "done"))
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()
        assert r.wait(0.01) is None
        assert not r.ready()
        r.wait(T)
        assert r.ready()
        assert r.successful()
        assert r.get(T) == "done"
        assert r.get(0) == "done"  # a second get returns it again

        bad = p.apply_async(raise_value_error)
        bad.wait(T)
        assert bad.ready()
        assert not bad.successful()
        for _ in range(2):
            with pytest.raises(ValueError, match="nope"):
                bad.get(T)


def test_get_timeout_is_both_timeout_errors(pool, mp_pool):
    r = pool.apply_async(sleep_then_return, (1.0,))
    with pytest.raises(paralelo.TimeoutError):
        r.get(timeout=0.01)
    try:
        r.get(timeout=0.01)
    except multiprocessing.TimeoutError:
        pass
    else:
        pytest.fail("multiprocessing.TimeoutError did not catch it")
    try:
        r.get(timeout=0.01)
    except TimeoutError:  # the builtin, which is also concurrent.futures.TimeoutError
        pass
    else:
        pytest.fail("TimeoutError did not catch it")
    assert not r.ready()
    assert r.get(T) is None

    # The stdlib raises multiprocessing.TimeoutError the same way.
    mr = mp_pool.apply_async(sleep_then_return, (0.5,))
    with pytest.raises(multiprocessing.TimeoutError):
        mr.get(timeout=0.01)
    assert mr.get(T) is None


def test_map_async_get_timeout(pool):
    r = pool.map_async(sleep_then_return, [0.5, 0.5, 0.5])
    with pytest.raises(TimeoutError):
        r.get(0.05)
    assert r.get(T) == [None, None, None]


# -- lifetime ----------------------------------------------------------------------------------


CALLS_ON_A_STOPPED_POOL = {
    "map": lambda p: p.map(square, range(3)),
    "map_async": lambda p: p.map_async(square, range(3)),
    "starmap": lambda p: p.starmap(add, [(1, 2)]),
    "starmap_async": lambda p: p.starmap_async(add, [(1, 2)]),
    "imap": lambda p: p.imap(square, range(3)),
    "imap_unordered": lambda p: p.imap_unordered(square, range(3)),
    "apply": lambda p: p.apply(square, (3,)),
    "apply_async": lambda p: p.apply_async(square, (3,)),
}

PARALELO_ONLY_CALLS = {
    "reduce": lambda p: p.reduce(add, range(10)),
    "map_reduce": lambda p: p.map_reduce(square, add, range(10)),
}


def test_closed_pool_rejects_work(mp_pool):
    p = paralelo.Pool(2)
    try:
        r = p.apply_async(sleep_then_return, (0.2, "finished"))
        m = p.map_async(square, range(20))
        p.close()
        for name, call in {**CALLS_ON_A_STOPPED_POOL, **PARALELO_ONLY_CALLS}.items():
            with pytest.raises(ValueError, match="Pool not running"):
                call(p)
        p.close()  # closing twice is fine
        p.join()
        # work submitted before close still completes
        assert r.get(T) == "finished"
        assert m.get(T) == [x * x for x in range(20)]
    finally:
        p.terminate()

    with MP.Pool(1) as sp:
        sp.close()
        for name, call in CALLS_ON_A_STOPPED_POOL.items():
            with pytest.raises(ValueError, match="Pool not running"):
                call(sp)
        sp.join()


def test_join_on_running_pool_raises(pool, mp_pool):
    for p in (pool, mp_pool):
        with pytest.raises(ValueError):
            p.join()
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_terminate_fails_pending_results_instead_of_hanging():
    p = paralelo.Pool(2)
    running = [p.apply_async(sleep_then_return, (10,)) for _ in range(4)]
    m = p.map_async(sleep_then_return, [10] * 4, chunksize=1)
    t0 = time.monotonic()
    p.terminate()
    p.join()  # join after terminate is allowed
    for r in [*running, m]:
        with pytest.raises(Exception):
            r.get(T)
        assert r.ready() and not r.successful()
    assert time.monotonic() - t0 < 5
    for name, call in CALLS_ON_A_STOPPED_POOL.items():
        with pytest.raises(ValueError, match="Pool not running"):
            call(p)
    p.terminate()  # terminating twice is fine


def test_context_manager():
    with paralelo.Pool(2) as p:
        assert isinstance(p, paralelo.Pool)
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, range(5))
    with pytest.raises(ValueError):
        with p:
            pass

    with MP.Pool(1) as sp:
        pass
    with pytest.raises(ValueError, match="Pool not running"):
        sp.map(square, range(5))


def test_pool_cannot_be_pickled(pool):
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


# -- constructor arguments ---------------------------------------------------------------------


def test_initializer_and_initargs():
    with paralelo.Pool(2, initializer=set_global, initargs=("hello", 42)) as p:
        assert p.map(read_global, range(20), chunksize=1) == [("hello", 42)] * 20
        assert p.apply(read_global) == ("hello", 42)
    with MP.Pool(1, initializer=set_global, initargs=("hello", 42)) as sp:
        assert sp.map(read_global, range(3)) == [("hello", 42)] * 3


def test_initializer_closure():
    factor = 2

    def init(v):
        set_global(v * factor, "closure")

    with paralelo.Pool(2, initializer=init, initargs=[7]) as p:
        assert p.map(read_global, range(10), chunksize=1) == [(14, "closure")] * 10
    with paralelo.Pool(1, initializer=lambda: set_global("lambda")) as p:
        assert p.apply(read_global) == ("lambda", None)
    assert read_global() is None  # the parent's module state is untouched


def test_initializer_that_raises_breaks_the_pool_instead_of_hanging():
    def init():
        raise OSError("cannot initialize")

    p = paralelo.Pool(2, initializer=init)
    try:
        with pytest.raises(BrokenProcessPool):
            p.map_async(square, range(10)).get(T)
    finally:
        p.terminate()


def test_maxtasksperchild():
    with paralelo.Pool(2, maxtasksperchild=1) as p:
        out = p.map(square_and_pid, range(24), chunksize=1)
        assert [r for r, _ in out] == [x * x for x in range(24)]
        pids = {pid for _, pid in out}
        assert len(pids) > 2  # each worker served one task, then was replaced
        assert os.getpid() not in pids
        results = [p.apply_async(square_and_pid, (x,)) for x in range(10)]
        out = [r.get(T) for r in results]
        assert [r for r, _ in out] == [x * x for x in range(10)]
        assert len({pid for _, pid in out}) > 2


def test_maxtasksperchild_with_larger_limit():
    with paralelo.Pool(2, maxtasksperchild=5) as p:
        out = p.map(square_and_pid, range(60), chunksize=1)
        assert [r for r, _ in out] == [x * x for x in range(60)]
        assert len({pid for _, pid in out}) >= 12  # 60 tasks at 5 per worker


# A regression test for worker recycling: Engine._check_liveness once named dead workers
# by pidfd number, so a replacement whose pidfd reused a retired worker's number was
# retired too while alive, leaving two workers on one slot (corrupted rings, KeyErrors and
# SIGSEGV in workers, segfaults in the parent, hung shutdowns). It runs in a fresh
# interpreter (see conftest.Isolated) because such a bug can crash the process that owns
# the pool; any worker traceback or crash fails it.
MAXTASKS_SCRIPT = """
import faulthandler, json, os, sys, time
import paralelo

def square_and_pid(x):
    return x * x, os.getpid()

maxtasks, n, pools, budget = (int(a) for a in sys.argv[1:5])
faulthandler.dump_traceback_later(budget + 10, exit=True)  # a hang fails, with a traceback
pids, t0, done = set(), time.monotonic(), 0
while done < pools and time.monotonic() - t0 < budget:
    with paralelo.Pool(2, maxtasksperchild=maxtasks) as p:
        out = p.map_async(square_and_pid, range(n), chunksize=1).get(10)
        assert [r for r, _ in out] == [x * x for x in range(n)], out
        single = [p.apply_async(square_and_pid, (x,)) for x in range(10)]
        single = [r.get(10) for r in single]
        assert [r for r, _ in single] == [x * x for x in range(10)], single
    pids |= {pid for _, pid in out}
    done += 1
with paralelo.ProcessPoolExecutor(2, max_tasks_per_child=maxtasks) as ex:
    futures = [ex.submit(square_and_pid, x) for x in range(n)]
    assert [f.result(10)[0] for f in futures] == [x * x for x in range(n)]
assert os.getpid() not in pids
print(json.dumps({"pools": done, "pids": len(pids)}))
"""


def test_maxtasksperchild_recycles_workers_safely(isolated):
    report = isolated.result(isolated(MAXTASKS_SCRIPT, 1, 24, 20, 3))
    assert report["pools"] >= 3
    assert report["pids"] > 2 * report["pools"]


def test_processes_default_and_explicit():
    with paralelo.Pool() as p:
        assert p.map(square, range(10)) == [x * x for x in range(10)]
    with paralelo.Pool(1) as p:
        assert len(set(p.map(getpid, range(20), chunksize=1))) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"processes": 0}, ValueError),
        ({"processes": -1}, ValueError),
        ({"initializer": 3}, TypeError),
        ({"initializer": "not callable"}, TypeError),
        ({"maxtasksperchild": 0}, ValueError),
        ({"maxtasksperchild": -2}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        paralelo.Pool(**kwargs)
    with pytest.raises(error):
        MP.Pool(**kwargs)


@pytest.mark.parametrize("chunksize", [0, -1])
def test_bad_chunksize(pool, mp_pool, chunksize):
    with pytest.raises(ValueError):
        pool.map(square, range(10), chunksize)
    with pytest.raises(ValueError):
        pool.map_async(square, range(10), chunksize)
    with pytest.raises(ValueError):
        pool.starmap(add, [(1, 2)], chunksize)
    with pytest.raises(ValueError):
        pool.imap(square, range(10), chunksize)
    with pytest.raises(ValueError):
        pool.imap_unordered(square, range(10), chunksize)
    with pytest.raises(ValueError):
        mp_pool.imap(square, range(10), chunksize)
    assert pool.map(square, range(3)) == [0, 1, 4]


# -- what can be sent ----------------------------------------------------------------------


def test_lambdas_closures_and_local_functions(pool):
    offset = 100

    def local(x):
        return x + offset

    class Local:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return x * self.k

    assert pool.map(lambda x: x * 3, range(10)) == [x * 3 for x in range(10)]
    assert pool.map(local, range(10)) == [x + 100 for x in range(10)]
    assert pool.map(Local(5), range(10)) == [x * 5 for x in range(10)]
    assert pool.starmap(lambda a, b: a - b, [(5, 1), (9, 3)]) == [4, 6]
    assert list(pool.imap(lambda x: -x, range(5))) == [0, -1, -2, -3, -4]
    assert sorted(pool.imap_unordered(local, range(5))) == [100, 101, 102, 103, 104]
    assert pool.apply(lambda a, b=2: a**b, (7,)) == 49
    assert pool.apply_async(local, (1,)).get(T) == 101
    modpow = functools.partial(power, mod=7)
    assert pool.starmap(modpow, [(x, x) for x in range(10)], chunksize=3) == [pow(x, x, 7) for x in range(10)]
    assert pool.map(square, range(10)) == [x * x for x in range(10)]  # module functions


def test_local_objects_as_arguments_and_results(pool):
    class Point:
        def __init__(self, x):
            self.x = x

    # a class plain pickle cannot name travels by value (cloudpickle), both ways, and
    # comes back as the very class it left as
    assert pool.apply(lambda: sum(range(10))) == 45
    assert pool.map(lambda x: {"k": [x, (x,)]}, range(3)) == [{"k": [x, (x,)]} for x in range(3)]
    made = pool.apply_async(lambda: Point(1)).get(T)
    assert type(made) is Point and made.x == 1
    moved = pool.map(lambda p: Point(p.x + 1), [Point(i) for i in range(3)])
    assert [type(p) for p in moved] == [Point] * 3 and [p.x for p in moved] == [1, 2, 3]
    assert pool.map(square, range(4)) == [0, 1, 4, 9]


# -- errors from workers -------------------------------------------------------------------


def _assert_remote(exc, remote_traceback_type, function_name):
    cause = exc.__cause__
    assert isinstance(cause, remote_traceback_type)
    assert function_name in str(cause)
    assert "Traceback" in str(cause)


def test_worker_exception_parity(pool, mp_pool):
    for p, rtb in ((pool, paralelo.RemoteTraceback), (mp_pool, multiprocessing.pool.RemoteTraceback)):
        with pytest.raises(CustomError) as exc_info:
            p.map(raise_custom, range(10))
        assert type(exc_info.value) is CustomError
        assert exc_info.value.args == ("bad value", 3)
        _assert_remote(exc_info.value, rtb, "raise_custom")

        with pytest.raises(CustomError) as exc_info:
            p.apply(raise_custom, (3,))
        assert exc_info.value.args == ("bad value", 3)
        _assert_remote(exc_info.value, rtb, "raise_custom")

        with pytest.raises(ValueError) as exc_info:
            p.starmap(raise_value_error, [(1, 2, 3)])
        assert exc_info.value.args == ("nope", 3)
        _assert_remote(exc_info.value, rtb, "raise_value_error")

        it = p.imap(raise_custom, range(6), 1)
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(CustomError) as exc_info:
            next(it)
        assert exc_info.value.args == ("bad value", 3)

        with pytest.raises(CustomError):
            list(p.imap_unordered(raise_custom, range(6)))

        r = p.apply_async(raise_custom, (3,))
        with pytest.raises(CustomError):
            r.get(T)
        assert not r.successful()
    # the pool keeps working after its tasks raised
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_exception_from_a_lambda_names_it_in_the_traceback(pool):
    def explode(x):
        return {}[x]

    with pytest.raises(KeyError) as exc_info:
        pool.map(explode, ["missing"])
    assert exc_info.value.args == ("missing",)
    _assert_remote(exc_info.value, paralelo.RemoteTraceback, "explode")


_UNREBUILDABLE = textwrap.dedent("""
    import paralelo

    class TwoArgError(Exception):
        \"\"\"Pickles, but cannot be unpickled: its __init__ needs two arguments, args has one.\"\"\"

        def __init__(self, a, b):
            super().__init__(a)

    def raise_two_arg_error(_=None):
        raise TwoArgError(1, 2)

    def square(x):
        return x * x

    if __name__ == "__main__":
        with paralelo.Pool(2) as pool:
            try:
                pool.apply_async(raise_two_arg_error).get(30)
            except Exception as e:
                print(type(e).__name__, "TwoArgError" in str(e), type(e.__cause__).__name__,
                      "raise_two_arg_error" in str(e.__cause__))
            try:
                pool.map(lambda x: raise_two_arg_error(), range(3))
            except paralelo.RemoteError as e:
                print("map", type(e).__name__)
            print(pool.map(square, range(5)))
""")


def test_exception_that_cannot_be_rebuilt_is_reported_with_the_worker_traceback(tmp_path):
    """(A script of its own: a library that changes how exceptions pickle, tblib's
    ``pickling_support``, which ``distributed`` installs on import, rebuilds it.)"""
    script = tmp_path / "script.py"
    script.write_text(_UNREBUILDABLE)
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["RemoteError True RemoteTraceback True", "map RemoteError", "[0, 1, 4, 9, 16]"]


def test_unpicklable_result_raises_instead_of_hanging(pool, mp_pool):
    with pytest.raises(Exception):
        pool.apply_async(return_lock).get(T)
    with pytest.raises(Exception):
        pool.map_async(return_lock_for, range(5)).get(T)
    with pytest.raises(Exception):
        list(pool.imap(return_lock_for, range(5)))
    with pytest.raises(Exception):
        mp_pool.map_async(return_lock_for, range(5)).get(T)
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_argument_raises_instead_of_hanging(pool):
    lock = threading.Lock()
    with pytest.raises(Exception):
        pool.map_async(identity, [1, lock, 3]).get(T)
    with pytest.raises(Exception):
        pool.apply_async(identity, (lock,)).get(T)
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


# -- reduce and map_reduce -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 100, 1001])
def test_reduce_keeps_operand_order(pool, n):
    words = [f"<{i}>" for i in range(n)]
    assert pool.reduce(concat, words) == "".join(words) == functools.reduce(concat, words)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 1000])
def test_reduce_addition(pool, n):
    assert pool.reduce(add, range(n)) == functools.reduce(add, range(n)) == sum(range(n))
    assert pool.reduce(operator.add, iter(range(n))) == sum(range(n))


def test_reduce_with_initializer(pool):
    assert pool.reduce(add, range(100), 1000) == functools.reduce(add, range(100), 1000)
    assert pool.reduce(concat, list("abcdef"), "X") == functools.reduce(concat, list("abcdef"), "X") == "Xabcdef"
    assert pool.reduce(add, [], 5) == functools.reduce(add, [], 5) == 5
    assert pool.reduce(concat, ["only"]) == "only"
    assert pool.reduce(lambda a, b: a * b, range(1, 12)) == functools.reduce(operator.mul, range(1, 12))


def test_reduce_of_empty_input_without_initializer(pool):
    with pytest.raises(TypeError):
        functools.reduce(add, [])
    with pytest.raises(TypeError):
        pool.reduce(add, [])
    with pytest.raises(TypeError):
        pool.reduce(add, iter(()))


def test_reduce_propagates_errors(pool):
    with pytest.raises(TypeError):
        pool.reduce(add, [1, "a", 2, 3])


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_reduce(pool, chunksize):
    xs = list(range(500))
    assert pool.map_reduce(square, add, xs, chunksize=chunksize) == functools.reduce(add, map(square, xs))
    words = [str(i) for i in range(200)]
    assert pool.map_reduce(str.upper, concat, words, chunksize=chunksize) == "".join(words)
    assert pool.map_reduce(square, add, xs, 10, chunksize=chunksize) == functools.reduce(add, map(square, xs), 10)


def test_map_reduce_edge_cases(pool):
    assert pool.map_reduce(square, add, [], 7) == 7
    with pytest.raises(TypeError):
        pool.map_reduce(square, add, [])
    assert pool.map_reduce(square, add, [3]) == 9
    assert pool.map_reduce(lambda s: s * 2, concat, iter("abc")) == "aabbcc"


# -- inputs that fail, inputs that never end -------------------------------------------------------


def test_map_over_a_failing_generator(pool, mp_pool):
    for p in (pool, mp_pool):
        with pytest.raises(KeyError, match="input broke"):
            p.map(square, failing_generator(10))
        with pytest.raises(KeyError, match="input broke"):
            p.map_async(square, failing_generator(10)).get(T)
    assert pool.map(square, range(3)) == [0, 1, 4]


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_imap_over_a_failing_generator(pool, chunksize):
    out = []
    with pytest.raises(KeyError, match="input broke"):
        for value in pool.imap(square, failing_generator(50), chunksize):
            out.append(value)
    assert out == [x * x for x in range(len(out))]  # what came is a correct prefix
    with pytest.raises(KeyError, match="input broke"):
        list(pool.imap_unordered(square, failing_generator(50), chunksize))
    assert pool.map(square, range(3)) == [0, 1, 4]


def test_imap_yields_every_result_before_the_input_error(pool, mp_pool):
    expected = [x * x for x in range(10)]
    mp_out = []
    with pytest.raises(KeyError):
        for value in mp_pool.imap(slow_on_last, failing_generator(10), 1):
            mp_out.append(value)
    assert mp_out == expected

    out = []
    with pytest.raises(KeyError):
        for value in pool.imap(slow_on_last, failing_generator(10), 1):
            out.append(value)
    assert out == expected


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_is_lazy_on_an_infinite_input(ordered):
    p = paralelo.Pool(2)
    try:
        imap = p.imap if ordered else p.imap_unordered
        first = list(itertools.islice(imap(square, itertools.count()), 1000))
        if ordered:
            assert first == [x * x for x in range(1000)]
        else:
            assert len(set(first)) == 1000
    finally:
        p.terminate()


def _count_drawn(counter):
    for i in itertools.count():
        counter[0] = i + 1
        yield i


def _wait_for_readahead(counter, limit, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and counter[0] <= limit:
        time.sleep(0.01)
    return counter[0]


def test_imap_readahead_is_bounded_with_explicit_chunksize():
    drawn = [0]
    p = paralelo.Pool(2)
    try:
        it = p.imap(square, _count_drawn(drawn), chunksize=1)
        assert list(itertools.islice(it, 100)) == [x * x for x in range(100)]
        seen = _wait_for_readahead(drawn, 20_000, 0.5)
    finally:
        p.terminate()
    assert seen <= 20_000


def test_imap_readahead_is_bounded_with_adaptive_chunks():
    drawn = [0]
    p = paralelo.Pool(2)
    try:
        it = p.imap(square, _count_drawn(drawn))
        assert list(itertools.islice(it, 1000)) == [x * x for x in range(1000)]
        seen = _wait_for_readahead(drawn, 1_000_000, 1.0)
    finally:
        p.terminate()
    assert seen <= 1_000_000


def _big_items(counter, size):
    for i in itertools.count():
        counter[0] = i + 1
        yield bytes(size)


def _big_result(n):
    return bytes(n)


def test_imap_readahead_is_bounded_in_bytes():
    """Items of 4 MB, then results of 4 MB: a slow consumer holds ≈ READ_AHEAD_BYTES of
    them read ahead (or two per worker), not thousands of items' worth."""
    from paralelo._engine.jobs import READ_AHEAD_BYTES

    bound = max(4, READ_AHEAD_BYTES // (4 << 20)) + 8  # + what is in flight as it shrinks
    drawn = [0]
    p = paralelo.Pool(2)
    try:
        it = p.imap(len, _big_items(drawn, 4 << 20))
        assert list(itertools.islice(it, 3)) == [4 << 20] * 3
        seen = _wait_for_readahead(drawn, 3 + bound, 1.0)
        assert seen <= 3 + bound, seen
        # Small items, 4 MB results: the items may be read ahead, but no more are sent
        # than the results' bound allows (each sent one comes back as 4 MB held here).
        it = p.imap(_big_result, (4 << 20 for _ in itertools.count()))
        assert len(next(it)) == 4 << 20
        time.sleep(1.0)
        assert it.job.sent_items - it.consumed_items() <= bound, it.job.sent_items
    finally:
        p.terminate()


def test_imap_of_big_items_in_the_callers_chunks_never_stalls():
    """The bytes bound on the read-ahead still leaves room for whole chunks of the
    caller's size (dispatch only cuts whole ones until the input ends)."""
    p = paralelo.Pool(2)
    try:
        it = p.imap(len, (bytes(100_000) for _ in range(3000)), chunksize=1000)
        assert sum(it) == 3000 * 100_000
    finally:
        p.terminate()


def _len_and_pid(data):
    return len(data), os.getpid()


def test_the_callers_chunks_of_big_arguments_spread_over_the_workers(pool):
    """A cheap function over big arguments: what a unit costs its worker includes loading
    them, so no worker is handed nearly every unit at once."""
    out = pool.map(_len_and_pid, [bytes(4 << 20)] * 30, chunksize=1)
    assert {n for n, _ in out} == {4 << 20}
    per_worker = [sum(1 for _, pid in out if pid == p) for p in {pid for _, pid in out}]
    assert len(per_worker) == 2 and min(per_worker) >= 5, per_worker


class _InterruptsPickling:
    def __reduce__(self):
        raise KeyboardInterrupt


def test_ctrl_c_while_a_map_is_pickled_raises_it_and_the_pool_goes_on(pool):
    # (The first item is pickled by the calling thread; later ones by the collector.)
    with pytest.raises(KeyboardInterrupt):
        pool.map(square, [_InterruptsPickling(), 2, 3, 4], chunksize=1)
    with pytest.raises(KeyboardInterrupt):
        pool.apply_async(square, (_InterruptsPickling(),))
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    # Off the main thread a KeyboardInterrupt can only come from the object itself: a
    # pickling error, as any other exception a __reduce__ raises.
    box = []
    t = threading.Thread(target=lambda: box.append(pool.apply_async(square, (_InterruptsPickling(),))))
    t.start()
    t.join()
    with pytest.raises(pickle.PicklingError):
        box[0].get(10)


def _big_bytes(n):
    return bytes(n)


def _large_mappings(pid="self", least_mb=40):
    """Resident mappings of at least `least_mb` MB in process `pid`; not the arena, whose
    free memory stays resident for reuse by design (its blocks in use are counted by its
    own tests)."""
    out, name = [], ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not line[0].isupper():
                name = line.strip()
            elif fields[0] == "Rss:" and int(fields[1]) >= least_mb * 1024 and "paralelo-arena" not in name:
                out.append((int(fields[1]) // 1024, name))
    return out


def test_no_large_message_stays_held_once_its_result_is_dropped(pool):
    """A 100 MB result, not kept: neither the parent nor the workers hold its size after
    (a fragment buffer, a payload left in a variable until the next message)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", lambda _: 0)  # (glibc's)
    trim(0)
    # (What earlier tests on this module's pool left resident is theirs: only what this
    # message leaves counts.)
    before = {pid: {name: mb for mb, name in _large_mappings(pid)} for pid in ["self", *pool._engine.pids()]}
    assert [len(b) for b in pool.map(_big_bytes, [100 << 20, 100 << 20], chunksize=1)] == [100 << 20] * 2
    # What malloc keeps cached for reuse is not held: only what survives a trim counts (a
    # thread's arena may keep up to twice the last big free untrimmed, by glibc's rules).
    trim(0)
    for pid in ["self", *pool._engine.pids()]:
        grown = [(mb, name) for mb, name in _large_mappings(pid) if mb > before.get(pid, {}).get(name, 0)]
        assert grown == [], pid


def _fails_unless_zero(x):
    if x:
        raise ValueError(x)
    return x


def test_a_failed_map_settles_once_and_keeps_no_results(pool):
    """Its chunks fail on two threads (an argument that cannot be pickled, on the caller's;
    the others' exceptions, on the collector's): the error callback runs once, with the
    first failure, and the results that came are not kept."""
    calls = []

    def on_error(e):
        calls.append(type(e).__name__)
        time.sleep(0.2)  # a second settling would overlap this one

    r = pool.map_async(_fails_unless_zero, [threading.Lock()] + list(range(1, 40)), chunksize=1,
                       error_callback=on_error)
    with pytest.raises(TypeError):
        r.get(30)
    time.sleep(0.5)
    assert calls == ["TypeError"]
    assert r._out is None and r._packed == []


def test_a_dropped_imap_lets_later_work_go_first(pool):
    """A lazy map whose iterator was dropped still runs (as multiprocessing's does), but
    work somebody waits for is dispatched before its read-ahead."""
    import gc

    it = pool.imap(sleep_then_return, itertools.repeat(0.01, 3000))
    job = it.job
    next(it)
    del it
    gc.collect()
    assert job.abandoned
    assert pool.map(square, range(3)) == [0, 1, 4]
    assert pool.apply(square, (5,)) == 25
    assert job.sent_items < 200, job.sent_items  # not its read-ahead (thousands) first


def test_work_submitted_while_an_imap_waits_for_its_consumer_runs(pool):
    it = pool.imap(square, range(2_000_000))  # more than imap reads ahead of its consumer
    assert next(it) == 0
    # The consumer needs another result before it reads on (a common pattern: apply()
    # inside an imap loop). multiprocessing runs it after the imap's tasks; paralelo's
    # lazy imap reads only so far ahead, so the new work must not wait behind it.
    assert pool.apply_async(square, (7,)).get(3) == 49
    assert pool.map_async(square, range(10)).get(3) == [x * x for x in range(10)]
    assert list(itertools.islice(it, 3)) == [1, 4, 9]


def test_abandoned_imap_does_not_block_terminate():
    p = paralelo.Pool(2)
    it = p.imap(sleep_then_return, itertools.repeat(0.01))
    next(it)
    t0 = time.monotonic()
    p.terminate()
    assert time.monotonic() - t0 < 5


# -- crashes and big payloads ----------------------------------------------------------------------


def test_killed_worker_fails_only_its_task(pool):
    r = pool.apply_async(kill_self)
    with pytest.raises(paralelo.WorkerLostError) as exc_info:
        r.get(T)
    assert isinstance(exc_info.value, BrokenProcessPool)
    assert r.ready() and not r.successful()
    # the pool replaced the worker and keeps working
    assert pool.map(square, range(100)) == [x * x for x in range(100)]
    assert pool.apply(square, (12,)) == 144


def test_killed_worker_during_map(pool):
    slow = pool.apply_async(sleep_then_return, (0.3, "survivor"))
    with pytest.raises(paralelo.WorkerLostError):
        pool.map(kill_self_on_5, range(10), chunksize=1)
    assert slow.get(T) == "survivor"
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    out = []
    with pytest.raises(BrokenProcessPool):
        for v in pool.imap(kill_self_on_5, range(10), 1):
            out.append(v)
    assert out == list(range(len(out)))
    assert list(pool.imap(square, range(20))) == [x * x for x in range(20)]


def test_repeated_worker_deaths(pool):
    for _ in range(5):
        with pytest.raises(paralelo.WorkerLostError):
            pool.apply_async(kill_self).get(T)
    assert sorted(pool.imap_unordered(square, range(30))) == [x * x for x in range(30)]


def test_large_arguments_and_results(pool):
    blob = os.urandom(5 * 1024 * 1024)
    assert pool.apply(identity, (blob,)) == blob
    assert pool.apply_async(len, (blob,)).get(T) == len(blob)
    assert pool.map(identity, [blob, b"x", blob], chunksize=1) == [blob, b"x", blob]
    assert list(pool.imap(len, [blob] * 3)) == [len(blob)] * 3
    big = pool.apply(lambda n: list(range(n)), (1_000_000,))
    assert big == list(range(1_000_000))


def test_many_small_tasks(pool):
    xs = range(100_000)
    assert pool.map(square, xs) == [x * x for x in xs]
    assert sum(pool.imap_unordered(square, xs)) == sum(x * x for x in xs)


def test_get_context_pool():
    ctx = paralelo.get_context("spawn")
    with ctx.Pool(2) as p:
        assert isinstance(p, paralelo.Pool)
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]


def _slow_first(x):
    if x == 0:
        time.sleep(1.0)
    return x


@pytest.mark.parametrize("chunksize", [1, None])
def test_a_consumer_waiting_on_imap_sleeps_instead_of_spinning(pool, chunksize):
    # The parent waits a second for item 0 while the read-ahead is full: it must sleep.
    it = pool.imap(_slow_first, (i for i in range(20_000)), chunksize=chunksize)
    cpu = time.process_time()
    assert next(it) == 0
    used = time.process_time() - cpu
    assert used < 0.5, f"the parent burned {used:.2f} s of CPU waiting one second"
    assert sum(it) == sum(range(20_000))


def test_bursts_of_calls_from_several_threads_each_get_their_own_results() -> None:
    # Calls made while others wait for room go through the engine's inbox without taking
    # its lock: none is lost, each gets its own result, and each thread's run in order.
    with paralelo.Pool(2) as pool:
        outs: dict[int, list] = {}

        def burst(k: int) -> None:
            outs[k] = [pool.apply_async(_order_probe, (k, i)) for i in range(3000)]

        threads = [threading.Thread(target=burst, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for k, results in outs.items():
            assert [r.get(60) for r in results] == [(k, i) for i in range(3000)]


def test_a_pool_ended_during_a_burst_of_calls_leaves_none_pending() -> None:
    for end in ("terminate", "close"):
        pool = paralelo.Pool(2)
        results = [pool.apply_async(_order_probe, (0, i)) for i in range(5000)]
        getattr(pool, end)()
        pool.join()
        for r in results:
            r.wait(30)
            assert r.ready()
        if end == "close":  # accepted before close(): all ran
            assert [r.get() for r in results] == [(0, i) for i in range(5000)]


def _order_probe(k: int, i: int) -> tuple[int, int]:
    return k, i


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class _Registered:
    def __init__(self, v: int) -> None:
        self.v = v


def _rebuilt(v: int) -> tuple[str, int]:
    return "rebuilt", v


def _identity(x):
    return x


def test_a_reducer_registered_after_calls_were_pickled_is_used() -> None:
    from multiprocessing.reduction import ForkingPickler

    with paralelo.Pool(1) as pool:
        assert pool.apply(_identity, (5,)) == 5  # (the call pickler is made, its table read)
        ForkingPickler.register(_Registered, lambda o: (_rebuilt, (o.v,)))
        try:
            assert pool.apply(_identity, (_Registered(3),)) == ("rebuilt", 3)
            ForkingPickler.register(_Registered, lambda o: (_rebuilt, (-o.v,)))  # (registered again)
            assert pool.apply(_identity, (_Registered(3),)) == ("rebuilt", -3)
        finally:
            del ForkingPickler._extra_reducers[_Registered]


class _PicklesInside:
    """Its pickling pickles another call (as a __reduce__ that sends something may)."""

    def __reduce__(self):
        from paralelo import _pickling

        inner = _pickling.dumps_call((_identity, ("inner",), {}), None)
        return _identity, (_pickling.loads_call(inner)[1][0],)


def test_a_call_pickled_inside_another_pickling_leaves_the_outer_one_whole(monkeypatch) -> None:
    from paralelo import _pickling

    def no_fallback(*args, **kwargs):
        raise AssertionError("the C pickling failed and fell back to by-value pickling")

    with monkeypatch.context() as m:
        m.setattr(_pickling, "by_value", no_fallback)
        data = _pickling.dumps_call((_identity, ([1, _PicklesInside(), 2],), {}), None)
    fn, args, kwargs = _pickling.loads_call(data)
    assert fn(*args, **kwargs) == [1, "inner", 2]
    with paralelo.Pool(1) as pool:
        assert pool.apply(_identity, ([1, _PicklesInside(), 2],)) == [1, "inner", 2]


class _BusyLock:
    """An engine lock whose non-blocking acquire always finds it busy (a submit then
    goes through the inbox), running `on_busy` first if given."""

    def __init__(self, lock: Any, on_busy: Any = None) -> None:
        self.lock, self.on_busy = lock, on_busy

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking:
            if self.on_busy is not None:
                self.on_busy()
            return False
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def test_calls_through_the_inbox_run_or_fail_whatever_ends_the_pool() -> None:
    for end in ("close", "terminate"):
        pool = paralelo.Pool(1)
        engine = pool._engine
        first = pool.apply_async(_nap, (0.2,))
        engine.lock = _BusyLock(engine.lock)
        later = [pool.apply_async(_order_probe, (0, i)) for i in range(50)]
        assert engine.inbox or engine.calls  # (they went in through it)
        getattr(pool, end)()
        pool.join()
        for r in [first, *later]:
            r.wait(30)
            assert r.ready()
        if end == "close":
            assert [r.get() for r in later] == [(0, i) for i in range(50)]
        assert not engine.inbox

    # Stopped between a submit's look and its append: the call fails as a stopped pool's
    # submit does, and is not left in the inbox.
    pool = paralelo.Pool(1)
    engine = pool._engine
    pool.apply_async(_nap, (0.2,))
    pool.apply_async(_nap, (0.2,))  # (one waits for room: the next call may take the inbox)
    engine.lock = _BusyLock(engine.lock, on_busy=pool.close)
    late = pool.apply_async(_order_probe, (1, 1))
    with pytest.raises(ValueError, match="Pool not running"):
        late.get(30)
    assert not engine.inbox
    pool.join()
