"""paralelo beside multiprocessing, concurrent.futures, loky, joblib and mpire, in one run.

    python bench/bench_pool.py            # all sections (≈ 2 minutes on 2 cores)
    python bench/bench_pool.py overhead   # one section: overhead, auto, balance, startup

Prints markdown tables of times and ratios. Use a release build of paralelo
(`pip install .`, not the CI's dev build). Rivals missing from the environment are skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tasks import burn, inc, pareto_durations  # noqa: E402
from _report import table  # noqa: E402

import paralelo  # noqa: E402

WORKERS = 2
N = 100_000


def _opt(name):
    try:
        return __import__(name)
    except ImportError:
        return None


loky, joblib, mpire = _opt("loky"), _opt("joblib"), _opt("mpire")


def timed(fn, repeats=1):
    """(best wall time of `repeats` runs, result of the last)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


# -- per-task overhead ---------------------------------------------------------------

def overhead_cases(chunked: bool):
    """(name, n, run(n) -> results) for each library; n is smaller for slow rivals."""
    cs = None if chunked else 1
    R = 15 if chunked else 3  # best of R runs in the same warm pool
    cases = []

    def pa_map(n):
        with paralelo.Pool(WORKERS) as p:
            p.apply(inc, (0,))  # started and warm: overhead, not start-up
            return timed(lambda: p.map(inc, range(n), chunksize=cs), R)

    def pa_imap(n):
        with paralelo.Pool(WORKERS) as p:
            p.apply(inc, (0,))
            return timed(lambda: list(p.imap(inc, range(n), chunksize=cs)), R)

    def pa_exec(n):
        with paralelo.ProcessPoolExecutor(WORKERS) as ex:
            ex.submit(inc, 0).result()
            return timed(lambda: list(ex.map(inc, range(n), chunksize=cs)), R)

    def mp_map(n):
        with mp.Pool(WORKERS) as p:
            p.apply(inc, (0,))
            if chunked:
                return timed(lambda: p.map(inc, range(n)), R)
            return timed(lambda: list(p.imap(inc, range(n), chunksize=1)), R)

    def cf_map(n):
        with cf.ProcessPoolExecutor(WORKERS) as ex:
            ex.submit(inc, 0).result()
            return timed(lambda: list(ex.map(inc, range(n), chunksize=1)), R)

    cases += [("paralelo Pool.map", N, pa_map), ("paralelo Pool.imap", N, pa_imap),
              ("paralelo ProcessPoolExecutor.map", N, pa_exec)]
    cases += [("multiprocessing Pool." + ("map" if chunked else "imap"), N if chunked else 20_000, mp_map)]
    cases += [("concurrent.futures ProcessPoolExecutor.map (chunksize=1)", 5_000, cf_map)]
    if loky is not None:
        def loky_map(n):
            ex = loky.get_reusable_executor(max_workers=WORKERS)
            ex.submit(inc, 0).result()
            return timed(lambda: list(ex.map(inc, range(n), chunksize=1)), R)
        cases.append(("loky map (chunksize=1)", 2_000, loky_map))
    if joblib is not None:
        def jl(n):
            par = joblib.Parallel(n_jobs=WORKERS, batch_size="auto" if chunked else 1)
            par(joblib.delayed(inc)(i) for i in range(10))
            return timed(lambda: par(joblib.delayed(inc)(i) for i in range(n)), R)
        cases.append(("joblib Parallel" + (" (auto batch)" if chunked else " (batch_size=1)"),
                      N if chunked else 5_000, jl))
    if mpire is not None:
        def mpire_map(n):
            with mpire.WorkerPool(n_jobs=WORKERS) as p:
                p.map(inc, range(10))
                if chunked:
                    return timed(lambda: p.map(inc, range(n)), R)
                return timed(lambda: p.map(inc, range(n), chunk_size=1), R)
        cases.append(("mpire WorkerPool.map", N if chunked else 20_000, mpire_map))
    return cases


def section_overhead(chunked: bool):
    serial, _ = timed(lambda: [inc(x) for x in range(N)], 15)
    rows, best_rival = [], None
    results = []
    for name, n, run in overhead_cases(chunked):
        t, out = run(n)
        assert list(out) == [x + 1 for x in range(n)], name
        per = t / n * 1e6
        results.append((name, n, t, per))
        if not name.startswith("paralelo") and (best_rival is None or per < best_rival[1]):
            best_rival = (name, per)
    pa_best = min(r[3] for r in results if r[0].startswith("paralelo"))
    for name, n, t, per in results:
        rows.append([name, n, f"{t * 1e3:.1f}", f"{per:.2f}", f"{per / (serial / N * 1e6):.1f}x",
                     f"{per / pa_best:.1f}x"])
    title = ("Automatic chunking" if chunked else "chunksize=1") + f": f(x) = x + 1, {WORKERS} workers"
    table(title, ["library", "tasks", "total ms", "µs/task", "vs serial", "vs best paralelo"], rows)
    print(f"\nserial list comprehension: {serial / N * 1e6:.3f} µs/task; best rival: {best_rival[0]} "
          f"{best_rival[1]:.2f} µs/task = {best_rival[1] / pa_best:.1f}x paralelo's best")


# -- load balance ------------------------------------------------------------------------

def section_balance():
    durations = pareto_durations()
    serial = sum(durations)
    ideal = serial / WORKERS
    rows = []

    def run(name, fn):
        t, out = timed(fn)  # one run: 2 s of heavy-tailed work is its own average
        assert list(out) == durations, name
        rows.append([name, f"{t:.3f}", f"{ideal / t:.3f}"])

    with paralelo.Pool(WORKERS) as p:
        p.apply(inc, (0,))
        run("paralelo Pool.map (adaptive)", lambda: p.map(burn, durations))
        run("paralelo Pool.imap (adaptive)", lambda: list(p.imap(burn, durations)))
    with mp.Pool(WORKERS) as p:
        p.apply(inc, (0,))
        run("multiprocessing Pool.map (default chunks)", lambda: p.map(burn, durations))
        run("multiprocessing Pool.imap (chunksize=1)", lambda: list(p.imap(burn, durations)))
    with cf.ProcessPoolExecutor(WORKERS) as ex:
        ex.submit(inc, 0).result()
        run("concurrent.futures ProcessPoolExecutor.map", lambda: list(ex.map(burn, durations)))
    if loky is not None:
        ex = loky.get_reusable_executor(max_workers=WORKERS)
        ex.submit(inc, 0).result()
        run("loky map", lambda: list(ex.map(burn, durations)))
    if joblib is not None:
        par = joblib.Parallel(n_jobs=WORKERS)
        run("joblib Parallel (auto batch)", lambda: par(joblib.delayed(burn)(d) for d in durations))
    if mpire is not None:
        with mpire.WorkerPool(n_jobs=WORKERS) as p:
            run("mpire WorkerPool.map", lambda: p.map(burn, durations))
    table(f"Heavy-tailed load: 200 Pareto tasks, {serial:.2f} s serial, {WORKERS} workers "
          f"(efficiency = serial / {WORKERS} / makespan; longest task {max(durations):.3f} s)",
          ["library", "makespan s", "efficiency"], rows)


# -- start-up ------------------------------------------------------------------------------

STARTUP = {
    "paralelo Pool": "import paralelo as m\nt=T()\np=m.Pool({w})\np.apply(inc,(1,))\nd=T()-t\np.terminate()",
    "paralelo ProcessPoolExecutor": "import paralelo as m\nt=T()\ne=m.ProcessPoolExecutor({w})\ne.submit(inc,1).result()\nd=T()-t\ne.shutdown()",
    "multiprocessing Pool (fork)": "import multiprocessing as m\nt=T()\np=m.get_context('fork').Pool({w})\np.apply(inc,(1,))\nd=T()-t\np.terminate()",
    "multiprocessing Pool (forkserver)": "import multiprocessing as m\nt=T()\np=m.get_context('forkserver').Pool({w})\np.apply(inc,(1,))\nd=T()-t\np.terminate()",
    "multiprocessing Pool (spawn)": "import multiprocessing as m\nt=T()\np=m.get_context('spawn').Pool({w})\np.apply(inc,(1,))\nd=T()-t\np.terminate()",
    "concurrent.futures ProcessPoolExecutor": "import concurrent.futures as m\nt=T()\ne=m.ProcessPoolExecutor({w})\ne.submit(inc,1).result()\nd=T()-t\ne.shutdown()",
    "loky": "import loky as m\nt=T()\ne=m.get_reusable_executor(max_workers={w})\ne.submit(inc,1).result()\nd=T()-t\ne.shutdown()",
    "mpire": "import mpire as m\nt=T()\np=m.WorkerPool(n_jobs={w})\np.map(inc,[1])\nd=T()-t\np.terminate()",
}


def section_startup(repeats=5):
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    base = None
    for name, body in STARTUP.items():
        lib = body.split()[1]
        if _opt(lib.split(".")[0]) is None:
            continue
        code = ("import sys\nsys.path.insert(0, %r)\nfrom _tasks import inc\nfrom time import perf_counter as T\n"
                "if __name__ == '__main__':\n" % here)
        code += "".join("    " + line + "\n" for line in body.format(w=WORKERS).splitlines())
        code += "    print(d)\n"
        times = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise RuntimeError(f"{name}: {out.stderr}")
            times.append(float(out.stdout.split()[-1]))
        med = statistics.median(times) * 1e3
        if name == "concurrent.futures ProcessPoolExecutor":
            base = med
        rows.append([name, f"{med:.1f}", f"{min(times) * 1e3:.1f}"])
    for r in rows:
        r.append(f"{float(r[1]) / base:.2f}x" if base else "")
    table(f"Cold start: constructor to first result, {WORKERS} workers, median of {repeats} fresh interpreters",
          ["library", "median ms", "best ms", "vs ProcessPoolExecutor"], rows)


def main(argv):
    sections = argv or ["overhead", "auto", "balance", "startup"]
    print(f"# paralelo {paralelo.__version__} benchmarks — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    for s in sections:
        {"overhead": lambda: section_overhead(False), "auto": lambda: section_overhead(True),
         "balance": section_balance, "startup": section_startup}[s]()


if __name__ == "__main__":
    main(sys.argv[1:])
