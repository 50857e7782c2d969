"""Seeing the work: what paralelo's observability costs, beside the rivals that offer the
same, in one run. Each case is a script whose functions live in ``__main__``, run in a
fresh interpreter per library, the libraries taking turns.

    python bench/bench_observe.py                 # every case
    python bench/bench_observe.py progress        # some
    python bench/bench_observe.py --repeats 3     # fresh runs per case (default 5)

Cases (2 workers):
  progress  a map of 100,000 trivial items with a tqdm bar (drawn to stderr, a pipe
            here): ms a map, the median of 7 maps in each run. paralelo's
            ``Pool.map(progress=True)`` against the same map with no bar (the target:
            under 1% more), tqdm's ``process_map`` (concurrent.futures underneath, chunks
            of 1,000) and mpire's ``progress_bar=True``

mpire is optional (``pip install mpire``): without it, its column reads "-".
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import table  # noqa: E402
from _scripts import medians, repeats_and_cases  # noqa: E402

HEAD = textwrap.dedent(
    """
    import statistics, sys, time
    LIB = sys.argv[1]
    T = time.perf_counter
    N = 100_000

    def trivial(x):
        return x
    """
)

CASES = {
    "progress": ("a map of 100,000 trivial items with a progress bar (ms a map)",
                 ("paralelo", "paralelo, no bar", "tqdm process_map", "mpire"), """
        def timed(run):
            run()
            times = []
            for _ in range(7):
                t = T()
                out = run()
                times.append(T() - t)
                assert len(out) == N and out[-1] == N - 1
            return statistics.median(times) * 1e3

        if __name__ == "__main__":
            items = list(range(N))
            if LIB.startswith("paralelo"):
                import paralelo
                bar = LIB == "paralelo"
                with paralelo.Pool(2) as pool:
                    print(timed(lambda: pool.map(trivial, items, progress=bar)))
            elif LIB == "tqdm process_map":
                from tqdm.contrib.concurrent import process_map
                print(timed(lambda: process_map(trivial, items, max_workers=2, chunksize=1000)))
            else:
                from mpire import WorkerPool
                with WorkerPool(2) as pool:
                    print(timed(lambda: pool.map(trivial, items, progress_bar=True)))
    """),
}


def main() -> None:
    repeats, chosen = repeats_and_cases(CASES)
    have_mpire = importlib.util.find_spec("mpire") is not None
    rows = []
    for name in chosen:
        title, libs, code = CASES[name]
        run_libs = tuple(lib for lib in libs if lib != "mpire" or have_mpire)
        got = medians(HEAD, code, run_libs, repeats)
        ours = got["paralelo"]
        for lib in libs[1:]:
            theirs = got.get(lib)
            rows.append((title, lib, f"{ours:.2f}", "-" if theirs is None else f"{theirs:.2f}",
                         "-" if theirs is None else f"{ours / theirs:.3f}"))
    table(f"seeing the work, 2 workers, median of {repeats} runs",
          ("case", "rival", "paralelo", "rival", "x rival"), rows)


if __name__ == "__main__":
    main()
