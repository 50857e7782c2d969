"""A pool's zygote as a fresh interpreter: the 'spawn' and 'forkserver' start methods.

A program asks for those when its workers must not inherit its memory: CUDA or another
library that breaks in a forked child, threads holding locks, a large parent. The pool's
zygote is then a new interpreter, started as multiprocessing starts a spawned process
(``multiprocessing.util.spawnv_passfds``: stdio and the zygote's socket pass, nothing
else), which imports paralelo alone and forks the pool's workers as every zygote does
(see ``_zygote``). The script follows multiprocessing:

* 'spawn': each worker readies itself as a spawned multiprocessing child does
  (``multiprocessing.spawn.prepare``: the parent's ``sys.path``, ``sys.argv``, working
  directory and authkey, then the script imported as ``__mp_main__``, its
  ``if __name__ == "__main__":`` block left out), then loads the pool's initializer and
  its arguments. So each has the script's module-level state of its own (threads, random
  seeds, CUDA, connections made at import), as a spawned worker does, and a respawn
  imports the script again.
* 'forkserver': the zygote readies itself so, once, when the pool is made (as
  multiprocessing's forkserver preloads ``__main__``), and loads the initializer and its
  arguments; the workers are forked with the script imported. One zygote per pool, where
  multiprocessing keeps one server per program.

The parent knows which of the script's functions and classes a worker will have from the
script's source (`script_definitions`: those defined outside its main block, with their
first lines), without importing it: its own that match go by reference
(`_pickling.MainNames(only=)`), the rest (made in the main block, lambdas) by value,
where multiprocessing fails.

One message from the parent starts the zygote's pool, and one reply answers it, each a
blob in a memfd (the setup may be large: an initializer's arguments):

    parent  BEGIN   header, then three pickles: multiprocessing's preparation data, the
                    setup without the initializer (with the first workers' entry and
                    arguments), the initializer and its arguments
                    fds: the resource tracker's, the arena's, the first workers', then
                    those the initializer's arguments took along
    zygote  answer  pickle((True, None) or (False, traceback text)): at once for
                    'spawn', once the script is imported and the setup loaded for
                    'forkserver'

The initializer and its arguments are pickled as for a spawned child: with
multiprocessing's reducers, while a stand-in for its spawning Popen is current
(`_Spawning`), so the locks, queues and pipes of both libraries pickle, their
descriptors passed with the message; big buffers and paralelo's primitives go through
the arena, lent by the parent for the pool's life (each 'spawn' worker loads them).
"""

from __future__ import annotations

import ast
import dataclasses
import multiprocessing.context
import multiprocessing.process
import multiprocessing.resource_tracker
import multiprocessing.spawn
import multiprocessing.util
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
import warnings
from typing import Any, NoReturn

from . import _arena, _channels, _ending, _pickling
from ._broken import broken
from ._errors import RemoteTraceback
from ._zygote import Zygote, _making, _serve, describe_exit, flush_stdio, reap, receive

# multiprocessing's private spawning machinery, which the zygote follows (typed loosely).
mp_context: Any = multiprocessing.context
mp_process: Any = multiprocessing.process
mp_tracker: Any = multiprocessing.resource_tracker
mp_spawn: Any = multiprocessing.spawn
mp_util: Any = multiprocessing.util

#: The most descriptors a message carries (the kernel's own limit).
MAX_PASSED = 253
#: BEGIN's header: the three pickles' sizes, then how many of its descriptors are the
#: first workers' and how many the initializer's arguments took.
_HEADER = struct.Struct("<QQQII")
#: What a fresh zygote calls itself (its workers take their own names).
_NAME = "ParaleloZygote"
#: The preparation data's keys for paralelo's own: its start method, the pool's method,
#: and the pid of the zygote's parent.
_SET_METHOD, _POOL_METHOD, _PARENT = "paralelo_set_method", "paralelo_pool_method", "paralelo_parent"


class FreshZygote(Zygote):
    """The parent's handle on a pool's zygote that is a fresh interpreter (see the
    module), started now with the pool's `setup` (pickled with `main`) and its `first`
    workers, as `Zygote` starts them. With 'forkserver', ready once this returns (the
    script imported): if it cannot be, raises ``BrokenProcessPool``, its cause the
    zygote's traceback."""

    def __init__(self, method: str, setup: Any, main: _pickling.MainNames,
                 first: tuple[str, list[tuple], list[int]]) -> None:
        entry, batch, fds = first
        self._expect(len(batch))
        self.method = method
        self._lent: bytes = b""
        self._kept: tuple | None = None
        # (First: in a process that is itself importing the script, this raises
        # multiprocessing's RuntimeError about `if __name__ == "__main__":`.)
        prep = _preparation(method)
        exe = mp_spawn.get_executable()
        # The interpreter finds paralelo where this one did (the script may have put it
        # on sys.path itself); the parent's own sys.path replaces it once prepared.
        home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        tracker = mp_tracker.getfd()  # (its processes share the parent's, as spawned ones do)
        flush_stdio()
        with _making:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock = ours
            try:
                code = f"import sys; sys.path.insert(0, {home!r}); from paralelo._fresh import serve; " \
                       f"serve({theirs.fileno()})"
                pid = mp_util.spawnv_passfds(exe, [exe, *mp_util._args_from_interpreter_flags(), "-c", code],
                                             [theirs.fileno()])
            finally:
                theirs.close()
            self._took(pid)
        spawning = _Spawning()
        try:
            plain = pickle.dumps((dataclasses.replace(setup, initializer=None, initargs=(), main=None), entry, batch),
                                 pickle.HIGHEST_PROTOCOL)
            # Kept for the pool's life, as multiprocessing's Pool keeps them: each 'spawn'
            # worker loads them anew, so what they stand for must last (a manager's
            # proxy's referent, say); big buffers and paralelo's primitives go through
            # the arena, lent.
            self._kept = (setup.initializer, setup.initargs)
            with spawning:
                self._lent = _pickling.dumps_forking(self._kept, main, _arena.LEND)
            arena = _arena.arena()
            passed = [tracker, *([arena.fd] if arena is not None else []), *fds]
            if len(passed) + len(spawning.fds) > MAX_PASSED:
                raise ValueError(f"the pool's initializer arguments take {len(spawning.fds)} descriptors along "
                                 f"(queues, pipes, locks): a fresh interpreter can be given {MAX_PASSED - len(passed)}")
            try:
                _send(self.sock, [_HEADER.pack(len(prep), len(plain), len(self._lent), len(fds), len(spawning.fds)),
                                  prep, plain, self._lent], [*passed, *spawning.fds])
            except OSError:
                pass  # (the zygote is gone: its answer says how)
            self._answer()
        except BaseException:
            self._end()
            raise
        finally:
            _channels.close_passed(spawning)

    def close(self, wait: bool = True) -> None:
        super().close(wait)
        self._lent, self._kept = b"", None  # (its workers are ending: those still running hold what they map)

    def _answer(self) -> None:
        """Reads the zygote's answer to BEGIN; raises the failure it reports, or its end."""
        got = _receive(self.sock)
        if got is None:
            raise broken(f"cannot start the pool's workers: the fresh interpreter of the {self.method!r} start "
                         f"method ended before it was ready ({describe_exit(self._end())})")
        data, fds = got
        for fd in fds:
            os.close(fd)
        ok, value = pickle.loads(data)
        if not ok:
            raise broken(f"cannot start the pool's workers: the fresh interpreter of the {self.method!r} start "
                         f"method failed while importing the main module or loading the pool's initializer",
                         RemoteTraceback(value))

    def _end(self) -> int | None:
        """Ends a zygote that is not serving: killed (it may be busy importing the script
        for a long while: Ctrl-C in ``Pool()``) and reaped; its wait status."""
        status = None
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
            fd, self.pidfd = self.pidfd, -1
            try:
                status = reap(fd, wait=True)
            finally:
                os.close(fd)
        self.close(wait=False)
        return status


def _preparation(method: str) -> bytes:
    """What a spawned multiprocessing child is given to become its parent's likeness
    (``multiprocessing.spawn.get_preparation_data``), with paralelo's own, pickled as for
    a child (the authkey pickles only so). multiprocessing's start method is passed on
    only if the program set it: asking for it would fix its default."""
    from . import context

    default = mp_context._default_context
    chosen = default._actual_context
    try:
        data = mp_spawn.get_preparation_data(_NAME)
    finally:
        default._actual_context = chosen
    if chosen is None:
        data.pop("start_method", None)
    data[_SET_METHOD] = context.get_start_method(allow_none=True)
    data[_POOL_METHOD] = method
    data[_PARENT] = os.getpid()
    with _Spawning():
        return pickle.dumps(data, pickle.HIGHEST_PROTOCOL)


def script_definitions() -> dict[str, tuple]:
    """The functions and classes a worker that imports the script as ``__mp_main__`` will
    have (those defined outside its main block), by name, each with its
    `_pickling.definition`: read from the script's source. None where the worker imports
    no script (an interactive session, ``python -c``, a package's ``__main__``), as
    ``multiprocessing.spawn.prepare`` decides."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        path = None if name == "__main__" or name.endswith(".__main__") else getattr(spec, "origin", None)
    else:
        path = getattr(main, "__file__", None)
    if not path or os.path.splitext(os.path.basename(path))[0] == "ipython":
        return {}
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    found: dict[str, tuple] = {}
    _definitions(tree.body, found)
    return found


def _definitions(body: list[ast.stmt], found: dict[str, tuple]) -> None:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # (A decorated function's code starts at its first decorator.)
            found[node.name] = (node.name, min([d.lineno for d in node.decorator_list] + [node.lineno]))
        elif isinstance(node, ast.ClassDef):
            found[node.name] = (node.name, 0)
        elif isinstance(node, ast.If):
            if not _is_main_test(node.test):
                _definitions(node.body, found)
            _definitions(node.orelse, found)
        elif isinstance(node, ast.Try):
            for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                _definitions(part, found)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            _definitions(node.body, found)


def _is_main_test(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


class _Spawning:
    """Stands in for the Popen of a process being spawned while its arguments are pickled
    (``with`` it: multiprocessing's ``get_spawning_popen``), as its forkserver's does:
    multiprocessing's locks and queues and paralelo's primitives then pickle for a child,
    and the descriptors they take along (``reduction.DupFd``) go with the setup, by index.
    Those paralelo's channels hold for passing are closed by `_channels.close_passed`."""

    _paralelo_arena = True  # (the zygote is given the arena with the setup: see `_arena.for_spawning`)

    def __init__(self) -> None:
        self.fds: list[int] = []

    def __enter__(self) -> _Spawning:
        mp_context.set_spawning_popen(self)
        return self

    def __exit__(self, *exc: object) -> None:
        mp_context.set_spawning_popen(None)

    def duplicate_for_child(self, fd: int) -> int:
        # (A pickle made twice, by the C pickler then by value, names each once.)
        if fd in self.fds:
            return self.fds.index(fd)
        self.fds.append(fd)
        return len(self.fds) - 1

    @staticmethod
    def DupFd(index: int) -> _Passed:  # noqa: N802 - multiprocessing's name
        return _Passed(index)


#: In a fresh zygote or worker, while it loads the initializer and its arguments: the
#: descriptors that came with them.
_passed: list[int] = []


class _Passed:
    """A descriptor the initializer's arguments took along (see `_Spawning`), as the
    zygote got it."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        if self.index >= len(_passed):
            raise RuntimeError("a descriptor passed to a fresh interpreter can be taken only while its pool starts")
        return os.dup(_passed[self.index])


def _send(sock: socket.socket, parts: list[bytes], fds: list[int]) -> None:
    """One message: `parts` in a memfd, then `fds`."""
    blob = os.memfd_create("paralelo-zygote", os.MFD_CLOEXEC)
    try:
        with open(blob, "wb", closefd=False) as f:
            for part in parts:
                f.write(part)
        socket.send_fds(sock, [b"B"], [blob, *fds])
    finally:
        os.close(blob)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next message (its blob and its descriptors, close-on-exec); None if the other
    side closed its end."""
    msg, fds, dropped = receive(sock, 16, MAX_PASSED + 1)
    if not msg or not fds or dropped:
        for fd in fds:
            os.close(fd)
        if dropped:
            raise OSError("cannot receive the message's descriptors (too many open files?)")
        return None
    with open(fds[0], "rb") as f:  # (at the sender's file position: it wrote the blob)
        f.seek(0)
        return f.read(), fds[1:]


def _answered(sock: socket.socket, error: str | None = None) -> None:
    _send(sock, [pickle.dumps((error is None, error), pickle.HIGHEST_PROTOCOL)], [])


@dataclasses.dataclass
class Unprepared:
    """A 'spawn' worker's setup, as its zygote holds it: the worker readies itself
    (`ready`) before it loads the initializer and its arguments."""

    #: The setup, its initializer and arguments left out.
    setup: Any
    prep: dict
    given: bytes
    passed: list[int]

    def ready(self) -> Any:
        """Imports the script as a spawned child does, then loads the initializer and its
        arguments: the whole setup."""
        _prepare(self.prep)
        return _loaded(self.setup, self.given, self.passed)


def serve(fd: int) -> NoReturn:
    """The fresh zygote's entry point (its socket is `fd`): readies itself, then serves
    its pool; never returns."""
    os.set_inheritable(fd, False)  # (not the script's children's)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to decide
    code = 0
    try:
        _begin(socket.socket(fileno=fd))
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        flush_stdio()
        os._exit(code)


def _begin(sock: socket.socket) -> None:
    """Takes BEGIN (see the module), answers it, then serves the pool."""
    got = _receive(sock)
    if got is None:
        return
    data, fds = got
    prep_n, plain_n, given_n, first_n, passed_n = _HEADER.unpack_from(data)
    at = _HEADER.size
    prep = pickle.loads(data[at:at + prep_n])
    setup, entry, batch = pickle.loads(data[at + prep_n:at + prep_n + plain_n])
    given = data[at + prep_n + plain_n:at + prep_n + plain_n + given_n]
    specials = len(fds) - first_n - passed_n
    tracker, arena = fds[0], fds[1:specials]
    first, passed = fds[specials:specials + first_n], fds[specials + first_n:]
    mp_tracker._resource_tracker._fd = tracker  # as multiprocessing's spawned children have it
    for arena_fd in arena:
        _arena.adopt_fd(arena_fd)
    parent = prep.pop(_PARENT)
    inherited: Any
    if prep[_POOL_METHOD] == "spawn":
        inherited = Unprepared(setup, prep, given, passed)  # each worker readies itself
    else:
        try:
            with _Watch(parent):  # (a parent killed meanwhile ends the import)
                _prepare(prep)
                inherited = _loaded(setup, given, passed)
        except BaseException:  # noqa: BLE001 - the parent reports it
            _answered(sock, traceback.format_exc())
            return
        finally:
            for fd in passed:
                os.close(fd)
        if threading.active_count() > 1:
            warnings.warn("the script started threads while it was imported; the 'forkserver' pool's workers are "
                          "forked from it without them", RuntimeWarning, stacklevel=1)
    _answered(sock)
    _serve(sock, parent, inherited, (entry, batch, first))
    _ending.end()


def _prepare(prep: dict) -> None:
    """Becomes the parent's likeness as a spawned multiprocessing child does: the script
    imported as ``__mp_main__``, with paralelo's start method set first (a pool the
    script makes while imported then raises as multiprocessing's would)."""
    from . import context

    me: Any = mp_process.current_process()
    prep = dict(prep)
    context.set_start_method(prep.pop(_SET_METHOD), force=True)
    prep.pop(_POOL_METHOD)
    # (Set while the script is imported: a pool it makes outside its main block raises
    # multiprocessing's own RuntimeError about the missing `if __name__ == "__main__":`.)
    me._inheriting = True
    try:
        mp_spawn.prepare(prep)
    finally:
        me._inheriting = False
    from . import _worker  # noqa: F401 - loaded once here rather than in every worker


def _loaded(setup: Any, given: bytes, passed: list[int]) -> Any:
    """The whole setup: `setup` with the initializer and arguments `given` loaded (with
    the descriptors `passed`), and what this process's ``__main__`` holds."""
    _passed[:] = passed
    try:
        initializer, initargs = _pickling.loads(given)
    finally:
        _passed.clear()
    return dataclasses.replace(setup, initializer=initializer, initargs=initargs, main=_pickling.MainNames())


class _Watch:
    """While the zygote imports the script (``with`` it): a thread that ends the process
    if its parent dies meanwhile, stopped before the zygote forks anything."""

    def __init__(self, parent: int) -> None:
        self.parent = os.pidfd_open(parent)
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="paralelo-zygote-watch", daemon=True)

    def _run(self) -> None:
        waiter = select.poll()
        waiter.register(self.parent, select.POLLIN)
        waiter.register(self.stop_r, select.POLLIN)
        if self.stop_r not in dict(waiter.poll()):
            os._exit(1)  # the parent is gone: nobody waits for this pool

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join()
        for fd in (self.parent, self.stop_r, self.stop_w):
            os.close(fd)


__all__ = ["FreshZygote", "MAX_PASSED", "Unprepared", "script_definitions", "serve"]
