"""``Lock``, ``RLock``, ``Value``, ``Array``, ``RawValue``, ``RawArray``: side by side with
multiprocessing on the same scripts, and what paralelo's lock adds (a dead holder's lock
is taken, with a warning, not waited on for ever)."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import pytest

import paralelo
from scripts import side_by_side

HEAD = """
import os, sys, time, ctypes, logging
os.dup2(1, 2)
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
LIB = sys.argv[1]
if LIB == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
"""


def test_locks_values_and_arrays_match_multiprocessing(tmp_path) -> None:
    outs = side_by_side(tmp_path, HEAD + """
def add(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
def add_with(v, lock, n):
    for _ in range(n):
        with lock:
            v.value += 1
def fill(arr, k):
    for i in range(len(arr)):
        arr[i] = arr[i] + k
    arr[0:2] = [-1, -2]
COUNTER = None
def init(v):
    global COUNTER
    COUNTER = v
def bump(_):
    with COUNTER.get_lock():
        COUNTER.value += 1
class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]
if __name__ == "__main__":
    l, r = mp.Lock(), mp.RLock()
    print(repr(l), repr(r))
    print(l.acquire(), l.acquire(False), l.acquire(timeout=0.05), l.acquire(True, -1), repr(l))
    l.release()
    try:
        l.release()
    except ValueError as e:
        print("ValueError", e)
    print(r.acquire(), r.acquire(), repr(r)); r.release(); r.release()
    try:
        r.release()
    except AssertionError as e:
        print("AssertionError", e)
    with l:
        print("with", repr(l))
    v = mp.Value("i", 0)
    ps = [mp.Process(target=add, args=(v, 5000)) for _ in range(2)]
    ps += [mp.Process(target=add_with, args=(v, v.get_lock(), 5000))]
    for p in ps: p.start()
    for p in ps: p.join()
    print("value", v.value, type(v).__name__, repr(v), type(v.get_lock()).__name__)
    plain = mp.Lock()
    w = mp.Value(ctypes.c_long, 0, lock=False)
    p = mp.Process(target=add_with, args=(w, plain, 3000)); p.start(); add_with(w, plain, 3000); p.join()
    print("with a plain lock", w.value, mp.Value("i", 0, lock=plain).get_lock() is plain)
    a = mp.Array("d", [1.0, 2.0, 3.0, 4.0])
    p = mp.Process(target=fill, args=(a, 10)); p.start(); p.join()
    print(a[:], a[1], a[-1], a[1:3], len(a), a.get_obj()._type_, type(a).__name__)
    ra, rv = mp.RawArray("i", 5), mp.RawValue("d", 1.5)
    p = mp.Process(target=fill, args=(ra, 7)); p.start(); p.join()
    print(ra[:], rv.value, type(ra).__name__, type(rv).__name__)
    s = mp.Array("c", b"hello"); s.value = b"hi"; print(s.value, s.raw)
    print(type(mp.Value("i", 3, lock=False)).__name__, mp.Array("i", range(3), lock=False)[:])
    pt = mp.Value(Point, 1.0, 2.0); print(pt.x, pt.y)
    for bad in ((lambda: mp.Value("i", 0, lock=42)), (lambda: mp.Value("not a code", 0))):
        try:
            bad()
        except Exception as e:
            print(type(e).__name__, e)
    try:
        import pickle
        pickle.dumps(l)
    except RuntimeError as e:
        print("RuntimeError", str(e).split(",")[0])
    c = mp.Value("i", 0)
    with mp.Pool(2, initializer=init, initargs=(c,)) as pool:
        pool.map(bump, range(200))
    print("pool", c.value)
    ctx = mp.get_context("spawn")
    sv, sl = ctx.Value("i", 0), ctx.Lock()
    sp = ctx.Process(target=add_with, args=(sv, sl, 100)); sp.start(); sp.join()
    print("spawn", sv.value, sp.exitcode)
""", timeout=120)
    assert outs[0] == outs[1], "\n---\n".join(outs)


def _hold(lock, flag) -> None:
    lock.acquire()
    flag.value = 1
    time.sleep(60)


def _killed_holding(make):
    """A lock made by `make`, held by a child killed (not yet reaped) while holding it."""
    lock, flag = make(), paralelo.Value("i", 0)  # (a forked child inherits both)
    p = paralelo.Process(target=_hold, args=(lock, flag))
    p.start()
    end = time.monotonic() + 30
    while not flag.value:
        assert time.monotonic() < end
        time.sleep(0.01)
    assert not lock.acquire(timeout=0.1)  # held by a live process: waited on
    os.kill(p.pid, signal.SIGKILL)
    while True:  # (until it is a zombie: a kill takes effect a moment later)
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        assert time.monotonic() < end
        time.sleep(0.005)
    return lock, p


@pytest.mark.parametrize("kind", ["RLock", "Lock"])
def test_a_killed_holders_lock_is_reported_then_free_before_it_is_joined(kind) -> None:
    lock, p = _killed_holding(getattr(paralelo, kind))
    # The holder is a zombie until joined: dead all the same.
    who = "thread" if kind == "RLock" else "process"
    with pytest.raises(paralelo.AbandonedLockError, match=f"held by {who} {p.pid}, which ended") as e:
        lock.acquire(timeout=10)
    assert e.value.holder == p.pid
    assert lock.holder() is None
    assert lock.acquire(False)  # free again
    lock.release()
    p.join(30)
    lock2, p2 = _killed_holding(getattr(paralelo, kind))
    with pytest.raises(paralelo.AbandonedLockError):
        lock2.acquire(False)  # (no wait: one look at the holder)
    with lock2:
        pass
    p2.join(30)


def test_an_rlock_left_by_an_ended_thread_is_reported_then_free() -> None:
    lock = paralelo.RLock()
    t = threading.Thread(target=lock.acquire)
    t.start()
    t.join()
    with pytest.raises(AssertionError, match="not owned by thread"):
        lock.release()
    with pytest.raises(paralelo.AbandonedLockError) as e:
        lock.acquire(timeout=10)
    assert e.value.holder == t.native_id
    assert lock.acquire(timeout=10)
    lock.release()


def test_a_plain_lock_may_be_released_by_another_thread() -> None:
    lock = paralelo.Lock()
    lock.acquire()
    t = threading.Thread(target=lock.release)
    t.start()
    t.join()
    assert lock.acquire(False)
    lock.release()


def test_a_timed_acquire_waits_its_timeout() -> None:
    lock = paralelo.Lock()
    lock.acquire()
    t = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert time.monotonic() - t >= 0.19
    assert lock.acquire(block=False, timeout=5) is False  # (block=False ignores it)
    lock.release()


def _try_in_child(lock, out) -> None:
    out.value = 1 if lock.acquire(timeout=0.1) else 2


def test_a_forked_child_is_not_taken_for_its_parent() -> None:
    # The holder ids are cached per thread: a child forked by the holder thread must not
    # pass for it (and re-enter the RLock, or take its Lock).
    for make in (paralelo.RLock, paralelo.Lock):
        lock, out = make(), paralelo.Value("i", 0)
        with lock:
            p = paralelo.Process(target=_try_in_child, args=(lock, out))
            p.start()
            p.join(30)
        assert out.value == 2, make


def test_locks_are_pickled_only_to_start_a_process() -> None:
    for obj in (paralelo.Lock(), paralelo.RLock(), paralelo.Value("i", 1)):
        with pytest.raises(RuntimeError, match="only be shared between processes through inheritance"):
            pickle.dumps(obj)


def test_a_lock_needs_a_proper_buffer() -> None:
    from paralelo._native import SharedLock

    with pytest.raises(ValueError, match="needs 8 bytes"):
        SharedLock(bytearray(4), False)
    with pytest.raises(ValueError, match="writable"):
        SharedLock(bytes(8), False)
    with pytest.raises(ValueError, match="aligned"):
        SharedLock(memoryview(bytearray(16))[1:9], False)


VALUE_EDGES = HEAD + """
def show(v):
    print(repr(v.value), type(v.value).__name__)

class Tenths(ctypes.c_double):  # a subclass whose value means something else
    @property
    def value(self):
        return ctypes.c_double.value.__get__(self) / 10

    @value.setter
    def value(self, x):
        ctypes.c_double.value.__set__(self, x * 10)

if __name__ == "__main__":
    t = mp.Value(Tenths, 0)
    t.value = 3.0
    show(t)
    print(t.get_obj()._b_base_ is None, ctypes.c_double.value.__get__(t.get_obj()))
    for code, values in (("i", [2**31 - 1, -2**31, True, np.int64(7), 2**31, -2**31 - 1, 2**40]),
                         ("l", [2**63 - 1, -2**63, 2**63, np.int32(-3)]),
                         ("q", [2**63 - 1, -2**63, 2**64 + 5]),
                         ("d", [1.5, 3, True, -0.0, float("inf"), np.float32(0.25), 10**400 if False else 1e308]),
                         ("h", [2**15 - 1, 2**15, -5])):
        v = mp.Value(code, 0)
        for x in values:
            try:
                v.value = x
                show(v)
            except (TypeError, OverflowError) as e:
                print(code, type(e).__name__)
        for bad in (1.5 if code != "d" else "x", None):
            try:
                v.value = bad
                show(v)
            except (TypeError, OverflowError) as e:
                print(code, type(e).__name__)
        v.get_obj().value = 1
        show(v)
        with v.get_lock():
            v.value += 1
        show(v)
"""


def test_values_at_their_types_edges_match_multiprocessing(tmp_path) -> None:
    """What a Value reads and writes natively (c_int, c_long, c_longlong, c_double) is
    what ctypes would: wrapping, refusing and converting as multiprocessing's."""
    outs = side_by_side(tmp_path, VALUE_EDGES)
    assert outs[0] == outs[1]
