"""The parent's engine: worker slots, dispatch and the collector.

One collector thread per engine waits (GIL released, in Rust) for results from every
worker, for room in task rings and for worker deaths, which the engine's death watch
reports through the same wait: nothing here polls. Posting a task never blocks. A job
hands out units (see ``jobs``); the engine keeps each worker's queue just long enough
that it never idles, measured in time rather than count.
"""

from __future__ import annotations

import atexit
import contextlib
import operator
import multiprocessing.process as mpp
import os
import pickle
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from time import perf_counter_ns
from typing import Any, Callable, Iterable

from .. import _arena, _fresh, _native, _output, _zygote
from .._worker import ENTRY as WORKER, STARTING, Setup
from .._broken import ResultUnpicklingError, broken
from .._errors import interrupted, load_error, pickling_failed
from .._arena import LEND, Framed, weight
from .._pickling import ARRAY_MIN, MainNames, array_len, as_array, dumps, dumps_call, dumps_calls, loads
from .._wire import (ARRAY, BYE, CALL, CALLS, COUNT_SHIFT, DROP, EAGER, ERR, EXIT, FUNC, INIT_ERR, OK, OK_ARRAY,
                    LOG, PROBE, PROBED, READY, RESULTS, SPLIT, TASK, TASKS)
from . import deaths, probes
from .._completions import Held, deferred, run_or_defer
from .._insights import GONE_SHOWN, Figures, Insights, fold_gone, report
from .jobs import CallCosts, CallJob, Job, MapJob, Unit
from .sink import MapSink
from .slot import Slot


RING_BYTES = 1 << 20
#: Keep this much work queued per worker beyond what it runs, so it never waits for us.
QUEUE_SECONDS = 0.002
MAX_INFLIGHT = 256
#: How often a timed unit whose worker has not started it yet is looked at again.
CLOCK_CHECK = 0.01
#: How often the collector looks for the pool's first workers while they start (the
#: zygote's replies cannot wake it), backing off to STARTING_POLL_MAX while none comes.
STARTING_POLL = 0.0003
STARTING_POLL_MAX = 0.05
#: How long `terminate` waits for probing workers' measures before it kills them.
PROBE_DRAIN = 1.0
#: Map chunks committed to one worker in one round travel together, up to this many.
SHIP_UNITS = 64

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
def switch_probe(kind: int, on: bool, settings: bytes = b"") -> list[Engine]:
    """Switches a probe (see `probes`, with its `settings`) in every running engine's
    workers, and in those of engines made while it is on; the engines to gather it from."""
    return probes.switch(kind, on, list(_engines), settings)


class Engine:
    """Worker processes on a hub, fed by jobs. Thread-safe."""

    def __init__(self, processes: int, initializer: Callable | None = None, initargs: tuple = (),
                 maxtasks: int | None = None, kind: str = "ForkPoolWorker", daemon: bool = True,
                 task_timeout: float | None = None, retries: int = 0, start: str = "fork") -> None:
        self.task_timeout, self.retries = check_limits(task_timeout, retries)
        self.processes = processes
        self.lock = threading.RLock()
        #: 'fork', or 'spawn' and 'forkserver', whose pool's zygote is a fresh interpreter
        #: (see `_fresh`).
        self.start_method = start
        fresh = start != "fork"
        self.hub = _native.Hub(processes, RING_BYTES)
        _arena.arena()  # made before the zygote forks, so every worker maps it too
        # The pool's zygote: the parent as it is now, which every worker will see (see
        # `_zygote`), or a fresh interpreter (`_fresh`). Functions of __main__ its workers
        # have travel by reference from now on.
        self.main = MainNames(_fresh.script_definitions()) if fresh else MainNames()
        _engines.add(self)  # from here, forked children let go of its hub (and this zygote too)
        me = mpp.current_process()
        #: The logging handlers the workers will inherit, which their records go back to
        #: (held: see `_output.handlers`). A fresh interpreter's inherit none.
        self.log_handlers = {} if fresh else _output.handlers()
        setup = Setup(initializer, tuple(initargs), maxtasks or 0, self.main, kind, daemon, os.getpid(), me.name,
                      frozenset(self.log_handlers))
        self.maxtasks = maxtasks or None
        self.jobs: dict[int, Job] = {}
        self.active: deque[Job] = deque()  # map jobs with units to hand out, oldest first
        # Calls not sent yet, oldest first: kept apart from maps, for there may be many
        # thousands of them and dispatch looks only at the head.
        self.calls: deque[CallJob] = deque()
        #: Calls submitted while others waited for room and the lock was busy: taken in
        #: (`_take_inbox`) by the next holder that dispatches, the collector at the latest.
        self.inbox: deque[CallJob] = deque()
        self.call_costs = CallCosts()
        self.item_costs = CallCosts()  # per item, of map functions
        self.timed = False  # a unit with a time limit was ever sent: the collector checks deadlines
        self.failed_here = False  # a unit failed as it was shipped: pump again (see `_pump`)
        self.slots = [Slot(i) for i in range(processes)]
        self.closing = False  # no new jobs; workers exit once idle
        self.finish_at_exit = False  # at interpreter exit: finish pending work (executors)
        self.broken: BaseException | None = None
        self.exits_sent = False
        #: Map jobs whose sinks hold results still packed (see `_collect_loop`).
        self.unsettled: set[MapJob] = set()
        self.unexplained_deaths = 0  # in a row, with no task answered in between
        self.pid = os.getpid()
        #: What workers measure on request (`paralelo.profile()`, `paralelo.trace()`),
        #: and the parent's own timeline spans while tracing (else None): `(name,
        #: category, start_ns, end_ns or None for an instant, args, pid, thread id)`.
        self.spans: list | None = None
        self.probes = probes.Probes(self.lock)
        self.terminated = False
        # The first workers are starting: dispatch may post to their slots already (each
        # reads its ring once it runs); the collector takes their pids from the zygote
        # first thing (`_take_first_workers`), and sets `started`.
        for slot in self.slots:
            slot.alive = True
        for probe in self.probes.joined(self):  # (made while a probe is on: its workers run it)
            for slot in self.slots:
                self.hub.post(slot.index, PROBE, 0, 0, probe << 1 | 1, probes.settings(probe))
        self.starting = deque(self.slots)
        self.starting_poll = STARTING_POLL
        self.started = threading.Event()
        self.start_error: OSError | None = None
        # Set when the pool is over (every worker gone, and every process of the pool
        # reaped, the zygote too): what join() waits for.
        self.over = threading.Event()
        self.thread = threading.Thread(target=self._collect, name="paralelo-collector", daemon=True)
        # The first workers are numbered as multiprocessing numbers its processes (names,
        # `_identity`). The first is forked right here, from the main thread (see
        # `_zygote.fork_child`), the others by the zygote as soon as it runs (see
        # `Zygote`): a first task waits for one fork, not two in a row.
        first = [(i, next(mpp._process_counter)) for i in range(processes)]  # type: ignore[attr-defined]
        self.kind = kind
        #: Every worker's figures since `insights_since` (see `insights`).
        self.figures: list[Figures] = []
        self.insights_since = time.monotonic()
        for i, number in first:
            self._count(self.slots[i], number)
        self.zygote: _zygote.Zygote | None = None
        #: Workers this process forked itself (the others are the zygote's), by pid, each
        #: with a pidfd of its own (a slot's is closed when the worker leaves it): reaped
        #: through that pidfd, never by pid, so a pid reused meanwhile is never waited on.
        self.own_children: dict[int, int] = {}
        with self.lock:
            try:
                own: list[int] = []
                if not fresh and first and threading.current_thread() is threading.main_thread() \
                        and _zygote.small_process():

                    def keep(pid: int, pidfd: int) -> None:
                        slot = self.starting.popleft()
                        slot.pid, slot.pidfd = pid, pidfd  # first: a failure below kills it
                        own[:] = [pid, pidfd]
                        self.own_children[pid] = os.dup(pidfd)

                    _zygote.fork_child(WORKER, first.pop(0), [self.hub.fd], setup, keep)
                # The collector starts while the first worker starts, and before the
                # zygote's fork: just after one, a new thread waits milliseconds for the pages
                # it touches to be copied. It waits for this lock.
                self.thread.start()
                if fresh:
                    self.zygote = _fresh.FreshZygote(start, setup, self.main, (WORKER, first, [self.hub.fd]))
                else:
                    self.zygote = _zygote.Zygote(setup, (WORKER, first, [self.hub.fd]))
                if own:
                    # Watched once the zygote is forked: the watch's thread and fds, started
                    # by the first watch, are then none of the zygote's.
                    self._watch(self.slots[0], *own)
                if not self.starting:
                    self.started.set()
            except BaseException:
                self.closing = True  # the collector ends at once
                for slot in self.slots:
                    self._kill(slot)
                    slot.alive = False
                if own and own[0] not in self.own_children:  # (its pidfd dup failed)
                    _zygote.reap(own[1], wait=True)  # killed above with its slot
                self._reap_own(kill=True)
                self._close_pidfds()
                _engines.discard(self)
                raise
            finally:
                self.hub.wake()

    def locked(self) -> Held:
        """Holds the engine lock (``with engine.locked():``); completions found meanwhile
        run after it is released."""
        return Held(self.lock)

    # -- workers -------------------------------------------------------------

    def start(self, slot: Slot) -> None:
        """Starts a worker in `slot` and has the engine watch for its death."""
        number = next(mpp._process_counter)  # type: ignore[attr-defined]
        assert self.zygote is not None  # a worker died, so the zygote had started it
        self._count(slot, number)
        pid, pidfd = self.zygote.spawn(WORKER, (slot.index, number), [self.hub.fd])
        slot.alive = True
        slot.answered = False
        slot.loaded = set()
        slot.taken = 0
        slot.timed, slot.timed_out = None, False
        self._watch(slot, pid, pidfd)
        for probe in self.probes.on:  # (a respawn runs the probes on)
            self.hub.post(slot.index, PROBE, 0, 0, probe << 1 | 1, probes.settings(probe))

    def _count(self, slot: Slot, number: int) -> None:
        """Gives the worker `number`, starting in `slot`, figures of its own. Past
        GONE_SHOWN workers gone, the oldest are summed into one row (a pool with
        `maxtasksperchild` makes workers without end)."""
        slot.figures = Figures(f"{self.kind}-{number}", time.monotonic())
        self.figures.append(slot.figures)
        gone = [f for f in self.figures if f.ended is not None]
        if len(gone) > GONE_SHOWN:
            self.figures = fold_gone(self.figures, len(gone) - GONE_SHOWN // 2)

    def insights(self) -> Insights:
        """Where the time went, worker by worker, since the pool started or the last
        `reset_insights`."""
        with self.locked():
            return report(self.figures, self.insights_since)

    def reset_insights(self) -> None:
        """Starts a new window: the figures count from now, for the workers there now."""
        with self.locked():
            self.insights_since = time.monotonic()
            self.figures = [f for f in self.figures if f.ended is None]
            for f in self.figures:
                f.restart()

    def _watch(self, slot: Slot, pid: int, pidfd: int) -> None:
        slot.pid, slot.pidfd = pid, pidfd
        slot.figures.pid = pid
        self.mark(slot, "started")
        self.hub.watch(slot.index, pid, pidfd)

    def _pickled(self, slot: Slot, what: str, t0: int, units: int, nbytes: int) -> None:
        """The parent (un)pickled a message for `slot`'s worker since `t0`: its insights
        count the time, a trace shows it."""
        t1 = perf_counter_ns()
        slot.figures.pickling_ns += t1 - t0
        if self.spans is not None:
            where = "for" if what == "pickle" else "from"
            self.spans.append((f"{what} {where} {slot.figures.name}", what, t0, t1, {"units": units, "bytes": nbytes},
                               self.pid, threading.get_native_id()))

    def mark(self, slot: Slot, what: str) -> None:
        """An instant on `slot`'s worker's timeline, while tracing (births, deaths)."""
        if self.spans is not None:
            self.spans.append((what, "worker", perf_counter_ns(), None, {"worker": slot.figures.name},
                               slot.pid, slot.pid))

    def _take_first_workers(self, upto: int = -1) -> None:
        """Takes the pids of the first workers the zygote has started (unasked) by now, and
        waits for those up to slot `upto`; on the collector's thread, which looks again
        every `starting_poll` meanwhile, so neither making a pool nor its first results
        wait for every worker to start."""
        zygote = self.zygote
        try:
            while self.starting and zygote is not None:
                slot = self.starting[0]
                got = zygote.first_spawned(wait=slot.index <= upto)
                if got is None:
                    self.starting_poll = min(2 * self.starting_poll, STARTING_POLL_MAX)
                    return
                try:
                    self._watch(slot, *got)
                except OSError:
                    # (Out of descriptors for the watch: the worker must not run unwatched,
                    # and its slot is failed with the others below.)
                    signal.pidfd_send_signal(got[1], signal.SIGKILL)
                    os.close(got[1])
                    slot.pidfd = -1
                    raise
                self.starting.popleft()
                if self.terminated:
                    self._kill(slot)
        except OSError as e:
            for s in self.starting:
                s.alive = False
            self.start_error = e
            self.break_pool(broken(f"cannot start the pool's worker processes: {e}", e))
            self._kill_all()
        self.starting.clear()
        self.started.set()

    def wait_started(self) -> None:
        """Waits until the first workers are started (as a multiprocessing Pool's are once
        made); raises what kept them from starting, once the pool is stopped."""
        self.started.wait()
        if self.start_error is not None:
            self.terminate()
            self.join()
            raise self.start_error

    def pids(self) -> list[int]:
        """The live workers' pids (once the first ones have started)."""
        self.started.wait()
        return [s.pid for s in self.slots if s.alive]

    # -- dispatch ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Hands `job` to the workers; raises if the pool is broken or not running. A
        call may be taken in later, by the lock's next holder (see `inbox`): it then fails
        (through its outcome) if the pool stopped meanwhile."""
        if os.getpid() != self.pid:
            raise RuntimeError("a paralelo pool cannot be used from a child process forked after it was made")
        if type(job) is CallJob and self.broken is None and not self.closing:
            if self.lock.acquire(blocking=False):
                try:
                    if self.broken is None and not self.closing:  # (else the way below raises)
                        self._take_inbox()  # (a running pool's fails none: nothing to defer)
                        if self.calls or self._all_busy():
                            # It waits with those ahead, or for an answer: the collector
                            # pumps then (see below), and no completion runs here.
                            self.jobs[job.id] = job
                            self.calls.append(job)
                            return
                finally:
                    self.lock.release()
            elif self.calls or self._all_busy():
                # Calls wait for room already (or every worker is busy), and the lock's
                # holder (the collector, taking answers in) is busy: this one joins them
                # through the inbox, without waiting for the lock (and the thread
                # switches that costs) once per call of a burst.
                inbox = self.inbox
                inbox.append(job)
                if len(inbox) == 1:
                    # The collector takes the inbox in on its next round. Calls found
                    # there already had theirs woken, and whoever takes them in takes
                    # the inbox whole: one wake-up (≈ 21 µs of thread switches) a burst.
                    self.hub.wake()
                if self.closing or self.broken is not None:
                    # Stopped since the look above: its closer may have taken the inbox
                    # in before the append, and the collector may be gone. Take it in
                    # here (it fails there, as a stopped pool's submit does).
                    with self.locked():
                        self._take_inbox()
                return
        with self.locked():
            self._take_inbox()  # (first: calls keep the order they were made in)
            if self.broken is not None:
                raise self.broken
            if self.closing:
                raise ValueError("Pool not running")
            self.jobs[job.id] = job
            if isinstance(job, CallJob):
                waiting = bool(self.calls) or self._all_busy()
                self.calls.append(job)
                if waiting:
                    # Those ahead wait for room, or every worker is busy: only answers
                    # (and deaths) free room, and the collector pumps after each, sending
                    # what came meanwhile together. A burst of calls costs its caller no
                    # pump (nor worker wake-up) per call.
                    return
            else:
                self.active.append(job)
            try:
                self._pump()
            except BaseException:
                self.hub.wake()  # (cut short, by Ctrl-C: the collector pumps what is left)
                raise

    def _all_busy(self) -> bool:
        """Whether every worker has work (an answer will come, and the collector pump):
        a call submitted now waits for that rather than going out alone."""
        busy = False
        for s in self.slots:
            if s.alive and s.corrupt is None:
                if not s.inflight:
                    return False
                busy = True
        return busy

    def _take_inbox(self) -> None:
        """Takes the calls of the inbox in, in order (under the lock). Those that came
        once the pool was stopping fail, as a submit then raises: with its error if it
        broke, else with "Pool not running" (close and terminate take the inbox in
        before they stop it, so what came before runs, or fails with the rest)."""
        inbox = self.inbox
        while inbox:
            job = inbox.popleft()
            if self.broken is not None:
                job.fail(self.broken)
            elif self.closing:
                job.fail(ValueError("Pool not running"))
            else:
                self.jobs[job.id] = job
                self.calls.append(job)

    def map_job(self, fn: Callable, iterable: Iterable, star: bool, chunksize: int | None,
                sink: MapSink, hold: int | None = None, task_timeout: float | None = None,
                retries: int | None = None) -> MapJob:
        """A map job shaped for this engine's workers (their count, their maxtasks), with
        the engine's time limit and retries unless given."""
        timeout, retries = self._limits(task_timeout, retries)
        if timeout is not None:
            chunksize = 1  # a time limit is per item: each is a unit of its own
        job = MapJob(self.processes, fn, iterable, star, chunksize, sink, hold, self.maxtasks, self.main,
                     self.item_costs)
        job.timeout, job.retries = timeout, retries
        return job

    def call_job(self, fn: Callable, args: tuple, kwargs: dict, on_done: Callable[[bool, Any], None],
                 on_start: Callable[[], bool] | None = None, task_timeout: float | None = None,
                 retries: int | None = None) -> CallJob:
        """One call of `fn` for this engine's workers (limits as for `map_job`)."""
        job = CallJob(fn, args, kwargs, on_done, on_start, self.main, self.call_costs)
        job.timeout, job.retries = self._limits(task_timeout, retries)
        return job

    def _limits(self, task_timeout: float | None, retries: int | None) -> tuple[float | None, int]:
        """A job's (time limit, retries): those given, else the engine's."""
        if task_timeout is None and retries is None:
            return self.task_timeout, self.retries  # (checked when the engine was made)
        return check_limits(self.task_timeout if task_timeout is None else task_timeout,
                            self.retries if retries is None else retries)

    def stream(self, job: MapJob) -> None:
        """Reads a submitted lazy map's input on a thread of its own, as multiprocessing's
        task handler does: the call that made the map returns at once, each item goes out
        as soon as it is read, and a slow or live input (a socket, a queue) never holds
        back results already in. It reads at most the job's read-ahead beyond what the
        consumer took, sleeping until the consumer or dispatch wants more."""
        wanted = threading.Event()
        job.on_starved = wanted.set

        def live() -> bool:
            return not (job.fed_all or job.finished or job.id not in self.jobs or self.broken is not None)

        def read() -> None:
            # Callbacks run here are logged, whatever they raise, as on the collector: an
            # exception must not pass for the input's own.
            deferred.collector = True
            while live():
                if job.read_room() <= 0:
                    wanted.wait()  # set once room is made (or the job ends); then look again
                    wanted.clear()
                    continue
                job.feed(self.kick)
                self.kick()  # the last items read, or the input's end

        job.reader = threading.Thread(target=read, name="paralelo-reader", daemon=True)
        job.reader.start()

    def kick(self) -> None:
        """Dispatches again (a lazy job's consumer made room, or fed more input)."""
        if os.getpid() != self.pid:
            return
        with self.locked():
            self._pump()

    def cancel(self, job: Job) -> None:
        """Runs nothing more of `job`: what is queued is dropped, what runs finishes."""
        with self.locked():
            job.stop()
            self.forget_if_done(job)

    def requeue(self, unit: Unit) -> None:
        """Puts back a unit a dead worker held but had not run: it goes out first."""
        job = unit.job
        if job.finished:
            self.forget_if_done(job)  # failed or stopped meanwhile: the unit runs no more
            return
        if not job.requeued:
            job.requeued = deque()
        job.requeued.appendleft(unit)  # type: ignore[union-attr]
        if isinstance(job, CallJob):
            self.calls.appendleft(job)  # sent, so no longer queued: its one unit is back
        elif job not in self.active:
            self.active.appendleft(job)

    @staticmethod
    def _limit(job: Job, t: float | None) -> int:
        """Units of `job` (whose unit takes `t` seconds, None if not measured yet) a worker
        may hold: enough for QUEUE_SECONDS of work beyond what it runs."""
        if t is None:
            return job.unmeasured_limit
        return min(MAX_INFLIGHT, 1 + int(QUEUE_SECONDS / max(t, 1e-7)))

    def _pump(self) -> None:
        """Tops up every live worker's queue, least loaded first, in passes: each pass
        gives each worker one batch. Until a job's cost is measured a batch is one unit,
        so a slow unit never queues behind another while a worker idles; once measured,
        up to SHIP_UNITS (small ones travel together: see `_ship`)."""
        # Units that fail here (arguments that cannot be pickled) are answered as they are
        # shipped, freeing their slots: no worker will report back to pump again, so
        # this one does, until a pass fails none.
        self.failed_here = True
        while self.failed_here:
            self.failed_here = False
            self._pump_once()

    def _pump_once(self) -> None:
        if self.broken is not None or not (self.active or self.calls):
            return
        live = [s for s in self.slots if s.alive and s.corrupt is None]
        try:
            gave = True
            while gave:
                gave = False
                live.sort(key=lambda s: len(s.inflight))
                for slot in live:
                    units = self._next_units(slot)
                    if not units:
                        continue
                    for unit in units:
                        self._send(slot, unit)
                    gave = True
                    if len(slot.outgoing) >= SHIP_UNITS or any(u.count >= ARRAY_MIN for u in units):
                        self._ship(slot)
                # Big chunks went at the end of each pass: their workers start while the
                # next are cut, each with its first chunk (one woken alone early could
                # take the core this thread needs to feed the others).
                self.hub.notify()
        finally:
            try:
                for slot in live:
                    if slot.outgoing:
                        self._ship(slot)
            finally:
                self.hub.notify()  # what was posted quietly, even if a later ship failed

    def _next_units(self, slot: Slot) -> list[Unit]:
        """One batch for `slot`: units of the oldest job that has any and whose own limit
        leaves the worker room. A job held back by its slow consumer (lazy imap) lets
        younger jobs pass, so waiting on one never starves the others; so does a lazy map
        whose consumer dropped it (it still runs, as multiprocessing's does, but last)."""
        active, calls = self.active, self.calls
        left = None if self.maxtasks is None else self.maxtasks - slot.taken
        if left is not None and left <= 0:
            return []  # the worker leaves after what it has: nothing more for it
        if slot.timed is not None and slot.timed.seq in slot.inflight:
            return []  # nothing waits behind a unit that may get its worker killed
        calls_tried = False
        passed: list[Job] = []  # abandoned jobs already sent to the back in this call
        i = 0
        while i < len(active):
            job = active[i]
            if job.abandoned and i + 1 < len(active) and job not in passed:
                # Nobody waits for its results: whoever waits for the others' goes first.
                passed.append(job)
                del active[i]
                active.append(job)
                continue
            if not calls_tried and calls and (calls[0].id < job.id or job.abandoned):
                calls_tried = True  # older calls go first (and any, before an abandoned map)
                units = self._next_calls(slot, left)
                if units:
                    return units
            t = job.unit_seconds()
            room = min(self._limit(job, t) - len(slot.inflight), 1 if t is None else SHIP_UNITS)
            cap = left if job.counts_items else None
            if job.timeout is not None:  # to an idle worker only, each item timed alone
                room = 0 if slot.inflight else 1
                cap = 1
            if room > 0:
                if left is not None and not job.counts_items:
                    room = min(room, left)
                units = job.next_units(room, cap)
                if units:
                    return units
            if job.has_more() or room <= 0:
                i += 1
                continue
            del active[i]
            self.forget_if_done(job)
        return self._next_calls(slot, left) if calls and not calls_tried else []

    def _next_calls(self, slot: Slot, left: int | None) -> list[Unit]:
        """Calls for `slot` from the head of the queue: as many as its worker may hold,
        judged by the head call's function's cost (one at a time until it is timed)."""
        calls = self.calls
        head = calls[0]
        t = head.unit_seconds()
        room = min(self._limit(head, t) - len(slot.inflight), 1 if t is None else SHIP_UNITS)
        if head.timeout is not None:
            room = 0 if slot.inflight else 1  # to an idle worker only (see Job.timeout)
        if left is not None:
            room = min(room, left)
        out: list[Unit] = []
        while calls and len(out) < room:
            job = calls[0]
            if job.timeout is not None and (out or slot.inflight):
                break  # a call with a time limit goes alone, to an idle worker
            if out and job.unit_seconds() is None:
                break  # an untimed call waits behind none and goes alone (answered at once)
            unit = job.next_unit()
            if not job.requeued:
                calls.popleft()
            if unit is None:
                self.forget_if_done(job)  # cancelled, or its arguments failed to pickle
            else:
                out.append(unit)
        return out

    def _send(self, slot: Slot, unit: Unit) -> None:
        """Commits `unit` to `slot`. It waits in `slot.outgoing` until `_pump` ships it:
        a big chunk at the end of its pass, the rest at the end of the pump (or
        SHIP_UNITS at a time), to travel several to a message."""
        job = unit.job
        slot.inflight[unit.seq] = unit
        slot.taken += unit.count if job.counts_items else 1
        job.outstanding += 1
        if job.timeout is not None:
            unit.deadline = time.monotonic() + job.timeout
            slot.timed, slot.timed_started = unit, True
            self.timed = True
            self.hub.wake()  # the collector's wait must end by this deadline
        slot.outgoing.append(unit)

    def _ship(self, slot: Slot) -> None:
        """Sends the units committed to `slot`: a map chunk of ARRAY_MIN items or more in a
        TASK of its own (its items travel as they are packed, never pickled again), smaller
        ones of one job together in a TASKS message; calls together in a CALLS message
        (one alone in a CALL). Quietly: `_pump` wakes the workers once per pass — one
        futex wake (≈ 21 µs here) per pass, not per unit."""
        units, slot.outgoing = slot.outgoing, []
        i = 0
        while i < len(units):
            first = units[i]
            job, call = first.job, first.tag == CALL
            j = i + 1
            if not first.solo and (call or first.count < ARRAY_MIN):
                while j < len(units) and not units[j].solo and (
                        units[j].tag == CALL if call else
                        units[j].job is job and units[j].tag == TASK and units[j].count < ARRAY_MIN):
                    j += 1
            run, i = units[i:j], j
            # Until the job's cost is measured, a quick unit's result must not wait behind
            # a slow one shipped with it: the worker answers each at once.
            eager = EAGER if job.unit_seconds() is None else 0
            if not call and job.id not in slot.loaded:
                assert job.func_payload is not None  # map jobs always ship their function
                self.hub.post(slot.index, FUNC, job.id, 0, 0, job.func_payload, False)
                slot.loaded.add(job.id)
            t0 = perf_counter_ns()
            try:
                if len(run) == 1:
                    tag, seq = first.tag, first.seq
                    eager, payload = (eager, dumps_call(first.payload, self.main, LEND)) if call else \
                        self._pack_items(first, eager)
                elif call:
                    tag, seq = CALLS, first.seq
                    payload = dumps_calls([u.seq for u in run], [u.payload for u in run], self.main, LEND)
                else:
                    tag, seq = TASKS, first.seq
                    payload = dumps(([u.seq for u in run], [u.payload for u in run]), self.main, LEND)
                lent = payload if type(payload) is Framed else None
                for u in run:
                    u.sent, u.batch = lent, seq
                nbytes = weight(payload)
                slot.figures.bytes_out += nbytes
                self._pickled(slot, "pickle", t0, len(run), nbytes)
                if not call:
                    job.weigh(True, nbytes + sum(u.snapped for u in run), sum(u.count for u in run))
            except BaseException as e:  # noqa: BLE001 - find the unit that cannot be pickled
                if interrupted(e):
                    self._drop_unsent(slot, job, units[i - len(run):], e)
                    raise
                what = "the task" if call else "the task's arguments"
                for k, u in enumerate(run):
                    try:
                        if call:
                            aux, one = eager, dumps_call(u.payload, self.main, LEND)
                        else:
                            aux, one = self._pack_items(u, eager)
                        u.sent = one if type(one) is Framed else None
                        u.batch = u.seq
                        self.hub.post(slot.index, u.tag, u.job.id, u.seq, aux, one, False)
                    except BaseException as e2:  # noqa: BLE001 - an argument cannot be pickled
                        if interrupted(e2):
                            self._drop_unsent(slot, u.job, run[k:] + units[i:], e2)
                            raise
                        self._answer(slot, [(u.seq, False, pickling_failed(what, e2), 0)])
                        self.failed_here = True
                continue
            self.hub.post(slot.index, tag, job.id, seq, eager, payload, False)

    def _pack_items(self, unit: Unit, aux: int) -> tuple[int, bytes]:
        """A TASK's `aux` and payload: its items as a machine array where they can be,
        else pickled; and its item count, should its items not load."""
        aux |= unit.count << COUNT_SHIFT
        packed = as_array(unit.payload)
        if packed is not None:
            return aux | ARRAY, packed
        return aux, dumps(unit.payload, self.main, LEND)

    def _drop_unsent(self, slot: Slot, job: Job, units: list[Unit], e: BaseException) -> None:
        """Ctrl-C while the main thread pickled `job`'s units for `slot`: that job fails with
        it (whoever waits on it gets it), and the units not sent are taken back: `job`'s
        dropped, other jobs' run elsewhere."""
        job.fail(e)
        self._take_back(slot, units)
        self.forget_if_done(job)

    def _take_back(self, slot: Slot, units: Iterable[Unit]) -> None:
        """Units committed to `slot` that its worker will not run: they go out again
        first (those of jobs that ended since are dropped)."""
        for u in reversed(list(units)):  # (each goes back to the front: the first goes last)
            if slot.inflight.pop(u.seq, None) is not None:
                u.job.outstanding -= 1
                slot.taken -= u.count if u.job.counts_items else 1
                self.requeue(u)

    def forget_if_done(self, job: Job) -> None:
        """Drops a job that will send and receive nothing more (and its function in workers)."""
        if job.outstanding or (job.has_more() and not job.finished) or job.id not in self.jobs:
            return
        del self.jobs[job.id]
        if isinstance(job, MapJob):
            job.remember_cost()
            if job in self.active:
                self.active.remove(job)
        if job.func_payload is not None:
            for s in self.slots:
                if s.alive and job.id in s.loaded:
                    s.loaded.discard(job.id)
                    self.hub.post(s.index, DROP, job.id, 0, 0, b"")

    # -- results ---------------------------------------------------------------

    def _collect(self) -> None:
        deferred.collector = True
        try:
            self._collect_loop()
        except BaseException as e:  # noqa: BLE001 - a bug here must fail callers, not hang them
            with self.locked():
                self.break_pool(broken(f"paralelo's collector thread failed: {e!r}", e))
        finally:
            with self.locked():
                self.closing = True  # (whatever ended the loop: nothing more is taken)
                self._take_inbox()
                self._close_pidfds()
            self.started.set()  # (if it failed before the first workers were taken)
            try:
                if self.zygote is not None:
                    self.zygote.close(wait=False)  # it kills and reaps what it still has, and exits
                # Any of our own that left after maxtasks and lingers (a thread of its tasks
                # still runs) is stopped, as the zygote's are.
                self._reap_own(kill=True)
                if self.zygote is not None:
                    self.zygote.reap()
                _native.release_idle_watch()  # the last pool gone: the death watch's fds too
                _arena.reclaim_dead()  # what killed workers (terminate) held in the arena
            finally:
                # Only now: once join() returns, none of the pool's processes is left, not
                # even a zombie, and a user's os.wait() finds none of them (as with
                # multiprocessing).
                self.over.set()

    def _close_pidfds(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            s.alive = False
            if s.figures.ended is None:
                s.figures.ended = now  # (the pool is over: its workers wait for nothing more)
            if s.pidfd >= 0:
                os.close(s.pidfd)
                s.pidfd = -1

    def _collect_loop(self) -> None:
        recv = self.hub.recv
        while True:
            # Results, room for outboxes, deaths, wake() and time limits end this wait.
            msgs, events = recv(self._until_deadline())
            with self.locked():
                self._take_inbox()
                if self.starting:
                    # A worker that spoke must have its pid taken before it is heard.
                    self._take_first_workers(max((m[0] for m in msgs), default=-1))
                for slot_i, tag, job_id, seq, aux, payload in msgs:
                    self._handle(self.slots[slot_i], tag, job_id, seq, aux, payload)
                for kind, event_slot, pid, exc in events:
                    if event_slot is None:  # "left": a worker of our own that left its slot exited
                        self._reap_own(pid)
                    else:
                        self._event(self.slots[event_slot], kind, pid, exc)
                msgs, payload = [], b""  # no result's bytes stay held while the next wait lasts
                self._expire()  # after the results: one that came in time is not late
                self._pump()
                # Only now, with their workers given more, are this round's results that
                # came packed unpacked into their maps' lists (`MapSink.settle`). They
                # were delivered in order: only the unpacking waited.
                if self.unsettled:
                    self._settle()
                if self.closing and not self.jobs and not self.exits_sent:
                    self.exits_sent = True
                    for s in self.slots:
                        if s.alive:
                            self.hub.post(s.index, EXIT, 0, 0, 0, b"")
                if self.closing and not any(s.alive for s in self.slots):
                    break

    def _settle(self) -> None:
        # (A method of its own: no job outlives it in the collector's frame.)
        unsettled, self.unsettled = self.unsettled, set()
        for job in unsettled:
            job.sink.settle()

    def _until_deadline(self) -> float | None:
        """Seconds until the first running unit's time limit (or the next look for a
        starting worker), None if none has one."""
        if self.starting:
            return self.starting_poll
        if not self.timed:
            return None
        deadlines = [s.timed.deadline for s in self.slots if s.timed is not None and not s.timed_out]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _expire(self) -> None:
        """Kills the workers whose timed unit ran past its limit; their deaths fail it. A
        unit's clock runs from its sending, if its worker runs it by then; a worker still
        starting (its initializer) or loading the job's function has it start later, when
        it is seen running, within CLOCK_CHECK."""
        if not self.timed:
            return
        now = time.monotonic()
        for s in self.slots:
            unit = s.timed
            if unit is None or s.timed_out:
                continue
            if unit.seq not in s.inflight:
                s.timed = None  # answered in time
            elif now >= unit.deadline:
                kind, ticket = self.hub.state(s.index)
                if kind != "running" or ticket != unit.seq:
                    unit.deadline = now + CLOCK_CHECK
                    s.timed_started = False
                elif not s.timed_started:
                    unit.deadline = now + unit.job.timeout  # type: ignore[operator]
                    s.timed_started = True
                else:
                    s.timed_out = True
                    self._kill(s)

    def _reap_own(self, pid: int | None = None, kill: bool = False) -> int | None:
        """Reaps a worker this process forked itself: `pid`, which exited (its wait status;
        None if someone else reaped it); or, without `pid`, every one still here, killed
        first with `kill` (at the pool's end). Never waits on a live process."""
        status = None
        with self.lock:  # claimed once, whoever comes second (`_kill_all` reads them too)
            claimed = [(child, self.own_children.pop(child, None))
                       for child in ([pid] if pid is not None else list(self.own_children))]
        for child, fd in claimed:
            if fd is None:
                continue
            if kill:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                # A bounded wait: one stuck in the kernel is left to exit with us.
                exited = select.poll()
                exited.register(fd, select.POLLIN)
                exited.poll(_zygote.END_GRACE * 1000)
            try:
                status = _zygote.reap(fd)
            except BaseException:
                os.close(fd)
                raise
            if status is None and not kill:
                with self.lock:
                    self.own_children[child] = fd  # not exited after all: kept for later
                continue
            os.close(fd)
            if status == _zygote.REAPED_ELSEWHERE:
                status = None  # gone (a user's waitpid(-1) took it): how, unknown
        return status

    def _event(self, slot: Slot, kind: str, pid: int, exc: BaseException | None) -> None:
        # A worker of our own is reaped whether or not its slot still holds it (one that
        # left after maxtasks was retired before it exited).
        own = kind == "exited" and pid in self.own_children
        status = self._reap_own(pid) if own else None
        if not slot.alive or slot.pid != pid:
            return  # about a worker this slot no longer has
        if kind == "corrupt":
            # Read no more from it, send it nothing more, kill it: its death retires it.
            if slot.corrupt is None:
                slot.corrupt = exc
                self._kill(slot)
        elif kind == "exited":
            if self.exits_sent:
                deaths.retire(self, slot, None, "the pool's end")  # told to exit, with nothing to run
                return
            if not own:
                assert self.zygote is not None  # it started the worker that died
                try:
                    status = self.zygote.exit_status(pid)
                except OSError:
                    status = None
            deaths.retire(self, slot, _zygote.describe_exit(status))

    def _answer(self, slot: Slot, replies: Iterable[tuple[int, bool, Any, int]], nbytes: int = 0) -> None:
        """Outcomes of units `slot` ran: `(ticket, ok, results or exception, busy_ns)`, all
        of one job, `nbytes` of them pickled. Units no longer held (already failed or
        requeued) are ignored."""
        inflight = slot.inflight
        answers = []
        tasks = busy_ns = 0
        for ticket, ok, value, busy in replies:
            unit = inflight.pop(ticket, None)
            if unit is not None:
                unit.sent = None  # (its lent blocks, if any, go)
                answers.append((unit, ok, value, busy))
                tasks += unit.count
                busy_ns += busy
        figures = slot.figures
        figures.tasks += tasks
        figures.busy_ns += busy_ns
        figures.bytes_in += nbytes
        if answers:
            job = answers[0][0].job
            if nbytes:
                job.weigh(False, nbytes, sum(a[0].count for a in answers))
            job.outstanding -= len(answers)
            job.done_many(answers)
            if not job.outstanding:
                self.forget_if_done(job)

    def _handle(self, slot: Slot, tag: int, job_id: int, seq: int, aux: int, payload: bytes) -> None:
        if tag == LOG:  # (user handlers: run once the lock is released, before the results)
            handler = self.log_handlers.get(aux)
            if handler is not None:
                run_or_defer(_output.deliver, handler, payload)
            return
        if tag == PROBED:
            self.probes.answered(slot.index, aux, payload)
            return
        if tag == READY:  # (not an answer: a worker that dies now is not past its start)
            slot.figures.ready = time.monotonic()
            self.mark(slot, "ready (initializer done)")
            return
        self.unexplained_deaths = 0
        slot.answered = True
        if tag == RESULTS:
            t0 = perf_counter_ns()
            tickets, body = pickle.loads(payload)
            err: BaseException | None
            try:
                replies = loads(body)
            except BaseException as e:  # noqa: BLE001 - those units fail, not the pool
                replies = [(t, False, None, 0) for t in tickets]
                err = _unloadable_result(e)
            else:
                err = None
            self._pickled(slot, "unpickle", t0, len(tickets), len(payload))
            self._answer(slot, (
                (t, ok, value if ok else err or load_error(value), busy) for t, ok, value, busy in replies
            ), len(payload) - len(body) + weight(body))
        elif tag == OK_ARRAY:  # a map chunk's: unpacked by its sink, straight into its output list
            unit = slot.inflight.get(seq)
            if unit is None or array_len(payload) == unit.count:
                self._answer(slot, [(seq, True, payload, aux)], len(payload))
                if unit is not None and isinstance(unit.job, MapJob):
                    self.unsettled.add(unit.job)
            else:
                err = _unloadable_result(ValueError(f"{unit.count} results expected, not {array_len(payload)}"))
                self._answer(slot, [(seq, False, err, aux)])
        elif tag == OK:
            t0 = perf_counter_ns()
            try:
                ok, value = True, loads(payload)
            except BaseException as e:  # noqa: BLE001 - that unit fails, not the pool
                ok, value = False, _unloadable_result(e)
            self._pickled(slot, "unpickle", t0, 1, len(payload))
            self._answer(slot, [(seq, ok, value, aux)], weight(payload))
        elif tag == ERR:
            self._answer(slot, [(seq, False, load_error(payload), aux)])
        elif tag == SPLIT:  # a CALLS batch did not unpickle: its calls go again, one by one
            batch = [u for u in slot.inflight.values() if u.batch == seq]
            for u in batch:
                u.solo = True
            self._take_back(slot, batch)
        elif tag == BYE:
            deaths.retire(self, slot, None)
        elif tag == INIT_ERR:
            what = "a worker could not import the main module or load the pool's initializer" \
                if job_id == STARTING else "a worker's initializer raised an exception"
            self.break_pool(broken(what, load_error(payload)))

    def break_pool(self, err: BaseException) -> None:
        """Fails every job with `err` and stops every worker: nothing more can run. The
        first cause is kept: later ones (the other workers' deaths) are its consequences."""
        if self.broken is None:
            self.broken = err
        err = self.broken
        self._take_inbox()  # (they fail with the rest)
        for job in list(self.jobs.values()):
            job.fail(err)
        self.jobs.clear()
        self.active.clear()
        self.calls.clear()
        self._kill_all()
        self.closing = True

    def _kill(self, slot: Slot) -> None:
        if slot.alive and slot.pidfd >= 0:
            try:
                signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
            except OSError:  # already gone
                pass

    def _kill_all(self) -> None:
        for s in self.slots:
            self._kill(s)
        for fd in self.own_children.values():  # and our own that left their slots
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)

    # -- shutdown ---------------------------------------------------------------

    def close(self) -> None:
        """No new jobs; workers exit once the current ones are done."""
        if os.getpid() != self.pid:
            return  # a forked child: the rings and workers are its parent's
        with self.locked():
            self._take_inbox()  # (accepted before: they run before the workers exit)
            self.closing = True
            for job in self.active:
                if isinstance(job, MapJob):
                    # Like multiprocessing, a lazy input still runs to its end though nobody
                    # consumes it; unlike it, close() returns at once and the reader reads
                    # one read-ahead beyond dispatch at a time (the input may be endless).
                    job.hold = None
                    job.starved()
            self._pump()
        self.hub.wake()

    def terminate(self, exc: BaseException | None = None) -> None:
        """Stops everything now: unfinished jobs fail with `exc` (if given), workers are
        killed. In a forked child, does nothing: the workers are its parent's."""
        if os.getpid() != self.pid:
            return
        if self.probes.on and threading.current_thread() is not self.thread:
            # What probing workers measured comes back before they are killed (a pool
            # ended by `with` inside `paralelo.trace()`): idle ones answer at once.
            self.probes.drain(self, time.monotonic() + PROBE_DRAIN)
        with self.locked():
            self._take_inbox()
            self.closing = self.terminated = True
            for job in list(self.jobs.values()):
                if exc is not None:
                    job.fail(exc)
                job.stop()  # wakes its reader, if any, to end
            self.jobs.clear()
            self.active.clear()
            self.calls.clear()
            self._kill_all()
        self.hub.wake()

    def join(self, timeout: float | None = None) -> None:
        """Waits until every worker is gone (after close(), once lazy inputs ran out). In a
        forked child, returns at once: the workers are its parent's."""
        if threading.current_thread() is self.thread or os.getpid() != self.pid:
            return
        self.over.wait(timeout)


def check_limits(task_timeout: float | None, retries: int) -> tuple[float | None, int]:
    """Validated `(task_timeout, retries)`: a positive number of seconds (or None), a count."""
    if task_timeout is not None:
        if isinstance(task_timeout, bool) or not isinstance(task_timeout, (int, float)):
            raise TypeError(f"task_timeout must be a number of seconds or None, not {type(task_timeout).__name__}")
        if not task_timeout > 0:
            raise ValueError(f"task_timeout must be greater than 0, not {task_timeout!r}")
    retries = operator.index(retries)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    return (None if task_timeout is None else float(task_timeout)), retries


def _unloadable_result(e: BaseException) -> ResultUnpicklingError:
    err = ResultUnpicklingError(f"a task's result could not be unpickled here: {type(e).__name__}: {e}")
    err.__cause__ = e
    return err


def _shutdown_all() -> None:
    # As in the standard library: executors finish their pending work at exit, pools stop.
    # Only this process's own engines: a forked child must not stop its parent's workers.
    engines = [e for e in _engines if e.pid == os.getpid() and hasattr(e, "thread")]  # made, and ours
    # A program ended by Ctrl-C does not wait for its executors' work: the standard
    # library's workers die of the same Ctrl-C (its process group's); ours ignore it.
    interrupted = False
    last = getattr(sys, "last_value", None)
    while last is not None and not interrupted:  # (a second Ctrl-C may raise in the handling of the first)
        interrupted, last = isinstance(last, KeyboardInterrupt), last.__context__
    for engine in engines:
        if engine.finish_at_exit and not interrupted:
            engine.close()
        else:
            engine.terminate()
    for engine in engines:
        engine.join(None if engine.finish_at_exit and not interrupted else 5)


def _disown_after_fork() -> None:
    # A forked child (a pool's zygote, its workers, or the user's own fork) never uses the
    # pools it inherited; it lets go of their shared memory's fds, which would otherwise
    # stay open in every later pool's workers. The fd number is pointed at /dev/null, not
    # closed, so it is never reused while the inherited Hub object still owns it.
    if _engines:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for engine in _engines:
                os.dup2(null, engine.hub.fd, inheritable=False)
                for slot in engine.slots:  # and of their workers' pidfds
                    fd, slot.pidfd = slot.pidfd, -1
                    if fd >= 0:
                        with contextlib.suppress(OSError):  # (closed as the fork began)
                            os.close(fd)
                own, engine.own_children = engine.own_children, {}
                for fd in own.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
        finally:
            os.close(null)
    _engines.clear()
    _native.forget_inherited_watch()  # the parent's death watch: its pidfds (and fds)


atexit.register(_shutdown_all)
os.register_at_fork(after_in_child=_disown_after_fork)
