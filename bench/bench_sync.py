"""Synchronisation primitives between processes: paralelo beside multiprocessing (fork),
in one run.

    python bench/bench_sync.py               # every case (≈ 1 minute on 2 cores)
    python bench/bench_sync.py event barrier # some: contended event barrier semaphore waiters uncontended rlock
    python bench/bench_sync.py --repeats 3   # fresh runs per case (default 5)

Cases:
  contended    two processes each take a Lock 300,000 times and add 1 to a raw shared
               counter under it: increments per second
  event        Event ping-pong between two processes (set, the other wakes, clears and
               sets the other event): round trips per second (1e6 / that = µs)
  barrier      Barrier(2) rounds between two processes: rounds per second
  semaphore    two processes each take and give back a Semaphore(1) 200,000 times: per s
  waiters      six processes each take a Semaphore(1) 4,000 times, yielding the core while
               they hold it (so the others sleep): per second
  uncontended  Lock acquire + release from Python, one thread: per second (paralelo's,
               threading's and multiprocessing's Lock timed alike in one process are
               printed after the table)
  rlock        RLock acquire + release, one thread: per second
  threadmap    ThreadPoolExecutor(4).map over 100,000 trivial calls: calls per second
               (1e6 / that = µs per call; concurrent.futures' executor in the
               multiprocessing column)

Each case runs as a script in a fresh interpreter per library, the libraries taking turns;
the table shows medians and paralelo's ratio to multiprocessing (above 1: faster).
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import LIB_HEAD, compare  # noqa: E402

def _uncontended(kind: str) -> str:
    """A million acquire + release of a `kind` lock, by one thread: per second."""
    return f"""
        N = 1_000_000
        if __name__ == "__main__":
            lock = mp.{kind}()
            acquire, release = lock.acquire, lock.release
            t = T()
            for _ in range(N):
                acquire(); release()
            print(N / (T() - t))
    """


CASES = {
    "contended": ("contended Lock, two processes (increments per s)", """
        N = 300_000
        def add(lock, v, n):
            acquire, release = lock.acquire, lock.release
            for _ in range(n):
                acquire()
                v.value += 1
                release()
        if __name__ == "__main__":
            lock, v = mp.Lock(), mp.RawValue("i", 0)
            ps = [mp.Process(target=add, args=(lock, v, N)) for _ in range(2)]
            t = T()
            for p in ps: p.start()
            for p in ps: p.join()
            d = T() - t
            assert v.value == 2 * N
            print(2 * N / d)
    """),
    "event": ("Event ping-pong, two processes (round trips per s)", """
        N = 20_000
        def pong(ping, back, n):
            for _ in range(n):
                ping.wait(); ping.clear(); back.set()
        if __name__ == "__main__":
            ping, back = mp.Event(), mp.Event()
            p = mp.Process(target=pong, args=(ping, back, N)); p.start()
            t = T()
            for _ in range(N):
                ping.set(); back.wait(); back.clear()
            d = T() - t
            p.join()
            print(N / d)
    """),
    "barrier": ("Barrier(2) rounds, two processes (rounds per s)", """
        N = 20_000
        def party(bar, n):
            for _ in range(n):
                bar.wait()
        if __name__ == "__main__":
            bar = mp.Barrier(2)
            p = mp.Process(target=party, args=(bar, N)); p.start()
            t = T()
            for _ in range(N):
                bar.wait()
            d = T() - t
            p.join()
            print(N / d)
    """),
    "semaphore": ("Semaphore(1) taken and given back, two processes (per s)", """
        N = 200_000
        def use(sem, n):
            acquire, release = sem.acquire, sem.release
            for _ in range(n):
                acquire(); release()
        if __name__ == "__main__":
            sem = mp.Semaphore(1)
            ps = [mp.Process(target=use, args=(sem, N)) for _ in range(2)]
            t = T()
            for p in ps: p.start()
            for p in ps: p.join()
            print(2 * N / (T() - t))
    """),
    "waiters": ("Semaphore(1) taken and given back, six processes, held across a yield (per s)", """
        import time
        N = 4_000
        def use(sem, n):
            for _ in range(n):
                sem.acquire(); time.sleep(0); sem.release()
        if __name__ == "__main__":
            sem = mp.Semaphore(1)
            ps = [mp.Process(target=use, args=(sem, N)) for _ in range(6)]
            t = T()
            for p in ps: p.start()
            for p in ps: p.join()
            print(6 * N / (T() - t))
    """),
    "uncontended": ("Lock acquire + release, one thread (per s)", _uncontended("Lock")),
    "rlock": ("RLock acquire + release, one thread (per s)", _uncontended("RLock")),
    "threadmap": ("ThreadPoolExecutor.map, 100,000 trivial calls (calls per s)", """
        N = 100_000
        if __name__ == "__main__":
            if LIB == "paralelo":
                from paralelo import ThreadPoolExecutor
            else:
                from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(4) as ex:
                list(ex.map(abs, range(100)))
                t = T()
                assert sum(ex.map(abs, range(N))) == N * (N - 1) // 2
                print(N / (T() - t))
    """),
}


def main() -> None:
    compare(CASES, LIB_HEAD, "synchronisation between processes (and a thread pool)", ",.0f")
    if "uncontended" in sys.argv or len(sys.argv) == 1 or sys.argv[1].startswith("--"):
        # threading.Lock beside both, timed the same way in this one process (the table's
        # scripts loop over globals: a different, slower loop than timeit's).
        import multiprocessing
        import threading

        import paralelo

        n = 1_000_000
        rates = []
        for name, make in (("paralelo.Lock", paralelo.Lock), ("threading.Lock", threading.Lock),
                           ("multiprocessing.Lock", multiprocessing.Lock)):
            lock = make()
            secs = min(timeit.repeat("acquire(); release()", number=n, repeat=5,
                                     globals={"acquire": lock.acquire, "release": lock.release}))
            rates.append(f"{name} {n / secs:,.0f}")
        print("\nreference, acquire + release per s, one thread, timeit in one process: " + ", ".join(rates))

if __name__ == "__main__":
    main()
