"""``paralelo.comm`` and ``paralelo run``: mpi4py's API over shared memory. The same
programs run under ``paralelo run -n N`` and, where MPICH and mpi4py are installed, under
``mpiexec -n N`` (where paralelo.comm is mpi4py's own), and print the same lines."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from scripts import run_group

T = 60
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _has_mpi() -> bool:
    if shutil.which("mpiexec") is None:
        return False
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True, timeout=T)
    return probe.returncode == 0


HAS_MPI = _has_mpi()

#: Every method, as a program prints it: one line per fact, prefixed with the rank, sorted
#: afterwards (ranks print at once).
PROGRAM = textwrap.dedent('''
    import sys
    import numpy as np
    from paralelo import comm as MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = []
    say = lambda *a: out.append(" ".join(map(str, (rank,) + a)))

    say("size", size, comm.rank == rank, comm.size == size)
    say("bcast", comm.bcast({"k": [1, 2.5, 3j]} if rank == 0 else None, root=0))
    say("bcast-last", comm.bcast(rank * 10, root=size - 1))
    say("scatter", comm.scatter([i * i for i in range(size)] if rank == 0 else None, root=0))
    say("gather", comm.gather(rank + 1, root=size - 1))
    say("allgather", comm.allgather(str(rank)))
    say("alltoall", comm.alltoall([(rank, j) for j in range(size)]))
    for name in ("SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "REPLACE", "NO_OP"):
        op = getattr(MPI, name)
        say("allreduce", name, comm.allreduce(rank + 1, op=op), comm.reduce(rank + 2, op=op, root=0))
    say("maxloc", comm.allreduce((rank % 2, rank), op=MPI.MAXLOC), comm.allreduce((rank % 2, rank), op=MPI.MINLOC))
    concat = MPI.Op.Create(lambda x, y, datatype: x + y, commute=False)
    say("noncommutative", comm.allreduce(str(rank), op=concat), comm.reduce([rank], op=concat, root=0))
    say("scan", comm.scan(rank + 1), comm.exscan(rank + 1))
    comm.barrier()

    # Point to point: tags match in order; ANY_SOURCE / ANY_TAG; status.
    right, left = (rank + 1) % size, (rank - 1) % size
    for tag in (3, 1, 2):
        comm.send(("tagged", rank, tag), dest=right, tag=tag)
    got = [comm.recv(source=left, tag=tag) for tag in (1, 2, 3)]
    say("tags", got)
    comm.send([rank] * 3, dest=right, tag=9)
    status = MPI.Status()
    say("any", comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status), status.Get_source(), status.Get_tag())
    for i in range(5):
        comm.send(i, dest=right, tag=4)
    say("order", [comm.recv(source=left, tag=4) for _ in range(5)])
    request = comm.isend({"n": rank}, dest=right, tag=5)
    incoming = comm.irecv(source=left, tag=5)
    say("nonblocking", incoming.wait(), request.wait())
    say("sendrecv", comm.sendrecv(rank, dest=right, sendtag=6, source=left, recvtag=6))
    synced = comm.issend("sync", dest=right, tag=7)
    status = MPI.Status()
    comm.probe(source=left, tag=7, status=status)
    say("probe", status.Get_source(), comm.iprobe(source=left, tag=7), comm.recv(source=left, tag=7),
        comm.iprobe(source=left, tag=7), synced.wait())
    if rank % 2 == 0:  # (ssend returns once received: paired, or it would wait for ever)
        comm.ssend("ssend", dest=right, tag=13)
        say("ssend", comm.recv(source=left, tag=13))
    else:
        say("ssend", comm.recv(source=left, tag=13))
        comm.ssend("ssend", dest=right, tag=13)
    reqs = [comm.isend(i, dest=right, tag=20 + i) for i in range(3)]
    recvs = [comm.irecv(source=left, tag=20 + i) for i in range(3)]
    say("waitall", MPI.Request.waitall(recvs), MPI.Request.Waitall(reqs))
    comm.send(None, dest=right, tag=8)
    say("empty", comm.recv(source=left, tag=8), comm.recv(source=MPI.PROC_NULL))
    big = np.arange(2_000_000, dtype="d") + rank
    back = comm.sendrecv(big, dest=right, sendtag=10, source=left, recvtag=10)  # (a send alone may wait)
    say("big", back.shape, back[0], back[-1])

    # Buffers.
    a = np.full(4, rank + 1.0)
    b = np.empty(4)
    comm.Allreduce(a, b, op=MPI.SUM)
    say("Allreduce", b.tolist())
    comm.Allreduce(a, b, op=MPI.MAX)
    say("Allreduce-max", b.tolist())
    c = np.full(3, rank + 2, dtype="i")
    d = np.zeros(3, dtype="i")
    comm.Reduce(c, d, op=MPI.PROD, root=0)
    say("Reduce", d.tolist())
    e = np.arange(5, dtype="d") if rank == 0 else np.empty(5)
    comm.Bcast(e, root=0)
    say("Bcast", e.tolist())
    f = np.arange(size * 2, dtype="q") if rank == 0 else None
    g = np.empty(2, dtype="q")
    comm.Scatter(f, g, root=0)
    say("Scatter", g.tolist())
    h = np.empty(size * 2, dtype="q") if rank == 0 else None
    comm.Gather(g, h, root=0)
    say("Gather", None if h is None else h.tolist())
    k = np.empty(size * 2, dtype="q")
    comm.Allgather(g, k)
    say("Allgather", k.tolist())
    m = np.arange(size, dtype="i") + 10 * rank
    n = np.empty(size, dtype="i")
    comm.Alltoall(m, n)
    say("Alltoall", n.tolist())
    p = np.full(3, float(rank))
    q = np.empty(3)
    comm.Sendrecv(p, dest=right, sendtag=11, recvbuf=q, source=left, recvtag=11)
    say("Sendrecv", q.tolist())
    comm.Send([np.full(2, rank, dtype="i"), MPI.INT], dest=right, tag=12)
    r = np.empty(2, dtype="i")
    status = MPI.Status()
    comm.Recv([r, MPI.INT], source=left, tag=12, status=status)
    say("Send", r.tolist(), status.Get_count(MPI.INT))
    s = np.full(3, rank + 1.0)
    comm.Allreduce(MPI.IN_PLACE, s, op=MPI.SUM)
    say("in-place", s.tolist())
    large = np.ones(3_000_000) * (rank + 1)
    total = np.empty_like(large)
    comm.Allreduce(large, total, op=MPI.SUM)
    say("large", total[0], total[-1], float(total.sum()))

    # Communicators.
    half = comm.Split(color=rank % 2, key=-rank)
    say("split", half.Get_rank(), half.Get_size(), half.allgather(rank))
    dup = comm.Dup()
    dup.send("dup", dest=right, tag=1)
    comm.send("world", dest=right, tag=1)
    say("dup", comm.recv(source=left, tag=1), dup.recv(source=left, tag=1))
    dup.Free()
    half.Free()
    say("self", MPI.COMM_SELF.Get_size(), MPI.COMM_SELF.allreduce(rank))
    try:
        comm.send(1, dest=size + 3)
    except MPI.Exception as err:
        say("bad-rank", err.Get_error_class() == MPI.ERR_RANK)
    comm.barrier()
    for line in out:
        sys.stdout.write(line + "\\n")  # (one write a line: mpiexec's output keeps lines whole then)
        sys.stdout.flush()
''')


def _run(command: list[str], script: pathlib.Path) -> list[str]:
    out = run_group([*command, sys.executable, str(script)] if command[0] == "mpiexec"
                    else [sys.executable, "-m", "paralelo", "run", *command[1:], str(script)], T, cwd=script.parent)
    assert out.returncode == 0, out.stderr
    return sorted(line for line in out.stdout.splitlines() if line)


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_method_gives_what_mpi4py_on_mpich_gives(tmp_path, ranks):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    ours = _run(["paralelo", "-n", str(ranks)], script)
    assert len(ours) == ranks * 48 and f"0 size {ranks} True True" in ours
    assert f"0 noncommutative {''.join(map(str, range(ranks)))} {list(range(ranks))}" in ours
    if not HAS_MPI:
        pytest.skip("MPICH's mpiexec and mpi4py are not installed: compared with nothing")
    theirs = _run(["mpiexec", "-n", str(ranks)], script)
    assert ours == theirs


@pytest.mark.parametrize("name, expected", [("mpi_bcast_reduce.py", "Total: 12\n"),
                                            ("mpi_scatter_gather.py", "Result: [1, 4, 9, 16]\n")])
def test_the_guides_mpi_examples_run_with_paralelo_run(name, expected):
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "4", str(EXAMPLES / name)], T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected


def _launcher(launcher: str, ranks: int) -> list[str]:
    """The command that starts `ranks` ranks of a script: ``paralelo run``, or MPICH's
    ``mpiexec`` (the test is skipped where that is not installed)."""
    if launcher == "paralelo":
        return [sys.executable, "-m", "paralelo", "run", "-n", str(ranks)]
    if not HAS_MPI:
        pytest.skip("MPICH's mpiexec and mpi4py are not installed")
    return ["mpiexec", "-n", str(ranks), sys.executable]


def _script(tmp_path, body: str) -> pathlib.Path:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_a_rank_that_dies_mid_collective_ends_the_job_with_an_error_not_a_hang(tmp_path):
    script = _script(tmp_path, """
        import os, time
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 1:
            time.sleep(0.3)
            os.kill(os.getpid(), 9)
        try:
            comm.allreduce(comm.rank)
        except MPI.Exception as e:
            print("rank", comm.rank, "got:", e, flush=True)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "3", str(script)], T)
    assert out.returncode == 128 + 9
    why = re.search(r"paralelo run: (rank 1 \(pid \d+\) was killed by signal 9 \(SIGKILL\)); the job was ended",
                    out.stderr)
    assert why, out.stderr
    assert sorted(out.stdout.splitlines()) == [f"rank {r} got: MPI_ERR_OTHER: {why[1]}" for r in (0, 2)]


def test_exit_codes_and_tracebacks_are_the_ranks(tmp_path):
    script = _script(tmp_path, """
        import sys, time
        from paralelo import comm as MPI
        rank = MPI.COMM_WORLD.rank
        if rank == 2:
            raise SystemExit(3)
        if rank == 1:
            raise ValueError("rank one failed")
        time.sleep(30)  # (ended by the launcher)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "3", str(script)], T)
    assert out.returncode in (1, 3)  # the first to fail
    assert "ValueError: rank one failed" in out.stderr and "the job was ended" in out.stderr
    ok = _script(tmp_path, "from paralelo import comm as MPI\nMPI.COMM_WORLD.barrier()\n")
    assert run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(ok)], T).returncode == 0


def test_ctrl_c_stops_every_rank_and_leaves_nothing(tmp_path):
    script = _script(tmp_path, """
        import os, sys
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        print(os.getpid(), flush=True)
        if comm.rank == 0:
            comm.recv(source=1)  # never sent
        else:
            import time
            time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launcher:
        try:
            pids = [int(launcher.stdout.readline()) for _ in range(2)]
            time.sleep(0.3)
            launcher.send_signal(signal.SIGINT)
            assert launcher.wait(T) == 130
            assert "interrupted (Ctrl-C)" in launcher.stderr.read()
            for pid in pids:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()


def test_tag_output_prefixes_each_line_with_its_rank(tmp_path):
    script = _script(tmp_path, """
        import sys
        from paralelo import comm as MPI
        rank = MPI.COMM_WORLD.rank
        for i in range(3):
            print(f"line {i}")
        print("no newline at the end", end="", file=sys.stderr)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", "--tag-output", str(script), "x"], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == sorted(f"[{r}] line {i}" for r in range(2) for i in range(3))
    assert sorted(out.stderr.splitlines()) == ["[0] no newline at the end", "[1] no newline at the end"]


def test_a_plain_run_is_a_world_of_one(tmp_path):
    script = _script(tmp_path, """
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        comm.send("me", dest=0, tag=1)
        print(MPI.BACKEND, comm.rank, comm.size, comm.bcast(5), comm.allreduce(2), comm.recv(source=0, tag=1))
    """)
    out = run_group([sys.executable, str(script)], T)
    assert out.stdout == "shm 0 1 5 2 me\n", out.stderr


def test_bad_arguments_raise_mpi4pys_errors():
    from paralelo import comm as MPI

    with pytest.raises(MPI.Exception, match="MPI_ERR_RANK") as e:
        MPI.COMM_WORLD.send(1, dest=4)
    assert e.value.Get_error_class() == MPI.ERR_RANK
    with pytest.raises(MPI.Exception, match="MPI_ERR_TAG"):
        MPI.COMM_WORLD.send(1, dest=0, tag=-5)
    with pytest.raises(MPI.Exception, match="MPI_ERR_ROOT"):
        MPI.COMM_WORLD.bcast(1, root=2)
    with pytest.raises(MPI.Exception, match="MPI_ERR_OP"):
        MPI.COMM_WORLD.allreduce(1, op="sum")
    with pytest.raises(TypeError, match="buffer protocol"):
        MPI.COMM_WORLD.Bcast(object())
    with pytest.raises(AttributeError, match="paralelo.comm has no 'Win'"):
        MPI.Win  # noqa: B018


def test_a_posted_receive_takes_the_first_message_before_a_later_receive():
    from paralelo import comm as MPI

    comm = MPI.COMM_WORLD
    posted = comm.irecv(source=0, tag=1)
    comm.send("first", dest=0, tag=1)
    comm.send("second", dest=0, tag=1)
    assert comm.recv(source=0, tag=1) == "second"
    assert posted.wait() == "first"
    later = [comm.irecv(source=0, tag=2), comm.irecv(source=MPI.ANY_SOURCE, tag=2)]
    comm.send("a", dest=0, tag=2)
    comm.send("b", dest=0, tag=2)
    assert MPI.Request.waitany(later[1:]) == (0, "b") and later[0].wait() == "a"


@pytest.mark.skipif(not HAS_MPI, reason="MPICH's mpiexec and mpi4py are not installed")
def test_run_with_mpi_hands_the_script_to_mpiexec(tmp_path):
    script = _script(tmp_path, """
        import sys
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        line = f"{MPI.BACKEND} {comm.rank} {comm.size} {comm.allreduce(comm.rank)}\\n"
        sys.stdout.write(line)  # (one write: under mpiexec the ranks share a pipe)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "--mpi", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["mpi 0 2 1", "mpi 1 2 1"]


def test_run_refuses_a_missing_script():
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", "/nonexistent.py"], T)
    assert out.returncode == 2 and "no script at" in out.stderr


@pytest.mark.parametrize("launcher", ["paralelo", "mpiexec"])
def test_large_buffer_reductions_in_place_and_not_commutative(tmp_path, launcher):
    """Buffers of several pieces (PIECE): IN_PLACE, a user op that does not commute
    (folded in rank order), Bcast; checked against numpy in each rank, under both."""
    script = _script(tmp_path, """
        import sys
        import numpy as np
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        rank, size = comm.rank, comm.size
        n = 3_000_001  # (not a multiple of the ranks: segments differ by one)
        parts = [np.random.default_rng(r).random(n) for r in range(size)]
        total = parts[rank].copy()
        comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        ok = [np.allclose(total, sum(parts), rtol=1e-12)]

        def after(invec, inoutvec, datatype):  # inoutvec = 2 * invec + inoutvec
            a = np.frombuffer(invec, dtype="d")
            b = np.frombuffer(inoutvec, dtype="d")
            b[:] = 2 * a + b

        folded = np.empty(n)
        comm.Allreduce(parts[rank], folded, op=MPI.Op.Create(after, commute=False))
        expected = parts[0]
        for p in parts[1:]:
            expected = 2 * expected + p
        ok.append(np.allclose(folded, expected, rtol=1e-12))
        reduced = np.empty(n) if rank == 1 else None
        comm.Reduce(parts[rank], reduced, op=MPI.MAX, root=1)
        ok.append(rank != 1 or bool((reduced == np.maximum.reduce(parts)).all()))
        shared = parts[2] if rank == 2 else np.empty(n)
        comm.Bcast(shared, root=2)
        ok.append(bool((shared == parts[2]).all()))
        sys.stdout.write(f"{rank} {ok}\\n")
    """)
    command = _launcher(launcher, 3)
    out = run_group([*command, str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [f"{r} [True, True, True, True]" for r in range(3)]


CODES = ["d", "f", "q", "l", "i", "h", "b", "Q", "I", "H", "B"]
OPS = {"SUM": "add", "PROD": "multiply", "MAX": "maximum", "MIN": "minimum", "LAND": "logical_and",
       "LOR": "logical_or", "LXOR": "logical_xor", "BAND": "bitwise_and", "BOR": "bitwise_or",
       "BXOR": "bitwise_xor"}


@pytest.mark.parametrize("code", CODES)
def test_the_engines_reductions_compute_what_numpy_computes(code):
    """The buffer reductions run in Rust (``_native.fold``): every operator and type
    against numpy's own ufunc, wrapping and NaNs included, into a fresh output and in
    place."""
    import numpy as np

    from paralelo._native import fold

    rng = np.random.default_rng(7)
    if code in "df":
        a, b = rng.normal(size=1001).astype(code), rng.normal(size=1001).astype(code)
        a[::97] = np.nan
        a[5::50] = 0
    else:
        info = np.iinfo(code)
        a = rng.integers(info.min, info.max, size=1001, dtype=code, endpoint=True)
        b = rng.integers(info.min, info.max, size=1001, dtype=code, endpoint=True)
        a[::50] = 0
    for name, ufunc in OPS.items():
        expected = getattr(np, ufunc)(a, b) if code not in "df" or not name.startswith("B") else None
        out = np.empty_like(a)
        as_bytes = [memoryview(x).cast("B") for x in (out, a, b)]
        if expected is None:
            with pytest.raises(ValueError, match="does not apply to floating-point"):
                fold(name, code, *as_bytes)
            continue
        assert fold(name, code, *as_bytes)
        np.testing.assert_array_equal(out, expected.astype(code), err_msg=f"{name} {code}")
        inplace = a.copy()
        assert fold(name, code, memoryview(inplace).cast("B"), None, as_bytes[2])
        np.testing.assert_array_equal(inplace, expected.astype(code), err_msg=f"{name} {code} in place")


def test_the_engines_reductions_refuse_what_they_cannot_do_safely():
    import numpy as np

    from paralelo._native import fold

    a, b = np.arange(8.0), np.ones(8)
    assert not fold("MAXLOC", "d", memoryview(a).cast("B"), None, memoryview(b).cast("B"))  # (numpy's turn)
    assert not fold("SUM", "e", memoryview(a).cast("B"), None, memoryview(b).cast("B"))
    odd = memoryview(bytearray(65))[1:]  # (not aligned for doubles)
    assert not fold("SUM", "d", odd, None, memoryview(b).cast("B"))
    with pytest.raises(ValueError, match="read-only"):
        fold("SUM", "d", memoryview(bytes(64)), None, memoryview(b).cast("B"))
    with pytest.raises(ValueError, match="overlaps"):
        fold("SUM", "d", memoryview(a).cast("B"), memoryview(a).cast("B"), memoryview(b).cast("B"))
    with pytest.raises(ValueError, match="differ in length"):
        fold("SUM", "d", memoryview(a).cast("B"), None, memoryview(b[:4]).cast("B"))


ORDER = '''
import sys, time
import numpy as np
from paralelo import comm as MPI
comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
# Every rank but 0 sends rank 0 small objects (the fastbox, while it is free), strings
# and arrays too big for it (the inbox), and Send buffers, all with one tag, in bursts
# rank 0 lets pile up: rank 0 must get each sender's in the order sent.
N = 600
if rank:
    for i in range(N):
        kind = i % 5
        if kind == 3:
            comm.send("x" * (200 + i), dest=0, tag=7)
        elif kind == 4:
            comm.send(np.full(3000 + i, i), dest=0, tag=7)
        else:
            comm.send(i, dest=0, tag=7)
    comm.Send(np.arange(10.0) + rank, dest=0, tag=8)
    comm.send(None, dest=0, tag=7)
else:
    got = {r: [] for r in range(1, size)}
    done = 0
    status = MPI.Status()
    while done < size - 1:
        if len(got[1]) % 150 == 0:
            time.sleep(0.02)  # (the senders run ahead)
        item = comm.recv(source=MPI.ANY_SOURCE, tag=7, status=status)
        if item is None:
            done += 1
            continue
        got[status.Get_source()].append(item if isinstance(item, int) else
                                        len(item) - 200 if isinstance(item, str) else int(item[0]))
    for r in range(1, size):
        buf = np.empty(10)
        comm.Recv(buf, source=r, tag=8)
        sys.stdout.write(f"{r} {got[r] == list(range(N))} {buf[0]}\\n")
'''


@pytest.mark.parametrize("launcher", ["paralelo", "mpiexec"])
def test_each_senders_messages_arrive_in_order_whatever_their_size(tmp_path, launcher):
    script = _script(tmp_path, ORDER)
    command = _launcher(launcher, 3)
    out = run_group([*command, str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["1 True 1.0", "2 True 2.0"]


def test_threads_of_a_rank_receive_at_once_without_blocking_each_other(tmp_path):
    """One thread waits for a message that comes only after another thread of the same
    rank got its own and answered: the first must not keep the second from it."""
    script = _script(tmp_path, """
        import sys, threading
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 0:
            out = {}
            def late():
                out["late"] = comm.recv(source=1, tag=1)
            waiting = threading.Thread(target=late)
            waiting.start()
            out["early"] = comm.recv(source=1, tag=2)
            comm.send("answer", dest=1, tag=3)
            waiting.join(30)
            sys.stdout.write(f"{sorted(out.items())}\\n")
        else:
            comm.send("early", dest=0, tag=2)
            assert comm.recv(source=0, tag=3) == "answer"
            comm.send("late", dest=0, tag=1)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[('early', 'early'), ('late', 'late')]\n"


STDIN = """
import sys
from paralelo import comm as MPI
if MPI.COMM_WORLD.rank == 0:
    sys.stdout.write(f"0 {input()!r}\\n")
else:
    sys.stdout.write(f"{MPI.COMM_WORLD.rank} {sys.stdin.read()!r}\\n")
"""


def test_standard_input_goes_to_rank_0_only(tmp_path):
    script = _script(tmp_path, STDIN)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "3", str(script)], T, input="ana\n")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 'ana'", "1 ''", "2 ''"]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_rank_0_reads_a_terminal_without_being_stopped(tmp_path):
    """Rank 0 runs in a process group of its own: reading the terminal itself, the
    terminal would stop it (SIGTTIN) and the job would hang; the launcher reads it."""
    script = _script(tmp_path, STDIN)
    command = f"{shlex.quote(sys.executable)} -m paralelo run -n 2 {shlex.quote(str(script))}"
    out = run_group(["script", "-qec", command, "/dev/null"], T, input="bea\n")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.replace("\r", "").splitlines()
    assert "0 'bea'" in lines and "1 ''" in lines, lines


@pytest.mark.parametrize("launcher", ["paralelo", "mpiexec"])
def test_a_cancelled_receive_completes_cancelled_and_takes_no_message(tmp_path, launcher):
    script = _script(tmp_path, """
        import sys
        import numpy as np
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        rank = comm.rank
        status = MPI.Status()
        lost = comm.irecv(source=MPI.ANY_SOURCE, tag=99)
        lost.Cancel()
        lost.Cancel()  # (again: nothing more to do)
        value = lost.wait(status)
        comm.irecv(source=MPI.PROC_NULL).Cancel()
        buffer_req = comm.Irecv(np.empty(3), source=MPI.ANY_SOURCE, tag=98)
        buffer_req.Cancel()
        buffer_status = MPI.Status()
        buffer_req.Wait(buffer_status)
        comm.barrier()
        if rank == 0:
            comm.send("kept", dest=1, tag=99)
        elif rank == 1:
            got = comm.irecv(source=0, tag=99)
            message = got.wait()
            try:
                got.Cancel()  # (done: no request any more)
            except MPI.Exception as e:
                sys.stdout.write(f"1 after {message} {e.Get_error_class() == MPI.ERR_REQUEST}\\n")
        sys.stdout.write(f"{rank} {value} {status.Is_cancelled()} {buffer_status.Is_cancelled()}\\n")
    """)
    command = _launcher(launcher, 2)
    out = run_group([*command, str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 None True True", "1 None True True", "1 after kept True"]


FULL = '''
import os, sys
from paralelo import comm as MPI
comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
# More than an inbox holds, to every rank at once, before anyone receives: a send
# waiting for room takes in its own mail meanwhile (as MPI's eager sends let it).
everyone = comm.allgather("x" * 600_000 + str(rank))
assert [s[-1] for s in everyone] == [str(r) for r in range(size)]
peer = rank ^ 1
if peer < size:
    for i in range(20_000):
        comm.send([i, "abc"], dest=peer, tag=3)
    got = [comm.recv(source=peer, tag=3)[0] for _ in range(20_000)]
    assert got == list(range(20_000)), got[:5]
sys.stdout.write(f"{rank} ok\\n")
'''


@pytest.mark.parametrize("launcher", ["paralelo", "mpiexec"])
def test_ranks_that_all_send_more_than_an_inbox_holds_before_receiving_go_on(tmp_path, launcher):
    script = _script(tmp_path, FULL)
    command = _launcher(launcher, 3)
    out = run_group([*command, str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 ok", "1 ok", "2 ok"]


def test_a_signal_handler_may_use_comm_while_a_receive_waits(tmp_path):
    script = _script(tmp_path, """
        import signal, sys, time
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 0:
            seen = []
            def handler(signum, frame):
                seen.append(comm.iprobe(source=1, tag=9))  # (the mailbox, from inside a wait)
            signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            got = comm.recv(source=1, tag=1)
            sys.stdout.write(f"{got} {seen}\\n")
        else:
            time.sleep(0.5)
            comm.send("late", dest=0, tag=1)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "late [False]\n"


def test_a_process_forked_from_a_rank_is_told_it_cannot_use_comm(tmp_path):
    script = _script(tmp_path, """
        import os, sys
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        pid = os.fork()
        if pid == 0:
            try:
                comm.send(1, dest=1 - comm.rank)
            except MPI.Exception as e:
                os._exit(3 if "forked" in str(e) else 4)
            os._exit(5)
        _, status = os.waitpid(pid, 0)
        comm.barrier()
        sys.stdout.write(f"{comm.rank} {os.waitstatus_to_exitcode(status)}\\n")
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 3", "1 3"]


def test_threads_waiting_on_one_rank_each_get_their_own(tmp_path):
    """Five threads of rank 0 wait at once, each for its tag; rank 1 sends the tags in
    reverse order: every thread gets its message, whichever thread took it in."""
    script = _script(tmp_path, """
        import sys, threading, time
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 0:
            got = {}
            def receive(tag):
                got[tag] = comm.recv(source=1, tag=tag)
            threads = [threading.Thread(target=receive, args=(t,)) for t in range(5)]
            for t in threads:
                t.start()
            comm.send("go", dest=1, tag=99)
            for t in threads:
                t.join(30)
            requests = [comm.irecv(source=1, tag=10 + i) for i in range(3)]
            comm.send("again", dest=1, tag=99)
            firsts = sorted(MPI.Request.waitany(requests)[1] for _ in range(1))
            rest = [r.wait() for r in requests if not r._null]
            sys.stdout.write(f"{sorted(got.items())} {len(firsts) + len(rest)}\\n")
        else:
            comm.recv(source=0, tag=99)
            time.sleep(0.05)
            for tag in reversed(range(5)):
                comm.send(f"m{tag}", dest=0, tag=tag)
            comm.recv(source=0, tag=99)
            for i in range(3):
                comm.send(i, dest=0, tag=10 + i)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[(0, 'm0'), (1, 'm1'), (2, 'm2'), (3, 'm3'), (4, 'm4')] 3\n"


MPI4PY_WAYS = '''
import sys
import numpy as np
from paralelo import comm as MPI
comm = MPI.COMM_WORLD
rank, other = comm.rank, 1 - comm.rank
out = []
# The waitany idiom: each completed request is inactive after, then UNDEFINED.
requests = [comm.irecv(source=other, tag=t) for t in range(3)]
sends = [comm.isend(t * 100, dest=other, tag=t) for t in range(3)]
while True:
    index, value = MPI.Request.waitany(requests)
    if index == MPI.UNDEFINED:
        break
    out.append((index, value))
out.append(requests[0].wait())  # (inactive: nothing again)
MPI.Request.waitall(sends)
# A plain function as an object reduction's op.
out.append(comm.allreduce(rank + 1, op=lambda a, b: a + b))
out.append(comm.allreduce(rank + 1, op=max))
# Buffers whose sizes do not fit: ValueError, as mpi4py's.
# (Each rank sees it before sending anything; a root's misfit Scatter would leave the
# others waiting, under MPI too.)
for name, call in [("Allreduce", lambda: comm.Allreduce(np.ones(4), np.empty(3))),
                   ("Allgather", lambda: comm.Allgather(np.ones(3), np.empty(7)))]:
    try:
        call()
        out.append(name + " ok")
    except ValueError:
        out.append(name + " ValueError")
comm.barrier()
sys.stdout.write(f"{rank} {sorted(out[:3])} {out[3:]}\\n")
'''


@pytest.mark.parametrize("launcher", ["paralelo", "mpiexec"])
def test_waitany_plain_function_ops_and_misfit_buffers_as_mpi4py(tmp_path, launcher):
    script = _script(tmp_path, MPI4PY_WAYS)
    command = _launcher(launcher, 2)
    out = run_group([*command, str(script)], T)
    assert out.returncode == 0, out.stderr
    expected = "[(0, 0), (1, 100), (2, 200)] [None, 3, 2, 'Allreduce ValueError', 'Allgather ValueError']"
    assert sorted(out.stdout.splitlines()) == [f"0 {expected}", f"1 {expected}"]


def test_a_bcast_into_a_larger_buffer_is_an_error_and_a_missing_method_says_so(tmp_path):
    script = _script(tmp_path, """
        import sys
        import numpy as np
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        try:
            comm.Bcast(np.ones(4) if comm.rank == 0 else np.zeros(6), root=0)
            got = "ok"
        except MPI.Exception as e:
            got = "the buffers differ" in str(e)
        try:
            comm.Ineighbor_alltoall
        except AttributeError as e:
            hint = "does not offer" in str(e)
        sys.stdout.write(f"{comm.rank} {got} {hint}\\n")
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 ok True", "1 True True"]


def test_run_passes_everything_after_the_script_to_it_as_mpiexec_does(tmp_path):
    script = _script(tmp_path, "import sys\nsys.stdout.write(repr(sys.argv[1:]) + chr(10))\n")
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "1", str(script), "--", "-v", "x"], T)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "['--', '-v', 'x']\n"


def test_ranks_ended_by_anothers_failure_say_so_in_one_line_under_its_traceback(tmp_path):
    script = _script(tmp_path, """
        import time
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 1:
            time.sleep(0.2)
            raise ValueError("the real problem")
        comm.allreduce(comm.rank)
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "3", str(script)], T)
    assert out.returncode == 1
    assert out.stderr.count("Traceback") == 1 and "ValueError: the real problem" in out.stderr, out.stderr
    assert "_launch.py" not in out.stderr and "runpy" not in out.stderr  # (the script's frames, as python shows)
    for rank in (0, 2):
        assert f"paralelo run: rank {rank} stopped: MPI_ERR_OTHER: rank 1 (pid" in out.stderr, out.stderr


def test_an_ssend_whose_object_cannot_be_read_still_returns(tmp_path):
    """The receiver gets the unpickling error; the sender, waiting for the receipt,
    hears of it all the same instead of waiting for ever."""
    script = _script(tmp_path, """
        import sys
        from paralelo import comm as MPI
        comm = MPI.COMM_WORLD

        def refuse():
            raise RuntimeError("cannot be read here")

        class Unreadable:
            def __reduce__(self):
                return (refuse, ())

        if comm.rank == 0:
            comm.ssend(Unreadable(), dest=1)
            sys.stdout.write("0 sent\\n")
        else:
            try:
                comm.recv(source=0)
            except RuntimeError as e:
                sys.stdout.write(f"1 {e}\\n")
    """)
    out = run_group([sys.executable, "-m", "paralelo", "run", "-n", "2", str(script)], T)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == ["0 sent", "1 cannot be read here"]
