"""``multiprocessing.shared_memory``'s ``SharedMemory`` and ``ShareableList``, on memfd
segments that never leak.

The standard library's segments are files in /dev/shm: one a program forgets to unlink,
or whose process is SIGKILLed, stays there (using memory) until reboot; and its resource
tracker unlinks a segment when the process that *made* it ends, even while others still
use it (CPython issue 82300). Here a segment is a memfd: the kernel frees it when the last
process holding it closes it or exits, whatever the exit, and never before. Nothing is
ever written to /dev/shm.

A name is found this way: the process that made the segment binds an abstract Unix
socket named after it (the kernel drops it with the process: a name can only be taken
once), and attaching looks for the memfd named after it among the descriptors of this
user's processes (``/proc/<pid>/fd``, the maker's first when the name says who it is),
then opens it there. So a segment can be attached by name while any process that holds
it is alive; ``unlink()`` frees the name (attaching then fails) and the memory goes when
the last holder closes it.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import socket
import struct
import types
from typing import Any, Iterable

__all__ = ["SharedMemory", "ShareableList"]

#: The memfd name prefix: what a descriptor's link says is "/memfd:<this><name> (deleted)".
_PREFIX = "paralelo-shm/"
_PAGE = mmap.PAGESIZE
#: The first page holds this header; the caller's bytes start at the second.
_HEADER = struct.Struct("<8sQI")  # magic, size, unlinked
_MAGIC = b"paloshm1"
_UNLINKED = struct.pack("<I", 1)
#: Names this process made: name -> (its name-lock socket, its fd).
_made: dict[str, tuple[socket.socket, int]] = {}


def _sweep() -> None:
    """Lets go of names this process made that another process unlinked."""
    for name, (lock, fd) in list(_made.items()):
        if _header(fd) is None:
            del _made[name]
            lock.close()
            os.close(fd)


def _forget_names_after_fork() -> None:
    # A forked child made none of the names: they stay its parent's to free.
    for lock, fd in _made.values():
        lock.close()
        os.close(fd)
    _made.clear()


os.register_at_fork(after_in_child=_forget_names_after_fork)


def _new_name() -> str:
    # The maker's pid first: attaching looks there before scanning every process.
    return f"psm_{os.getpid()}_{secrets.token_hex(4)}"


def _lock_name(name: str) -> socket.socket:
    """Takes `name` for this process (FileExistsError if a live segment has it). A name's
    lock is an abstract socket its maker holds; after another process unlinked the
    segment the maker still holds it until it next looks (`_sweep`) or ends, so a lock
    with no live segment behind it is passed by: the name's next generation is taken."""
    for generation in range(64):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind("\0" + _PREFIX + name + (f"/{generation}" if generation else ""))
            return s
        except OSError as e:
            s.close()
            if e.errno != errno.EADDRINUSE:
                raise
        try:
            os.close(_find(name))
        except FileNotFoundError:
            continue  # (unlinked: its maker has yet to let go of the lock)
        break
    raise FileExistsError(17, "File exists", name)


def _candidates(name: str) -> Iterable[int]:
    """Processes that may hold `name`: its maker (from an automatic name) and this
    process first, then every process we can see."""
    first = [os.getpid()]
    m = re.fullmatch(r"psm_(\d+)_[0-9a-f]+", name)
    if m:
        first.insert(0, int(m.group(1)))
    yield from first
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in first:
            yield int(entry)


def _find(name: str) -> int:
    """A new descriptor of the live segment called `name`; FileNotFoundError if none."""
    link = f"/memfd:{_PREFIX}{name} (deleted)"
    for pid in _candidates(name):
        fds = f"/proc/{pid}/fd"
        try:
            entries = os.listdir(fds)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in entries:
            path = f"{fds}/{fd}"
            try:
                if os.readlink(path) != link:
                    continue
                opened = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            if _header(opened) is not None:
                return opened
            os.close(opened)  # unlinked (or not ours): look on
    err = FileNotFoundError(2, "No such file or directory", name)
    err.add_note("(a paralelo segment lives while some process holds it: if the process that made it "
                 "closed it and ended, nothing was left to attach to)")
    raise err


def _header(fd: int) -> int | None:
    """The size a segment's header gives, or None if it is not a live paralelo segment."""
    try:
        head = os.pread(fd, _HEADER.size, 0)
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    magic, size, unlinked = _HEADER.unpack(head)
    return size if magic == _MAGIC and not unlinked else None


class SharedMemory:
    """A block of shared memory, created or attached by name (the standard library's
    ``SharedMemory(name=None, create=False, size=0)``): ``buf`` (a memoryview),
    ``name``, ``size``, ``close()``, ``unlink()``. The memory lives while any process
    holds it, and no longer: nothing is left behind, even after SIGKILL."""

    _fd = -1
    _key = ""
    _alive_at_close = False
    _mmap: mmap.mmap | None = None
    _buf: memoryview | None = None

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        # (The name is reported as given; leading slashes do not tell names apart, as
        # with POSIX shared memory.)
        if create:
            key, fd = self._create(None if name is None else name.lstrip("/"), size)
        else:
            assert name is not None
            key = name.lstrip("/")
            fd = _find(key)
            size = _header(fd) or 0
            if _PAGE + size > os.fstat(fd).st_size:
                # (A header written by another process is not trusted: a size past the
                # memory would make reads beyond it crash the process with SIGBUS.)
                os.close(fd)
                raise OSError(f"shared memory {name!r} says it holds {size} bytes, more than it has")
        self._name, self._key, self._fd, self._size = key if name is None else name, key, fd, size
        try:
            self._mmap = mmap.mmap(fd, size, offset=_PAGE)
        except BaseException:
            self.close()
            raise
        self._buf = memoryview(self._mmap)

    @staticmethod
    def _create(name: str | None, size: int) -> tuple[str, int]:
        _sweep()
        while True:
            chosen = _new_name() if name is None else name
            try:
                lock = _lock_name(chosen)
            except FileExistsError:
                if name is None:
                    continue
                raise
            if name is not None:
                try:
                    os.close(_find(chosen))  # its maker is gone, but a holder keeps it alive
                except FileNotFoundError:
                    break
                lock.close()
                raise FileExistsError(17, "File exists", chosen)
            break
        fd = -1
        try:
            fd = os.memfd_create(_PREFIX + chosen, os.MFD_CLOEXEC)
            os.ftruncate(fd, _PAGE + size)
            os.pwrite(fd, _HEADER.pack(_MAGIC, size, 0), 0)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            lock.close()
            raise
        # The maker keeps a descriptor of its own: the name attaches until `unlink` (or
        # the maker's exit), even after every SharedMemory object here is closed.
        _made[chosen] = (lock, os.dup(fd))
        return chosen, fd

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (at interpreter exit, even `os` may be gone)
            pass

    def __reduce__(self) -> tuple:
        return self.__class__, (self.name, False, self.size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self) -> memoryview:
        """A memoryview of the block's bytes (None once closed, as the standard
        library's)."""
        return self._buf  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """The name that attaches to this block from any process."""
        return self._name

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    def alive(self) -> bool:
        """Whether the block's name still attaches (it was not unlinked). A paralelo
        addition: the standard library's blocks cannot tell."""
        return self._fd >= 0 and _header(self._fd) is not None

    def close(self) -> None:
        """Releases this process's view of the block (the block stays for the others)."""
        _sweep()
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._fd >= 0:
            self._alive_at_close = _header(self._fd) is not None
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Frees the name: nobody attaches to the block any more. Who holds it keeps it;
        its memory goes when the last of them closes it."""
        made = _made.pop(self._key, None)
        if made is not None:
            lock, fd = made
            lock.close()
        elif self._fd >= 0 and _header(self._fd) is not None:
            fd = os.dup(self._fd)  # (its maker may be gone: a holder unlinks it all the same)
        else:
            try:
                fd = _find(self._key)  # (FileNotFoundError if already gone, as the stdlib)
            except FileNotFoundError:
                if self._alive_at_close:
                    # Closed here last of all (`close(); unlink()`, the usual order): the
                    # memory went with that close, and the name with it.
                    self._alive_at_close = False
                    return
                raise
        self._alive_at_close = False
        try:
            os.pwrite(fd, _UNLINKED, _HEADER.size - len(_UNLINKED))
        finally:
            os.close(fd)


# ShareableList ---------------------------------------------------------------------------
#
# Layout: u64 count, then per item a slot (u8 kind, 3 pad, u32 capacity, u32 length, 4 pad,
# u64 data offset), then the data. A slot's capacity is what its first value needed
# (rounded up to 8 bytes, at least 8): any value that fits may replace it later.

_COUNT = struct.Struct("<Q")
_SLOT = struct.Struct("<B3xIIxxxxQ")
_INT, _FLOAT, _BOOL, _STR, _BYTES, _NONE = range(6)
_KIND = {int: _INT, float: _FLOAT, bool: _BOOL, str: _STR, bytes: _BYTES, type(None): _NONE}
_FORMAT = {_INT: "q", _FLOAT: "d", _BOOL: "xxxxxxx?", _NONE: "xxxxxx?x"}
_NUMBER = {_INT: struct.Struct("<q"), _FLOAT: struct.Struct("<d"), _BOOL: struct.Struct("<?")}


def _encode(value: Any) -> tuple[int, bytes]:
    kind = _KIND.get(type(value))
    if kind is None:
        raise TypeError(f"a ShareableList holds int, float, bool, str, bytes and None, not {type(value).__name__}")
    if kind == _STR:
        return kind, value.encode("utf8")
    if kind == _BYTES:
        return kind, value
    if kind == _NONE:
        return kind, b""
    return kind, _NUMBER[kind].pack(value)


class ShareableList:
    """A fixed-length list of ints, floats, bools, strs, bytes and None in a
    ``SharedMemory`` block (the standard library's ``ShareableList(sequence=None, *,
    name=None)``): indexing, assignment (a str or bytes no longer than the storage its
    slot was made with), ``len``, ``count``, ``index``, ``format``, ``shm``. Unlike the
    standard library's, a str or bytes ending in NUL bytes reads back whole."""

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if name is None or sequence is not None:
            items = [_encode(v) for v in (sequence or ())]
            slots = _COUNT.size + _SLOT.size * len(items)
            caps = [max(8, -(-len(data) // 8) * 8) for _, data in items]
            self.shm = SharedMemory(name, create=True, size=slots + sum(caps) or 8)
            buf = self.shm.buf
            _COUNT.pack_into(buf, 0, len(items))
            offset = slots
            for i, ((kind, data), cap) in enumerate(zip(items, caps)):
                _SLOT.pack_into(buf, _COUNT.size + i * _SLOT.size, kind, cap, len(data), offset)
                buf[offset:offset + len(data)] = data
                offset += cap
        else:
            self.shm = SharedMemory(name)

    def _slot(self, position: int, error: str) -> tuple[int, int, int, int, int]:
        n = len(self)
        if position < 0:
            position += n
        if not 0 <= position < n:
            raise IndexError(error)
        at = _COUNT.size + position * _SLOT.size
        kind, cap, length, offset = _SLOT.unpack_from(self.shm.buf, at)
        return at, kind, cap, length, offset

    def __getitem__(self, position: int) -> Any:
        _, kind, _cap, length, offset = self._slot(position, "index out of range")
        buf = self.shm.buf
        if kind in _NUMBER:
            return _NUMBER[kind].unpack_from(buf, offset)[0]
        if kind == _NONE:
            return None
        data = bytes(buf[offset:offset + length])
        return data.decode("utf8") if kind == _STR else data

    def __setitem__(self, position: int, value: Any) -> None:
        at, _, cap, _, offset = self._slot(position, "assignment index out of range")
        kind, data = _encode(value)
        if len(data) > cap:
            raise ValueError("bytes/str item exceeds available storage")
        buf = self.shm.buf
        buf[offset:offset + len(data)] = data
        _SLOT.pack_into(buf, at, kind, cap, len(data), offset)

    def __len__(self) -> int:
        return _COUNT.unpack_from(self.shm.buf, 0)[0]

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    def __reduce__(self) -> tuple:
        return _attach_list, (self.__class__, self.shm.name)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct formats of the items, as the standard library reports them."""
        out = []
        for i in range(len(self)):
            _, kind, cap, _, _ = self._slot(i, "index out of range")
            out.append(f"{cap}s" if kind in (_STR, _BYTES) else _FORMAT[kind])
        return "".join(out)

    def count(self, value: Any) -> int:
        """How many items equal `value`."""
        return sum(value == item for item in self)

    def index(self, value: Any) -> int:
        """The position of the first item equal to `value` (ValueError if none)."""
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")

    __class_getitem__: Any = classmethod(types.GenericAlias)


def _attach_list(cls: type, name: str) -> ShareableList:
    return cls(name=name)
