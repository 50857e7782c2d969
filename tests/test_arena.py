"""Large buffers out of band: through the arena, to and from pool workers, as views."""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest

import paralelo
from paralelo import _arena
from paralelo._native import Arena
from paralelo._pickling import dumps, loads
from scripts import side_by_side

BIG = _arena.OOB_MIN // 8 * 4  # float64 items: 4x the threshold


def raw(a) -> memoryview:
    return pickle.PickleBuffer(a).raw()


def total(a):
    return float(a.sum())


def ones(n):
    return np.ones(n)


def same(a):
    return a


def blob(n):
    return bytes(range(256)) * (n // 256)


def usage_settles(arena, want=(0, 0), timeout=10.0):
    """The arena's usage once it reaches `want` (the workers drop their views at their own
    pace), or what it was at the deadline."""
    end = time.monotonic() + timeout
    while arena.usage() != want and time.monotonic() < end:
        time.sleep(0.01)
    return arena.usage()


def test_a_lent_buffer_arrives_as_a_view_and_lives_while_any_view_does():
    a = Arena(1 << 28, 11)
    x = np.arange(BIG, dtype=np.float64)
    d, hold = a.lend(raw(x))
    view = a.take(d, False)
    y = np.frombuffer(view, dtype=np.float64)
    assert np.array_equal(x, y) and y.flags.writeable
    del hold, view
    assert a.usage()[1] == 1, "the array still views the block"
    # Memory already in a block this process holds goes again without a copy.
    d2, hold2 = a.lend(raw(y[10:]))
    assert hold2.offset == a.take(d, False).offset + 80
    del y, hold2
    assert a.usage() == (0, 0)


def test_a_given_buffer_is_taken_once_then_the_descriptor_is_spent():
    a = Arena(1 << 28, 12)
    d = a.give(raw(np.ones(BIG)))
    view = a.take(d, True)
    with pytest.raises(ValueError, match="taken already"):
        a.take(d, True)
    del view
    with pytest.raises(ValueError, match="no longer there"):
        a.take(d, False)
    d = a.give(raw(np.ones(BIG)))
    a.ungive(d)
    assert a.usage() == (0, 0)


def test_bad_input_is_refused_with_a_clear_error():
    a = Arena(1 << 28, 13)
    with pytest.raises(ValueError, match="C-contiguous"):
        a.lend(np.ones((64, 64), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="32 bytes"):
        a.take(b"short", False)
    assert a.give(raw(np.zeros(1 << 29, dtype=np.uint8))) is None, "no room: None (sent in-band)"


def test_payloads_frame_only_big_buffers_and_unframe_to_equal_objects():
    small = np.arange(10)
    assert dumps(small, None, _arena.LEND)[:1] == b"\x80", "small buffers stay in the pickle"
    obj = {"a": np.arange(BIG), "b": np.ones((BIG, 2), order="F"), "s": "text"}
    framed = dumps(obj, None, _arena.LEND)
    assert isinstance(framed, _arena.Framed) and len(framed) < 1024
    back = loads(framed)
    assert np.array_equal(back["a"], obj["a"]) and np.array_equal(back["b"], obj["b"]) and back["s"] == "text"
    assert back["b"].flags.f_contiguous
    given = dumps(obj, None, _arena.GIVE)
    assert type(given) is bytes
    assert np.array_equal(loads(given)["a"], obj["a"])


def test_a_payload_from_another_program_s_arena_is_refused():
    framed = bytearray(dumps(np.arange(BIG), None, _arena.LEND))
    framed[1:9] = (12345).to_bytes(8, "little")
    with pytest.raises(pickle.UnpicklingError, match="another program"):
        loads(bytes(framed))


def test_pool_and_executor_move_big_arrays_both_ways_and_free_them():
    x = np.random.default_rng(1).random(BIG * 8)
    arena = _arena.arena()
    with paralelo.Pool(2) as pool:
        assert pool.apply(total, (x,)) == float(x.sum())
        y = pool.apply(ones, (BIG,))
        assert y.shape == (BIG,) and y.flags.writeable and y.sum() == BIG
        y[0] = 5.0  # ours to write
        assert np.array_equal(pool.apply(same, (x,)), x)
        assert pool.map(total, [x[:BIG], x[BIG:]]) == [float(x[:BIG].sum()), float(x[BIG:].sum())]
        assert pool.apply(blob, (_arena.OOB_MIN * 4,)) == blob(_arena.OOB_MIN * 4)
        del y
        with paralelo.ProcessPoolExecutor(2) as ex:
            assert ex.submit(total, x).result() == float(x.sum())
            assert list(ex.map(total, [x, x[:BIG]])) == [float(x.sum()), float(x[:BIG].sum())]
        assert usage_settles(arena) == (0, 0)


def hold_forever(a):
    global _kept
    _kept = a
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_while_it_holds_a_view_leaves_nothing_held():
    x = np.ones(BIG)
    arena = _arena.arena()
    with paralelo.Pool(1) as pool:
        with pytest.raises(Exception):
            pool.apply(hold_forever, (x,))
        assert pool.apply(total, (x,)) == BIG, "the pool goes on"
        assert usage_settles(arena) == (0, 0)


def test_a_forked_child_keeps_what_it_inherited_after_the_parent_lets_go():
    arena = _arena.arena()
    y = loads(dumps(np.full(BIG, 7.0), None, _arena.GIVE))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # the parent has let go
        code = 0 if y.sum() == 7.0 * BIG and arena.usage()[1] >= 1 else 1
        os._exit(code)  # (with no release: a death, swept below)
    os.close(r)
    del y
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert arena.usage()[1] == 1, "the dead child's hold is there until swept"
    arena.reclaim_dead()
    assert arena.usage() == (0, 0)


def test_big_arrays_from_a_main_script_give_what_multiprocessing_gives(tmp_path):
    code = """
import sys, logging
import numpy as np
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
logging.basicConfig(level=logging.INFO)
def stats(a):
    return float(a.sum()), a.dtype.str, a.shape, a.flags.c_contiguous
def grow(n):
    return np.arange(n, dtype=np.int32).reshape(-1, 4)
def echo(b):
    return b
if __name__ == "__main__":
    x = np.linspace(0, 1, 1_000_000)
    with mp.Pool(2) as p:
        print(p.apply(stats, (x,)))
        print(p.apply(stats, (x[::2],)))               # not contiguous: in the pickle
        print(p.apply(stats, (np.asfortranarray(np.ones((600, 500))),)))
        g = p.apply(grow, (400_000,)); print(g.shape, g[-1].tolist(), g.dtype)
        print(len(p.apply(echo, (b"z" * 3_000_000,))))
        print(p.map(stats, [x[:300_000], x[300_000:]]))
"""
    par, std = side_by_side(tmp_path, code)
    assert par == std


def test_queues_and_pipes_carry_big_arrays_as_multiprocessing_does(tmp_path):
    code = """
import sys
import numpy as np
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
def worker(q, out, conn):
    while (a := q.get()) is not None:
        out.put((a.shape, float(a.sum()), a * 2))
    conn.send({"big": np.arange(300_000), "tag": "done"})
    print("child", conn.recv().sum(), flush=True)
if __name__ == "__main__":
    q, out = mp.Queue(), mp.Queue()
    here, there = mp.Pipe()
    p = mp.Process(target=worker, args=(q, out, there))
    p.start()
    for n in (10, 50_000, 1_000_000):
        q.put(np.ones(n))
        shape, s, twice = out.get()
        print(shape, s, twice.sum(), twice.flags.writeable)
    q.put(None)
    got = here.recv()
    print(got["tag"], int(got["big"].sum()))
    here.send(np.full(200_000, 3.0))
    p.join()
    print(p.exitcode)
    if sys.argv[1] == "paralelo":
        from paralelo import _arena
        del twice, got
        assert _arena.arena().usage() == (0, 0), _arena.arena().usage()
"""
    par, std = side_by_side(tmp_path, code)
    assert par == std


def echo_back(q, out):
    out.put(q.get() + 1)


def test_a_spawned_process_takes_the_arena_with_its_queue():
    ctx = paralelo.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo_back, args=(q, out))
    p.start()
    q.put(np.zeros(BIG))
    got = out.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and got.sum() == BIG


def test_forks_while_another_thread_takes_and_drops_views_never_hang_the_child():
    import threading

    x = np.ones(BIG)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            loads(dumps(x, None, _arena.GIVE))

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                ok = loads(dumps(x, None, _arena.GIVE)).sum() == BIG  # the bookkeeping is usable
                os._exit(0 if ok else 1)
            deadline = time.monotonic() + 20
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    pytest.fail("a child forked while a thread used the arena hung")
                time.sleep(0.005)
            assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        stop.set()
        t.join()
    _arena.arena().reclaim_dead()
    assert usage_settles(_arena.arena()) == (0, 0)
