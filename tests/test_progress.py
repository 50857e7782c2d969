"""``progress=`` on every map: a tqdm bar that the engine's completion counts advance, its
total the input's length (a lazy map's known at its end), closed when the map ends (or
fails, or its consumer stops); a clear error without tqdm or with a bad option."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
import tqdm.auto

import paralelo

from scripts import run_group

T = 30


def square(x):
    return x * x


def fail_on_seven(x):
    if x == 7:
        raise ValueError("seven")
    return x


class _Recorded(tqdm.auto.tqdm):
    """A bar that remembers itself: where it got to, its total, its options."""

    made: list[_Recorded] = []

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("disable", False)
        kwargs["file"] = open("/dev/null", "w")
        super().__init__(*args, **kwargs)
        self.options = kwargs
        self.closed = False
        _Recorded.made.append(self)

    def close(self):
        self.closed = True
        super().close()
        self.fp.close()


@pytest.fixture
def bars(monkeypatch):
    _Recorded.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Recorded)
    return _Recorded.made


def _one(bars) -> _Recorded:
    assert len(bars) == 1
    return bars[0]


@pytest.mark.parametrize("how", ["map", "map_async", "starmap", "starmap_async", "imap", "imap_unordered"])
@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_every_pool_map_counts_its_items(bars, how, kind):
    with (paralelo.Pool(2) if kind == "processes" else paralelo.pool.ThreadPool(3)) as pool:
        if how.startswith("starmap"):
            out = getattr(pool, how)(pow, [(i, 2) for i in range(300)], progress=True)
        else:
            out = getattr(pool, how)(square, (i for i in range(300)), progress=True)
        out = out.get(T) if how.endswith("_async") else list(out)
    assert sorted(out) == [i * i for i in range(300)]
    bar = _one(bars)
    assert (bar.n, bar.total, bar.closed) == (300, 300, True)


def test_a_generator_input_gets_its_total_at_its_end(bars):
    with paralelo.Pool(2) as pool:
        assert list(pool.imap(square, (i for i in range(777)), progress=True)) == [i * i for i in range(777)]
    bar = _one(bars)
    assert (bar.n, bar.total, bar.closed) == (777, 777, True)


def test_executor_map_counts_its_items(bars):
    with paralelo.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(square, range(500), progress=True)) == [i * i for i in range(500)]
        assert list(ex.map(pow, range(100), [2] * 60, progress=True)) == [i * i for i in range(60)]
    assert [(b.n, b.total, b.closed) for b in bars] == [(500, 500, True), (60, 60, True)]


def test_options_pass_through_to_tqdm(bars):
    with paralelo.Pool(2) as pool:
        pool.map(square, range(10), progress={"desc": "squares", "unit": "sq", "total": 10})
    bar = _one(bars)
    assert bar.options["desc"] == "squares" and bar.options["unit"] == "sq"
    assert (bar.n, bar.closed) == (10, True)


def test_a_failed_map_still_closes_its_bar_with_every_item_counted(bars):
    with paralelo.Pool(2) as pool:
        with pytest.raises(ValueError, match="seven"):
            pool.map(fail_on_seven, range(100), chunksize=1, progress=True)
    bar = _one(bars)
    assert (bar.n, bar.closed) == (100, True)  # a failed map still runs its other items


def nap(x):
    time.sleep(0.01)
    return x


def nap_fail_on_five(x):
    if x == 5:
        raise ValueError("five")
    return nap(x)


@pytest.mark.parametrize("how", ["imap", "imap_unordered", "thread executor", "process executor"])
def test_a_loop_that_raises_closes_its_bar_where_it_got_to(bars, how):
    """As a tqdm loop does: the bar is closed when the error reaches the loop, not when
    the rest of the map ends later (it would draw over what the program prints next)."""
    if how.endswith("executor"):
        make = paralelo.ThreadPoolExecutor if how.startswith("thread") else paralelo.ProcessPoolExecutor
        with make(2) as ex:
            with pytest.raises(ValueError, match="five"):
                for _ in ex.map(nap_fail_on_five, range(60), progress=True):
                    pass
            assert _one(bars).closed and _one(bars).n < 60
        return
    with paralelo.Pool(2) as pool:
        with pytest.raises(ValueError, match="five"):
            for _ in getattr(pool, how)(nap_fail_on_five, range(60), progress=True):
                pass
        assert _one(bars).closed and _one(bars).n < 60


def test_a_map_stopped_early_closes_its_bar(bars):
    with paralelo.ProcessPoolExecutor(2) as ex:
        results = ex.map(nap, range(1000), progress=True)
        assert next(results) == 0
        results.close()  # the rest is cancelled, and the bar closes where it got to
        bar = _one(bars)
        assert bar.closed and bar.n < 1000


def test_no_progress_means_no_bar(bars):
    with paralelo.Pool(2) as pool:
        pool.map(square, range(10))
        pool.map(square, range(10), progress=False)
    assert bars == []


def test_a_bad_option_is_refused():
    with paralelo.Pool(1) as pool:
        with pytest.raises(TypeError, match="progress must be True, False or a dict of tqdm options"):
            pool.map(square, range(3), progress="yes")


def test_without_tqdm_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # (import fails, as if not installed)
    with paralelo.Pool(1) as pool:
        with pytest.raises(ImportError, match="pip install tqdm"):
            pool.map(square, range(3), progress=True)
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_a_script_with_a_bar_gives_the_standard_results(tmp_path):
    """As users write it: the function in __main__, numpy imported first, logging set up;
    the bar on stderr ends full before the next line is printed."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import logging, multiprocessing, sys
        import numpy
        import paralelo
        logging.basicConfig(level=logging.INFO)

        def work(x):
            return int(numpy.int64(x) * 3)

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool:
                ours = pool.map(work, range(5000), progress=True)
                lazy = list(pool.imap(work, (i for i in range(300)), progress={"desc": "lazy"}))
                print("after", file=sys.stderr)
            with multiprocessing.get_context("fork").Pool(2) as pool:
                theirs = pool.map(work, range(5000))
            print(ours == theirs, lazy == theirs[:300])
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    err = out.stderr.replace("\r", "\n")
    assert "5000/5000" in err and "lazy: 100%" in err and "300/300" in err
    assert err.index("300/300") < err.index("after")


def test_thread_executor_map_counts_its_items_and_closes_when_left(bars):
    with paralelo.ThreadPoolExecutor(3) as ex:
        assert list(ex.map(square, range(200), progress=True)) == [i * i for i in range(200)]
        results = ex.map(nap, range(1000), progress={"desc": "naps"})
        assert next(results) == 0
        results.close()
    done, left = bars
    assert (done.n, done.total, done.closed) == (200, 200, True)
    assert left.closed and left.n < 1000 and left.options["desc"] == "naps"


def test_a_loop_that_breaks_off_closes_its_bar(bars):
    with paralelo.Pool(2) as pool:
        for x in pool.imap(nap, range(200), progress=True):
            if x == 3:
                break
        bar = _one(bars)
        assert bar.closed and bar.n < 200  # closed as the loop ended, where it got to


def test_an_input_that_raises_closes_the_executors_bar(bars):
    def items():
        yield from range(5)
        raise OSError("input broke")

    with paralelo.ProcessPoolExecutor(2) as ex:
        with pytest.raises(OSError, match="input broke"):
            ex.map(square, items(), progress=True)
    assert _one(bars).closed


def test_a_given_total_is_shown_as_given_and_the_bar_still_ends(bars):
    with paralelo.Pool(2) as pool:
        assert len(pool.map(square, range(10), progress={"total": 25})) == 10
    bar = _one(bars)
    assert (bar.total, bar.n, bar.closed) == (25, 10, True)


def test_bool_likes_are_taken_and_a_bad_total_refused(bars):
    import numpy

    with paralelo.Pool(1) as pool:
        pool.map(square, range(3), progress=numpy.True_)
        pool.map(square, range(3), progress=1)
        pool.map(square, range(3), progress=0)
        with pytest.raises(TypeError, match="progress's total must be a count of items or None, not 'x'"):
            pool.map(square, range(3), progress={"total": "x"})
        assert pool.map(square, range(3), progress=True) == [0, 1, 4]  # (no bar left half made)
    assert len(bars) == 3 and all(b.closed and b.n == 3 for b in bars)


def test_an_empty_thread_pool_map_closes_its_bar(bars):
    with paralelo.pool.ThreadPool(2) as pool:
        assert pool.map(square, [], progress=True) == []
    bar = _one(bars)
    assert bar.closed and bar.n == 0


def test_a_lazy_map_with_a_bar_keeps_next_with_a_timeout(bars):
    with paralelo.pool.ThreadPool(2) as pool:
        it = pool.imap(square, range(5), progress=True)
        assert it.next(T) == 0 and list(it) == [1, 4, 9, 16]
    bar = _one(bars)
    assert (bar.n, bar.closed) == (5, True)


def test_a_map_that_cannot_start_leaves_no_bar(bars):
    import threading

    with paralelo.Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.map(threading.Lock(), range(3), progress=True)  # (the function does not pickle)
        with pytest.raises(TypeError):
            pool.map(threading.Lock(), range(3), progress={"desc": "x"})
    assert all(b.closed for b in bars) and len(bars) <= 1  # (True: never made; a dict's: closed)


def test_a_slow_map_shows_its_bar_before_its_first_result_and_a_fast_one_only_its_end(tmp_path):
    """A default bar is first drawn REVEAL seconds in (by the reveal thread: no result has
    come by then), or at its map's end: a map shorter than that draws no 0% line. (REVEAL
    is set far above the fast map's time, then back: what is checked is not a speed.)"""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import paralelo
        from paralelo._progress import Progress

        def nap(x):
            time.sleep(1.0)
            return x

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool:
                Progress.REVEAL = 60.0
                pool.map(abs, range(5000), progress=True)
                print("FAST DONE", file=sys.stderr, flush=True)
                Progress.REVEAL = 0.1
                pending = pool.map_async(nap, range(2), progress=True)
                time.sleep(0.6)
                print("MIDWAY", file=sys.stderr, flush=True)
                print(pending.get())
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0,", "1]"]
    err = out.stderr.replace("\r", "\n")
    assert "5000/5000" in err and " 0/5000" not in err
    assert err.index("5000/5000") < err.index("FAST DONE")
    assert "FAST DONE" in err[:err.index(" 0/2")] and err.index(" 0/2") < err.index("MIDWAY") < err.index("2/2")
