"""The worker loop: runs in each worker process, forked by the zygote."""

from __future__ import annotations

import os
import pickle
import signal
import sys
from time import perf_counter_ns
from typing import Any

import cloudpickle

from . import _native
from ._errors import ResultPicklingError, TaskUnpicklingError, dump_error
from ._outcomes import pack_replies, picklable_each, run_each
from ._pickling import dumps, pack_results
from ._wire import BYE, CALL, DROP, EAGER, ERR, EXIT, FUNC, INIT, INIT_ERR, OK, RESULTS, TASK, TASKS


#: A task quicker than this does not wake the parent by itself (see `serve`).
QUICK_NS = 50_000


def serve(fd: int, slot: int) -> None:
    """Attaches to ``slot`` of the hub in memfd ``fd`` and runs messages until EXIT."""
    # Ctrl-C goes to the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    port = _native.Port(fd, slot)
    os.close(fd)
    funcs: dict[int, tuple] = {}
    loads = pickle.loads
    send, recv, running = port.send, port.recv, port.running
    maxtasks = 0
    done = 0
    quiet = False
    # Outcomes of a TASKS message's units, sent together: (seq, ok, value, busy_ns).
    replies: list[tuple] = []

    def reply(rtag: int, job: int, seq: int, busy: int, data: bytes, eager: int = 0) -> None:
        # The first message of a batch wakes the parent at once, so it works alongside us;
        # later quick ones ride on the wake at the batch's end; a slow one wakes it now, and
        # so does any unit the parent asked to hear of at once (EAGER: its cost is unknown,
        # and a slow unit after it must not hold its result back).
        nonlocal quiet
        send(rtag, job, seq, busy, data, None, bool(eager) or not quiet or busy > QUICK_NS)
        quiet = True

    def flush(job: int, eager: int = 0) -> None:
        if replies:
            # The tickets travel outside the pickle of the outcomes, so that if those cannot
            # be unpickled in the parent, it still knows which units to fail.
            body = pack_replies(replies, funcs[job][2])
            tickets = [r[0] for r in replies]
            reply(RESULTS, job, 0, max(r[3] for r in replies), pickle.dumps((tickets, body), 5), eager)
            replies.clear()

    def run(fn: Any, star: Any, each: bool, items: Any) -> list:
        if star is None:  # the function itself failed to unpickle here
            raise _unloadable("function", fn) from fn
        if each:  # a lazy map with adaptive chunks: one failing item must not sink the rest
            return run_each(fn, star, items)
        return [fn(*a) for a in items] if star else [fn(a) for a in items]

    while True:
        port.notify()  # results sent quietly in the last batch: wake the parent once
        quiet = False
        for tag, job, seq, aux, payload in recv(None):
            if tag == TASKS:
                fn, star, each, per_item = funcs[job]
                port.unpacking(seq)  # a death while unpickling blames the batch
                try:
                    seqs, chunks = loads(payload)
                except BaseException as e:  # noqa: BLE001 - every unit reports it
                    raise RuntimeError(f"paralelo worker: bad task batch: {e!r}") from e
                for s, items in zip(seqs, chunks):
                    running(s)
                    t0 = perf_counter_ns()
                    value: Any
                    try:
                        ok, value = True, run(fn, star, each, items)
                    except BaseException as e:  # noqa: BLE001 - every failure goes back
                        ok, value = False, dump_error(e)
                    busy = perf_counter_ns() - t0
                    replies.append((s, ok, value, busy))
                    done += len(items) if per_item else 1  # what maxtasks counts
                    if busy > QUICK_NS or aux & EAGER:
                        flush(job, aux & EAGER)
                    if maxtasks and done >= maxtasks:
                        flush(job)
                        send(BYE, 0, 0, done, b"")
                        return
                flush(job)
                continue
            if tag == TASK:
                fn, star, each, per_item = funcs[job]
                running(seq)
                t0 = perf_counter_ns()
                items = ()
                try:
                    items = _load(payload, "arguments")
                    out = run(fn, star, each, items)
                    try:
                        rtag, data = _pack(pack_results, out)
                    except ResultPicklingError:
                        if not each:
                            raise
                        rtag, data = pack_results(picklable_each(out))  # each in its place
                except BaseException as e:  # noqa: BLE001 - every failure goes back
                    data, rtag = dump_error(e), ERR
                reply(rtag, job, seq, perf_counter_ns() - t0, data, aux & EAGER)
                if per_item:  # and 1 below: maxtasks counts items, as the parent does
                    done += max(1, len(items) or aux >> 1) - 1
            elif tag == CALL:
                running(seq)
                t0 = perf_counter_ns()
                try:
                    fn, args, kwargs = _load(payload, "call")
                    data, rtag = _pack(dumps, fn(*args, **kwargs)), OK
                except BaseException as e:  # noqa: BLE001
                    data, rtag = dump_error(e), ERR
                reply(rtag, job, seq, perf_counter_ns() - t0, data, EAGER)
            elif tag == FUNC:
                port.loading(job)
                try:
                    funcs[job] = loads(payload)
                except BaseException as e:  # noqa: BLE001 - reported by each of its tasks
                    funcs[job] = (e, None, False, False)
                port.idle()
                continue
            elif tag == DROP:
                funcs.pop(job, None)
                continue
            elif tag == INIT:
                try:
                    initializer, initargs, maxtasks = loads(payload)
                    if initializer is not None:
                        # Only a real initializer marks this: a death without one (an
                        # outside kill) is no reason to break the pool.
                        port.initializing()
                        initializer(*initargs)
                        port.idle()
                except BaseException as e:  # noqa: BLE001
                    send(INIT_ERR, 0, 0, 0, dump_error(e))
                    return
                continue
            elif tag == EXIT:
                return
            else:
                raise RuntimeError(f"paralelo worker: unknown message tag {tag}")
            # No port.idle(): a stale state names an answered unit, which the parent no
            # longer holds, so it blames nothing.
            done += 1
            if maxtasks and done >= maxtasks:
                send(BYE, 0, 0, done, b"")
                return


def _unloadable(what: str, e: BaseException) -> TaskUnpicklingError:
    return TaskUnpicklingError(f"the task's {what} could not be unpickled in the worker: {type(e).__name__}: {e}")


def _load(payload: bytes, what: str) -> Any:
    """Unpickles a task's payload; a failure (even SystemExit) is a TaskUnpicklingError."""
    try:
        return pickle.loads(payload)
    except BaseException as e:  # noqa: BLE001 - reported as the task's failure
        raise _unloadable(what, e) from e


def _pack(pack: Any, result: Any) -> Any:
    """Pickles a task's result; a failure is a ResultPicklingError."""
    try:
        return pack(result)
    except BaseException as e:  # noqa: BLE001 - reported as the task's failure
        raise ResultPicklingError(f"cannot pickle the task's result: {type(e).__name__}: {e}") from e


def main(fds: list[int], slot: int) -> None:
    """Entry point in a freshly forked worker (``fds``: the hub's memfd); never returns."""
    code = 0
    try:
        serve(fds[0], slot)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# cloudpickle is imported here so forked workers have it loaded already.
__all__ = ["main", "serve", "cloudpickle"]
