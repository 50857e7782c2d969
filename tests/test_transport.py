"""How values travel: every result comes back equal and of the same type, whatever
encoding the chunk used (pickle, or the machine-array fast path for ints and floats)."""

from __future__ import annotations

import math
import multiprocessing.pool
import pickle
import struct

import pytest

import paralelo
from paralelo._native import pack_numbers, unpack_numbers
from paralelo._pickling import array_len, as_array, from_array, pack_results
from paralelo._wire import OK_ARRAY


def identity(x):
    return x


def kinds(xs):
    return [type(x).__name__ for x in xs]


@pytest.fixture(scope="module")
def mp_pool():
    import multiprocessing
    import sys

    ctx = multiprocessing.get_context("fork" if sys.version_info < (3, 12) else "forkserver")
    with ctx.Pool(2) as p:
        p.map(abs, range(4))  # started before the per-test leak check looks
        yield p


class MyInt(int):
    pass


class MyFloat(float):
    pass


CASES = {
    "ints": list(range(-500, 500)),
    "floats": [i / 7 for i in range(1000)] + [-0.0, math.inf, -math.inf],
    "bools stay bools": [True, False] * 300,
    "ints mixed with floats": [1, 2.0] * 300,
    "floats mixed with ints": [2.0, 1] * 300,
    "ints mixed with bools": [1, True] * 300,
    "ints then a string": list(range(300)) + ["x"],
    "ints beyond 64 bits": [2**63 - 1, 2**63, -(2**63), -(2**63) - 1] * 100,
    "int subclass": [MyInt(3)] * 300,
    "float subclass": [MyFloat(3)] * 300,
    "short lists": [1, 2, 3],
    "strings": ["a", "b"] * 300,
    "empty": [],
}
ARRAYS = ("ints", "floats")


@pytest.mark.parametrize("name", list(CASES))
def test_pack_round_trip_keeps_values_and_types(name: str) -> None:
    values = CASES[name]
    back = unpack_results(*pack_results(values))
    assert back == values and kinds(back) == kinds(values)
    for chunk in (values, tuple(values)):  # as items travel: packed, else pickled
        back = from_array(as_array(chunk) or pickle.loads(pickle.dumps(chunk)))
        assert list(back) == values and kinds(back) == kinds(values)
    into = ["old"] * (len(values) + 3)
    if as_array(values) is not None:  # results land straight in the output list
        assert unpack_numbers(as_array(values), into, 2) == len(values)
        assert into[2:-1] == values and into[:2] == ["old"] * 2 and into[-1] == "old"


def unpack_results(tag: int, payload: bytes) -> list:
    return unpack_numbers(payload) if tag == OK_ARRAY else pickle.loads(payload)


def test_fast_path_is_taken_only_for_plain_ints_and_floats() -> None:
    for name, values in CASES.items():
        packed = as_array(values)
        assert (packed is not None) == (name in ARRAYS), name
        if packed is not None:
            assert packed[:1] == (b"q" if name == "ints" else b"d")
            assert len(packed) == 1 + 8 * len(values)
    assert pack_numbers([2**63 - 1, -(2**63)]) is not None  # the edges of 64 bits fit
    assert pack_numbers(range(300)) is None and pack_numbers(b"abc") is None  # only lists and tuples


def test_a_span_packs_exactly_its_items_and_a_late_misfit_packs_nothing() -> None:
    data = list(range(1000))
    assert pack_numbers(data, 100, 400) == b"q" + struct.pack("300q", *range(100, 400))
    floats = [i / 7 for i in range(500)]
    assert pack_numbers(tuple(floats), 3, 5) == b"d" + struct.pack("2d", *floats[3:5])
    # The first item decides the kind; a misfit found part-way packs nothing at all.
    for late in ([1] * 299 + ["x"], [1] * 299 + [2**64], [1.0] * 299 + [1], [1] * 299 + [True]):
        assert pack_numbers(late) is None
    assert pack_numbers(data, 5, 5) is None and pack_numbers(data, 2000) is None  # empty spans


def test_bad_arrays_raise_value_error() -> None:
    for bad in (b"", b"q1234567", b"x" + bytes(8)):
        with pytest.raises(ValueError, match="not a packed array"):
            unpack_numbers(bad)
        assert array_len(bad) == -1
    packed = as_array(list(range(300)))
    assert array_len(packed) == 300
    for into, start in (([0] * 299, 0), ([0] * 300, 1), ([0] * 300, 2**63)):
        with pytest.raises(ValueError, match="300 numbers do not fit in a list"):
            unpack_numbers(packed, into, start)


def test_nan_survives() -> None:
    back = unpack_results(*pack_results([math.nan] * 300))
    assert all(math.isnan(v) for v in back)


def test_a_call_returning_bytes_gets_bytes(pool: paralelo.Pool) -> None:
    # A chunk never is bytes, so bytes in its place mean an array; a call's result may be.
    packed = as_array(list(range(300)))
    assert pool.apply(identity, (packed,)) == packed
    assert pool.map(identity, [packed, b"q"]) == [packed, b"q"]


@pytest.mark.parametrize("name", list(CASES))
def test_items_through_a_pool_keep_values_and_types(pool: paralelo.Pool, name: str) -> None:
    values = CASES[name]
    for chunksize in (None, 300, len(values) or 1):
        assert pool.map(type, values, chunksize=chunksize) == [type(v) for v in values]
        assert pool.starmap(identity, [(v,) for v in values], chunksize=chunksize) == values


@pytest.mark.parametrize("name", list(CASES))
def test_results_through_a_pool_keep_values_and_types(pool: paralelo.Pool, name: str) -> None:
    values = CASES[name]
    back = pool.map(identity, values, chunksize=len(values) or 1)
    assert back == values
    assert [type(v) for v in back] == [type(v) for v in values]


@pytest.mark.parametrize("data", [list(range(100_000)), tuple(range(5_000)), range(3, 90_000, 7)])
def test_sliced_inputs_map_like_lists(pool: paralelo.Pool, data) -> None:
    assert pool.map(identity, data) == list(data)
    assert list(pool.imap(identity, data)) == list(data)


def test_an_unpicklable_argument_fails_only_its_own_unit(pool: paralelo.Pool) -> None:
    import threading

    lock = threading.Lock()
    it = pool.imap(identity, [1, 2, lock, 4, 5], chunksize=1)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object") as info:
        next(it)  # what multiprocessing raises: the pickler's own error
    assert info.value.__notes__ == ["(raised while pickling the task's arguments for a worker)"]
    assert list(it) == [4, 5]
    with pytest.raises(TypeError, match="pickle"):
        pool.map(identity, [1, lock], chunksize=1)
    assert pool.map(identity, range(5), chunksize=1) == list(range(5))


def test_an_unpicklable_result_fails_only_its_own_unit(pool: paralelo.Pool) -> None:
    it = pool.imap(_lock_on_two, range(5), chunksize=1)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="Error sending result") as info:
        next(it)  # what multiprocessing.Pool raises, with the worker's reason as the cause
    assert "_thread.lock" in str(info.value)
    assert list(it) == [3, 4]


def _lock_on_two(x: int):
    import threading

    return threading.Lock() if x == 2 else x


def _fail_on_50(x: int) -> int:
    if x == 50:
        raise ValueError(x)
    return x


def _drain(it) -> tuple[list, list]:
    values, errors = [], []
    while True:
        try:
            values.append(next(it))
        except StopIteration:
            return values, errors
        except ValueError as e:
            errors.append((len(values), e.args))


def test_adaptive_imap_reports_a_failing_item_in_its_place_like_stdlib(pool: paralelo.Pool, mp_pool) -> None:
    ours = _drain(pool.imap(_fail_on_50, range(200)))
    theirs = _drain(mp_pool.imap(_fail_on_50, range(200)))
    assert ours == theirs == ([x for x in range(200) if x != 50], [(50, (50,))])
    values, errors = _drain(pool.imap_unordered(_fail_on_50, range(200)))
    assert sorted(values) == [x for x in range(200) if x != 50] and len(errors) == 1


def test_adaptive_executor_map_yields_everything_before_the_failing_item() -> None:
    with paralelo.ProcessPoolExecutor(2) as ex:
        got = []
        with pytest.raises(ValueError):
            for v in ex.map(_fail_on_50, range(200)):
                got.append(v)
    assert got == list(range(50))


def test_an_explicit_chunksize_fails_whole_chunks_like_multiprocessing(pool: paralelo.Pool, mp_pool) -> None:
    ours = _drain(pool.imap(_fail_on_50, range(60), chunksize=7))
    theirs = _drain(mp_pool.imap(_fail_on_50, range(60), chunksize=7))
    assert ours[1] == theirs[1] and len(ours[0]) == len(theirs[0])


def _bits(values) -> list[bytes]:
    import struct

    return [struct.pack("<d", v) for v in values]


def test_float_payloads_cross_bit_exact(pool: paralelo.Pool) -> None:
    # -0.0 == 0.0 and NaN != NaN: only the bits tell them apart. A signalling NaN and a
    # NaN with a payload, as items and as results, both ways.
    import struct

    odd = [struct.unpack("<d", struct.pack("<Q", q))[0] for q in (0x7FF4000000000001, 0xFFF8000000000123)]
    values = ([-0.0, 0.0, math.nan, -math.inf] + odd) * 100
    assert as_array(values) is not None
    assert _bits(pool.map(identity, values)) == _bits(values)
    assert _bits(pool.map(identity, tuple(values), chunksize=len(values))) == _bits(values)


def _slow_identity(x):
    import time

    time.sleep(0.0005)
    return x


def test_a_list_shrunk_under_its_map_fails_it_clearly(pool: paralelo.Pool) -> None:
    data = list(range(4000))
    result = pool.map_async(_slow_identity, data)
    del data[100:]
    try:
        got = result.get(timeout=60)
    except RuntimeError as e:
        assert "changed size" in str(e)
    else:
        assert got == list(range(4000))  # every chunk was cut before the change


def test_big_chunks_travel_alone_never_inside_a_batch(pool: paralelo.Pool) -> None:
    from paralelo._pickling import ARRAY_MIN
    from paralelo._wire import TASK, TASKS

    engine = pool._engine
    real = engine.hub
    sent: list[tuple[int, int]] = []  # (tag, items)

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def post(self, slot, tag, job, seq, aux, payload, notify=True):
            if tag == TASKS:
                sent.extend((TASKS, len(items)) for items in pickle.loads(payload)[1])
            elif tag == TASK:
                sent.append((TASK, aux >> 2))  # (COUNT_SHIFT: the item count)
            return real.post(slot, tag, job, seq, aux, payload, notify)

    engine.hub = Recording()
    try:
        values = list(range(200_000))
        assert pool.map(identity, values) == values
        assert pool.map(identity, [str(v) for v in values[:20_000]]) == [str(v) for v in values[:20_000]]
    finally:
        engine.hub = real
    assert any(n >= ARRAY_MIN for tag, n in sent if tag == TASK)
    assert all(n < ARRAY_MIN for tag, n in sent if tag == TASKS)


def _short_results(out):
    if len(out) < 300:
        return pack_results(out)
    return OK_ARRAY, as_array(out[:-1])  # one short


def test_a_results_array_of_the_wrong_length_fails_its_chunk(monkeypatch) -> None:
    # Workers are forked from this process (or its pool's zygote): they inherit the patch.
    monkeypatch.setattr("paralelo._worker.pack_results", _short_results)
    with paralelo.Pool(1) as p:
        with pytest.raises(paralelo.ResultUnpicklingError) as info:
            p.map(identity, list(range(300)), chunksize=300)
        assert "300 results expected, not 299" in str(info.value.__cause__)
        assert p.map(abs, [-1, -2]) == [1, 2]  # the pool goes on


def test_a_collector_failing_mid_round_never_hangs_a_map(monkeypatch) -> None:
    import threading

    with paralelo.Pool(1) as p:
        assert p.map(abs, [-1]) == [1]  # (its worker's start heard: the collector wakes for the map only)
        engine = p._engine
        real = engine._pump

        def pump():
            if threading.current_thread().name == "paralelo-collector":
                raise RuntimeError("a bug in the pump")
            real()

        monkeypatch.setattr(engine, "_pump", pump)
        r = p.map_async(abs, [-5] * 300)
        try:
            assert r.get(30) == [5] * 300  # delivered before the pump failed
        except paralelo.BrokenProcessPool as e:
            assert "a bug in the pump" in str(e)


def test_unpacking_into_a_list_checks_what_it_is_given() -> None:
    packed = as_array(list(range(300)))
    with pytest.raises(TypeError, match="not a subclass"):
        unpack_numbers(packed, type("L", (list,), {})([0] * 300), 0)
    with pytest.raises(OverflowError):
        unpack_numbers(packed, [0] * 300, -1)
    assert unpack_numbers(b"q", [1, 2], 2) == 0 and unpack_numbers(b"d") == []

    class Shrinks:
        def __init__(self, into):
            self.into = into

        def __del__(self):
            del self.into[:]  # runs while its place is being replaced

    into: list = [0] * 300
    into[10] = Shrinks(into)
    with pytest.raises(IndexError):
        unpack_numbers(packed, into, 0)
    assert into == []
