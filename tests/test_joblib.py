"""joblib on paralelo's engine: ``joblib.parallel_config(backend="paralelo")``, compared
with loky (joblib's default) on the same ``__main__`` scripts: results, generators,
exceptions with their tracebacks, ``n_jobs=-1``, timeouts, large arrays, a failure
that stops the rest, the workers' BLAS threads; and the back end registered whichever of the two is imported
first."""

from __future__ import annotations

import sys
import textwrap

import pytest

from scripts import run_group

pytest.importorskip("joblib")
pytest.importorskip("loky")
pytest.importorskip("threadpoolctl")

T = 120

_PROGRAM = textwrap.dedent("""
    import sys, time
    import numpy as np
    {imports}
    from joblib import Parallel, delayed

    SCALE = 3

    def work(x):
        return x * SCALE

    def fails(x):
        if x == 4:
            raise KeyError(f"item {{x}}")
        return x

    def nap(x):
        time.sleep(x)
        return x

    def total(array, i):
        return float(array.sum()) + i

    def threads(_):
        import os
        from threadpoolctl import threadpool_info
        return os.environ.get("OMP_NUM_THREADS"), sorted({{p["num_threads"] for p in threadpool_info()}})

    def where(_):
        import multiprocessing
        return multiprocessing.current_process().name.rstrip("-0123456789")

    if __name__ == "__main__":
        backend = sys.argv[1]
        with joblib.parallel_config(backend=backend, n_jobs=2):
            print(Parallel()(delayed(work)(i) for i in range(20)))
            print(list(Parallel(return_as="generator")(delayed(work)(i) for i in range(10))))
            print(sorted(Parallel(return_as="generator_unordered")(delayed(work)(i) for i in range(10))))
            print(Parallel(batch_size=3)(delayed(work)(i) for i in range(10)))
            try:
                Parallel()(delayed(fails)(i) for i in range(10))
            except KeyError as e:
                print("KeyError", e, "Traceback" in str(e.__cause__) and "fails" in str(e.__cause__))
            start = time.monotonic()
            try:
                Parallel(timeout=0.5)(delayed(nap)(x) for x in (0.01, 5, 0.01))
            except Exception as e:  # (multiprocessing's TimeoutError, as joblib raises it)
                print(type(e).__name__, time.monotonic() - start < 4)
            start = time.monotonic()
            try:  # (36 s if nothing stopped the rest)
                Parallel()(delayed(fails if x == 4 else nap)(x if x == 4 else 2.0) for x in range(4, 40))
            except KeyError:
                print("stopped early", time.monotonic() - start < 12)
            big = np.ones(8 << 20 >> 3)  # 8 MiB: loky memory-maps it, paralelo sends it through its arena
            print(Parallel()(delayed(total)(big, i) for i in range(4)))
            print(Parallel(n_jobs=-1)(delayed(work)(i) for i in range(5)))
            # BLAS and OpenMP pools limited to the workers' share of the CPUs, as loky's.
            print(Parallel()(delayed(threads)(i) for i in range(2)))
            with joblib.parallel_config(backend=backend, n_jobs=2, inner_max_num_threads=1):
                print(Parallel()(delayed(threads)(i) for i in range(2)))
            print(set(Parallel()(delayed(where)(i) for i in range(4))))
""")

_IMPORTS = {
    "joblib first": "import joblib\nimport paralelo",
    "paralelo first": "import paralelo\nimport joblib",
}


@pytest.mark.parametrize("order", sorted(_IMPORTS))
def test_joblib_on_paralelo_does_what_it_does_on_loky(tmp_path, order):
    script = tmp_path / "program.py"
    script.write_text(_PROGRAM.format(imports=_IMPORTS[order]))
    runs = {}
    for backend in ("loky", "paralelo"):
        out = run_group([sys.executable, str(script), backend], T, cwd=tmp_path)
        assert out.returncode == 0, (backend, out.stderr[-3000:])
        runs[backend] = out.stdout.splitlines()
    loky, ours = runs["loky"], runs["paralelo"]
    assert loky[0] == str([3 * i for i in range(20)])
    assert loky[4:7] == ["KeyError 'item 4' True", "TimeoutError True", "stopped early True"]
    assert ours[:-1] == loky[:-1]
    assert loky[-1] == "{'LokyProcess'}" and ours[-1] == "{'ForkProcess'}"  # (each on its own engine)


def test_the_backend_is_usable_after_a_failure_and_between_calls():
    """A failure kills the tasks still running (as loky's does); the next call gets
    fresh workers; calls in between reuse the same ones."""
    import joblib
    from joblib import Parallel, delayed

    from paralelo import _joblib

    try:
        with joblib.parallel_config(backend="paralelo", n_jobs=2):
            Parallel()(delayed(_pid)(i) for i in range(8))
            [workers] = _joblib._executors.values()
            assert len(set(Parallel()(delayed(_pid)(i) for i in range(8))) - set(workers._engine.pids())) == 0
            assert list(_joblib._executors.values()) == [workers]  # the same workers, kept between calls
            with pytest.raises(ZeroDivisionError):
                Parallel()(delayed(_divide)(i) for i in range(6))
            assert Parallel()(delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]
    finally:
        _joblib.shutdown()  # (its workers would otherwise wait for the next call, as loky's do)


def _pid(_):
    import os

    return os.getpid()


def _divide(i):
    return 1 / (i - 3)
