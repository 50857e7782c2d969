"""What a cluster worker runs for paralelo: a map's chunk or one call, with the pool's
initializer run first (once per worker process and pool), large arrays taken from the
cluster's object store, and every exception returned, pickled as the local engine's
workers pickle it (`_errors.dump_error`), rather than raised: so a failure reaches the
caller as the same exception, with the same remote traceback, whatever the back end,
and the cluster never retries a task that raised (only one whose worker died).

Functions of the caller's ``__main__`` (a script's, a notebook's) reach a worker by
value, each pickle with its own copy of the globals it uses. Those the caller had when
the pool was made (`shared`) share one namespace per pool and worker process here, as
they would share a forked worker's ``__main__``: what the initializer sets in a global,
a later task reads (`_bound`). One made or changed since keeps the globals it came with,
as it does on a local pool (a notebook cell run again with a new value is seen anew).
The script's classes are made the worker's ``__main__``'s too, so that they go back by
name (`_register`).

This module is imported on the cluster's workers: paralelo must be installed there.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
import time
import types
from typing import Any, Callable

from .. import _pickling

__all__ = ["Stored", "resolve", "run_call", "run_chunk"]

#: Pools whose initializer already ran in this process (by the pool's token).
_ready: set[str] = set()
#: Each pool's ``__main__`` namespace in this process (by the pool's token).
_namespaces: dict[str, dict] = {}


class Stored:
    """Stands, in a task's arguments, for the object passed as its `index`-th stored
    argument (one the cluster's store holds: ``client.scatter``, ``ray.put``)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple:
        return Stored, (self.index,)


def resolve(obj: Any, stored: tuple) -> Any:
    """`obj` with every `Stored` in it (in tuples, lists, dict values and a
    ``functools.partial``'s arguments, as `Cluster.externalize` puts them) replaced by
    its object."""
    kind = type(obj)
    if kind is Stored:
        return stored[obj.index]
    if kind is tuple or kind is list:
        return kind(resolve(x, stored) for x in obj)
    if kind is dict:
        return {k: resolve(v, stored) for k, v in obj.items()}
    if kind is functools.partial:
        return functools.partial(resolve(obj.func, stored), *resolve(obj.args, stored),
                                 **resolve(obj.keywords, stored))
    return obj


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


#: Held while a pool's initializer runs and its namespace changes: a worker process may
#: run several tasks at once (a Dask worker's threads).
_lock = threading.RLock()


def _bound(fn: Any, token: str) -> Any:
    """`fn` (or the function of a ``functools.partial``) with the pool's one ``__main__``
    namespace as its globals, if it came by value from the caller's ``__main__``; the
    other functions of its copy of the globals are moved there too."""
    if type(fn) is functools.partial:
        func = _bound(fn.func, token)
        return fn if func is fn.func else functools.partial(func, *fn.args, **fn.keywords)
    if type(fn) is not types.FunctionType or fn.__module__ != "__main__":
        return fn
    space = _namespaces.setdefault(token, {})
    given = fn.__globals__
    if given is space or given is getattr(sys.modules.get("__main__"), "__dict__", None):
        return fn
    moved = {}
    for name, value in given.items():
        if name not in space:
            moved[name] = value
    space.update(moved)
    for name, value in moved.items():  # (the functions of the same pickle: one namespace for all)
        if type(value) is types.FunctionType and value.__globals__ is given:
            space[name] = _rebound(value, space)
    return _rebound(fn, space)


def _register(fn: Any) -> None:
    """Makes the classes of the caller's script that `fn`'s globals name (an exception it
    raises, a result's type) this process's ``__main__``'s, if it has none by their
    names: they are then pickled by name on their way back, by the cluster's pickler and
    by paralelo's (`_pickling.MainNames`), and are the caller's own classes there, not
    copies that ``except`` and ``isinstance`` would not recognise."""
    if type(fn) is functools.partial:
        fn = fn.func
    given = getattr(fn, "__globals__", None)
    main = sys.modules.get("__main__")
    if type(fn) is not types.FunctionType or fn.__module__ != "__main__" or main is None or given is None:
        return
    for name, value in given.items():
        if isinstance(value, type) and value.__module__ == "__main__" and value.__qualname__ == name \
                and not hasattr(main, name):
            setattr(main, name, value)
            known = _pickling.inherited_main
            if known is None:
                known = _pickling.inherited_main = _pickling.MainNames()
            known.names[name] = value


def _prepared(token: str, setup: tuple[Callable, tuple] | None, fn: Any, shared: bool) -> Any:
    """The pool's initializer run here if it has not been yet; `fn` as it runs here."""
    with _lock:
        _set_up(token, setup)
        _register(fn)
        return _bound(fn, token) if shared else fn


def _rebound(fn: types.FunctionType, space: dict) -> types.FunctionType:
    new = types.FunctionType(fn.__code__, space, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    new.__module__ = fn.__module__
    return new


def _set_up(token: str, setup: tuple[Callable, tuple] | None) -> None:
    if setup is not None and token not in _ready:
        initializer, initargs = setup
        _bound(initializer, token)(*initargs)
        _ready.add(token)


def run_chunk(token: str, setup: tuple[Callable, tuple] | None, fn: Callable, shared: bool, star: bool,
              items: list, *stored: Any) -> tuple[list[tuple[bool, Any]], str, int]:
    """Runs `fn` over `items` (each unpacked with `star`): each item's ``(ok, value or
    pickled exception)``, where it ran, and how long it took (ns). `shared`: `fn` is
    one of the caller's ``__main__`` functions of when the pool was made."""
    from .._errors import dump_error

    start = time.perf_counter_ns()
    out: list[tuple[bool, Any]] = []
    try:
        if stored:
            fn, items = resolve(fn, stored), resolve(items, stored)
        fn = _prepared(token, setup, fn, shared)
    except BaseException as e:  # noqa: BLE001 - every item of the chunk fails with it
        error = dump_error(e)
        return [(False, error)] * len(items), _where(), time.perf_counter_ns() - start
    for item in items:
        try:
            out.append((True, fn(*item) if star else fn(item)))
        except KeyboardInterrupt:
            raise  # (the engine cancelling the task: Ray's cancel, not the task's outcome)
        except BaseException as e:  # noqa: BLE001 - the caller gets it, at its item
            out.append((False, dump_error(e)))
    return _sendable(out), _where(), time.perf_counter_ns() - start


def run_call(token: str, setup: tuple[Callable, tuple] | None, fn: Callable, shared: bool, args: tuple,
             kwargs: dict, *stored: Any) -> tuple[list[tuple[bool, Any]], str, int]:
    """Runs ``fn(*args, **kwargs)``: as `run_chunk` does a chunk of one item."""
    from .._errors import dump_error

    start = time.perf_counter_ns()
    try:
        if stored:
            fn, args, kwargs = resolve(fn, stored), resolve(args, stored), resolve(kwargs, stored)
        fn = _prepared(token, setup, fn, shared)
        outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except KeyboardInterrupt:
        raise  # (see run_chunk)
    except BaseException as e:  # noqa: BLE001
        outcome = (False, dump_error(e))
    return _sendable([outcome]), _where(), time.perf_counter_ns() - start


def _sendable(outcomes: list[tuple[bool, Any]]) -> list[tuple[bool, Any]]:
    """`outcomes`, each value that cannot be pickled replaced by the local engine's error
    for it (`ResultPicklingError`, naming it): only that item fails, not its whole chunk,
    and with paralelo's error, not the cluster's. (Pickled without copying buffers: a
    large array costs nothing here.)"""
    from .._errors import dump_error, unpicklable_result

    try:
        _pickling.by_value(outcomes, None, _drop)
        return outcomes
    except Exception:  # noqa: BLE001 - found item by item below
        pass
    checked = []
    for ok, value in outcomes:
        try:
            _pickling.by_value(value, None, _drop)
            checked.append((ok, value))
        except Exception as e:  # noqa: BLE001
            checked.append((False, dump_error(unpicklable_result(value, e))))
    return checked


def _drop(_buffer: Any) -> None:
    """A pickle buffer left out of band (not copied): only whether it pickles matters."""
