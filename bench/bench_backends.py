"""Past one machine: paralelo's Pool on Dask and on Ray beside those engines' own APIs,
and joblib on paralelo beside joblib on loky, in one run. Each case is a script whose
functions live in ``__main__``, run in a fresh interpreter per library, the libraries
taking turns; clusters are local (2 workers on 127.0.0.1) and started before the clock.

    python bench/bench_backends.py                 # every case
    python bench/bench_backends.py dask joblib     # some
    python bench/bench_backends.py --repeats 3     # fresh runs per case (default 5)

Cases:
  dask      a map of 32 CPU-heavy tasks (≈ 30 ms each): s a map, the median of 3.
            ``Pool(backend="dask").map`` against ``client.map`` + ``client.gather`` on
            the same kind of cluster (the target: under 5% more), and the local engine
  ray       the same on Ray: ``Pool(backend="ray").map`` against ``ray.get([f.remote(x)
            ...])`` (the target: under 5% more), and the local engine
  joblib    ``Parallel()(delayed(f)(i) for i in range(100_000))``, auto-batching, 2
            jobs: µs a task. ``parallel_config(backend="paralelo")`` against loky, and
            against joblib's own floor: the same call with ``n_jobs=1`` (joblib runs it
            in the caller, no back end at all; building each ``delayed(f)(i)`` alone
            costs about 2.2 µs here, in the caller's thread, whatever the back end)
  ray_array a fresh 100 MB float64 array to one task that sums it: ms a call, the
            median of 5. ``Pool(backend="ray").apply_async`` against ``ray.put`` + a
            task (the target: no slower)
"""

from __future__ import annotations

import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import against_rivals  # noqa: E402

HEAD = textwrap.dedent(
    """
    import statistics, sys, time, warnings
    warnings.simplefilter("ignore")
    LIB = sys.argv[1]
    T = time.perf_counter

    def heavy(x):
        s = 0
        for i in range(400_000):
            s += i ^ x
        return s

    def timed(run, times=3):
        run()  # (warm: the workers have started and imported what the task needs)
        got = []
        for _ in range(times):
            t = T()
            run()
            got.append(T() - t)
        return statistics.median(got)

    def dask_cluster():
        from distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False})
        return cluster, Client(cluster)

    def ray_start():
        import ray
        from paralelo._cluster.cluster import loopback_only
        with loopback_only(ray):
            ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="error")
        return ray
    """
)

_ITEMS = "list(range(32))"

CASES = {
    "dask": ("a map of 32 heavy tasks on 2 Dask workers (s a map)",
             ("paralelo", "dask client.map", "paralelo local engine"), f"""
        if __name__ == "__main__":
            import logging
            logging.disable(logging.WARNING)
            items = {_ITEMS}
            expected = [heavy(x) for x in items[:2]]
            if LIB == "paralelo":
                import paralelo
                cluster, client = dask_cluster()
                with paralelo.Pool(backend="dask", address=cluster.scheduler_address) as pool:
                    assert pool.map(heavy, items[:2]) == expected
                    print(timed(lambda: pool.map(heavy, items)))
                client.close(); cluster.close()
            elif LIB == "dask client.map":
                cluster, client = dask_cluster()
                print(timed(lambda: client.gather(client.map(heavy, items, pure=False))))
                client.close(); cluster.close()
            else:
                import paralelo
                with paralelo.Pool(2) as pool:
                    print(timed(lambda: pool.map(heavy, items)))
    """),
    "ray": ("a map of 32 heavy tasks on 2 Ray workers (s a map)",
            ("paralelo", "ray remote", "paralelo local engine"), f"""
        if __name__ == "__main__":
            items = {_ITEMS}
            if LIB == "paralelo":
                import paralelo
                ray = ray_start()
                with paralelo.Pool(backend="ray") as pool:
                    print(timed(lambda: pool.map(heavy, items)))
                ray.shutdown()
            elif LIB == "ray remote":
                ray = ray_start()
                remote = ray.remote(heavy)
                print(timed(lambda: ray.get([remote.remote(x) for x in items])))
                ray.shutdown()
            else:
                import paralelo
                with paralelo.Pool(2) as pool:
                    print(timed(lambda: pool.map(heavy, items)))
    """),
    "joblib": ("joblib, 100,000 small tasks, auto-batching, 2 jobs (µs a task)",
               ("paralelo", "loky", "joblib's floor: n_jobs=1"), """
        def small(x):
            return x * x

        if __name__ == "__main__":
            import joblib
            from joblib import Parallel, delayed
            if LIB == "paralelo":
                import paralelo  # (registers the back end)
            n = 100_000
            backend, jobs = ("loky", 1) if LIB.startswith("joblib's floor") else (LIB, 2)
            with joblib.parallel_config(backend=backend, n_jobs=jobs):
                print(timed(lambda: Parallel()(delayed(small)(i) for i in range(n))) / n * 1e6)
    """),
    "ray_array": ("a fresh 100 MB array to a task on Ray (ms a call)", ("paralelo", "ray.put + task"), """
        def total(a):
            return float(a.sum())

        if __name__ == "__main__":
            import numpy as np
            ray = ray_start()
            if LIB == "paralelo":
                import paralelo
                with paralelo.Pool(backend="ray") as pool:
                    call = lambda: pool.apply_async(total, (np.ones(100_000_000 // 8),)).get()
                    print(timed(call, 5) * 1e3)
            else:
                remote = ray.remote(total)
                call = lambda: ray.get(remote.remote(ray.put(np.ones(100_000_000 // 8))))
                print(timed(call, 5) * 1e3)
            ray.shutdown()
    """),
}


def main() -> None:
    against_rivals(HEAD, CASES, "past one machine: Dask, Ray and joblib, 2 workers", digits=3)


if __name__ == "__main__":
    main()
