"""How arguments and results are pickled: the C pickler when it can, cloudpickle for what
only exists in this process (``__main__`` objects made after the pool, lambdas, closures,
classes made at run time), machine arrays for chunks of only ints or only floats."""

from __future__ import annotations

import copyreg
import io
import math
import os
import pickle
import sys
import threading
import types
from typing import Any, Callable

from multiprocessing.reduction import ForkingPickler

from ._arena import GIVE, LEND, OOB_MIN, frame, is_framed, take_buffer, unframe
from ._native import pack_numbers, slow_path_if_fast, unpack_numbers
from ._wire import OK, OK_ARRAY

PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Types whose pickle holds nothing but the value: no buffer, no reference, nothing a
#: ``__reduce__`` does, and the same pickle later as now.
FLAT = frozenset((int, float, str, bytes, bool, type(None)))


class MainNames:
    """The functions and classes ``__main__`` held when a pool's zygote was forked: its
    workers have these very objects (with their globals, as the initializer left them),
    so they travel by reference, as with multiprocessing's fork. Anything made or rebound
    since travels by value."""

    __slots__ = ("names",)

    def __init__(self, only: dict[str, tuple] | None = None) -> None:
        """With `only` (the script's definitions by name, as a fresh interpreter that
        imports it gets them: see `_fresh`): just those of ours that are the same
        `definition`."""
        main = sys.modules.get("__main__")
        self.names = {
            k: v for k, v in (vars(main).items() if main is not None else ())
            if isinstance(v, (type, types.FunctionType)) and (only is None or only.get(k) == definition(v))
        }

    def has(self, obj: Any) -> bool:
        """Whether `obj` (a `__main__` function or class) is one the workers have."""
        qualname = getattr(obj, "__qualname__", None)
        if type(qualname) is not str or "<" in qualname:  # <locals>, <lambda>
            return False
        first, _, rest = qualname.partition(".")
        known = self.names.get(first)
        main = sys.modules.get("__main__")
        if known is None or getattr(main, first, None) is not known:
            return False  # made, or rebound, since the fork
        for part in rest.split(".") if rest else ():
            known = getattr(known, part, None)
        return known is obj


def definition(obj: type | types.FunctionType) -> tuple:
    """Which definition a function or class is: its qualified name and, for a function,
    its first line (a class's is not kept before Python 3.13: 0)."""
    code = getattr(obj, "__code__", None)
    return obj.__qualname__, code.co_firstlineno if code is not None else 0


def _renew_locks_after_fork() -> None:
    # cloudpickle's class tracker lock may be held by a parent thread (a collector loading
    # a class sent by value) at the fork: the child gets a free one.
    module = sys.modules.get("cloudpickle.cloudpickle")
    if hasattr(module, "_DYNAMIC_CLASS_TRACKER_LOCK"):
        module._DYNAMIC_CLASS_TRACKER_LOCK = threading.Lock()  # type: ignore[union-attr]


os.register_at_fork(after_in_child=_renew_locks_after_fork)

#: In a worker: what its pool's zygote inherited (None in the parent, whose pools each
#: pass their own).
inherited_main: MainNames | None = None


def _pickler() -> type:
    """cloudpickle's pickler, made ours on first use: cloudpickle (and what it imports)
    costs a program that never pickles by value 8 ms at import and, in every fork, the
    copying of its mappings."""
    global _Pickler
    if _Pickler is not None:
        return _Pickler
    import cloudpickle
    from cloudpickle import cloudpickle as _cloudpickle

    def code_reduce(code: types.CodeType) -> tuple:
        # cloudpickle names every code object it ships "<dynamic-code>" (for deterministic
        # payloads); we keep its file name, so a worker's traceback of a `__main__`
        # function shows the script's file and lines, as with multiprocessing.
        rebuild, args = _cloudpickle._code_reduce(code)
        return rebuild, tuple(code.co_filename if type(a) is str and a == "<dynamic-code>" else a for a in args)

    class Pickler(cloudpickle.Pickler):
        # Flat, so a type's look-up misses no more often than in cloudpickle's own table;
        # last, what multiprocessing registers for its own pickler (the live table): its
        # shared ctypes objects then refuse with its message ("c_int objects should only
        # be shared between processes through inheritance"), not as an mmap.
        maps = ({types.CodeType: code_reduce}, *cloudpickle.Pickler.dispatch_table.maps,
                ForkingPickler._extra_reducers)  # type: ignore[attr-defined]

        def __init__(self, file: io.BytesIO, main: MainNames | None, buffer_callback: Any = None) -> None:
            # Before the C pickler's __init__, which reads it: set after, it would only
            # shadow cloudpickle's class attribute, not reach the C pickler.
            self.dispatch_table = _flat(*self.maps)
            super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
            self.main = main

        def reducer_override(self, obj: Any) -> Any:
            main = self.main
            if (main is not None and isinstance(obj, (type, types.FunctionType))
                    and getattr(obj, "__module__", None) == "__main__" and main.has(obj)):
                return NotImplemented  # by reference: the plain pickler's save_global
            return super().reducer_override(obj)

    _Pickler = Pickler
    return Pickler


_Pickler: type | None = None


def by_value(obj: Any, main: MainNames | None = None, buffer_callback: Any = None) -> bytes:
    """Pickles `obj` with cloudpickle: functions and classes that only exist here travel by
    value, keeping their file names; those in `main` (default: what this worker's pool
    inherited) by reference."""
    buf = io.BytesIO()
    (_Pickler or _pickler())(buf, main or inherited_main, buffer_callback).dump(obj)
    return buf.getvalue()


class _Session(threading.local):
    #: What `once` made in this thread's pickling (None: no pickling under way).
    made: dict | None = None


_session = _Session()


def in_session(pickling: Callable[..., bytes], *args: Any) -> bytes:
    """`pickling(*args)` as one pickling for `once`: it may pickle an object twice (the
    C pickler first, then another), and what a ``__reduce__`` does to the world (pass a
    descriptor on) must be done once; if it fails, what was done is undone (no message
    will carry it)."""
    if _session.made is not None:
        return pickling(*args)  # (inside another: its session)
    made: dict = {}
    _session.made = made
    try:
        return pickling(*args)
    except BaseException:
        for _obj, value, undo in made.values():
            if undo is not None:
                try:
                    undo(value)
                except Exception:  # noqa: BLE001 - (the pickling's own error is the one to raise)
                    pass
        raise
    finally:
        _session.made = None


def in_pickling() -> bool:
    """Whether this thread is pickling for one of paralelo's messages (see `in_session`),
    which carry arena buffers out of band."""
    return _session.made is not None


def once(obj: Any, make: Callable[[], Any], undo: Callable[[Any], None] | None = None) -> Any:
    """What `make()` makes for `obj` (a ``__reduce__``'s side effect), made once per
    pickling (see `in_session`), and taken back by `undo(made)` if that pickling fails;
    outside one, made each time."""
    made = _session.made
    if made is None:
        slow_path_if_fast()  # (a queue's fast put: it goes the slow way, in a session)
        return make()
    got = made.get(id(obj))
    if got is None:
        got = made[id(obj)] = (obj, make(), undo)  # (holding `obj`: its id stays its own)
    return got[1]


def dumps(obj: Any, main: MainNames | None = None, oob: int = 0, least: float = OOB_MIN) -> bytes:
    """Pickles arguments and results: the C pickler (fast) when it can, cloudpickle (see
    `by_value`) when the data refers to ``__main__`` or to classes made at run time.
    cloudpickle maps a class that went out by value and comes back to the original.
    With `oob` (``_arena.LEND`` or ``GIVE``), buffers of `least` bytes or more go through
    the arena (a ``_arena.Framed`` payload, which `loads` reads), and a SharedArray's
    whatever its size."""
    return in_session(_dumps, obj, main, oob, least)


def dumps_call(call: tuple, main: MainNames | None, oob: int = 0) -> bytes:
    """A call's ``(function, args, kwargs)`` (read back by `loads_call`), as `dumps`
    pickles it but with multiprocessing's registered reducers, as the by-value pickler
    has them (a multiprocessing Connection in the arguments then travels as
    multiprocessing sends it, not as a bare descriptor number). A ``__main__`` function
    the workers have travels as its name: the call then needs no by-value pickling unless
    its arguments name ``__main__`` too."""
    return in_session(_dumps, call, main, oob, OOB_MIN, _named_call)


def dumps_forking(obj: Any, main: MainNames | None, oob: int = 0) -> bytes:
    """`dumps` with multiprocessing's registered reducers, as `dumps_call` (its
    connections, queues and locks then pickle as multiprocessing pickles them)."""
    return in_session(_dumps, obj, main, oob, OOB_MIN, _as_it_is)


def _as_it_is(obj: Any, main: MainNames | None) -> Any:
    return obj


def dumps_calls(tickets: list[int], calls: list[tuple], main: MainNames | None, oob: int = 0) -> bytes:
    """Several calls as `dumps_call` pickles one, in one pickle with their tickets (read
    back by `loads`; each call by `resolve_call`): a burst of small calls costs one
    pickling, and a function shared by the calls travels once."""
    return in_session(_dumps, (tickets, calls), main, oob, OOB_MIN, _named_calls)


def _named_call(call: tuple, main: MainNames | None) -> tuple:
    fn = call[0]
    return (fn.__qualname__, call[1], call[2], None) if _by_reference(fn, main or inherited_main) else call


def _named_calls(batch: tuple, main: MainNames | None) -> tuple:
    tickets, calls = batch
    return tickets, [_named_call(c, main) for c in calls]


def loads_call(data: Any) -> tuple:
    """The ``(function, args, kwargs)`` that `dumps_call` pickled."""
    return resolve_call(loads(data))


def resolve_call(call: tuple) -> tuple:
    """A pickled call's ``(function, args, kwargs)``: a ``__main__`` function that went by
    its qualified name is looked up."""
    if len(call) == 3:
        return call
    name, args, kwargs, _ = call
    fn = sys.modules["__main__"]
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn, args, kwargs


def _flat(*maps: Any) -> dict:
    """Dispatch tables as one plain dict, the first that has a type winning (as in a
    ChainMap), read now: a registration made since (``copyreg.pickle``,
    ``ForkingPickler.register``, a first or a second one for a type) counts, as when
    multiprocessing's pickler copies its table at each pickling. A plain dict because a
    pickler looks every object's type up in its table, and a ChainMap's look-up is
    Python code: it made a small call's pickling several times slower."""
    table: dict = {}
    for m in reversed(maps):
        table.update(m)
    return table


def _forking_table() -> dict:
    """The C pickler's table with what multiprocessing registers for its own pickler."""
    return _flat(ForkingPickler._extra_reducers, copyreg.dispatch_table)  # type: ignore[attr-defined]


class _Reused(threading.local):
    """This thread's forking C pickler, made once and reused (making one costs more than
    pickling a small call); a pickling inside another (a ``__reduce__`` that pickles)
    makes its own."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.pickler = pickle.Pickler(self.file, PROTOCOL, buffer_callback=self.forward)
        self.callback: Any = None
        self.busy = False

    def forward(self, buffer: Any) -> Any:
        # A true answer keeps the buffer in the pickle, as no callback at all does.
        return True if self.callback is None else self.callback(buffer)


_reused = _Reused()


def _c_dumps(obj: Any, buffer_callback: Any) -> bytes:
    table, r = _forking_table(), _reused
    if r.busy:
        f = io.BytesIO()
        fresh = pickle.Pickler(f, PROTOCOL, buffer_callback=buffer_callback)
        fresh.dispatch_table = table
        fresh.dump(obj)
        return f.getvalue()
    pickler = r.pickler
    pickler.dispatch_table = table
    r.busy, r.callback, f = True, buffer_callback, r.file
    try:
        pickler.dump(obj)
        return f.getvalue()
    finally:
        # Its memo holds what it pickled: nothing of a call outlives its pickling.
        pickler.clear_memo()
        f.seek(0)
        f.truncate()
        r.busy, r.callback = False, None


def _dumps(obj: Any, main: MainNames | None, oob: int, least: float,
           named: Callable[[Any, MainNames | None], Any] | None = None) -> bytes:
    found: list = []
    callback = (lambda pb: take_buffer(pb, found, least)) if oob else None
    try:
        if named is not None:  # calls: their __main__ functions by name, multiprocessing's reducers
            data = _c_dumps(named(obj, main), callback)
        else:
            data = pickle.dumps(obj, PROTOCOL, buffer_callback=callback)
        # A memchr-speed scan; a false hit (the string in the data) only costs a slower pickle.
        if b"__main__" in data:
            found.clear()
            data = by_value(obj, main, callback)
    except Exception:
        found.clear()
        data = by_value(obj, main, callback)
    if found:
        framed = frame(data, found, oob)
        return framed if framed is not None else _dumps(obj, main, 0, least, named)
    return data


def function_payload(obj: Any, main: MainNames | None) -> bytes:
    """A map's function (with what it binds), by value (see `by_value`), once for all
    its workers: a SharedArray it binds (a partial's argument, a closure's variable)
    travels as its block, lent for the job's life, so every worker writes the same array;
    any other buffer stays in the pickle, a copy for each worker."""
    if _by_reference(obj, main):
        # Names the workers have, and flags: the C pickler's references (the cloudpickle
        # pickler would make the same bytes, at several times the cost on every map).
        return pickle.dumps(obj, PROTOCOL)
    found: list = []
    data = by_value(obj, main, lambda pb: take_buffer(pb, found, math.inf))
    if found:
        framed = frame(data, found, LEND)
        return framed if framed is not None else by_value(obj, main)
    return data


def _by_reference(obj: Any, main: MainNames | None) -> bool:
    """Whether `obj` (a map's or a call's function: a ``__main__`` function, or one in a
    tuple with plain flags) is only names the workers have: `by_value` would pickle it
    by reference."""
    fn = obj
    if type(obj) is tuple and obj:
        fn = obj[0]
        if not all(type(x) is bool for x in obj[1:]):
            return False
    return type(fn) is types.FunctionType and fn.__module__ == "__main__" and main is not None and main.has(fn)


def loads(data: Any) -> Any:
    """Unpickles what `dumps` made."""
    return unframe(data) if is_framed(data) else pickle.loads(data)


#: Below this many items, pickle is as fast as anything (and callers skip even the look:
#: at chunksize=1 a call per unit would cost ≈ 0.1 µs of a 2 µs task).
ARRAY_MIN = 256


def as_array(items: Any) -> bytes | None:
    """A chunk's items or results (a list or tuple) as a machine array, when they are only
    ints that fit in 64 bits or only floats (``_native.pack_numbers``: checked and
    converted in one pass, ≈ 4x cheaper than pickling them, and ≈ 1.5x cheaper to
    rebuild); else None. An array is a TASK's whole payload (flag ARRAY) or an OK_ARRAY's:
    a chunk that big always travels alone. A packed chunk (`cut`) is bytes, which a chunk
    is otherwise never (a list, tuple or range: see `from_array`)."""
    if type(items) is bytes:
        return items  # packed already (see `cut`)
    if type(items) is not range and len(items) >= ARRAY_MIN:
        return pack_numbers(items)
    return None


def cut(seq: Any, start: int, stop: int) -> Any:
    """Items `start:stop` of a list, tuple or range, as a map's chunk holds them: a
    machine array where `as_array` would make one, packed straight from `seq` (never
    sliced first), else a slice."""
    if stop - start >= ARRAY_MIN and type(seq) is not range:
        packed = pack_numbers(seq, start, stop)
        if packed is not None:
            return packed
    return seq[start:stop]


def array_items(data: bytes) -> memoryview[int] | memoryview[float]:
    """A machine array's values as a worker iterates them: a view, whose ints (or floats)
    are made one at a time as the loop takes them, not all first into a list (≈ 1.5x
    faster over a chunk of a cheap function: fewer live objects, fewer page faults)."""
    view = memoryview(data)[1:]
    if data[:1] == b"q" and not len(view) % 8:
        return view.cast("q")
    if data[:1] == b"d" and not len(view) % 8:
        return view.cast("d")
    raise ValueError("not a packed array of numbers")


def from_array(chunk: Any) -> Any:
    """The inverse of `as_array` where it packed, else `chunk` itself."""
    return unpack_numbers(chunk) if type(chunk) is bytes else chunk


def pack_results(out: list) -> tuple[int, bytes]:
    """(tag, payload) of a TASK's results: a machine array (OK_ARRAY) where `as_array`
    packs them, else pickled (OK)."""
    packed = as_array(out)
    return (OK, dumps(out, None, GIVE)) if packed is None else (OK_ARRAY, packed)


def array_len(data: bytes) -> int:
    """How many numbers machine array `data` holds, or -1 if it is not one."""
    return (len(data) - 1) // 8 if len(data) % 8 == 1 and data[:1] in (b"q", b"d") else -1
