"""The demo: the guide's Pool, executor, Queue and Pipe examples through paralelo; a
speed-up table against serial Python and multiprocessing on this machine; a long map
with its progress bar and insights; and Amdahl's law measured, with its chart."""

from __future__ import annotations

import functools
import multiprocessing
import os
import time

import paralelo


def worker(n: int) -> int:
    return n * n


def square(x: int) -> int:
    return x * x


def sum_squares(a: int, b: int) -> int:
    return a + b


def count_primes(bounds: tuple[int, int]) -> int:
    """CPU-bound work: primes in [lo, hi) by trial division."""
    lo, hi = bounds
    found = 0
    for n in range(max(lo, 2), hi):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            found += 1
    return found


def _consume(cola, out) -> None:  # type: ignore[no-untyped-def]
    while (elemento := cola.get()) is not None:
        out.put(elemento * elemento)


def _echo(conn) -> None:  # type: ignore[no-untyped-def]
    while (x := conn.recv()) is not None:
        conn.send(x)


def _round_trip(lib, n: int = 2000) -> float:  # type: ignore[no-untyped-def]
    """Seconds per Pipe round trip of a small object to a child process and back."""
    a, b = lib.Pipe()
    p = lib.Process(target=_echo, args=(b,))
    p.start()
    for i in range(100):
        a.send(i), a.recv()
    t = time.perf_counter()
    for i in range(n):
        a.send(i)
        a.recv()
    d = (time.perf_counter() - t) / n
    a.send(None)
    p.join()
    return d


def _timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _time_pool(pool, tiny, blocks, ref_tiny, ref_cpu):  # type: ignore[no-untyped-def]
    """Times one pool on both workloads, checking its results against the serial ones."""
    with pool:
        pool.map(square, range(4))  # started and warm: we time work, not start-up
        t_tiny, out = _timed(lambda: pool.map(square, tiny))
        assert out == ref_tiny
        t_cpu, out = _timed(lambda: pool.map(count_primes, blocks))
        assert out == ref_cpu
    return t_tiny, t_cpu


def run(workers: int | None = None) -> None:
    workers = workers or paralelo.cpu_count()
    print("== The guide's examples, with `import paralelo` instead of multiprocessing ==")
    with paralelo.Pool(processes=4) as pool:
        print("pool.map(worker, range(10)) ->", pool.map(worker, range(10)))
        squared = pool.map(square, range(10))
        print("Suma de cuadrados:", pool.reduce(sum_squares, squared))
    with paralelo.ProcessPoolExecutor(max_workers=4) as executor:
        futures = [executor.submit(worker, i) for i in range(4)]
        for future in paralelo.as_completed(futures):
            print("Resultado:", future.result())
    with paralelo.Pool(2) as pool:
        print("lambdas work too:", pool.map(lambda x: x + 1, range(5)))
        print("ordered reduce:", pool.reduce(lambda a, b: a + b, list("paralelo")))

    cola, out = paralelo.Queue(), paralelo.Queue()
    procesos = [paralelo.Process(target=_consume, args=(cola, out)) for _ in range(2)]
    for p in procesos:
        p.start()
    for elemento in range(10):
        cola.put(elemento)
    for _ in procesos:
        cola.put(None)
    print("Queue + 2 Processes, sum of squares:", sum(out.get() for _ in range(10)))
    for p in procesos:
        p.join()
    rt_pa, rt_mp = _round_trip(paralelo), _round_trip(multiprocessing)
    print(f"Pipe round trip to a child process: {rt_pa * 1e6:.1f} µs (multiprocessing: {rt_mp * 1e6:.1f} µs)")

    print(f"\n== Speed-up on this machine ({workers} workers) ==")
    tiny = range(200_000)
    blocks = [(i, i + 5_000) for i in range(0, 300_000, 5_000)]
    rows = []
    t_serial_tiny, ref_tiny = _timed(lambda: [square(x) for x in tiny])
    t_serial_cpu, ref_cpu = _timed(lambda: [count_primes(b) for b in blocks])
    t_mp_tiny, t_mp_cpu = _time_pool(multiprocessing.Pool(workers), tiny, blocks, ref_tiny, ref_cpu)
    t_pa_tiny, t_pa_cpu = _time_pool(paralelo.Pool(workers), tiny, blocks, ref_tiny, ref_cpu)
    rows.append(("200,000 tiny tasks (x*x)", t_serial_tiny, t_mp_tiny, t_pa_tiny))
    rows.append(("60 CPU-bound blocks (primes)", t_serial_cpu, t_mp_cpu, t_pa_cpu))
    print(f"| {'workload':30} | serial s | multiprocessing s | paralelo s | speed-up vs serial | vs multiprocessing |")
    print(f"|{'-' * 32}|---------:|------------------:|-----------:|-------------------:|-------------------:|")
    for name, s, m, p in rows:
        print(f"| {name:30} | {s:8.3f} | {m:17.3f} | {p:10.3f} | {s / p:17.2f}x | {m / p:17.2f}x |")

    print("\n== A longer map: progress bar, then where the time went (pool.insights()) ==")
    fine = [(i, i + 1_000) for i in range(0, 600_000, 1_000)]
    with paralelo.Pool(workers) as pool:
        try:
            found = sum(pool.map(count_primes, fine, progress={"desc": "primes", "unit": "block"}))
        except ImportError as e:  # (tqdm missing)
            print(f"(no bar: {e})")
            found = sum(pool.map(count_primes, fine))
        print(f"{found} primes below 600,000")
        print(pool.insights())

    print(f"\n== Amdahl's law, measured: the same count at 1 to {workers} workers (paralelo.scaling) ==")
    # (Up to the CPUs: past them, a count measures the machine, not the work.)
    counts = sorted({1, workers} | {2**i for i in range(workers.bit_length()) if 2**i <= workers})
    result = paralelo.scaling(functools.partial(_count_with, blocks=blocks), workers=counts, repeats=3)
    print(result)
    try:
        print(f"chart: {os.path.abspath(result.chart('paralelo-scaling.png'))}")
    except ImportError as e:
        print(f"(no chart: {e})")


def _count_with(workers: int, blocks: list) -> int:
    with paralelo.Pool(workers) as pool:
        return sum(pool.map(count_primes, blocks))
