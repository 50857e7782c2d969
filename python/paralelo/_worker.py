"""The worker: runs in each worker process, forked by its pool's zygote, or (a pool's first,
made on the main thread) by the pool's owner itself (see ``_zygote``)."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import sys
import threading
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, Callable

import cloudpickle
import multiprocessing.process
import multiprocessing.util

from . import _arena, _breakpoint, _ending, _native, _output, _pickling, _probing
from ._arena import GIVE, commit
from ._broken import TaskUnpicklingError
from ._errors import ResultPicklingError, dump_error, unpicklable_result
from ._outcomes import pack_replies, picklable_each, run_each
from ._pickling import MainNames, array_items, dumps, pack_results
from ._wire import (ARRAY, BYE, CALL, CALLS, COUNT_SHIFT, DROP, EAGER, ERR, EXIT, FUNC, INIT_ERR, LOG, OK, PROBE,
                    PROBE_LINES, PROBE_TRACE, PROBED, READY, RESULTS, SPLIT, TASK, TASKS)
from ._zygote import flush_stdio


# multiprocessing's private process bookkeeping, which a worker takes over (typed loosely).
mpp: Any = multiprocessing.process
mp_util: Any = multiprocessing.util

#: A task quicker than this does not wake the parent by itself (see `serve`).
QUICK_NS = 50_000


@dataclass(frozen=True)
class Setup:
    """What a pool's workers inherit from its zygote, in memory (never pickled, so objects
    that can only be inherited work as the initializer's arguments)."""

    initializer: Any
    initargs: tuple
    maxtasks: int
    #: What ``__main__`` held at the fork: those objects travel by reference. (None
    #: while it travels to a fresh interpreter, which puts its own: see `_fresh`.)
    main: MainNames | None
    #: The workers' names, as multiprocessing's: "ForkPoolWorker" (Pool), "ForkProcess".
    kind: str
    daemon: bool
    parent_pid: int
    parent_name: str
    #: The parent's logging handlers (by id) when the pool was made: see `_output`.
    handlers: frozenset[int] = frozenset()


#: INIT_ERR's job: the worker could not ready itself ('spawn': importing the script, or
#: loading the initializer and its arguments), rather than its initializer raised.
STARTING = 1


def serve(fd: int, slot: int, setup: Setup, ready: Callable[[], Setup] | None = None) -> None:
    """Attaches to ``slot`` of the hub in memfd ``fd``, readies itself with `ready`
    (a 'spawn' worker: see `main`), runs the initializer, then runs messages until EXIT."""
    # Ctrl-C goes to the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    port = _native.Port(fd, slot)
    os.close(fd)
    funcs: dict[int, tuple] = {}
    loads = _pickling.loads
    send, recv, running = port.send, port.recv, port.running
    if ready is not None:
        port.initializing()  # (a death here breaks the pool, as in the initializer)
        try:
            setup = ready()
        except BaseException as e:  # noqa: BLE001
            send(INIT_ERR, STARTING, 0, 0, dump_error(e))
            return
        port.idle()
    maxtasks = setup.maxtasks
    done = 0
    _output.whole_lines()
    _breakpoint.install()
    # (Before the initializer: handlers it adds are the worker's own.)
    _output.forward_logging(setup.handlers, lambda handler, record: send(LOG, 0, 0, handler, record))
    if setup.initializer is not None:
        # Marked, so that a death here breaks the pool (as concurrent.futures does); a
        # death without an initializer (an outside kill) is no reason to.
        port.initializing()
        try:
            setup.initializer(*setup.initargs)
        except BaseException as e:  # noqa: BLE001
            _output.stop_forwarding()
            send(INIT_ERR, 0, 0, 0, dump_error(e))
            return
        port.idle()
    send(READY, 0, 0, 0, b"", None, False)  # (the parent hears it at the first wake-up below)
    quiet = False
    # Outcomes of a TASKS message's units, sent together: (seq, ok, value, busy_ns).
    replies: list[tuple] = []

    def reply(rtag: int, job: int, seq: int, busy: int, data: bytes, eager: int = 0) -> None:
        # The first message of a batch wakes the parent at once, so it works alongside us;
        # later quick ones ride on the wake at the batch's end; a slow one wakes it now, and
        # so does any unit the parent asked to hear of at once (EAGER: its cost is unknown,
        # and a slow unit after it must not hold its result back).
        nonlocal quiet
        # What the tasks printed goes out before their results: once the parent has every
        # result it may end the pool (terminate, `with`), and those lines must not be lost.
        flush_stdio()
        send(rtag, job, seq, busy, commit(data), None, bool(eager) or not quiet or busy > QUICK_NS)
        quiet = True

    def flush(job: int, eager: int = 0) -> None:
        if replies:
            # The tickets travel outside the pickle of the outcomes, so that if those cannot
            # be unpickled in the parent, it still knows which units to fail.
            body = commit(pack_replies(replies, funcs[job][2]))
            tickets = [r[0] for r in replies]
            reply(RESULTS, job, 0, max(r[3] for r in replies), pickle.dumps((tickets, body), 5), eager)
            replies.clear()

    # What the parent asked this worker to measure (PROBE), by kind: a cProfile.Profile
    # (PROFILE), the spans of its tasks (TRACE: `spans`, None while it is off).
    probes: dict[int, Any] = {}
    spans: list | None = None

    def probed(kind: int) -> None:
        # A probe's measures go to the parent (at its switching off, or as the worker leaves).
        nonlocal spans
        probe = probes.pop(kind, None)
        if kind == PROBE_TRACE:
            spans = None
        if probe is not None:
            send(PROBED, 0, 0, kind, _probing.measured(kind, probe))

    def leave() -> None:
        for kind in list(probes):
            probed(kind)
        _output.stop_forwarding()  # (after BYE the slot may be another worker's)
        send(BYE, 0, 0, done, b"")

    def call(job: int, seq: int, data: Any, load: Callable[[Any], tuple], share: int, eager: int) -> None:
        running(seq)
        t0 = perf_counter_ns()
        label = "call"
        try:
            fn, args, kwargs = _load(data, "call", load)
            data = None  # (the arguments live in this frame only)
            if spans is not None:
                label = _label(fn)
            if probes and PROBE_LINES in probes:  # (a function that came by value: its own code)
                probes[PROBE_LINES].saw(fn)
            out, rtag = _pack(_give, fn(*args, **kwargs)), OK
        except BaseException as e:  # noqa: BLE001
            out, rtag = dump_error(e), ERR
        fn = args = kwargs = None
        end = perf_counter_ns()
        reply(rtag, job, seq, end - t0 + share, out, eager)
        if spans is not None:
            spans.append((label, "call", t0, end, {"ticket": seq, "ok": rtag == OK}))

    def run(fn: Any, star: Any, each: bool, items: Any) -> list:
        if star is None:  # the function itself failed to unpickle here
            raise _unloadable("function", fn) from fn
        if each:  # a lazy map with adaptive chunks: one failing item must not sink the rest
            return run_each(fn, star, items)
        return [fn(*a) for a in items] if star else [fn(a) for a in items]

    while True:
        port.notify()  # results sent quietly in the last batch: wake the parent once
        quiet = False
        flush_stdio()  # (what was printed outside a task, by the initializer, shows now)
        batch = recv(None)
        batch.reverse()
        while batch:
            # Popped, so that no message's payload outlives its task.
            tag, job, seq, aux, payload = batch.pop()
            if tag == TASKS:
                fn, star, each, per_item = funcs[job]
                port.unpacking(seq)  # a death while unpickling blames the batch
                t0 = perf_counter_ns()
                try:
                    seqs, chunks = loads(payload)
                except BaseException as e:  # noqa: BLE001 - every unit reports it
                    raise RuntimeError(f"paralelo worker: bad task batch: {e!r}") from e
                share = (perf_counter_ns() - t0) // max(1, len(seqs))  # of the loading, per unit
                for s, items in zip(seqs, chunks):
                    running(s)
                    t0 = perf_counter_ns()
                    value: Any
                    try:  # (small chunks: big ones travel alone, as TASK)
                        ok, value = True, run(fn, star, each, items)
                    except BaseException as e:  # noqa: BLE001 - every failure goes back
                        ok, value = False, dump_error(e)
                    end = perf_counter_ns()
                    busy = end - t0 + share
                    replies.append((s, ok, value, busy))
                    if spans is not None:
                        spans.append((_label(fn), "map", t0, end, {"ticket": s, "items": len(items), "ok": ok}))
                    done += len(items) if per_item else 1  # what maxtasks counts
                    if busy > QUICK_NS or aux & EAGER:
                        flush(job, aux & EAGER)
                    if maxtasks and done >= maxtasks:
                        flush(job)
                        leave()
                        return
                flush(job)
                chunks, items, value, payload = [], (), None, b""  # held by no one until the next task
                continue
            if tag == TASK:
                fn, star, each, per_item = funcs[job]
                running(seq)
                t0 = perf_counter_ns()
                items = ()
                try:
                    items = array_items(payload) if aux & ARRAY else _load(payload, "arguments")
                    out = run(fn, star, each, items)
                    try:
                        rtag, data = _pack(pack_results, out)
                    except ResultPicklingError:
                        if not each:
                            raise
                        rtag, data = pack_results(picklable_each(out))  # each in its place
                except BaseException as e:  # noqa: BLE001 - every failure goes back
                    data, rtag = dump_error(e), ERR
                # Loading and packing count: what a unit costs its worker sets how many it holds.
                end = perf_counter_ns()
                reply(rtag, job, seq, end - t0, data, aux & EAGER)
                if spans is not None:
                    spans.append((_label(fn), "map", t0, end, {"ticket": seq, "items": len(items), "ok": rtag != ERR}))
                if per_item:  # and 1 below: maxtasks counts items, as the parent does
                    done += max(1, len(items) or aux >> COUNT_SHIFT) - 1
                items, out, data, payload = (), [], b"", b""  # held by no one until the next task
            elif tag == CALL:
                call(job, seq, payload, _pickling.loads_call, 0, EAGER)
                payload = b""
            elif tag == CALLS:
                port.unpacking(seq)  # a death while unpickling blames the batch
                t0 = perf_counter_ns()
                try:
                    seqs, calls = loads(payload)
                except BaseException:  # noqa: BLE001 - the parent sends them again, one by one
                    send(SPLIT, job, seq, 0, b"", None, True)
                    continue
                payload = b""
                share = (perf_counter_ns() - t0) // max(1, len(seqs))  # of the loading, per call
                calls.reverse()
                for s in seqs:
                    # Popped, so that no call's arguments outlive it. Quick results ride
                    # on one wake-up (see `reply`): these calls' cost is measured.
                    call(job, s, calls.pop(), _pickling.resolve_call, share, 0)
                    done += 1
                    if maxtasks and done >= maxtasks:
                        leave()  # (the calls left go to other workers)
                        return
                continue
            elif tag == FUNC:
                port.loading(job)
                try:
                    funcs[job] = loads(payload)
                except BaseException as e:  # noqa: BLE001 - reported by each of its tasks
                    funcs[job] = (e, None, False, False)
                if PROBE_LINES in probes:  # (a function that came by value: its own code)
                    probes[PROBE_LINES].saw(funcs[job][0])
                port.idle()
                continue
            elif tag == DROP:
                funcs.pop(job, None)
                continue
            elif tag == PROBE:
                kind = aux >> 1
                if aux & 1 and kind not in probes:
                    probes[kind] = _probing.start(kind, payload)
                    if kind == PROBE_TRACE:
                        spans = probes[kind]
                elif not aux & 1:
                    probed(kind)
                continue
            elif tag == EXIT:
                for kind in list(probes):
                    probed(kind)
                _output.stop_forwarding()
                return
            else:
                raise RuntimeError(f"paralelo worker: unknown message tag {tag}")
            # No port.idle(): a stale state names an answered unit, which the parent no
            # longer holds, so it blames nothing.
            done += 1
            if maxtasks and done >= maxtasks:
                leave()
                return


def _label(fn: Any) -> str:
    """A task's name on a timeline: its function's."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _unloadable(what: str, e: BaseException) -> TaskUnpicklingError:
    return TaskUnpicklingError(f"the task's {what} could not be unpickled in the worker: {type(e).__name__}: {e}")


def _give(result: Any) -> bytes:
    """A call's result pickled, its big buffers given to the reply (see `_arena`)."""
    return dumps(result, None, GIVE)


def _load(payload: bytes, what: str, load: Callable[[Any], Any] = _pickling.loads) -> Any:
    """Unpickles a task's payload; a failure (even SystemExit) is a TaskUnpicklingError."""
    try:
        return load(payload)
    except BaseException as e:  # noqa: BLE001 - reported as the task's failure
        raise _unloadable(what, e) from e


def _pack(pack: Any, result: Any) -> Any:
    """Pickles a task's result; a failure is a ResultPicklingError."""
    try:
        return pack(result)
    except BaseException as e:  # noqa: BLE001 - reported as the task's failure
        raise unpicklable_result(result, e) from e


def _take_identity(setup: Setup, number: int, parent_fd: int) -> None:
    """Makes multiprocessing see this worker as it sees its own pool workers: its
    ``current_process()`` (name, ``_identity``, daemon, pid), its ``parent_process()``
    (the pool's owner, not the zygote), log records' ``processName``; and runs the
    after-fork hooks its objects registered (an inherited Queue or Lock resets itself)."""
    proc: Any = mpp.BaseProcess.__new__(mpp.BaseProcess)
    proc._identity = (number,)
    proc._config = mpp._current_process._config.copy()
    proc._parent_pid = setup.parent_pid
    proc._parent_name = setup.parent_name
    proc._popen = None
    proc._closed = False
    proc._target = None
    proc._args, proc._kwargs = (), {}
    proc._name = f"{setup.kind}-{number}"
    proc._config["daemon"] = setup.daemon
    mpp._current_process = proc
    mpp._parent_process = mpp._ParentProcess(setup.parent_name, setup.parent_pid, parent_fd)
    mpp._children = set()
    mpp._process_counter = itertools.count(1)
    mp_util._close_stdin()  # a worker reads no terminal: stdin is /dev/null, as there
    threading.main_thread()._set_native_id()  # type: ignore[attr-defined]
    mp_util._finalizer_registry.clear()
    mp_util._run_after_forkers()


def _leave() -> None:
    # As a multiprocessing child ends: wait for the threads the tasks left running (what
    # they log goes to the worker's own handlers now), then run the finalizers (an
    # inherited Queue flushes what tasks put in it).
    _output.stop_forwarding()
    threading._shutdown()  # type: ignore[attr-defined]
    mp_util._exit_function()


#: How a zygote names this module's entry point (`main`).
ENTRY = "paralelo._worker:main"


def main(fds: list[int], setup: Setup, slot: int, number: int) -> None:
    """Entry point in a freshly forked worker (``fds``: the hub's memfd, then a pidfd on
    the pool's owner); never returns."""
    code = 0
    try:
        if type(setup) is Setup:
            _pickling.inherited_main = setup.main
            _take_identity(setup, number, fds[1])
            serve(fds[0], slot, setup)
        else:  # a 'spawn' worker, which readies itself first (`_fresh.Unprepared`)
            unprepared: Any = setup

            def ready() -> Setup:
                whole = unprepared.ready()  # (the script imported: its identity is ours next)
                _pickling.inherited_main = whole.main
                _take_identity(whole, number, fds[1])
                return whole

            serve(fds[0], slot, unprepared.setup, ready)
        _leave()
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            _ending.end()  # (os._exit runs no finalizer)
            _arena.leave()  # (os._exit runs no finalizer: its views go now, not at a sweep)
        finally:
            os._exit(code)


# cloudpickle is imported here so forked workers have it loaded already.
__all__ = ["ENTRY", "STARTING", "Setup", "main", "serve", "cloudpickle"]
