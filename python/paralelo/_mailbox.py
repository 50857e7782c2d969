"""A rank's mailbox: the point-to-point layer under ``paralelo.comm``.

Every rank of a job has one inbox, a `Channel` (a ring in shared memory that any process
sends into) made by the launcher before it forks the ranks, so each rank holds all of
them. The mailbox itself (`_native.Mailbox`, the engine's ``comm::Mailbox``) matches
messages as MPI does: a receive takes the first message, in arrival order, whose
context, source and tag it asks for; one that came first and did not match waits for a
receive that wants it; a receive posted ahead (irecv) gets its message before any
receive made after it. Each communicator has a context of its own for point-to-point
messages and another for its collectives, so they never match each other.

What is here is the Python side of a message: its payload. A pickle, whose large
buffers travel through the arena (`_arena`: given to the message, arriving as views,
never through the ring), or raw bytes for the buffer methods (inline, or a RAW frame:
its bytes in one arena block).

The launcher ends a job whose rank died by sending every inbox an abort message naming
it (``PostOffice.abort``): a rank waiting in a receive raises `MPIError` with that reason
instead of waiting for ever; one waiting for room to send stops on the launcher's
`aborted` event.
"""

from __future__ import annotations

import pickle
from typing import Any

from . import _arena
from ._arena import Framed, commit, is_framed, ungive
from ._errors import MPIError
from ._native import Mailbox
from ._pickling import FLAT

__all__ = ["ANY_SOURCE", "ANY_TAG", "Mailbox", "MPIError", "OBJECT", "RAW", "SYNC", "is_framed"]

#: Kinds: a pickled object; raw bytes (a buffer method's); a pickled object whose sender
#: waits to hear it was received (ssend). (2 is the launcher's abort message.)
OBJECT, RAW, SYNC = 0, 1, 3
#: mpi4py's values under MPICH.
ANY_SOURCE, ANY_TAG = -2, -1
_PICKLE = pickle.PROTO[0]

def send(box: Mailbox, dest: int, context: int, source: int, tag: int, kind: int, payload: Any) -> None:
    """Sends a payload (`dumps`'s or `raw_payload`'s) to world rank `dest`; one that
    never went out lets go of the arena blocks it was given. A long pickle goes through
    the arena too (one block, a RAW frame): a message longer than an inbox's largest
    piece would hold its sender until the receiver took it whole, and two ranks doing so
    to each other would wait for ever."""
    if type(payload) is bytes and len(payload) >= _arena.OOB_MIN and kind != RAW:
        payload = _arena.raw_frame(memoryview(payload)) or payload
    data = commit(payload) if type(payload) is Framed else payload
    try:
        box.send(dest, context, source, tag, kind, data)
    except BaseException:
        ungive(data)  # (never taken: its blocks go)
        raise


#: MPICH's error classes, as mpi4py numbers them.
ERR_BUFFER, ERR_COUNT, ERR_TYPE, ERR_TAG, ERR_COMM, ERR_RANK = 1, 2, 3, 4, 5, 6
ERR_ROOT, ERR_GROUP, ERR_OP, ERR_ARG, ERR_TRUNCATE, ERR_OTHER = 7, 8, 9, 12, 14, 15
ERR_REQUEST = 19


def dumps(obj: Any, share: bool = False) -> bytes:
    """A payload for `obj`: its large buffers given to the message through the arena
    (unless `share`: the same bytes go to several ranks, so they stay in the pickle)."""
    if type(obj) in FLAT:  # (no buffer, nothing another pickler would do better)
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    from .queues import _dumps

    return _dumps(obj, not share)


def loads(payload: bytes) -> Any:
    """The object a payload holds (its large buffers: views into the arena)."""
    if payload[0] != _PICKLE:  # (a frame: a plain pickle starts with PROTO)
        return _arena.unframe(bytes(payload))
    return pickle.loads(payload)


#: The first byte of a RAW payload whose bytes follow it (else it is a RAW frame: arena).
INLINE = b"\x00"


def raw_payload(view: memoryview) -> bytes:
    """A RAW payload for a buffer's bytes: large ones in an arena block, small ones inline."""
    if view.nbytes >= _arena.OOB_MIN:
        framed = _arena.raw_frame(view)
        if framed is not None:
            return framed
    return INLINE + bytes(view)


def raw_view(payload: bytes) -> tuple[memoryview, Any]:
    """A RAW payload's bytes, and what holds them (None, or the arena block: release it
    once used)."""
    if payload[:1] == INLINE:
        return memoryview(payload)[1:], None
    block = memoryview(_arena.take_raw(bytes(payload)))
    return block, block


def raw_into(payload: bytes, target: memoryview) -> int:
    """Copies a RAW payload's bytes into `target` (a byte view), freeing its block: how
    many bytes it held (a message longer than `target` raises ERR_TRUNCATE)."""
    view, holder = raw_view(payload)
    try:
        return _copy_into(view, target)
    finally:
        if holder is not None:
            holder.release()


def _copy_into(source: memoryview, target: memoryview) -> int:
    n = source.nbytes
    if n > target.nbytes:
        raise MPIError(ERR_TRUNCATE, f"MPI_ERR_TRUNCATE: message truncated: {n} bytes came, "
                                     f"the receive buffer holds {target.nbytes}")
    target[:n] = source.cast("B")
    return n
