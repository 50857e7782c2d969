"""Parallel work awaited from asyncio: paralelo beside the anchors, in one run. Each case
is a script whose functions live in ``__main__``, run in a fresh interpreter per
library, the libraries taking turns.

    python bench/bench_aio.py                 # every case
    python bench/bench_aio.py apply           # some: apply map heartbeat
    python bench/bench_aio.py --repeats 3     # fresh runs per case (default 5)

Cases (2 workers):
  apply      10,000 tiny calls awaited and gathered: µs a task. paralelo's
             ``await pool.apply_async``, against ``loop.run_in_executor`` with
             concurrent.futures' ProcessPoolExecutor and aiomultiprocess' ``pool.apply``
  map        one map of 10,000 tiny items awaited: µs an item. ``await pool.map_async``
             against aiomultiprocess' ``Pool.map``
  heartbeat  a coroutine ticking every 10 ms while a CPU-heavy map (2 s of work) is
             awaited: how late its latest tick was, in ms (target: 2); "hogs" is the
             machine's floor, two plain processes as busy for a second (no pool)

aiomultiprocess is optional (``pip install aiomultiprocess``): without it, its column
reads "-".
"""

from __future__ import annotations

import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import against_rivals  # noqa: E402

HEAD = textwrap.dedent(
    """
    import asyncio, sys, time
    LIB = sys.argv[1]
    T = time.perf_counter
    N = 10_000

    def tiny(x):
        return x + 1

    async def atiny(x):  # (aiomultiprocess runs coroutine functions only)
        return x + 1
    """
)

CASES = {
    "apply": ("10,000 tiny calls awaited, gathered (µs a task)", ("paralelo", "concurrent.futures", "aiomultiprocess"), """
        async def main():
            if LIB == "paralelo":
                import paralelo
                with paralelo.Pool(2) as pool:
                    await pool.apply_async(tiny, (0,))
                    t = T()
                    out = await asyncio.gather(*(pool.apply_async(tiny, (i,)) for i in range(N)))
                    d = T() - t
            elif LIB == "concurrent.futures":
                from concurrent.futures import ProcessPoolExecutor
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(2) as ex:
                    await loop.run_in_executor(ex, tiny, 0)
                    t = T()
                    out = await asyncio.gather(*(loop.run_in_executor(ex, tiny, i) for i in range(N)))
                    d = T() - t
            else:
                import aiomultiprocess
                async with aiomultiprocess.Pool(2) as pool:
                    await pool.apply(atiny, (0,))
                    t = T()
                    out = await asyncio.gather(*(pool.apply(atiny, (i,)) for i in range(N)))
                    d = T() - t
            assert out[-1] == N
            print(d / N * 1e6)
        if __name__ == "__main__":
            asyncio.run(main())
    """),
    "map": ("one map of 10,000 tiny items awaited (µs an item)", ("paralelo", "aiomultiprocess"), """
        async def main():
            if LIB == "paralelo":
                import paralelo
                with paralelo.Pool(2) as pool:
                    await pool.map_async(tiny, range(10))
                    t = T()
                    out = await pool.map_async(tiny, range(N))
                    d = T() - t
            else:
                import aiomultiprocess
                async with aiomultiprocess.Pool(2) as pool:
                    await pool.map(atiny, range(10))
                    t = T()
                    out = await pool.map(atiny, range(N))
                    d = T() - t
            assert out[-1] == N
            print(d / N * 1e6)
        if __name__ == "__main__":
            asyncio.run(main())
    """),
    "heartbeat": ("latest heartbeat tick during a CPU-heavy awaited map (ms late)", ("paralelo", "concurrent.futures", "hogs"), """
        def heavy(n):
            return sum(range(n))

        def hog(seconds):
            end = T() + seconds
            while T() < end:
                sum(range(10_000))

        async def main():
            late = []
            async def beat():
                while True:
                    t = T()
                    await asyncio.sleep(0.01)
                    late.append(T() - t - 0.01)
            items = [2_000_000] * 40
            if LIB == "paralelo":
                import paralelo
                with paralelo.Pool(2) as pool:
                    pool.map(heavy, [10])
                    b = asyncio.ensure_future(beat())
                    await pool.map_async(heavy, items)
            elif LIB == "concurrent.futures":
                from concurrent.futures import ProcessPoolExecutor
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(2) as ex:
                    await loop.run_in_executor(ex, heavy, 10)
                    b = asyncio.ensure_future(beat())
                    await asyncio.gather(*(loop.run_in_executor(ex, heavy, n) for n in items))
            else:  # the floor: two plain processes busy as long, no pool, no results
                import multiprocessing
                hogs = [multiprocessing.Process(target=hog, args=(1.0,)) for _ in range(2)]
                for p in hogs:
                    p.start()
                b = asyncio.ensure_future(beat())
                while any(p.is_alive() for p in hogs):
                    await asyncio.sleep(0.05)
            b.cancel()
            print(max(late) * 1e3)
        if __name__ == "__main__":
            asyncio.run(main())
    """),
}


def main() -> None:
    against_rivals(HEAD, CASES, "paralelo awaited from asyncio, 2 workers", optional="aiomultiprocess")


if __name__ == "__main__":
    main()
