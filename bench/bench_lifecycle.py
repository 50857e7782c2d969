"""Pool lifecycle and shutdown cost: paralelo beside multiprocessing.Pool (fork context) and
concurrent.futures.ProcessPoolExecutor, in one run, all with 2 workers.

    python bench/bench_lifecycle.py                      # all sections (≈ 30 s on 2 cores)
    python bench/bench_lifecycle.py terminate latency    # some sections: terminate, close, executor, latency
    python bench/bench_lifecycle.py --cycles 10 --repeats 5   # fewer cycles / latency samples

Sections:
  terminate  CYCLES x (create Pool -> map(inc, range(100)) -> terminate() + join())
  close      CYCLES x (create Pool -> map(inc, range(100)) -> close() + join())
  executor   CYCLES x (create executor -> list(map(inc, range(100))) -> shutdown(wait=True))
  latency    on a warm pool (started, one map done), the time of just close() + join(),
             of just terminate() + join(), and of an executor's shutdown(wait=True):
             median of REPEATS fresh pools

Prints markdown tables with a ratio against the stdlib rival ("vs multiprocessing" /
"vs concurrent.futures"; below 1 means paralelo is faster). One untimed cycle of each
library runs first, so one-off costs (imports, paralelo's zygote) are not counted.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tasks import inc  # noqa: E402
from _report import table  # noqa: E402

import paralelo  # noqa: E402

WORKERS = 2
CYCLES = 50
REPEATS = 20
ITEMS = range(100)
EXPECTED = [x + 1 for x in ITEMS]

MP = mp.get_context("fork")


# -- one cycle of each kind --------------------------------------------------------------

def pool_cycle(make, end):
    p = make(WORKERS)
    try:
        out = p.map(inc, ITEMS)
    finally:
        if end == "terminate":
            p.terminate()
        else:
            p.close()
        p.join()
    assert out == EXPECTED


def executor_cycle(make):
    ex = make(WORKERS)
    try:
        out = list(ex.map(inc, ITEMS))
    finally:
        ex.shutdown(wait=True)
    assert out == EXPECTED


POOLS = [("paralelo Pool", paralelo.Pool), ("multiprocessing Pool (fork)", MP.Pool)]
EXECUTORS = [("paralelo ProcessPoolExecutor", paralelo.ProcessPoolExecutor),
             ("concurrent.futures ProcessPoolExecutor", lambda w: cf.ProcessPoolExecutor(w, mp_context=MP))]


def cycles_rows(cases, cycle, cycles):
    """[(name, total s)], each after one untimed warm-up cycle."""
    out = []
    for name, make in cases:
        cycle(make)
        t = time.perf_counter()
        for _ in range(cycles):
            cycle(make)
        out.append((name, time.perf_counter() - t))
    return out


def print_cycles(title, results, cycles, rival):
    base = dict(results)[rival]
    rows = [[name, f"{t:.3f}", f"{t / cycles * 1e3:.1f}", f"{t / base:.2f}x"] for name, t in results]
    vs = "vs multiprocessing" if rival.startswith("multiprocessing") else "vs concurrent.futures"
    table(title, ["library", "total s", "ms/cycle", vs], rows)


def section_terminate(cycles, repeats):
    res = cycles_rows(POOLS, lambda make: pool_cycle(make, "terminate"), cycles)
    print_cycles(f"{cycles} cycles of create → map(inc, range(100)) → terminate() + join(), {WORKERS} workers",
                 res, cycles, POOLS[1][0])


def section_close(cycles, repeats):
    res = cycles_rows(POOLS, lambda make: pool_cycle(make, "close"), cycles)
    print_cycles(f"{cycles} cycles of create → map(inc, range(100)) → close() + join(), {WORKERS} workers",
                 res, cycles, POOLS[1][0])


def section_executor(cycles, repeats):
    res = cycles_rows(EXECUTORS, executor_cycle, cycles)
    print_cycles(f"{cycles} cycles of create → map(inc, range(100)) → shutdown(wait=True), {WORKERS} workers",
                 res, cycles, EXECUTORS[1][0])


# -- latency of the shutdown call alone ------------------------------------------------------

def shutdown_latency(make, stop, repeats):
    """Median and max seconds of ``stop(pool)`` on a warm pool, over ``repeats`` fresh pools."""
    times = []
    for i in range(repeats + 1):
        p = make(WORKERS)
        try:
            out = list(p.map(inc, ITEMS))
            assert out == EXPECTED
        except BaseException:
            stop(p)
            raise
        t = time.perf_counter()
        stop(p)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times), max(times)


def _close_join(p):
    p.close()
    p.join()


def _terminate_join(p):
    p.terminate()
    p.join()


def _shutdown(ex):
    ex.shutdown(wait=True)


def section_latency(cycles, repeats):
    rows = []
    groups = [("close() + join()", POOLS, _close_join, "vs multiprocessing"),
              ("terminate() + join()", POOLS, _terminate_join, "vs multiprocessing"),
              ("shutdown(wait=True)", EXECUTORS, _shutdown, "vs concurrent.futures")]
    for call, cases, stop, vs in groups:
        res = [(name, *shutdown_latency(make, stop, repeats)) for name, make in cases]
        base = res[1][1]
        for name, med, worst in res:
            rows.append([call, name, f"{med * 1e3:.2f}", f"{worst * 1e3:.2f}", f"{med / base:.2f}x {vs}"])
    table(f"Latency of the shutdown call alone on a warm pool ({WORKERS} workers), "
          f"median of {repeats} fresh pools", ["call", "library", "median ms", "max ms", "ratio"], rows)


SECTIONS = {"terminate": section_terminate, "close": section_close,
            "executor": section_executor, "latency": section_latency}


def main(argv):
    argv = list(argv)
    cycles, repeats = CYCLES, REPEATS
    for flag in ("--cycles", "--repeats"):
        if flag in argv:
            i = argv.index(flag)
            value = int(argv[i + 1])
            del argv[i:i + 2]
            if flag == "--cycles":
                cycles = value
            else:
                repeats = value
    unknown = [s for s in argv if s not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    sections = argv or list(SECTIONS)
    print(f"# paralelo {paralelo.__version__} lifecycle benchmarks — {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    for s in sections:
        SECTIONS[s](cycles, repeats)


if __name__ == "__main__":
    main(sys.argv[1:])
