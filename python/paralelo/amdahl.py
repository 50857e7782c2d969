"""Amdahl's law, measured: how a workload's time falls with more workers, the serial
fraction that explains it, and what more workers would give.

With a serial fraction S of the work (what one worker must do alone: reading the input,
starting the pool, combining results) and a parallel fraction P = 1 - S, N workers give
at best a speed-up of

    speedup(N) = 1 / (S + P / N)

which never exceeds 1 / S, however many workers. `scaling` runs a workload at several
worker counts and measures:

- speedup(N) = T(1) / T(N), and the efficiency speedup(N) / N;
- the Karp–Flatt metric e(N) = (1 / speedup(N) - 1 / N) / (1 - 1 / N): the serial
  fraction that measure implies (rising with N: overhead that grows with the workers);
- S itself, fitted to every measure at once (least squares on 1 / speedup(N) =
  S + (1 - S) / N, a line through its data in 1 - 1/N), and from it the speed-up
  predicted at larger counts.

``print()`` the result for a table; ``result.chart("scaling.png")`` draws it (needs
matplotlib). ``paralelo scaling SCRIPT`` does the same for a whole script, run with
``PARALELO_WORKERS`` set to each count (paralelo's pools and executors take their
default worker count from it).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Scaling", "scaling", "scaling_of_script"]


@dataclass(frozen=True)
class Scaling:
    """A workload's times at several worker counts, and what Amdahl's law makes of them."""

    workers: tuple[int, ...]  # from 1, the baseline
    times: tuple[float, ...]  # seconds: the median of the runs at each count

    @property
    def speedups(self) -> tuple[float, ...]:
        """T(1) / T(N) at each count."""
        return tuple(self.times[0] / t for t in self.times)

    @property
    def efficiencies(self) -> tuple[float, ...]:
        """speedup(N) / N at each count: 1.0 is perfect scaling."""
        return tuple(s / n for s, n in zip(self.speedups, self.workers))

    @property
    def karp_flatt(self) -> tuple[float | None, ...]:
        """The serial fraction each measure implies (None at one worker)."""
        return tuple(None if n == 1 else (1 / s - 1 / n) / (1 - 1 / n) for s, n in zip(self.speedups, self.workers))

    @property
    def serial_fraction(self) -> float:
        """S, fitted to every measure: 1 / speedup(N) - 1 / N = S (1 - 1 / N)."""
        pairs = [(1 - 1 / n, 1 / s - 1 / n) for s, n in zip(self.speedups, self.workers) if n > 1]
        den = sum(x * x for x, _ in pairs)
        if den == 0:
            return 1.0  # (one worker only: nothing says the work parallelises)
        return min(1.0, max(0.0, sum(x * y for x, y in pairs) / den))

    @property
    def parallel_fraction(self) -> float:
        """P = 1 - S."""
        return 1.0 - self.serial_fraction

    def predict(self, workers: int) -> float:
        """The speed-up Amdahl's law gives at `workers`, with the fitted S."""
        s = self.serial_fraction
        return 1.0 / (s + (1.0 - s) / workers)

    @property
    def limit(self) -> float:
        """The most any number of workers can give: 1 / S (inf if S is 0)."""
        s = self.serial_fraction
        return float("inf") if s == 0 else 1.0 / s

    def __str__(self) -> str:
        s = self.serial_fraction
        rows = [("workers", "time s", "speed-up", "efficiency", "Karp-Flatt", "Amdahl fit")]
        for n, t, sp, ef, kf in zip(self.workers, self.times, self.speedups, self.efficiencies, self.karp_flatt):
            rows.append((str(n), f"{t:.3f}", f"{sp:.2f}x", f"{ef:.0%}", "-" if kf is None else f"{kf:.3f}",
                         f"{self.predict(n):.2f}x"))
        most = max(self.workers)
        for n in (2 * most, 4 * most, 8 * most):
            rows.append((str(n), "-", "-", "-", "-", f"{self.predict(n):.2f}x (predicted, on {n} CPUs)"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if s == 0 and any(e is not None and e < 0 for e in self.karp_flatt):
            limit = ("faster than perfect scaling was measured (noise, or caches that more workers "
                     "share out): no serial fraction fits; measure again with more repeats")
        else:
            limit = "no limit" if s == 0 else f"at most {self.limit:.1f}x with any number of workers"
        lines.append(f"Amdahl: speedup = 1 / (S + P/N) with S = {s:.3f} (serial), P = {1 - s:.3f} (parallel): "
                     f"{limit}")
        return "\n".join(lines)

    def chart(self, path: str | os.PathLike[str]) -> str:
        """Draws the measured speed-ups, the fitted law and perfect scaling to a PNG at
        `path` (returned); needs matplotlib."""
        try:
            # (A Figure of its own, drawn by Agg: no pyplot, so the program's backend and
            # figures, a notebook's included, are left as they are.)
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError("the scaling chart needs matplotlib: pip install matplotlib") from e
        most = 8 * max(self.workers)
        xs = [1 + i * (most - 1) / 200 for i in range(201)]
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(xs, xs, ":", color="grey", label="perfect (speed-up = N)")
        ax.plot(xs, [self.predict(x) for x in xs], "-", label=f"Amdahl, S = {self.serial_fraction:.3f}")  # type: ignore[arg-type]
        ax.plot(self.workers, self.speedups, "o", label="measured")
        ax.set_xscale("log", base=2)
        ticks = [2**i for i in range(most.bit_length())]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("workers (N)")
        ax.set_ylabel("speed-up")
        ax.set_ylim(0, max(self.limit if self.limit != float("inf") else most, max(self.speedups)) * 1.1)
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return os.fspath(path)


def _counts(workers: Sequence[int] | None) -> list[int]:
    if workers is None:
        from .context import default_workers

        most = default_workers()
        counts = [1]
        while counts[-1] * 2 <= most:
            counts.append(counts[-1] * 2)
        if counts[-1] != most:
            counts.append(most)
        if len(counts) == 1:
            counts.append(2)  # (one CPU: still two points)
        return counts
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in workers):
        raise ValueError(f"workers must be counts of 1 or more, not {list(workers)!r}")
    return sorted(set(workers) | {1})  # (one worker is the baseline of every speed-up)


def _measured(run: Callable[[int], object], counts: list[int], repeats: int) -> Scaling:
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be 1 or more, not {repeats!r}")
    runs: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:  # (the counts take turns: a machine that slows down slows all)
            t = time.perf_counter()
            run(n)
            runs[n].append(time.perf_counter() - t)
    return Scaling(tuple(counts), tuple(statistics.median(runs[n]) for n in counts))


def scaling(workload: Callable[[int], object], workers: Sequence[int] | None = None, repeats: int = 3) -> Scaling:
    """Times ``workload(n)`` for each worker count `n` in `workers` (default: 1, 2, 4...
    up to this machine's CPUs; 1 is always measured, as the baseline), `repeats` times each (the median counts), and returns a
    `Scaling`: speed-ups, efficiencies, Karp–Flatt, and the fitted serial fraction S of
    Amdahl's ``speedup = 1 / (S + P/N)``.

    `workload` runs the whole job with `n` workers, as a program would::

        def job(n):
            with paralelo.Pool(n) as pool:
                pool.map(parse, pages)

        print(paralelo.scaling(job, workers=[1, 2, 4, 8]))
    """
    return _measured(workload, _counts(workers), repeats)


def scaling_of_script(path: str, args: Sequence[str] = (), workers: Sequence[int] | None = None,
                      repeats: int = 3) -> Scaling:
    """`scaling` of a whole script: ``python path *args`` with ``PARALELO_WORKERS=n``
    (paralelo's default worker count), its wall time from start to exit; what it prints
    to stdout is dropped. A run that fails raises ``subprocess.CalledProcessError``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no script at {path!r}")

    def run(n: int) -> None:
        env = {**os.environ, "PARALELO_WORKERS": str(n)}
        done = subprocess.run([sys.executable, path, *args], env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, f"PARALELO_WORKERS={n} {sys.executable} {path}")

    return _measured(run, _counts(workers), repeats)
