"""paralelo's module-level API: the names of concurrent.futures and multiprocessing."""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import concurrent.futures.process
import multiprocessing
import subprocess
import sys
import textwrap

import pytest

import paralelo

SAME_AS_CONCURRENT_FUTURES = [
    "Future",
    "Executor",
    "wait",
    "as_completed",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ALL_COMPLETED",
    "CancelledError",
    "InvalidStateError",
    "BrokenExecutor",
]


@pytest.mark.parametrize("name", SAME_AS_CONCURRENT_FUTURES)
def test_concurrent_futures_names_are_the_same_objects(name):
    assert getattr(paralelo, name) is getattr(cf, name)
    assert name in paralelo.__all__


def test_broken_process_pool_is_the_same_object():
    assert paralelo.BrokenProcessPool is concurrent.futures.process.BrokenProcessPool
    assert "BrokenProcessPool" in paralelo.__all__


def test_all_names_exist():
    for name in paralelo.__all__:
        assert hasattr(paralelo, name), name
    for name in ("Pool", "ProcessPoolExecutor", "AsyncResult", "TimeoutError", "RemoteTraceback",
                 "RemoteError", "WorkerLostError", "get_context", "cpu_count"):
        assert name in paralelo.__all__


def test_exception_hierarchy():
    assert paralelo.TimeoutError is builtins.TimeoutError is cf.TimeoutError
    from paralelo._errors import PoolTimeoutError

    assert issubclass(PoolTimeoutError, multiprocessing.TimeoutError)
    assert issubclass(PoolTimeoutError, paralelo.TimeoutError)
    assert issubclass(paralelo.WorkerLostError, cf.process.BrokenProcessPool)
    assert issubclass(paralelo.WorkerLostError, cf.BrokenExecutor)
    assert issubclass(paralelo.RemoteTraceback, Exception)
    assert issubclass(paralelo.RemoteError, Exception)
    tb = paralelo.RemoteTraceback("Traceback ...")
    assert str(tb) == "Traceback ..." and tb.tb == "Traceback ..."


def test_a_pool_timeout_is_caught_by_every_clause():
    from paralelo._errors import PoolTimeoutError

    for clause in (multiprocessing.TimeoutError, builtins.TimeoutError, cf.TimeoutError, paralelo.TimeoutError):
        try:
            raise PoolTimeoutError
        except clause:
            pass


def test_cpu_count():
    assert paralelo.cpu_count() == multiprocessing.cpu_count()
    assert paralelo.get_context().cpu_count() == multiprocessing.get_context().cpu_count()


@pytest.fixture
def restore_start_method():
    saved = paralelo.get_start_method(allow_none=True)
    yield
    paralelo.set_start_method(saved, force=True)


def test_get_start_method(restore_start_method):
    paralelo.set_start_method(None, force=True)
    assert paralelo.get_start_method(allow_none=True) is None
    method = paralelo.get_start_method()
    assert isinstance(method, str)
    assert method in paralelo.get_all_start_methods()
    assert method in multiprocessing.get_all_start_methods()


def test_all_start_methods():
    methods = paralelo.get_all_start_methods()
    assert set(methods) <= set(multiprocessing.get_all_start_methods())
    assert {"fork", "spawn", "forkserver"} <= set(methods)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_set_start_method(restore_start_method, method):
    paralelo.set_start_method(method, force=True)
    assert paralelo.get_start_method() == method
    assert paralelo.get_start_method(allow_none=True) == method
    # like multiprocessing: setting it again without force is an error
    with pytest.raises(RuntimeError):
        paralelo.set_start_method("spawn")
    assert paralelo.get_start_method() == method


def test_set_start_method_first_time_needs_no_force(restore_start_method):
    paralelo.set_start_method(None, force=True)
    paralelo.set_start_method("spawn")
    assert paralelo.get_start_method() == "spawn"


def test_set_bogus_start_method(restore_start_method):
    with pytest.raises(ValueError):
        paralelo.set_start_method("bogus", force=True)
    assert paralelo.get_start_method() == paralelo.get_start_method()  # unchanged, no error


@pytest.mark.parametrize("method", [None, "fork", "spawn", "forkserver"])
def test_get_context(method):
    ctx = paralelo.get_context(method)
    assert isinstance(ctx, paralelo.Context)
    if method is not None:
        assert ctx.get_start_method() == method
    else:
        assert ctx.get_start_method() == paralelo.get_start_method()
    assert ctx.TimeoutError is paralelo.TimeoutError
    assert callable(ctx.Pool)


def test_get_context_bogus():
    with pytest.raises(ValueError):
        multiprocessing.get_context("bogus")
    with pytest.raises(ValueError):
        paralelo.get_context("bogus")


def test_version():
    assert isinstance(paralelo.__version__, str)


def test_a_program_loads_only_what_it_uses():
    # Every module loaded costs each fork after it (copying its memory and mappings): a
    # script that starts a Process and passes a Queue loads neither the pool's engine
    # nor cloudpickle nor concurrent.futures' process pool; the names are there on use.
    code = textwrap.dedent("""
        import sys
        import paralelo
        def put(q):
            q.put(sys.modules.get("cloudpickle") is None)
        if __name__ == "__main__":
            q = paralelo.Queue()
            p = paralelo.Process(target=put, args=(q,))
            p.start(); child_clean = q.get(timeout=30); p.join()
            heavy = ("cloudpickle", "concurrent.futures.process", "paralelo._engine", "paralelo.pool")
            print(child_clean, [m for m in heavy if m in sys.modules])
            assert paralelo.Pool and paralelo.ThreadPoolExecutor and paralelo.WorkerLostError
            print(all(m in sys.modules for m in heavy[1:]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True []", "True"]


def test_multiprocessing_s_helper_modules_are_there_under_paralelo_s_name():
    import multiprocessing.dummy
    import multiprocessing.reduction
    import multiprocessing.util

    import paralelo.dummy
    import paralelo.reduction
    import paralelo.util

    assert paralelo.util is multiprocessing.util
    assert paralelo.reduction is multiprocessing.reduction
    assert paralelo.dummy is multiprocessing.dummy


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_contexts_have_every_name_multiprocessings_have(method):
    ours, theirs = paralelo.get_context(method), multiprocessing.get_context(method)
    assert [n for n in dir(theirs) if not n.startswith("_") and not hasattr(ours, n)] == []
    assert ours.get_context("spawn").get_start_method() == "spawn"
    assert ours.ProcessError is multiprocessing.ProcessError


def test_the_standard_librarys_pools_run_on_a_paralelo_context(tmp_path):
    # A half-migrated program (or tqdm's process_map with mp_context=): the standard
    # library's executor and Pool given paralelo's context (they hung, or failed, on
    # paralelo's primitives, whose private parts they reach into).
    from scripts import side_by_side

    [out] = side_by_side(tmp_path, textwrap.dedent("""
        import concurrent.futures, multiprocessing.pool, sys
        import paralelo
        def sq(x):
            return x * x
        if __name__ == "__main__":
            for method in ("fork", "spawn"):
                ctx = paralelo.get_context(method)
                with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                    print(list(ex.map(sq, range(5))))
                with multiprocessing.pool.Pool(2, context=ctx) as p:
                    print(p.map(sq, range(5)))
    """), libs=("paralelo",), timeout=120)
    assert out.splitlines() == ["[0, 1, 4, 9, 16]"] * 4
