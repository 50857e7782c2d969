"""``paralelo.SharedArray``: numpy arrays in shared memory, passed by handle to pools,
processes and queues; writes are seen on both sides, views stay views, and the memory
goes when the last holder lets go."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import time

import pytest

np = pytest.importorskip("numpy")

import paralelo  # noqa: E402
from paralelo import _arena  # noqa: E402
from paralelo.sharedarray import SharedArray  # noqa: E402


def _double(a: np.ndarray) -> float:
    a *= 2
    return float(a.sum())


def _fill(v: np.ndarray, x: float) -> tuple:
    v[...] = x
    return v.shape


def _info(a: np.ndarray) -> tuple:
    return type(a).__name__, a.shape, a.strides, float(a.sum())


def test_workers_write_into_the_parents_array_through_views() -> None:
    a = SharedArray((4, 6), dtype=np.int64)
    assert not a.any()  # zero-filled
    a[...] = np.arange(24).reshape(4, 6)
    with paralelo.Pool(2) as pool:
        assert pool.apply(_double, (a,)) == 2 * sum(range(24))
        assert a[3, 5] == 46
        views = [a[1], a[:, ::-2], a.T, a[2:3, 1:4]]
        assert pool.map(_info, views) == [_info(v) for v in views]
        pool.apply(_fill, (a[:, ::-2], -1))
    assert (a[:, 5] == -1).all() and (a[:, 4] != -1).all()


def test_from_array_copies_and_arithmetic_results_are_ordinary_arrays() -> None:
    src = np.linspace(0, 1, 7)
    a = SharedArray.from_array(src)
    assert isinstance(a, SharedArray) and a.dtype == src.dtype and (a == src).all()
    b = a + 1  # new memory: pickles by value
    back = pickle.loads(pickle.dumps(b))
    assert type(back) is np.ndarray and (back == src + 1).all()
    empty = SharedArray((0, 3))
    assert pickle.loads(pickle.dumps(empty)).shape == (0, 3)


def test_bad_shapes_and_object_dtypes_are_refused() -> None:
    with pytest.raises(TypeError, match="plain data"):
        SharedArray(3, dtype=object)
    with pytest.raises(ValueError, match="negative"):
        SharedArray((2, -1))


def test_a_shared_array_crosses_queues_and_processes_without_copies() -> None:
    a = SharedArray(10)
    q = paralelo.Queue()
    q.put(a[2:4])
    got = q.get(timeout=10)
    got[:] = 5
    assert a[2] == a[3] == 5
    p = paralelo.Process(target=_fill, args=(a[5:], 7.0))
    p.start()
    p.join()
    assert p.exitcode == 0 and (a[5:] == 7).all()


def _hold(a: np.ndarray, ready: paralelo.Queue) -> None:
    a[0] = 1
    ready.put(True)
    time.sleep(60)


def _blocks() -> int:
    """Blocks in use once the dead let go (a process that exits drops its holds with it:
    they are swept, not released)."""
    gc.collect()
    _arena.reclaim_dead()
    return _arena.arena().usage()[1]


def test_the_block_goes_with_its_last_holder_and_a_killed_one_leaks_nothing() -> None:
    before = _blocks()
    a = SharedArray(1000)
    ready = paralelo.Queue()
    p = paralelo.Process(target=_hold, args=(a[:10], ready))
    p.start()
    assert ready.get(timeout=10) and a[0] == 1
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    a[1] = 2  # the parent's array is untouched by the death
    assert _blocks() == before + 1, "the parent holds it; the killed child's hold was swept"
    del a
    assert _blocks() == before, "the last holder let go: the memory is free"


def _make(n: int) -> np.ndarray:
    a = SharedArray(n)
    a[:] = 3.0
    return a  # dropped here at once: the receiver's receipt keeps the block alive


def test_a_worker_returns_an_array_it_made_and_the_parent_can_pass_it_on() -> None:
    with paralelo.Pool(2) as pool:
        got = pool.apply(_make, (1000,))
        assert isinstance(got, SharedArray) and got.sum() == 3000.0
        assert pool.apply(_info, (got[::10],))[3] == 300.0  # on to a worker: still shared
        many = pool.map(_make, [10] * 30)
        assert sum(float(a.sum()) for a in many) == 900.0


def _put_made(q: paralelo.Queue) -> None:
    q.put(_make(4))  # and the process ends: it waits at exit for the reader's receipt


def _drop(a: np.ndarray) -> None:
    del a


def test_a_child_that_puts_an_array_and_ends_leaves_it_readable() -> None:
    q = paralelo.Queue()
    p = paralelo.Process(target=_put_made, args=(q,))
    p.start()
    time.sleep(0.2)
    assert q.get(timeout=15).sum() == 12.0
    p.join(15)
    assert p.exitcode == 0


def test_a_forked_child_dropping_its_copy_does_not_free_the_parents_block() -> None:
    a = SharedArray(8)
    p = paralelo.Process(target=_drop, args=(a,))
    p.start()
    p.join()
    _arena.reclaim_dead()  # (the child's holds, taken at the fork, go with it)
    a[:] = 4.0
    assert pickle.loads(pickle.dumps(a)).sum() == 32.0


def test_shared_arrays_pickled_many_ways_leave_nothing_held(tmp_path) -> None:
    # A __main__ function makes the pool pickle twice (C pickler, then by value); a message
    # with a lambda goes through three picklers; a plain pickle.dumps copies: none of them
    # may leave the block held once the arrays are gone.
    before = _blocks()
    with paralelo.Pool(1) as pool:
        a = SharedArray(1 << 16)
        for _ in range(4):
            assert pool.apply(_info, (a,))[3] == 0.0
            assert pool.apply(lambda x: float(x.sum()), (a,)) == 0.0
    q = paralelo.Queue()
    q.put((a, lambda: 0))
    got = q.get(timeout=10)
    got[0][0] = 9.0
    assert a[0] == 9.0, "still shared through a queue"
    copy = pickle.loads(pickle.dumps(a))
    copy[0] = 1.0
    assert type(copy) is np.ndarray and a[0] == 9.0, "a plain pickle copies"
    del a, got, copy
    assert _blocks() == before


_FLAG = None


def _fill_then_die_once(a: np.ndarray, flag: str) -> float:
    if not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(3)
    a[:] = 2.0
    return float(a.sum())


def test_a_retried_call_gets_its_shared_array_again(tmp_path) -> None:
    a = SharedArray(1 << 15)
    with paralelo.Pool(1) as pool:
        assert pool.apply(_fill_then_die_once, (a, str(tmp_path / "died")), retries=1) == 2.0 * (1 << 15)
    assert a[0] == 2.0, "the retry wrote into the parent's array"


def _put_square(out: np.ndarray, i: int) -> None:
    out[i] = i * i


def test_a_shared_array_bound_into_a_map_s_function_is_shared_by_every_worker() -> None:
    from functools import partial

    out = SharedArray((8,), dtype=np.int64)
    with paralelo.Pool(2) as pool:
        pool.map(partial(_put_square, out), range(8))
        plain = np.zeros(8, dtype=np.int64)
        pool.map(partial(_put_square, plain), range(8))
    assert out.tolist() == [i * i for i in range(8)]
    assert not plain.any(), "a plain array bound in stays each worker's copy"


def test_an_array_from_an_arena_this_process_does_not_map_is_refused_clearly() -> None:
    from paralelo.sharedarray import _attach

    with pytest.raises(RuntimeError, match="does not map"):
        _attach(b"\0" * 32, 0, (4,), (8,), np.float64, None, 12345)


def test_what_arithmetic_makes_is_plain_memory_and_in_place_results_stay_shared():
    a = paralelo.SharedArray(4)
    a[:] = 1
    assert type(a + 1) is np.ndarray and type(np.sqrt(a)) is np.ndarray
    assert type(a.copy()) is np.ndarray
    assert type(a.sum()) is np.float64 and a.sum() == 4.0
    assert type(a[1:]) is paralelo.SharedArray and type(a.T) is paralelo.SharedArray  # views
    tail = a[2:]
    np.add(tail, 1, out=tail)
    assert type(tail) is paralelo.SharedArray and list(a) == [1, 1, 2, 2]
