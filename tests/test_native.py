"""The Rust extension refuses bad input with clear Python exceptions, and its rings carry
messages between threads of one process exactly (the cross-process cases are the engine's
own Rust tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import paralelo
from paralelo import _native


def test_bad_hub_shapes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="1 to 65536 slots, not 0"):
        _native.Hub(0)
    with pytest.raises(ValueError, match="power of two"):
        _native.Hub(1, capacity=1000)
    with pytest.raises(OverflowError):
        _native.Hub(-1)


def test_bad_ports_are_refused() -> None:
    hub = _native.Hub(2, capacity=4096)
    with pytest.raises(ValueError, match="bad fd"):
        _native.Port(-1, 0)
    with pytest.raises(ValueError, match="out of range"):
        _native.Port(hub.fd, 2)
    r, w = os.pipe()
    try:
        with pytest.raises((OSError, ValueError)):
            _native.Port(r, 0)  # not a hub segment
    finally:
        os.close(r)
        os.close(w)


def test_reserved_tags_and_bad_timeouts_are_refused() -> None:
    hub = _native.Hub(1, capacity=4096)
    port = _native.Port(hub.fd, 0)
    with pytest.raises(ValueError, match="reserved"):
        hub.post(0, _native.MAX_TAG + 1, 0, 0, 0, b"")
    with pytest.raises(ValueError, match="timeout"):
        port.recv(timeout=-1.0)
    with pytest.raises(ValueError, match="timeout"):
        hub.recv(timeout=float("nan"))


def test_messages_round_trip_with_headers_and_big_payloads() -> None:
    hub = _native.Hub(1, capacity=4096)
    port = _native.Port(hub.fd, 0)
    big = os.urandom(100_000)  # 25 ring capacities: streams through the outbox
    hub.post(0, 3, 7, 1, 9, b"small")
    hub.post(0, 3, 7, 2, 0, big)
    got = []
    for _ in range(10_000):  # one thread plays both sides: no blocking waits
        got += port.recv(timeout=0)
        hub.recv(timeout=0)  # the parent's receiving thread is what flushes outboxes
        if len(got) == 2:
            break
    assert got == [(3, 7, 1, 9, b"small"), (3, 7, 2, 0, big)]
    port.send(16, 7, 1, 123, b"answer")
    assert hub.recv(timeout=5) == ([(0, 16, 7, 1, 123, b"answer")], [])
    assert hub.recv(timeout=0.01) == ([], [])


def test_payloads_received_stay_whole_while_the_buffers_are_reused() -> None:
    # Both ends keep their receive buffers between calls: what a call returned must not
    # change when a later call reuses them, and a message bigger than what is kept (4 MB)
    # passes like any other.
    hub = _native.Hub(1, capacity=1 << 16)
    port = _native.Port(hub.fd, 0)
    sent = [os.urandom(n) for n in (20_000, 9_000, 5 << 20, 30_000, 100)]
    for i, payload in enumerate(sent):
        hub.post(0, 3, 7, i, 0, payload)
    got: list = []
    for _ in range(100_000):
        got += port.recv(timeout=0, max=1)
        hub.recv(timeout=0)
        if len(got) == len(sent):
            break
    assert [m[4] for m in got] == sent
    small = [p for p in sent if len(p) < 1 << 14]  # results: what fits the ring at once
    for i, payload in enumerate(small):
        port.send(16, 7, i, 0, payload, timeout=0)
    answers: list = []
    while len(answers) < len(small):
        answers += hub.recv(timeout=5)[0]
    assert [m[5] for m in answers] == small


def test_the_slot_state_names_what_the_worker_does() -> None:
    hub = _native.Hub(1, capacity=4096)
    port = _native.Port(hub.fd, 0)
    assert hub.state(0) == ("idle", 0)
    for mark, want in [
        (lambda: port.running(7), ("running", 7)),
        (lambda: port.unpacking(9), ("unpacking", 9)),
        (lambda: port.loading(3), ("loading", 3)),
        (port.initializing, ("initializing", 0)),
        (port.idle, ("idle", 0)),
    ]:
        mark()
        assert hub.state(0) == want
    port.running(5)
    hub.reset_slot(0)
    assert hub.state(0) == ("idle", 0)
    with pytest.raises(ValueError, match="ids up to"):
        port.running(1 << 62)


def _in_thread(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def test_a_thread_in_recv_does_not_block_reset_slot() -> None:
    # Used to deadlock: recv held the results lock while its poll re-took the GIL, and
    # reset_slot waited for that lock while holding the GIL.
    hub = _native.Hub(2, capacity=4096)
    waiter = _in_thread(hub.recv, 3.0)
    time.sleep(0.1)
    t = time.monotonic()
    for _ in range(20):
        hub.reset_slot(0)
        time.sleep(0.005)  # lets the waiter's poll run (it takes the GIL)
    hub.wake()
    waiter.join(10)
    assert not waiter.is_alive()
    assert time.monotonic() - t < 2.5


def test_notify_does_not_wait_for_a_thread_blocked_in_send() -> None:
    # Used to deadlock: send held the ring's lock while waiting for room (re-taking the
    # GIL between slices), and notify waited for that lock holding the GIL.
    hub = _native.Hub(1, capacity=4096)
    port = _native.Port(hub.fd, 0)
    sender = _in_thread(port.send, 16, 1, 1, 0, b"x" * 100_000, 10.0)
    time.sleep(0.1)
    t = time.monotonic()
    for _ in range(20):
        port.notify()
        time.sleep(0.005)
    assert time.monotonic() - t < 2.5
    got = b""
    while not got:
        msgs, _ = hub.recv(timeout=5)
        got = b"".join(m[5] for m in msgs)
    sender.join(10)
    assert got == b"x" * 100_000


def test_many_threads_post_to_one_hub() -> None:
    hub = _native.Hub(1, capacity=4096)
    port = _native.Port(hub.fd, 0)
    n, threads = 300, 4

    def post(t: int) -> None:
        for i in range(n):
            hub.post(0, 3, t, i, 0, bytes([t]) * (i % 500))

    posters = [_in_thread(post, t) for t in range(threads)]
    got: dict[int, list[int]] = {t: [] for t in range(threads)}
    deadline = time.monotonic() + 30
    while sum(map(len, got.values())) < n * threads and time.monotonic() < deadline:
        hub.recv(timeout=0.01)  # flushes outboxes
        for tag, job, seq, _aux, payload in port.recv(timeout=0.01):
            assert payload == bytes([job]) * (seq % 500)
            got[job].append(seq)
    for t in posters:
        t.join(10)
    assert got == {t: list(range(n)) for t in range(threads)}


def test_a_watched_worker_death_is_reported_by_recv() -> None:
    hub = _native.Hub(2, capacity=4096)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.1)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        hub.watch(1, child.pid, pidfd)
        t = time.monotonic()
        events: list = []
        while not events and time.monotonic() - t < 10:
            _, events = hub.recv(timeout=10)
        assert events == [("exited", 1, child.pid, None)]
    finally:
        os.close(pidfd)
        child.wait()


def test_a_corrupt_ring_is_a_typed_event_and_healthy_slots_keep_results() -> None:
    hub = _native.Hub(2, capacity=4096)
    bad, good = _native.Port(hub.fd, 0), _native.Port(hub.fd, 1)
    bad.send(16, 1, 1, 0, b"fine")
    good.send(16, 1, 2, 0, b"healthy")
    # Play a worker that scribbles over its result ring: the frame header before its
    # payload (32 bytes, length first) now claims more than any fragment.
    with open(f"/proc/self/fd/{hub.fd}", "r+b") as f:
        memory = f.read()
        assert memory.count(b"fine") == 1
        f.seek(memory.index(b"fine") - 32)
        f.write((1 << 30).to_bytes(4, "little"))
    msgs, events = hub.recv(timeout=5)
    assert [m[5] for m in msgs] == [b"healthy"]
    [(kind, slot, pid, exc)] = events
    assert (kind, slot, pid) == ("corrupt", 0, 0)  # no worker watched in slot 0
    assert isinstance(exc, paralelo.CorruptRingError) and exc.slot == 0
    assert "frame" in str(exc)
    assert hub.recv(timeout=0.05) == ([], [])  # reported once, then not read


FLAT = [0, 5, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1, -2**63,
        127, 128, -128, -129, 1.5, -0.0, float("inf"), None, True, False, "", "ab", "é" * 10, "x" * 255,
        "x" * 256, "日本" * 5000, b"", b"ab", b"x" * 300]
NOT_FLAT = [2**63, -2**63 - 1, "x" * 40000, "\ud800", 1j, (1,), [1], {}, bytearray(b"x"), float("nan")]


def test_flat_values_pickle_as_the_pickler_writes_them() -> None:
    """A queue's flat messages are pickled natively, byte for byte as pickle.dumps(v, 5)
    would; anything else is left to the pickler (None)."""
    import pickle

    for v in FLAT:
        assert _native.dumps_flat(v) == pickle.dumps(v, 5), v
    for v in NOT_FLAT:
        got = _native.dumps_flat(v)
        assert got is None or got == pickle.dumps(v, 5), v


class _Int(int):
    pass


def test_pickles_of_flat_values_are_read_as_the_unpickler_would() -> None:
    """Whatever protocol (2 to 5) and framing made them, pickles of flat values come out
    of a queue as pickle.loads gives them; others (an int subclass, a tuple) too."""
    import math
    import pickle

    ch = _native.Channel()
    for proto in range(2, 6):
        for v in FLAT + NOT_FLAT + [_Int(3), (1, "a")]:
            ch.send(pickle.dumps(v, proto))
            got = ch.recv(None, -1, -1, True)
            assert type(got) is type(v), (proto, v)
            assert got == v or (isinstance(v, float) and math.isnan(v) and math.isnan(got)), (proto, v)
    # Pickles these readers refuse go to the unpickler, which says what is wrong with
    # them (or reads them: 9 bytes of LONG1 are a valid 0).
    for odd in (b"\x80\x05K", b"\x80\x05K\x01", b"\x80\x05K\x01.x", b"\x80\x05\x8c\x05ab.",
                b"\x80\x05\x8a\x09" + bytes(9) + b".", b"\x80\x05\x8c\x01\xff.",
                b"\x80\x05\x95" + (100).to_bytes(8, "little") + b"K\x05.",  # a frame past the end
                b"\x80\x05\x95" + bytes([255] * 8) + b"K\x05."):
        try:
            want: object = pickle.loads(odd)
        except Exception as e:  # noqa: BLE001
            want = type(e)
        ch.send(odd)
        try:
            got = ch.recv(None, -1, -1, True)
        except Exception as e:  # noqa: BLE001
            got = type(e)
        assert got == want, odd


def test_a_queue_carries_flat_values_across_processes_as_they_were() -> None:
    q = paralelo.Queue()
    p = paralelo.Process(target=_echo_all, args=(q, FLAT))
    p.start()
    got = [q.get(timeout=30) for _ in FLAT]
    p.join(30)
    assert got == FLAT and [type(v) for v in got] == [type(v) for v in FLAT]


def _echo_all(q, values):
    for v in values:
        q.put(v)
