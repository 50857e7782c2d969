"""The adaptive chunk policy (``_engine.chunking.Chunker``), cut as dispatch cuts a list."""

from __future__ import annotations

import gc

from paralelo._engine.chunking import CHUNK_SECONDS, MIN_CHUNK_SECONDS, Chunker


def cut(chunker: Chunker, total: int, per_item: float) -> list[int]:
    """Chunk sizes for a list of `total` items whose items each take `per_item` seconds,
    every chunk measured as soon as it is cut (as if answered at once)."""
    sizes: list[int] = []
    done = 0
    while done < total:
        n = min(chunker.next_size(len(sizes), done), total - done)
        sizes.append(n)
        done += n
        chunker.measure(n, int(n * per_item * 1e9))
        chunker.update()
    return sizes


def test_unmeasured_chunks_are_single_items() -> None:
    c = Chunker(None, 4, 1000)
    assert [c.next_size(i, i) for i in range(4)] == [1, 1, 1, 1]


def test_slow_items_go_one_per_chunk() -> None:
    # Four 1-second tasks on four workers: one each, never two on one worker.
    assert cut(Chunker(None, 4, 4), 4, 1.0) == [1, 1, 1, 1]
    assert set(cut(Chunker(None, 8, 40), 40, 0.5)) == {1}


def test_cheap_items_take_few_chunks_and_no_dribbling_tail() -> None:
    total, per_item = 100_000, 35e-9
    sizes = cut(Chunker(None, 2, total), total, per_item)
    assert sum(sizes) == total
    assert len(sizes) <= 16, sizes
    # Past the first probe, no chunk is less work than a message is worth, except the last
    # pieces, which split what remains evenly (no halving down to single items).
    floor = int(MIN_CHUNK_SECONDS / per_item)
    assert all(n >= floor // 2 for n in sizes[1:-1]), sizes
    # No chunk takes more than a worker's share (2 workers: half) of what was left, but
    # the last of the even pieces the tail is cut in.
    left = total - sizes[0]
    for n in sizes[1:-1]:
        assert n <= -(-left // 2), (n, left)
        left -= n
    assert sizes[-1] <= sizes[-2]


def test_a_cheap_start_does_not_put_costly_items_on_one_worker() -> None:
    # Measured on cheap items, then the costly ones: the rest is split between the
    # workers, never sent whole to one.
    c = Chunker(None, 2, 44)
    sizes = cut(c, 4, 1e-7)  # the first four items, cheap
    while sum(sizes) < 44:
        n = c.next_size(len(sizes), sum(sizes))
        sizes.append(min(n, 44 - sum(sizes)))
    assert max(sizes) <= -(-43 // 2), sizes  # half of what was left after the probe
    assert len(sizes) >= 4


def test_chunks_aim_at_the_chunk_time_once_measured() -> None:
    c = Chunker(None, 2, 10_000_000)
    c.measure(1000, 1000 * 1000)  # 1 µs an item
    c.update()
    assert c.next_size(1, 1000) == int(CHUNK_SECONDS / 1e-6)


def test_a_map_can_start_from_an_earlier_maps_cost() -> None:
    cheap = Chunker(None, 2, 100_000)
    cheap.prime(35e-9)
    assert cheap.next_size(0, 0) == -(-100_000 // 4)  # guided from the first chunk
    # Eight costly items after a cheap map of the same function: half to each worker at
    # most, as multiprocessing's static chunks would spread them.
    few = Chunker(None, 2, 8)
    few.prime(35e-9)
    assert few.next_size(0, 0) == 4
    slow = Chunker(None, 2, 100)
    slow.prime(1.0)
    assert slow.next_size(0, 0) == 1
    fixed = Chunker(7, 2, 100)
    assert fixed.next_size(0, 0) == 7


def test_maxtasks_caps_a_chunk() -> None:
    c = Chunker(None, 2, 100_000, most=10)
    c.prime(1e-9)
    assert c.next_size(0, 0) == 10


def test_a_pool_remembers_what_a_functions_items_cost(pool) -> None:
    assert pool.map(abs, range(-20_000, 0)) == list(range(20_000, 0, -1))
    cost = pool._engine.item_costs.get(abs)
    assert cost is not None and 0 < cost < 1e-4
    # A function is remembered only while it lives: a new one never inherits its cost.
    f = eval("lambda x: x")
    assert pool.map(f, range(20_000)) == list(range(20_000))  # long enough to be trusted
    assert pool._engine.item_costs.get(f) is not None
    known = len(pool._engine.item_costs.weak)
    del f
    gc.collect()  # (a finished job may sit in a reference cycle until then)
    assert len(pool._engine.item_costs.weak) == known - 1
    # A lazy map measures afresh (its length is unknown: no guided bound on a bad guess).
    assert list(pool.imap(abs, iter(range(-3, 0)))) == [3, 2, 1]


def test_heavy_items_travel_a_few_to_a_chunk() -> None:
    from paralelo._engine.chunking import CHUNK_BYTES

    c = Chunker(None, 2, 100_000)
    c.prime(1e-9)  # cheap to run: by time alone, a chunk would hold thousands
    c.weigh(CHUNK_BYTES / 2)
    assert c.next_size(0, 0) == 2
    c.weigh(CHUNK_BYTES * 10)
    assert c.next_size(0, 0) == 1
    assert Chunker(5, 2, 100).next_size(0, 0) == 5  # the caller's chunksize is the caller's


def _nap_and_pid(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_a_few_costly_items_after_cheap_ones_use_every_worker(pool) -> None:
    # The function's cost was learnt on cheap items; these eight are not cheap.
    pool.map(_nap_and_pid, [0] * 2000)
    pids = pool.map(_nap_and_pid, [0.05] * 8)
    assert sorted(pids.count(p) for p in set(pids)) == [4, 4]


def test_the_cost_of_a_bound_method_or_a_partial_is_its_functions() -> None:
    import functools

    from paralelo._engine.jobs import CallCosts

    class Task:
        def run(self, x):
            return x

    def add(a, b):
        return a + b

    costs = CallCosts()
    costs.add(Task().run, 1.0)  # a new bound method each time it is named
    assert costs.get(Task().run) == 1.0
    costs.add(functools.partial(add, 1), 2.0)
    assert costs.get(functools.partial(add, 2)) == 2.0 == costs.get(add)


def test_a_chunks_fixed_cost_is_not_taken_for_its_items_cost() -> None:
    """Single items take mostly a chunk's fixed cost (here 15 µs, against 50 ns an item):
    once a chunk 4x larger is measured, the slope between the two gives the item's cost, so
    the next chunk is full size at once instead of growing a step per round trip."""
    fixed, per_item = 15_000, 50
    c = Chunker(None, 2, 1_000_000)
    c.measure(1, fixed + per_item)
    c.update()
    assert not c.trusted  # one size only: the average, mostly fixed cost
    first = c.next_size(2, 2)
    assert first < 200
    c.measure(first, fixed + first * per_item)
    c.update()
    # The slope (50 ns), but never under half the plain average (a cold first chunk
    # must not make items look free): here the average is mostly fixed cost.
    average = (fixed + first * per_item) / first
    assert c.trusted and per_item <= c.per_item * 1e9 <= max(per_item, average / 2) + 1
    assert c.next_size(4, 2 + first) >= int(CHUNK_SECONDS / (per_item * 1e-9)) // 2


def test_an_estimate_made_of_fixed_costs_is_not_remembered() -> None:
    # A tiny map (ten items): its chunks are all fixed cost, so what it measured is no
    # guide for the next map of its function.
    c = Chunker(None, 2, 10)
    for n in (1, 1, 2, 2, 2, 2):
        c.measure(n, 15_000 + 50 * n)
    c.update()
    assert not c.trusted
    long = Chunker(None, 2, 10)
    long.measure(2, int(2 * MIN_CHUNK_SECONDS * 1e9))  # a chunk this long is mostly items
    long.update()
    assert long.trusted


def test_a_primed_map_holds_two_chunks_per_worker_and_a_fresh_one_one() -> None:
    from paralelo._engine.jobs import CallCosts, MapJob
    from paralelo.pool import MapResult

    costs = CallCosts()
    costs.remember(abs, 1e-7)
    primed = MapJob(2, abs, list(range(10_000)), False, None, MapResult(), costs=costs)
    assert primed.chunker.primed and primed.unmeasured_limit == 2
    fresh = MapJob(2, abs, list(range(10_000)), False, None, MapResult(), costs=CallCosts())
    assert not fresh.chunker.primed and fresh.unmeasured_limit == 1
