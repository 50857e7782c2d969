"""paralelo.evaluate beside numexpr, numba (prange, with and without fastmath) and numpy,
on the guide's data-parallel cases, in one run.

    python bench/bench_expressions.py              # 10 M elements, best of 15 runs each
    python bench/bench_expressions.py --n 1000000 --runs 30
    python bench/bench_expressions.py --gpu        # also device="cuda", beside cupy

Each case runs warm (compiled, cached) in this process, its contestants taking turns;
the table shows the best time of the runs and paralelo's speed-up over each rival ("x
faster": above 1 means paralelo is faster). A case's memory floor is the time its bytes
take to move (inputs read once, the output written once and, as any plain store does,
read first) at the speed a copy of 10 M doubles on every core moves them in the same
turns (numba's `prange`; `np.copyto`, one core, without numba); its "x faster" is the
share of it paralelo reaches, near 1 for a case bound by memory. Then shapes and
dtypes as data comes, beside numexpr: (N, 3) points, a Fortran-ordered matrix, a uint8
image. On a GPU (`--gpu`, with cupy), `sum(x*x)` on a cupy array is
timed beside cupy's own, and as a share of the device's memory bandwidth measured in the
same run (a device-to-device copy of the same array: bytes read and written per second).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import table  # noqa: E402

import paralelo  # noqa: E402


def best(f, runs: int) -> float:
    return race({"": f}, runs)[""]


def race(contestants: dict, runs: int, turn: int = 3) -> dict:
    """Each contestant's best time of `runs`, taken `turn` at a time in turns: this
    machine's memory bandwidth drifts from one second to the next, and turns give each
    contestant the same. The first run of a turn may meet the last contestant's threads
    still spinning (OpenBLAS's, OpenMP's); the others run as they would alone."""
    times: dict = {name: [] for name in contestants}
    for _ in range(-(-runs // turn)):
        for name, f in contestants.items():
            f()  # (warm: the first turn's compiles, the later turns' spinning neighbours)
            for _ in range(turn):
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def gpu_rows(n: int, runs: int) -> list:
    """`sum(x*x)` on the GPU: paralelo and cupy, and paralelo's share of the bandwidth."""
    try:
        import cupy
    except ImportError:
        print("--gpu: cupy is not installed; no GPU rows")
        return []

    def timed(f):
        def run():
            f()
            cupy.cuda.runtime.deviceSynchronize()
        return best(run, runs)

    x = cupy.random.random(n)
    y = cupy.empty_like(x)
    ours = timed(lambda: paralelo.evaluate("sum(x*x)", local_dict={"x": x}, device="cuda"))
    theirs = timed(lambda: (x * x).sum())
    dot = timed(lambda: cupy.dot(x, x))
    copy = timed(lambda: y.__setitem__(Ellipsis, x))
    bandwidth = 2 * x.nbytes / copy
    share = x.nbytes / ours / bandwidth
    title = f"GPU sum(x*x), {n:,} float64"
    rows = [(title, "cupy (x*x).sum()", f"{ours * 1e3:.3f}", f"{theirs * 1e3:.3f}",
             f"{theirs / ours:.2f}"),
            (title, "cupy.dot", f"{ours * 1e3:.3f}", f"{dot * 1e3:.3f}", f"{dot / ours:.2f}"),
            (f"GPU bandwidth {bandwidth / 1e9:.0f} GB/s (copy)", "share paralelo reaches", "", "", f"{share:.0%}")]
    return rows


def numba_kernels():
    try:
        import numba
    except ImportError:
        return {}
    out = {}
    for fast in (False, True):
        jit = numba.njit(parallel=True, fastmath=fast)

        @jit
        def sumsq(x):
            s = 0.0
            for i in numba.prange(x.shape[0]):
                s += x[i] * x[i]
            return s

        @jit
        def lin(a, b, o):
            for i in numba.prange(a.shape[0]):
                o[i] = 2 * a[i] + 3 * b[i]
            return o

        @jit
        def branch(a, b, o):
            for i in numba.prange(a.shape[0]):
                o[i] = np.sin(a[i]) ** 2 if a[i] > 0.5 else np.cos(b[i])
            return o

        @jit
        def fma32(a, b, c, o):
            for i in numba.prange(a.shape[0]):
                o[i] = a[i] * b[i] + c[i]
            return o

        @jit
        def copy(a, o):
            for i in numba.prange(a.shape[0]):
                o[i] = a[i]
            return o

        out["numba fastmath" if fast else "numba prange"] = (sumsq, lin, branch, fma32, copy)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--gpu", action="store_true", help="also device='cuda' beside cupy")
    parser.add_argument("--gpu-n", type=int, default=100_000_000,
                        help="elements on the GPU (enough that a call's fixed costs, some 30 µs, are small)")
    args = parser.parse_args()
    n, runs = args.n, args.runs
    rng = np.random.default_rng(0)
    x, a, b = rng.random(n), rng.random(n), rng.random(n)
    a32, b32, c32 = (rng.random(n, dtype=np.float32) for _ in range(3))
    o, o32 = np.empty(n), np.empty(n, np.float32)
    try:
        import numexpr as ne
    except ImportError:
        ne = None
    kernels = numba_kernels()
    cases = {
        "sum(x*x), float64": ("sum(x*x)", lambda: np.dot(x, x), "np.dot", 0, (x,)),
        "2*a + 3*b, float64": ("2*a + 3*b", lambda: 2 * a + 3 * b, "numpy", 1, (a, b, o)),
        "where(a > 0.5, sin(a)**2, cos(b))": ("where(a > 0.5, sin(a)**2, cos(b))",
                                               lambda: np.where(a > 0.5, np.sin(a) ** 2, np.cos(b)), "numpy", 2,
                                               (a, b, o)),
        "a*b + c, float32": ("a32*b32 + c32", lambda: a32 * b32 + c32, "numpy", 3, (a32, b32, c32, o32)),
    }
    rows = []
    env = {"x": x, "a": a, "b": b, "a32": a32, "b32": b32, "c32": c32}
    copy_on_cores = kernels.get("numba prange", (None,) * 5)[4]
    copier = "numba prange" if copy_on_cores is not None else "np.copyto"

    def copy() -> None:
        if copy_on_cores is not None:
            copy_on_cores(x, o)
        else:
            np.copyto(o, x)

    def floor_row(title: str, ours: float, copied: float, operands: tuple, out) -> tuple:
        moved = sum(v.nbytes for v in operands) + (2 * out.nbytes if out is not None else 0)
        floor = copied * moved / (3 * x.nbytes)
        return (title, "memory floor", f"{ours * 1e3:.2f}", f"{floor * 1e3:.2f}", f"{floor / ours:.2f}")

    for title, (ex, numpy_way, numpy_name, k, numba_args) in cases.items():
        contestants = {"paralelo": lambda: paralelo.evaluate(ex, local_dict=env), numpy_name: numpy_way}
        if ne is not None:
            contestants["numexpr"] = lambda: ne.evaluate(ex, local_dict=env)
        for name, fns in kernels.items():
            contestants[name] = lambda fn=fns[k]: fn(*numba_args)
        rivals = race({**contestants, "copy": copy}, runs)
        ours, copied = rivals.pop("paralelo"), rivals.pop("copy")
        for name, secs in rivals.items():
            rows.append((title, name, f"{ours * 1e3:.2f}", f"{secs * 1e3:.2f}", f"{secs / ours:.2f}"))
        inputs = numba_args[:-1] if k else numba_args
        rows.append(floor_row(title, ours, copied, inputs, numba_args[-1] if k else None))
    # Into a given array, as the numba kernels write: no fresh output's pages to fault in.
    into = {"2*a + 3*b": o, "a32*b32 + c32": o32}
    for ex, out in into.items():
        if ne is not None:
            timed = race({"paralelo": lambda: paralelo.evaluate(ex, local_dict=env, out=out),
                          "numexpr": lambda: ne.evaluate(ex, local_dict=env, out=out), "copy": copy}, runs)
            ours, theirs = timed["paralelo"], timed["numexpr"]
            rows.append((f"{ex}, out=", "numexpr", f"{ours * 1e3:.2f}", f"{theirs * 1e3:.2f}", f"{theirs / ours:.2f}"))
            operands = (a, b) if out is o else (a32, b32, c32)
            rows.append(floor_row(f"{ex}, out=", ours, timed["copy"], operands, out))
    # Shapes and dtypes as data comes: (N, 3) points scaled per axis and summed per point,
    # a Fortran-ordered matrix, a uint8 image (converted as read, never copied whole), a
    # matrix's column sums (a reduction over its first axis), a transposed 3-D view.
    points, scale = a[: n // 3 * 3].reshape(-1, 3), np.array([1.0, 2.0, 3.0])
    shaped = {
        "p * s, (N, 3) * (3,)": ("p * s", {"p": points, "s": scale}),
        "sum(p, axis=1), (N, 3)": ("sum(p, axis=1)", {"p": points}),
        "sum(f * f), Fortran (N/1000, 1000)": ("sum(f * f)", {"f": np.asfortranarray(a[: n // 1000 * 1000].reshape(-1, 1000))}),
        "sum(where(img > 100, 1, 0)), uint8": ("sum(where(img > 100, 1, 0))",
                                               {"img": (a * 255).astype(np.uint8)}),
        "sum(m, axis=0), (N/2000, 2000)": ("sum(m, axis=0)", {"m": a[: n // 2000 * 2000].reshape(-1, 2000)}),
        "t * 2, (N/100000, 200, 500) transposed (2, 0, 1)": ("t * 2", {"t": a[: n // 100_000 * 100_000].reshape(-1, 200, 500)
                                                            .transpose(2, 0, 1)}),
    }
    if ne is not None:
        for title, (ex, data) in shaped.items():
            timed = race({"paralelo": lambda: paralelo.evaluate(ex, local_dict=data),
                          "numexpr": lambda: ne.evaluate(ex, local_dict=data)}, runs)
            ours, theirs = timed["paralelo"], timed["numexpr"]
            rows.append((title, "numexpr", f"{ours * 1e3:.2f}", f"{theirs * 1e3:.2f}", f"{theirs / ours:.2f}"))
    # The cost of a call on small arrays (µs): mostly Python, each side.
    small = {"a": a[:100].copy(), "b": b[:100].copy()}
    if ne is not None:
        timed = race({"paralelo": lambda: paralelo.evaluate("2*a + 3*b", local_dict=small),
                      "numexpr": lambda: ne.evaluate("2*a + 3*b", local_dict=small)}, 2000)
        ours, theirs = timed["paralelo"], timed["numexpr"]
        rows.append(("2*a + 3*b on 100 elements (µs a call)", "numexpr", f"{ours * 1e6:.1f}", f"{theirs * 1e6:.1f}",
                     f"{theirs / ours:.2f}"))
    if args.gpu:
        rows.extend(gpu_rows(args.gpu_n, runs))
    rows.append((f"copy {n:,} float64", copier, "", f"{best(copy, runs) * 1e3:.2f}", ""))
    table(f"paralelo.evaluate, {n:,} elements, {os.cpu_count()} CPUs, best of {runs}",
          ("case", "rival", "paralelo ms", "rival ms", "x faster"), rows)


if __name__ == "__main__":
    main()
