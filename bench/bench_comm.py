"""Collectives: ``paralelo.comm`` under ``paralelo run -n 2`` against mpi4py on MPICH under
``mpiexec -n 2``, the same script, the two taking turns, in one run.

    python bench/bench_comm.py                 # every case, 3 runs each (median)
    python bench/bench_comm.py --repeats 5

Cases (2 ranks): a small object's bcast, reduce, allreduce, barrier and send/recv round
trip (µs an operation, rank 0's mean over 20,000); a 100 MB float64 array's Bcast and Allreduce (GB/s: 100 MB
over the median time of 7). The issue's targets: at most mpi4py's time on every small
op; Bcast ≥ 10 GB/s; Allreduce ≥ 5 GB/s.

Needs MPICH's mpiexec and mpi4py built against it (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import table  # noqa: E402
from _scripts import repeats_and_cases, run_group  # noqa: E402

PROGRAM = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    from paralelo import comm as MPI

    comm = MPI.COMM_WORLD
    rank = comm.rank
    T = time.perf_counter
    SMALL = 20_000
    out = {}

    def per_op(name, op):
        for _ in range(1000):
            op()
        comm.barrier()
        t = T()
        for _ in range(SMALL):
            op()
        out[name] = (T() - t) / SMALL * 1e6

    per_op("bcast", lambda: comm.bcast(42 if rank == 0 else None, root=0))
    per_op("reduce", lambda: comm.reduce(rank, op=MPI.SUM, root=0))
    per_op("allreduce", lambda: comm.allreduce(rank, op=MPI.SUM))
    per_op("barrier", comm.barrier)
    other = 1 - rank

    def pingpong():
        if rank == 0:
            comm.send(1, dest=other)
            comm.recv(source=other)
        else:
            comm.recv(source=other)
            comm.send(1, dest=other)

    per_op("pingpong", pingpong)

    def bandwidth(name, op, nbytes):
        times = []
        for _ in range(8):
            comm.barrier()
            t = T()
            op()
            comm.barrier()
            times.append(T() - t)
        out[name] = nbytes / statistics.median(times[1:]) / 1e9

    big = np.random.default_rng(rank).random(100_000_000 // 8)
    total = np.empty_like(big)
    bandwidth("Bcast", lambda: comm.Bcast(big, root=0), big.nbytes)
    bandwidth("Allreduce", lambda: comm.Allreduce(big, total, op=MPI.SUM), big.nbytes)
    if rank == 0:
        print(json.dumps(out))
    """
)

CASES = {
    "bcast": ("small object bcast (µs)", "us"),
    "reduce": ("small object reduce (µs)", "us"),
    "allreduce": ("small object allreduce (µs)", "us"),
    "barrier": ("barrier (µs)", "us"),
    "pingpong": ("small object send + recv, round trip (µs)", "us"),
    "Bcast": ("100 MB float64 Bcast (GB/s)", "GB/s"),
    "Allreduce": ("100 MB float64 Allreduce (GB/s)", "GB/s"),
}


def main() -> None:
    if shutil.which("mpiexec") is None:
        sys.exit("bench_comm needs MPICH's mpiexec and mpi4py (apt-get install mpich libmpich-dev; "
                 "pip install --no-binary mpi4py mpi4py)")
    repeats, chosen = repeats_and_cases(CASES)
    launchers = {
        "paralelo": [sys.executable, "-m", "paralelo", "run", "-n", "2"],
        "mpi4py": ["mpiexec", "-n", "2", sys.executable],
    }
    runs: dict[str, list[dict]] = {name: [] for name in launchers}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "collectives.py")
        with open(path, "w") as f:
            f.write(PROGRAM)
        for _ in range(repeats):
            for name, command in launchers.items():
                out = run_group([*command, path], 600)
                if out.returncode != 0:
                    raise RuntimeError(f"{name}: {out.stderr}")
                runs[name].append(json.loads(out.stdout.splitlines()[-1]))
    rows = []
    for case in chosen:
        title, unit = CASES[case]
        ours, theirs = (statistics.median(r[case] for r in runs[name]) for name in launchers)
        # Above 1 is better for paralelo, whichever the unit.
        better = theirs / ours if unit == "us" else ours / theirs
        rows.append((title, f"{ours:.2f}", f"{theirs:.2f}", f"{better:.2f}"))
    table(f"collectives, 2 ranks, median of {repeats} runs", ("case", "paralelo", "mpi4py + MPICH",
                                                              "x mpi4py (above 1: paralelo better)"), rows)


if __name__ == "__main__":
    main()
