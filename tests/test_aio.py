"""asyncio: paralelo's results awaited from event loops (``paralelo.aio``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Any, Callable

import pytest
from scripts import side_by_side

import paralelo

uvloop = pytest.importorskip("uvloop")


def _square(x: int) -> int:
    return x * x


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _fails_at_five(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


def _touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("ran\n")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Any], Any]:
    """Runs a coroutine to its end on a fresh loop of the kind named."""
    if request.param == "uvloop":
        return lambda coro: uvloop.run(coro)
    return asyncio.run


def test_pool_results_are_awaited(run) -> None:
    async def main() -> None:
        with paralelo.Pool(2) as pool:
            assert await pool.apply_async(_square, (7,)) == 49
            assert await pool.map_async(_square, range(1000)) == [i * i for i in range(1000)]
            many = await asyncio.gather(*(pool.apply_async(_square, (i,)) for i in range(300)))
            assert many == [i * i for i in range(300)]
            ready = pool.apply_async(_square, (3,))
            ready.wait(30)
            assert await ready == 9  # (already there: no suspension)

    run(main())


def test_imap_is_iterated_with_async_for(run) -> None:
    async def main() -> None:
        with paralelo.Pool(2) as pool:
            assert [x async for x in pool.imap(_square, range(500))] == [i * i for i in range(500)]
            unordered = [x async for x in pool.imap_unordered(_nap, [0.01] * 10)]
            assert unordered == [0.01] * 10
            got = []
            with pytest.raises(ValueError, match="five"):
                async for x in pool.imap(_fails_at_five, range(10), chunksize=1):
                    got.append(x)
            assert got == [0, 1, 2, 3, 4]  # in its place, as a plain for loop raises it

    run(main())


def test_errors_come_with_their_remote_tracebacks(run) -> None:
    async def main() -> None:
        with paralelo.Pool(1) as pool, paralelo.ProcessPoolExecutor(1) as ex:
            for pending in (pool.apply_async(_fails_at_five, (5,)), ex.submit(_fails_at_five, 5)):
                with pytest.raises(ValueError, match="five") as caught:
                    await pending
                assert "_fails_at_five" in str(caught.value.__cause__)

    run(main())


def test_an_executor_future_stays_a_future_and_is_awaited(run) -> None:
    async def main() -> None:
        with paralelo.ProcessPoolExecutor(2) as ex:
            future = ex.submit(_square, 6)
            assert isinstance(future, concurrent.futures.Future)
            assert await future == 36
            assert await asyncio.wrap_future(ex.submit(_square, 5)) == 25
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(ex, _square, 4) == 16

    run(main())


def test_cancelling_an_await_cancels_work_not_started(run, tmp_path) -> None:
    marker = tmp_path / "ran"

    async def cancel_queued(busy: Any, queued: Any) -> None:
        task = asyncio.ensure_future(_awaited(queued))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _awaited(busy)  # its one worker was busy: the queued call never started

    async def main() -> None:
        with paralelo.Pool(1) as pool, paralelo.ProcessPoolExecutor(1) as ex:
            await cancel_queued(pool.apply_async(_nap, (0.5,)), pool.apply_async(_touch, (str(marker),)))
            await cancel_queued(ex.submit(_nap, 0.5), ex.submit(_touch, str(marker)))
            assert await pool.apply_async(_square, (2,)) == 4  # both still work
            assert await ex.submit(_square, 2) == 4

    run(main())
    assert not marker.exists()


async def _awaited(pending: Any) -> Any:
    return await pending


def test_a_cancelled_running_call_is_discarded_and_the_pool_goes_on(run) -> None:
    async def main() -> None:
        with paralelo.Pool(1) as pool:
            result = pool.apply_async(_nap, (0.2,))
            task = asyncio.ensure_future(_awaited(result))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert result.ready() and not result.successful()  # discarded: cancelled
            await asyncio.sleep(0.3)  # (its value comes, and goes nowhere)
            assert await pool.apply_async(_square, (3,)) == 9

    run(main())


def test_the_loop_keeps_ticking_while_a_heavy_map_runs(run) -> None:
    # The await suspends the task, not the loop: a heartbeat every 10 ms goes on (bench/
    # bench_aio.py reports how late its ticks are).
    async def main() -> tuple[int, float]:
        with paralelo.Pool(2) as pool:
            start = time.monotonic()
            _, ticks = await _ticking(pool.map_async(_nap, [0.05] * 12))
            return ticks, time.monotonic() - start

    ticks, took = run(main())
    assert ticks >= 0.5 * took / 0.01, (ticks, took)


def test_loops_in_several_threads_each_get_their_results() -> None:
    out: dict[int, int] = {}

    def in_a_thread(i: int) -> None:
        async def main() -> None:
            with paralelo.Pool(1) as pool:
                out[i] = await pool.apply_async(_square, (i,))

        asyncio.run(main())

    threads = [threading.Thread(target=in_a_thread, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {0: 0, 1: 1, 2: 4}


def test_a_loop_closed_while_work_is_pending_leaks_nothing() -> None:
    with paralelo.Pool(1) as pool:
        pool.apply(_square, (1,))
        before = len(os.listdir("/proc/self/fd"))
        pending = []

        async def main() -> None:
            pending.append(pool.apply_async(_nap, (0.3,)))
            asyncio.ensure_future(_awaited(pending[0]))
            await asyncio.sleep(0.05)  # (the loop ends, its task still waiting)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        del loop
        import gc

        gc.collect()
        assert pending[0].get(10) == 0.3  # (it came, to a loop that is gone)
        time.sleep(0.1)
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before


SCRIPT = """
import asyncio, sys
import numpy as np
LIB = sys.argv[1]

def parse(page):
    return sum(len(w) for w in page.split())

async def main():
    pages = [" ".join(["word"] * n) for n in range(1, 40)]
    if LIB == "paralelo":
        import paralelo
        with paralelo.ProcessPoolExecutor(2) as ex, paralelo.Pool(2) as pool:
            a = await asyncio.gather(*(ex.submit(parse, p) for p in pages))
            b = await pool.map_async(parse, pages)
    else:
        from concurrent.futures import ProcessPoolExecutor
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(2) as ex:
            a = await asyncio.gather(*(loop.run_in_executor(ex, parse, p) for p in pages))
            b = list(await asyncio.gather(*(loop.run_in_executor(ex, parse, p) for p in pages)))
    print(a == b, sum(a))

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_main_script_gets_what_run_in_executor_gets(tmp_path) -> None:
    par, std = side_by_side(tmp_path, SCRIPT, timeout=120)
    assert par == std == "True 3120"


def test_a_forked_child_holds_no_loops_wake_up_fd() -> None:
    # (Nor does a pool's zygote, forked later, or its workers.)
    from paralelo import aio

    async def main() -> None:
        with paralelo.Pool(1) as pool:
            assert await pool.apply_async(_square, (2,)) == 4
            fd = aio._wakers[asyncio.get_running_loop()].fd
            assert fd >= 0
            pid = os.fork()
            if pid == 0:
                try:
                    os.fstat(fd)
                    os._exit(1)
                except OSError:
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0

    asyncio.run(main())


def test_loops_that_awaited_are_not_kept_nor_their_eventfds() -> None:
    # A service that runs a loop per request must not run out of descriptors.
    import gc
    import weakref

    from paralelo import aio

    with paralelo.Pool(1) as pool:
        pool.apply(_square, (1,))
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        loops = []
        for i in range(50):
            loop = asyncio.new_event_loop()
            assert loop.run_until_complete(_awaited(pool.apply_async(_square, (i,)))) == i * i
            loop.close()
            loops.append(weakref.ref(loop))
            del loop
        gc.collect()
        assert all(ref() is None for ref in loops)
        assert len(aio._wakers) == 0
        assert len(os.listdir("/proc/self/fd")) <= before


def test_tasks_sharing_one_imap_all_finish(run) -> None:
    async def main() -> list:
        with paralelo.Pool(2) as pool:
            it = pool.imap(_nap, [0.02] * 12, chunksize=1)
            got: list = []

            async def consume() -> None:
                async for x in it:
                    got.append(x)

            await asyncio.wait_for(asyncio.gather(*(consume() for _ in range(3))), 30)
            return got

    assert run(main()) == [0.02] * 12


def test_a_fork_while_another_thread_wakes_a_loop_does_not_hang_the_child() -> None:
    from paralelo import aio

    async def main() -> None:
        with paralelo.Pool(1) as pool:
            await pool.apply_async(_square, (2,))
            waker = aio._wakers[asyncio.get_running_loop()]
            with waker.lock:  # (as the collector holds it while it wakes the loop)
                pid = os.fork()
                if pid == 0:
                    os._exit(0)  # (the at-fork hook has run: it must not wait for the lock)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    return
                await asyncio.sleep(0.01)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung in its at-fork hook")

    asyncio.run(main())


async def _slow_square(x: int) -> int:
    await asyncio.sleep(0.002 * (x % 3))
    return x * x


def test_aio_map_keeps_order_or_yields_as_completed_within_its_limit(run) -> None:
    from paralelo import aio

    async def main() -> None:
        assert [x async for x in aio.map(_slow_square, range(20), limit=3)] == [i * i for i in range(20)]
        unordered = [x async for x in aio.map(_slow_square, range(20), limit=3, ordered=False)]
        assert sorted(unordered) == [i * i for i in range(20)]
        in_flight = most = 0

        async def tracked(x: int) -> int:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.005)
            in_flight -= 1
            return x

        async def items():  # (an async iterable too)
            for i in range(30):
                yield i

        assert [x async for x in aio.map(tracked, items(), limit=4)] == list(range(30))
        assert most == 4
        with pytest.raises(ValueError, match="limit"):
            [x async for x in aio.map(tracked, [], limit=0)]

    run(main())


def test_aio_map_runs_plain_functions_in_a_pool_it_ends(run) -> None:
    import multiprocessing

    from paralelo import aio

    async def main() -> None:
        assert [x async for x in aio.map(_square, range(50), limit=2)] == [i * i for i in range(50)]
        with paralelo.Pool(2) as pool:  # (or in the caller's)
            assert [x async for x in aio.map(_square, range(5), pool=pool)] == [0, 1, 4, 9, 16]
        with pytest.raises(ValueError, match="five"):
            async for _ in aio.map(_fails_at_five, range(10), limit=2):
                pass

    run(main())
    time.sleep(0.2)
    assert not multiprocessing.active_children()


def test_leaving_aio_map_cancels_what_is_pending(run) -> None:
    from paralelo import aio

    async def main() -> int:
        cancelled = 0

        async def long(x: int) -> int:
            nonlocal cancelled
            try:
                await asyncio.sleep(0 if x == 0 else 30)
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return x

        mapping = aio.map(long, range(10), limit=5)
        async for first in mapping:
            assert first == 0
            break
        await mapping.aclose()
        await asyncio.sleep(0)
        return cancelled

    assert run(main()) == 4  # the four others in flight (the rest never started)


def test_a_pool_result_is_an_asyncio_future_like_object(run) -> None:
    # asyncio takes it as it is (no Task around each): gather, wait, wait_for, shield,
    # as_completed, and the Future methods they call, with asyncio's meanings.
    async def main() -> None:
        with paralelo.Pool(2) as pool:
            r = pool.apply_async(_square, (6,))
            assert asyncio.isfuture(r) and asyncio.ensure_future(r) is r
            assert r.get_loop() is asyncio.get_running_loop()
            if not r.done():
                with pytest.raises(asyncio.InvalidStateError):
                    r.result()
            assert await asyncio.wait_for(r, 30) == 36
            assert r.done() and not r.cancelled() and r.result() == 36 and r.exception() is None

            bad = pool.apply_async(_fails_at_five, (5,))
            out = await asyncio.gather(pool.apply_async(_square, (2,)), bad, return_exceptions=True)
            assert out[0] == 4 and isinstance(out[1], ValueError) and bad.exception() is out[1]
            with pytest.raises(ValueError, match="five"):
                bad.result()

            done, pending = await asyncio.wait([pool.apply_async(_nap, (0.01,)), pool.apply_async(_nap, (5,))],
                                               return_when=asyncio.FIRST_COMPLETED)
            assert [d.result() for d in done] == [0.01] and len(pending) == 1
            late = pending.pop()
            assert late.cancel() and late.cancelled()  # (its worker's nap goes on, discarded)
            with pytest.raises(asyncio.CancelledError):
                late.result()
            assert not late.cancel()  # done already

            firsts = [await f for f in asyncio.as_completed([pool.apply_async(_square, (i,)) for i in range(5)])]
            assert sorted(firsts) == [0, 1, 4, 9, 16]
            assert await asyncio.shield(pool.apply_async(_square, (5,))) == 25
            assert await pool.map_async(_square, range(3)) == [0, 1, 4]

    run(main())


def test_done_callbacks_run_in_the_loop_that_added_them(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list = []
        with paralelo.Pool(1) as pool:
            r = pool.apply_async(_nap, (0.05,))
            r.add_done_callback(lambda f: seen.append(("a", threading.get_ident(), f.result())))
            gone = seen.append
            r.add_done_callback(gone)
            assert r.remove_done_callback(gone) == 1
            done = loop.create_future()
            r.add_done_callback(lambda f: done.set_result(None))
            await done
            assert seen == [("a", threading.get_ident(), 0.05)]
            r.add_done_callback(lambda f: seen.append("late"))  # ready already: soon, in the loop
            assert seen[-1] != "late"
            await asyncio.sleep(0)
            assert seen[-1] == "late"
            lone = pool.apply_async(_nap, (0.01,))  # its one callback, removed
            lone.add_done_callback(gone)
            assert lone.remove_done_callback(gone) == 1
            assert lone.remove_done_callback(gone) == 0
            assert await lone == 0.01
            await asyncio.sleep(0)
            assert seen[-1] == "late"

    run(main())


def test_gathering_cancelled_cancels_the_calls_not_started(run, tmp_path) -> None:
    marker = tmp_path / "ran"

    async def main() -> None:
        with paralelo.Pool(1) as pool:
            busy = pool.apply_async(_nap, (0.3,))
            queued = [pool.apply_async(_touch, (str(marker),)) for _ in range(5)]
            group = asyncio.gather(*queued)
            await asyncio.sleep(0.05)
            group.cancel()
            with pytest.raises(asyncio.CancelledError):
                await group
            assert all(q.cancelled() for q in queued)
            assert await busy == 0.3
            assert await pool.apply_async(_square, (4,)) == 16

    run(main())
    assert not marker.exists()



# -- IPC awaited -------------------------------------------------------------------


def _put_later(q: Any, items: list, delay: float) -> None:
    time.sleep(delay)
    for item in items:
        q.put(item)


def _send_later(conn: Any, items: list, delay: float) -> None:
    time.sleep(delay)
    for item in items:
        conn.send(item)
    conn.close()


def _hold(lock: Any, held: Any, seconds: float) -> None:
    with lock:
        held.set()
        time.sleep(seconds)


def _set_later(event: Any, delay: float) -> None:
    time.sleep(delay)
    event.set()


def _party(barrier: Any) -> None:
    try:
        barrier.wait(10)
    except Exception:  # noqa: BLE001 - (a broken barrier: the test looks at it)
        pass


async def _ticking(work: Any) -> tuple[Any, int]:
    """`work`'s outcome, and how many 10 ms ticks a heartbeat made meanwhile."""
    ticks = 0

    async def beat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beater = asyncio.ensure_future(beat())
    try:
        return await work, ticks
    finally:
        beater.cancel()


def _started(target: Callable, *args: Any) -> Any:
    p = paralelo.Process(target=target, args=args)
    p.start()
    return p


def test_queues_are_awaited_without_blocking_the_loop(run) -> None:
    async def main() -> None:
        for q in (paralelo.Queue(), paralelo.SimpleQueue()):
            p = _started(_put_later, q, ["a", "b"], 0.3)
            got, ticks = await _ticking(q.get_async())
            assert got == "a" and ticks >= 10  # the loop ran on while it waited
            assert await q.get_async() == "b"
            await q.put_async({"x": 1})
            assert await q.get_async() == {"x": 1}
            p.join(10)

        q = paralelo.Queue()
        with pytest.raises(paralelo.queues.Empty):
            await q.get_async(timeout=0.05)
        waiting = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.05)
        waiting.cancel()  # a cancelled get takes nothing
        with pytest.raises(asyncio.CancelledError):
            await waiting
        q.put(7)
        assert q.get(timeout=10) == 7

        bounded = paralelo.Queue(maxsize=1)
        await bounded.put_async(1)
        with pytest.raises(paralelo.queues.Full):
            await bounded.put_async(2, timeout=0.05)
        second = asyncio.ensure_future(bounded.put_async(2))
        await asyncio.sleep(0.05)
        assert not second.done()
        assert await bounded.get_async() == 1
        await asyncio.wait_for(second, 10)
        assert await bounded.get_async() == 2

    run(main())


def test_connections_are_awaited_through_their_descriptor(run) -> None:
    async def main() -> None:
        a, b = paralelo.Pipe()
        p = _started(_send_later, b, ["one", "two"], 0.3)
        b.close()
        got, ticks = await _ticking(a.recv_async())
        assert got == "one" and ticks >= 10
        assert await a.recv_async() == "two"
        with pytest.raises(EOFError):
            await a.recv_async()
        p.join(10)

        x, y = paralelo.Pipe()
        readers = [asyncio.ensure_future(y.recv_async()) for _ in range(3)]  # one descriptor, three waiters
        await asyncio.sleep(0.02)
        for i in range(3):
            await x.send_async(i)
        assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 10)) == [0, 1, 2]
        big = b"z" * (1 << 22)  # (a thread sends what cannot go at once)
        sending = asyncio.ensure_future(x.send_async(big))
        assert await y.recv_async() == big
        await sending
        x.close()
        y.close()

    run(main())


def test_locks_and_semaphores_are_taken_with_async_with(run) -> None:
    async def main() -> None:
        for lock in (paralelo.Lock(), paralelo.Semaphore(1), paralelo.BoundedSemaphore(1)):
            held = paralelo.Event()
            p = _started(_hold, lock, held, 0.3)
            assert held.wait(10)
            assert not await lock.acquire_async(timeout=0.05)

            async def take() -> float:
                t = time.monotonic()
                async with lock:
                    return time.monotonic() - t

            waited, ticks = await _ticking(take())
            assert waited > 0.1 and ticks >= 10
            assert lock.acquire(timeout=1)  # released by `async with`
            lock.release()
            p.join(10)

        # Tasks share the loop's thread, and an RLock lets its holder thread in again.
        with pytest.raises(TypeError, match="use paralelo.Lock"):
            async with paralelo.RLock():
                pass

        lock = paralelo.Lock()
        inside = []

        async def exclusive(k: int) -> None:
            async with lock:
                inside.append(k)
                await asyncio.sleep(0.01)
                inside.append(-k)

        await asyncio.gather(*(exclusive(k) for k in range(1, 5)))
        assert all(inside[i] == -inside[i + 1] for i in range(0, 8, 2))  # one task at a time

    run(main())


def _churn(lock: Any, stop: Any) -> None:
    while not stop.is_set():
        with lock:
            time.sleep(0.01)


def test_an_awaited_acquire_gets_its_turn_on_a_busy_lock(run) -> None:
    # Another process takes the lock again at once after each release: an acquire that
    # only polled would rarely find it free; the waiting thread is woken as any waiter.
    async def main() -> None:
        for lock in (paralelo.Lock(), paralelo.Semaphore(1)):
            stop = paralelo.Event()
            p = _started(_churn, lock, stop)
            try:
                await asyncio.sleep(0.05)
                for _ in range(5):
                    assert await lock.acquire_async(timeout=5)
                    lock.release()
            finally:
                stop.set()
                p.join(10)

    run(main())


def _handshake_then_barrier(q: Any, go: Any, barrier: Any) -> None:
    time.sleep(0.2)
    q.put("ready")
    go.wait(10)
    barrier.wait(10)


def test_an_awaited_wait_never_queues_behind_another(run) -> None:
    # The barrier's wait thread waits for the child, which waits for the handshake that a
    # queue read makes: that read must get a thread of its own.
    async def main() -> None:
        q, go, barrier = paralelo.Queue(), paralelo.Event(), paralelo.Barrier(2)
        assert not await go.wait_async(0.01)  # (a wait thread, idle again)
        p = _started(_handshake_then_barrier, q, go, barrier)

        async def handshake() -> None:
            assert await q.get_async() == "ready"
            go.set()

        await asyncio.wait_for(asyncio.gather(barrier.wait_async(), handshake()), 10)
        p.join(10)
        events = [paralelo.Event() for _ in range(20)]
        t = time.monotonic()
        assert await asyncio.gather(*(e.wait_async(0.3) for e in events)) == [False] * 20
        assert time.monotonic() - t < 2  # each its own thread: the timeouts run together
        with pytest.raises(ValueError, match="NaN"):
            await events[0].wait_async(float("nan"))

    run(main())


def test_awaiting_a_cancelled_result_raises_asyncios_cancelled_error(run) -> None:
    async def main() -> None:
        with paralelo.Pool(1) as pool:
            busy = pool.apply_async(_nap, (0.2,))
            queued = pool.apply_async(_square, (3,))
            assert queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            task = asyncio.ensure_future(pool.map_async(_square, range(3)))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await busy == 0.2

    run(main())


def test_paralelo_aio_is_there_after_a_plain_import() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import paralelo; print(paralelo.aio.map.__name__)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "map\n", out.stderr


def test_events_and_barriers_are_awaited(run) -> None:
    async def main() -> None:
        event = paralelo.Event()
        assert not await event.wait_async(timeout=0.05)
        p = _started(_set_later, event, 0.3)
        ok, ticks = await _ticking(event.wait_async())
        assert ok and ticks >= 10
        assert await event.wait_async()
        p.join(10)

        barrier = paralelo.Barrier(2)
        p = _started(_party, barrier)
        index, ticks = await _ticking(barrier.wait_async(timeout=10))
        assert index in (0, 1)
        p.join(10)

        lonely = paralelo.Barrier(2)
        waiting = asyncio.ensure_future(lonely.wait_async())
        await asyncio.sleep(0.05)
        waiting.cancel()  # no party is left waiting for ever on it
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert lonely.broken

    run(main())


STUCK_SEND = """
import asyncio, sys, time
import paralelo

async def main():
    a, b = paralelo.Pipe()
    asyncio.ensure_future(a.send_async(b"x" * (8 << 20)))  # nobody ever reads it
    await asyncio.sleep(0.2)
    print("leaving")

if __name__ == "__main__":
    asyncio.run(main())  # (cancels the send's task; its wait thread stays stuck)
"""


def test_a_wait_that_never_ends_does_not_keep_the_program_from_exiting(tmp_path) -> None:
    out = side_by_side(tmp_path, STUCK_SEND, ("paralelo",), timeout=30)[0]
    assert out == "leaving"


class _AsyncCallable:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x


def test_aio_map_runs_an_object_with_an_async_call_in_the_loop(run) -> None:
    async def main() -> None:
        assert [x async for x in paralelo.aio.map(_AsyncCallable(), range(5), limit=2)] == [0, 2, 4, 6, 8]

    run(main())


def _raises_cancelled() -> None:
    raise concurrent.futures.CancelledError("the task's own")


def test_future_like_details_match_asyncio(run) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        with paralelo.Pool(1) as pool:
            busy = pool.apply_async(_nap, (0.2,))
            queued = pool.apply_async(_square, (2,))
            queued.cancel("enough")
            out = await asyncio.gather(busy, queued, return_exceptions=True)
            assert out[0] == 0.2 and isinstance(out[1], asyncio.CancelledError) and out[1].args == ("enough",)

            own = pool.apply_async(_raises_cancelled)  # the task's own error, not a cancel
            with pytest.raises(concurrent.futures.CancelledError, match="the task's own"):
                await own
            assert not own.cancelled()

            def boom(_f: Any) -> None:
                raise RuntimeError("a failing callback")

            seen: list = []
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, context: seen.append(context["exception"]))
            first, second = pool.apply_async(_nap, (0.05,)), pool.apply_async(_square, (5,))
            first.add_done_callback(boom)  # (queued with the next wake-ups: they still run)

            async def in_context() -> list:
                var.set("mine")
                got: list = []
                done = loop.create_future()
                second.add_done_callback(lambda f: (got.append(var.get()), done.set_result(None)))
                await done
                return got

            assert await asyncio.wait_for(in_context(), 10) == ["mine"]
            assert await asyncio.wait_for(first, 10) == 0.05
            await asyncio.sleep(0.05)
            assert any(isinstance(e, RuntimeError) for e in seen)

            many = pool.apply_async(_nap, (0.3,))
            for _ in range(100):  # polled, as asyncio.wait(..., timeout) does: nothing piles up
                await asyncio.wait([many], timeout=0.001)
            assert not many._watchers or len(many._watchers) <= 1
            await many

    run(main())


def test_closing_a_connection_wakes_its_awaited_receive(run) -> None:
    async def main() -> None:
        a, b = paralelo.Pipe()
        waiting = asyncio.ensure_future(a.recv_async())
        await asyncio.sleep(0.05)
        a.close()
        with pytest.raises(OSError, match="closed"):
            await asyncio.wait_for(waiting, 10)
        b.close()

    run(main())


def _pass_and_tell(barrier: Any, passed: Any) -> None:
    barrier.wait(10)
    passed.set()


def test_a_barrier_wait_cancelled_after_its_round_passed_leaves_it_whole(run) -> None:
    async def main() -> None:
        barrier, passed = paralelo.Barrier(2), paralelo.Event()
        waiting = asyncio.ensure_future(barrier.wait_async())
        await asyncio.sleep(0.05)
        p = _started(_pass_and_tell, barrier, passed)
        assert passed.wait(10)  # (the loop held: the round passed, the task not resumed)
        time.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not barrier.broken
        p.join(10)

    run(main())
