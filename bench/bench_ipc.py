"""Processes and shared state: paralelo beside multiprocessing (fork), in one run.

    python bench/bench_ipc.py                 # every case (≈ 1 min on 2 cores)
    python bench/bench_ipc.py value pipe      # some: value process queue simplequeue queue1k pipe pipe1m
    python bench/bench_ipc.py --repeats 3     # fewer fresh runs per case (default 5)

Cases:
  value    two processes each add 1 to a shared Value 200,000 times under its lock
           (`with v.get_lock(): v.value += 1`): increments per second
  process  start + join of a Process that returns at once: per second, 200 in a row
  queue, simplequeue
           one process puts 300,000 small ints, the parent gets them: messages per second
  queue1k  the same with 100,000 messages of 1 KB bytes
  pipe     ping-pong of a small int over a duplex Pipe: round trips per second
           (1e6 / that = the round trip in µs)
  pipe1m   the same with 1 MB of bytes (send_bytes / recv_bytes)

Each case runs as a script in a fresh interpreter per library, the libraries taking turns;
the table shows medians and paralelo's ratio to multiprocessing ("x rival": above 1 means
paralelo does more per second). Large arrays: `bench_arrays.py`; locks and the other
primitives: `bench_sync.py`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import LIB_HEAD, compare  # noqa: E402


def _queue_case(kind: str, n: int, item: str) -> str:
    """One putter process puts `n` items (the expression `item`, of `i` and `BLOB`) into
    a `kind` queue; the parent gets them."""
    return f"""
        N = {n}
        BLOB = b"x" * 1024
        def putter(q):
            put = q.put
            for i in range(N):
                put({item})
        if __name__ == "__main__":
            q = mp.{kind}()
            p = mp.Process(target=putter, args=(q,))
            t = T()
            p.start()
            get = q.get
            for i in range(N):
                get()
            d = T() - t
            p.join()
            print(N / d)
    """


CASES = {
    "value": ("Value += 1 under its lock, two processes (per s)", """
        N = 200_000
        def add(v, n):
            for _ in range(n):
                with v.get_lock():
                    v.value += 1
        if __name__ == "__main__":
            v = mp.Value("i", 0)
            ps = [mp.Process(target=add, args=(v, N)) for _ in range(2)]
            t = T()
            for p in ps: p.start()
            for p in ps: p.join()
            d = T() - t
            assert v.value == 2 * N
            print(2 * N / d)
    """),
    "process": ("Process start + join, one at a time (per s)", """
        N = 200
        def nothing():
            pass
        if __name__ == "__main__":
            t = T()
            for _ in range(N):
                p = mp.Process(target=nothing); p.start(); p.join()
            print(N / (T() - t))
    """),
    "queue": ("Queue, small ints, one putter process (messages per s)", _queue_case("Queue", 300_000, "i")),
    "simplequeue": ("SimpleQueue, small ints, one putter process (messages per s)",
                    _queue_case("SimpleQueue", 300_000, "i")),
    "queue1k": ("Queue, 1 KB bytes, one putter process (messages per s)",
                _queue_case("Queue", 100_000, "BLOB")),
    "pipe": ("Pipe ping-pong, small object (round trips per s)", """
        N = 50_000
        def echo(c):
            recv, send = c.recv, c.send
            while (x := recv()) is not None:
                send(x)
        if __name__ == "__main__":
            a, b = mp.Pipe()
            p = mp.Process(target=echo, args=(b,)); p.start()
            send, recv = a.send, a.recv
            for i in range(1000):
                send(i); recv()
            t = T()
            for i in range(N):
                send(i); recv()
            d = T() - t
            send(None); p.join()
            print(N / d)
    """),
    "pipe1m": ("Pipe ping-pong, 1 MB bytes (round trips per s)", """
        N = 300
        def echo(c):
            while (x := c.recv_bytes()) != b"stop":
                c.send_bytes(x)
        if __name__ == "__main__":
            a, b = mp.Pipe()
            p = mp.Process(target=echo, args=(b,)); p.start()
            blob = b"m" * (1 << 20)
            for i in range(20):
                a.send_bytes(blob); a.recv_bytes()
            t = T()
            for i in range(N):
                a.send_bytes(blob); a.recv_bytes()
            d = T() - t
            a.send_bytes(b"stop"); p.join()
            print(N / d)
    """),
}


def main() -> None:
    compare(CASES, LIB_HEAD, "processes and shared state", ",.0f")


if __name__ == "__main__":
    main()
