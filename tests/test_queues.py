"""``Queue``, ``SimpleQueue``, ``JoinableQueue``: side by side with multiprocessing on the
same scripts, and what paralelo adds (queues in a pool's tasks, errors raised at ``put``,
a process killed mid-message costing only that message)."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time

import pytest

import paralelo
from scripts import side_by_side
from test_sharedctypes import HEAD


def test_queues_match_multiprocessing(tmp_path) -> None:
    outs = side_by_side(tmp_path, HEAD + """
import queue
def producer(q, n, tag):
    for i in range(n):
        q.put((tag, i))
    q.put(None)
def consumer(q, out):
    while True:
        x = q.get()
        if x is None:
            break
        out.put(x)
def worker(jq, done):
    while True:
        x = jq.get()
        done.put(x * 2)
        jq.task_done()
def flood(q, n):
    for i in range(n):
        q.put(np.arange(i % 5))
    logging.info("flooded")
ITEMS = None
def init(q):
    global ITEMS
    ITEMS = q
def take(_):
    return ITEMS.get(timeout=10)
if __name__ == "__main__":
    q, out = mp.Queue(), mp.Queue()
    ps = [mp.Process(target=producer, args=(q, 3000, t)) for t in range(2)]
    cs = [mp.Process(target=consumer, args=(q, out)) for _ in range(2)]
    for p in ps + cs:
        p.start()
    got = [out.get(timeout=30) for _ in range(6000)]
    for p in ps + cs:
        p.join()
    print(sorted(got) == sorted((t, i) for t in range(2) for i in range(3000)))
    print(q.qsize(), q.empty(), [p.exitcode for p in ps + cs])

    b = mp.Queue(2)
    b.put("a"); b.put_nowait("b")
    print(b.full(), b.qsize())
    for call in (lambda: b.put("c", timeout=0.05), lambda: b.put_nowait("c"), lambda: b.put("c", False)):
        try:
            call()
        except queue.Full:
            print("Full")
    print(b.get(), b.get_nowait(), b.empty(), b.full())
    for call in (lambda: b.get(timeout=0.05), b.get_nowait, lambda: b.get(False), lambda: b.get(True, -1)):
        try:
            call()
        except queue.Empty:
            print("Empty")
    b.close(); b.join_thread()
    for call in (lambda: b.put(1), b.get):
        try:
            call()
        except ValueError as e:
            print("ValueError", str(e).endswith("is closed"))

    # Unbounded: all put before anyone takes; a child's puts are flushed before it exits.
    q = mp.Queue()
    for i in range(20000):
        q.put(i)
    print(sum(q.get() for _ in range(20000)))
    p = mp.Process(target=flood, args=(q, 5000)); p.start()
    total = sum(int(q.get(timeout=30).sum()) for _ in range(5000))  # (before join: see the docs)
    p.join(); print(p.exitcode, total)

    jq, done = mp.JoinableQueue(), mp.Queue()
    w = mp.Process(target=worker, args=(jq, done), daemon=True); w.start()
    for i in range(100):
        jq.put(i)
    jq.join()
    print(sorted(done.get() for _ in range(100)) == [i * 2 for i in range(100)])
    try:
        jq.task_done()
    except ValueError as e:
        print("ValueError", e)
    w.terminate(); w.join()

    s = mp.SimpleQueue()
    print(s.empty()); s.put({"a": [1, 2]}); print(s.empty(), s.get(), s.empty())
    s.close()
    for call in (lambda: s.put(1), s.get):
        try:
            call()
        except OSError as e:
            print("OSError", e)

    items = mp.Queue()
    for i in range(8):
        items.put(i)
    with mp.Pool(2, initializer=init, initargs=(items,)) as pool:
        print(sorted(pool.map(take, range(8))))
""")
    assert outs[0] == outs[1]
    assert outs[0].count("Full") == 3 and outs[0].count("Empty") == 4


def _pass_along(q: paralelo.Queue, x: int) -> int:
    q.put(x * 10)
    return x


def test_a_queue_goes_to_a_running_pools_tasks() -> None:
    # (multiprocessing refuses: its queues are only shared by inheritance.)
    with paralelo.Pool(2) as pool:
        q = paralelo.Queue()  # made after the workers started
        assert sorted(pool.starmap(_pass_along, [(q, i) for i in range(6)])) == list(range(6))
        assert sorted(q.get(timeout=10) for _ in range(6)) == [i * 10 for i in range(6)]
        assert q.empty()


def test_put_raises_what_cannot_be_pickled_and_sends_what_only_cloudpickle_can() -> None:
    q = paralelo.Queue()
    with pytest.raises(TypeError):
        q.put(threading.Lock())  # multiprocessing prints this from its feeder thread, and drops it
    assert q.qsize() == 0 and q.empty()
    q.put(lambda x: x + 1)
    assert q.get(timeout=5)(1) == 2
    assert q.qsize() == 0


def test_what_the_ring_cannot_hold_waits_in_the_feeder_in_order() -> None:
    q = paralelo.Queue()
    big = b"x" * 300_000
    for i in range(40):  # 12 MB through a 1 MB ring: most wait in the feeder
        q.put((i, big))
    q.put("small")  # behind them, not before
    assert [q.get(timeout=10)[0] for _ in range(40)] == list(range(40))
    assert q.get(timeout=10) == "small"


def test_a_queue_pickles_to_a_spawned_process(tmp_path) -> None:
    code = HEAD + """
def child(q, r):
    r.put(q.get(timeout=10) + 1)
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q, r = ctx.Queue(), ctx.Queue()
    q.put(41)
    p = ctx.Process(target=child, args=(q, r)); p.start()
    print(r.get(timeout=30)); p.join(); print(p.exitcode)
"""
    outs = side_by_side(tmp_path, code)
    assert outs[0] == outs[1] == "42\n0"


def _put_forever(q: paralelo.Queue, size: int) -> None:
    blob = b"k" * size
    while True:
        q.put(blob)


def _get_forever(q: paralelo.Queue) -> None:
    while True:
        q.get()


def test_a_putter_killed_mid_message_costs_only_that_message() -> None:
    q = paralelo.Queue()
    p = paralelo.Process(target=_put_forever, args=(q, 3_000_000))  # 3 MB: streams in fragments
    p.start()
    assert len(q.get(timeout=10)) == 3_000_000
    time.sleep(0.05)  # mid-way through a later message, most likely
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    q.put("after")
    seen = []
    while (x := q.get(timeout=10)) != "after":
        seen.append(x)
    assert all(len(x) == 3_000_000 for x in seen)  # whole messages only, then ours


def test_a_getter_killed_mid_message_costs_only_that_message() -> None:
    q = paralelo.Queue()
    p = paralelo.Process(target=_get_forever, args=(q,))
    p.start()
    for _ in range(3):
        q.put(b"g" * 5_000_000)
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    q.put("after")
    while (x := q.get(timeout=10)) != "after":
        assert x == b"g" * 5_000_000


def test_a_queue_pickled_outside_a_process_start_opens_the_same_ring() -> None:
    q = paralelo.JoinableQueue(3)
    q.put("x")
    copy = pickle.loads(pickle.dumps(q))
    assert copy.qsize() == 1 and copy.get(timeout=5) == "x"
    copy.task_done()
    q.join()
    for _ in range(3):
        copy.put(1)
    with pytest.raises(queue.Full):
        q.put(1, timeout=0.01)


def _count_up(q: paralelo.Queue, tag: int) -> None:
    for i in range(5000):
        q.put((tag, i))


def test_each_putters_items_arrive_in_its_order() -> None:
    q = paralelo.Queue()
    ps = [paralelo.Process(target=_count_up, args=(q, tag)) for tag in range(3)]
    for p in ps:
        p.start()
    last = {tag: -1 for tag in range(3)}
    for _ in range(15000):
        tag, i = q.get(timeout=10)
        assert i == last[tag] + 1
        last[tag] = i
    for p in ps:
        p.join()


def _put_one(q: paralelo.Queue, x: object) -> None:
    q.put(x)


def test_a_child_forked_while_the_feeder_is_mid_send_can_still_put() -> None:
    q = paralelo.Queue()
    q.put(b"x" * (3 << 20))  # bigger than the ring: the feeder thread waits mid-message
    time.sleep(0.2)
    p = paralelo.Process(target=_put_one, args=(q, "from child"))
    p.start()
    assert len(q.get(timeout=10)) == 3 << 20
    assert q.get(timeout=10) == "from child"
    q.put("after")
    assert q.get(timeout=10) == "after"
    p.join(10)
    assert p.exitcode == 0


def test_empty_from_another_thread_or_a_signal_handler_while_get_waits() -> None:
    q = paralelo.Queue()
    seen = []

    def check() -> None:
        time.sleep(0.1)
        seen.append(q.empty())
        q.put("x")

    t = threading.Thread(target=check)
    t.start()
    assert q.get(timeout=10) == "x"
    t.join()

    def handler(sig: int, frame: object) -> None:
        seen.append(q.empty())
        with pytest.raises(RuntimeError, match="reentrant"):
            q.get()  # this very thread is inside get(): refused, not deadlocked

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(queue.Empty):
            q.get(timeout=0.5)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert seen == [True, True]


def _put_big_then_sleep(q: paralelo.Queue) -> None:
    q.put(b"p" * 3_000_000)  # the feeder stalls mid-message: nobody reads yet
    time.sleep(60)


def test_a_message_lost_with_its_putter_is_counted_out_and_marked_done() -> None:
    q = paralelo.JoinableQueue(maxsize=2)
    p = paralelo.Process(target=_put_big_then_sleep, args=(q,))
    p.start()
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    q.put("after")
    assert q.get(timeout=10) == "after"
    q.task_done()
    assert q.qsize() == 0
    q.join()  # nothing is left unfinished
    q.put(1)
    q.put(2, timeout=1)  # the lost message's slot came back


def test_objects_that_only_multiprocessings_pickler_knows_go_through() -> None:
    import socket

    a, b = socket.socketpair()
    q = paralelo.Queue()
    q.put(a)  # (ForkingPickler's reducer: the descriptor is duplicated)
    got = q.get(timeout=10)
    got.send(b"hi")
    assert b.recv(2) == b"hi"
    for s in (a, b, got):
        s.close()


def test_closed_and_bad_arguments_fail_as_in_multiprocessing() -> None:
    with pytest.raises(TypeError):
        paralelo.Queue(2.5)
    q = paralelo.Queue()
    q.close()
    with pytest.raises(OSError, match="handle is closed"):
        q.empty()


FLAT_MESSAGES = """
import sys, logging, math
import numpy as np
logging.basicConfig(level=logging.INFO)
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp

VALUES = [0, 255, 256, -1, 2**31, -2**63, 2**63, 2**100, 1.5, -0.0, math.inf, None, True, False,
          "", "ab", "日本" * 3000, "x" * 40000, b"", b"\\x00" * 300, np.int64(3), np.float64(0.5)]

def echo(q, conn):
    for v in VALUES:
        q.put(v)
        conn.send(v)

if __name__ == "__main__":
    q = mp.Queue()
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(q, b))
    p.start()
    for v in VALUES:
        got, sent = q.get(), a.recv()
        print(repr(got)[:30], type(got).__name__, repr(sent)[:30], type(sent).__name__)
    p.join()
"""


def test_flat_messages_arrive_as_multiprocessing_delivers_them(tmp_path):
    """Ints, floats, strings, bytes and the like (pickled natively by paralelo) arrive
    with the same values and types as multiprocessing's, through a Queue and a Pipe."""
    outs = side_by_side(tmp_path, FLAT_MESSAGES)
    assert outs[0] == outs[1]


def test_a_put_whose_fast_pickling_fails_passes_its_queues_on_once() -> None:
    # The standard pickler passes `inner` on, then fails on the lambda; the slower path
    # pickles again. The first pass is taken back: no descriptor left with the resource
    # sharer for the program's life, no fd leaked.
    import gc
    from multiprocessing import resource_sharer

    q, inner = paralelo.Queue(), paralelo.Queue()
    q.put((inner, lambda: 1))
    q.get(timeout=10)
    gc.collect()  # (other tests' garbage closes its descriptors meanwhile, not ours)
    fds, shared = len(os.listdir("/proc/self/fd")), len(resource_sharer._resource_sharer._cache)
    for _ in range(10):
        q.put((inner, lambda: 1))
        q.get(timeout=10)
    assert len(resource_sharer._resource_sharer._cache) == shared
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_a_put_keeps_nothing_of_what_it_sent_alive() -> None:
    # A big buffer stops the fast path with an exception raised through Python frames:
    # kept with it, they would keep the array (and the caller's locals) alive.
    import gc
    import weakref

    import numpy as np

    q = paralelo.Queue()
    a = np.zeros(1 << 17)
    gone = weakref.ref(a)
    q.put(a)
    del a
    assert q.get(timeout=10).size == 1 << 17
    gc.collect()
    assert gone() is None
