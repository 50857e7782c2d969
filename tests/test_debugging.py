"""Debugging as the guide advises: inline mode runs every task in the calling process,
with the pool's results and errors; ``breakpoint()`` in a worker opens pdb on the
program's terminal, one worker at a time, and says why not where there is none."""

from __future__ import annotations

import multiprocessing
import os
import pty
import select
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

import paralelo

from scripts import run_group

T = 30


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise ValueError("three", x)
    return x


def where(_):
    return os.getpid(), threading.get_ident()


def return_lock():
    return threading.Lock()


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 - compared by type and args
        return "error", type(e).__name__, e.args


def _imap_outcomes(it):
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            return out
        except Exception as e:  # noqa: BLE001
            out.append((type(e).__name__, e.args))


@pytest.fixture(scope="module")
def pools():
    with paralelo.Pool(2) as real, paralelo.Pool(2, inline=True) as inline:
        yield real, inline


@pytest.mark.parametrize("case", ["map", "map_fail", "starmap", "apply", "apply_fail", "imap_fail",
                                  "imap_chunks_fail", "imap_unordered", "unpicklable_result", "lambda", "reduce"])
def test_inline_gives_the_pools_results_and_errors(pools, case):
    def run(pool):
        if case == "map":
            return _outcome(pool.map, square, range(20))
        if case == "map_fail":
            return _outcome(pool.map, fail_on_three, range(6))
        if case == "starmap":
            return _outcome(pool.starmap, pow, [(2, i) for i in range(10)])
        if case == "apply":
            return _outcome(lambda: pool.apply_async(square, (7,)).get(T))
        if case == "apply_fail":
            return _outcome(lambda: pool.apply_async(fail_on_three, (3,)).get(T))
        if case == "imap_fail":
            return _imap_outcomes(pool.imap(fail_on_three, range(6)))
        if case == "imap_chunks_fail":  # (chunks of several: nothing after a failure)
            return _imap_outcomes(pool.imap(fail_on_three, range(7), chunksize=3))
        if case == "imap_unordered":
            return sorted(pool.imap_unordered(square, range(10)))
        if case == "unpicklable_result":
            return _outcome(lambda: pool.apply_async(return_lock).get(T))[:2]
        if case == "lambda":
            return _outcome(pool.map, lambda x: x + 1, range(5))
        return _outcome(pool.reduce, lambda a, b: a + b, list("inline"))

    real, inline = pools
    assert run(inline) == run(real)


def test_inline_runs_in_the_calling_thread_with_no_process(pools):
    _, inline = pools
    before = set(multiprocessing.active_children())
    assert inline.map(where, range(3)) == [(os.getpid(), threading.get_ident())] * 3
    assert set(multiprocessing.active_children()) == before


def test_inline_errors_keep_the_real_traceback_for_a_post_mortem(pools):
    _, inline = pools
    with pytest.raises(ValueError) as info:
        inline.apply_async(fail_on_three, (3,)).get()
    frames = []
    tb = info.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert frames[-1] == "fail_on_three"  # pdb.post_mortem lands in the task's own frame
    assert isinstance(info.value.__cause__, paralelo.RemoteTraceback)  # as from a worker


def test_inline_arguments_go_through_pickling(pools):
    for pool in pools:  # the same errors, from the pool and inline
        with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object") as info:
            pool.apply_async(square, (threading.Lock(),)).get(T)
        assert "(raised while pickling the task for a worker)" in info.value.__notes__
        with pytest.raises(paralelo.TaskUnpicklingError, match="ValueError: no"):
            pool.apply_async(square, (_Unloadable(),)).get(T)


def _refuse():
    raise ValueError("no")


class _Unloadable:
    def __reduce__(self):
        return (_refuse, ())


def test_an_inline_executor_and_its_initializer():
    seen = []
    with paralelo.ProcessPoolExecutor(2, initializer=seen.append, initargs=("init",), inline=True) as ex:
        assert seen == []  # (as a process executor, it starts at its first use)
        assert ex.submit(square, 9).result() == 81
        assert seen == ["init"]
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
        results = ex.map(fail_on_three, range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(results)
        with pytest.raises(StopIteration):  # (concurrent.futures' map ends at a failure)
            next(results)


def test_the_environment_turns_every_pool_inline(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os, paralelo
        def pid(_):
            return os.getpid()
        if __name__ == "__main__":
            with paralelo.Pool(4) as pool, paralelo.ProcessPoolExecutor(4) as ex:
                mine = {os.getpid()}
                print(set(pool.map(pid, range(8))) == mine, set(ex.map(pid, range(8))) == mine)
    """))
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path, env={**os.environ, "PARALELO_INLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


_BREAKING = textwrap.dedent("""
    import paralelo

    def f(x):
        y = x * 6
        breakpoint()
        return y

    if __name__ == "__main__":
        with paralelo.Pool(2) as pool:
            print("done", pool.map(f, [7, 1], chunksize=1), flush=True)
""")


def test_a_workers_breakpoint_opens_pdb_on_the_terminal_one_at_a_time(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_BREAKING)
    pid, fd = pty.fork()  # the script's controlling terminal: this pseudo-terminal
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, str(script)])
        finally:
            os._exit(127)
    until = _reader(fd)

    try:
        # Each worker's session in turn, never both at once.
        assert sorted(_sessions(fd, until, b"p y\n", 2)) == [b"42", b"6"]
        assert b"[42, 6]" in until(b"[42, 6]")
    finally:
        status = _ended(pid)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


_BREAKS_SET = textwrap.dedent("""
    import os, time
    import paralelo

    def g(x):
        return x + 1

    def after(name):
        deadline = time.monotonic() + 10
        while not os.path.exists(name) and time.monotonic() < deadline:
            time.sleep(0.01)

    def f(x):
        if x == 7:
            open("first", "w").close()
            breakpoint()  # (the session sets a breakpoint on g, then continues)
            after("other")  # the other worker's session, while this one runs on
            return g(x * 6)
        after("first")  # (this session comes second, whichever worker starts first)
        open("other", "w").close()
        breakpoint()
        return x * 6

    if __name__ == "__main__":
        with paralelo.Pool(2) as pool:
            print("done", pool.map(f, [7, 1], chunksize=1), flush=True)
""")


def test_a_session_that_continues_with_breakpoints_set_lets_others_debug(tmp_path):
    """It lets go of the terminal until a breakpoint is hit, then takes it again."""
    script = tmp_path / "script.py"
    script.write_text(_BREAKS_SET)
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(tmp_path)
            os.execv(sys.executable, [sys.executable, str(script)])
        finally:
            os._exit(127)
    until = _reader(fd)
    try:
        assert b"--- pdb in ForkPoolWorker-" in until(b"(Pdb) ")
        os.write(fd, b"p x\n")
        assert until(b"(Pdb) ").split(b"\n")[1].strip() == b"7"
        os.write(fd, b"b g\n")
        until(b"(Pdb) ")
        os.write(fd, b"c\n")
        # The other worker's session, and the breakpoint on g: each in turn.
        assert sorted(_sessions(fd, until, b"p x\n", 2)) == [b"1", b"42"]
        assert b"[43, 6]" in until(b"[43, 6]")
    finally:
        status = _ended(pid)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def _sessions(fd: int, until: Callable[[bytes], bytes], ask: bytes, count: int) -> list[bytes]:
    """What `ask` prints in each of the next `count` pdb sessions (each then continued)."""
    answers = []
    for _ in range(count):
        assert b"--- pdb in ForkPoolWorker-" in until(b"(Pdb) ")
        os.write(fd, ask)
        answers.append(until(b"(Pdb) ").split(b"\n")[1].strip())
        os.write(fd, b"c\n")
    return answers


def _ended(pid: int) -> int:
    """The wait status of the script `pid`, killed with its process group if it has not
    ended within T seconds (a test that failed half-way leaves it waiting on its terminal)."""
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.killpg(pid, signal.SIGKILL)  # (pty.fork made it a session leader: its workers are in its group)
    return os.waitpid(pid, 0)[1]


def _reader(fd: int) -> Callable[[bytes], bytes]:
    """`until(token)`: what the terminal `fd` shows up to `token` (failing after T seconds)."""
    seen = b""

    def until(token: bytes) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + T
        while token not in seen:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no {token!r} in {seen[-800:]!r}"
            try:
                seen += os.read(fd, 4096)
            except OSError:  # (the script ended: its terminal closed)
                raise AssertionError(f"no {token!r} in {seen[-800:]!r}") from None
        cut = seen.index(token) + len(token)
        got, seen = seen[:cut], seen[cut:]
        return got

    return until


def test_a_breakpoint_with_no_terminal_says_so_and_goes_on(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_BREAKING)
    out = run_group([sys.executable, str(script)], T, cwd=tmp_path)  # (a session of its own: no terminal)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done [42, 6]"
    told = [line for line in out.stderr.splitlines() if "no terminal to debug on" in line]
    assert 1 <= len(told) <= 2 and len(set(told)) == len(told)  # once a worker, whatever its items
    assert "breakpoint() in ForkPoolWorker-" in out.stderr and "PARALELO_INLINE=1" in out.stderr
    quiet = run_group([sys.executable, str(script)], T, cwd=tmp_path, env={**os.environ, "PYTHONBREAKPOINT": "0"})
    assert quiet.returncode == 0 and quiet.stdout.strip() == "done [42, 6]" and quiet.stderr == ""


def test_an_inline_executor_whose_initializer_raises_is_broken():
    def bad():
        raise RuntimeError("init failed")

    for inline in (False, True):  # the same errors, from workers and inline
        ex = paralelo.ProcessPoolExecutor(1, initializer=bad, inline=inline)
        try:
            with pytest.raises(paralelo.BrokenProcessPool, match="initializer") as info:
                ex.submit(square, 2).result(T)
            assert isinstance(info.value.__cause__, RuntimeError)
            with pytest.raises(paralelo.BrokenProcessPool):
                ex.submit(square, 2)
        finally:
            ex.shutdown()


def test_an_inline_imap_with_a_bar_is_still_an_iterator_of_results(pools):
    import asyncio

    _, inline = pools
    it = inline.imap(square, range(4), progress={"disable": True})
    assert it.next(1) == 0 and list(it) == [1, 4, 9]

    async def collect():
        return [x async for x in inline.imap(square, range(3), progress={"disable": True})]

    assert asyncio.run(collect()) == [0, 1, 4]


@pytest.mark.parametrize("value, inline", [("1", True), ("yes", True), ("0", False), ("off", False), ("", False)])
def test_the_environment_switch_reads_as_a_flag(monkeypatch, value, inline):
    from paralelo import _inline

    monkeypatch.setenv("PARALELO_INLINE", value)
    assert _inline.wanted(None) is inline
    assert _inline.wanted(False) is False and _inline.wanted(True) is True


def _touch(path):
    open(path, "w").close()
    return path


_EXECUTOR: list = []


def _submit_again(x):
    return _EXECUTOR[0].submit(square, x).result()


def test_inline_maps_nobody_reads_still_run(tmp_path, pools):
    _, inline = pools
    with paralelo.ProcessPoolExecutor(inline=True) as ex:
        ex.map(_touch, [str(tmp_path / f"ex{i}") for i in range(3)])  # (never read)
        _EXECUTOR[:] = [ex]
        nested = ex.submit(_submit_again, 5).result()  # a task that submits: no deadlock
        _EXECUTOR.clear()
    inline.imap(_touch, [str(tmp_path / f"im{i}") for i in range(3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex0", "ex1", "ex2", "im0", "im1", "im2"]
    assert nested == 25


def test_an_executor_map_of_nothing_is_empty():
    for inline in (False, True):
        with paralelo.ProcessPoolExecutor(1, inline=inline) as ex:
            assert list(ex.map(square)) == []
