"""``Manager()``: the standard library's managers, their server started as a paralelo
``Process``, side by side with multiprocessing on the same script."""

from __future__ import annotations

import os
import time

from scripts import side_by_side
from test_sharedctypes import HEAD


def test_manager_proxies_work_from_processes_and_pools_as_with_multiprocessing(tmp_path) -> None:
    outs = side_by_side(tmp_path, HEAD + """
def work(d, l, ns, q, lock, v, arr, i):
    with lock:
        d[i] = i * i
        l.append(i)
        ns.total += i
        v.value += 1
        arr[i] = float(i)
    q.put(i)
def task(args):
    d, i = args
    d[f"t{i}"] = True
    return i
if __name__ == "__main__":
    with mp.Manager() as m:
        d, l, ns, q, lock = m.dict(), m.list(), m.Namespace(), m.Queue(), m.Lock()
        v, arr = m.Value("i", 0), m.Array("d", [0.0] * 4)
        ns.total = 0
        ps = [mp.Process(target=work, args=(d, l, ns, q, lock, v, arr, i)) for i in range(4)]
        for p in ps: p.start()
        for p in ps: p.join()
        print(dict(sorted(d.items())), sorted(l), ns.total, v.value, list(arr), sorted(q.get() for _ in range(4)))
        with mp.Pool(2) as pool:
            print(pool.map(task, [(d, i) for i in range(3)]))
        print(sorted(k for k in d.keys() if isinstance(k, str)))
        ev = m.Event(); ev.set(); print(ev.is_set())
    ctx = mp.get_context("spawn")
    m = ctx.Manager()
    shared = m.list([1, 2])
    keep = (m.dict(), shared, m.Namespace(total=0), m.Queue(), m.Lock(), m.Value("i", 0), m.Array("d", [0.0]))
    p = ctx.Process(target=work, args=(*keep, 0))
    p.start(); p.join(); print(list(shared), p.exitcode)
    m.shutdown()
    server = mp.Manager()  # shut down at exit: its server must not outlive us
    print(type(server).__name__, server.dict(a=1).copy())
    print("server", server._process.pid)
""")
    assert outs[0] == outs[1].replace(outs[1].split("server ")[-1], outs[0].split("server ")[-1])
    pid = int(outs[0].split("server ")[-1])
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)  # (reaped by now, or a zombie on its way out)
    status = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}") else "gone"
    assert status in ("gone", "Z")
