"""Benchmark cases as scripts: each runs in a fresh interpreter once per library, the
libraries taking turns, and prints one number (its last word) that the runner collects."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any


def run_group(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True)`` in a process group of its
    own. Past `timeout`, the whole group is ended, not only the script: SIGTERM first, so
    that a hung rival's children die and multiprocessing's resource tracker (which
    ignores it) sees them gone and unlinks their semaphores, then SIGKILL for what is
    left. (A script killed alone left its pool's children, and their /dev/shm
    semaphores, behind.)"""
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.communicate(timeout=grace)
                    time.sleep(0.5)  # (the tracker unlinks once the last child is gone)
                except subprocess.TimeoutExpired:
                    pass
            raise
        return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run(head: str, code: str, lib: str) -> float:
    """The number `head + code` prints, run as a script whose first argument is `lib`."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.py")
        with open(path, "w") as f:
            f.write(head + textwrap.dedent(code))
        out = run_group([sys.executable, path, lib], 300)
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


def against_rivals(head: str, cases: dict, title: str, optional: str | None = None, digits: int = 2) -> None:
    """Runs the chosen `cases` (``name: (title, libs, code)``, paralelo first in `libs`)
    and prints one table row per rival: both medians and their ratio. The rival named
    `optional` runs only where it is installed ("-" otherwise)."""
    import importlib.util

    from _report import table

    repeats, chosen = repeats_and_cases(cases)
    installed = optional is None or importlib.util.find_spec(optional) is not None
    rows = []
    for name in chosen:
        case, libs, code = cases[name]
        got = medians(head, code, tuple(lib for lib in libs if lib != optional or installed), repeats)
        ours = got["paralelo"]
        for lib in libs[1:]:
            theirs = got.get(lib)
            rows.append((case, lib, f"{ours:.2f}", "-" if theirs is None else f"{theirs:.2f}",
                         "-" if theirs is None else f"{ours / theirs:.{digits}f}"))
    table(f"{title}, median of {repeats} runs", ("case", "rival", "paralelo", "rival", "x rival"), rows)


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
