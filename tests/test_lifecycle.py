"""Nothing outlives the program: workers, the zygote and shared memory are gone after a
normal exit without cleanup, after SIGKILL of the parent, and after Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import paralelo
    from paralelo import _zygote

    pool = paralelo.Pool(2)
    assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    ex = paralelo.ProcessPoolExecutor(2)
    assert ex.submit(abs, -4).result(timeout=30) == 4
    pids = pool._engine.pids() + ex._engine.pids() + [pool._engine.zygote.pid, ex._engine.zygote.pid]
    print(json.dumps(pids), flush=True)
    how = sys.argv[1]
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "busy":
        pool.apply_async(time.sleep, (60,))
        time.sleep(60)
    # "exit": leave without closing anything
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while we read
        return False


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("how", ["exit", "kill", "busy"])
def test_no_process_or_segment_outlives_the_parent(how: str) -> None:
    before = _shm()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, how], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 6
        if how == "busy":
            assert all(_alive(p) for p in pids)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert _wait_gone(pids) == [], "worker or zygote processes outlived their parent"
    assert _shm() - before == set(), "shared memory left in /dev/shm"


def test_ctrl_c_interrupts_a_wait_and_the_program_exits_cleanly() -> None:
    code = textwrap.dedent(
        """
        import json, time, paralelo
        pool = paralelo.Pool(2)
        r = pool.apply_async(time.sleep, (60,))
        print(json.dumps(pool._engine.pids()), flush=True)
        try:
            r.get()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(proc.stdout.readline())
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in out
    assert proc.returncode == 0
    assert _wait_gone(pids) == []


def test_terminate_returns_with_a_call_and_an_imap_in_flight() -> None:
    """terminate() kills the workers running a call and a map; their deaths must not hand
    the stopped call back to dispatch (which once spun on it for ever)."""
    code = textwrap.dedent(
        """
        import time
        import paralelo

        def nap(x):
            time.sleep(x)
            return x

        if __name__ == "__main__":
            for _ in range(5):
                pool = paralelo.Pool(2)
                r = pool.apply_async(nap, (0.5,))
                it = pool.imap(nap, [0.5])
                try:
                    it.next(0.01)
                except paralelo.TimeoutError:
                    pass
                pool.terminate()
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_pool_ends_with_its_zygote() -> None:
    """Each pool's zygote is reaped when the pool ends, closed or terminated, and a
    killed zygote breaks only its own pool, with a clear error."""
    import paralelo

    for end in ("close", "terminate"):
        pool = paralelo.Pool(2)
        assert pool.map(abs, [-1, -2]) == [1, 2]
        zygote = pool._engine.zygote.pid
        getattr(pool, end)()
        pool.join()
        assert _wait_gone([zygote]) == []
        pool._engine.thread.join(10)  # which reaps the zygote after join() returned
        with pytest.raises(ChildProcessError):
            os.waitpid(zygote, os.WNOHANG)  # already reaped: no zombie left
    with paralelo.Pool(2) as pool:
        workers = pool._engine.pids()
        own = pool._engine.own_children  # the first worker, forked by the pool's owner itself
        assert len(own) == 1 and set(own) < set(workers)
        os.kill(pool._engine.zygote.pid, signal.SIGKILL)
        assert _wait_gone([w for w in workers if w not in own]) == []  # the zygote's die with it
        deadline = time.monotonic() + 30
        while pool._engine.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)  # ...which the pool learns from their deaths
        with pytest.raises(paralelo.BrokenProcessPool, match="replacement worker"):
            pool.apply(abs, (-1,))
        assert _wait_gone(workers) == []  # a broken pool stops the rest
    with paralelo.Pool(1) as pool:
        assert pool.apply(abs, (-2,)) == 2


def test_waiting_inside_a_callback_raises_instead_of_deadlocking() -> None:
    import paralelo

    errors: list[BaseException] = []
    with paralelo.Pool(2) as pool:

        def callback(_: object) -> None:
            try:
                pool.apply(abs, (-1,))
            except RuntimeError as e:
                errors.append(e)

        pool.apply_async(abs, (-2,), callback=callback).get(timeout=30)
        assert pool.apply(abs, (-3,)) == 3
    assert len(errors) == 1 and "callback" in str(errors[0])


def test_an_executor_left_open_finishes_its_work_at_exit(tmp_path) -> None:
    """As with concurrent.futures: submitted work still runs when the program ends without
    shutdown(); a Pool left open is terminated, as with multiprocessing."""
    marker = tmp_path / "done"
    code = textwrap.dedent(
        f"""
        import pathlib, time, paralelo
        def work():
            time.sleep(0.3)
            pathlib.Path({str(marker)!r}).write_text("ok")
        ex = paralelo.ProcessPoolExecutor(1)
        ex.submit(work)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "ok"


def _die(how: str) -> None:
    import os
    import signal

    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


@pytest.mark.parametrize(("how", "words"), [("sigkill", "killed by SIGKILL"), ("exit", "exited with code 3")])
def test_a_lost_worker_says_how_it_died(how: str, words: str) -> None:
    import paralelo

    with paralelo.Pool(1) as pool:
        # The first worker is the owner's own child, the next the zygote's: each reaps its own.
        assert set(pool._engine.own_children) == set(pool._engine.pids())
        for _ in range(2):
            with pytest.raises(paralelo.WorkerLostError, match=words):
                pool.apply(_die, (how,))
        assert not pool._engine.own_children
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_an_own_worker_that_lingers_after_maxtasks_is_stopped_with_its_pool() -> None:
    """A first worker (the owner's own child) that left after maxtasks but is kept alive by
    a thread its task started is killed by terminate(), as the zygote's workers die with
    their zygote; the pool's collector ends, and nothing is left."""
    code = textwrap.dedent(
        """
        import os, threading, time, paralelo

        def linger(_):
            threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon
            return os.getpid()

        if __name__ == "__main__":
            p = paralelo.Pool(1, maxtasksperchild=1)
            own = set(p._engine.own_children)
            first = p.apply(linger, (0,))
            assert {first} == own, (first, own)
            p.apply(abs, (-1,))  # its successor, from the zygote
            t0 = time.monotonic()
            p.terminate()
            p.join()
            p._engine.thread.join(10)
            assert not p._engine.thread.is_alive(), "the collector is stuck"
            try:
                os.waitpid(first, os.WNOHANG)
            except ChildProcessError:
                pass  # reaped
            else:
                raise AssertionError("the lingering worker is still a child")
            assert time.monotonic() - t0 < 10
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_forked_child_leaves_its_parents_pool_alone() -> None:
    """A child forked after the pool was made (os.fork, or a fork-started multiprocessing
    process) exits normally — running atexit and finalizers — without touching the
    parent's workers, and cannot use the pool by mistake."""
    code = textwrap.dedent(
        """
        import os, sys, paralelo
        pool = paralelo.Pool(2)
        assert pool.map(abs, [-1]) == [1]
        workers = pool._engine.pids()
        pid = os.fork()
        if pid == 0:
            try:
                pool.map(abs, [-1])
                sys.exit(3)  # misuse must be refused
            except RuntimeError:
                pass
            pool.close()
            sys.exit(0)  # a normal exit: atexit hooks and finalizers run here
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
        assert pool._engine.pids() == workers, "the child's exit killed the parent's workers"
        pool.terminate()
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


HELD_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, threading, time
    import paralelo
    from paralelo import _zygote

    box = {}

    def make():
        # A pool made from a non-main thread: its zygote cannot rely on a thread-bound
        # parent-death signal.
        box["pool"] = paralelo.Pool(2)
        box["pool"].map(abs, [-1, -2])

    t = threading.Thread(target=make)
    t.start()
    t.join()
    pool = box["pool"]
    held = []
    if sys.argv[1] == "fork":
        pid = os.fork()
        if pid == 0:  # a long-lived child that inherited everything the parent had
            time.sleep(60)
            os._exit(0)
        held.append(pid)
    else:  # an exec'ed child: descriptors are close-on-exec
        held.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid)
    print(json.dumps({"ours": pool._engine.pids() + [pool._engine.zygote.pid], "held": held}), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("child", ["fork", "exec"])
def test_nothing_outlives_a_killed_parent_whose_child_lives_on(child: str) -> None:
    held: list[int] = []
    with subprocess.Popen([sys.executable, "-c", HELD_SCRIPT, child], stdout=subprocess.PIPE, text=True) as proc:
        _check_nothing_outlives(proc, held)


def _check_nothing_outlives(proc: subprocess.Popen, held: list[int]) -> None:
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        held += info["held"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The zygote and the workers go with the parent, though its child lives on.
        assert _wait_gone(info["ours"]) == []
        assert all(_alive(p) for p in held)
    finally:
        proc.kill()
        proc.wait()
        for p in held:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def zygote() -> Iterator[Any]:
    """A zygote holding the string "held", ended after the test."""
    from paralelo import _zygote

    z = _zygote.Zygote("held")
    yield z
    z.close()


def _spawned_entry(fds: list[int], inherited: str, word: str) -> None:
    """Run by a process the zygote spawns: writes what the zygote inherited and `word` into
    the fd it was passed (the last fd is a pidfd on the zygote's parent)."""
    assert len(fds) == 2
    os.write(fds[0], f"{inherited} {word}".encode())
    os.close(fds[0])


def test_the_zygote_spawns_any_entry_with_its_fds_and_reports_its_exit(zygote: Any) -> None:
    from paralelo import _zygote

    z = zygote
    r, w = os.pipe()
    try:
        pid, pidfd = z.spawn(f"{__name__}:_spawned_entry", ("hello",), [w])
        os.close(w)
        assert os.read(r, 100) == b"held hello"
        select.select([pidfd], [], [], 10)  # readable once it exited
        assert _zygote.describe_exit(z.exit_status(pid)) == "it exited with code 0"
        os.close(pidfd)
        # An entry that cannot be found fails in the child, which says how it died.
        pid, pidfd = z.spawn(f"{__name__}:no_such_entry", (), [])
        select.select([pidfd], [], [], 10)
        assert _zygote.describe_exit(z.exit_status(pid)) == "it exited with code 1"
        os.close(pidfd)
        assert z.exit_status(pid) is None  # already reported: the zygote forgot it
    finally:
        os.close(r)


def test_the_zygote_starts_its_first_processes_unasked() -> None:
    """A pool's first workers: started as soon as the zygote runs, each with its own copy of
    the fds given, collected in order (`first_spawned` never waits)."""
    from paralelo import _zygote

    r, w = os.pipe()
    z = _zygote.Zygote("held", (f"{__name__}:_spawned_entry", [("one",), ("two",)], [w]))
    try:
        os.close(w)  # the zygote has its own copy
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            started = z.first_spawned()
            if started is None:
                time.sleep(0.001)
            else:
                got.append(started)
        assert len(got) == 2
        for pid, pidfd in got:
            select.select([pidfd], [], [], 10)
            assert _zygote.describe_exit(z.exit_status(pid)) == "it exited with code 0"
            os.close(pidfd)
        words = b""
        while words.count(b"held") < 2:  # (no EOF: the zygote inherited `w` too)
            words += os.read(r, 100)
        assert sorted(words.decode().replace("held ", " ").split()) == ["one", "two"]
    finally:
        os.close(r)
        z.close()


def test_a_request_made_before_the_first_processes_are_collected_keeps_them() -> None:
    from paralelo import _zygote

    null = os.open(os.devnull, os.O_WRONLY)
    z = _zygote.Zygote("held", (f"{__name__}:_spawned_entry", [("one",), ("two",)], [null]))
    try:
        # Answered after the first two: reading its reply must keep theirs, not dispose
        # of them (which would kill those processes).
        pid, pidfd = z.spawn(f"{__name__}:_spawned_entry", ("three",), [null])
        firsts = [z.first_spawned(wait=True), z.first_spawned(wait=True)]
        for p, fd in [(pid, pidfd), *firsts]:
            select.select([fd], [], [], 10)
            assert _zygote.describe_exit(z.exit_status(p)) == "it exited with code 0"
            os.close(fd)
    finally:
        os.close(null)
        z.close()


def test_an_executor_whose_workers_leave_at_once_starts_cleanly() -> None:
    """A worker may answer (here: leave, after one task) before the collector took its pid
    from the zygote: it is taken first."""
    import paralelo

    for _ in range(8):
        with paralelo.ProcessPoolExecutor(2, max_tasks_per_child=1) as ex:
            assert list(ex.map(abs, range(-6, 0))) == [6, 5, 4, 3, 2, 1]


def test_each_worker_holds_its_pools_shared_memory_once() -> None:
    """...and nothing of the parent's other pools: not their shared memory, not pidfds on
    their workers, nor the epoll and eventfd of the parent's death watch, whose thread runs."""
    import gc

    import paralelo

    gc.collect()  # (a pool of an earlier test that only the collector will free holds its hub open)
    # (Another library's event loop in this process, an earlier test's Dask client's, is
    # inherited as with fork: only the death watch's, made below, must not be.)
    theirs = {fd for fd, link in _fd_links(os.getpid()).items() if "eventpoll" in link or "eventfd" in link}
    with paralelo.Pool(2) as other, paralelo.Pool(2) as pool:
        assert other.map(abs, [-1]) == [1]  # the parent's death watch is running
        for pid in pool._engine.pids():
            # A worker just forked still holds its forker's copies for a moment (they are
            # the first thing it closes): what it holds is read until it settles.
            deadline = time.monotonic() + 10
            while True:
                by_fd = _fd_links(pid)
                links = list(by_fd.values())
                try:
                    # (Its pool's hub only: another memfd the parent had open at the fork, a
                    # segment an earlier test left for the collector, is inherited as with fork.)
                    assert sum("memfd:paralelo-hub" in link for link in links) == 1, links
                    assert sum("memfd:paralelo-arena" in link for link in links) == 1, links  # the program's
                    assert sum("pidfd" in link for link in links) == 1, links  # on its pool's owner
                    assert not any("eventpoll" in link or "eventfd" in link
                                   for fd, link in by_fd.items() if fd not in theirs), links
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)


def _fd_links(pid: int) -> dict[int, str]:
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # (closed meanwhile)
            links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return links


def test_the_zygote_answers_a_malformed_request_with_an_error(zygote: Any) -> None:
    from paralelo import _zygote

    z = zygote
    with pytest.raises(OSError, match="unknown request 9"):
        z._ask(9, b"", [])
    # ...and it still serves.
    r, w = os.pipe()
    pid, pidfd = z.spawn(f"{__name__}:_spawned_entry", ("again",), [w])
    os.close(w)
    assert os.read(r, 100) == b"held again"
    os.close(r)
    select.select([pidfd], [], [], 10)
    z.exit_status(pid)
    os.close(pidfd)


def _write_pid_then_sleep(fds: list[int], inherited: object) -> None:
    os.write(fds[0], str(os.getpid()).encode())
    time.sleep(60)


def test_the_zygote_survives_bad_requests_and_disposes_of_stale_replies(zygote: Any) -> None:
    import socket

    from paralelo import _zygote

    z = zygote
    with pytest.raises(OSError, match="unpack"):
        z._ask(_zygote.STATUS, b"xy", [])  # a STATUS body too short
    with pytest.raises(ValueError, match="at most"):
        z.spawn(f"{__name__}:_spawned_entry", ("x" * 100_000,), [])
    # A request whose caller was interrupted before the reply came (Ctrl-C in Pool()):
    # its reply is stale, and the process it started must not live on.
    r, w = os.pipe()
    body = f"{__name__}:_write_pid_then_sleep".encode() + b"\0" + pickle.dumps(())
    with z._lock:
        socket.send_fds(z.sock, [_zygote._REQUEST.pack(_zygote.SPAWN, 999_999, len(body)) + body], [w])
    os.close(w)
    orphan = int(os.read(r, 100))
    os.close(r)
    null = os.open(os.devnull, os.O_WRONLY)
    pid, pidfd = z.spawn(f"{__name__}:_spawned_entry", ("ok",), [null])
    os.close(null)
    assert _wait_gone([orphan]) == []
    select.select([pidfd], [], [], 10)
    assert z.exit_status(pid) is not None
    os.close(pidfd)



def test_a_big_parent_leaves_even_its_first_worker_to_the_zygote(monkeypatch) -> None:
    import paralelo
    from paralelo import _zygote

    assert _zygote.small_process()  # this test process forks its first worker itself...
    monkeypatch.setattr(_zygote, "DIRECT_FORK_MAX_RSS", 0)  # ...unless it is "big"
    with paralelo.Pool(1) as pool:
        assert not pool._engine.own_children
        assert pool.apply(abs, (-1,)) == 1


def test_large_results_kept_for_reuse_leave_a_parent_small(monkeypatch) -> None:
    np = pytest.importorskip("numpy")
    import paralelo
    from paralelo import _recycled, _zygote

    def resident() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    a = np.ones(8 << 20)
    if _recycled.KEEP < a.nbytes:
        pytest.skip("PARALELO_KEEP_RESULTS_MB keeps no 64 MiB result")
    _recycled.release()
    monkeypatch.setattr(_zygote, "DIRECT_FORK_MAX_RSS", resident() + (32 << 20))
    before = resident()
    try:
        r = paralelo.evaluate("a + 1", {"a": a})
        assert r[-1] == 2.0
        del r
        assert _recycled.kept() >= a.nbytes  # 64 MiB resident, waiting for the next result...
        assert resident() - before >= a.nbytes // 2
        assert _zygote.small_process()  # ...is not what makes a parent costly to fork
        with paralelo.Pool(1) as pool:
            assert set(pool._engine.own_children) == set(pool._engine.pids())
            assert pool.apply(abs, (-1,)) == 1
    finally:
        _recycled.release()


HUNG_STDLIB_SCRIPT = """
import multiprocessing as mp, time
def nap():
    time.sleep(60)
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q = ctx.Queue()  # semaphores in /dev/shm, owned by the resource tracker
    p = ctx.Process(target=nap); p.start()
    print("started", flush=True)
    p.join()
"""


def test_a_script_past_its_timeout_leaves_no_process_nor_semaphore(tmp_path) -> None:
    # The harness that runs rivals side by side ends a hung one's whole process group.
    import subprocess
    import sys

    from scripts import run_group

    def spawned() -> set[str]:
        found = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True)
        return set(found.stdout.split())

    before, children = set(os.listdir("/dev/shm")), spawned()
    script = tmp_path / "hung.py"
    script.write_text(HUNG_STDLIB_SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, str(script)], 3)
    deadline = time.monotonic() + 10
    while set(os.listdir("/dev/shm")) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(os.listdir("/dev/shm")) - before
    assert not spawned() - children
