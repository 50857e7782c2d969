"""Large buffers out of band: through the arena, to and from pool workers, as views."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import paralelo
from paralelo import _arena
from paralelo._native import Arena
from paralelo._pickling import dumps, loads
from scripts import side_by_side

BIG = _arena.OOB_MIN // 8 * 4  # float64 items: 4x the threshold
#: How the side-by-side scripts start, as users' do: numpy first, logging set up, and
#: the library named by the first argument as `mp`.
MAIN = """
import sys, logging
import numpy as np
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
logging.basicConfig(level=logging.INFO)
"""


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


@pytest.fixture(autouse=True)
def _no_current_slab():
    """These tests count the arena's blocks: the slab a process keeps for its next lock
    or event (made by an earlier test) is not theirs."""
    from paralelo import _slab

    gc.collect()
    with _slab._lock:
        _slab._slab, _slab._used = None, 0
    yield


def usage_settles(arena, want=(0, 0), timeout=10.0):
    """The arena's usage once it reaches `want` (the workers drop their views at their own
    pace), or what it was at the deadline."""
    end = time.monotonic() + timeout
    while arena.usage() != want and time.monotonic() < end:
        time.sleep(0.01)
    return arena.usage()


def sent(obj, mode=_arena.GIVE):
    """`obj` pickled as a message carries it, and sent (its blocks handed over)."""
    return _arena.commit(dumps(obj, None, mode))


def test_a_put_buffer_arrives_as_a_view_and_lives_while_any_view_does():
    a = Arena(1 << 28, 11)
    x = np.arange(BIG, dtype=np.float64)
    d, hold = a.put(raw(x))
    view = a.take(d, False)  # lent: alongside the sender's hold
    y = np.frombuffer(view, dtype=np.float64)
    assert np.array_equal(x, y) and y.flags.writeable
    y[0] = -1.0
    assert x[0] == 0.0, "a copy: the sender's array is its own"
    del hold, view
    assert a.usage()[1] == 1, "the array still views the block"
    d2, hold2 = a.put(raw(y))
    assert hold2.offset != a.take(d, False).offset, "sent on: copied again, never aliased"
    del y, hold2
    assert a.usage() == (0, 0)


def test_a_handed_over_buffer_is_taken_once_then_the_descriptor_is_spent():
    a = Arena(1 << 28, 12)
    d, hold = a.put(raw(np.ones(BIG)))
    with pytest.raises(ValueError, match="taken already"):
        a.take(d, True)  # not handed over yet: nothing in transit
    a.hand_over(hold)
    with pytest.raises(ValueError, match="handed over"):
        a.hand_over(hold)
    with pytest.raises(ValueError, match="handed over"):
        memoryview(hold)
    view = a.take(d, True)
    with pytest.raises(ValueError, match="taken already"):
        a.take(d, True)
    del view, hold
    with pytest.raises(ValueError, match="no longer there"):
        a.take(d, False)
    d, hold = a.put(raw(np.ones(BIG)))
    a.hand_over(hold)
    a.ungive(d)  # (its message never went out)
    assert a.usage() == (0, 0)


def test_bad_input_is_refused_with_a_clear_error():
    a = Arena(1 << 28, 13)
    with pytest.raises(ValueError, match="C-contiguous"):
        a.put(np.ones((64, 64), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="32 bytes"):
        a.take(b"short", False)
    assert a.put(raw(np.zeros(1 << 29, dtype=np.uint8))) is None, "no room: None (sent in-band)"


def test_payloads_frame_only_big_buffers_and_unframe_to_equal_objects():
    small = np.arange(10)
    assert dumps(small, None, _arena.LEND)[:1] == b"\x80", "small buffers stay in the pickle"
    obj = {"a": np.arange(BIG), "b": np.ones((BIG, 2), order="F"), "s": "text"}
    framed = dumps(obj, None, _arena.LEND)
    assert isinstance(framed, _arena.Framed) and len(framed) < 1024
    assert _arena.weight(framed) == len(framed) + obj["a"].nbytes + obj["b"].nbytes
    back = loads(framed)
    assert np.array_equal(back["a"], obj["a"]) and np.array_equal(back["b"], obj["b"]) and back["s"] == "text"
    assert back["b"].flags.f_contiguous
    given = sent(obj)
    assert type(given) is bytes and _arena.weight(given) == _arena.weight(framed)
    assert np.array_equal(loads(given)["a"], obj["a"])


class _FullArena:
    """An arena whose table of processes is full."""

    id = 1

    def put(self, data):
        raise ValueError("the arena has 1024 live participants already")

    def reclaim_dead(self):
        pass


def test_a_full_arena_or_process_table_sends_in_band(monkeypatch):
    monkeypatch.setattr(_arena, "_arena", _FullArena())
    x = np.arange(BIG)
    data = dumps(x, None, _arena.GIVE)
    assert data[:1] == b"\x80" and np.array_equal(pickle.loads(data), x)


def test_a_payload_that_cannot_be_read_lets_its_blocks_go():
    arena = _arena.arena()
    framed = bytearray(sent([np.arange(BIG), np.arange(BIG)]))
    framed[1:9] = (12345).to_bytes(8, "little")
    with pytest.raises(pickle.UnpicklingError, match="another program"):
        loads(bytes(framed))
    framed[1:9] = arena.id.to_bytes(8, "little")
    framed[-2] ^= 0xFF  # a corrupt pickle after good descriptors
    with pytest.raises(Exception):
        loads(bytes(framed))
    once = sent(np.arange(BIG))
    loads(once)
    with pytest.raises(ValueError, match="taken already|no longer there"):
        loads(once)  # a second read of the same message
    assert usage_settles(arena) == (0, 0)


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
    y = loads(sent(np.full(BIG, 7.0)))
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
    code = MAIN + """
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
    code = MAIN + """
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
            loads(sent(x))

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                ok = loads(sent(x)).sum() == BIG  # the bookkeeping is usable
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


def bump(a):
    a += 1
    return float(a.sum())


def test_what_a_worker_writes_to_its_argument_is_its_own_copy():
    with paralelo.Pool(2) as pool:
        x = pool.apply(ones, (BIG,))  # a view of the arena, received
        assert pool.apply(bump, (x,)) == 2.0 * BIG
        assert x.sum() == BIG, "the worker's copy, not the parent's array"
        assert pool.map(bump, [x, x]) == [2.0 * BIG, 2.0 * BIG]
        assert x.sum() == BIG


def bump_then_die(a, marker):
    a += 1
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return float(a[0])


def test_a_retried_call_gets_its_arguments_as_they_were_sent(tmp_path):
    with paralelo.Pool(1) as pool:
        assert pool.apply(bump_then_die, (np.zeros(BIG), str(tmp_path / "died")), retries=1) == 1.0


def test_a_retried_item_of_a_lazy_input_is_sent_as_it_was_read(tmp_path):
    def arrays():
        buf = np.zeros(BIG)
        for i in range(3):
            buf[:] = 10 * i
            yield buf, str(tmp_path / f"died{i}")

    with paralelo.Pool(1) as pool:
        assert list(pool.imap(_star_bump_then_die, arrays(), retries=1)) == [1.0, 11.0, 21.0]


def test_a_snapshot_of_a_lazy_input_item_keeps_its_big_buffers_in_the_arena():
    from paralelo._engine.snapshot import Snapshot, snapshot

    item = np.arange(BIG, dtype=float)
    snap = snapshot(item, None, _arena.LEND)
    assert type(snap) is Snapshot and snap.oob == item.nbytes
    item[:] = -1  # the input changes it after it was read
    payload = dumps([snap, 7], None, _arena.LEND)
    assert len(payload) < 4096  # the snapshot's frame travels, not its buffer
    got = loads(payload)
    assert got[1] == 7 and got[0][0] == 0.0 and got[0][-1] == BIG - 1



def test_values_that_cannot_change_are_not_snapshotted():
    import collections
    import datetime
    import decimal
    import enum

    from paralelo._engine.snapshot import frozen

    Point = collections.namedtuple("Point", "x y")
    Colour = enum.Enum("Colour", "RED GREEN")

    class Loose(tuple):  # (has a __dict__: attributes may change)
        pass

    for value in (1, "a", 2.5, None, b"x", (1, ("a", 2.5)), Point(1, 2), frozenset({1, 2}),
                  datetime.datetime.now(), decimal.Decimal("1.5"), Colour.RED, np.float32(1),
                  np.int64(3), range(4)):
        assert frozen(value), value
    for value in ([], {}, ([],), Point([], 1), Loose((1,)), np.zeros(3), np.zeros(1, "i4,f8")[0],
                  bytearray(b"x"), object()):
        assert not frozen(value), value


def _star_bump_then_die(args):
    return bump_then_die(*args)


def _bump_and_die_at_150(args):
    a, marker = args
    first = float(a[0])
    a += 1000  # (its own copy, as with multiprocessing)
    if first == 150 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return first


def test_items_run_again_after_their_worker_died_get_their_input_as_read(tmp_path):
    """A worker dies part-way through one of our chunks, whose items then run again one
    by one: each sees its input as the generator gave it, not as the dead worker left
    its lent blocks."""
    marker = str(tmp_path / "died")
    items = ((np.full(_arena.OOB_MIN // 8 + 1024, float(i)), marker) for i in range(300))
    out = []
    with paralelo.Pool(2) as pool:
        it = pool.imap(_bump_and_die_at_150, items)
        for _ in range(300):
            try:
                out.append(next(it))
            except paralelo.WorkerLostError:  # (it ran alone: nothing to run again)
                out.append(None)
    assert os.path.exists(marker)
    assert [i for i, v in enumerate(out) if v != i] in ([], [150])


def _fill_row(row):
    row[:] = 7
    return 1


def test_shared_array_rows_from_a_generator_stay_shared_with_retries():
    s = paralelo.SharedArray((4, BIG // 4))
    with paralelo.Pool(2, retries=1) as pool:
        assert sum(pool.imap(_fill_row, (s[i] for i in range(4)))) == 4
    assert (s == 7).all()


def test_a_dropped_queue_or_pipe_lets_go_of_its_unread_big_messages():
    import gc

    arena = _arena.arena()
    assert usage_settles(arena) == (0, 0)
    q, sq, jq = paralelo.Queue(), paralelo.SimpleQueue(), paralelo.JoinableQueue()
    r, w = paralelo.Pipe()
    for queue in (q, sq, jq):
        queue.put(np.ones(BIG))
    del queue
    w.send(np.ones(BIG))
    w.send(np.ones(BIG))
    assert arena.usage()[1] == 5
    del q, sq, jq, r, w
    gc.collect()
    assert arena.usage() == (0, 0)


HELD_ELSEWHERE = """
import gc, sys, time
import numpy as np
import paralelo as mp
from paralelo import _arena

def total(q):
    time.sleep(0.3)  # the parent has dropped its queue by now
    return float(q.get().sum())

def report(q, out):
    out.put(total(q))

def started(method):
    ctx = mp.get_context(method)
    q, out = ctx.Queue(), ctx.SimpleQueue()
    q.put(np.ones(100_000))
    p = ctx.Process(target=report, args=(q, out))
    p.start()
    del q
    gc.collect()
    got = out.get()
    p.join()
    return got

if __name__ == "__main__":
    print(started("fork"), started("spawn"))
    with mp.Pool(1) as pool:
        q = mp.Queue()
        q.put(np.ones(100_000))
        r = pool.apply_async(total, (q,))
        del q
        gc.collect()
        print(r.get(30))
    gc.collect()
    for _ in range(100):  # (the workers' views go as they end)
        if _arena.arena().usage() == (0, 0):
            break
        time.sleep(0.05)
    assert _arena.arena().usage() == (0, 0), _arena.arena().usage()
"""


PASSED_ONCE = """
import os, gc
import paralelo

def size(q):  # (in __main__: the task is pickled a second time, by value)
    return q.qsize()

def channel_fds():
    fds = os.listdir("/proc/self/fd")
    return sum("paralelo-channel" in os.readlink(f"/proc/self/fd/{fd}") for fd in fds if fd.isdigit()
               and os.path.exists(f"/proc/self/fd/{fd}"))

def nothing(q):
    pass

def all_fds():
    return len(os.listdir("/proc/self/fd"))

def poke(conn):
    return conn.poll()

if __name__ == "__main__":
    q = paralelo.Queue()
    q.put(1)
    a, b = paralelo.Pipe()
    with paralelo.Pool(1) as pool:
        pool.apply(size, (q,))
        pool.apply(poke, (b,))
        before, fds = channel_fds(), all_fds()
        print([pool.apply(size, (q,)) for _ in range(30)] == [1] * 30)
        print([pool.apply(poke, (b,)) for _ in range(30)] == [False] * 30)
        gc.collect()
        print(channel_fds() - before, all_fds() - fds)
    ps = [paralelo.get_context("spawn").Process(target=nothing, args=(q,)) for _ in range(3)]
    before = channel_fds()
    for p in ps:
        p.start()
    print(channel_fds() - before)  # the children have their own holds once started
    for p in ps:
        p.join()
"""


LAST_HOLDER_ENDS = """
import gc, time
import numpy as np
import paralelo
from paralelo import _arena

KEPT = []

def keep(q):
    KEPT.append(q)  # held, never read

def settled():
    for _ in range(100):
        if _arena.arena().usage() == (0, 0):
            return True
        time.sleep(0.05)
    return _arena.arena().usage()

if __name__ == "__main__":
    import multiprocessing
    for lib, method in ((paralelo, "fork"), (paralelo, "spawn"), (multiprocessing, "fork")):
        q = paralelo.Queue()
        q.put(np.ones(100_000))
        child = lib.get_context(method).Process(target=keep, args=(q,))
        child.start()
        del q
        gc.collect()
        child.join()
        print(lib.__name__, method, settled())
    q = paralelo.Queue()
    q.put(np.ones(100_000))
    pool = paralelo.Pool(1, initializer=keep, initargs=(q,))
    pool.apply(len, ((),))
    del q
    gc.collect()
    pool.close()
    pool.join()
    print("pool", settled())
"""


def test_the_last_holder_ending_lets_go_of_unread_messages(tmp_path):
    """The parent lets go first; the child that still held the queue ends with its
    message unread: the message's blocks go with it, not at the program's end."""
    out, = side_by_side(tmp_path, LAST_HOLDER_ENDS, ("paralelo",))
    assert out == "paralelo fork True\nparalelo spawn True\nmultiprocessing fork True\npool True"


def test_a_channel_passed_on_leaves_no_descriptor_behind(tmp_path):
    out, = side_by_side(tmp_path, PASSED_ONCE, ("paralelo",))
    assert out == "True\nTrue\n0 0\n0"


def test_a_queue_dropped_here_while_another_process_reads_it_keeps_its_messages(tmp_path):
    # (multiprocessing fails this one with spawn: the dropped queue's semaphores are
    # unlinked before the child opens them, which then dies and the parent waits for ever.)
    out, = side_by_side(tmp_path, HELD_ELSEWHERE, ("paralelo",))
    assert out == "100000.0 100000.0\n100000.0"


def test_an_object_sent_to_a_closed_pipe_or_read_as_bytes_leaves_nothing_held():
    arena = _arena.arena()
    r, w = paralelo.Pipe()
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send(np.zeros(BIG))
    r, w = paralelo.Pipe()
    w.send(np.arange(BIG))
    data = r.recv_bytes()
    assert data[:1] == b"\x80" and np.array_equal(pickle.loads(data), np.arange(BIG)), "as multiprocessing's"
    w.send_bytes(b"\x02" + bytes(40))  # raw bytes that only look like a frame
    assert r.recv_bytes() == b"\x02" + bytes(40)
    assert usage_settles(arena) == (0, 0)


def big_late(_):
    a = np.ones(1 << 25)  # 256 MiB
    time.sleep(0.2)
    return a


def test_a_worker_killed_for_its_time_limit_while_returning_leaves_nothing_held():
    arena = _arena.arena()
    with paralelo.Pool(1) as pool:
        with pytest.raises(paralelo.TaskTimeoutError):
            pool.apply(big_late, (0,), task_timeout=0.3)
        assert pool.apply(total, (np.ones(BIG),)) == BIG
    assert usage_settles(arena) == (0, 0)


def test_big_items_count_against_what_a_lazy_map_reads_ahead():
    made = 0

    def items():
        nonlocal made
        for _ in range(1000):
            made += 1
            yield np.ones(1 << 20)  # 8 MiB each

    with paralelo.Pool(2) as pool:
        it = pool.imap(total_slowly, items())
        assert next(it) == 1.0
        time.sleep(1)
        assert made < 40, f"read {made} items of 8 MiB ahead"  # (≈ 64 MiB, not gigabytes)
        pool.terminate()


def total_slowly(a):
    time.sleep(0.02)
    return float(a[0])


def child_holds(a):
    assert a.sum() == BIG


def test_processes_that_end_and_pools_that_are_terminated_hold_nothing():
    arena = _arena.arena()
    with paralelo.Pool(1) as pool:
        x = pool.apply(ones, (BIG,))
    p = paralelo.Process(target=child_holds, args=(x,))
    p.start()
    p.join()
    assert p.exitcode == 0
    del x
    assert arena.usage() == (0, 0), "the child let go as it ended: no sweep needed"
    pool = paralelo.Pool(2)
    pool.map_async(total_slowly, [np.zeros(BIG)] * 4)
    time.sleep(0.3)
    pool.terminate()
    pool.join()
    assert arena.usage() == (0, 0)


def test_received_arrays_are_copies_everywhere_as_with_multiprocessing(tmp_path):
    # A received array is passed on (to a worker, to queues, through a pipe), changed in
    # place on the other side, and inherited by forked children that write to it: every
    # side keeps its own copy, as multiprocessing's pickles and fork give.
    code = MAIN + """
DATA = None
def make(v): return np.full(1_000_000, float(v))
def zero(a): a[:] = 0
def step(a): a += 1; return a
def scribble(): DATA[:] = -1
def peek(_): return float(DATA[0])
def scale(q, out, k):
    a = q.get(); a *= k; out.put(float(a[0]))
def echo_zero(conn):
    conn.send(conn.recv())
    a = conn.recv(); a[:] = 0; conn.send(float(a.sum()))
if __name__ == "__main__":
    with mp.Pool(2) as pool:
        r = pool.apply(make, (7,))
        pool.apply(zero, (r,))
        state = pool.apply(make, (0,)); hist = [state]
        for _ in range(3):
            state = pool.apply(step, (state,)); hist.append(state)
        five = pool.apply(make, (5,))
        print(r[0], [float(h[0]) for h in hist], [float(o[0]) for o in pool.map(step, [five] * 4, chunksize=1)], five[0])
        DATA = pool.apply(make, (42,))
    p = mp.Process(target=scribble); p.start(); p.join()
    print("after a child wrote its copy:", DATA[0])
    DATA[:] = 1
    with mp.Pool(2) as pool:
        DATA[:] = 2
        print("workers forked when it was 1 see:", pool.map(peek, range(2)))
    q, out = mp.Queue(), mp.Queue()
    q.put(np.full(1_000_000, 10.0)); a = q.get()
    qs = [mp.Queue() for _ in range(3)]
    ps = [mp.Process(target=scale, args=(qk, out, k)) for qk, k in zip(qs, (2, 3, 4))]
    for proc in ps: proc.start()
    for qk in qs: qk.put(a)
    print(sorted(out.get() for _ in ps), a[0])
    for proc in ps: proc.join()
    here, there = mp.Pipe()
    child = mp.Process(target=echo_zero, args=(there,)); child.start()
    here.send(np.full(1_000_000, 5.0)); back = here.recv(); here.send(back)
    print(here.recv(), back[0])
    child.join()
"""
    par, std = side_by_side(tmp_path, code, timeout=120)
    assert par == std


def test_a_spawned_child_that_makes_a_queue_at_import_still_reads_the_parent_s_arrays(tmp_path):
    code = MAIN + """
LOG = mp.SimpleQueue()  # made at import: in a spawned child too, before its arguments arrive
def child(inq, outq):
    outq.put(float(inq.get().sum()))
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    inq, outq = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child, args=(inq, outq)); p.start()
    inq.put(np.ones(1_000_000))
    print(outq.get())
    p.join()
"""
    par, std = side_by_side(tmp_path, code, timeout=120)
    assert par == std == "1000000.0"


def test_a_thread_using_the_arena_while_another_forks_never_deadlocks(tmp_path):
    # The forking thread holds the arena's bookkeeping across the fork while other at-fork
    # hooks run, which may hand the GIL over: a thread waiting for the bookkeeping must
    # wait without the GIL. (In a subprocess: a deadlock holds the GIL, which no timeout
    # inside the process could break.)
    code = """
import os, sys, threading, time
import paralelo
from paralelo import _arena
arena = _arena.arena()
keep = arena.alloc(1 << 17)
stop = threading.Event()
def churn():
    while not stop.is_set():
        arena.alloc(1 << 17)
sys.setswitchinterval(1e-6)
t = threading.Thread(target=churn)
t.start()
end = time.monotonic() + 3
forks = 0
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    forks += 1
stop.set()
t.join()
del keep
arena.reclaim_dead()
print(forks > 0, arena.usage())
"""
    script = tmp_path / "forks.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "True (0, 0)"


def test_a_process_that_ended_without_leaving_is_swept_by_the_next_sender():
    arena = _arena.arena()
    pid = os.fork()
    if pid == 0:
        view = loads(sent(np.ones(BIG)))  # held here, and never let go: no `leave`
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert arena.usage()[1] == 1, "the dead child's hold"
    time.sleep(_arena.SWEEP_SECONDS + 0.1)
    loads(sent(np.ones(BIG)))  # a sender sweeps (at most once a second)
    assert usage_settles(arena) == (0, 0)


FORK_MID_COPY = MAIN + """
import os, threading
def main():
    q = mp.Queue()
    stop = threading.Event()
    def forker():
        while not stop.is_set():
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
    t = threading.Thread(target=forker); t.start()
    bad = 0
    try:
        for i in range(20):
            q.put(np.full(4 << 20, i + 1, dtype=np.int64))  # copied with the GIL released
            bad += int(not (q.get(timeout=30) == i + 1).all())
    finally:
        stop.set(); t.join()
    print("corrupt", bad)
if __name__ == "__main__":
    main()
"""


def test_a_fork_in_another_thread_mid_copy_changes_nothing_that_arrives(tmp_path):
    # A block being filled for a message was mapped privately by the fork's hooks (as a
    # received view is), so the rest of the copy went to pages the receiver never sees.
    par, std = side_by_side(tmp_path, FORK_MID_COPY, timeout=120)
    assert par == std == "corrupt 0"


BIG_BYTES = MAIN + """
import pickle
def echo(c):
    while True:
        b = c.recv_bytes()
        if not b:
            break
        c.send_bytes(b)

if __name__ == "__main__":
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,)); p.start()
    data = bytes(range(256)) * 4096 * 8  # 8 MiB: through the arena, one block
    a.send_bytes(memoryview(data)[1:-1]); print(a.recv_bytes() == data[1:-1])
    a.send_bytes(data, 1000, 300_000); print(a.recv_bytes() == data[1000:301_000])
    a.send_bytes(pickle.dumps(list(range(100_000)))); print(len(a.recv()))  # bytes read as an object
    a.send_bytes(data); into = bytearray(len(data) + 5)
    print(a.recv_bytes_into(into, 5), into[5:] == data)
    a.send_bytes(b""); p.join(30)
"""


def test_big_send_bytes_arrive_as_with_multiprocessing_and_leave_nothing(tmp_path):
    # Big ones go through the arena (a block each) instead of fragments through the ring.
    par, std = side_by_side(tmp_path, BIG_BYTES, timeout=120)
    assert par == std == "True\nTrue\n100000\n8388608 True"
    a, b = paralelo.Pipe()
    data = bytes(1 << 20)
    for _ in range(5):
        a.send_bytes(data)
        assert b.recv_bytes() == data
    a.send_bytes(data)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(maxlength=1000)  # (its block goes all the same)
    a.send_bytes(data)
    a.close()
    b.close()  # an unread one too
    assert usage_settles(_arena.arena()) == (0, 0)
