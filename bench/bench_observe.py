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

import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import against_rivals  # noqa: E402

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
    against_rivals(HEAD, CASES, "seeing the work, 2 workers", optional="mpire", digits=3)


if __name__ == "__main__":
    main()
