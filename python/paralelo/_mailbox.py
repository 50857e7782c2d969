"""A rank's mailbox: the point-to-point layer under ``paralelo.comm``.

Every rank of a job has one inbox, a `Channel` (a ring in shared memory that any process
sends into) made by the launcher before it forks the ranks, so each rank holds all of
them. A message is a header (`HEAD`: context, source, tag, kind) and a payload: a pickle,
whose large buffers travel through the arena (`_arena`: given to the message, arriving
as views, never through the ring), or raw bytes for the buffer methods (a RAW frame: its
bytes in one arena block).

Matching follows MPI: a receive takes the first message, in arrival order, whose
context, source and tag it asks for (`ANY_SOURCE`, `ANY_TAG` match any); messages that
came first and did not match wait in `pending`, in order. One inbox keeps each sender's
messages in the order they were sent, so messages never overtake one another per
(source, context, tag). Each communicator has a context of its own for point-to-point
messages and another for its collectives, so they never match each other.

The launcher ends a job whose rank died by sending every inbox an `ABORT` naming it: a
rank waiting in a receive raises `MPIError` with that reason instead of waiting for ever.
A rank waiting for room to send looks at the launcher's `aborted` event between tries.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from . import _arena
from ._arena import Framed, commit, is_framed, ungive
from ._pickling import FLAT

__all__ = ["ABORT", "ANY_SOURCE", "ANY_TAG", "Mailbox", "MPIError", "OBJECT", "Posted", "RAW", "SYNC", "is_framed"]

HEAD = struct.Struct("<iiiB")  # context, source (the sender's rank in that context), tag, kind
_unpack = HEAD.unpack_from
#: Kinds: a pickled object; raw bytes (a buffer method's); the job is over (payload: why); a
#: pickled object whose sender waits to hear it was received (ssend).
OBJECT, RAW, ABORT, SYNC = 0, 1, 2, 3
#: mpi4py's values under MPICH.
ANY_SOURCE, ANY_TAG = -2, -1
#: Seconds between looks at the launcher's abort flag while a send waits for room.
_SEND_SLICE = 0.2
_PICKLE = pickle.PROTO[0]


def abort_message(why: str) -> bytes:
    """What the launcher sends every rank's inbox as it ends the job: `why`."""
    return HEAD.pack(-1, -1, 0, ABORT) + why.encode()


class MPIError(RuntimeError):
    """An MPI error, as mpi4py's ``MPI.Exception``: ``error_class`` and ``Get_error_class()``
    say which (``ERR_RANK``, ``ERR_TAG``, ``ERR_TRUNCATE``, ``ERR_OTHER``...)."""

    def __init__(self, error_class: int, message: str) -> None:
        super().__init__(message)
        self.error_class = self.error_code = error_class

    def Get_error_class(self) -> int:  # noqa: N802 - mpi4py's name
        return self.error_class

    def Get_error_code(self) -> int:  # noqa: N802 - mpi4py's name
        return self.error_code

    def Get_error_string(self) -> str:  # noqa: N802 - mpi4py's name
        return str(self)


#: MPICH's error classes, as mpi4py numbers them.
ERR_BUFFER, ERR_COUNT, ERR_TYPE, ERR_TAG, ERR_COMM, ERR_RANK = 1, 2, 3, 4, 5, 6
ERR_ROOT, ERR_GROUP, ERR_OP, ERR_ARG, ERR_TRUNCATE, ERR_OTHER = 7, 8, 9, 12, 14, 15


def dumps(obj: Any, share: bool = False) -> bytes:
    """A payload for `obj`: its large buffers given to the message through the arena
    (unless `share`: the same bytes go to several ranks, so they stay in the pickle)."""
    if type(obj) in FLAT:  # (no buffer, nothing another pickler would do better)
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    from .queues import _dumps

    return _dumps(obj, not share)


def loads(payload: memoryview) -> Any:
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


def raw_view(payload: memoryview) -> tuple[memoryview, Any]:
    """A RAW payload's bytes, and what holds them (None, or the arena block: release it
    once used)."""
    if payload[:1] == INLINE:
        return payload[1:], None
    block = memoryview(_arena.take_raw(bytes(payload)))
    return block, block


def raw_into(payload: memoryview, target: memoryview) -> int:
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


class Posted:
    """A receive posted with `Mailbox.post`: its `message` once matched."""

    __slots__ = ("context", "source", "tag", "message")

    def __init__(self, context: int, source: int, tag: int) -> None:
        self.context, self.source, self.tag = context, source, tag
        self.message: tuple[int, int, int, memoryview] | None = None


class Mailbox:
    """This rank's inbox, everyone's inboxes to send into, and the messages received but
    not yet matched."""

    def __init__(self, rank: int, inboxes: list[Any], aborted: Any) -> None:
        self.rank = rank
        self.inboxes = inboxes
        self.inbox = inboxes[rank]
        self.aborted = aborted  # an Event the launcher sets as it ends a failed job
        self.pending: list[tuple[int, int, int, int, memoryview]] = []
        self.posted: list[Posted] = []  # receives posted (irecv) and not yet matched, in order
        self.why: str | None = None  # the launcher's ABORT, once heard

    def send(self, dest: int, context: int, source: int, tag: int, kind: int, payload: bytes) -> None:
        """Sends a message to world rank `dest` (waiting for room in its inbox)."""
        data = HEAD.pack(context, source, tag, kind) + (commit(payload) if type(payload) is Framed else payload)
        inbox = self.inboxes[dest]
        try:
            if inbox.try_send(data):
                return
            while True:
                self._check()
                try:
                    inbox.send(data, _SEND_SLICE)
                    return
                except TimeoutError:
                    continue
        except BaseException:
            ungive(data[HEAD.size:])  # (never taken: its blocks go)
            raise

    def take(self, context: int, source: int, tag: int, block: bool = True,
             timeout: float | None = None) -> tuple[int, int, int, memoryview] | None:
        """The first message matching (`context`, `source`, `tag`) that no receive posted
        before claims: (source, tag, kind, payload); None if none came (not `block`, or
        `timeout` passed)."""
        found = self._match(context, source, tag, remove=True) if self.pending else None
        while found is None:
            message = self._receive(block, timeout)
            if message is None:
                return None
            if self.posted and self._claim(message):
                continue  # (an earlier posted receive's)
            if message[0] == context and (source == ANY_SOURCE or message[1] == source) and (
                    tag == ANY_TAG or message[2] == tag):  # (`_matches`, inline: the usual path)
                return message[1:]
            self.pending.append(message)
        return found

    def peek(self, context: int, source: int, tag: int, block: bool = True) -> tuple[int, int, int, memoryview] | None:
        """As `take`, leaving the message to be received."""
        found = self._match(context, source, tag, remove=False)
        while found is None:
            message = self._receive(block, None)
            if message is None:
                return None
            self._dispatch(message)
            found = self._match(context, source, tag, remove=False)
        return found

    def post(self, context: int, source: int, tag: int) -> Posted:
        """A receive posted now (irecv): it gets the first matching message not taken
        yet, before any receive made after it."""
        posted = Posted(context, source, tag)
        posted.message = self._match(context, source, tag, remove=True)
        if posted.message is None:
            self.posted.append(posted)
        return posted

    def finish(self, posted: Posted, block: bool) -> tuple[int, int, int, memoryview] | None:
        """`posted`'s message, waiting for it if `block`; None if it has not come."""
        while posted.message is None:
            message = self._receive(block, None)
            if message is None:
                return None
            self._dispatch(message)
        return posted.message

    def wait_message(self) -> None:
        """Waits for the next message and files it (a posted receive's, or pending): what
        waits for any of several requests does, since only a message completes one."""
        message = self._receive(True, None)
        assert message is not None
        self._dispatch(message)

    def _claim(self, message: tuple) -> bool:
        """Gives `message` to the first posted receive it matches: whether one took it."""
        for i, posted in enumerate(self.posted):
            if self._matches(message, posted.context, posted.source, posted.tag):
                posted.message = message[1:]
                del self.posted[i]
                return True
        return False

    def _dispatch(self, message: tuple) -> None:
        """A message that came: a posted receive's, or pending until received."""
        if not self._claim(message):
            self.pending.append(message)

    def _match(self, context: int, source: int, tag: int, remove: bool) -> tuple[int, int, int, memoryview] | None:
        for i, message in enumerate(self.pending):
            if self._matches(message, context, source, tag):
                if remove:
                    del self.pending[i]
                return message[1:]
        return None

    @staticmethod
    def _matches(message: tuple, context: int, source: int, tag: int) -> bool:
        return (message[0] == context and (source == ANY_SOURCE or message[1] == source)
                and (tag == ANY_TAG or message[2] == tag))

    def _receive(self, block: bool, timeout: float | None) -> tuple[int, int, int, int, memoryview] | None:
        if self.why is not None or (self.aborted is not None and self.aborted.is_set()):
            self._check()
        try:
            data = self.inbox.recv(timeout if block else 0.0)
        except TimeoutError:
            return None
        context, source, tag, kind = _unpack(data)
        if kind == ABORT:
            self.why = data[HEAD.size:].decode()
            self._check()
        return context, source, tag, kind, memoryview(data)[HEAD.size:]

    def _check(self) -> None:
        if self.why is None and self.aborted is not None and self.aborted.is_set():
            self.why = "the job was ended by its launcher"
        if self.why is not None:
            raise MPIError(ERR_OTHER, f"MPI_ERR_OTHER: {self.why}")
