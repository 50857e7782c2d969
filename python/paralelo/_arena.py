"""Large buffers out of band: a pickle's big buffers (numpy arrays and whatever else
pickles with protocol-5 buffers; the pickler saves bytes and bytearray whole) travel
through the program's arena, one memfd mapped once in every process (``_native.Arena``),
and arrive as views into it, not copies.

Each buffer is copied into a block of its own (a copy: the receiver may write to what it
got, as with any pickle). A payload with blocks is *framed*: a mode byte, the arena's id,
the buffers' descriptors, then the pickle. Its mode says who keeps the blocks alive until
the receiver holds them:

* LEND: the sender, until it hears back (a pool's tasks: the unit keeps its payload, and
  so its blocks, until its result comes; a call retried after its worker died is pickled
  afresh, as its first run may have written to them);
* GIVE: the message itself. The sender holds the blocks until the message goes out
  (`commit`, just before the send: a sender that dies first leaves nothing behind), then
  hands them over; the receiver's ``take`` turns the message's reference into its own.

A plain pickle starts with ``\\x80``, never a mode byte.
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any, cast

from . import _native

#: Buffers at least this big go through the arena; smaller ones stay in the pickle (a
#: copy through the ring costs less than a block's bookkeeping).
OOB_MIN = 1 << 17
LEND, GIVE = 1, 2
#: A frame of raw bytes (``send_bytes``), given like GIVE: its one block holds them.
RAW = 3
_DESCRIPTOR = 32
_HEAD = 13  # mode u8, arena id u64, count u32

_arena: _native.Arena | None = None


def arena() -> _native.Arena | None:
    """This program's arena: inherited from the process that forked this one, else made
    here (address space only: memory is used as blocks are written). None if it cannot be
    made (no memfd)."""
    global _arena
    if _arena is None:
        size = min(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), 1 << 36)
        try:
            _arena = _native.Arena(size, int.from_bytes(os.urandom(8), "little"))
        except OSError:
            return None
    return _arena


def spawning() -> bool:
    """Whether this thread is pickling what a process being spawned will unpickle."""
    from multiprocessing import context

    return context.get_spawning_popen() is not None


def for_spawning() -> Any:
    """The arena's descriptor for what is pickled to a process being spawned (which has
    none of its own yet), else None: forked processes map it already. Once per child:
    unpickled there, it maps the arena at once (`_Adopting`), before anything after it
    in the pickle needs it (a Condition's lock, unpickled among the Condition's
    arguments, before the Condition's own rebuild runs)."""
    from multiprocessing import context, reduction

    popen = context.get_spawning_popen()
    if _arena is None or popen is None or getattr(popen, "_paralelo_arena", False):
        return None
    setattr(popen, "_paralelo_arena", True)
    return _Adopting(reduction.DupFd(_arena.fd))


class _Adopting:
    """The arena's descriptor in a pickle for a spawned process: unpickles as None,
    having mapped the arena (see `for_spawning`)."""

    __slots__ = ("dup",)

    def __init__(self, dup: Any) -> None:
        self.dup = dup

    def __reduce__(self) -> tuple:
        return _adopted, (self.dup,)


def _adopted(dup: Any) -> None:
    adopt(dup)


def adopt(dup: Any) -> None:
    """Maps the arena a queue, connection or SharedArray brought (see `for_spawning`) as
    this process's own, if it has none yet or holds nothing in the one it has."""
    if dup is not None:
        adopt_fd(dup.detach())


def adopt_fd(fd: int) -> None:
    """`adopt` for the arena's descriptor itself, which this closes."""
    global _arena
    try:
        if _arena is None or _arena.holds() == 0:
            # (One this process made before it got its parent's, at import time, say,
            # and holds nothing of: the parent's serves instead, so frames go both ways.)
            brought = _native.Arena.open(fd)
            if _arena is None or brought.id != _arena.id:
                _arena = brought
    except (ValueError, OSError):
        pass  # (no room for this process: its big buffers go in-band)
    finally:
        os.close(fd)


def _before_fork() -> None:
    if _arena is not None:
        _arena.before_fork()


def _after_fork_in_parent() -> None:
    if _arena is not None:
        _arena.after_fork_in_parent()


def _after_fork_in_child() -> None:
    if _arena is not None:
        try:
            _arena.after_fork_in_child()
        except (ValueError, OSError):
            pass  # (no slot: what it inherited is held as it is next used)


# A forked child's copies of this process's objects may view arena blocks: it holds them
# too, from the fork on (not only once it next uses the arena).
os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def reclaim_dead() -> None:
    """Lets go of what processes that died held in the arena (a worker killed while it
    held a view): the memory is free for the next transfer, not only at the program's end."""
    if _arena is not None:
        _arena.reclaim_dead()


def current() -> _native.Arena | None:
    """This process's arena if it has one (never makes one)."""
    return _arena


class Framed(bytes):
    """A framed payload: ``holds`` keeps its blocks alive while it lives (until `commit`
    hands them to the message); ``oob`` is how many bytes they hold."""

    holds: list
    oob: int


def take_buffer(pb: pickle.PickleBuffer, found: list, least: float = OOB_MIN) -> bool:
    """A pickler's ``buffer_callback``: keeps contiguous buffers of `least` bytes or more
    in `found` (out of band) and says the rest stay in the pickle. A SharedArray's span
    goes out of band whatever its size (with ``least=inf``, it alone does)."""
    try:
        raw = pb.raw()
    except BufferError:  # not contiguous: pickled in-band
        return True
    if raw.nbytes < least and type(raw.obj) is not _native.ArenaBuffer:
        return True
    found.append(raw)
    return False


#: Processes that died or exec'd without leaving keep their blocks until swept: a sender
#: sweeps at most this often (a sweep reads /proc for every participant).
SWEEP_SECONDS = 1.0
_swept = 0.0


def frame(data: bytes, found: list, mode: int) -> Framed | None:
    """`data`, a pickle whose out-of-band buffers are `found`, framed with copies of those
    buffers in the arena; None if they cannot go there (no room, no arena): the caller
    pickles in-band. The blocks are held by the frame (its ``holds``)."""
    global _swept
    a = arena()
    if a is None:
        return None
    now = time.monotonic()
    if now - _swept > SWEEP_SECONDS:
        _swept = now
        try:
            a.reclaim_dead()
        except (ValueError, OSError):
            pass
    descriptors: list[bytes] = []
    holds: list = []
    try:
        for raw in found:
            if type(raw.obj) is _native.ArenaBuffer:
                # A SharedArray's span (`share_span`): its own block, never copied; the
                # span view is the frame's hold.
                descriptors.append(raw.obj.descriptor)
                holds.append(raw.obj)
                continue
            put = a.put(raw)
            if put is None:
                return None  # (the blocks taken so far go with `holds`)
            descriptors.append(put[0])
            holds.append(put[1])
    except (ValueError, OSError):  # (the arena's table of processes is full: in-band)
        return None
    out = Framed(b"".join((bytes((mode,)), a.id.to_bytes(8, "little"), len(found).to_bytes(4, "little"),
                           *descriptors, data)))
    out.holds = holds
    out.oob = sum(raw.nbytes for raw in found)
    return out


def commit(data: bytes) -> bytes:
    """A payload about to be sent, as the bytes to send: a GIVE frame's blocks are handed
    to the message now (see the module's docstring); anything else goes as it is. If the
    send then fails, `ungive` the bytes."""
    if type(data) is not Framed or data[0] not in (GIVE, RAW):
        return data
    a = arena()
    assert a is not None  # (it made the frame)
    for hold in data.holds:
        a.hand_over(hold)
    data.holds = []
    return bytes(data)


def uncommit(data: bytes) -> Framed:
    """A committed GIVE payload that could not go out at once (it waits in a queue's
    feeder), its blocks taken back from the message: held by this process again until
    it is committed and sent, so a sender that dies meanwhile leaves nothing behind."""
    a = _arena
    assert a is not None
    out = Framed(data)
    out.holds = [a.take(d, True) for d in _descriptors(data)]
    out.oob = weight(data) - len(data)
    return out


def ungive(data: bytes) -> None:
    """A committed GIVE payload that will never be taken (its send failed, or it was read
    and could not be unpickled): its blocks are let go."""
    if is_framed(data) and data[0] in (GIVE, RAW) and _ours(data):
        _ungive_all(_descriptors(data))


def _ungive_all(descriptors: list[bytes]) -> None:
    assert _arena is not None
    for d in descriptors:
        try:
            _arena.ungive(d)
        except ValueError:
            pass  # (taken meanwhile, or gone)


def _ours(data: bytes) -> bool:
    """Whether framed `data` names this process's arena."""
    return _arena is not None and int.from_bytes(data[1:9], "little") == _arena.id


def weight(data: bytes) -> int:
    """How many bytes a payload moves: its own, and its blocks' (a frame's are a few
    hundred bytes for gigabytes out of band)."""
    if type(data) is Framed:
        return len(data) + data.oob
    if not is_framed(data):
        return len(data)
    return len(data) + sum(int.from_bytes(d[24:32], "little") for d in _descriptors(data))


def _descriptors(data: bytes) -> list[bytes]:
    n = int.from_bytes(data[9:_HEAD], "little")
    return [bytes(data[_HEAD + i * _DESCRIPTOR:_HEAD + (i + 1) * _DESCRIPTOR]) for i in range(n)]


def is_framed(data: Any) -> bool:
    return data[:1] in (b"\x01", b"\x02", b"\x03")


def unframe(data: bytes) -> Any:
    """Unpickles a framed payload, its buffers as views into the arena. If it cannot be
    read, a GIVE frame's blocks are let go all the same."""
    a = _arena
    if a is None or not _ours(data):
        raise pickle.UnpicklingError("the data's large buffers are in another program's shared memory")
    if data[0] == RAW:
        return pickle.loads(_raw(data))  # (bytes sent with send_bytes, read with recv)
    given = data[0] == GIVE
    descriptors = _descriptors(data)
    views = []
    try:
        for d in descriptors:
            views.append(a.take(d, given))
    except BaseException:
        if given:
            _ungive_all(descriptors[len(views):])
        raise
    return pickle.loads(memoryview(data)[_HEAD + len(descriptors) * _DESCRIPTOR:], buffers=views)


def in_band(data: bytes) -> bytes:
    """A message as ``recv_bytes`` returns it: an object sent with ``send`` whose buffers
    went through this program's arena, pickled whole (as multiprocessing's would be), so
    ``pickle.loads`` reads it; any other message as it is."""
    if is_framed(data) and _ours(data):
        if data[0] == RAW:
            return _raw(data)
        return pickle.dumps(unframe(data), pickle.HIGHEST_PROTOCOL)
    return data


def raw_frame(data: memoryview) -> Framed | None:
    """Bytes for ``send_bytes``, copied into a block of the arena (one copy, on several
    threads, instead of fragments through the ring): a RAW frame to `commit` and send;
    None if they cannot go there."""
    return frame(b"", [data], RAW)


def _raw(data: bytes) -> bytes:
    """The bytes a RAW frame's block holds (copied out; the block goes)."""
    with memoryview(take_raw(data)) as view:
        return bytes(view)


def take_raw(data: bytes) -> Any:
    """A RAW frame's block, taken: a view of its bytes (the block goes with the view)."""
    if _arena is None or not _ours(data):
        raise pickle.UnpicklingError("the data's bytes are in another program's shared memory")
    (descriptor,) = _descriptors(data)
    return cast(Any, _arena.take(descriptor, True))


def leave() -> None:
    """This process is ending: lets go of everything it holds in the arena now, rather
    than when a sweep finds it gone."""
    if _arena is not None:
        try:
            _arena.leave()
        except (ValueError, OSError):
            pass
