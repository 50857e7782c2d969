"""paralelo as a drop-in for multiprocessing and concurrent.futures, on the programs users
write: every case is a script whose functions live in ``__main__``, run in a fresh
interpreter once per library, side by side in one run.

    python bench/bench_dropin.py                 # every case (≈ 2 min on 2 cores)
    python bench/bench_dropin.py global slow     # some: global slow imap submit list warmlist numpy
    python bench/bench_dropin.py --repeats 3     # fewer fresh runs per case (default 5)

Cases:
  global  a 400 MB numpy global built before the pool; 1,000 tiny tasks read it
          (Pool creation + map), against multiprocessing (fork)
  slow    Pool(4).map of four 0.5 s tasks, against multiprocessing and concurrent.futures
  imap    the first result of imap over a generator that yields an item every 0.1 s
  submit  20,000 trivial submit() calls and their results, against concurrent.futures
  list    map with automatic chunking over a list of 100,000 small ints, against a serial
          loop (median of a fresh pool's first 5 maps, and of the loop's first 5 runs)
  warmlist  the same once both are warm: maps (and loops) 11 to 30
  numpy   cold start with numpy imported: create the pool, run one call, against
          ProcessPoolExecutor and multiprocessing.Pool

Each script prints its own seconds; each runs REPEATS times in fresh interpreters, the
libraries taking turns, and the table shows medians and the ratio to the rival ("x rival":
below 1 means paralelo is faster).
"""

from __future__ import annotations

import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import table  # noqa: E402
from _scripts import medians, repeats_and_cases  # noqa: E402

HEAD = textwrap.dedent(
    """
    import sys, time
    LIB = sys.argv[1]
    if LIB == "paralelo":
        from paralelo import Pool, ProcessPoolExecutor
    else:
        from multiprocessing import Pool
        from concurrent.futures import ProcessPoolExecutor
    T = time.perf_counter
    """
)

def _list_case(runs: int, skip: int) -> str:
    """The list case's script: `runs` maps (or serial loops), the median of those after
    the first `skip`."""
    return f"""
        import statistics
        def inc(x):
            return x + 1
        if __name__ == "__main__":
            data = list(range(100_000))
            times = []
            if LIB == "serial":
                for _ in range({runs}):
                    t = T(); out = [inc(x) for x in data]; times.append(T() - t)
            else:
                with Pool(2) as p:
                    p.map(inc, range(10))
                    for _ in range({runs}):
                        t = T(); out = p.map(inc, data); times.append(T() - t)
            assert out[-1] == 100_000
            print(statistics.median(times[{skip}:]))
    """


CASES = {
    "global": ("400 MB global, Pool create + 1,000 tiny tasks", ("paralelo", "multiprocessing"), """
        import numpy as np
        BIG = np.ones(50_000_000)  # 400 MB
        def first(i):
            return float(BIG[i])
        if __name__ == "__main__":
            t = T()
            with Pool(2) as p:
                assert sum(p.map(first, range(1000))) == 1000
                d = T() - t
            print(d)
    """),
    "slow": ("Pool(4).map of four 0.5 s tasks", ("paralelo", "multiprocessing", "concurrent.futures"), """
        def nap(x):
            time.sleep(0.5)
            return x
        if __name__ == "__main__":
            make = Pool if LIB != "concurrent.futures" else ProcessPoolExecutor
            with make(4) as p:
                p.map(abs, range(4)) if LIB != "concurrent.futures" else list(p.map(abs, range(4)))
                t = T()
                out = list(p.map(nap, range(4)))
                d = T() - t
            assert out == [0, 1, 2, 3]
            print(d)
    """),
    "imap": ("first result of imap over a 0.1 s/item generator", ("paralelo", "multiprocessing"), """
        def double(x):
            return 2 * x
        def slow_source():
            for i in range(10):
                time.sleep(0.1)
                yield i
        if __name__ == "__main__":
            with Pool(2) as p:
                p.map(abs, range(2))
                t = T()
                it = p.imap(double, slow_source())
                assert next(it) == 0
                d = T() - t
                assert list(it) == [2 * i for i in range(1, 10)]
            print(d)
    """),
    "submit": ("20,000 trivial submit() calls", ("paralelo", "concurrent.futures"), """
        def inc(x):
            return x + 1
        if __name__ == "__main__":
            with ProcessPoolExecutor(2) as ex:
                ex.submit(inc, 0).result()
                t = T()
                fs = [ex.submit(inc, i) for i in range(20_000)]
                assert sum(f.result() for f in fs) == sum(range(1, 20_001))
                d = T() - t
            print(d)
    """),
    "list": ("automatic chunking over a list of 100,000 ints", ("paralelo", "serial", "multiprocessing"),
             _list_case(runs=5, skip=0)),
    "warmlist": ("the list case on a warm pool (maps 11-30 of one pool)", ("paralelo", "serial", "multiprocessing"),
                 _list_case(runs=30, skip=10)),
    "numpy": ("cold start with numpy imported (create + one call)", ("paralelo", "concurrent.futures", "multiprocessing"), """
        import numpy as np
        def norm(n):
            return float(np.linalg.norm(np.ones(n)))
        if __name__ == "__main__":
            t = T()
            if LIB == "multiprocessing":
                with Pool(2) as p:
                    p.apply(norm, (4,))
                    d = T() - t
            else:
                with ProcessPoolExecutor(2) as ex:
                    ex.submit(norm, 4).result()
                    d = T() - t
            print(d)
    """),
}


def main() -> None:
    repeats, chosen = repeats_and_cases(CASES)
    rows = []
    for name in chosen:
        title, libs, code = CASES[name]
        secs = medians(HEAD, code, libs, repeats)
        ours = secs["paralelo"]
        for lib in libs[1:]:
            rows.append((title, lib, f"{ours:.4f}", f"{secs[lib]:.4f}", f"{ours / secs[lib]:.2f}"))
    table(f"paralelo as a drop-in: __main__ scripts, 2 workers unless noted, median of {repeats} runs",
          ("case", "rival", "paralelo s", "rival s", "x rival"), rows)


if __name__ == "__main__":
    main()
