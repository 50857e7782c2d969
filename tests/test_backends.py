"""``Pool`` and ``ProcessPoolExecutor`` on Dask and Ray clusters: the same test bodies
run on the local engine, on a Dask ``LocalCluster`` and on a local Ray runtime (each
started once for the module, bound to 127.0.0.1); a user's ``__main__`` script moves to
a cluster through ``PARALELO_BACKEND`` alone and prints what it prints locally and with
multiprocessing."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, as_completed, wait

import pytest

import paralelo
from paralelo._cluster import choice

from scripts import run_group

T = 120


def square(x):
    return x * x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def total(array, i):
    return float(array.sum()) + i


# -- the clusters -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_address():
    pytest.importorskip("distributed", reason="Dask's distributed is not installed: pip install 'paralelo[dask]'")
    from distributed import LocalCluster

    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
                               scheduler_kwargs={"dashboard": False})
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"a Dask LocalCluster cannot start on this machine: {e!r}")
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'paralelo[ray]'")
    from paralelo._cluster.cluster import loopback_only

    try:
        with loopback_only(ray):  # (as a pool starts Ray: see there)
            ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="warning",
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Ray cannot start on this machine: {e!r}")
    os.environ.pop("PYTHONBREAKPOINT", None)  # (Ray's driver hook, set for good: not for the other tests)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module", params=["local", "dask", "ray"])
def backend(request) -> dict:
    """What a pool is made with to run on each back end."""
    if request.param == "dask":
        return {"backend": "dask", "address": request.getfixturevalue("dask_address")}
    if request.param == "ray":
        request.getfixturevalue("ray_runtime")
        return {"backend": "ray"}
    return {}


# -- the same calls, the same results ---------------------------------------------------


def test_every_pool_call_gives_the_local_results(backend):
    with paralelo.Pool(2, **backend) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.map(square, []) == []
        assert pool.starmap(pow, [(2, 5), (3, 2)]) == [32, 9]
        assert pool.map_async(square, range(5)).get(T) == [0, 1, 4, 9, 16]
        assert pool.starmap_async(pow, [(2, 3)]).get(T) == [8]
        assert list(pool.imap(square, range(30), chunksize=4)) == [x * x for x in range(30)]
        assert list(pool.imap(square, (x for x in range(30)))) == [x * x for x in range(30)]
        assert sorted(pool.imap_unordered(square, (x for x in range(30)))) == [x * x for x in range(30)]
        assert pool.apply(square, (7,)) == 49
        assert pool.apply_async(pow, (2,), {"exp": 10}).get(T) == 1024
        assert pool.reduce(lambda a, b: a + b, ["a", "b", "c", "d", "e"]) == "abcde"
        assert pool.map_reduce(square, lambda a, b: a + b, range(100)) == sum(x * x for x in range(100))
        got = []
        pool.apply_async(square, (4,), callback=got.append).wait(T)
        assert got == [16]


def test_a_tasks_exception_comes_back_with_its_remote_traceback(backend):
    with paralelo.Pool(2, **backend) as pool:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.map(fail_on, range(10))
        assert "fail_on" in str(info.value.__cause__) and "Traceback" in str(info.value.__cause__)
        # imap, one item a task: the failed item raises in its place, the others still come.
        it, out = pool.imap(fail_on, range(6), chunksize=1), []
        for _ in range(6):
            try:
                out.append(next(it))
            except ValueError as e:
                out.append(str(e))
        assert out == [0, 1, 2, "bad item 3", 4, 5]
        errors = []
        result = pool.apply_async(fail_on, (3,), error_callback=errors.append)
        result.wait(T)
        assert not result.successful() and isinstance(errors[0], ValueError)


def test_the_executor_gives_the_local_futures(backend):
    with paralelo.ProcessPoolExecutor(2, **backend) as ex:
        futures = [ex.submit(square, i) for i in range(10)]
        assert sorted(f.result(T) for f in as_completed(futures, timeout=T)) == [x * x for x in range(10)]
        done, _ = wait([ex.submit(nap, 0.01), ex.submit(nap, 5)], timeout=T, return_when=FIRST_COMPLETED)
        assert [f.result() for f in done] == [0.01]
        assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
        assert list(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
        assert isinstance(ex.submit(fail_on, 3).exception(T), ValueError)
        results = ex.map(fail_on, range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3"):
            next(results)
        with pytest.raises(TimeoutError):
            list(ex.map(nap, [3], timeout=0.2))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_a_bar_counts_every_item(backend):
    pytest.importorskip("tqdm")
    with paralelo.Pool(2, **backend) as pool:
        shown = io.StringIO()
        assert pool.map(square, range(40), progress={"file": shown, "mininterval": 0}) == [x * x for x in range(40)]
        assert "40/40" in shown.getvalue()
        shown = io.StringIO()
        assert len(list(pool.imap(square, (x for x in range(25)), progress={"file": shown}))) == 25
        assert "25/25" in shown.getvalue() or "25it" in shown.getvalue()


def test_a_big_array_goes_to_the_store_once_a_map(backend):
    """Many tasks of one map naming the same large array: the cluster's object store
    holds it once; the next call stores it afresh (it may have changed in place since,
    as a local pool would see)."""
    np = pytest.importorskip("numpy")
    big = np.ones(2 << 20 >> 3)  # 2 MiB
    with paralelo.Pool(2, **backend) as pool:
        puts = []
        if backend:
            put = pool._cluster._put
            pool._cluster._put = lambda obj: (puts.append(obj.nbytes), put(obj))[1]
        expected = [float(big.size) + i for i in range(8)]
        assert pool.starmap(total, [(big, i) for i in range(8)], chunksize=1) == expected
        assert pool.map(functools.partial(total, big), range(8)) == expected
        assert list(pool.imap(functools.partial(total, big), iter(range(8)))) == expected
        assert pool.apply_async(total, (big, 1)).get(T) == expected[1]
        big[:] = 2.0  # changed in place: the next call sees it
        assert pool.apply_async(total, (big, 1)).get(T) == 2 * big.size + 1
        assert puts == ([big.nbytes] * 5 if backend else [])


def test_insights_count_the_clusters_tasks(backend):
    with paralelo.Pool(2, **backend) as pool:
        pool.map(square, range(40), chunksize=5)
        shown = pool.insights()
        assert sum(w.tasks for w in shown.workers) >= 40
        assert "tasks" in str(shown)
        pool.reset_insights()
        assert sum(w.tasks for w in pool.insights().workers) == 0


def _touch(path):
    time.sleep(0.02)
    open(path, "w").close()
    return path


def _lock_result(_):
    import threading

    return threading.Lock()


def test_a_dropped_lazy_map_still_runs_every_item_and_join_waits_for_it(backend, tmp_path):
    """As multiprocessing's imap and concurrent.futures' map: nobody reads the results,
    the work is still done; join() returns once it is."""
    with paralelo.Pool(2, **backend) as pool:
        it = pool.imap(_touch, (str(tmp_path / f"i{i}") for i in range(12)))
        del it
        with paralelo.ProcessPoolExecutor(2, **backend) as ex:
            ex.map(_touch, [str(tmp_path / f"m{i}") for i in range(6)])
        pool.close()
        pool.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"i{i}" for i in range(12)] + [f"m{i}" for i in range(6)])


def test_an_unpicklable_result_fails_with_the_local_engines_error(backend):
    from multiprocessing.pool import MaybeEncodingError

    with paralelo.Pool(2, **backend) as pool:
        with pytest.raises(MaybeEncodingError, match="lock"):
            next(pool.imap(_lock_result, range(2), chunksize=1))
        with pytest.raises(MaybeEncodingError, match="lock"):
            pool.apply_async(_lock_result, (1,)).get(T)
        with pytest.raises(MaybeEncodingError, match="lock"):
            pool.map(_lock_result, range(3))
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_cancelled_futures_read_as_cancelled(backend):
    with paralelo.ProcessPoolExecutor(2, **backend) as ex:
        running = [ex.submit(nap, 2) for _ in range(4)]
        time.sleep(0.3)
        ex.shutdown(wait=True, cancel_futures=True)
    for f in running:
        assert f.done()
        if f.cancelled():
            with pytest.raises(CancelledError):
                f.result()
        else:
            assert f.result() == 2
    assert any(f.cancelled() for f in running)


def test_terminate_ends_a_lazy_map_with_the_pools_error(backend):
    pool = paralelo.Pool(2, **backend)
    it = pool.imap(nap, (x for x in [0.01] + [5] * 6))
    assert next(it) == 0.01
    pool.terminate()
    # (The local engine may tell of the killed worker first: a RuntimeError too.)
    with pytest.raises(RuntimeError, match="terminated|died"):
        it.next(T)


def test_waiting_inside_a_callback_raises_instead_of_hanging(backend):
    with paralelo.Pool(2, **backend) as pool:
        seen = []

        def callback(value):
            try:
                pool.apply(square, (2,))
            except RuntimeError as e:
                seen.append(str(e))

        pool.apply_async(square, (3,), callback=callback).wait(T)
        assert seen == ["cannot wait for a pool's results inside one of its callbacks"]
        assert pool.apply(square, (4,)) == 16  # (and the pool goes on)


def test_terminate_fails_what_is_still_running(backend):
    pool = paralelo.Pool(2, **backend)
    try:
        slow = pool.apply_async(nap, (30,))
        time.sleep(0.2)
    finally:
        pool.terminate()
    with pytest.raises(RuntimeError, match="terminated"):
        slow.get(T)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


def _log_pid(path):
    time.sleep(0.3)  # (long enough for the worker's other threads to start tasks meanwhile)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def test_the_initializer_runs_once_per_worker_process_whatever_its_threads(tmp_path, dask_address):
    distributed = pytest.importorskip("distributed")
    log = tmp_path / "init.log"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster:
        with paralelo.Pool(backend="dask", address=cluster.scheduler_address, initializer=_log_pid,
                           initargs=(str(log),)) as pool:
            assert pool._processes == 4
            assert pool.map(nap, [0.05] * 8, chunksize=1) == [0.05] * 8
    assert len(log.read_text().split()) == 1


def test_results_come_while_dasks_callback_thread_is_held(dask_address):
    """Dask runs every client's done-callbacks on one thread of the process: a pool's
    results must not wait for it (a user's callback may hold it; a stalled fetch held it
    for every later test)."""
    distributed = pytest.importorskip("distributed")
    held, release = threading.Event(), threading.Event()

    def hold(_):
        held.set()
        release.wait(T)

    with distributed.Client(dask_address, set_as_default=False) as client:
        try:
            client.submit(square, 2, pure=False).add_done_callback(hold)
            assert held.wait(T)
            with paralelo.Pool(2, backend="dask", address=dask_address) as pool:
                assert pool.map_async(square, range(6), chunksize=1).get(30) == [x * x for x in range(6)]
                assert pool.apply_async(square, (7,)).get(30) == 49
        finally:
            release.set()


# -- choosing a back end -------------------------------------------------------------


def test_backends_are_named_clearly(monkeypatch):
    assert choice.parse("dask://10.0.0.5:8786") == choice.Choice("dask", "tcp://10.0.0.5:8786")
    assert choice.parse("ray://head:10001") == choice.Choice("ray", "ray://head:10001")
    assert choice.parse("Ray") == choice.Choice("ray") and choice.parse("paralelo").local
    assert choice.parse("dask://tls://10.0.0.5:8786") == choice.Choice("dask", "tls://10.0.0.5:8786")
    for bad, message in [("spark", "unknown backend 'spark'"), ("local://x:1", "an address goes with"),
                         ("dask://", "an address goes with")]:
        with pytest.raises(ValueError, match=message):
            paralelo.Pool(2, backend=bad)
    with pytest.raises(ValueError, match="address= needs backend="):
        paralelo.ProcessPoolExecutor(2, address="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="backend must be a string"):
        paralelo.Pool(2, backend=3)  # type: ignore[arg-type]
    monkeypatch.setenv("PARALELO_BACKEND", "hadoop")
    with pytest.raises(ValueError, match="PARALELO_BACKEND: unknown backend 'hadoop'"):
        paralelo.Pool(2)
    monkeypatch.setenv("PARALELO_BACKEND", "local")
    with paralelo.Pool(1) as pool:
        assert type(pool) is paralelo.Pool


def test_set_backend_is_the_default_until_reset(dask_address):
    paralelo.set_backend("dask", address=dask_address)
    try:
        with paralelo.Pool(2) as pool, paralelo.ProcessPoolExecutor() as ex:
            assert pool._cluster.backend == "dask" and isinstance(pool, paralelo.Pool)
            assert isinstance(ex, paralelo.ProcessPoolExecutor) and ex.submit(square, 3).result(T) == 9
            with paralelo.Pool(2, backend="local") as here:
                assert here.map(square, [3]) == [9] and here._engine is not None
    finally:
        paralelo.set_backend(None)
    with paralelo.Pool(1) as pool:
        assert pool._engine is not None


def test_inline_mode_wins_over_a_default_cluster(monkeypatch):
    """PARALELO_INLINE=1 is for debugging: the tasks run in the caller, cluster or not."""
    monkeypatch.setenv("PARALELO_BACKEND", "dask")
    monkeypatch.setenv("PARALELO_INLINE", "1")
    with paralelo.Pool(2) as pool:
        assert pool._inline is not None and pool.map(square, [3]) == [9]


def test_ray_joins_one_cluster_a_process(ray_runtime):
    with pytest.raises(ValueError, match="connected to a Ray cluster already"):
        paralelo.Pool(2, backend="ray", address="ray://192.0.2.1:10001")
    with paralelo.Pool(7, backend="ray") as pool:
        assert pool._processes == 2  # (the running cluster's size, not what was asked)


def test_a_missing_engine_says_what_to_install(monkeypatch):
    monkeypatch.setattr(choice, "missing", lambda name: f"pip install 'paralelo[{name}]'")
    for name in ("dask", "ray"):
        with pytest.raises(ImportError, match=rf"backend='{name}' needs .*pip install 'paralelo\[{name}\]'"):
            paralelo.Pool(2, backend=name)


def test_what_only_the_local_engine_has_is_refused_by_name(dask_address):
    for option in ({"task_timeout": 1.0}, {"maxtasksperchild": 3}, {"inline": True}):
        with pytest.raises(ValueError, match=f"{next(iter(option))}= is not offered with backend='dask'"):
            paralelo.Pool(2, backend="dask", address=dask_address, **option)
    with pytest.raises(ValueError, match="max_tasks_per_child= is not offered"):
        paralelo.ProcessPoolExecutor(2, backend="dask", address=dask_address, max_tasks_per_child=2)

    class Mine(paralelo.Pool):
        pass

    with pytest.raises(TypeError, match="runs on the local engine only"):
        Mine(2, backend="dask", address=dask_address)


def test_info_lists_the_back_ends():
    out = subprocess.run([sys.executable, "-m", "paralelo", "info"], capture_output=True, text=True, timeout=T,
                         env={**os.environ, "PARALELO_BACKEND": "ray://head:10001"})
    assert out.returncode == 0, out.stderr
    for name in ("local", "dask", "ray", "joblib"):
        assert f"\n  {name} " in out.stdout
    assert "default: ray at ray://head:10001 (PARALELO_BACKEND)" in out.stdout


# -- a user's script, unchanged, on each back end ---------------------------------------

_SCRIPT = textwrap.dedent("""
    import dataclasses
    import logging
    import sys
    import numpy as np
    import paralelo

    logging.basicConfig(level=logging.INFO)
    _conn = None
    SCALE = 3

    def init(name):
        global _conn
        _conn = f"connection-{name}"

    def work(x):
        return (_conn, x * SCALE)

    def fails(x):
        if x == 2:
            raise KeyError(x)
        return x

    class Refused(Exception):
        pass

    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    def refuse(x):
        raise Refused(f"no {x}")

    def point(x):
        return Point(x, -x)

    def slow_numbers():
        for i in range(6):
            yield i

    if __name__ == "__main__":
        with paralelo.Pool(2, initializer=init, initargs=("db",)) as pool:
            print(pool.map(work, range(6)))
            print(list(pool.imap(work, slow_numbers())))
            print(pool.apply_async(work, (10,)).get())
            try:
                pool.map(fails, range(5))
            except KeyError as e:
                print("KeyError", e, type(e.__cause__).__name__)
            try:  # (the script's own classes come back as themselves, not as copies)
                pool.apply_async(refuse, (1,)).get()
            except Refused as e:
                print("Refused", e)
            print(pool.map(point, range(3)) == [Point(0, 0), Point(1, -1), Point(2, -2)])
        with paralelo.ProcessPoolExecutor(2, initializer=init, initargs=("ex",)) as ex:
            print(ex.submit(work, 1).result(), list(ex.map(work, [4, 5])))
        print("on", getattr(getattr(pool, "_cluster", None), "backend", "local"))
""")


def test_a_main_script_moves_to_a_cluster_through_the_environment(tmp_path, dask_address, ray_runtime):
    """The script's functions, its initializer's global, its exceptions: as locally, and
    as with multiprocessing (the script with ``import multiprocessing as paralelo``)."""
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    stdlib = tmp_path / "stdlib.py"
    stdlib.write_text(_SCRIPT.replace("import paralelo", "import multiprocessing as paralelo\n"
                                                         "import concurrent.futures\n"
                                                         "paralelo.ProcessPoolExecutor = "
                                                         "concurrent.futures.ProcessPoolExecutor"))
    runs = {}
    for name, path, env in [("multiprocessing", stdlib, {}), ("local", script, {}),
                            ("dask", script, {"PARALELO_BACKEND": f"dask://{dask_address.split('://')[1]}"}),
                            ("ray", script, {"PARALELO_BACKEND": "ray", "RAY_ADDRESS": ray_runtime})]:
        out = run_group([sys.executable, str(path)], T, cwd=tmp_path, env={**os.environ, **env})
        assert out.returncode == 0, (name, out.stderr[-3000:])
        runs[name] = out.stdout.splitlines()
    expected = runs["multiprocessing"][:-1]
    assert expected[0] == str([("connection-db", 3 * x) for x in range(6)])
    assert expected[3] == "KeyError 2 RemoteTraceback"
    for name in ("local", "dask", "ray"):
        assert runs[name][:-1] == expected, name
        assert runs[name][-1] == f"on {name}"


_LATE = textwrap.dedent("""
    import paralelo

    if __name__ == "__main__":
        with paralelo.Pool(2) as pool:
            scale = 2
            def later(x):  # (made after the pool, as in a notebook: it carries its own globals)
                return x * scale
            first = pool.map(later, [1, 2])
            scale = 5
            def later(x):  # (the cell run again, with a new value)
                return x * scale
            print(first, pool.map(later, [1, 2]))
""")


def test_a_function_made_after_the_pool_carries_its_own_globals(tmp_path, dask_address, ray_runtime):
    """As on the local engine (where multiprocessing's workers would not know it at all)."""
    script = tmp_path / "late.py"
    script.write_text(_LATE)
    for env in ({}, {"PARALELO_BACKEND": f"dask://{dask_address.split('://')[1]}"},
                {"PARALELO_BACKEND": "ray", "RAY_ADDRESS": ray_runtime}):
        out = run_group([sys.executable, str(script)], T, cwd=tmp_path, env={**os.environ, **env})
        assert out.returncode == 0, (env, out.stderr[-3000:])
        assert out.stdout.strip() == "[2, 4] [5, 10]", env


def test_a_pool_with_no_address_starts_its_own_cluster_and_stops_it(tmp_path, dask_address, ray_runtime):
    """On 127.0.0.1 only (every server of the cluster), and nothing of it outlives the
    pool: no process, no listening port. (The module's clusters are asked for only so
    that a machine where one cannot start skips this too.)"""
    script = tmp_path / "own.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import paralelo

        def square(x):
            return x * x

        def children():
            out = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/stat") as f:
                            fields = f.read().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        helper = b"resource_tracker" in f.read()  # (the stdlib's, until the program ends)
                    if int(fields[1]) == os.getpid() and fields[0] != "Z" and not helper:
                        out.append(int(pid))
            return out

        def tree():
            out, todo = {os.getpid()}, [os.getpid()]
            while todo:
                me = todo.pop()
                for pid in os.listdir("/proc"):
                    if pid.isdigit() and int(pid) not in out:
                        try:
                            with open(f"/proc/{pid}/stat") as f:
                                if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                                    out.add(int(pid)); todo.append(int(pid))
                        except OSError:
                            pass
            return out

        def all_on_loopback():
            inodes = set()
            for pid in tree():
                try:
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:["):
                            inodes.add(link[8:-1])
                except OSError:
                    pass
            found = 0
            for table, loopback in (("tcp", ("0100007F",)),
                                    ("tcp6", ("00000000000000000000000001000000",  # ::1
                                              "0000000000000000FFFF00000100007F"))):  # ::ffff:127.0.0.1
                for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
                    f = line.split()
                    if f[3] == "0A" and f[9] in inodes:  # listening, ours
                        found += 1
                        if not f[1].startswith(loopback):
                            return f"no: {table} {f[1]}"
            return found > 0

        if __name__ == "__main__":
            backend = sys.argv[1]
            with paralelo.Pool(2, backend=backend) as pool:
                print(pool.map(square, range(5)))
                print("listening on 127.0.0.1 only:", all_on_loopback())
            print("left:", children())
            if backend == "ray":
                import ray
                print("ray running:", ray.is_initialized(), os.environ.get("PYTHONBREAKPOINT"))
    """))
    for backend in ("dask", "ray"):
        out = run_group([sys.executable, str(script), backend], T, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.splitlines()
        assert lines[:3] == ["[0, 1, 4, 9, 16]", "listening on 127.0.0.1 only: True", "left: []"], (backend, out.stdout)
        if backend == "ray":
            assert lines[3] == "ray running: False None"  # (Ray's breakpoint hook gone with it)
