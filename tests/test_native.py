"""The Rust extension refuses bad input with clear Python exceptions, and its rings carry
messages between threads of one process exactly (the cross-process cases are the engine's
own Rust tests)."""

from __future__ import annotations

import os

import pytest

from paralelo import _native


def test_bad_hub_shapes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
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
    assert hub.recv(timeout=5) == [(0, 16, 7, 1, 123, b"answer")]
    assert hub.recv(timeout=0.01) == []
    port.set_current(7, 2)
    assert hub.current(0) == (7, 2)
    hub.reset_slot(0)
    assert hub.current(0) == (0, 0)
