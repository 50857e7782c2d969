"""Calls made while every worker is busy travel together, several to a message (CALLS):
each still gets its own result or error, in whatever mix of functions; a batch that does
not unpickle in the worker, or kills it, costs only its culprit; a worker that reaches
``maxtasksperchild`` halfway through a batch leaves the rest to the others."""

from __future__ import annotations

import collections
import os
import time

import pytest

import paralelo
import paralelo._engine
from paralelo._wire import CALL, CALLS, SPLIT

T = 30


def inc(x):
    return x + 1


def fail_on(x, bad):
    if x == bad:
        raise KeyError(x)
    return -x


def pid_of(_):
    return os.getpid()


def exit_now(code):
    os._exit(code)


def _refuse():
    raise ValueError("refused to unpickle")


class Unloadable:
    """Pickles, but raises while being unpickled."""

    def __reduce__(self):
        return (_refuse, ())


class Bomb:
    """Kills the process that unpickles it."""

    def __reduce__(self):
        return (os._exit, (3,))


class _Counting:
    """Counts what the engine posts to workers, by tag."""

    def __init__(self, hub):
        self.__dict__["hub"], self.__dict__["posted"] = hub, collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self.hub, name)
        if name != "post":
            return attr

        def post(slot, tag, *args):
            self.posted[tag] += 1
            return attr(slot, tag, *args)

        return post


def _busy(pool, seconds=0.3):
    """Keeps both workers busy for `seconds` (the calls made meanwhile wait, together)."""
    pool.apply_async(inc, (0,)).get(T)  # inc's cost is measured: its calls may share a message
    return [pool.apply_async(time.sleep, (seconds,)) for _ in range(2)]


def test_a_burst_of_calls_travels_in_batches_and_each_gets_its_own_outcome():
    with paralelo.Pool(2) as pool:
        eng = pool._engine
        with eng.lock:
            eng.hub = spy = _Counting(eng.hub)
        sleepers = _busy(pool)
        results = [pool.apply_async(inc, (i,)) if i % 3 else pool.apply_async(fail_on, (i, 9)) for i in range(300)]
        for s in sleepers:
            s.get(T)
        for i, r in enumerate(results):
            if i == 9:
                with pytest.raises(KeyError):
                    r.get(T)
            else:
                assert r.get(T) == (i + 1 if i % 3 else -i)
        assert spy.posted[CALLS] >= 1
        assert spy.posted[CALLS] + spy.posted[CALL] < 100  # not one message per call


def _odd_one_in_a_batch(pool, fn, args, error, match):
    """100 calls of `inc` sent while both workers are busy, `fn(*args)` amid them: it
    fails alone with `error`, and each of the others gets its own result."""
    sleepers = _busy(pool)
    results = [pool.apply_async(inc, (i,)) for i in range(50)]
    odd = pool.apply_async(fn, args)
    results += [pool.apply_async(inc, (i,)) for i in range(50, 100)]
    for s in sleepers:
        s.get(T)
    with pytest.raises(error, match=match):
        odd.get(T)
    assert [r.get(T) for r in results] == list(range(1, 101))
    assert pool.apply_async(inc, (1,)).get(T) == 2  # the pool goes on


def test_a_call_that_does_not_unpickle_in_its_batch_fails_alone(monkeypatch):
    handled = collections.Counter()
    handle = paralelo._engine.Engine._handle

    def spy(self, slot, tag, *args):
        handled[tag] += 1
        return handle(self, slot, tag, *args)

    monkeypatch.setattr(paralelo._engine.Engine, "_handle", spy)
    with paralelo.Pool(2) as pool:
        _odd_one_in_a_batch(pool, inc, (Unloadable(),), paralelo.TaskUnpicklingError, "refused to unpickle")
    assert handled[SPLIT] == 1  # its batch came back once, and went again call by call


def test_a_call_that_kills_its_worker_while_unpickled_in_a_batch_fails_alone():
    with paralelo.Pool(2) as pool:
        _odd_one_in_a_batch(pool, inc, (Bomb(),), paralelo.WorkerLostError, "exited with code 3")


def test_a_call_that_kills_its_worker_halfway_through_a_batch_fails_alone():
    with paralelo.Pool(2) as pool:
        _odd_one_in_a_batch(pool, exit_now, (5,), paralelo.WorkerLostError, "exited with code 5")


def test_maxtasksperchild_counts_each_call_of_a_batch():
    with paralelo.Pool(2, maxtasksperchild=7) as pool:
        sleepers = _busy(pool)
        results = [pool.apply_async(pid_of, (i,)) for i in range(200)]
        for s in sleepers:
            s.get(T)
        per_worker = collections.Counter(r.get(T) for r in results)
    assert sum(per_worker.values()) == 200
    assert max(per_worker.values()) <= 7


def never_timed(x):
    return -x


def test_an_untimed_call_goes_alone_behind_timed_ones():
    """Its cost is unknown: it waits behind none, and its answer comes at once."""
    with paralelo.Pool(2) as pool:
        eng = pool._engine
        sleepers = _busy(pool)
        with eng.lock:
            eng.hub = spy = _Counting(eng.hub)
        timed = [pool.apply_async(inc, (i,)) for i in range(60)]
        alone = pool.apply_async(never_timed, (5,))
        for s in sleepers:
            s.get(T)
        assert [r.get(T) for r in timed] == list(range(1, 61)) and alone.get(T) == -5
        assert spy.posted[CALLS] >= 1 and spy.posted[CALL] >= 1
