"""``shared_memory.SharedMemory`` and ``ShareableList``: side by side with the standard
library on the same script, and what memfd segments add (nothing in /dev/shm, ever; a
segment outlives its maker while others use it, and goes with the last of them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from paralelo import shared_memory
from scripts import side_by_side

SCRIPT = """
import sys, os
LIB = sys.argv[1]
if LIB == "paralelo":
    import paralelo as mp
    from paralelo import shared_memory
else:
    import multiprocessing as mp
    from multiprocessing import shared_memory
import numpy as np

def child(name, n):
    s = shared_memory.SharedMemory(name)
    a = np.ndarray((n,), dtype=np.int64, buffer=s.buf)
    a[:] *= 2
    del a
    s.close()

def lchild(sl):
    sl[0] = sl[0] + 1
    sl[2] = "hey"

if __name__ == "__main__":
    s = shared_memory.SharedMemory(create=True, size=800)
    print(s.size, len(s.buf), repr(s).startswith("SharedMemory("))
    a = np.ndarray((100,), dtype=np.int64, buffer=s.buf); a[:] = np.arange(100)
    p = mp.Process(target=child, args=(s.name, 100)); p.start(); p.join()
    print(a[:5], a.sum())
    t = shared_memory.SharedMemory(s.name); print(t.size >= 800, bytes(t.buf[:8]) == bytes(s.buf[:8])); t.close()
    named = shared_memory.SharedMemory("pl_test_seg", create=True, size=10)
    try:
        shared_memory.SharedMemory("pl_test_seg", create=True, size=10)
    except FileExistsError:
        print("FileExistsError")
    named.buf[:3] = b"abc"
    n2 = shared_memory.SharedMemory("pl_test_seg"); print(bytes(n2.buf[:3])); n2.close()
    named.close(); named.unlink()
    try:
        shared_memory.SharedMemory("pl_test_seg")
    except FileNotFoundError:
        print("FileNotFoundError")
    for bad in [dict(create=True, size=0), dict(size=-1), dict()]:
        try:
            shared_memory.SharedMemory(**bad)
        except ValueError as e:
            print("ValueError", e)
    sl = shared_memory.ShareableList([1, 2.5, "hello", b"by", None, True])
    print(list(sl), len(sl), sl.count(1), sl.index("hello"))
    p = mp.Process(target=lchild, args=(sl,)); p.start(); p.join()
    print(list(sl))
    try:
        sl[2] = "a much longer string than before"
    except ValueError as e:
        print("ValueError", e)
    for call in (lambda: sl[10], lambda: sl.__setitem__(10, 1)):
        try:
            call()
        except IndexError as e:
            print("IndexError", e)
    sl2 = shared_memory.ShareableList(name=sl.shm.name); print(list(sl2), sl[-1])
    sl[1] = 7; print(sl2[1])
    try:
        sl.index(99)
    except ValueError as e:
        print("ValueError", e)
    del a
    sl2.shm.close(); sl.shm.close(); sl.shm.unlink()
    s.close(); s.unlink()
"""


def _shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_shared_memory_matches_the_standard_library(tmp_path) -> None:
    outs = side_by_side(tmp_path, SCRIPT)
    assert outs[0] == outs[1]
    assert "FileExistsError" in outs[0] and "[2, 2.5, 'hey', b'by', None, True]" in outs[0]


def _run(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_segment_outlives_its_maker_while_others_hold_it_and_leaves_nothing() -> None:
    before = _shm_entries()
    maker = _run("""
        import sys
        from paralelo import shared_memory
        s = shared_memory.SharedMemory(create=True, size=4096)
        s.buf[:5] = b"hello"
        print(s.name, flush=True)
        input()
    """)
    name = maker.stdout.readline().strip()
    holder = _run("""
        import sys
        from paralelo import shared_memory
        s = shared_memory.SharedMemory(sys.argv[1])
        print(bytes(s.buf[:5]).decode(), flush=True)
        input()
    """, name)
    assert holder.stdout.readline().strip() == "hello"
    maker.kill()  # (the standard library's tracker would unlink it here; SIGKILL: not even that)
    maker.wait(timeout=10)
    late = shared_memory.SharedMemory(name)  # found in the holder's descriptors
    assert bytes(late.buf[:5]) == b"hello"
    late.close()
    holder.kill()
    holder.wait(timeout=10)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name)  # the last holder is gone: so is the memory
    assert _shm_entries() == before
    for p in (maker, holder):
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()


def test_unlink_by_another_process_frees_the_name() -> None:
    s = shared_memory.SharedMemory(create=True, size=100)
    other = shared_memory.SharedMemory(s.name)
    other.unlink()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(s.name)
    s.buf[0] = 7  # the holders keep the memory
    assert other.buf[0] == 7
    other.close()
    s.close()
    with pytest.raises(FileNotFoundError):
        s.unlink()  # (already unlinked, as the standard library says)


RECREATE = """
import sys
if sys.argv[1] == "paralelo":
    import paralelo as mp
    from paralelo import shared_memory as shm
else:
    import multiprocessing as mp
    from multiprocessing import shared_memory as shm

def other(name, out):
    s = shm.SharedMemory(name)
    s.unlink(); s.close()
    n = shm.SharedMemory(name, create=True, size=10)  # the name is free again
    out.put(n.size >= 10); n.unlink(); n.close()

if __name__ == "__main__":
    s = shm.SharedMemory("recreated_name", create=True, size=10)
    out = mp.Queue()
    p = mp.Process(target=other, args=("recreated_name", out)); p.start()
    print(out.get(timeout=30)); p.join(30); print(p.exitcode)
    s.close()
"""


def test_a_name_unlinked_by_another_process_can_be_made_again(tmp_path) -> None:
    # Its maker (alive) still holds the name's lock: a segment no one can attach is no
    # reason to refuse the name, as the standard library does not.
    par, std = side_by_side(tmp_path, RECREATE)
    assert par == std == "True\n0"


CONSUMER_CLEANS_UP = """
import sys
if sys.argv[1] == "paralelo":
    import paralelo as mp
    from paralelo import shared_memory as shm
else:
    import multiprocessing as mp
    from multiprocessing import shared_memory as shm

def make(q, go):
    s = shm.SharedMemory(create=True, size=16)
    s.buf[:3] = b"abc"
    q.put(s.name); go.get(); s.close()

if __name__ == "__main__":
    q, go = mp.Queue(), mp.Queue()
    p = mp.Process(target=make, args=(q, go)); p.start()
    s = shm.SharedMemory(name=q.get(timeout=30))  # attached while its maker lives
    go.put(1); p.join(30)
    print(bytes(s.buf[:3]))
    s.close(); s.unlink()  # the usual cleanup, by the consumer, in the usual order
    print(s.buf)
    try:
        s.unlink()
    except FileNotFoundError:
        print("unlinked already")
    t = shm.SharedMemory("/slashed_name", create=True, size=8)
    print(t.name, shm.SharedMemory("slashed_name").size >= 8)
    t.close(); t.unlink()
"""


def test_a_consumer_unlinks_what_an_ended_maker_made(tmp_path) -> None:
    par, std = side_by_side(tmp_path, CONSUMER_CLEANS_UP,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})  # (3.11's tracker warns)
    assert par == std == "b'abc'\nNone\nunlinked already\n/slashed_name True"


def test_a_header_claiming_more_than_the_segment_has_is_refused() -> None:
    import struct

    s = shared_memory.SharedMemory(create=True, size=100)
    fd = os.dup(s._fd)
    try:
        os.pwrite(fd, struct.pack("<Q", 1 << 30), 8)  # the size field: a lie
        with pytest.raises(OSError, match="more than it has"):
            shared_memory.SharedMemory(s.name)
    finally:
        os.close(fd)
        s.close()
        s.unlink()
