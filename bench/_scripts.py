"""Benchmark cases as scripts: each runs in a fresh interpreter once per library, the
libraries taking turns, and prints one number (its last word) that the runner collects."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap


def run(head: str, code: str, lib: str) -> float:
    """The number `head + code` prints, run as a script whose first argument is `lib`."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.py")
        with open(path, "w") as f:
            f.write(head + textwrap.dedent(code))
        out = subprocess.run([sys.executable, path, lib], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{lib}: {out.stderr}")
        return float(out.stdout.split()[-1])


def medians(head: str, code: str, libs: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Each library's median over `repeats` fresh runs, the libraries taking turns."""
    runs: dict[str, list[float]] = {lib: [] for lib in libs}
    for _ in range(repeats):
        for lib in libs:
            runs[lib].append(run(head, code, lib))
    return {lib: statistics.median(t) for lib, t in runs.items()}


def repeats_and_cases(cases: dict) -> tuple[int, list[str]]:
    """`--repeats N` (default 5) and the cases named on the command line (default all)."""
    args = sys.argv[1:]
    repeats = int(args[args.index("--repeats") + 1]) if "--repeats" in args else 5
    return repeats, [a for a in args if a in cases] or list(cases)


#: The head of a case that runs with paralelo or multiprocessing, named `mp`, whichever
#: its first argument says.
LIB_HEAD = textwrap.dedent(
    """
    import sys, time, statistics
    LIB = sys.argv[1]
    if LIB == "paralelo":
        import paralelo as mp
    else:
        import multiprocessing as mp
    T = time.perf_counter
    """
)


def compare(cases: dict[str, tuple[str, str]], head: str, title: str, fmt: str) -> None:
    """Runs the chosen `cases` (title, code) with paralelo and multiprocessing and prints
    their medians (formatted with `fmt`) and paralelo's ratio (above 1: faster)."""
    from _report import table

    repeats, chosen = repeats_and_cases(cases)
    rows = []
    for name in chosen:
        case, code = cases[name]
        secs = medians(head, code, ("paralelo", "multiprocessing"), repeats)
        ours, theirs = secs["paralelo"], secs["multiprocessing"]
        rows.append((case, format(ours, fmt), format(theirs, fmt), f"{ours / theirs:.2f}"))
    table(f"{title}, median of {repeats} runs", ("case", "paralelo", "multiprocessing", "x rival"), rows)
