"""``paralelo.trace()`` and ``paralelo trace SCRIPT``: a Chrome trace-event timeline with
a track per worker (every task a span named after its function), the parent's pickling
on its threads, workers' births and deaths; workers of pools made and ended inside the
block too; nothing recorded outside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import paralelo

T = 60


def square(x):
    return x * x


def _valid(path) -> list[dict]:
    """The events of a trace-event file, checked against the format's rules."""
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    for e in events:
        assert e["ph"] in ("X", "i", "M") and isinstance(e["name"], str) and isinstance(e["pid"], int)
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["dur"] >= 0 and "tid" in e
        if e["ph"] == "i":
            assert e["s"] in ("t", "p", "g") and isinstance(e["ts"], (int, float))
    return events


def _tracks(events) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}


def test_a_trace_has_a_track_per_worker_and_a_span_per_task(tmp_path):
    path = tmp_path / "run.json"
    with paralelo.Pool(2) as pool:
        pids = set(pool._engine.pids())
        pool.map(square, range(8))  # (before: not traced)
        with paralelo.trace(path) as t:
            assert pool.map(square, range(100), chunksize=10) == [x * x for x in range(100)]
            assert pool.apply_async(square, (12,)).get(T) == 144
        pool.map(square, range(8))  # (after: not traced)
    events = _valid(path)
    assert t.events == len(events) and t.workers == 2 and t.missing == 0
    tracks = _tracks(events)
    assert pids <= set(tracks) and all(tracks[p].startswith("ForkPoolWorker-") for p in pids)
    chunks = [e for e in events if e["ph"] == "X" and e["cat"] == "map"]
    assert len(chunks) == 10 and {e["name"] for e in chunks} == {"square"}
    assert sum(e["args"]["items"] for e in chunks) == 100 and {e["pid"] for e in chunks} <= pids
    calls = [e for e in events if e["ph"] == "X" and e["cat"] == "call"]
    assert [(c["name"], c["args"]["ok"]) for c in calls] == [("square", True)]
    me = os.getpid()
    assert any(e["cat"] == "pickle" and e["pid"] == me for e in events if e["ph"] == "X")
    assert any(e["cat"] == "unpickle" and e["pid"] == me for e in events if e["ph"] == "X")
    assert tracks[me].startswith("parent")


def test_workers_made_and_ended_inside_are_traced_with_births_and_deaths(tmp_path):
    path = tmp_path / "run.json"
    with paralelo.trace(path) as t:
        with paralelo.ProcessPoolExecutor(2, max_tasks_per_child=5) as ex:
            assert list(ex.map(square, range(20), chunksize=1)) == [x * x for x in range(20)]
        with paralelo.Pool(2) as pool:  # ended by terminate (the `with`): its spans still come
            pool.map(square, range(30), chunksize=3)
    events = _valid(path)
    tasks = [e for e in events if e["ph"] == "X" and e["cat"] == "map"]
    assert sum(e["args"]["items"] for e in tasks) == 50
    assert t.workers >= 6  # (the executor's workers left every 5 tasks)
    instants = [e["name"] for e in events if e["ph"] == "i"]
    assert instants.count("started") >= 6 and instants.count("left (maxtasks)") >= 4
    assert instants.count("left (the pool's end)") >= 1  # (the executor's shutdown)
    assert "ready (initializer done)" in instants


def test_the_engine_records_nothing_outside_a_trace():
    with paralelo.Pool(1) as pool:
        engine = pool._engine
        pool.map(square, range(10))
        assert engine.spans is None and not engine.probes.on
        with paralelo.trace(os.devnull):
            assert engine.spans is not None
        assert engine.spans is None and not engine.probes.on


def test_the_command_traces_a_script(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys
        import paralelo

        def cube(x):
            return x ** 3

        if __name__ == "__main__":
            with paralelo.Pool(2) as pool:
                print(sum(pool.map(cube, range(int(sys.argv[1])), chunksize=5)))
            sys.exit(3)
    """))
    out = subprocess.run([sys.executable, "-m", "paralelo", "trace", str(script), "-o", "t.json", "--", "40"],
                         capture_output=True, text=True, timeout=T, cwd=tmp_path)
    assert out.returncode == 3, out.stderr  # the script's own exit status
    assert out.stdout.strip() == str(sum(x ** 3 for x in range(40)))
    assert "2 workers" in out.stderr and "t.json" in out.stderr
    events = _valid(tmp_path / "t.json")
    cubes = [e for e in events if e["ph"] == "X" and e["name"] == "cube"]
    assert sum(e["args"]["items"] for e in cubes) == 40


@pytest.mark.parametrize("inside", ["profile", "trace"])
def test_a_pool_ended_inside_a_probe_still_answers(inside, tmp_path):
    probe = paralelo.profile() if inside == "profile" else paralelo.trace(tmp_path / "t.json")
    with probe as got:
        with paralelo.Pool(2) as pool:  # terminate() at the end of the `with`
            pool.map(square, range(40), chunksize=4)
    assert got.workers == 2 and got.missing == 0


_SHARED: dict = {}


def _contend(x):
    with _SHARED["lock"]:
        time.sleep(0.01)
    _SHARED["queue"].put(x)
    return x


def test_waits_on_paralelos_primitives_are_on_the_timeline(tmp_path):
    import paralelo.queues
    from paralelo.synchronize import _Lock

    _SHARED.update(lock=paralelo.Lock(), queue=paralelo.Queue())
    get = paralelo.queues.Queue.__dict__["get"]
    path = tmp_path / "run.json"
    with paralelo.Pool(2) as pool:
        with paralelo.trace(path):
            result = pool.map_async(_contend, range(8), chunksize=1)
            got = sorted(_SHARED["queue"].get(timeout=T) for _ in range(8))  # the parent waits too
            result.get(T)
    assert got == list(range(8))
    waits = [e for e in _valid(path) if e["ph"] == "X" and e["cat"] == "wait"]
    me = os.getpid()
    assert any(e["name"] == "wait: Lock" and e["pid"] != me for e in waits)  # workers, for the lock
    assert any(e["name"] == "wait: Queue.get" and e["pid"] == me for e in waits)  # the parent, for results
    assert all(e["args"]["done"] for e in waits)
    # Put back: outside a trace nothing wraps them.
    assert "acquire" not in _Lock.__dict__ and paralelo.queues.Queue.__dict__["get"] is get
    _SHARED.clear()


def _hold_then_signal(sem, cond, event):
    with sem:
        time.sleep(0.2)
    time.sleep(0.1)
    with cond:
        cond.notify_all()
    time.sleep(0.1)
    event.set()


def test_waits_on_semaphores_conditions_and_events_made_before_the_trace_are_traced(tmp_path):
    """Their methods are bound per object: a trace binds those alive again, and its end
    puts the native ones back."""
    sem, cond, event = paralelo.Semaphore(1), paralelo.Condition(), paralelo.Event()
    path = tmp_path / "run.json"
    with paralelo.trace(path):
        child = paralelo.Process(target=_hold_then_signal, args=(sem, cond, event))
        child.start()
        time.sleep(0.05)
        with sem:
            pass
        with cond:
            assert cond.wait(T)
        assert event.wait(T)
        child.join(T)
    assert child.exitcode == 0
    waits = {e["name"]: e for e in _valid(path) if e["ph"] == "X" and e["cat"] == "wait"}
    assert {"wait: Semaphore", "wait: Condition", "wait: Event"} <= set(waits)
    for name in ("wait: Semaphore", "wait: Condition", "wait: Event"):
        assert waits[name]["args"]["done"] and waits[name]["dur"] > 50_000  # (µs: real waits)
    assert sem.acquire == sem._native.acquire and event.wait == event._native.wait


def test_a_ranks_collectives_and_receives_are_on_its_timeline(tmp_path):
    """In a rank of ``paralelo run``, a trace shows the time spent in each collective and
    blocking receive (rank 1 comes late: rank 0's barrier waits for it)."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import paralelo
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        with paralelo.trace(sys.argv[1] + f".{comm.rank}.json"):
            if comm.rank == 1:
                time.sleep(0.2)
            comm.barrier()
            total = comm.allreduce(comm.rank)
            if comm.rank == 0:
                comm.send(total, dest=1)
            else:
                comm.recv(source=0)
    """))
    out = subprocess.run([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script), str(tmp_path / "t")],
                         capture_output=True, text=True, timeout=T)
    assert out.returncode == 0, out.stderr
    for rank in (0, 1):
        waits = {e["name"]: e for e in _valid(tmp_path / f"t.{rank}.json") if e["ph"] == "X" and e["cat"] == "wait"}
        assert {"wait: comm.barrier", "wait: comm.allreduce"} <= set(waits), waits
    rank0 = {e["name"]: e for e in _valid(tmp_path / "t.0.json") if e["ph"] == "X"}
    assert rank0["wait: comm.barrier"]["dur"] > 100_000  # (µs: it waited for rank 1)
    assert "wait: comm.recv" in {e["name"] for e in _valid(tmp_path / "t.1.json")}
    from paralelo._communicator import Comm

    before = Comm.__dict__["barrier"]
    with paralelo.trace(tmp_path / "here.json"):
        assert Comm.__dict__["barrier"] is not before
    assert Comm.__dict__["barrier"] is before  # (put back)


@pytest.mark.parametrize("command, expected", [
    (["trace", "args.py", "--size", "3", "-v"], ["--size", "3", "-v"]),
    (["trace", "args.py", "-o", "t.json", "--size", "3"], ["--size", "3"]),
    (["trace", "-o", "t.json", "args.py", "a", "-o", "b"], ["a", "-o", "b"]),
    (["trace", "args.py", "-o", "t.json", "--", "-o", "z"], ["-o", "z"]),
    (["scaling", "args.py", "--repeats", "1", "--workers", "1", "--chart", "", "--size", "3"], ["--size", "3"]),
])
def test_the_commands_pass_what_follows_the_script_to_it_as_python_would(tmp_path, command, expected):
    """``paralelo trace SCRIPT ARGS`` as ``python SCRIPT ARGS``: the command's own options
    right after SCRIPT are its; from the first word that is not one, the script's."""
    (tmp_path / "args.py").write_text("import sys\nopen('seen.txt', 'w').write(repr(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-m", "paralelo", *command], capture_output=True, text=True,
                         timeout=T, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "seen.txt").read_text() == repr(expected)
    if "t.json" in command[:command.index("args.py") + 3]:
        assert (tmp_path / "t.json").exists()
