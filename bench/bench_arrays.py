"""Large arrays between processes: paralelo beside multiprocessing (fork), in one run.

    python bench/bench_arrays.py                # every case (≈ 30 s on 2 cores)
    python bench/bench_arrays.py shared return  # some: send shared return local
    python bench/bench_arrays.py --repeats 3    # fresh runs per case (default 5)

Cases (numpy needed):
  send    a 100 MB float64 array passed to a pool worker, which returns its sum: GB/s
          (100 MB / the call's time); paralelo copies it into its arena (memory mapped
          in every process), multiprocessing pickles it through a pipe
  sendwarm  the same, 5 calls, GB/s of the median call (the arena's memory reused)
  shared  the same array the way each library's users share it: a paralelo.SharedArray
          (by handle), a plain array for multiprocessing (pickled); 5 calls, GB/s of the
          median call
  return  a pool worker makes a 100 MB float64 array (filled with ones) and returns it:
          a paralelo.SharedArray (by handle), a plain array for multiprocessing
          (pickled); GB/s of the median of 5 calls
  returnplain  a pool worker makes a plain 100 MB numpy array and returns it: GB/s of
          the median of 5 calls (paralelo: copied into the arena, received as a view)
  local   reference: the same sum in the calling process, GB/s
  localshared  reference: that sum over shared memory in the calling process (a
          paralelo.SharedArray; a multiprocessing.shared_memory block): GB/s. Shared
          memory gets 2 MiB pages only where the host allows huge shmem
          (/sys/kernel/mm/transparent_hugepage/shmem_enabled: advise or always; paralelo
          asks for them); on 4 KiB pages a sum runs at ≈ 60% of the speed here, and so do
          the shared and send cases

Each case runs as a script in a fresh interpreter per library, the libraries taking turns;
the table shows medians and paralelo's ratio to multiprocessing (above 1: faster).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import LIB_HEAD, compare  # noqa: E402

HEAD = LIB_HEAD + """
import numpy as np
MB100 = 100_000_000 // 8
def total(a):
    return float(a.sum())
"""

def _sums(make: str) -> str:
    """Five calls summing an array that `make` builds in the parent: GB/s of the median."""
    return f"""
        if __name__ == "__main__":
            {make}
            with mp.Pool(1) as pool:
                times = []
                for _ in range(5):
                    t = T(); s = pool.apply(total, (a,)); times.append(T() - t)
            assert s == MB100
            print(0.1 / statistics.median(times))
    """


def _returns(make: str) -> str:
    """Five calls of a worker function `make(n)` returning a 100 MB array: GB/s of the
    median."""
    return make + """
        if __name__ == "__main__":
            with mp.Pool(1) as pool:
                times = []
                for _ in range(5):
                    t = T(); a = pool.apply(make, (MB100,)); times.append(T() - t)
                    assert a[-1] == 1.0
                    del a
            print(0.1 / statistics.median(times))
    """


CASES = {
    "send": ("100 MB array to a worker, its sum back (GB/s)", """
        if __name__ == "__main__":
            a = np.ones(MB100)
            with mp.Pool(1) as pool:
                pool.apply(total, (a[:10],))
                t = T(); s = pool.apply(total, (a,)); d = T() - t
            assert s == MB100
            print(0.1 / d)
    """),
    "sendwarm": ("the same, 5 calls: the median (GB/s)", _sums("a = np.ones(MB100)")),
    "shared": ("the same, shared as each library's users would (GB/s)",
               _sums("a = mp.SharedArray(MB100) if LIB == 'paralelo' else np.empty(MB100); a[:] = 1.0")),
    "return": ("a worker makes a 100 MB array and returns it (GB/s)", _returns("""
        def make(n):
            a = mp.SharedArray(n) if LIB == "paralelo" else np.empty(n)
            a[:] = 1.0
            return a
    """)),
    "returnplain": ("a worker makes a plain 100 MB array and returns it (GB/s)", _returns("""
        def make(n):
            return np.ones(n)
    """)),
    "local": ("reference: the sum in the calling process (GB/s)", """
        if __name__ == "__main__":
            a = np.ones(MB100); a.sum()
            t = T(); a.sum(); print(0.1 / (T() - t))
    """),
    "localshared": ("reference: the sum over shared memory in the calling process (GB/s)", """
        if __name__ == "__main__":
            if LIB == "paralelo":
                a = mp.SharedArray(MB100)
            else:
                from multiprocessing import shared_memory
                shm = shared_memory.SharedMemory(create=True, size=MB100 * 8)
                a = np.ndarray(MB100, buffer=shm.buf)
            a[:] = 1.0; a.sum()
            t = T(); a.sum(); print(0.1 / (T() - t))
            if LIB != "paralelo":
                del a; shm.close(); shm.unlink()
    """),
}


def _huge_shmem() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def main() -> None:
    compare(CASES, HEAD, "large arrays", ",.2f")
    print(f"\nhuge pages for shared memory on this host (shmem_enabled): {_huge_shmem()}")


if __name__ == "__main__":
    main()
