"""The parent's engine: worker slots, dispatch, adaptive chunking, crash handling.

One collector thread per engine waits (GIL released, in Rust) for results from every
worker and for room in task rings; posting a task never blocks. A job hands out units
(one message each: a chunk of a map, or one call); the engine keeps each worker's queue
just long enough that it never idles, measured in time rather than count.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import select
import signal
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

import cloudpickle

from . import _native, _zygote
from ._errors import WorkerLostError
from ._protocol import (
    BATCH,
    BYE,
    CALL,
    DROP,
    ERR,
    EXIT,
    FUNC,
    IN_INITIALIZER,
    INIT,
    INIT_ERR,
    LOADING_FUNC,
    OK,
    OK_ARRAY,
    PROTOCOL,
    RESULTS,
    TASK,
    TASKS,
    Segments,
    dumps,
    load_error,
    unpack_results,
)

RING_BYTES = 1 << 20
#: Keep this much work queued per worker beyond what it runs, so it never waits for us.
QUEUE_SECONDS = 0.002
#: An adaptive chunk aims to take this long in a worker: long enough to amortise the
#: ≈ 30 µs a message costs end to end, short enough to balance load.
CHUNK_SECONDS = 0.002
#: Near the end of a map, chunks shrink (guided scheduling) but not below this much work:
#: a smaller chunk costs more in messages than it can save in balance.
MIN_CHUNK_SECONDS = 0.0002
MAX_INFLIGHT = 256
#: Workers dying outside any task this many times in a row break the pool.
MAX_UNEXPLAINED_DEATHS = 3
#: Map chunks committed to one worker in one round travel together, up to this many.
SHIP_UNITS = 64
#: How often the collector checks worker liveness when no results arrive.
LIVENESS_SECONDS = 0.05

_job_ids = itertools.count(1)


class Unit:
    """One schedulable piece of work: a chunk of a map job (`payload` holds its items until
    sent) or one call (`payload` is the pickled call)."""

    __slots__ = ("job", "seq", "tag", "payload", "start", "count", "solo")

    def __init__(self, job: Job, seq: int, tag: int, payload: Any, start: int = 0, count: int = 1):
        self.job, self.seq, self.tag, self.payload = job, seq, tag, payload
        self.start, self.count = start, count
        self.solo = False  # travels in a message of its own (a batch it was in killed a worker)


class Job:
    """Work the engine dispatches. Subclasses produce units and receive their outcomes;
    every method is called with the engine lock held."""

    func_payload: bytes | None = None

    def __init__(self) -> None:
        self.id = next(_job_ids)
        self.requeued: deque[Unit] = deque()
        self.finished = False
        self.func_deaths = 0  # workers that died unpickling this job's function
        self.outstanding = 0  # units sent and not yet answered (kept by the engine)

    def next_unit(self) -> Unit | None:
        """The next unit to send, or None if there is none now."""
        raise NotImplementedError

    def has_more(self) -> bool:
        """Whether units may still come (now or once a lazy consumer makes room)."""
        raise NotImplementedError

    def next_units(self, most: int) -> list[Unit]:
        """Up to `most` units to send now."""
        out: list[Unit] = []
        while len(out) < most:
            unit = self.next_unit()
            if unit is None:
                break
            out.append(unit)
        return out

    def unit_seconds(self) -> float | None:
        """Estimated worker time of one unit, or None when unknown yet."""
        return None

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        raise NotImplementedError

    def done_many(self, answers: list[tuple[Unit, bool, Any, int]]) -> None:
        """Several outcomes at once (one RESULTS message)."""
        for unit, ok, value, elapsed_ns in answers:
            self.done(unit, ok, value, elapsed_ns)

    def fail(self, exc: BaseException) -> None:
        """Fails the whole job (pool broken or terminated)."""
        raise NotImplementedError

    def lost(self, unit: Unit, exc: BaseException) -> None:
        """The worker running `unit` died."""
        self.done(unit, False, exc, 0)


class CallJob(Job):
    """One function call: apply_async or submit. `on_done(ok, value)` gets the outcome."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, on_done: Callable[[bool, Any], None],
                 on_start: Callable[[], bool] | None = None):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.on_done, self.on_start = on_done, on_start
        self.sent = False

    def next_unit(self) -> Unit | None:
        if self.requeued:
            return self.requeued.popleft()
        if self.sent:
            return None
        self.sent = True
        if self.on_start is not None and not self.on_start():
            self.finished = True  # cancelled before it ran
            return None
        try:
            payload = cloudpickle.dumps((self.fn, self.args, self.kwargs), PROTOCOL)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            self.done(None, False, e, 0)  # type: ignore[arg-type]
            return None
        return Unit(self, 0, CALL, payload)

    def has_more(self) -> bool:
        return bool(self.requeued) or not self.sent

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        self.finished = True
        self.on_done(ok, value)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(False, exc)


class MapJob(Job):
    """`fn` over an iterable, in chunks; `sink` receives chunk outcomes in any order as
    `sink.chunks([(start, count, ok, values_or_exc), ...])`, `sink.end(total)` once the
    input is done, `sink.fail(exc)` if the job fails as a whole. With `hold`, at most that many
    items (or four chunks per worker, if more) are read beyond `sink.consumed_items()`
    (lazy imap). An input that raises calls `sink.input_failed(position, exc)`."""

    def __init__(self, engine: Engine, fn: Callable, iterable: Iterable, star: bool,
                 chunksize: int | None, sink: Any, hold: int | None = None):
        super().__init__()
        # A lazy map with adaptive chunks reports each item's failure in its place (as
        # with chunksize=1); a fixed chunksize fails whole chunks, as multiprocessing does.
        each = chunksize is None and not sink.stops_on_error
        self.func_payload = cloudpickle.dumps((fn, star, each), PROTOCOL)
        self.engine = engine
        # Lists, tuples and ranges are cut with slices (C speed; a range slice pickles as
        # three numbers). Anything else is read by `feed`, on the caller's or consumer's
        # thread and never under the engine lock: user iterators may block, or even wait
        # on this very pool (imap over imap).
        self.sliceable: Sequence[Any] | None = (
            iterable if type(iterable) in (list, tuple, range) else None  # type: ignore[assignment]
        )
        self.it: Iterator = iter(iterable)
        self.fed: deque = deque()  # items read by `feed`, not yet cut into units
        self.feed_lock = threading.Lock()  # one reader of the iterator at a time
        self.fed_lock = threading.Lock()  # `fed` and `fed_all` change together
        self.fed_all = False  # the iterator is exhausted (or raised: `input_error`)
        self.input_error: BaseException | None = None
        self.read_items = 0
        try:
            self.total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self.chunksize = chunksize
        self.sink = sink
        if self.sliceable is not None:  # an exact length: results can be placed as they come
            sink.expect(self.total)
        self.hold = hold
        self.sent_items = 0
        self.seq = 0
        self.input_done = False
        self.busy_ns = 0  # worker time and items of the chunks the estimate rests on
        self.measured_items = 0
        self.measured_max = 0  # the largest chunk measured
        self.held = False  # next_unit refused because the consumer is behind
        self.size = self.min_size = 1 if chunksize is None else chunksize

    def _size(self) -> int:
        if self.chunksize:
            return self.chunksize
        if self.measured_items == 0:
            # Not measured yet: start small, grow as units go out.
            return min(1 << self.seq, 64)
        n = self.size
        if self.total is not None:
            # Guided: leave enough pieces at the end to balance the workers.
            n = min(n, max(self.min_size, -(-(self.total - self.sent_items) // (2 * self.engine.processes))))
        return max(1, n)

    def next_unit(self) -> Unit | None:
        if self.finished:
            self.requeued.clear()  # the map failed or was stopped: nothing more to run
            return None
        if self.requeued:
            return self.requeued.popleft()
        if self.input_done:
            return None
        if self.sliceable is not None:
            units = self._slice_units(1)
            return units[0] if units else None
        if self.hold is not None and self.sent_items - self.sink.consumed_items() > self.ahead_limit():
            self.held = True  # the consumer is behind: hold the input back
            return None
        self.held = False
        n = self._size()
        failure: BaseException | None = None
        fed = self.fed
        with self.fed_lock:
            items = [fed.popleft() for _ in range(min(n, len(fed)))]
            ended = not fed and self.fed_all
        if ended:
            failure = self.input_error
            n = len(items) + 1  # the input ends after these items
        elif len(items) < n:
            # Fed items ran short: send what there is, or wait for the next feed.
            if not items:
                self.held = True
                return None
            n = len(items)
        unit = None
        if items:
            unit = Unit(self, self.seq, TASK, items, self.sent_items, len(items))
            self.seq += 1
            self.sent_items += len(items)
        if failure is not None:
            self.input_done = True
            self.sink.input_failed(self.sent_items, failure)
        elif len(items) < n:
            self.input_done = True
            self.sink.end(self.sent_items)
        return unit

    def feed(self, everything: bool = False) -> None:
        """Reads the input (an iterator) ahead of dispatch, up to the read-ahead limit, or
        to its end with `everything`. Called without the engine lock, never on the
        collector thread."""
        if self.sliceable is not None or self.fed_all:
            return
        with self.feed_lock:
            if self.fed_all:
                return
            want = None if everything or self.hold is None else self.ahead_limit() - (
                self.read_items - self.sink.consumed_items())
            if want is not None and want <= 0:
                return
            batch: list = []
            ended = False
            try:  # item by item: what was read before the input raised still runs
                if want is None:
                    batch.extend(self.it)
                    ended = True
                else:
                    batch.extend(itertools.islice(self.it, want))
                    ended = len(batch) < want
            except BaseException as e:  # noqa: BLE001 - the input itself raised
                self.input_error = e
                ended = True
            with self.fed_lock:
                self.fed.extend(batch)
                self.fed_all = ended
            self.read_items += len(batch)

    def has_more(self) -> bool:
        return bool(self.requeued) or not (self.input_done or self.finished)

    def next_units(self, most: int) -> list[Unit]:
        # The hot path of small units: a sliceable input cut in one loop, without a call
        # per unit. Anything unusual (requeued units, an iterator input) takes the general way.
        if self.requeued or self.sliceable is None or self.input_done or self.finished:
            return super().next_units(most)
        return self._slice_units(most)

    def _slice_units(self, most: int) -> list[Unit]:
        """Up to `most` units cut from a sliceable input, within the read-ahead limit."""
        items_in, i = self.sliceable, self.sent_items
        assert items_in is not None
        total = stop = len(items_in)
        if self.hold is not None:
            stop = min(total, self.sink.consumed_items() + self.ahead_limit())
            self.held = i >= stop
        fixed = self.chunksize
        out: list[Unit] = []
        seq = self.seq
        items: Sequence[Any]
        while i < stop and len(out) < most:
            n = fixed or self._size()
            if n == 1:
                items = [items_in[i]]
            else:
                items = items_in[i : i + n]
                if n < 64 and type(items) is range:
                    items = list(items)  # a short list pickles faster than a range
            out.append(Unit(self, seq, TASK, items, i, len(items)))
            seq += 1
            i += len(items)
            self.seq, self.sent_items = seq, i  # _size() reads them
        if i >= total:
            self.input_done = True
            self.sink.end(i)
        return out

    def ahead_limit(self) -> int:
        """How many items a lazy job reads ahead of its consumer: `hold`, or four chunks
        per worker if that is more."""
        return max(self.hold or 0, 4 * self.engine.processes * self.size)

    def unit_seconds(self) -> float | None:
        if self.measured_items == 0:
            return None
        return self.per_item * self.size

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        self.done_many([(unit, ok, value, elapsed_ns)])

    def done_many(self, answers: list[tuple[Unit, bool, Any, int]]) -> None:
        chunks = [
            (unit.start, unit.count, ok, value.loaded() if type(value) is Segments else value)
            for unit, ok, value, _ in answers
        ]
        for unit, ok, _, elapsed_ns in answers:
            if ok:
                # Cost per item, from the largest chunks seen: a chunk's fixed cost
                # (unpickling, the call loop) would swamp a small chunk's measure.
                if unit.count > 2 * self.measured_max:
                    self.busy_ns = self.measured_items = 0
                    self.measured_max = unit.count
                if 2 * unit.count >= self.measured_max:
                    self.busy_ns += elapsed_ns
                    self.measured_items += unit.count
            elif self.sink.stops_on_error:
                self.finished = True  # the whole map failed: do not run the rest
        if self.measured_items:
            self.per_item = self.busy_ns / self.measured_items / 1e9
            if not self.chunksize:
                self.size = max(1, int(CHUNK_SECONDS / max(self.per_item, 1e-9)))
                self.min_size = max(1, int(MIN_CHUNK_SECONDS / max(self.per_item, 1e-9)))
        self.sink.chunks(chunks)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.sink.fail(exc)


class Slot:
    """One worker process and what it holds."""

    __slots__ = ("index", "pid", "pidfd", "inflight", "loaded", "alive", "outgoing", "answered")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.pidfd = -1
        self.inflight: dict[tuple[int, int], Unit] = {}
        self.loaded: set[int] = set()
        self.alive = False
        self.outgoing: list[Unit] = []  # committed map chunks not yet posted
        self.answered = False  # its worker has sent anything since it started


_engines: weakref.WeakSet[Engine] = weakref.WeakSet()

# Completions that run user code (callbacks, Future done-callbacks) found while a thread
# holds an engine lock: they run once it is released, so a callback that takes the user's
# own lock cannot deadlock against a thread submitting while holding that lock.
_deferred = threading.local()


def run_or_defer(fn: Callable, *args: Any) -> None:
    """Calls `fn(*args)` now, or, inside `Engine.locked()`, right after the lock is released."""
    pending = getattr(_deferred, "pending", None)
    if pending is None:
        fn(*args)
    else:
        pending.append((fn, args))


class Engine:
    """Worker processes on a hub, fed by jobs. Thread-safe."""

    def __init__(self, processes: int, initializer: Callable | None = None, initargs: tuple = (),
                 maxtasks: int | None = None) -> None:
        self.processes = processes
        self.lock = threading.RLock()
        # The zygote first: forked before the hub exists, it does not hold the hub's memfd.
        self.zygote = _zygote.get()
        self.hub = _native.Hub(processes, RING_BYTES)
        self.init_payload = cloudpickle.dumps((initializer, tuple(initargs), maxtasks or 0), PROTOCOL)
        self.jobs: dict[int, Job] = {}
        self.active: deque[Job] = deque()
        self.slots = [Slot(i) for i in range(processes)]
        self.closing = False  # no new jobs; workers exit once idle
        self.finish_at_exit = False  # at interpreter exit: finish pending work (executors)
        self.broken: BaseException | None = None
        self.exits_sent = False
        self.unexplained_deaths = 0  # in a row, with no task answered in between
        self.pid = os.getpid()
        try:
            for slot in self.slots:
                self._start(slot)
        except BaseException:
            self._kill_all()  # no half-started pool outlives its failed constructor
            self._close_pidfds()
            raise
        self.thread = threading.Thread(target=self._collect, name="paralelo-collector", daemon=True)
        self.thread.start()
        _engines.add(self)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the engine lock; completions found meanwhile run after it is released."""
        outer = getattr(_deferred, "pending", None) is None
        if outer:
            _deferred.pending = []
        try:
            with self.lock:
                yield
        finally:
            if outer:
                pending, _deferred.pending = _deferred.pending, None
                for fn, args in pending:
                    fn(*args)

    # -- workers -------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        slot.pid, slot.pidfd = self.zygote.spawn(self.hub.fd, slot.index)
        slot.alive = True
        slot.answered = False
        slot.loaded = set()
        self.hub.post(slot.index, INIT, 0, 0, 0, self.init_payload)

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.alive]

    # -- dispatch ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError("a paralelo pool cannot be used from a child process forked after it was made")
        with self.locked():
            if self.broken is not None:
                raise self.broken
            if self.closing:
                raise ValueError("Pool not running")
            self.jobs[job.id] = job
            self.active.append(job)
            self._pump()

    def kick(self) -> None:
        """Dispatches again (a lazy job's consumer made room)."""
        if os.getpid() != self.pid:
            return
        with self.locked():
            self._pump()

    def _limit(self, job: Job) -> int:
        t = job.unit_seconds()
        if t is None:
            return 2
        return min(MAX_INFLIGHT, 1 + int(QUEUE_SECONDS / max(t, 1e-7)))

    def _pump(self) -> None:
        """Tops up every live worker's queue, least loaded first."""
        if self.broken is not None or not self.active:
            return
        live = sorted((s for s in self.slots if s.alive), key=lambda s: len(s.inflight))
        limit = self._limit(self.active[0])
        try:
            for slot in live:
                room = limit - len(slot.inflight)
                while room > 0:
                    units = self._next_units(min(room, SHIP_UNITS))
                    if not units:
                        return
                    for unit in units:
                        self._send(slot, unit)
                    room -= len(units)
                    if len(slot.outgoing) >= SHIP_UNITS:
                        self._ship(slot)
        finally:
            for slot in live:
                if slot.outgoing:
                    self._ship(slot)

    def _next_units(self, most: int) -> list[Unit]:
        """Up to `most` units of the oldest job that has any. A job held back by its slow
        consumer (lazy imap) lets younger jobs pass, so waiting on one never starves the
        others."""
        active = self.active
        i = 0
        while i < len(active):
            job = active[i]
            units = job.next_units(most)
            if units:
                return units
            if job.has_more():
                i += 1
                continue
            del active[i]
            self._maybe_forget(job)
        return []

    def _send(self, slot: Slot, unit: Unit) -> None:
        """Commits `unit` to `slot`. Map chunks wait in `slot.outgoing` until the end of
        the pump round, to travel several to a message."""
        job = unit.job
        slot.inflight[(job.id, unit.seq)] = unit
        job.outstanding += 1
        if unit.tag == TASK:
            slot.outgoing.append(unit)
        else:
            self.hub.post(slot.index, unit.tag, job.id, unit.seq, 0, unit.payload)

    def _ship(self, slot: Slot) -> None:
        """Sends the map chunks committed to `slot`: one message per run of chunks of the
        same job (TASK for one, TASKS for several), which wakes the worker if it sleeps —
        one futex wake (≈ 21 µs here) per batch, not per unit."""
        units, slot.outgoing = slot.outgoing, []
        i = 0
        while i < len(units):
            job = units[i].job
            j = i + 1
            while j < len(units) and units[j].job is job and not units[i].solo and not units[j].solo:
                j += 1
            run, i = units[i:j], j
            if job.id not in slot.loaded:
                assert job.func_payload is not None  # map jobs always ship their function
                self.hub.post(slot.index, FUNC, job.id, 0, 0, job.func_payload, False)
                slot.loaded.add(job.id)
            try:
                if len(run) == 1:
                    tag, seq, payload = TASK, run[0].seq, dumps(run[0].payload)
                else:
                    tag, seq = TASKS, run[0].seq
                    payload = dumps(([u.seq for u in run], [u.payload for u in run]))
            except BaseException:  # noqa: BLE001 - find the chunk that cannot be pickled
                for u in run:
                    try:
                        self.hub.post(slot.index, TASK, job.id, u.seq, 0, dumps(u.payload))
                    except BaseException as e:  # noqa: BLE001 - an argument cannot be pickled
                        self._answer(slot, job.id, [(u.seq, False, e, 0)])
                continue
            self.hub.post(slot.index, tag, job.id, seq, 0, payload)

    def _maybe_forget(self, job: Job) -> None:
        """Drops a job that will send and receive nothing more (and its function in workers)."""
        if job.outstanding or (job.has_more() and not job.finished) or job.id not in self.jobs:
            return
        del self.jobs[job.id]
        if job in self.active:
            self.active.remove(job)
        if job.func_payload is not None:
            for s in self.slots:
                if s.alive and job.id in s.loaded:
                    s.loaded.discard(job.id)
                    self.hub.post(s.index, DROP, job.id, 0, 0, b"")

    # -- results ---------------------------------------------------------------

    def _collect(self) -> None:
        try:
            self._collect_loop()
        except BaseException as e:  # noqa: BLE001 - a bug here must fail callers, not hang them
            err = _broken(f"paralelo's collector thread failed: {e!r}")
            err.__cause__ = e
            with self.locked():
                self._break(err)
        finally:
            with self.locked():
                self._close_pidfds()

    def _close_pidfds(self) -> None:
        for s in self.slots:
            s.alive = False
            if s.pidfd >= 0:
                os.close(s.pidfd)
                s.pidfd = -1

    def _collect_loop(self) -> None:
        recv = self.hub.recv
        next_check = time.monotonic() + LIVENESS_SECONDS
        while True:
            msgs = recv(LIVENESS_SECONDS)
            with self.locked():
                for slot_i, tag, job_id, seq, aux, payload in msgs:
                    self._handle(self.slots[slot_i], tag, job_id, seq, aux, payload)
                # Check liveness when idle, and at least every LIVENESS_SECONDS while busy:
                # a dead worker's queue must not wait for the others to finish.
                if not msgs or time.monotonic() >= next_check:
                    self._check_liveness()
                    next_check = time.monotonic() + LIVENESS_SECONDS
                self._pump()
                if self.closing and not self.jobs and not self.exits_sent:
                    self.exits_sent = True
                    for s in self.slots:
                        if s.alive:
                            self.hub.post(s.index, EXIT, 0, 0, 0, b"")
                if self.closing and not any(s.alive for s in self.slots):
                    break

    def _answer(self, slot: Slot, job_id: int, replies: Iterable[tuple[int, bool, Any, int]]) -> None:
        """Outcomes of units of one job that `slot` ran: `(seq, ok, results or exception,
        busy_ns)`. Units no longer held (already failed or requeued) are ignored."""
        inflight = slot.inflight
        answers = []
        for seq, ok, value, busy in replies:
            unit = inflight.pop((job_id, seq), None)
            if unit is not None:
                answers.append((unit, ok, value, busy))
        if answers:
            job = answers[0][0].job
            job.outstanding -= len(answers)
            job.done_many(answers)
            if not job.outstanding:
                self._maybe_forget(job)

    def _handle(self, slot: Slot, tag: int, job_id: int, seq: int, aux: int, payload: bytes) -> None:
        self.unexplained_deaths = 0
        slot.answered = True
        if tag == RESULTS:
            seqs, body = pickle.loads(payload)
            err: BaseException | None
            try:
                replies = pickle.loads(body)
            except BaseException as e:  # noqa: BLE001 - those units fail, not the pool
                replies = [(q, False, None, 0) for q in seqs]
                err = e
            else:
                err = None
            self._answer(slot, job_id, (
                (q, ok, value if ok else err or load_error(value), busy) for q, ok, value, busy in replies
            ))
        elif tag == OK or tag == OK_ARRAY:
            try:
                ok, value = True, unpack_results(tag, payload)
            except BaseException as e:  # noqa: BLE001
                ok, value = False, e
            self._answer(slot, job_id, [(seq, ok, value, aux)])
        elif tag == ERR:
            self._answer(slot, job_id, [(seq, False, load_error(payload), aux)])
        elif tag == BYE:
            self._retire(slot, None)
        elif tag == INIT_ERR:
            exc = load_error(payload)
            err = _broken("a worker's initializer raised an exception")
            err.__cause__ = exc
            self._break(err)

    def _check_liveness(self) -> None:
        by_fd = {s.pidfd: s for s in self.slots if s.alive}
        if not by_fd:
            return
        p = select.poll()
        for fd in by_fd:
            p.register(fd, select.POLLIN)
        # Name the dead by (slot, pid) now: handling messages below may retire a worker and
        # start a replacement whose pidfd reuses a number we just polled.
        dead = [(by_fd[fd], by_fd[fd].pid) for fd, _ in p.poll(0)]
        if not dead:
            return
        # A dying worker may have sent results first: take them before judging.
        for slot_i, tag, job_id, seq, aux, payload in self.hub.recv(0):
            self._handle(self.slots[slot_i], tag, job_id, seq, aux, payload)
        for slot, pid in dead:
            if slot.alive and slot.pid == pid:
                try:
                    status = self.zygote.exit_status(pid)
                except OSError:
                    status = None
                self._retire(slot, _zygote.describe_exit(status))

    def _retire(self, slot: Slot, death: str | None) -> None:
        """The worker in `slot` is gone (death given) or leaving after maxtasks (None):
        fail what it was running, hand back what it had not started, start another."""
        running = self.hub.current(slot.index) if death is not None else (0, 0)
        slot.alive = False
        if death is not None:
            self._explain_death(slot, running, death)
        units = list(slot.inflight.values())
        slot.inflight.clear()
        slot.outgoing = []
        self.hub.reset_slot(slot.index)
        os.close(slot.pidfd)
        slot.pidfd = -1
        batch = bool(running[1] & BATCH)
        for unit in units:
            unit.job.outstanding -= 1
            if batch and unit.job.id == running[0]:
                unit.solo = True  # died unpickling a batch: retry its units one by one
            if death is not None and (unit.job.id, unit.seq) == running:
                unit.job.lost(unit, WorkerLostError(
                    f"the worker process (pid {slot.pid}) running this task died: {death}"))
                self._maybe_forget(unit.job)
            else:
                unit.job.requeued.appendleft(unit)
                if unit.job not in self.active:
                    self.active.appendleft(unit.job)
        if (not self.closing or self.jobs) and self.broken is None:
            try:
                self._start(slot)
            except OSError as e:
                err = _broken(f"cannot start a replacement worker: {e}")
                err.__cause__ = e
                self._break(err)

    def _explain_death(self, slot: Slot, running: tuple[int, int], death: str) -> None:
        """Deaths outside a task: in the initializer, the pool is broken (as in
        concurrent.futures); loading a job's function (twice), that job fails; workers
        that die before saying anything, three in a row with no message from any worker
        in between, break the pool rather than restart workers for ever."""
        job_id, seq = running
        if seq == IN_INITIALIZER:
            self._break(_broken(f"a worker process (pid {slot.pid}) died in the pool's initializer: {death}"))
        elif seq == LOADING_FUNC and job_id in self.jobs:
            # Twice, so that one outside kill at that moment does not fail the job.
            job = self.jobs[job_id]
            job.func_deaths += 1
            if job.func_deaths >= 2:
                job.fail(WorkerLostError(
                    f"worker processes (the last pid {slot.pid}) died unpickling this job's function: {death}"))
        elif (
            not slot.answered
            and not seq & BATCH
            and not any((u.job.id, u.seq) == running for u in slot.inflight.values())
        ):
            # A worker that dies before saying anything, again and again: it cannot start.
            self.unexplained_deaths += 1
            if self.unexplained_deaths >= MAX_UNEXPLAINED_DEATHS:
                self._break(_broken(
                    f"{self.unexplained_deaths} worker processes died in a row outside any task, "
                    f"the last (pid {slot.pid}) because {death}"))

    def _break(self, err: BaseException) -> None:
        self.broken = err
        for job in list(self.jobs.values()):
            job.fail(err)
        self.jobs.clear()
        self.active.clear()
        self._kill_all()
        self.closing = True

    def _kill_all(self) -> None:
        for s in self.slots:
            if s.alive and s.pidfd >= 0:
                try:
                    signal.pidfd_send_signal(s.pidfd, signal.SIGKILL)
                except OSError:  # already gone
                    pass

    # -- shutdown ---------------------------------------------------------------

    def close(self) -> None:
        """No new jobs; workers exit once the current ones are done."""
        if os.getpid() != self.pid:
            return  # a forked child: the rings and workers are its parent's
        with self.locked():
            self.closing = True
            lazy = [job for job in self.active if isinstance(job, MapJob)]
        # Like multiprocessing, finish lazily read inputs even if nobody consumes them
        # (read here, on the caller's thread, not under the engine lock).
        for job in lazy:
            job.hold = None
            job.feed(everything=True)
        with self.locked():
            self._pump()
        self.hub.wake()

    def terminate(self, exc: BaseException | None = None) -> None:
        """Stops everything now: unfinished jobs fail with `exc` (if given), workers are
        killed. In a forked child, does nothing: the workers are its parent's."""
        if os.getpid() != self.pid:
            return
        with self.locked():
            self.closing = True
            if exc is not None:
                for job in list(self.jobs.values()):
                    job.fail(exc)
            self.jobs.clear()
            self.active.clear()
            self._kill_all()
        self.hub.wake()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


def _broken(msg: str) -> BaseException:
    from concurrent.futures.process import BrokenProcessPool

    return BrokenProcessPool(msg)


def _shutdown_all() -> None:
    # As in the standard library: executors finish their pending work at exit, pools stop.
    # Only this process's own engines: a forked child must not stop its parent's workers.
    engines = [e for e in _engines if e.pid == os.getpid()]
    for engine in engines:
        if engine.finish_at_exit:
            engine.close()
        else:
            engine.terminate()
    for engine in engines:
        engine.join(None if engine.finish_at_exit else 5)


atexit.register(_shutdown_all)
os.register_at_fork(after_in_child=_engines.clear)
