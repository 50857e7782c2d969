"""``multiprocessing.synchronize`` on the engine: ``Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Condition``, ``Event`` and ``Barrier``, with multiprocessing's
signatures and semantics, for the threads of one process and for processes alike.

Each lives in a piece of the program's arena (``_slab``): futex words in shared memory,
taken with one atomic instruction when free (no system call), waited on with the GIL
released (Ctrl-C stops a wait on the main thread). So, beyond multiprocessing's, they
may be passed to a pool's or an executor's tasks and through queues and pipes, not only
inherited or given to a ``Process``.

Where multiprocessing would wait for ever, they say why instead:

- a lock or semaphore whose holder died holding it (its process killed or ended, even
  if not yet reaped, or an RLock's thread ended): the next ``acquire`` raises
  ``AbandonedLockError`` naming it, and the lock is free again (a semaphore has the dead
  holder's units back);
- a ``Condition``'s lock likewise;
- a ``Barrier`` one of whose parties died in the round under way: its waiters get
  ``BrokenBarrierError`` naming the dead pid.

A process ending normally (any way but a kill or a crash), or dropping a semaphore,
disowns the units it took and kept: a consumer's were used up, not abandoned. Only
units below a semaphore's starting value count as held (a unit released beyond it is a
signal, which no death gives back). A barrier watches the parties of the round under
way only: one that died mid-round breaks it.
"""

from __future__ import annotations

import threading
import time
import weakref
from multiprocessing import process as _mp_process
from threading import BrokenBarrierError
from typing import Any, Callable, cast

from . import _ending, _lockdebug, _probing, _slab, aio
from ._errors import AbandonedLockError
from ._native import SharedBarrier, SharedCondvar, SharedEvent, SharedLock, SharedSemaphore

#: How often a condition's waiter looks whether the lock's holder died (see `_watching`).
_LOOK_EVERY = 0.1

__all__ = ["Barrier", "BoundedSemaphore", "BrokenBarrierError", "Condition", "Event", "Lock", "RLock",
           "Semaphore"]

#: Semaphores this process used: it disowns them as it ends normally.
_used: weakref.WeakSet = weakref.WeakSet()


def _disown_all() -> None:
    for prim in list(_used):
        prim._native.disown()


_ending.at_end(_disown_all)

#: Primitives whose methods are bound per object (a call then costs what the native one
#: does): bound again when a trace starts or stops (`rebind_all`), so their waits are
#: recorded only while it runs.
_bound: weakref.WeakSet = weakref.WeakSet()
_bound_lock = threading.Lock()  # (a thread may make one while a trace starts)


def rebind_all() -> None:
    """Binds every live Semaphore's, Event's and Condition's methods again (a trace
    started or stopped: see ``_probing.trace_waits``)."""
    with _bound_lock:
        alive = list(_bound)
    for prim in alive:
        prim._bind()


class _Lock(SharedLock, aio.AsyncLock):
    # (The native base holds the word; acquire, release, __enter__ and __exit__ are its.)
    _recursive = False
    _buf: Any  # the arena piece the lock lives in

    def __new__(cls, *, ctx: Any = None, _buf: Any = None) -> _Lock:
        buf = _slab.piece(SharedLock.SIZE, cls.__name__) if _buf is None else _buf
        self = cast(_Lock, super().__new__(cls, buf, cls._recursive))
        self._buf = buf
        return self

    def __reduce__(self) -> tuple:
        return _slab.reduce(self._buf, _rebuild_lock, (type(self),), type(self).__name__)

    def locked(self) -> bool:
        """Whether someone holds it (threading's ``locked()``)."""
        return self.holder() is not None

    def _is_owned(self) -> bool:  # (threading's name, which some code calls)
        return bool(self._is_mine())


def _rebuild_lock(buf: Any, cls: type) -> Any:
    return cls(_buf=buf)


class Lock(_Lock):
    """A lock shared by threads and processes (multiprocessing's ``Lock``):
    ``acquire(block=True, timeout=None)``, ``release()``, ``with``; any thread of any
    process may release it. From asyncio: ``async with lock`` and ``await
    lock.acquire_async(timeout=None)``."""

    def __repr__(self) -> str:
        if self.holder() is None:
            owner = "None"
        elif self._is_mine():
            owner = _mp_process.current_process().name  # (some thread of this process)
        else:
            owner = "SomeOtherProcess"
        return f"<{type(self).__name__}(owner={owner})>"


class RLock(_Lock):
    """A re-entrant lock shared by threads and processes (multiprocessing's ``RLock``):
    its holder thread may take it again, and only it releases it."""

    _recursive = True

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """Refused: an RLock is re-entrant per thread, and every task of an event loop
        runs on the loop's one thread, so it would let them all in at once."""
        raise TypeError("an RLock cannot be taken from asyncio: its tasks share the loop's thread, "
                        "and an RLock lets its holder thread in again; use paralelo.Lock")

    def __repr__(self) -> str:
        if self.holder() is None:
            owner, count = "None", "0"
        elif self._is_mine():
            owner = _mp_process.current_process().name
            if threading.current_thread().name != "MainThread":
                owner += "|" + threading.current_thread().name
            count = str(self._count())
        else:
            owner, count = "SomeOtherThread", "nonzero"
        return f"<{type(self).__name__}({owner}, {count})>"


class _Placed:
    """A primitive made of one native object living in an arena piece (`_native`)."""

    _native: Any
    _buf: Any

    def _place(self, kind: Any, *args: Any, buf: Any = None) -> None:
        self._buf = _slab.piece(kind.SIZE, type(self).__name__) if buf is None else buf
        self._native = kind(self._buf, *args)

    def _reduce(self, args: tuple) -> tuple:
        return _slab.reduce(self._buf, _rebuild, (type(self), args), type(self).__name__)

    def _bind(self) -> None:
        """Binds the methods a call reaches directly (traced while a trace runs)."""

    def _bound_here(self) -> None:
        """Binds its methods, and again whenever a trace starts or stops."""
        self._bind()
        with _bound_lock:
            _bound.add(self)


def _rebuild(buf: Any, cls: Any, args: tuple) -> Any:
    self = cls.__new__(cls)
    self._rebuilt(buf, *args)
    return self


class Semaphore(_Placed, aio.AsyncLock):
    """A counting semaphore shared by threads and processes (multiprocessing's
    ``Semaphore(value=1)``): ``acquire(block=True, timeout=None)``, ``release()``,
    ``get_value()``, ``with``, ``async with``. Any thread of any process may release
    it."""

    _bounded = False

    def __init__(self, value: int = 1, *, ctx: Any = None) -> None:
        if not isinstance(value, int):
            raise TypeError(f"a semaphore's value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._place(SharedSemaphore, value, self._bounded)
        self._kept()

    def _rebuilt(self, buf: Any) -> None:
        self._place(SharedSemaphore, buf=buf)
        self._kept()

    def _bind(self) -> None:
        n = self._native
        # (Bound per object: a call then costs what the native one does.)
        self.acquire, self.release, self.get_value = n.acquire, n.release, n.get_value  # type: ignore[method-assign]
        if _lockdebug.enabled():  # (watched: see _lockdebug)
            def acquire(block: bool = True, timeout: float | None = None, *, blocking: bool | None = None) -> bool:
                return _lockdebug.acquire(self, n.acquire, n.release, block if blocking is None else blocking, timeout)

            def release(count: int = 1) -> None:
                for _ in range(count):
                    _lockdebug.release(self, n.release, False)

            self.acquire, self.release = acquire, release  # type: ignore[method-assign,assignment]
        if _probing.waits is not None:
            self.acquire = _probing.traced_acquire(self.acquire, type(self).__name__)  # type: ignore[method-assign]

    def _kept(self) -> None:
        n = self._native
        self._bound_here()
        _used.add(self)
        # Dropped here before this process ends: what it took and kept was used up. (At
        # the end itself, `_disown_all` does it for every one still alive.)
        weakref.finalize(self, n.disown).atexit = False

    def __enter__(self) -> bool:
        return bool(self.acquire())

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self, block: bool = True, timeout: float | None = None, *, blocking: bool | None = None) -> bool:
        """Takes a unit, waiting for one (at most `timeout` seconds): True once taken
        (``blocking``: threading's name for ``block``)."""
        return bool(self._native.acquire(block, timeout, blocking=blocking))

    def release(self, n: int = 1) -> None:
        """Gives `n` units back (threading's ``n``)."""
        self._native.release(n)

    def get_value(self) -> int:
        """Units free now."""
        return int(self._native.get_value())

    def __reduce__(self) -> tuple:
        return self._reduce(())

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()})>"


class BoundedSemaphore(Semaphore):
    """A semaphore that refuses a release past its starting value (ValueError), as
    multiprocessing's ``BoundedSemaphore(value=1)``."""

    _bounded = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()}, maxvalue={self._native.bound})>"


class Event(_Placed):
    """An event shared by threads and processes (multiprocessing's ``Event``): ``set``,
    ``clear``, ``is_set``, ``wait(timeout=None)``."""

    def __init__(self, *, ctx: Any = None) -> None:
        self._rebuilt(None)

    def _rebuilt(self, buf: Any) -> None:
        self._place(SharedEvent, buf=buf)
        self._bound_here()

    def _bind(self) -> None:
        n = self._native
        self.is_set, self.set, self.clear, self.wait = n.is_set, n.set, n.clear, n.wait  # type: ignore[method-assign]
        if _probing.waits is not None:
            self.wait = _probing.traced_wait(n.wait, n.is_set, "Event")  # type: ignore[method-assign]

    def is_set(self) -> bool:  # (bound per object in _rebuilt: these are for typing and docs)
        """Whether it is set."""
        return bool(self._native.is_set())

    def set(self) -> None:
        """Sets it, waking every waiter."""
        self._native.set()

    def clear(self) -> None:
        """Clears it."""
        self._native.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until it is set: True, or False if `timeout` seconds passed first."""
        return bool(self._native.wait(timeout))

    async def wait_async(self, timeout: float | None = None) -> bool:
        """``wait`` from asyncio: the loop runs on while a wait thread waits."""
        return self.is_set() or await aio.until(self.wait, timeout)

    def __reduce__(self) -> tuple:
        return self._reduce(())

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


class Condition(_Placed):
    """A condition variable shared by threads and processes (multiprocessing's
    ``Condition(lock=None)``, an ``RLock`` by default; the lock must be paralelo's):
    ``wait(timeout=None)``, ``wait_for(predicate, timeout=None)``, ``notify(n=1)``,
    ``notify_all()``, and the lock's ``acquire``, ``release`` and ``with``. A
    ``notify(n)`` lets exactly min(n, waiting) waiters go."""

    def __init__(self, lock: Any = None, *, ctx: Any = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, _Lock):
            raise TypeError(f"a paralelo Condition's lock must be a paralelo Lock or RLock, not "
                            f"{type(lock).__name__}")
        self._rebuilt(None, lock)

    def _rebuilt(self, buf: Any, lock: Any) -> None:
        self._lock = lock
        self._place(SharedCondvar, buf=buf)
        self._bound_here()

    def _bind(self) -> None:
        # (The lock's own methods: traced, when a trace runs, as every lock's are.)
        self.acquire, self.release = self._lock.acquire, self._lock.release  # type: ignore[method-assign]

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:  # (bound per object)
        """Takes the condition's lock."""
        return bool(self._lock.acquire(block, timeout))

    def release(self) -> None:
        """Releases the condition's lock."""
        self._lock.release()

    def __enter__(self) -> bool:
        return bool(self._lock.__enter__())

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock, waits to be notified (at most `timeout` seconds), takes the
        lock again: True if notified, False if the time ran out."""
        lock, cv = self._lock, self._native
        assert lock._is_mine(), "must acquire() condition before using wait()"
        entry = cv.enter()
        depth = lock._release_save()
        notified = False
        failed: BaseException | None = None
        try:
            notified = self._watching(entry, timeout)
        except BaseException as e:  # noqa: BLE001 - raised below, once the lock is held again
            failed = e
        try:
            lock._acquire_restore(depth)  # (held again even if its holder died meanwhile)
        except AbandonedLockError as e:
            if failed is None:
                raise
            # Ctrl-C (say) ended the wait: that is what the caller gets, the lock held
            # again, with what was found taking it back said too.
            failed.add_note(f"(and on taking the condition's lock back: {e})")
        finally:
            notified = cv.leave(entry) or notified
        if failed is not None:
            raise failed
        return bool(notified)

    def _watching(self, entry: int, timeout: float | None) -> bool:
        """Waits on `entry`, in slices between which it looks whether the lock's holder
        died holding it: then nobody can notify without first taking the lock over, so
        the wait ends (and taking the lock back reports the death)."""
        cv, lock = self._native, self._lock
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            step = _LOOK_EVERY if end is None else min(_LOOK_EVERY, max(0.0, end - time.monotonic()))
            if cv.wait(entry, step):
                return True
            if (end is not None and time.monotonic() >= end) or lock._abandoned():
                return False

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Waits until `predicate()` is true (at most `timeout` seconds): its last value."""
        result = predicate()
        end = None if timeout is None else time.monotonic() + timeout
        while not result:
            wait = None
            if end is not None:
                wait = end - time.monotonic()
                if wait <= 0:
                    break
            self.wait(wait)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Lets up to `n` waiters go (the caller holds the lock)."""
        assert self._lock._is_mine(), "lock is not owned"
        self._native.notify(max(0, n))

    def notify_all(self) -> None:
        """Lets every waiter go (the caller holds the lock)."""
        self.notify(1 << 32)

    notifyAll = notify_all  # (threading's old name)

    def __reduce__(self) -> tuple:
        return self._reduce((self._lock,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._lock}, {self._native.waiting()})>"


class Barrier(_Placed):
    """A barrier shared by threads and processes (multiprocessing's
    ``Barrier(parties, action=None, timeout=None)``): ``wait(timeout=None)`` returns
    each party's index in its round (``parties - 1`` for the last, which runs
    `action`); ``abort()``, ``reset()``, ``parties``, ``n_waiting``, ``broken``;
    ``BrokenBarrierError`` as the standard library raises it, and when a party died."""

    def __init__(self, parties: int, action: Callable[[], Any] | None = None,
                 timeout: float | None = None, *, ctx: Any = None) -> None:
        if not isinstance(parties, int):
            raise TypeError(f"parties must be an int, not {type(parties).__name__}")
        self._place(SharedBarrier, parties)
        self._action, self._timeout = action, timeout

    def _rebuilt(self, buf: Any, action: Any, timeout: Any) -> None:
        self._place(SharedBarrier, buf=buf)
        self._action, self._timeout = action, timeout

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the round to fill (at most `timeout` seconds, else the barrier's
        own; a timeout breaks it): this party's index in the round."""
        index, round_, timeout = self._arrive(timeout)
        if round_ is not None:
            self._native.wait(round_, timeout)  # (a timeout or Ctrl-C breaks the round, in the engine)
        return index

    def _arrive(self, timeout: float | None) -> tuple[int, int | None, float | None]:
        """Arrives: (this party's index, the round to wait for, or None if this party
        filled it and let it go, the timeout to wait with)."""
        if timeout is None:
            timeout = self._timeout
        if timeout is not None and not timeout == timeout:  # (NaN: refused before arriving)
            raise ValueError("timeout must be a non-negative number of seconds or None, not nan")
        b = self._native
        index, round_ = b.arrive()
        if index + 1 != b.parties:
            return int(index), round_, timeout
        if self._action is not None:
            try:
                self._action()
            except BaseException:
                b.abort()
                raise
        b.pass_round(round_)  # (BrokenBarrierError if it broke meanwhile)
        return int(index), None, timeout

    async def wait_async(self, timeout: float | None = None) -> int:
        """``wait`` from asyncio: the party arrives at once, and a wait thread waits for
        the round to fill while the loop runs on. Cancelling the waiting task breaks the
        barrier (as a timeout does): no other party waits for ever for it."""
        import asyncio

        index, round_, timeout = self._arrive(timeout)
        if round_ is not None:
            waiting = aio.submit_wait(self._native.wait, round_, timeout)
            try:
                await asyncio.wrap_future(waiting)
            except asyncio.CancelledError:
                if not waiting.done():  # (a round that passed meanwhile stays passed)
                    self._native.abort()  # (which also ends the wait thread's wait)
                raise
        return index

    def abort(self) -> None:
        """Breaks the barrier: its waiters, and later ones until a reset, get
        BrokenBarrierError."""
        self._native.abort()

    def reset(self) -> None:
        """Back to its first state; the waiters of the round under way get
        BrokenBarrierError."""
        self._native.reset()

    @property
    def parties(self) -> int:
        return int(self._native.parties)

    @property
    def n_waiting(self) -> int:
        return int(self._native.n_waiting)

    @property
    def broken(self) -> bool:
        return bool(self._native.broken)

    def __reduce__(self) -> tuple:
        return self._reduce((self._action, self._timeout))

    def __repr__(self) -> str:
        if self.broken:
            return f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: broken>"
        return (f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: "
                f"waiters={self.n_waiting}/{self.parties}>")
