"""Scripts as users write them (functions, classes and globals in ``__main__``, a script
or a notebook), run with paralelo beside the standard library, whether or not the parent
already had threads when it made the pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from scripts import side_by_side

SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import paralelo

    OFFSET = 100

    class Point:
        def __init__(self, x):
            self.x = x

    def shifted(p):
        return Point(p.x + OFFSET)

    def add(a, b):
        return a + b

    if __name__ == "__main__":
        if sys.argv[1] == "threaded":  # threads first: the pool's fork copies a threaded parent
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        with paralelo.Pool(2) as pool:
            points = pool.map(shifted, [Point(i) for i in range(50)])
            assert [p.x for p in points] == [i + 100 for i in range(50)]
            assert all(type(p) is Point for p in points)
            assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
            assert pool.apply(lambda: OFFSET * 2) == 200
            scale = 3
            assert list(pool.imap(lambda x: x * scale, range(5))) == [0, 3, 6, 9, 12]
        with paralelo.ProcessPoolExecutor(2) as ex:
            moved = ex.submit(shifted, Point(1)).result(timeout=30)
            assert moved.x == 101
            assert type(moved) is Point  # a class that went out by value comes back as itself
            assert list(ex.map(add, [1, 2], [10, 20])) == [11, 22]
        print("ok")
    """
)


@pytest.mark.parametrize("parent", ["single-threaded", "threaded"])
def test_main_module_functions_classes_and_globals(tmp_path, parent: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), parent], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


TIMEOUTS = textwrap.dedent(
    """
    import sys, time
    if sys.argv[1] == "paralelo":
        import paralelo as mp
        import paralelo as cf
        from paralelo import ProcessPoolExecutor
    else:
        import multiprocessing as mp
        import concurrent.futures as cf
        from concurrent.futures import ProcessPoolExecutor

    def nap(x):
        time.sleep(x)
        return x

    def caught(fn, clause):
        try:
            fn()
        except clause:
            return "caught"
        return "not raised"

    if __name__ == "__main__":
        out = []
        with ProcessPoolExecutor(2) as ex:
            f = ex.submit(nap, 0.5)
            out.append(caught(lambda: f.result(timeout=0.01), cf.TimeoutError))
            out.append(caught(lambda: list(cf.as_completed([f], timeout=0.01)), cf.TimeoutError))
            out.append(caught(lambda: next(ex.map(nap, [0.5], timeout=0.01)), cf.TimeoutError))
            out.append(str(len(cf.wait([f], timeout=0.01).not_done)))
        with mp.Pool(2) as pool:
            r = pool.apply_async(nap, (0.5,))
            out.append(caught(lambda: r.get(0.01), mp.TimeoutError))
            import multiprocessing
            out.append(caught(lambda: r.get(0.01), multiprocessing.TimeoutError))
            it = pool.imap(nap, [0.5])
            out.append(caught(lambda: it.next(0.01), mp.TimeoutError))
            out.append(caught(lambda: it.next(0.01), multiprocessing.TimeoutError))
        print(" ".join(out))
    """
)


def test_timeouts_are_caught_by_the_same_clauses_as_with_the_stdlib(tmp_path) -> None:
    outs = side_by_side(tmp_path, TIMEOUTS, ("paralelo", "stdlib"))
    assert outs[0] == outs[1] == " ".join(["caught"] * 3 + ["1"] + ["caught"] * 4)


BALANCE = textwrap.dedent(
    """
    import os, sys, time
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def slow(x):
        time.sleep(0.3)
        return os.getpid()

    def pid(_):
        return os.getpid()

    def slow_pid(_):
        time.sleep(0.002)
        return os.getpid()

    def square_slowly(x):
        time.sleep(0.003)
        return x * x

    if __name__ == "__main__":
        with mp.Pool(2) as pool:
            # Two slow items on two workers: one each, from the first item on.
            print(len(set(pool.map(slow, [1, 2]))), len(set(pool.imap(slow, iter([1, 2])))))
        with mp.Pool(2, maxtasksperchild=1) as pool:
            # A worker per item, as multiprocessing's imap (chunksize 1) gives.
            print(len(set(pool.imap(pid, range(12)))))
        with mp.Pool(2, maxtasksperchild=2) as pool:
            # An explicit chunksize: a worker runs two chunks, as in multiprocessing.
            pids = pool.map(slow_pid, range(24), chunksize=3)
            print(max(pids.count(p) for p in set(pids)))
        # close() then join() with a lazy imap nobody read yet: its input still runs.
        pool = mp.Pool(2)
        it = pool.imap(square_slowly, (i for i in range(600)))
        pool.close()
        pool.join()
        print(sum(it) == sum(i * i for i in range(600)))
    """
)


def test_few_slow_items_maxtasks_and_close_join_match_the_stdlib(tmp_path) -> None:
    outs = [out.split() for out in side_by_side(tmp_path, BALANCE)]
    assert outs[0] == outs[1] == ["2", "2", "12", "6", "True"]


ENDLESS = textwrap.dedent(
    """
    import itertools, sys, time
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def same(x):
        return x

    if __name__ == "__main__":
        pool = mp.Pool(2)
        for x in pool.imap(same, itertools.count()):
            if x >= 100:
                break
        t = time.monotonic()
        pool.close()  # returns, though the input never ends
        took = time.monotonic() - t
        time.sleep(0.5)  # meanwhile the rest of the input runs (for its side effects)
        pool.terminate()
        pool.join()
        # The peak of this process's own memory (ru_maxrss would carry the test runner's
        # peak across fork and exec).
        with open("/proc/self/status") as f:
            rss_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
        print("closed" if took < 2 else f"close took {took:.1f} s", "small" if rss_mb < 200 else f"{rss_mb} MB")
    """
)


def test_close_returns_after_breaking_out_of_an_endless_imap(tmp_path) -> None:
    outs = side_by_side(tmp_path, ENDLESS)
    assert outs[0] == outs[1] == "closed small"


TRACEBACK = textwrap.dedent(
    """
    import sys
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def inner(x):
        return 1 / x  # the line a remote traceback should show

    def outer(x):
        return inner(x)

    if __name__ == "__main__":
        with mp.Pool(2) as pool:
            try:
                pool.map(outer, [1, 0])
            except ZeroDivisionError as e:
                print(str(e.__cause__))
    """
)


def test_remote_tracebacks_of_main_functions_show_the_script_and_its_lines(tmp_path) -> None:
    for out in side_by_side(tmp_path, TRACEBACK):
        assert f'File "{tmp_path / "script.py"}", line 6, in inner' in out, out
        assert "return 1 / x  # the line a remote traceback should show" in out, out


CALLBACKS = textwrap.dedent(
    """
    import logging, sys, time
    import paralelo

    def square(x):
        return x * x

    def slow_square(x):
        time.sleep(0.2)  # done-callbacks are added before it completes
        return x * x

    def explode(kind):
        def callback(_):
            raise {"exit": SystemExit, "interrupt": KeyboardInterrupt, "error": ValueError}[kind]("boom")
        return callback

    if __name__ == "__main__":
        logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="LOGGED %(name)s %(message)s")
        with paralelo.Pool(2) as pool:
            for kind in ("exit", "interrupt", "error"):
                r = pool.apply_async(square, (3,), callback=explode(kind))
                assert r.get(30) == 9
                e = pool.apply_async(square, ("x",), error_callback=explode(kind))
                e.wait(30)
            assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]  # still working
        with paralelo.ProcessPoolExecutor(2) as ex:
            for kind in ("exit", "interrupt", "error"):
                f = ex.submit(slow_square, 4)
                f.add_done_callback(explode(kind))
                assert f.result(30) == 16
            assert list(ex.map(square, range(3))) == [0, 1, 4]
        print("ok")
    """
)


def test_callbacks_that_raise_anything_are_logged_and_never_break_a_pool(tmp_path) -> None:
    [out] = side_by_side(tmp_path, CALLBACKS, ("paralelo",))
    assert out.endswith("ok"), out
    assert out.count("LOGGED concurrent.futures exception calling callback") >= 6, out
    # The log names the result and the user's callback, not paralelo's internals.
    assert "callback=<function explode.<locals>.callback" in out, out
    assert "callback for <bound method" not in out and "callback for <function" not in out, out


BAD_ARGUMENTS = textwrap.dedent(
    """
    import atexit, sys
    if sys.argv[1] == "paralelo":
        import paralelo as mp
        from paralelo import ProcessPoolExecutor
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

    def same(x):
        return x

    if __name__ == "__main__":
        out = []
        for make in (mp.Pool, ProcessPoolExecutor):
            for bad in (2.0, "2", 0):
                try:
                    make(bad)
                    out.append("none")
                except Exception as e:
                    out.append(type(e).__name__)
        print(" ".join(out))
        ex = ProcessPoolExecutor(2)

        def late():
            try:
                ex.submit(same, 1)
                print("submitted at exit")
            except RuntimeError as e:
                print(e)

        atexit.register(late)
    """
)


def test_bad_arguments_and_a_submit_at_exit_raise_what_the_stdlib_raises(tmp_path) -> None:
    outs = side_by_side(tmp_path, BAD_ARGUMENTS)
    want = "TypeError TypeError ValueError TypeError TypeError ValueError\n"
    assert outs[0] == outs[1] == want + "cannot schedule new futures after interpreter shutdown"


PICKLING_FAILURES = textwrap.dedent(
    """
    import pickle
    from multiprocessing.pool import MaybeEncodingError
    import paralelo

    class ExitsWhenPickled:
        def __reduce__(self):
            raise SystemExit("from __reduce__")

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("cannot pickle me")

    class FailsToLoad:
        def __reduce__(self):
            return (boom, ())

    def boom():
        raise ValueError("cannot load")

    def same(x):
        return x

    def returns(kind):
        return Unpicklable() if kind == "unpicklable" else FailsToLoad()

    def leave(_):
        raise SystemExit(3)

    def outcome(fn):
        try:
            fn()
            return "ok"
        except BaseException as e:
            return f"{type(e).__name__}<{type(e.__cause__).__name__}>"

    if __name__ == "__main__":
        out = []
        with paralelo.ProcessPoolExecutor(2) as ex:
            for arg in (Unpicklable(), ExitsWhenPickled(), FailsToLoad()):
                out.append(outcome(lambda: ex.submit(same, arg).result(30)))
            for kind in ("unpicklable", "fails to load"):
                out.append(outcome(lambda: ex.submit(returns, kind).result(30)))
            out.append(outcome(lambda: ex.submit(leave, 1).result(30)))
            out.append(outcome(lambda: ex.submit(same, 5).result(30)))  # still working
        with paralelo.Pool(2) as pool:
            out.append(outcome(lambda: pool.apply(returns, ("unpicklable",))))
            out.append(outcome(lambda: pool.map(returns, ["unpicklable"])))
        print(" ".join(out))
    """
)


def test_pickling_failures_raise_the_standard_types_with_their_cause(tmp_path) -> None:
    [out] = side_by_side(tmp_path, PICKLING_FAILURES, ("paralelo",))
    assert out.split() == [
        "TypeError<NoneType>",  # the task cannot be pickled here: the pickler's error, raw
        "PicklingError<SystemExit>",  # ...even by a __reduce__ that exits: never raw
        "TaskUnpicklingError<RemoteTraceback>",  # a BrokenProcessPool: cannot load there
        "ResultPicklingError<RemoteTraceback>",  # a PicklingError
        "ResultUnpicklingError<ValueError>",  # a BrokenProcessPool
        "SystemExit<RemoteTraceback>",  # as concurrent.futures re-raises it
        "ok",
        "MaybeEncodingError<ResultPicklingError>",  # what multiprocessing.Pool raises
        "MaybeEncodingError<ResultPicklingError>",
    ]


ALIGNED = textwrap.dedent(
    """
    import sys, threading
    import re
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def lock_at_150(x):
        return threading.Lock() if x == 150 else x

    if __name__ == "__main__":
        with mp.Pool(2) as pool:
            it = pool.imap(lock_at_150, range(300))
            out = []
            while True:
                try:
                    out.append(next(it))
                except StopIteration:
                    break
                except Exception as e:
                    out.append(type(e).__name__)
                    message = re.sub(r"0x[0-9a-f]+", "0x", str(e))  # the result's repr has an address
        errors = [i for i, v in enumerate(out) if not isinstance(v, int)]
        print(len(out), errors, out[errors[0]] if errors else None)
        print(message)
    """
)


def test_a_result_that_cannot_be_pickled_fails_in_its_place_as_with_the_stdlib(tmp_path) -> None:
    outs = side_by_side(tmp_path, ALIGNED)
    assert outs[0] == outs[1] == ("300 [150] MaybeEncodingError\nError sending result: "
                                  "'<unlocked _thread.lock object at 0x>'. "
                                  "Reason: 'TypeError(\"cannot pickle '_thread.lock' object\")'")


STREAMING = textwrap.dedent(
    """
    import sys, threading
    if sys.argv[1] == "paralelo":
        from paralelo import Pool
    else:
        from multiprocessing import Pool

    def double(x):
        return 2 * x

    if __name__ == "__main__":
        with Pool(2) as pool:
            # imap() returns before the input gives anything...
            opened = threading.Event()
            def late():
                assert opened.wait(30), "imap() read the input on the caller's thread"
                yield 1
            it = pool.imap(double, late())
            opened.set()
            print(list(it))
            # ...and each item goes out as soon as it is read: a live input (a socket, a
            # queue) that waits for the first result before giving the second.
            for imap in (pool.imap, pool.imap_unordered):
                got = threading.Event()
                def live():
                    yield 1
                    assert got.wait(30), "the first item was held back until more input came"
                    yield 2
                it = imap(double, live())
                first = next(it)
                got.set()
                print(first, list(it))
    """
)


def test_imap_returns_at_once_and_streams_a_live_input(tmp_path) -> None:
    outs = side_by_side(tmp_path, STREAMING)
    assert outs[0] == outs[1] == "[2]\n2 [4]\n2 [4]"


LIMITS = textwrap.dedent(
    """
    import ctypes, os, signal, sys, threading, time
    import paralelo

    def nap(x):
        time.sleep(x)
        return x

    def die_once(marker, how):
        # Dies the first time (its marker file does not exist yet), succeeds when retried.
        if not os.path.exists(marker):
            open(marker, "w").close()
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            ctypes.string_at(0)  # a segfault
        return "second try"

    def exit_at_500(x):
        if x == 500:
            os._exit(1)
        return x

    def die_always():
        os.kill(os.getpid(), signal.SIGKILL)

    def boom():
        open("raised", "a").write("x")
        raise ValueError("boom")

    if __name__ == "__main__":
        with paralelo.Pool(2, task_timeout=0.5) as pool:
            # A task past its limit fails alone; the others, and the pool, go on.
            results = [pool.apply_async(nap, (t,)) for t in (0.01, 30, 0.02)]
            print(results[0].get(10), results[2].get(10))
            try:
                results[1].get(10)
            except paralelo.TimeoutError as e:
                print(type(e).__name__, "time limit of 0.5 s" in str(e))
            print(pool.map(nap, [0.01] * 4))
            try:  # per call: a map whose item overruns fails with the timeout
                pool.map(nap, [0.01, 5, 0.01], task_timeout=0.3)
            except paralelo.TaskTimeoutError:
                print("map timed out")
            print(pool.apply(nap, (0.7,), task_timeout=2))  # a longer limit for this call
        with paralelo.Pool(1, task_timeout=0.5) as pool:
            # The limit is per item, whatever the chunksize.
            print("per item", pool.map(nap, [0.2] * 4, chunksize=4))
        with paralelo.Pool(2) as pool:
            # A chunk paralelo made runs again item by item after a crash: one item fails.
            outcomes = []
            it = pool.imap(exit_at_500, range(1000))
            while True:
                try:
                    outcomes.append(next(it))
                except StopIteration:
                    break
                except paralelo.WorkerLostError:
                    outcomes.append("lost")
            print("crash in a chunk", [i for i, v in enumerate(outcomes) if v != i])
        with paralelo.Pool(1, initializer=time.sleep, initargs=(0.6,), task_timeout=0.4) as pool:
            # The clock starts when the worker runs the task, not while it starts up.
            print("after the initializer", pool.apply(nap, (0.01,)))
            # A timed call waits for an idle worker, even behind a call that cannot be
            # pickled; the untimed call it would have queued behind is not killed.
            untimed = pool.apply_async(nap, (0.6,), task_timeout=30)
            bad = pool.apply_async(nap, (threading.Lock(),))
            timed = pool.apply_async(nap, (0.01,), task_timeout=0.3)
            bad.wait(10)
            print(untimed.get(10), timed.get(10), bad.successful())
        with paralelo.Pool(2, retries=1) as pool:
            print(pool.apply(die_once, ("m1", "kill")), pool.apply(die_once, ("m2", "segv")))
            try:
                pool.apply(die_always)
            except paralelo.WorkerLostError as e:
                print("lost", "tried 2 times" in str(e))
            try:
                pool.apply(boom)  # an exception is never retried
            except ValueError:
                print("raised", open("raised").read())
            try:
                pool.apply(die_once, ("m4", "kill"), retries=0)
            except paralelo.WorkerLostError:
                print("no retry per call")
        with paralelo.ProcessPoolExecutor(2, task_timeout=0.5, retries=1) as ex:
            f = ex.submit(nap, 30)
            g = ex.submit(die_once, "m5", "segv")
            try:
                f.result(10)
            except TimeoutError as e:
                print(type(e).__name__)
            print(g.result(10), ex.submit(nap, 0.01).result(10))
        for bad in ({"task_timeout": 0}, {"task_timeout": "1"}, {"retries": -1}):
            try:
                paralelo.Pool(1, **bad)
            except (TypeError, ValueError) as e:
                print(type(e).__name__)
    """
)


def test_task_time_limits_and_retries(tmp_path) -> None:
    [out] = side_by_side(tmp_path, LIMITS, ("paralelo",))
    assert out.splitlines() == [
        "0.01 0.02", "TaskTimeoutError True", "[0.01, 0.01, 0.01, 0.01]", "map timed out", "0.7",
        "per item [0.2, 0.2, 0.2, 0.2]", "crash in a chunk [500]", "after the initializer 0.01", "0.6 0.01 False",
        "second try second try", "lost True", "raised x", "no retry per call",
        "TaskTimeoutError", "second try 0.01", "ValueError", "TypeError", "ValueError",
    ]


WHOLE_CHUNKS = textwrap.dedent(
    """
    import sys, time
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def fail_at_4(x):
        if x == 4:
            raise ValueError(x)
        return x

    def slow_source():
        for i in range(9):
            time.sleep(0.01)  # slow enough that a streaming reader sees items one by one
            yield i

    if __name__ == "__main__":
        with mp.Pool(2) as pool:
            for imap in (pool.imap, pool.imap_unordered):
                got = []
                it = imap(fail_at_4, slow_source(), chunksize=3)
                while True:
                    try:
                        got.append(next(it))
                    except StopIteration:
                        break
                    except ValueError as e:
                        got.append(f"error {e}")
                print(sorted(map(str, got)))
    """
)


def test_a_streamed_input_is_cut_into_the_callers_whole_chunks(tmp_path) -> None:
    ours, theirs = side_by_side(tmp_path, WHOLE_CHUNKS)
    assert ours == theirs


MAP_FAILS_THE_REST_RUNS = textwrap.dedent(
    """
    import os, sys
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing

    def touch(i):
        open(f"ran-{i}", "w").close()
        if i == 3:
            raise ValueError(i)
        return i

    def ran():
        return sum(f.startswith("ran-") for f in os.listdir("."))

    if __name__ == "__main__":
        out = []
        for chunksize in (1, 10):
            for f in os.listdir("."):
                if f.startswith("ran-"):
                    os.remove(f)
            errors = []
            with mp.Pool(2) as pool:
                try:
                    # The map is ready (and raises) once every chunk ran, within the block.
                    pool.map_async(touch, range(100), chunksize=chunksize,
                                   error_callback=lambda e: errors.append((str(e), ran()))).get(60)
                except ValueError as e:
                    out.append(f"raised {e} after {ran()}")
            out.append(f"callbacks {errors}")
        print(" ".join(out))
    """
)


def test_a_failed_map_still_runs_its_other_chunks_as_multiprocessing_does(tmp_path) -> None:
    outs = side_by_side(tmp_path, MAP_FAILS_THE_REST_RUNS)
    assert outs[0] == outs[1] == ("raised 3 after 100 callbacks [('3', 100)] "
                                  "raised 3 after 94 callbacks [('3', 94)]"), outs


NO_WAIT_BEHIND_A_BUSY_WORKER = textwrap.dedent(
    """
    import logging, os, sys, time
    import numpy  # starts threads, as in most scripts
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s")
    if sys.argv[1] == "paralelo":
        from paralelo import ProcessPoolExecutor
    else:
        from concurrent.futures import ProcessPoolExecutor

    def work(seconds):
        time.sleep(seconds)
        return os.getpid()

    if __name__ == "__main__":
        with ProcessPoolExecutor(2) as ex:
            a, b, c = ex.submit(work, 0.6), ex.submit(work, 0.05), ex.submit(work, 0.6)
            # The third call goes to whichever worker comes free first: the short one's,
            # not queued behind the first long one.
            print(a.result() != c.result(), b.result() == c.result())
    """
)


def test_a_call_never_waits_behind_a_busy_worker_while_another_is_free(tmp_path) -> None:
    outs = side_by_side(tmp_path, NO_WAIT_BEHIND_A_BUSY_WORKER, ("paralelo", "concurrent.futures"))
    assert outs[0] == outs[1] == "True True", outs


INITIALIZER_RAISES = textwrap.dedent(
    """
    import sys
    import numpy
    if sys.argv[1] == "paralelo":
        from paralelo import ProcessPoolExecutor
    else:
        from concurrent.futures import ProcessPoolExecutor

    def init():
        raise RuntimeError("init failed")

    if __name__ == "__main__":
        seen = set()
        for _ in range(6):
            try:
                with ProcessPoolExecutor(2, initializer=init) as ex:
                    list(ex.map(abs, range(4)))
            except Exception as e:
                seen.add(type(e).__name__)
                if sys.argv[1] == "paralelo":  # ours keeps the cause, every time
                    assert "initializer raised" in str(e), e
                    assert isinstance(e.__cause__, RuntimeError), repr(e.__cause__)
        if sys.argv[1] == "paralelo":  # (multiprocessing's Pool hangs here)
            import paralelo
            for _ in range(12):
                try:
                    with paralelo.Pool(2, initializer=init) as pool:
                        pool.map(abs, range(4))
                except Exception as e:
                    assert "initializer raised" in str(e), e
                    assert isinstance(e.__cause__, RuntimeError), repr(e.__cause__)
        print(sorted(seen))
    """
)


def test_an_initializer_that_raises_breaks_the_pool_with_its_own_cause(tmp_path) -> None:
    outs = side_by_side(tmp_path, INITIALIZER_RAISES, ("paralelo", "concurrent.futures"))
    assert outs[0] == outs[1] == "['BrokenProcessPool']", outs


NUMBERS = textwrap.dedent(
    """
    import enum, logging, math, struct, sys
    import numpy as np
    mp = __import__(sys.argv[1])  # paralelo or multiprocessing
    logging.basicConfig(level=logging.INFO)

    class Level(enum.IntEnum):
        LOW = 1

    def same(x):
        return x

    def doubled(x):
        return x * 2

    def show(values):
        # Values and exact types, floats by their bits (-0.0 and NaN payloads).
        return [(type(v).__name__, struct.pack("<d", v).hex() if type(v) is float else repr(v)) for v in values]

    if __name__ == "__main__":
        inputs = {
            "ints": list(range(-300, 300)),
            "edges": [2**63 - 1, -(2**63)] * 150,
            "beyond": [2**63, 1] * 150,
            "floats": [i / 3 for i in range(400)] + [-0.0, math.nan, math.inf],
            "bools": [True, False] * 200,
            "mixed": [1, 2.5] * 200,
            "enum": [Level.LOW] * 300,
            "numpy": [np.int64(i) for i in range(300)],
        }
        with mp.Pool(2) as pool:
            for name, values in inputs.items():
                for chunksize in (None, 100):
                    print(name, show(pool.map(same, values, chunksize)))
                    print(name, show(pool.map(doubled, tuple(values), chunksize)))
                print(name, show(list(pool.imap(same, values, 50))))
        """
)


def test_lists_of_numbers_keep_values_and_types_like_the_stdlib(tmp_path) -> None:
    # ints and floats travel as machine arrays in paralelo: the script's results, types
    # and float bits must be multiprocessing's exactly.
    ours, theirs = side_by_side(tmp_path, NUMBERS)
    assert ours == theirs
    assert ours.count("\n") == 8 * 5 - 1


def test_inputs_reused_and_errors_reported_as_the_standard_library_does(tmp_path) -> None:
    """A list reused right after ``Executor.map`` returns (it was read at the call), an
    exception that cannot be pickled, and a map whose items fail in several places: the
    same outcome as the standard library's, in a __main__ script."""
    from scripts import side_by_side

    outs = side_by_side(tmp_path, """
import sys, logging
import numpy as np
logging.basicConfig(level=logging.INFO)
LIB = sys.argv[1]
if LIB == "paralelo":
    from paralelo import Pool, ProcessPoolExecutor
else:
    from multiprocessing import Pool
    from concurrent.futures import ProcessPoolExecutor
def double(x):
    return 2 * x
class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("nope")
def fails_at(x):
    if x == 1000:
        raise Unpicklable("u")
    return x
def fails_often(x):
    if x in (10, 60_000, 99_999):
        raise ValueError(x)
    return x
if __name__ == "__main__":
    with ProcessPoolExecutor(2) as ex:
        batch = list(range(100_000))
        results = ex.map(double, batch)
        batch[:] = [0] * len(batch)
        print("reused", sum(results))
        batch = list(range(20_000))
        results = ex.map(double, batch)
        batch.clear()
        print("cleared", len(list(results)))
        try:
            list(ex.map(fails_at, range(2000)))
        except Exception as e:
            print("executor", isinstance(e, (TypeError, __import__("pickle").PicklingError)))
    with Pool(2) as pool:
        try:
            pool.map(fails_at, range(2000))
        except Exception as e:
            print("pool", type(e).__name__, str(e).split("Reason")[1])
        for _ in range(5):
            try:
                pool.map(fails_often, range(100_000))
            except ValueError as e:
                print("first failure", e)
""", timeout=120)
    assert outs[0] == outs[1], "\n---\n".join(outs)


MAPS_OF_NUMBERS = '''
import sys, logging
import numpy as np
logging.basicConfig(level=logging.INFO)
if sys.argv[1] == "paralelo":
    from paralelo import Pool
else:
    from multiprocessing import Pool
def sq(x): return x * x
def bad(x):
    if x == 700: raise ValueError("seven hundred")
    return x
if __name__ == "__main__":
    with Pool(2) as p:
        print(p.map(sq, []), p.map(sq, list(range(1000)))[-3:], p.map(sq, [0.5] * 600)[:2])
        got = []
        r = p.map_async(sq, list(range(2000)), callback=got.append); r.wait(30)
        print(len(got[0]), got[0][1999], sum(got[0]))
        try: p.map(bad, list(range(1000)))
        except ValueError as e: print("ValueError", e)
        print(p.map(sq, list(range(300)))[299], p.starmap(pow, [(2, 3)] * 300)[:2])
        print(p.map(sq, np.arange(5).tolist()), p.map(str, list(range(300)))[-1])
'''


def test_maps_of_numbers_give_what_multiprocessing_gives(tmp_path) -> None:
    # Packed numbers, results unpacked into a list made at the first result, an empty map
    # (no result ever: still []), a failing chunk, a callback: as multiprocessing, from a
    # script with numpy imported and logging configured.
    paralelo_out, stdlib_out = side_by_side(tmp_path, MAPS_OF_NUMBERS)
    assert paralelo_out == stdlib_out
    assert paralelo_out.splitlines()[0] == "[] [994009, 996004, 998001] [0.25, 0.25]"


REFILL = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    if sys.argv[1] == "paralelo":
        from paralelo import Pool
    else:
        from multiprocessing import Pool

    def total(a):
        return float(a.sum()), len(a)

    def refill(n, size):
        # One buffer, refilled for each item: what a reader of a file or a camera does.
        buf = np.zeros(size)
        for i in range(n):
            buf[:] = i
            yield buf

    def records():
        rec = {"k": 0, "v": []}
        for i in range(20):
            rec["k"] = i
            rec["v"].append(i)
            yield rec

    def key_and_len(r):
        return r["k"], len(r["v"])

    def length(x):
        return len(x)

    def with_a_lock():
        yield [1]
        yield [threading.Lock()]
        yield [1, 2, 3]

    if __name__ == "__main__":
        with Pool(2) as p:
            print(list(p.imap(total, refill(30, 1000))))
            print(sorted(p.imap_unordered(total, refill(30, 1000))))
            print(list(p.imap(total, refill(6, 50_000))))  # 400 KB each: through the arena
            print(list(p.imap(key_and_len, records())))
            print(list(p.starmap(divmod, ((i, 7) for i in range(20)))))
            it = p.imap(length, with_a_lock())
            for _ in range(3):
                try:
                    print(next(it))
                except Exception as e:
                    print("cannot pickle", "lock" in str(e) or "lock" in str(e.__cause__))
    """
)


def test_imap_sends_each_item_as_it_was_read(tmp_path) -> None:
    """A generator that refills one buffer (or one dict) for every item: each item goes
    out as it was when read, as multiprocessing pickles each as it reads it."""
    outs = side_by_side(tmp_path, REFILL)
    assert outs[0] == outs[1]
    lines = outs[0].splitlines()
    assert lines[0] == str([(1000.0 * i, 1000) for i in range(30)])
    assert lines[2] == str([(50000.0 * i, 50000) for i in range(6)])
    assert lines[3] == str([(i, i + 1) for i in range(20)])


EXECUTOR_INPUT = textwrap.dedent(
    """
    import gc, os, sys, tempfile, time, weakref
    if sys.argv[1] == "paralelo":
        from paralelo import ProcessPoolExecutor
    else:
        from concurrent.futures import ProcessPoolExecutor

    MARK = os.path.join(tempfile.mkdtemp(), "started")

    def mark(x):
        open(MARK + str(x), "w").close()
        return x

    def items():
        # The second item waits until the first ran: map() reads the input whole, but
        # sends each item as it reads it.
        yield 0
        for _ in range(3000):
            if os.path.exists(MARK + "0"):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the first item waited for the input's end")
        yield 1

    class Big:
        pass

    def bad_input():
        yield 1
        raise KeyError("the input broke")

    if __name__ == "__main__":
        with ProcessPoolExecutor(2) as ex:
            print(list(ex.map(mark, items())))
            data = [Big() for _ in range(3)]
            seen = [weakref.ref(b) for b in data]
            gc.disable()
            print(len(list(ex.map(id, data))))
            del data
            print([r() is None for r in seen])  # (no cycle keeps the input)
            gc.enable()
            try:
                ex.map(mark, bad_input())
            except KeyError as e:
                print("raised by map()", e)
            print(list(ex.map(pow, iter([2, 3]), iter([2, 2]))))
    """
)


def test_executor_map_sends_each_item_as_read_and_keeps_no_input(tmp_path) -> None:
    outs = side_by_side(tmp_path, EXECUTOR_INPUT)
    assert outs[0] == outs[1]
    assert outs[0].splitlines()[:2] == ["[0, 1]", "3"]


UNPICKLABLE_ARGUMENTS = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    if sys.argv[1] == "paralelo":
        import paralelo as mp
        from paralelo import ProcessPoolExecutor
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

    def f(v):
        return 1

    def show(fn):
        try:
            return fn()
        except Exception as e:
            return f"{type(e).__name__}: {str(e).split(',')[0]}"

    if __name__ == "__main__":
        v = mp.Value("i", 0)  # shared by inheritance only
        with mp.Pool(2) as pool:
            # More bad items than workers: each fails as it is shipped, and the rest
            # still go (once, the map hung on them).
            print(show(lambda: pool.map(f, [v] * 5)))
            print(show(lambda: pool.starmap(f, [(threading.Lock(),)] * 5, chunksize=1)))
            print(show(lambda: pool.apply(f, (v,))))
            print(show(lambda: pool.apply(f, (mp.RawValue("i", 7),))))  # (its ctypes object)
            print(pool.map(f, range(3)))
        with ProcessPoolExecutor(2) as ex:
            print(show(lambda: ex.submit(f, threading.Lock()).result(30)))
    """
)


def test_unpicklable_arguments_raise_what_the_standard_library_raises(tmp_path) -> None:
    par, std = side_by_side(tmp_path, UNPICKLABLE_ARGUMENTS, timeout=60)
    assert par == std
    assert par.splitlines()[0] == "RuntimeError: Synchronized objects should only be shared between processes through inheritance"


FUNCTION_BY_NAME = textwrap.dedent(
    """
    import paralelo, paralelo._pickling as pk

    by_value = []
    _by_value = pk.by_value
    def spy(obj, *args, **kwargs):
        by_value.append(obj)
        return _by_value(obj, *args, **kwargs)
    pk.by_value = spy

    def inc(x):
        return x + 1

    class Box:
        def __init__(self, v):
            self.v = v
        def __radd__(self, other):
            return other + self.v

    def add(a, b):
        return a + b

    if __name__ == "__main__":
        with paralelo.Pool(2) as pool:
            assert pool.map(inc, range(1000)) == list(range(1, 1001))
            assert pool.starmap(max, [(1, 2)]) == [2]
            assert pool.apply(inc, (1,)) == 2 and pool.apply_async(inc, (2,)).get() == 3  # calls too
            late = lambda x: x * 2  # made after the pool: the workers lack it
            assert pool.map(late, range(10)) == [x * 2 for x in range(10)]
            assert pool.apply(add, (1, Box(2))) == 3  # an argument naming __main__: by value
        went = lambda fn: sum(1 for o in by_value if type(o) is tuple and o and o[0] is fn)
        print(went(inc), went(late), went(add))
    """
)


def test_a_maps_main_function_the_workers_have_goes_by_name_without_cloudpickle(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(FUNCTION_BY_NAME)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "1"]  # the C pickler's name; the lambda, the Box by value


STANDARD_PIPE_TO_A_TASK = textwrap.dedent(
    """
    import sys
    import numpy as np
    import multiprocessing
    from multiprocessing.connection import Connection
    if sys.argv[1] == "paralelo":
        import paralelo as mp
    else:
        import multiprocessing as mp

    def send_hi(c, what):
        c.send(what)
        return "sent"

    if __name__ == "__main__":
        with mp.Pool(1) as pool:
            pool.apply(abs, (1,))
            # The standard library's pipe, made after the workers, in a task's arguments.
            r, w = multiprocessing.Pipe()
            print(pool.apply(send_hi, (w, "from main")), r.recv())
            pool.apply(Connection.send, (w, "from a module's function"))
            print(r.recv())
    """
)


def test_a_standard_pipe_in_a_calls_arguments_travels_as_multiprocessing_sends_it(tmp_path) -> None:
    # (Pickled with multiprocessing's own reducers: not as a bare descriptor number.)
    par, std = side_by_side(tmp_path, STANDARD_PIPE_TO_A_TASK, timeout=60)
    assert par == std == "sent from main\nfrom a module's function"
