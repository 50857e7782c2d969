"""Processes and shared state: paralelo beside multiprocessing (fork), in one run.

    python bench/bench_ipc.py                 # every case (≈ 20 s on 2 cores)
    python bench/bench_ipc.py value lock      # some: value lock process
    python bench/bench_ipc.py --repeats 3     # fewer fresh runs per case (default 5)

Cases:
  value    two processes each add 1 to a shared Value 200,000 times under its lock
           (`with v.get_lock(): v.value += 1`): increments per second
  lock     one process takes and releases a Lock 1,000,000 times (uncontended): per second
  process  start + join of a Process that returns at once: per second, 200 in a row

Each case runs as a script in a fresh interpreter per library, the libraries taking turns;
the table shows medians and paralelo's ratio to multiprocessing ("x rival": above 1 means
paralelo does more per second). Queues, pipes and zero-copy arrays get their cases as
they are built.
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
        import paralelo as mp
    else:
        import multiprocessing as mp
    T = time.perf_counter
    """
)

CASES = {
    "value": ("Value += 1 under its lock, two processes (per s)", """
        N = 200_000
        def add(v, n):
            for _ in range(n):
                with v.get_lock():
                    v.value += 1
        if __name__ == "__main__":
            v = mp.Value("i", 0)
            ps = [mp.Process(target=add, args=(v, N)) for _ in range(2)]
            t = T()
            for p in ps: p.start()
            for p in ps: p.join()
            d = T() - t
            assert v.value == 2 * N
            print(2 * N / d)
    """),
    "lock": ("Lock acquire + release, uncontended (per s)", """
        N = 1_000_000
        if __name__ == "__main__":
            lock = mp.Lock()
            acquire, release = lock.acquire, lock.release
            t = T()
            for _ in range(N):
                acquire(); release()
            print(N / (T() - t))
    """),
    "process": ("Process start + join, one at a time (per s)", """
        N = 200
        def nothing():
            pass
        if __name__ == "__main__":
            t = T()
            for _ in range(N):
                p = mp.Process(target=nothing); p.start(); p.join()
            print(N / (T() - t))
    """),
}


def main() -> None:
    repeats, chosen = repeats_and_cases(CASES)
    rows = []
    for name in chosen:
        title, code = CASES[name]
        secs = medians(HEAD, code, ("paralelo", "multiprocessing"), repeats)
        ours, theirs = secs["paralelo"], secs["multiprocessing"]
        rows.append((title, f"{ours:,.0f}", f"{theirs:,.0f}", f"{ours / theirs:.2f}"))
    table(f"processes and shared state, median of {repeats} runs",
          ("case", "paralelo", "multiprocessing", "x rival"), rows)


if __name__ == "__main__":
    main()
