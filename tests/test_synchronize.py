"""Semaphore, BoundedSemaphore, Event, Condition and Barrier: beside multiprocessing's on
the same programs (threads and processes), passed where multiprocessing's cannot go, a
dead holder or party reported instead of waited for, and hammered for their invariants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import paralelo
from scripts import side_by_side

HEAD = """
import sys, time, threading, logging
import numpy as np
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp
logging.basicConfig(level=logging.INFO)
"""

SAME_AS_MULTIPROCESSING = HEAD + """
def show(f):
    try:
        print(f())
    except BaseException as e:
        print(type(e).__name__, str(e).split(",")[0])

def consumer(sem, cond, items, out):
    with cond:
        got = cond.wait_for(lambda: items.value > 0, timeout=10)
        items.value -= 1
    out.put(("consumed", bool(got)))
    sem.release()

def party(bar, out):
    out.put(bar.wait(10))

if __name__ == "__main__":
    s = mp.Semaphore(2)
    print(repr(s), s.acquire(), s.acquire(), s.acquire(False), s.acquire(timeout=0.05), s.get_value())
    s.release(); s.release(); s.release()
    print(repr(s), s.get_value())
    b = mp.BoundedSemaphore(1)
    print(repr(b)); show(b.release)
    with b:
        print("inside", b.get_value())


    e = mp.Event()
    print(e.is_set(), e.wait(0.05), e.wait(-1))
    threading.Timer(0.05, e.set).start()
    print(e.wait(10), e.is_set()); e.clear(); print(e.is_set(), repr(e).split(" at ")[0])

    c = mp.Condition()
    show(c.wait); show(c.notify)
    with c:
        print(c.wait(0.05), c.wait_for(lambda: 0, timeout=0.05), c.wait_for(lambda: 7), repr(c))
    items = mp.Value("i", 0)
    done = mp.Semaphore(0)
    out = mp.Queue()
    ps = [mp.Process(target=consumer, args=(done, c, items, out)) for _ in range(3)]
    for p in ps:
        p.start()
    for _ in range(3):
        with c:
            items.value += 1
            c.notify()
    for _ in range(3):
        done.acquire(timeout=10)
    print(sorted(out.get(timeout=10) for _ in range(3)), items.value)
    for p in ps:
        p.join(10)

    bar = mp.Barrier(3, action=lambda: print("action"))
    print(bar.parties, bar.n_waiting, bar.broken, repr(bar).split(" at ")[0].split(".")[-1])
    ps = [mp.Process(target=party, args=(bar, out)) for _ in range(2)]
    for p in ps:
        p.start()
    mine = bar.wait(10)
    print(sorted([mine] + [out.get(timeout=10) for _ in range(2)]))
    for p in ps:
        p.join(10)
    show(lambda: bar.wait(0.05))
    print(bar.broken, repr(bar).split(" at ")[1][-7:]); show(bar.wait)
    bar.reset(); print(bar.broken, bar.n_waiting)
    t = threading.Thread(target=lambda: show(lambda: bar.wait(10))); t.start()
    while bar.n_waiting == 0:
        time.sleep(0.005)
    bar.abort(); t.join()
    fails = mp.Barrier(1, action=lambda: 1 / 0)
    show(fails.wait); print(fails.broken)
    import pickle
    for prim in (mp.Semaphore(), mp.Event(), mp.Condition(), mp.Barrier(2)):
        try:
            pickle.dumps(prim)
        except RuntimeError as e:  # (multiprocessing names the Condition inside)
            print("refused", "only be shared between processes through inheritance" in str(e))
"""


def test_the_primitives_match_multiprocessing(tmp_path) -> None:
    par, std = side_by_side(tmp_path, SAME_AS_MULTIPROCESSING, timeout=120)
    assert par == std


def test_bad_arguments_are_refused_up_front() -> None:
    # (multiprocessing fails later, or never: OSError for a negative value, a barrier of
    # no parties, a Condition on a lock its processes cannot share.)
    with pytest.raises(ValueError, match="initial value must be >= 0"):
        paralelo.Semaphore(-1)
    with pytest.raises(ValueError, match="parties must be > 0"):
        paralelo.Barrier(0)
    with pytest.raises(TypeError, match="paralelo Lock or RLock"):
        paralelo.Condition(threading.Lock())


PASSED_IN_TASKS = HEAD + """
def task(ev, sem, cond, bar, i):
    ev.wait(10)
    with sem:
        pass
    with cond:
        cond.notify_all()
    return i * 2, bar.parties

if __name__ == "__main__":
    ev, sem, bar = mp.Event(), mp.BoundedSemaphore(2), mp.Barrier(3)
    cond = mp.Condition(mp.Lock())
    with mp.Pool(2) as pool:
        r = pool.starmap_async(task, [(ev, sem, cond, bar, i) for i in range(6)])
        ev.set()
        print(r.get(30))
    with mp.ProcessPoolExecutor(2) as ex:
        print(ex.submit(task, ev, sem, cond, bar, 5).result(30))
    q = mp.Queue()
    q.put((ev, sem))
    ev2, sem2 = q.get(timeout=10)
    ev.clear(); ev2.set(); print(ev.is_set(), sem2.get_value())
"""


def test_they_pass_to_pool_and_executor_tasks_and_through_queues(tmp_path) -> None:
    # (multiprocessing refuses them in tasks: they may only be inherited.)
    out, = side_by_side(tmp_path, PASSED_IN_TASKS, ("paralelo",), timeout=120)
    assert out == "[(0, 3), (2, 3), (4, 3), (6, 3), (8, 3), (10, 3)]\n(10, 3)\nTrue 2"


def _killed_while(target, *args) -> int:
    """A process that ran `target(*args, ready)` until it set `ready`, then was killed:
    its pid (joined, so its death is certain)."""
    ready = paralelo.Event()
    p = paralelo.Process(target=target, args=(*args, ready))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    return p.pid


def _take_and_hang(sem, ready) -> None:
    sem.acquire()
    ready.set()
    time.sleep(60)


def test_a_killed_holders_semaphore_units_come_back_with_an_error_naming_it() -> None:
    sem = paralelo.BoundedSemaphore(1)
    pid = _killed_while(_take_and_hang, sem)
    with pytest.raises(paralelo.AbandonedLockError, match=f"semaphore was held by process {pid}, which ended") as e:
        sem.acquire(timeout=10)
    assert e.value.holder == pid
    assert sem.get_value() == 1
    assert sem.acquire(timeout=1)
    sem.release()


def _take_and_end(sem) -> None:
    sem.acquire()  # (a consumer's unit: used up, not abandoned)


def test_a_unit_taken_by_a_process_that_ended_normally_is_not_abandoned() -> None:
    sem = paralelo.Semaphore(1)
    p = paralelo.Process(target=_take_and_end, args=(sem,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert not sem.acquire(timeout=0.2)  # (no error: waited for, as with multiprocessing)


def _wait_at(bar) -> None:
    bar.wait(60)


def _wait_then_idle(bar) -> None:
    bar.wait(60)
    time.sleep(60)


def _a_party_killed_waiting(bar) -> int:
    """Starts a process that waits at `bar`, kills it once it arrived: its pid."""
    p = paralelo.Process(target=_wait_at, args=(bar,))
    p.start()
    end = time.monotonic() + 30
    while bar.n_waiting == 0:  # it arrived
        assert time.monotonic() < end
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    return p.pid


def test_a_barrier_whose_party_died_in_its_round_breaks_naming_it() -> None:
    bar = paralelo.Barrier(3)
    pid = _a_party_killed_waiting(bar)
    with pytest.raises(threading.BrokenBarrierError, match=f"pid {pid}\\) died"):
        bar.wait(20)  # (the round can never fill: one of its parties is gone)
    assert bar.broken
    bar.reset()
    t = threading.Thread(target=bar.wait, args=(10,))
    t.start()
    q = paralelo.Process(target=_wait_at, args=(bar,))
    q.start()
    assert bar.wait(10) in (0, 1, 2)  # usable again by the living
    t.join()
    q.join(10)


def test_a_party_killed_after_its_round_breaks_nothing_later() -> None:
    # (A pool's terminate() kills workers that took part in earlier rounds.)
    bar = paralelo.Barrier(2)
    p = paralelo.Process(target=_wait_then_idle, args=(bar,))
    p.start()
    bar.wait(30)  # a round with p
    p.kill()  # ...which then dies, between rounds
    p.join(10)
    t = threading.Thread(target=bar.wait, args=(10,))
    t.start()
    assert bar.wait(10) in (0, 1)
    t.join()


def _hold_condition(cond, ready) -> None:
    cond.acquire()
    ready.set()
    time.sleep(60)


def test_a_condition_whose_lock_holder_died_raises_instead_of_waiting() -> None:
    cond = paralelo.Condition()
    pid = _killed_while(_hold_condition, cond)
    with pytest.raises(paralelo.AbandonedLockError, match=str(pid)):
        cond.acquire(timeout=10)
    with cond:
        assert not cond.wait(0.01)


def _hammer_semaphore(sem, inside, peak, n) -> None:
    for _ in range(n):
        with sem:
            with inside.get_lock():
                inside.value += 1
                peak.value = max(peak.value, inside.value)
            with inside.get_lock():
                inside.value -= 1


def test_a_hammered_semaphore_never_lets_more_in_than_it_has() -> None:
    sem = paralelo.Semaphore(2)
    inside, peak = paralelo.Value("i", 0), paralelo.Value("i", 0)
    ps = [paralelo.Process(target=_hammer_semaphore, args=(sem, inside, peak, 3000)) for _ in range(3)]
    for p in ps:
        p.start()
    threads = [threading.Thread(target=_hammer_semaphore, args=(sem, inside, peak, 3000)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert 1 <= peak.value <= 2 and inside.value == 0 and sem.get_value() == 2


def _produce(cond, items, n) -> None:
    for _ in range(n):
        with cond:
            items.value += 1
            cond.notify()


def _consume(cond, items, taken, n) -> None:
    for _ in range(n):
        with cond:
            assert cond.wait_for(lambda: items.value > 0, timeout=30)
            items.value -= 1
            taken.value += 1


def test_a_condition_loses_no_wake_up_between_processes() -> None:
    cond = paralelo.Condition()
    items, taken = paralelo.Value("i", 0, lock=False), paralelo.Value("i", 0, lock=False)
    n = 2000
    ps = [paralelo.Process(target=_consume, args=(cond, items, taken, n)) for _ in range(2)]
    ps += [paralelo.Process(target=_produce, args=(cond, items, n)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    assert (taken.value, items.value) == (2 * n, 0)


def _rounds(bar, seen, n) -> None:
    for r in range(n):
        index = bar.wait(30)
        with seen.get_lock():
            seen[r * bar.parties + index] += 1


def test_barrier_rounds_hand_out_every_index_once_across_processes() -> None:
    parties, n = 3, 300
    bar = paralelo.Barrier(parties)
    seen = paralelo.Array("i", parties * n)
    ps = [paralelo.Process(target=_rounds, args=(bar, seen, n)) for _ in range(parties - 1)]
    for p in ps:
        p.start()
    _rounds(bar, seen, n)
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    assert list(seen) == [1] * (parties * n)


def _pong(ping, pong, n) -> None:
    for _ in range(n):
        assert ping.wait(30)
        ping.clear()
        pong.set()


def test_event_ping_pong_loses_no_wake_up() -> None:
    ping, pong, n = paralelo.Event(), paralelo.Event(), 3000
    p = paralelo.Process(target=_pong, args=(ping, pong, n))
    p.start()
    for _ in range(n):
        ping.set()
        assert pong.wait(30)
        pong.clear()
    p.join(30)
    assert p.exitcode == 0


RACES_AS_MULTIPROCESSING = HEAD + """
def consume(sem, n):
    for _ in range(n):
        sem.acquire()
    time.sleep(60)

if __name__ == "__main__":
    # A notify is for those waiting when it came, not for a later waiter.
    c = mp.Condition()
    got = []
    def first():
        with c:
            got.append(c.wait(5))
    t = threading.Thread(target=first); t.start()
    time.sleep(0.1)
    with c:
        c.notify()
    with c:
        later = c.wait(0.2)
    t.join()
    print("notify", got, later)
    # A consumer that took units another process released, then was killed: nothing
    # it took was held, so nothing comes back.
    sem = mp.Semaphore(0)
    p = mp.Process(target=consume, args=(sem, 5)); p.start()
    for _ in range(5):
        sem.release()
    while sem.get_value():
        time.sleep(0.01)
    p.terminate(); p.join()
    print("signals", sem.acquire(timeout=0.2), sem.get_value())
    # A timeout while the last party's action runs waits for it.
    b = mp.Barrier(2, action=lambda: time.sleep(0.3))
    out = {}
    t = threading.Thread(target=lambda: out.update(first=b.wait(0.1))); t.start()
    time.sleep(0.05)
    out["last"] = b.wait()
    t.join()
    print("action", sorted(out.items()), b.broken)
"""


def test_races_end_as_with_multiprocessing(tmp_path) -> None:
    par, std = side_by_side(tmp_path, RACES_AS_MULTIPROCESSING, timeout=120)
    assert par == std
    assert par.splitlines() == ["notify [True] False", "signals False 0",
                                "action [('first', 0), ('last', 1)] False"]


SLOT_FREED_THEN_TAKER_KILLED = """
import os, signal, sys, time
import numpy as np
LIB = sys.argv[1]
if LIB == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp

def producer(slots, q):
    slots.acquire()
    q.put("item")
    time.sleep(60)

if __name__ == "__main__":
    for kind, n in (("BoundedSemaphore", 2), ("Semaphore", 1)):
        slots, q = getattr(mp, kind)(n), mp.Queue()
        p = mp.Process(target=producer, args=(slots, q))
        p.start()
        q.get(timeout=10)
        slots.release()  # the consumer frees the slot the producer took
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        got = []
        for _ in range(n + 2):
            try:
                got.append(slots.acquire(timeout=0.3))
            except Exception as e:
                got.append(type(e).__name__)
        print(kind, got)
"""


def test_a_unit_released_by_another_process_is_not_given_back_when_its_taker_dies(tmp_path) -> None:
    # Not handed out twice: a BoundedSemaphore stays within its bound, a Semaphore(1)
    # used as a mutex stays exclusive, as with multiprocessing.
    par, std = side_by_side(tmp_path, SLOT_FREED_THEN_TAKER_KILLED, timeout=120)
    assert par == std == "BoundedSemaphore [True, True, False, False]\nSemaphore [True, False, False]"


def _notify_and_die(cond) -> None:
    cond.acquire()
    cond.notify()
    os._exit(1)  # dies holding the lock, after notifying


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_a_condition_waiter_whose_lock_holder_died_leaves_holding_it(kind) -> None:
    lock = getattr(paralelo, kind)()
    cond = paralelo.Condition(lock)
    with pytest.raises(paralelo.AbandonedLockError, match="condition's lock"):
        with cond:
            p = paralelo.Process(target=_notify_and_die, args=(cond,))
            p.start()
            cond.wait(10)  # woken, then takes the lock from the dead notifier
    p.join(10)
    assert lock.holder() is None  # (the with-block released it: it was held)
    assert cond._native.waiting() == 0


def _take_and_die(cond, after: float) -> None:
    cond.acquire()
    time.sleep(after)
    os._exit(3)  # dies holding the lock, never notifying


def test_a_condition_wait_ends_when_its_locks_holder_dies_holding_it() -> None:
    # Nobody can notify without first taking the lock over: the wait ends (where
    # multiprocessing's waits for ever) and taking the lock back reports the death.
    cond = paralelo.Condition()
    start = time.monotonic()
    with pytest.raises(paralelo.AbandonedLockError, match="condition's lock"):
        with cond:
            p = paralelo.Process(target=_take_and_die, args=(cond, 0.2))
            p.start()
            cond.wait(30)
    assert time.monotonic() - start < 5
    p.join(10)
    assert cond._lock.holder() is None


def test_ctrl_c_in_a_condition_wait_wins_over_what_taking_the_lock_back_finds() -> None:
    import _thread

    cond = paralelo.Condition()
    threading.Timer(0.1, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt) as caught:
        with cond:
            p = paralelo.Process(target=_take_and_die, args=(cond, 0.3))
            p.start()
            cond.wait(30)
    p.join(10)
    assert "condition's lock" in "".join(getattr(caught.value, "__notes__", []))
    assert cond._lock.holder() is None


def test_a_nan_timeout_is_refused_before_arriving() -> None:
    bar = paralelo.Barrier(2)
    with pytest.raises(ValueError, match="nan"):
        bar.wait(float("nan"))
    assert bar.n_waiting == 0 and not bar.broken


@pytest.mark.parametrize("kind", ["paralelo", "threading"])
def test_an_event_set_and_cleared_at_once_wakes_who_waited(kind) -> None:
    # As threading's Event says (multiprocessing's answers either way, by a race).
    e = paralelo.Event() if kind == "paralelo" else threading.Event()
    woke: list = []
    t = threading.Thread(target=lambda: woke.append(e.wait(5)))
    t.start()
    time.sleep(0.1)
    e.set()
    e.clear()
    t.join()
    assert woke == [True]


DEADLOCK = """
import sys, time, logging
import paralelo
logging.basicConfig(level=logging.WARNING, format="%(processName)s %(levelname)s %(message)s")
HOW, ON = sys.argv[1], sys.argv[2]

def take_then_wait(first, second, ready, go):
    with first:
        ready.set(); go.wait(10)
        if second.acquire(timeout=1.0):
            second.release()

if __name__ == "__main__":
    mp = paralelo.get_context("fork" if HOW == "pool" else HOW)
    pool = mp.Pool(1) if HOW == "pool" else None  # (its worker forked before debugging)
    if ON == "call":  # (else PARALELO_DEBUG_LOCKS: spawned children inherit it)
        paralelo.debug_locks(0.3)
    l1, l2 = mp.Lock(), mp.RLock()
    ready, go = mp.Event(), mp.Event()
    if pool is None:
        p = mp.Process(target=take_then_wait, args=(l2, l1, ready, go)); p.start()
    else:
        p = pool.apply_async(take_then_wait, (l2, l1, ready, go))
    with l1:  # taken here
        ready.wait(10); go.set()
        l2.acquire(timeout=1.0)
    if pool is None:
        p.join(10)
    else:
        p.get(10); pool.close(); pool.join()
"""


@pytest.mark.parametrize("on", ["call", "env"])
@pytest.mark.parametrize("how", ["fork", "spawn", "forkserver", "pool"])
def test_lock_debugging_names_holders_and_reports_a_deadlock_across_processes(tmp_path, how, on) -> None:
    # Forked after debugging was on, or given the board with the locks passed to it (a
    # spawned process, a pool's worker forked before); turned on by a call, or by the
    # environment (which a spawned child inherits: it must still take its parent's board).
    script = tmp_path / "script.py"
    script.write_text(DEADLOCK)
    env = dict(os.environ, PARALELO_DEBUG_LOCKS="0.3") if on == "env" else None
    out = subprocess.run([sys.executable, str(script), how, on], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert "MainProcess WARNING waited" in err, err
    assert sum("WARNING waited" in line for line in err.splitlines()) >= 2, err  # the child's too
    line = DEADLOCK.splitlines().index("    with l1:  # taken here") + 1
    assert f'script.py", line {line}, in <module>\n    with l1:  # taken here' in err  # where it was taken
    deadlocks = [line for line in err.splitlines() if "ERROR deadlock:" in line]
    assert deadlocks and all(line.count(" waits for the ") == 2 for line in deadlocks), err
    assert all("the Lock at" in line and "the RLock at" in line for line in deadlocks), err
    assert len(deadlocks) <= 2, err  # once per wait, not at every threshold
    assert "('MainThread')" in err and "paralelo/" not in err  # named threads; the user's frames only


CONDITION_DEADLOCK = """
import logging, threading, time
import paralelo
logging.basicConfig(level=logging.WARNING, format="%(threadName)s %(levelname)s %(message)s")

if __name__ == "__main__":
    paralelo.debug_locks(0.3)
    cond, m = paralelo.Condition(paralelo.Lock()), paralelo.Lock()
    waiting, q_holds, m_held = threading.Event(), threading.Event(), threading.Event()

    def p():  # waits on the condition: it does not hold its lock meanwhile
        with cond:
            waiting.set()
            cond.wait(3)

    def q():  # holds the condition's lock, then wants m
        waiting.wait(5)
        with cond:
            q_holds.set()
            m_held.wait(5)
            if m.acquire(timeout=1.5):
                m.release()

    threads = [threading.Thread(target=p, name="P"), threading.Thread(target=q, name="Q")]
    for t in threads: t.start()
    with m:
        m_held.set()
        q_holds.wait(5)
        if cond.acquire(timeout=1.5):
            cond.release()
    with cond:
        cond.notify_all()
    for t in threads: t.join()
"""


def test_lock_debugging_sees_a_condition_waiter_as_not_holding_its_lock(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(CONDITION_DEADLOCK)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    waits = out.stderr.split("MainThread WARNING waited")[1].split(" WARNING ")[0]
    assert "('Q')" in waits and "('P')" not in waits, out.stderr  # P waits, holds nothing
    assert "MainThread ERROR deadlock:" in out.stderr, out.stderr


BOARD_HOLDER_DIES = """
import os, paralelo
from paralelo import _lockdebug

if __name__ == "__main__":
    paralelo.debug_locks(1.0)
    lock = paralelo.Lock()
    if os.fork() == 0:
        _lockdebug._board_lock.acquire()  # as if killed while it noted a hold
        os._exit(0)
    os.wait()
    with lock:  # the board's lock is taken from the dead: the user's acquire is unharmed
        pass
    print(lock.locked(), lock.acquire(timeout=1))
"""


def test_a_process_dying_while_it_notes_on_the_board_harms_no_lock(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(BOARD_HOLDER_DIES)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_lock_debugging_is_off_by_default() -> None:
    from paralelo import _lockdebug
    from paralelo.synchronize import _Lock

    assert not _lockdebug.enabled()
    assert "acquire" not in vars(_Lock)  # the native acquire, untouched


def _use_condition(cond, out) -> None:
    with cond:
        cond.notify_all()
    out.set()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_condition_and_its_lock_reach_a_spawned_process(method) -> None:
    # (Two primitives in one pickle: the lock is unpickled among the Condition's
    # arguments, before the Condition itself; the arena must be there already.)
    ctx = paralelo.get_context(method)
    for cond in (ctx.Condition(), ctx.Condition(ctx.Lock())):
        done = ctx.Event()
        p = ctx.Process(target=_use_condition, args=(cond, done))
        p.start()
        p.join(60)
        assert p.exitcode == 0 and done.is_set()



def test_a_party_that_died_waiting_does_not_count_for_the_last_one() -> None:
    bar = paralelo.Barrier(2)
    pid = _a_party_killed_waiting(bar)
    with pytest.raises(threading.BrokenBarrierError, match=f"pid {pid}\\) died"):
        bar.wait(5)  # (the round is not full: one of its two is gone)


THREADING_NAMES = """
import sys, threading
if sys.argv[1] == "paralelo":
    import paralelo as th
else:
    import threading as th

if __name__ == "__main__":
    for kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        o = getattr(th, kind)()
        print(kind, o.acquire(blocking=False), o.acquire(blocking=False))
    lock = th.Lock()
    print(lock.locked(), lock.acquire(), lock.locked())
    r = th.RLock()
    with r:
        print(r._is_owned())
    s = th.Semaphore(0)
    s.release(2)
    print(s.acquire(timeout=0), s.acquire(timeout=0), s.acquire(timeout=0))
    c = th.Condition()
    with c:
        c.notifyAll()
    print("ok")
"""


def test_threading_s_names_work_too(tmp_path) -> None:
    # (Code written for threading: `blocking=`, locked(), release(n), notifyAll.)
    par, std = side_by_side(tmp_path, THREADING_NAMES, ("paralelo", "threading"))
    assert par == std



CHURN = """
import logging, sys, time
import numpy
lib = __import__(sys.argv[1])
logging.basicConfig(level=logging.INFO)

def churn(lock, stop):
    while not stop.is_set():
        with lock:
            time.sleep(0.01)

if __name__ == "__main__":
    lock, stop = lib.Lock(), lib.Event()
    p = lib.Process(target=churn, args=(lock, stop))
    p.start()
    time.sleep(0.1)
    got = 0
    for _ in range(10):
        if lock.acquire(timeout=1):
            got += 1
            lock.release()
        time.sleep(0.02)
    stop.set()
    p.join()
    print(got)
"""


def test_a_waiter_gets_its_turn_from_a_holder_that_takes_the_lock_again_at_once(tmp_path) -> None:
    # The other process releases and takes the lock again within microseconds: the
    # waiter its release wakes lost that race nearly every time (waits of seconds, where
    # multiprocessing's get in); a waiter that waited long now has it handed over.
    par, std = side_by_side(tmp_path, CHURN, timeout=120)
    assert par == std == "10"
