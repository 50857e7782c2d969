"""Soak: millions of tiny tasks through ONE paralelo Pool, watching for memory growth.

    python bench/bench_soak.py                  # 10,000,000 tasks of x + 1 (≈ 10 s–1 min on 2 cores)
    python bench/bench_soak.py --quick          # 200,000 tasks (a few seconds)
    python bench/bench_soak.py --tasks 3000000  # any count

The first half of the tasks goes through a single ``imap`` over one large range (a
leak per task, per read-ahead batch or per result would grow memory as it runs); the
second half through ``map`` in batches of up to 1,000,000. The resident set size (VmRSS
from /proc/PID/status) of the parent and of every live worker (``pool._engine.pids()``)
is sampled before the first task and then at 10 evenly spaced points. Prints a markdown
table and the growth from the 2nd sample to the last (the first is warm-up), plus
tasks/s. It reports and never asserts: the exit status is 0 whatever it finds (see
tests/test_soak.py for the CI check with a bound).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tasks import inc  # noqa: E402
from _report import table  # noqa: E402

import paralelo  # noqa: E402

WORKERS = 2
SAMPLES = 10  # evenly spaced samples after the start one
MAP_BATCH = 1_000_000
CHECK_BLOCK = 10_000  # imap results are read and checked in blocks this long


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """VmRSS (or another /proc/PID/status size in kB, e.g. VmHWM) of ``pid`` in MB
    (2**20 bytes), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def worker_pids(pool) -> list[int]:
    try:
        return list(pool._engine.pids())
    except Exception:  # noqa: BLE001 - a private hook; report what we can rather than fail
        return []


class Sampler:
    def __init__(self, pool):
        self.pool = pool
        self.samples = []  # (tasks done, elapsed s, parent MB, [(pid, MB)])
        self.t0 = time.perf_counter()

    def __call__(self, done: int) -> None:
        elapsed = time.perf_counter() - self.t0
        pids = worker_pids(self.pool)
        self.samples.append((done, elapsed, rss_mb(os.getpid()), [(p, rss_mb(p)) for p in pids]))


def fmt(mb):
    return "—" if mb is None else f"{mb:.1f}"


def run(n: int, workers: int) -> None:
    bounds = [round(k * n / SAMPLES) for k in range(SAMPLES + 1)]
    half = SAMPLES // 2
    n_imap = bounds[half]
    wrong = 0
    print(f"# paralelo {paralelo.__version__} soak — {n:,} tasks of x + 1, one Pool({workers}); "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"\nimap over range({n_imap:,}), then map in batches of up to {MAP_BATCH:,} "
          f"over range({n_imap:,}, {n:,})")
    sys.stdout.flush()

    pool = paralelo.Pool(workers)
    try:
        pool.map(inc, range(1000))  # workers started and warm
        sample = Sampler(pool)
        sample(0)
        start = time.perf_counter()

        # -- imap: one lazy job over the whole first half ------------------------------
        it = pool.imap(inc, range(n_imap))
        done = 0
        for k in range(1, half + 1):
            while done < bounds[k]:
                block = list(itertools.islice(it, min(CHECK_BLOCK, bounds[k] - done)))
                if not block:
                    break
                if block != list(range(done + 1, done + 1 + len(block))):
                    wrong += sum(a != b for a, b in zip(block, range(done + 1, done + 1 + len(block))))
                done += len(block)
            sample(done)
        leftover = sum(1 for _ in it)  # nothing should be left; drains it if so
        wrong += leftover
        t_imap = time.perf_counter() - start

        # -- map: batches over the second half --------------------------------------
        t_map0 = time.perf_counter()
        for k in range(half + 1, SAMPLES + 1):
            while done < bounds[k]:
                hi = min(done + MAP_BATCH, bounds[k])
                out = pool.map(inc, range(done, hi))
                if out != list(range(done + 1, hi + 1)):
                    wrong += sum(a != b for a, b in zip(out, range(done + 1, hi + 1))) + abs(len(out) - (hi - done))
                del out
                done = hi
            sample(done)
        t_map = time.perf_counter() - t_map0
        total = time.perf_counter() - start

        peaks = [rss_mb(os.getpid(), "VmHWM")] + [rss_mb(p, "VmHWM") for p in worker_pids(pool)]
        t_close = time.perf_counter()
        pool.close()
        pool.join()
        t_close = time.perf_counter() - t_close
    except BaseException:
        pool.terminate()
        raise

    # -- report ----------------------------------------------------------------------
    width = max([len(s[3]) for s in sample.samples] + [workers])
    first_pids = [p for p, _ in sample.samples[0][3]]
    rows = []
    for i, (d, el, parent, ws) in enumerate(sample.samples):
        cells = []
        for j in range(width):
            if j < len(ws):
                pid, mb = ws[j]
                changed = j >= len(first_pids) or pid != first_pids[j]
                cells.append(fmt(mb) + (f" (pid {pid}*)" if changed else ""))
            else:
                cells.append("—")
        rows.append([i, f"{d:,}", f"{el:.2f}", fmt(parent)] + cells + [" ".join(str(p) for p, _ in ws)])
    table(f"RSS while {n:,} tasks run (MB = 2^20 bytes; * = a worker pid differs from the first sample's)",
          ["sample", "tasks done", "elapsed s", "parent MB"] + [f"worker {j} MB" for j in range(width)]
          + ["worker pids"], rows)

    base, last = sample.samples[1], sample.samples[-1]
    window = last[0] - base[0]

    def growth(a, b):
        return None if a is None or b is None else b - a

    g_parent = growth(base[2], last[2])
    base_w = dict(base[3])
    g_workers = [(pid, growth(base_w.get(pid), mb)) for pid, mb in last[3] if pid in base_w]
    g_workers = [(pid, g) for pid, g in g_workers if g is not None]
    replaced = sorted(set(p for p, _ in last[3]) ^ set(base_w))
    print(f"\nGrowth from sample 1 ({base[0]:,} tasks) to sample {len(sample.samples) - 1} "
          f"({last[0]:,} tasks), i.e. over {window:,} tasks:")
    if g_parent is not None:
        print(f"- parent: {g_parent:+.1f} MB ({g_parent * 2**20 / max(window, 1):+.2f} bytes/task)")
    if g_workers:
        pid, g = max(g_workers, key=lambda x: x[1])
        print(f"- workers, max: {g:+.1f} MB (pid {pid}; {g * 2**20 / max(window, 1):+.2f} bytes/task)")
    else:
        print("- workers: no worker lived through the whole window, so no growth to report")
    if replaced:
        print(f"- worker pids that came or went in the window: {replaced}")
    print(f"\nThroughput: {n / total:,.0f} tasks/s overall ({n:,} tasks in {total:.2f} s); "
          f"imap {n_imap / t_imap:,.0f} tasks/s, map {(n - n_imap) / max(t_map, 1e-9):,.0f} tasks/s")
    print(f"peak RSS (VmHWM): parent {fmt(peaks[0])} MB, workers " + ", ".join(fmt(p) for p in peaks[1:]) + " MB")
    print(f"close + join at the end: {t_close * 1e3:.1f} ms")
    print("results: all correct" if wrong == 0 else f"results: {wrong:,} WRONG or missing")
    sys.stdout.flush()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000_000, help="number of tasks (default 10,000,000)")
    ap.add_argument("--quick", action="store_true", help="200,000 tasks")
    ap.add_argument("--workers", type=int, default=WORKERS, help=f"pool size (default {WORKERS})")
    args = ap.parse_args(argv)
    n = 200_000 if args.quick else args.tasks
    if n < SAMPLES:
        ap.error(f"--tasks must be at least {SAMPLES}")
    run(n, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
