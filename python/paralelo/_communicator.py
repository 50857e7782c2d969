"""Communicators over shared memory: what ``paralelo.comm`` is when the ranks run on one
machine (``paralelo run -n N script.py``). mpi4py's names and semantics: the object
methods (pickles) and the buffer methods (upper case: raw bytes through the arena),
point-to-point (`_mailbox`) and collectives built on it.

Collectives run on the communicator's second context, with a tag per kind, so they never
match its point-to-point messages; every rank calls them in the same order, so per-source
order is enough to tell one call's messages from the next. Reductions fold in rank order
(``x0 op x1 op ...``), as MPI defines them for operators that do not commute, so every
rank of an ``allreduce`` computes the same value.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable, Sequence

from . import _mailbox
from ._native import fold
from ._mailbox import (ANY_SOURCE, ANY_TAG, ERR_ARG, ERR_BUFFER, ERR_COMM, ERR_COUNT, ERR_GROUP, ERR_OP, ERR_OTHER,
                       ERR_RANK, ERR_REQUEST, ERR_ROOT, ERR_TAG, ERR_TRUNCATE, ERR_TYPE, OBJECT, RAW, Mailbox,
                       MPIError)

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "BAND", "BOR", "BXOR", "COMM_NULL", "COMM_SELF", "COMM_WORLD", "Comm", "Datatype",
    "ERR_ARG", "ERR_BUFFER", "ERR_COMM", "ERR_COUNT", "ERR_GROUP", "ERR_OP", "ERR_OTHER", "ERR_RANK", "ERR_REQUEST",
    "ERR_ROOT",
    "ERR_TAG", "ERR_TRUNCATE", "ERR_TYPE", "Exception", "IN_PLACE", "Intracomm", "LAND", "LOR", "LXOR", "MAX",
    "MAXLOC", "MIN", "MINLOC", "NO_OP", "Op", "PROC_NULL", "PROD", "REPLACE", "ROOT", "Request", "SUCCESS",
    "Status", "SUM", "UNDEFINED", "Wtick", "Wtime", "Get_processor_name", "Init", "Finalize", "Is_initialized",
    "Is_finalized", "Get_version",
]

Exception = MPIError  # noqa: A001 - mpi4py's name: MPI.Exception

PROC_NULL, UNDEFINED, ROOT, SUCCESS = -1, -32766, -3, 0
#: Tags collectives use on a communicator's second context.
_BCAST, _GATHER, _SCATTER, _ALLGATHER, _ALLTOALL, _BARRIER, _ACK, _REDUCE_SCATTER = range(1, 9)
#: Collectives move large buffers in pieces of this many bytes, so that the receiver
#: copies (or folds) one while the sender writes the next: both cores at work.
PIECE = 1 << 21


def _pieces(nbytes: int, step: int = PIECE) -> list[slice]:
    """A buffer of `nbytes` cut into pieces of `step` (one piece at least)."""
    return [slice(i, min(i + step, nbytes)) for i in range(0, max(nbytes, 1), step)]


class _InPlace:
    def __repr__(self) -> str:
        return "IN_PLACE"


IN_PLACE = _InPlace()


def Wtime() -> float:  # noqa: N802 - mpi4py's name
    """Seconds on a monotonic clock (``MPI.Wtime``)."""
    return time.perf_counter()


def Wtick() -> float:  # noqa: N802 - mpi4py's name
    """The resolution of `Wtime`, in seconds."""
    return time.get_clock_info("perf_counter").resolution


def Get_processor_name() -> str:  # noqa: N802 - mpi4py's name
    """This machine's name."""
    return socket.gethostname()


def Get_version() -> tuple[int, int]:  # noqa: N802 - mpi4py's name
    """The MPI standard version these calls follow."""
    return (3, 1)


def Init() -> None:  # noqa: N802 - mpi4py's name
    """Nothing to do: the launcher set the job up (as mpi4py's import does)."""


def Finalize() -> None:  # noqa: N802 - mpi4py's name
    """Nothing to do: the rank's end lets go of everything."""


def Is_initialized() -> bool:  # noqa: N802 - mpi4py's name
    return True


def Is_finalized() -> bool:  # noqa: N802 - mpi4py's name
    return False


# -- datatypes and operators -------------------------------------------------------------


class Datatype:
    """An MPI datatype: its name and the numpy/struct type code of one element."""

    def __init__(self, name: str, code: str) -> None:
        self.name, self.code = name, code

    @property
    def size(self) -> int:
        import struct

        return struct.calcsize(self.code)

    def Get_size(self) -> int:  # noqa: N802 - mpi4py's name
        return self.size

    def __repr__(self) -> str:
        return f"<paralelo.comm.Datatype {self.name}>"


_TYPES = {
    "CHAR": "c", "SIGNED_CHAR": "b", "UNSIGNED_CHAR": "B", "BYTE": "B", "SHORT": "h", "UNSIGNED_SHORT": "H",
    "INT": "i", "UNSIGNED": "I", "LONG": "l", "UNSIGNED_LONG": "L", "LONG_LONG": "q", "UNSIGNED_LONG_LONG": "Q",
    "FLOAT": "f", "DOUBLE": "d", "LONG_DOUBLE": "g", "BOOL": "?", "C_BOOL": "?", "INT8_T": "b", "INT16_T": "h",
    "INT32_T": "i", "INT64_T": "q", "UINT8_T": "B", "UINT16_T": "H", "UINT32_T": "I", "UINT64_T": "Q",
    "C_FLOAT_COMPLEX": "F", "C_DOUBLE_COMPLEX": "D", "COMPLEX": "D", "DOUBLE_COMPLEX": "D", "FLOAT_COMPLEX": "F",
}
for _name, _code in _TYPES.items():
    globals()[_name] = Datatype(_name, _code)
__all__ += list(_TYPES)
_BY_CODE = {code: globals()[name] for name, code in reversed(list(_TYPES.items()))}


def _maxloc(x: Any, y: Any) -> Any:
    (u, i), (v, j) = x, y
    return (u, min(i, j)) if u == v else (x if u > v else y)


def _minloc(x: Any, y: Any) -> Any:
    (u, i), (v, j) = x, y
    return (u, min(i, j)) if u == v else (x if u < v else y)


class Op:
    """A reduction operator: the predefined ones (`SUM`, `MAX`, ...) and those made with
    ``Op.Create(function, commute=False)``. On objects, ``op(x, y)`` combines a lower
    rank's `x` with a higher rank's `y`; on buffers, a created op's ``function(invec,
    inoutvec, datatype)`` leaves ``invec op inoutvec`` in `inoutvec`, as MPI's do."""

    def __init__(self, name: str, function: Callable[..., Any], commute: bool, ufunc: str | None = None,
                 user: bool = False) -> None:
        self.name, self.function, self.commute, self.ufunc, self.user = name, function, commute, ufunc, user

    @classmethod
    def Create(cls, function: Callable[..., Any], commute: bool = False) -> Op:  # noqa: N802 - mpi4py's name
        """A user operator: its function takes ``(invec, inoutvec, datatype)`` on buffers,
        and ``(x, y, None)`` on objects, returning the combined value (as mpi4py calls it)."""
        if not callable(function):
            raise TypeError(f"Op.Create takes a function, not {type(function).__name__}")
        return cls(getattr(function, "__name__", "user op"), function, bool(commute), user=True)

    def __call__(self, x: Any, y: Any) -> Any:
        if self.user:
            return self.function(x, y, None)  # (mpi4py's call: no datatype for objects)
        return self.function(x, y)

    def Is_commutative(self) -> bool:  # noqa: N802 - mpi4py's name
        return self.commute

    @property
    def is_commutative(self) -> bool:
        return self.commute

    @property
    def is_predefined(self) -> bool:
        return not self.user

    def Free(self) -> None:  # noqa: N802 - mpi4py's name
        """Nothing to free."""

    def __repr__(self) -> str:
        return f"<paralelo.comm.Op {self.name}>"


SUM = Op("SUM", lambda x, y: x + y, True, "add")
PROD = Op("PROD", lambda x, y: x * y, True, "multiply")
MAX = Op("MAX", lambda x, y: y if y > x else x, True, "maximum")
MIN = Op("MIN", lambda x, y: y if y < x else x, True, "minimum")
LAND = Op("LAND", lambda x, y: bool(x and y), True, "logical_and")
LOR = Op("LOR", lambda x, y: bool(x or y), True, "logical_or")
LXOR = Op("LXOR", lambda x, y: bool(x) != bool(y), True, "logical_xor")
BAND = Op("BAND", lambda x, y: x & y, True, "bitwise_and")
BOR = Op("BOR", lambda x, y: x | y, True, "bitwise_or")
BXOR = Op("BXOR", lambda x, y: x ^ y, True, "bitwise_xor")
MAXLOC = Op("MAXLOC", _maxloc, True)
MINLOC = Op("MINLOC", _minloc, True)
REPLACE = Op("REPLACE", lambda x, y: y, False)
NO_OP = Op("NO_OP", lambda x, y: x, False)


def _fold(items: Sequence[Any], op: Callable[[Any, Any], Any]) -> Any:
    """``items[0] op items[1] op ...``, in rank order."""
    result = items[0]
    for item in items[1:]:
        result = op(result, item)
    return result


# -- buffers -----------------------------------------------------------------------------


class _Buffer:
    """A buffer argument (an array, anything with the buffer protocol, or ``[buf,
    datatype]`` / ``[buf, count, datatype]``): its bytes as a writable-if-possible byte
    view, the element type code, and the element count."""

    def __init__(self, spec: Any, name: str = "buffer") -> None:
        datatype = None
        count = None
        if isinstance(spec, (list, tuple)):
            if len(spec) == 2:
                spec, datatype = spec
            elif len(spec) == 3:
                spec, count, datatype = spec
            else:
                raise TypeError(f"a {name} is a buffer, [buffer, datatype] or [buffer, count, datatype], "
                                f"not a sequence of {len(spec)}")
        try:
            view = memoryview(spec)
        except TypeError:
            raise TypeError(f"a {name} must support the buffer protocol (a numpy array, bytearray...), "
                            f"not {type(spec).__name__}") from None
        if not view.c_contiguous:
            raise MPIError(ERR_BUFFER, f"MPI_ERR_BUFFER: the {name} is not contiguous")
        code = datatype.code if isinstance(datatype, Datatype) else (view.format.lstrip("@=<") or "B")
        self.code = code
        self.bytes = view.cast("B") if view.ndim != 1 or view.format != "B" else view
        itemsize = view.itemsize if datatype is None else datatype.size
        self.count = self.bytes.nbytes // itemsize if count is None else int(count)
        if count is not None:
            self.bytes = self.bytes[:self.count * itemsize]

    def array(self) -> Any:
        import numpy

        return numpy.frombuffer(self.bytes, dtype=self.code)

    def part(self, i: int, parts: int) -> memoryview:
        if self.count % parts:
            raise ValueError(f"message: cannot infer count, number of entries {self.count} is not a multiple "
                             f"of required number of blocks {parts}")  # (mpi4py's words)
        each = self.bytes.nbytes // parts
        return self.bytes[i * each:(i + 1) * each]


_raw_payload = _mailbox.raw_payload


# -- status and requests -----------------------------------------------------------------


class Status:
    """What a receive got: ``source``, ``tag``, ``error``, ``Get_count()`` (bytes, or
    elements of a datatype), and whether it was cancelled (``Is_cancelled()``)."""

    def __init__(self) -> None:
        self.source, self.tag, self.error = ANY_SOURCE, ANY_TAG, SUCCESS
        self.count = 0  # bytes
        self.cancelled = False

    def _set(self, source: int, tag: int, nbytes: int, cancelled: bool = False) -> None:
        self.source, self.tag, self.count, self.cancelled = source, tag, nbytes, cancelled

    def Is_cancelled(self) -> bool:  # noqa: N802 - mpi4py's name
        return self.cancelled

    def Get_source(self) -> int:  # noqa: N802 - mpi4py's name
        return self.source

    def Get_tag(self) -> int:  # noqa: N802 - mpi4py's name
        return self.tag

    def Get_error(self) -> int:  # noqa: N802 - mpi4py's name
        return self.error

    def Get_count(self, datatype: Datatype | None = None) -> int:  # noqa: N802 - mpi4py's name
        return self.count if datatype is None else self.count // datatype.size

    Get_elements = Get_count

    def __repr__(self) -> str:
        return f"<paralelo.comm.Status source={self.source} tag={self.tag} count={self.count}>"


class Request:
    """A non-blocking operation: ``wait()``/``test()`` (objects), ``Wait()``/``Test()``
    (buffers), and the class methods ``waitall``/``Waitall``, ``testall``/``Testall``,
    ``waitany``/``Waitany``."""

    def __init__(self, finish: Callable[[bool, Status | None], tuple[bool, Any]] | None = None,
                 value: Any = None, cancel: Callable[[], bool] | None = None) -> None:
        self._finish = finish  # (block, status) -> (done, value); None once done
        self._value = value
        self._cancel = cancel  # () -> whether it was cancelled (a posted receive's)
        self._null = False  # waited for or tested complete: no request any more (MPI_REQUEST_NULL)

    def _complete(self, block: bool, status: Status | None) -> bool:
        if self._null:  # (no request any more: done, with nothing)
            if status is not None:
                status._set(ANY_SOURCE, ANY_TAG, 0)
            self._value = None
            return True
        if self._finish is not None:
            done, value = self._finish(block, status)
            if not done:
                return False
            self._finish, self._value = None, value
        self._null = True
        return True

    def wait(self, status: Status | None = None) -> Any:
        """Waits until it completes: the object received (None for a send). The request
        is then inactive (mpi4py's ``REQUEST_NULL``): waited for again, it gives None."""
        self._complete(True, status)
        return self._value

    def test(self, status: Status | None = None) -> tuple[bool, Any]:
        """(True, the object) if it completed, else (False, None); never waits."""
        if self._complete(False, status):
            return True, self._value
        return False, None

    def Wait(self, status: Status | None = None) -> bool:  # noqa: N802 - mpi4py's name
        self.wait(status)
        return True

    def Test(self, status: Status | None = None) -> bool:  # noqa: N802 - mpi4py's name
        return self.test(status)[0]

    def Free(self) -> None:  # noqa: N802 - mpi4py's name
        """Lets it complete on its own (a pending receive still takes its message)."""

    def Cancel(self) -> None:  # noqa: N802 - mpi4py's name
        """Cancels a receive no message matched yet: its wait then completes at once, its
        status ``Is_cancelled()``. A send has gone already: nothing to cancel. A request
        that was waited for or tested complete is no request any more (ERR_REQUEST, as
        mpi4py's)."""
        if self._null:
            raise MPIError(ERR_REQUEST, "MPI_ERR_REQUEST: invalid request (it was completed by a wait or test)")
        if self._finish is None or self._cancel is None or not self._cancel():
            return

        def cancelled(block: bool, status: Status | None) -> tuple[bool, Any]:
            if status is not None:
                status._set(ANY_SOURCE, ANY_TAG, 0, cancelled=True)
            return True, None

        self._finish = cancelled

    @classmethod
    def waitall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> list[Any]:
        return [r.wait(None if statuses is None else statuses[i]) for i, r in enumerate(requests)]

    @classmethod
    def Waitall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> bool:  # noqa: N802
        cls.waitall(requests, statuses)
        return True

    @classmethod
    def testall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> tuple[bool, list | None]:
        done = [r.test(None if statuses is None else statuses[i]) for i, r in enumerate(requests)]
        if all(flag for flag, _ in done):
            return True, [value for _, value in done]
        return False, None

    @classmethod
    def Testall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> bool:  # noqa: N802
        return cls.testall(requests, statuses)[0]

    @classmethod
    def testany(cls, requests: Sequence[Request], status: Status | None = None) -> tuple[int, bool, Any]:
        """``(index, True, object)`` of a request that completed (it is then inactive);
        ``(UNDEFINED, False, None)`` if none did; ``(UNDEFINED, True, None)`` if every one
        is inactive already. Never waits."""
        active = [i for i, r in enumerate(requests) if not r._null]
        if not active:
            return UNDEFINED, True, None
        for i in active:
            flag, value = requests[i].test(status)
            if flag:
                return i, True, value
        return UNDEFINED, False, None

    @classmethod
    def Testany(cls, requests: Sequence[Request], status: Status | None = None) -> tuple[int, bool]:  # noqa: N802
        index, flag, _ = cls.testany(requests, status)
        return index, flag

    @classmethod
    def waitany(cls, requests: Sequence[Request], status: Status | None = None) -> tuple[int, Any]:
        """``(index, object)`` of the first request to complete (it is then inactive);
        ``(UNDEFINED, None)`` if every one is inactive already."""
        while True:
            box = _world_box()
            seen = box.moved  # (before the tests: a message any thread takes in after wakes us)
            index, flag, value = cls.testany(requests, status)
            if flag:
                return index, value
            box.wait_message(seen)

    @classmethod
    def Waitany(cls, requests: Sequence[Request], status: Status | None = None) -> int:  # noqa: N802
        return cls.waitany(requests, status)[0]

    @classmethod
    def waitsome(cls, requests: Sequence[Request],
                 statuses: list[Status] | None = None) -> tuple[list[int] | None, list[Any] | None]:
        """The indices and objects of the requests that completed, once one at least
        did (each is then inactive); ``(None, None)`` if every one is inactive already."""
        index, value = cls.waitany(requests, None if statuses is None else statuses[0])
        if index == UNDEFINED:
            return None, None
        indices, values = [index], [value]
        for i, r in enumerate(requests):
            if not r._null:
                flag, got = r.test(None if statuses is None else statuses[len(indices)])
                if flag:
                    indices.append(i)
                    values.append(got)
        return indices, values

    @classmethod
    def Waitsome(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> list[int] | None:  # noqa: N802
        return cls.waitsome(requests, statuses)[0]


# -- communicators -----------------------------------------------------------------------


class Comm:
    """A communicator: ``rank``, ``size``, point-to-point and collective operations, as
    mpi4py's ``Intracomm``."""

    def __init__(self, ranks: list[int], rank: int, context: int, name: str) -> None:
        self._place(ranks, rank)
        self._context = context
        self._name = name
        self._freed = False


    def _place(self, ranks: list[int], rank: int) -> None:
        self._ranks = ranks  # world rank of each rank of this communicator
        self._rank = rank
        self._others = [w for r, w in enumerate(ranks) if r != rank]  # (world ranks)

    # -- identity --
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return len(self._ranks)

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's name
        return self._rank

    def Get_size(self) -> int:  # noqa: N802 - mpi4py's name
        return len(self._ranks)

    def Get_name(self) -> str:  # noqa: N802 - mpi4py's name
        return self._name

    def Set_name(self, name: str) -> None:  # noqa: N802 - mpi4py's name
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def Is_inter(self) -> bool:  # noqa: N802 - mpi4py's name
        return False

    def Is_intra(self) -> bool:  # noqa: N802 - mpi4py's name
        return True

    def __repr__(self) -> str:
        return f"<paralelo.comm.Comm {self._name} rank {self._rank} of {self.size}>"

    # -- checks --
    def _box(self) -> Mailbox:
        if self._freed:
            raise MPIError(ERR_COMM, "MPI_ERR_COMM: invalid communicator (it was freed)")
        return _box or _world_box()

    def _peer(self, rank: int, what: str = "rank", any_ok: bool = False) -> int:
        if type(rank) is int and 0 <= rank < len(self._ranks):
            return rank
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise TypeError(f"a {what} is an int, not {type(rank).__name__}")
        if any_ok and rank == ANY_SOURCE:
            return rank
        if not 0 <= rank < len(self._ranks):
            raise MPIError(ERR_RANK, f"MPI_ERR_RANK: invalid rank {rank} (the communicator has {self.size})")
        return rank

    def _root(self, root: int) -> int:
        if not isinstance(root, int) or not 0 <= root < len(self._ranks):
            raise MPIError(ERR_ROOT, f"MPI_ERR_ROOT: invalid root {root!r} (the communicator has {self.size})")
        return root

    @staticmethod
    def _tag(tag: int, any_ok: bool = False) -> int:
        if type(tag) is int and tag >= 0:
            return tag
        if not isinstance(tag, int) or isinstance(tag, bool):
            raise TypeError(f"a tag is an int, not {type(tag).__name__}")
        if tag < 0 and not (any_ok and tag == ANY_TAG):
            raise MPIError(ERR_TAG, f"MPI_ERR_TAG: invalid tag {tag}")
        return tag

    # -- point-to-point: objects --
    def _post(self, dest: int, tag: int, kind: int, payload: bytes, context: int | None = None) -> None:
        _mailbox.send(self._box(), self._ranks[dest], self._context if context is None else context, self._rank,
                      tag, kind, payload)

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Sends `obj` (pickled) to `dest`."""
        if dest == PROC_NULL:
            return
        self._send_object(obj, [self._ranks[self._peer(dest)]], self._context, self._tag(tag))

    def _send_object(self, obj: Any, worlds: list[int], context: int, tag: int) -> None:
        """Sends `obj` to world ranks `worlds`: a flat value pickled once, in the engine;
        anything else pickled here, once for all unless its buffers went through the arena
        (a given block has one receiver): then once each."""
        box = self._box()
        if box.send_flat(worlds, context, self._rank, tag, obj):
            return
        data = None
        for world in worlds:
            if data is None or _mailbox.is_framed(data):
                data = _mailbox.dumps(obj)
            _mailbox.send(box, world, context, self._rank, tag, OBJECT, data)

    def ssend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Sends `obj` and returns once `dest` received it."""
        self.issend(obj, dest, tag).wait()

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Sends `obj` without waiting (it is on its way when this returns)."""
        self.send(obj, dest, tag)
        return Request()

    def issend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Sends `obj`; the request completes once `dest` received it."""
        if dest == PROC_NULL:
            return Request()
        self._post(self._peer(dest), self._tag(tag), _mailbox.SYNC, _mailbox.dumps(obj))

        def acked(block: bool, status: Status | None) -> tuple[bool, Any]:
            got = self._box().take(self._context + 1, dest, _ACK, block)
            return got is not None, None

        return Request(acked)

    def _took(self, got: tuple[int, int, int, bytes], status: Status | None) -> Any:
        source, tag, kind, payload = got
        if status is not None:
            status._set(source, tag, len(payload))
        if kind != OBJECT:
            self._not_plain(source, kind)
        return _mailbox.loads(payload)

    def _not_plain(self, source: int, kind: int) -> None:
        """A received message that is not a plain object's: an ssend's is acknowledged;
        a buffer's is an error."""
        if kind == _mailbox.SYNC:
            self._post(source, _ACK, OBJECT, b"", self._context + 1)
        elif kind == RAW:
            raise MPIError(ERR_TYPE, "MPI_ERR_TYPE: a buffer (Send) came where an object (send) was awaited")

    def recv(self, buf: Any = None, source: int = ANY_SOURCE, tag: int = ANY_TAG,
             status: Status | None = None) -> Any:
        """Receives an object from `source` with `tag` (either may be ANY)."""
        if source == PROC_NULL:
            if status is not None:
                status._set(PROC_NULL, ANY_TAG, 0)
            return None
        came, tag, kind, nbytes, value, loaded = self._box().take_loaded(
            self._context, self._peer(source, "source", True), self._tag(tag, True))
        if status is not None:
            status._set(came, tag, nbytes)
        if kind != OBJECT:
            self._not_plain(came, kind)  # (an ssend's sender hears of it even if it cannot be read)
        if not loaded:
            raise value
        return value

    def irecv(self, buf: Any = None, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request:
        """Posts a receive: it takes the first matching message, before any receive posted
        after it; ``wait()`` gives the object."""
        if source == PROC_NULL:
            return Request()
        posted = self._box().post(self._context, self._peer(source, "source", True), self._tag(tag, True))

        def finish(block: bool, status: Status | None) -> tuple[bool, Any]:
            got = self._box().finish(posted, block)
            return (False, None) if got is None else (True, self._took(got, status))

        return Request(finish, cancel=lambda: self._box().cancel(posted))

    def sendrecv(self, sendobj: Any, dest: int, sendtag: int = 0, recvbuf: Any = None, source: int = ANY_SOURCE,
                 recvtag: int = ANY_TAG, status: Status | None = None) -> Any:
        """Sends `sendobj` to `dest` and receives from `source`."""
        self.send(sendobj, dest, sendtag)
        return self.recv(recvbuf, source, recvtag, status)

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status: Status | None = None) -> bool:
        """Waits until a matching message came (leaving it to be received): True."""
        got = self._box().peek(self._context, self._peer(source, "source", True), self._tag(tag, True), True)
        assert got is not None
        if status is not None:
            status._set(*got)
        return True

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG, status: Status | None = None) -> bool:
        """Whether a matching message came (leaving it to be received)."""
        got = self._box().peek(self._context, self._peer(source, "source", True), self._tag(tag, True), False)
        if got is not None and status is not None:
            status._set(*got)
        return got is not None

    Probe, Iprobe = probe, iprobe

    # -- point-to-point: buffers --
    def Send(self, buf: Any, dest: int, tag: int = 0) -> None:  # noqa: N802 - mpi4py's name
        """Sends a buffer's bytes (no pickling; large ones through the arena)."""
        if dest == PROC_NULL:
            return
        self._post(self._peer(dest), self._tag(tag), RAW, _raw_payload(_Buffer(buf).bytes))

    Ssend = Rsend = Bsend = Send

    def Isend(self, buf: Any, dest: int, tag: int = 0) -> Request:  # noqa: N802 - mpi4py's name
        self.Send(buf, dest, tag)
        return Request()

    def Recv(self, buf: Any, source: int = ANY_SOURCE, tag: int = ANY_TAG,  # noqa: N802 - mpi4py's name
             status: Status | None = None) -> None:
        """Receives bytes into `buf` (ERR_TRUNCATE if the message is longer)."""
        if source == PROC_NULL:
            if status is not None:
                status._set(PROC_NULL, ANY_TAG, 0)
            return
        target = _Buffer(buf, "receive buffer").bytes
        got = self._box().take(self._context, self._peer(source, "source", True), self._tag(tag, True))
        assert got is not None
        self._into(got, target, status)

    def Irecv(self, buf: Any, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request:  # noqa: N802
        target = _Buffer(buf, "receive buffer").bytes
        posted = self._box().post(self._context, self._peer(source, "source", True), self._tag(tag, True))

        def finish(block: bool, status: Status | None) -> tuple[bool, Any]:
            got = self._box().finish(posted, block)
            if got is None:
                return False, None
            self._into(got, target, status)
            return True, None

        return Request(finish, cancel=lambda: self._box().cancel(posted))

    def _into(self, got: tuple[int, int, int, bytes], target: memoryview, status: Status | None) -> None:
        source, tag, kind, payload = got
        if kind != RAW:
            raise MPIError(ERR_TYPE, "MPI_ERR_TYPE: an object (send) came where a buffer (Send) was awaited")
        n = _mailbox.raw_into(payload, target)
        if status is not None:
            status._set(source, tag, n)

    def Sendrecv(self, sendbuf: Any, dest: int, sendtag: int = 0, recvbuf: Any = None,  # noqa: N802
                 source: int = ANY_SOURCE, recvtag: int = ANY_TAG, status: Status | None = None) -> None:
        self.Send(sendbuf, dest, sendtag)
        self.Recv(recvbuf, source, recvtag, status)

    # -- collectives: the transport --
    def _csend(self, dest: int, tag: int, payload: bytes, kind: int = OBJECT) -> None:
        self._post(dest, tag, kind, payload, self._context + 1)

    def _crecv(self, source: int, tag: int) -> tuple[int, int, int, bytes]:
        got = self._box().take(self._context + 1, source, tag)
        assert got is not None
        return got

    def _to_all(self, obj: Any, tag: int) -> None:
        """Sends `obj` to every other rank, on the collective context."""
        self._send_object(obj, self._others, self._context + 1, tag)

    def _to_one(self, obj: Any, dest: int, tag: int) -> None:
        self._send_object(obj, [self._ranks[dest]], self._context + 1, tag)

    # -- collectives: objects --
    def barrier(self) -> None:
        """Returns once every rank called it (a dissemination barrier: log2(size) rounds)."""
        self._box().barrier(self._ranks, self._rank, self._context + 1, _BARRIER)

    Barrier = barrier

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        """`root`'s `obj`, on every rank."""
        self._root(root)
        if self._rank == root:
            self._to_all(obj, _BCAST)
            return obj
        return self._box().take_object(self._context + 1, root, _BCAST)

    def gather(self, sendobj: Any, root: int = 0) -> list | None:
        """Every rank's object, in rank order, at `root` (None elsewhere)."""
        self._root(root)
        if self._rank != root:
            self._to_one(sendobj, root, _GATHER)
            return None
        return self._box().collect(self._context + 1, self.size, self._rank, _GATHER, sendobj)

    def scatter(self, sendobj: Sequence[Any] | None, root: int = 0) -> Any:
        """`root`'s ``sendobj[i]`` on rank i."""
        self._root(root)
        if self._rank != root:
            return self._box().take_object(self._context + 1, root, _SCATTER)
        items = self._per_rank(sendobj, "scatter")
        for r in range(self.size):
            if r != root:
                self._to_one(items[r], r, _SCATTER)
        return items[root]

    def _per_rank(self, sendobj: Any, what: str) -> list:
        if sendobj is None:
            raise MPIError(ERR_ARG, f"MPI_ERR_ARG: {what} needs a sequence of {self.size} items at the root")
        items = list(sendobj)
        if len(items) != self.size:
            raise ValueError(f"expecting {self.size} items, got {len(items)}")
        return items

    def allgather(self, sendobj: Any) -> list:
        """Every rank's object, in rank order, on every rank."""
        self._to_all(sendobj, _ALLGATHER)
        return self._box().collect(self._context + 1, self.size, self._rank, _ALLGATHER, sendobj)

    def alltoall(self, sendobj: Sequence[Any]) -> list:
        """``sendobj[j]`` of rank i arrives as item i of rank j's result."""
        items = self._per_rank(sendobj, "alltoall")
        for r in range(self.size):
            if r != self._rank:
                self._to_one(items[r], r, _ALLTOALL)
        return self._box().collect(self._context + 1, self.size, self._rank, _ALLTOALL, items[self._rank])

    def reduce(self, sendobj: Any, op: Op = SUM, root: int = 0) -> Any:
        """Every rank's object combined with `op` in rank order, at `root` (None elsewhere);
        `op` an `Op`, or any function of two objects (as mpi4py takes it)."""
        _check_object_op(op)
        items = self.gather(sendobj, root)
        return None if items is None else _fold(items, op)

    def allreduce(self, sendobj: Any, op: Op = SUM) -> Any:
        """Every rank's object combined with `op` in rank order, on every rank."""
        _check_object_op(op)
        return _fold(self.allgather(sendobj), op)

    def scan(self, sendobj: Any, op: Op = SUM) -> Any:
        """Ranks 0..rank's objects combined (an inclusive prefix)."""
        _check_object_op(op)
        return _fold(self.allgather(sendobj)[:self._rank + 1], op)

    def exscan(self, sendobj: Any, op: Op = SUM) -> Any:
        """Ranks 0..rank-1's objects combined (None on rank 0)."""
        _check_object_op(op)
        items = self.allgather(sendobj)[:self._rank]
        return _fold(items, op) if items else None

    # -- collectives: buffers --
    def Bcast(self, buf: Any, root: int = 0) -> None:  # noqa: N802 - mpi4py's name
        """`root`'s buffer copied into every rank's `buf`."""
        self._root(root)
        view = _Buffer(buf).bytes
        others = [r for r in range(self.size) if r != root]
        for piece in _pieces(view.nbytes):
            if self._rank == root:
                for r in others:
                    self._csend(r, _BCAST, _raw_payload(view[piece]), RAW)
            else:
                n = _mailbox.raw_into(self._crecv(root, _BCAST)[3], view[piece])
                if n != piece.stop - piece.start:
                    raise MPIError(ERR_OTHER, f"MPI_ERR_OTHER: Bcast: the root sent {n} bytes where this rank's "
                                              f"buffer holds {piece.stop - piece.start}: the buffers differ")

    def Scatter(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:  # noqa: N802 - mpi4py's name
        """Part i of `root`'s `sendbuf` into rank i's `recvbuf`."""
        self._root(root)
        target = _Buffer(recvbuf, "receive buffer").bytes
        if self._rank != root:
            _mailbox.raw_into(self._crecv(root, _SCATTER)[3], target)
            return
        source = _Buffer(sendbuf)
        for r in range(self.size):
            part = source.part(r, self.size)
            if r == root:
                _copy(part, target)
            else:
                self._csend(r, _SCATTER, _raw_payload(part), RAW)

    def Gather(self, sendbuf: Any, recvbuf: Any, root: int = 0) -> None:  # noqa: N802 - mpi4py's name
        """Every rank's `sendbuf`, in rank order, into `root`'s `recvbuf`."""
        self._root(root)
        if self._rank != root:
            self._csend(root, _GATHER, _raw_payload(_Buffer(sendbuf).bytes), RAW)
            return
        target = _Buffer(recvbuf, "receive buffer")
        for r in range(self.size):
            part = target.part(r, self.size)
            if r == root:
                if sendbuf is not IN_PLACE:
                    _copy(_Buffer(sendbuf).bytes, part)
            else:
                _mailbox.raw_into(self._crecv(r, _GATHER)[3], part)

    def Allgather(self, sendbuf: Any, recvbuf: Any) -> None:  # noqa: N802 - mpi4py's name
        """Every rank's `sendbuf`, in rank order, into every rank's `recvbuf`."""
        target = _Buffer(recvbuf, "receive buffer")
        own = target.part(self._rank, self.size)
        mine = own if sendbuf is IN_PLACE else _Buffer(sendbuf).bytes
        if sendbuf is not IN_PLACE:
            _copy(mine, own)  # (first: buffers that do not fit fail before anything is sent)
        for r in range(self.size):
            if r != self._rank:
                self._csend(r, _ALLGATHER, _raw_payload(mine), RAW)
        for r in range(self.size):
            if r != self._rank:
                _mailbox.raw_into(self._crecv(r, _ALLGATHER)[3], target.part(r, self.size))

    def Alltoall(self, sendbuf: Any, recvbuf: Any) -> None:  # noqa: N802 - mpi4py's name
        """Part j of rank i's `sendbuf` into part i of rank j's `recvbuf`."""
        source, target = _Buffer(sendbuf), _Buffer(recvbuf, "receive buffer")
        _copy(source.part(self._rank, self.size), target.part(self._rank, self.size))  # (first: see Allgather)
        for r in range(self.size):
            if r != self._rank:
                self._csend(r, _ALLTOALL, _raw_payload(source.part(r, self.size)), RAW)
        for r in range(self.size):
            if r != self._rank:
                _mailbox.raw_into(self._crecv(r, _ALLTOALL)[3], target.part(r, self.size))

    def Reduce(self, sendbuf: Any, recvbuf: Any, op: Op = SUM, root: int = 0) -> None:  # noqa: N802
        """Every rank's `sendbuf` combined element by element with `op`, in rank order,
        into `root`'s `recvbuf` (``IN_PLACE`` at the root: its `recvbuf` is its part)."""
        self._root(root)
        _check_op(op)
        if self._rank != root:
            self._csend(root, _GATHER, _raw_payload(_Buffer(sendbuf).bytes), RAW)
            return
        self._reduce_into(sendbuf, recvbuf, op, [r for r in range(self.size) if r != root])

    def Allreduce(self, sendbuf: Any, recvbuf: Any, op: Op = SUM) -> None:  # noqa: N802 - mpi4py's name
        """Every rank's `sendbuf` combined element by element with `op`, in rank order,
        into every rank's `recvbuf`."""
        import numpy

        _check_op(op)
        target = _Buffer(recvbuf, "receive buffer")
        own = target if sendbuf is IN_PLACE else _Buffer(sendbuf)
        _same_size(own, target)
        # Reduce-scatter, then allgather: rank r folds segment r of every rank's buffer,
        # in rank order, then hands it to the others; each rank moves (size-1)/size of
        # its buffer each way. Both go piece by piece, each piece sent, then the same
        # piece received and used, a folded piece sent on at once: what one rank wrote
        # is read while still in cache.
        out, mine = target.array(), own.array()
        size, rank, code = self.size, self._rank, target.code
        bounds = [len(out) * i // size for i in range(size + 1)]
        step = max(1, PIECE // out.itemsize)
        pieces = range(max(1, -(-(bounds[1] - bounds[0] + 1) // step)))  # (segments differ by 1 at most)

        def piece(array: Any, r: int, k: int) -> Any:
            lo = min(bounds[r] + k * step, bounds[r + 1])
            return array[lo:min(lo + step, bounds[r + 1])]

        in_place = sendbuf is IN_PLACE
        for k in pieces:
            for r in range(size):
                if r != rank:
                    self._csend(r, _REDUCE_SCATTER, _raw_payload(memoryview(piece(mine, r, k)).cast("B")), RAW)
            parts, holders = [], []
            for r in range(size):
                if r == rank:
                    # (In place, `out` is this rank's part: a copy, as lower ranks' go first.)
                    parts.append(piece(mine, r, k).copy() if in_place and rank else piece(mine, r, k))
                    continue
                view, holder = _mailbox.raw_view(self._crecv(r, _REDUCE_SCATTER)[3])
                parts.append(numpy.frombuffer(view, dtype=code))
                holders.append(holder)
            _fold_parts(op, piece(out, rank, k), parts, code)
            for holder in holders:
                if holder is not None:
                    holder.release()
            ours = memoryview(piece(out, rank, k)).cast("B")
            for r in range(size):
                if r != rank:
                    self._csend(r, _ALLGATHER, _raw_payload(ours), RAW)
            for r in range(size):
                if r != rank:
                    _mailbox.raw_into(self._crecv(r, _ALLGATHER)[3], memoryview(piece(out, r, k)).cast("B"))

    def _reduce_into(self, sendbuf: Any, recvbuf: Any, op: Op, others: list[int], tag: int = _GATHER) -> None:
        import numpy

        target = _Buffer(recvbuf, "receive buffer")
        own = target if sendbuf is IN_PLACE else _Buffer(sendbuf)
        _same_size(own, target)
        out, mine = target.array(), own.array()
        order = sorted([*others, self._rank])
        if sendbuf is IN_PLACE and order[0] != self._rank:
            mine = mine.copy()  # (`out` takes lower ranks' parts before this rank's)
        received = {r: self._crecv(r, tag)[3] for r in others}
        # In rank order: out = part0 op part1 op ... (views into the arena: no copies).
        for i, r in enumerate(order):
            if r == self._rank:
                _fold_into(op, out, mine, i == 0, target.code)
                continue
            view, holder = _mailbox.raw_view(received.pop(r))
            _fold_into(op, out, numpy.frombuffer(view, dtype=target.code), i == 0, target.code)
            if holder is not None:
                holder.release()


def _same_size(own: _Buffer, target: _Buffer) -> None:
    if own.bytes.nbytes != target.bytes.nbytes:
        raise ValueError(f"mismatch in send count {own.count} and receive count {target.count}")  # (mpi4py's)


def _fold_parts(op: Op, out: Any, parts: list[Any], code: str) -> None:
    """``out = parts[0] op parts[1] op ...`` (rank order), element by element."""
    if op.ufunc is not None and len(parts) > 1:
        first = parts[0]
        if first.ctypes.data == out.ctypes.data:  # (in place: this rank's part is `out`)
            _apply(op, out, parts[1], code)
        elif not fold(op.name, code, _bytes(out), _bytes(first), _bytes(parts[1])):
            _ufunc(op)(first, parts[1], out=out)  # (no first copy either way)
        rest = parts[2:]
    else:
        out[...] = parts[0]
        rest = parts[1:]
    for values in rest:
        _apply(op, out, values, code)


def _fold_into(op: Op, out: Any, values: Any, first: bool, code: str) -> None:
    """The next part of a reduction, in rank order: the first is copied into `out`."""
    if first:
        if values is not out:
            out[...] = values
    else:
        _apply(op, out, values, code)


def _apply(op: Op, out: Any, values: Any, code: str) -> None:
    """``out = out op values``, element by element (out: the lower ranks' result)."""
    if op.ufunc is not None:
        if not fold(op.name, code, _bytes(out), None, _bytes(values)):
            _ufunc(op)(out, values, out=out)  # (a type the engine's loops do not take)
    elif op.user:
        # MPI's convention: function(invec, inoutvec, datatype) leaves invec op inoutvec
        # in inoutvec; invec is the lower ranks' part.
        inout = values.copy()
        op.function(out, inout, _BY_CODE.get(code))
        out[...] = inout
    elif op is REPLACE:
        out[...] = values
    elif op is not NO_OP:
        raise MPIError(ERR_OP, f"MPI_ERR_OP: {op.name} does not apply to buffers of plain values")


def _bytes(array: Any) -> memoryview:
    return memoryview(array).cast("B")


def _ufunc(op: Op) -> Any:
    import numpy

    return getattr(numpy, op.ufunc)  # type: ignore[arg-type]


def _copy(source: memoryview, target: memoryview) -> None:
    if source.nbytes != target.nbytes:
        raise ValueError(f"mismatch in send count and receive count: {source.nbytes} bytes for a part of "
                         f"{target.nbytes}")
    target[:] = source


def _check_op(op: Any) -> None:
    if not isinstance(op, Op):
        raise MPIError(ERR_OP, f"MPI_ERR_OP: invalid reduce operation {op!r}")


def _check_object_op(op: Any) -> None:
    """An object reduction's `op`: an `Op`, or a function of two objects."""
    if not callable(op):
        raise MPIError(ERR_OP, f"MPI_ERR_OP: invalid reduce operation {op!r}")


class Intracomm(Comm):
    """A communicator of ranks of one group (every communicator here is one)."""

    # -- making communicators --
    def _agree_context(self) -> int:
        """A context id every rank of this communicator agrees on, free in each."""
        global _next_context
        context = self.allreduce(_next_context, MAX)
        _next_context = context + 2
        return context

    def Dup(self) -> Intracomm:  # noqa: N802 - mpi4py's name
        """A communicator of the same ranks whose messages never match this one's."""
        return Intracomm(list(self._ranks), self._rank, self._agree_context(), self._name + "_dup")

    Clone = Dup

    def Split(self, color: int = 0, key: int = 0) -> Intracomm:  # noqa: N802 - mpi4py's name
        """One communicator per `color`, its ranks ordered by (`key`, rank here);
        `UNDEFINED` gets COMM_NULL."""
        context = self._agree_context()
        everyone = self.allgather((color, key))
        if color == UNDEFINED:
            return COMM_NULL
        members = sorted((k, r) for r, (c, k) in enumerate(everyone) if c == color)
        ranks = [self._ranks[r] for _, r in members]
        return Intracomm(ranks, [r for _, r in members].index(self._rank), context, f"{self._name}_split")

    def Free(self) -> None:  # noqa: N802 - mpi4py's name
        """Marks it freed: using it again raises ERR_COMM."""
        self._freed = True

    def Abort(self, errorcode: int = 0) -> None:  # noqa: N802 - mpi4py's name
        """Ends the whole job now: this rank exits with `errorcode`, and the launcher ends
        the others."""
        sys.stderr.write(f"paralelo.comm: rank {_world_box().rank} called Abort({errorcode})\n")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(errorcode if errorcode else 1)

    def Create(self, group: Any) -> Intracomm:  # noqa: N802 - mpi4py's name
        raise NotImplementedError("groups are not supported: use Split")


class _Missing:
    """An mpi4py method paralelo.comm leaves out: reading it raises AttributeError saying
    so (``hasattr`` is False), at no cost to the names that are there."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        raise AttributeError(f"{(owner or type(obj)).__name__!r} object has no attribute {self.name!r}: an mpi4py "
                             "method paralelo.comm does not offer; under mpiexec (or paralelo run --mpi) "
                             "paralelo.comm is mpi4py's own, which has it")


for _name in ("Gatherv", "Scatterv", "Allgatherv", "Alltoallv", "Alltoallw", "Reduce_scatter",
              "Reduce_scatter_block", "Scan", "Exscan", "Ibcast", "Igather", "Iscatter", "Iallgather", "Ialltoall",
              "Ireduce", "Iallreduce", "Iscan", "Iexscan", "Ibarrier", "Ineighbor_alltoall", "Issend", "Irsend",
              "Ibsend", "Mprobe", "Improbe", "Get_group", "Create_group", "Create_cart", "Create_graph",
              "Create_dist_graph", "Create_intercomm", "Split_type", "Get_topology", "Get_parent", "Spawn",
              "Accept", "Connect", "Win"):
    setattr(Intracomm, _name, _Missing(_name))


class _NullComm:
    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<paralelo.comm.COMM_NULL>"


COMM_NULL: Any = _NullComm()

# -- this process's place in the job -----------------------------------------------------

_box: Mailbox | None = None
#: Bytes of the inbox of a program run alone (messages to itself).
_SELF_INBOX = 1 << 20
_next_context = 4  # (0, 1: the world's; 2, 3: self's)
COMM_WORLD = Intracomm([0], 0, 0, "MPI_COMM_WORLD")
COMM_SELF = Intracomm([0], 0, 2, "MPI_COMM_SELF")


def _world_box() -> Mailbox:
    """This rank's mailbox: the launcher's (`join`), or one of its own for a program run
    alone (a world of one rank, as mpi4py without mpiexec)."""
    global _box
    if _box is None:
        from ._native import PostOffice

        _box = Mailbox(PostOffice(1, _SELF_INBOX), 0)
    return _box


def join(rank: int, office: Any, aborted: Any) -> None:
    """In a rank the launcher forked: this process is `rank` of the job whose transport
    is `office` (a `PostOffice`); `aborted`: the launcher's event, set as it ends a failed
    job."""
    global _box
    _box = Mailbox(office, rank, aborted._native)
    COMM_WORLD._place(list(range(office.ranks)), rank)
    COMM_SELF._place([rank], 0)
