"""``Pipe``, ``Connection`` and ``connection.wait``: side by side with multiprocessing on
the same script, and what the shared-memory pipe must survive (a writer killed
mid-message, connections passed to a running pool's tasks, ``select`` on ``fileno()``)."""

from __future__ import annotations

import os
import pickle
import select
import signal
import threading
import time

import pytest

import paralelo
from paralelo.connection import wait
from scripts import side_by_side
from test_sharedctypes import HEAD


def test_pipes_match_multiprocessing(tmp_path) -> None:
    outs = side_by_side(tmp_path, HEAD.replace("import paralelo as mp", "import paralelo as mp\n    from paralelo.connection import wait").replace(
        "import multiprocessing as mp", "import multiprocessing as mp\n    from multiprocessing.connection import wait") + """
def echo(conn):
    while True:
        x = conn.recv()
        if x is None:
            break
        conn.send(x)
    logging.info("echo done")  # (before the reply: the parent prints after it)
    conn.send_bytes(b"abcdef", 2, 3)
    conn.close()
def writer(w, n):
    for i in range(n):
        w.send(i)
    w.close()
if __name__ == "__main__":
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,)); p.start(); b.close()
    print(all(a.send(i) or a.recv() == i for i in range(2000)))
    a.send({"k": [1, 2], "arr": np.arange(3)}); print(a.recv())
    big = os.urandom(3_000_000); a.send(big); print(a.recv() == big)
    a.send(None)
    print(a.recv_bytes())
    try:
        a.recv()
    except EOFError:
        print("EOFError")
    print(a.poll(), a.poll(0.1), a.poll(None))
    p.join()
    print(a.closed, a.readable, a.writable); a.close(); print(a.closed)
    for call in (a.recv, lambda: a.send(1), a.poll, a.fileno):
        try:
            call()
        except OSError as e:
            print("OSError", e)
    r, w = mp.Pipe(False)
    print(r.readable, r.writable, w.readable, w.writable)
    for call in (lambda: r.send(1), w.recv, w.poll):
        try:
            call()
        except OSError as e:
            print("OSError", e)
    print(r.poll(), r.poll(0.05))
    ps, readers = [], []
    for k in range(3):
        r, w = mp.Pipe(False)
        q = mp.Process(target=writer, args=(w, 100 * (k + 1))); q.start(); w.close()
        readers.append(r); ps.append(q)
    counts = {id(r): 0 for r in readers}
    live = list(readers)
    while live:
        for r in wait(live, timeout=10):
            try:
                r.recv(); counts[id(r)] += 1
            except EOFError:
                live.remove(r)
    print(sorted(counts.values()))
    for q in ps:
        q.join()
    print(wait([ps[0].sentinel], 1) == [ps[0].sentinel], wait(readers[:1], 0.05) == readers[:1])
    r, w = mp.Pipe()
    print(wait([r], 0.05))
    w.send_bytes(bytearray(b"xyz")); buf = bytearray(10)
    print(r.recv_bytes_into(buf, 2), buf)
    w.send_bytes(np.arange(4, dtype=np.int32)); print(len(r.recv_bytes()))
    w.send_bytes(b"0123456789AB")
    try:
        r.recv_bytes_into(bytearray(4))
    except mp.BufferTooShort as e:
        print("BufferTooShort", e.args[0])
    for args in ((b"x", -1), (b"x", 2), (b"xy", 0, -1), (b"xy", 1, 2)):
        try:
            w.send_bytes(*args)
        except ValueError as e:
            print("ValueError", e)
    try:
        r.recv_bytes(-1)
    except ValueError as e:
        print("ValueError", e)
    w.send_bytes(b"toolong")
    try:
        r.recv_bytes(3)
    except OSError as e:
        print("OSError", e, r.closed, r.readable, r.writable)
    with w:
        pass
    print(w.closed)
""")
    assert outs[0].splitlines() == outs[1].splitlines()
    assert "EOFError" in outs[0] and "[100, 200, 300]" in outs[0]


def test_fileno_is_readable_for_select_when_a_message_comes() -> None:
    r, w = paralelo.Pipe()
    fd = r.fileno()
    assert select.select([fd], [], [], 0.05)[0] == []
    w.send("hi")
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert r.recv() == "hi"
    w.close()
    assert select.select([fd], [], [], 5)[0] == [fd]  # the other end closed
    with pytest.raises(EOFError):
        r.recv()
    r.close()


def _reply(conn: paralelo.connection.Connection, x: int) -> int:
    conn.send(x * 2)
    return x


def test_a_connection_goes_to_a_running_pools_tasks() -> None:
    with paralelo.Pool(2) as pool:
        r, w = paralelo.Pipe(duplex=False)
        assert sorted(pool.starmap(_reply, [(w, i) for i in range(4)])) == list(range(4))
        assert sorted(r.recv() for _ in range(4)) == [0, 2, 4, 6]
    r2 = pickle.loads(pickle.dumps(r))
    w.send("via the copy")
    assert r2.recv() == "via the copy"
    for c in (r, w, r2):
        c.close()


def _stream(w: paralelo.connection.Connection) -> None:
    blob = b"s" * 4_000_000
    while True:
        w.send(blob)


def test_a_writer_killed_mid_message_leaves_an_end_of_file_not_a_hang() -> None:
    r, w = paralelo.Pipe(duplex=False)
    p = paralelo.Process(target=_stream, args=(w,))
    p.start()
    w.close()
    assert len(r.recv()) == 4_000_000
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    start = time.monotonic()
    with pytest.raises(EOFError):
        while True:
            assert len(r.recv()) == 4_000_000  # whole messages only, then the end
    assert time.monotonic() - start < 5
    r.close()


def test_a_send_to_a_closed_reader_raises_broken_pipe_with_its_errno() -> None:
    r, w = paralelo.Pipe(duplex=False)
    r.close()
    time.sleep(0.002)  # (a send looks for its reader at most once a millisecond)
    with pytest.raises(BrokenPipeError) as e:
        w.send("x")
    assert e.value.errno == 32
    with pytest.raises(BrokenPipeError):
        for _ in range(100):
            w.send_bytes(b"f" * 100_000)  # and a send that waits for room sees it too
    w.close()


def test_wait_mixes_pipes_sockets_and_sentinels() -> None:
    import socket

    r1, w1 = paralelo.Pipe()
    s1, s2 = socket.socketpair()
    assert wait([r1, s1], 0.05) == []
    s2.send(b"x")
    assert wait([r1, s1], 5) == [s1]
    w1.send(1)
    assert set(map(id, wait([r1, s1], 5))) == {id(r1), id(s1)}
    for c in (r1, w1, s1, s2):
        c.close()


def test_fileno_readiness_is_exact_after_each_receive_and_survives_a_childs_close() -> None:
    r, w = paralelo.Pipe()
    fd = r.fileno()
    w.send(1)
    w.send(2)
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert r.recv() == 1
    assert select.select([fd], [], [], 0)[0] == [fd]  # one is left
    assert r.recv() == 2
    assert select.select([fd], [], [], 0.05)[0] == []  # none is: not readable
    p = paralelo.Process(target=r.close)  # a child's copy closes; ours stays watched
    p.start()
    p.join()
    w.send(3)
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert r.recv() == 3
    r.close()
    w.close()


def test_end_of_file_comes_at_once_and_after_the_last_message() -> None:
    r, w = paralelo.Pipe()
    w.send("last")
    w.close()
    start = time.monotonic()
    assert r.recv() == "last"
    with pytest.raises(EOFError):
        r.recv()
    assert time.monotonic() - start < 1  # (not a slice of waiting per look)
    r2, w2 = paralelo.Pipe()
    threading.Timer(0.1, w2.close).start()  # closed while the reader sleeps
    with pytest.raises(EOFError):
        r2.recv()
    r.close()
    r2.close()


def test_send_bytes_takes_any_byte_buffer() -> None:
    import array
    import ctypes

    r, w = paralelo.Pipe()
    w.send_bytes(array.array("b", [1, 2, 3]))
    w.send_bytes((ctypes.c_char * 3)(*b"abc"))
    assert r.recv_bytes() == b"\x01\x02\x03" and r.recv_bytes() == b"abc"
    r.close()
    w.close()


def test_select_wakes_for_a_message_larger_than_the_ring() -> None:
    r, w = paralelo.Pipe(duplex=False)
    fd = r.fileno()
    big = b"b" * (8 << 20)  # eight times the ring: its first fragments must be read first
    t = threading.Thread(target=w.send_bytes, args=(big,))
    t.start()
    assert select.select([fd], [], [], 10)[0] == [fd]
    assert r.recv_bytes() == big
    t.join(10)
    assert wait([r], 0.05) == []
    r.close()
    w.close()


SPAWNED_END = """
import sys
if sys.argv[1] == "paralelo":
    import paralelo as mp
else:
    import multiprocessing as mp

def double(conn):
    conn.send(conn.recv() * 2)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()  # (globals: dropped only as the interpreter ends, in both processes)
    p = ctx.Process(target=double, args=(b,))
    p.start()
    a.send(21)
    print(a.recv())
    p.join()
"""


def test_pipe_ends_left_to_the_interpreters_end_close_quietly(tmp_path):
    """Module globals (`os` among them) may be gone when a connection left in one is
    collected: closing it then still works, and nothing is printed."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(SPAWNED_END)
    for lib in ("paralelo", "multiprocessing"):
        out = subprocess.run([sys.executable, str(script), lib], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert (out.returncode, out.stdout, out.stderr) == (0, "42\n", ""), lib
