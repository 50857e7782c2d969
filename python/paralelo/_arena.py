"""Large buffers out of band: a pickle's big buffers (numpy arrays, bytes, bytearrays,
anything with pickle protocol 5 buffers) travel through the program's arena, one memfd
mapped once in every process (``_native.Arena``), and arrive as views into it, not copies.

A payload with buffers in the arena is *framed*: a mode byte, the arena's id, the buffers'
descriptors, then the pickle. Its mode says who keeps the buffers alive until the receiver
holds them:

* LEND: the sender, until it hears back (a pool's tasks: the parent keeps a task's
  payload until its result comes, and sends it again if its worker dies);
* GIVE: the message itself (results: the worker forgets them once sent; the receiver's
  ``take`` turns the message's reference into its own).

A plain pickle starts with ``\\x80``, never a mode byte.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from . import _native

#: Buffers at least this big go through the arena; smaller ones stay in the pickle (a
#: copy through the ring costs less than a block's bookkeeping).
OOB_MIN = 1 << 17
LEND, GIVE = 1, 2
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


def for_spawning() -> Any:
    """The arena's descriptor for a queue or connection pickled to a process being
    spawned (which has none of its own yet), else None: forked processes map it already."""
    from multiprocessing import context, reduction

    popen = context.get_spawning_popen()
    if _arena is None or popen is None or getattr(popen, "_paralelo_arena", False):
        return None  # (once per child: the first object unpickled there maps it)
    setattr(popen, "_paralelo_arena", True)
    return reduction.DupFd(_arena.fd)


def adopt(dup: Any) -> None:
    """Maps the arena a queue or connection brought (see `for_spawning`), as this
    process's own if it has none yet."""
    global _arena
    if dup is None:
        return
    fd = dup.detach()
    try:
        if _arena is None:
            _arena = _native.Arena.open(fd)
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
        _arena.after_fork_in_child()


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
    """A framed payload; ``holds`` keeps its lent buffers alive while it lives."""

    holds: list


def take_buffer(pb: pickle.PickleBuffer, found: list) -> bool:
    """A pickler's ``buffer_callback``: keeps big contiguous buffers in `found` (out of
    band) and says the rest stay in the pickle."""
    try:
        raw = pb.raw()
    except BufferError:  # not contiguous: pickled in-band
        return True
    if raw.nbytes < OOB_MIN:
        return True
    found.append(raw)
    return False


def frame(data: bytes, found: list, mode: int) -> bytes | None:
    """`data`, a pickle whose out-of-band buffers are `found`, framed with those buffers
    put in the arena; None if the arena has no room (the caller pickles in-band)."""
    a = arena()
    if a is None:
        return None
    descriptors: list[bytes] = []
    holds: list = []
    for raw in found:
        if mode == LEND:
            lent = a.lend(raw)
            if lent is None:
                return None  # (the holds taken so far go with `holds`)
            descriptors.append(lent[0])
            holds.append(lent[1])
        else:
            given = a.give(raw)
            if given is None:
                for d in descriptors:
                    a.ungive(d)
                return None
            descriptors.append(given)
    parts = (bytes((mode,)), a.id.to_bytes(8, "little"), len(found).to_bytes(4, "little"), *descriptors, data)
    if mode == GIVE:
        return b"".join(parts)  # (nothing to hold: plain bytes, which pickle as such)
    out = Framed(b"".join(parts))
    out.holds = holds
    return out


def is_framed(data: Any) -> bool:
    return data[:1] in (b"\x01", b"\x02")


def unframe(data: bytes) -> Any:
    """Unpickles a framed payload, its buffers as views into the arena."""
    mode = data[0]
    a = arena()
    if a is None or int.from_bytes(data[1:9], "little") != a.id:
        raise pickle.UnpicklingError("the data's large buffers are in another program's shared memory")
    n = int.from_bytes(data[9:_HEAD], "little")
    start = _HEAD + n * _DESCRIPTOR
    views = [a.take(data[_HEAD + i * _DESCRIPTOR:_HEAD + (i + 1) * _DESCRIPTOR], mode == GIVE) for i in range(n)]
    return pickle.loads(memoryview(data)[start:], buffers=views)
