"""The job model: a job hands out units (one message each: a chunk of a map, or one call)
and receives their outcomes. Every method here is called with the engine lock held,
except ``MapJob.feed``, which reads the user's input on the job's reader thread."""

from __future__ import annotations

import functools
import itertools
import sys
import threading
import time
import types
import weakref
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from .._outcomes import Segments
from .._errors import pickling_failed
from .._arena import LEND
from .._pickling import FLAT, MainNames, cut, dumps, function_payload
from .._wire import CALL, TASK
from .chunking import Chunker
from .snapshot import snapshot, snapped
from .sink import MapSink

_job_ids = itertools.count(1)
#: The most items a lazy map reads ahead of its consumer (or of dispatch, after close()).
READ_AHEAD_ITEMS = 1 << 16
#: ...and the most bytes, judged by what its items and results weigh pickled: a map of
#: 20 MB arrays reads a few ahead, not thousands.
READ_AHEAD_BYTES = 64 << 20
#: A streaming reader hands what it read to dispatch once reading took this long, so a
#: slow input's items go out one by one and a fast one's in large batches.
STREAM_SECONDS = 0.001
#: Unit tickets, unique in this process: what a worker records in its slot state while it
#: runs a unit, so a death is blamed on exactly that unit.
_tickets = itertools.count(1)


class Unit:
    """One schedulable piece of work: a chunk of a map job (`payload` holds its items until
    sent) or one call (`payload` is the call: ``(function, args, kwargs)``). `seq` is its
    ticket."""

    __slots__ = ("job", "seq", "tag", "payload", "start", "count", "solo", "tries", "deadline", "sent", "snapped",
                 "batch")

    def __init__(self, job: Job, tag: int, payload: Any, start: int = 0, count: int = 1):
        self.job, self.seq, self.tag, self.payload = job, next(_tickets), tag, payload
        self.start, self.count = start, count
        self.solo = False  # travels in a message of its own (a batch it was in killed a worker)
        self.tries = 0  # times it was run again after its worker died running it
        self.deadline = 0.0  # with a time limit: when its worker is killed (monotonic)
        #: The payload last sent, if it lent buffers (``_arena.Framed``): they live until
        #: the unit is answered (or sent again, with new ones).
        self.sent: bytes | None = None
        #: Bytes its items' snapshots hold in the arena (see `MapJob.feed`).
        self.snapped = 0
        #: The ticket of the batch message (TASKS, CALLS) it last went in; its own if alone.
        self.batch = 0


class Job:
    """Work the engine dispatches. Subclasses produce units and receive their outcomes."""

    func_payload: bytes | None = None
    #: Units of this job a worker may hold before its cost is measured.
    unmeasured_limit = 1
    #: Whether a worker's maxtasks counts this job's items (else its units).
    counts_items = False
    #: Seconds a unit may run before its worker is killed and it fails (None: no limit).
    #: A unit with a limit goes only to an idle worker (see `Engine._expire`).
    timeout: float | None = None
    #: Times a unit whose worker died running it is run again before it fails.
    retries = 0

    def __init__(self) -> None:
        self.id = next(_job_ids)
        # Units to send again first (a dead worker's): made when one is, as few jobs
        # ever have any (a burst of calls would make, and the collector walk, one each).
        self.requeued: deque[Unit] | tuple[()] = ()
        self.finished = False
        self.func_deaths = 0  # workers that died unpickling this job's function
        self.outstanding = 0  # units sent and not yet answered (kept by the engine)

    def next_unit(self, cap: int | None = None) -> Unit | None:
        """The next unit to send, or None if there is none now; with `cap`, a new unit
        holds at most that many items."""
        raise NotImplementedError

    def has_more(self) -> bool:
        """Whether units may still come (now or once a lazy consumer makes room)."""
        raise NotImplementedError

    def next_units(self, most: int, cap: int | None = None) -> list[Unit]:
        """Up to `most` units to send now, with at most `cap` new items in all."""
        out: list[Unit] = []
        while len(out) < most and (cap is None or cap > 0):
            unit = self.next_unit(cap)
            if unit is None:
                break
            out.append(unit)
            if cap is not None:
                cap -= unit.count
        return out

    def unit_seconds(self) -> float | None:
        """Estimated worker time of one unit, or None when unknown yet."""
        return None

    @property
    def abandoned(self) -> bool:
        """Whether nobody waits for its outcomes any more (a dropped lazy map's iterator)."""
        return False

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        raise NotImplementedError

    def done_many(self, answers: list[tuple[Unit, bool, Any, int]]) -> None:
        """Several outcomes at once (one RESULTS message)."""
        for unit, ok, value, elapsed_ns in answers:
            self.done(unit, ok, value, elapsed_ns)

    def fail(self, exc: BaseException) -> None:
        """Fails the whole job (pool broken or terminated)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Runs nothing more of this job (its consumer stopped early, or it failed)."""
        self.finished = True
        self.requeued = ()
        self.starved()

    def starved(self) -> None:
        """Called when the job needs more input than was read, or ended: see MapJob."""

    def lost(self, unit: Unit, exc: BaseException) -> None:
        """The worker running `unit` died."""
        self.done(unit, False, exc, 0)

    def weigh(self, out: bool, nbytes: int, items: int) -> None:
        """`items` of its items weighed `nbytes` pickled, going out (tasks) or coming back
        (`out` false: results)."""


class CallCosts:
    """What calls (or map items) of each function took lately: calls are jobs of their
    own, and this is how a call's cost is known before it runs; a map of known length
    starts from what its function's items cost in its last map. Functions are held weakly
    (a new function never inherits a dead one's cost), builtins strongly."""

    __slots__ = ("weak", "strong")
    #: Functions remembered; past this the memory starts afresh.
    MOST = 1024

    def __init__(self) -> None:
        # id(function) -> [weak reference to it, seconds]: looked up (twice a call) without
        # making a weak reference each time, as a WeakKeyDictionary does.
        self.weak: dict[int, list] = {}
        self.strong: dict[Callable, float] = {}  # callables without weak references

    @staticmethod
    def _key(fn: Callable) -> Callable:
        # A bound method or a partial is a new object at every call: what it runs is not.
        while True:
            kind = type(fn)
            if kind is types.MethodType:
                fn = fn.__func__  # type: ignore[attr-defined]
            elif kind is functools.partial:
                fn = fn.func  # type: ignore[attr-defined]
            else:
                return fn

    def _entry(self, fn: Callable) -> list | None:
        entry = self.weak.get(id(fn))
        return entry if entry is not None and entry[0]() is fn else None

    def get(self, fn: Callable) -> float | None:
        fn = self._key(fn)
        if type(fn).__weakrefoffset__:
            entry = self._entry(fn)
            return None if entry is None else entry[1]
        try:
            return self.strong.get(fn)
        except TypeError:  # an unhashable callable: not remembered
            return None

    def add(self, fn: Callable, seconds: float) -> None:
        """One more measure: folded into the moving average."""
        fn = self._key(fn)
        entry = self._entry(fn) if type(fn).__weakrefoffset__ else None
        if entry is not None:
            entry[1] = 0.75 * entry[1] + 0.25 * seconds
            return
        known = self.get(fn)
        self.remember(fn, seconds if known is None else 0.75 * known + 0.25 * seconds)

    def remember(self, fn: Callable, seconds: float) -> None:
        """Replaces what `fn` costs (a map's own estimate, from all its chunks)."""
        fn = self._key(fn)
        if not type(fn).__weakrefoffset__:
            try:
                if fn not in self.strong and len(self.strong) >= self.MOST:
                    self.strong.clear()
                self.strong[fn] = seconds
            except TypeError:
                pass
            return
        entry = self._entry(fn)
        if entry is not None:
            entry[1] = seconds
            return
        weak, key = self.weak, id(fn)
        if len(weak) >= self.MOST:
            weak.clear()

        def gone(ref: weakref.ref, weak: dict = weak, key: int = key) -> None:
            # (The entry's id may have gone to a new function since: only its own goes.)
            entry = weak.get(key)
            if entry is not None and entry[0] is ref:
                del weak[key]

        weak[key] = [weakref.ref(fn, gone), seconds]


class CallJob(Job):
    """One function call: apply_async or submit. `on_done(ok, value)` gets the outcome."""

    # Until calls of its function were timed, none waits in a busy worker's queue: it may
    # be the first of a slow function, and a worker that comes free must get the next.
    unmeasured_limit = 1

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, on_done: Callable[[bool, Any], None],
                 on_start: Callable[[], bool] | None = None, main: MainNames | None = None,
                 costs: CallCosts | None = None):
        super().__init__()
        self.fn, self.args, self.kwargs, self.main = fn, args, kwargs, main
        self.on_done, self.on_start = on_done, on_start
        self.costs = costs
        self.sent = False

    def unit_seconds(self) -> float | None:
        return None if self.costs is None else self.costs.get(self.fn)

    def next_unit(self, cap: int | None = None) -> Unit | None:
        if self.finished:
            self.requeued = ()  # failed or cancelled meanwhile: nothing more to run
            return None
        if self.requeued:
            return self.requeued.popleft()  # type: ignore[union-attr]
        if self.sent:
            return None
        self.sent = True
        if self.on_start is not None and not self.on_start():
            self.finished = True  # cancelled before it ran
            return None
        # The unit holds the call, pickled as it is shipped (with the other calls shipped
        # to its worker at once: see `Engine._ship`), and again if it must run again.
        unit = Unit(self, CALL, (self.fn, self.args, self.kwargs))
        self.args, self.kwargs = (), {}
        return unit

    def has_more(self) -> bool:
        return bool(self.requeued) or not self.sent

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        self.finished = True
        if elapsed_ns and self.costs is not None:
            self.costs.add(self.fn, elapsed_ns * 1e-9)
        self.on_done(ok, value)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(False, exc)


class MapJob(Job):
    """`fn` over an iterable, in chunks, delivered to a `sink` (see ``MapSink``). With
    `hold`, at most that many items (or four chunks per worker, if more) are read beyond
    `sink.consumed_items()` (lazy imap)."""

    #: A progress bar (``_progress.Progress``) its completions advance, if asked for.
    progress: Any = None

    def __init__(self, processes: int, fn: Callable, iterable: Iterable, star: bool,
                 chunksize: int | None, sink: MapSink, hold: int | None = None,
                 most: int | None = None, main: MainNames | None = None,
                 costs: CallCosts | None = None):
        super().__init__()
        # A lazy map with adaptive chunks reports each item's failure in its place (as
        # with chunksize=1); a fixed chunksize fails whole chunks, as multiprocessing does.
        each = chunksize is None and not sink.fails_whole
        # maxtasksperchild counts items with adaptive chunks (they are ours, not the
        # caller's), chunks with an explicit chunksize (as multiprocessing does).
        self.counts_items = chunksize is None
        try:
            self.func_payload = function_payload((fn, star, each, self.counts_items), main)
        except BaseException as e:  # noqa: BLE001 - never raw (a __reduce__ may SystemExit)
            err = pickling_failed("the function", e)
            if err is e:
                raise
            raise err from e
        #: Set by the engine for the thread that reads this job's input (`reader`): called
        #: when dispatch runs low on read items, the consumer made room, or the job ends.
        self.on_starved: Callable[[], None] | None = None
        self.reader: threading.Thread | None = None
        self.processes = processes
        # Lists, tuples and ranges are cut with slices (C speed; a range slice pickles as
        # three numbers). Anything else is read by `feed`, on the job's reader
        # thread and never under the engine lock: user iterators may block, or even wait
        # on this very pool (imap over imap).
        self.sliceable: Sequence[Any] | None = (
            iterable if type(iterable) in (list, tuple, range) else None  # type: ignore[assignment]
        )
        self.it: Iterator = iter(iterable)
        self.main = main
        self.fed: deque = deque()  # items read by `feed`, not yet cut into units
        self.feed_lock = threading.Lock()  # one reader of the iterator at a time
        self.fed_lock = threading.Lock()  # `fed` and `fed_all` change together
        self.fed_all = False  # the iterator is exhausted (or raised: `input_error`)
        self.input_error: BaseException | None = None
        self.read_items = 0
        try:
            total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        self.chunker = Chunker(chunksize, processes, total, most)
        # An earlier map of the same function says what its items cost: a map of known
        # length starts from that (guided chunks bound what a wrong guess costs); a lazy
        # one, unbounded, measures afresh from single items.
        self.fn, self.costs = fn, costs
        known = costs.get(fn) if costs is not None and chunksize is None and total is not None else None
        if known is not None:
            self.chunker.prime(known)
        # A lazy map's consumer may drop its iterator without reading it: the job then
        # still runs (as multiprocessing's does, for the side effects) but its results are
        # dropped, not kept for nobody. So it holds that sink weakly.
        self._sink: Callable[[], MapSink | None] = (
            weakref.ref(sink) if hold is not None else lambda: sink  # type: ignore[assignment]
        )
        if self.sliceable is not None:  # an exact length: results can be placed as they come
            sink.expect(len(self.sliceable))
        self.hold = hold
        # Pickled bytes an item takes going out and its results coming back: an average
        # that follows a rise at once (the read-ahead must shrink before memory grows).
        self.item_bytes = [0.0, 0.0]
        self.sent_items = 0
        self.chunks_cut = 0
        self.input_done = False
        self.held = False  # next_unit refused because the consumer is behind
        #: The input is read whole at once by the caller (concurrent.futures' map reads it
        #: in map()), each item going out as it is read.
        self.eager = False

    @property
    def abandoned(self) -> bool:
        return self.hold is not None and self._sink() is None

    @property
    def unmeasured_limit(self) -> int:  # type: ignore[override]
        # Sized from an earlier map: a second chunk waits in each worker, so none idles
        # while its first answer makes the round trip (the guess is checked by then).
        return 2 if self.chunker.primed else 1

    @property
    def sink(self) -> MapSink:
        """Where outcomes go: the consumer's sink, or, once a lazy consumer dropped it,
        nowhere."""
        return self._sink() or _DROPPED

    def starved(self) -> None:
        if self.on_starved is not None:
            self.on_starved()

    def next_unit(self, cap: int | None = None) -> Unit | None:
        if self.finished:
            self.requeued = ()  # the map failed or was stopped: nothing more to run
            return None
        if self.requeued:
            return self.requeued.popleft()  # type: ignore[union-attr]
        if self.input_done:
            return None
        if self.sliceable is not None:
            units = self._slice_units(1, cap)
            return units[0] if units else None
        if self.hold is not None and self.sent_items - self.sink.consumed_items() > self.ahead_limit():
            self.held = True  # the consumer is behind: hold the input back
            return None
        self.held = False
        n = self.chunker.next_size(self.chunks_cut, self.sent_items)
        if cap is not None and self.counts_items:
            n = min(n, cap)
        failure: BaseException | None = None
        fed = self.fed
        with self.fed_lock:
            # With the caller's chunksize, chunks are whole until the input ends, as
            # multiprocessing cuts them (which items fail together depends on it).
            whole_only = self.chunker.fixed and not self.fed_all and len(fed) < n
            items = [] if whole_only else [fed.popleft() for _ in range(min(n, len(fed)))]
            ended = not fed and self.fed_all
            low = self.on_starved is not None and not self.fed_all and len(fed) < self.ahead_limit() // 2
        if low:
            self.starved()  # the reader reads more (if its read-ahead allows) before dispatch runs dry
        if ended:
            failure = self.input_error
            n = len(items) + 1  # the input ends after these items
        elif len(items) < n:
            # Fed items ran short: send what there is (the reader was woken above).
            if not items:
                self.held = True
                return None
            n = len(items)
        unit = None
        if items:
            payload, oob = snapped(items)
            unit = Unit(self, TASK, payload, self.sent_items, len(items))
            unit.snapped = oob
            self.chunks_cut += 1
            self.sent_items += len(items)
        if failure is not None:
            self.input_done = True
            self.sink.input_failed(self.sent_items, failure)
            if self.progress is not None:
                self.progress.end(self.sent_items)
        elif len(items) < n:
            self.input_done = True
            self._ended(self.sent_items)
        if self.input_done:
            self.starved()
        return unit

    def feed(self, kick: Callable[[], None]) -> None:
        """Reads the input on the job's reader thread (`Engine.stream`; never the
        collector's, and never under the engine lock), up to the read-ahead: beyond what
        the consumer took or, with no consumer to wait for (after close()), beyond what
        was dispatched. Each item is handed to dispatch at once: an input may block after
        any item (a socket, a queue), so none may wait for the next. `kick` dispatches: for
        the first item, whenever fewer units are in flight than there are workers (one may
        be idle, and no result may come to pick the item up) and a unit's worth is read,
        and otherwise about every STREAM_SECONDS."""
        if self.sliceable is not None or self.fed_all:
            return
        with self.feed_lock:
            want = self.read_room()
            if self.fed_all or want <= 0:
                return
            # Per item only what must be: deque appends are atomic (`fed_all` alone needs
            # `fed_lock`), and the clock is read every 32 items.
            fed, clock, workers = self.fed, time.perf_counter, self.processes
            append = fed.append
            # Each item is pickled as it is read (`snapshot`), before the input is asked
            # for the next, which may change it; ints, strings and the like need not be.
            # Lent to the arena only if no item runs twice: a chunk of ours is cut up to
            # run again after its worker died, and a retry runs again.
            lend = self.chunker.fixed and not self.retries
            plain, main, mode = FLAT, self.main, LEND if lend else 0
            least = self.chunker.fixed or 1  # items that make a unit (a caller's chunk is whole)
            kicked = clock()
            read = counted = 0
            try:
                for item in self.it:
                    append(item if type(item) in plain else snapshot(item, main, mode))
                    read += 1
                    if ((read == 1 or self.outstanding < workers) and len(fed) >= least
                            or (not read & 31 and clock() - kicked > STREAM_SECONDS)):
                        self.read_items += read - counted
                        counted = read
                        kick()
                        kicked = clock()
                        want = read + self.read_room()  # dispatch weighed what it sent
                    if read >= want:
                        return
            except BaseException as e:  # noqa: BLE001 - the input itself raised
                self.input_error = e
            finally:
                self.read_items += read - counted
            with self.fed_lock:
                self.fed_all = True

    def read_room(self) -> int:
        """How many items the reader may read now: the read-ahead beyond what the consumer
        took or, with no consumer to wait for (after close(), or it was dropped), beyond
        what was dispatched; all of it if `eager`."""
        if self.eager:
            return sys.maxsize
        sink = self._sink()
        if self.hold is None or sink is None:
            return self.ahead_limit() - len(self.fed)
        return self.ahead_limit() - (self.read_items - sink.consumed_items())

    def has_more(self) -> bool:
        return bool(self.requeued) or not (self.input_done or self.finished)

    def next_units(self, most: int, cap: int | None = None) -> list[Unit]:
        # The hot path of small units: a sliceable input cut in one loop, without a call
        # per unit. Anything unusual (requeued units, an iterator input) takes the general way.
        if self.requeued or self.sliceable is None or self.input_done or self.finished:
            return super().next_units(most, cap)
        return self._slice_units(most, cap)

    def _slice_units(self, most: int, cap: int | None = None) -> list[Unit]:
        """Up to `most` units cut from a sliceable input, within the read-ahead limit and,
        when the job counts items, `cap` items."""
        items_in, i = self.sliceable, self.sent_items
        assert items_in is not None and self.chunker.total is not None
        total = stop = self.chunker.total  # its length when the map began (the sink expects it)
        if self.hold is not None:
            stop = min(total, self.sink.consumed_items() + self.ahead_limit())
            self.held = i >= stop
        budget = i + cap if cap is not None and self.counts_items else total
        fixed = self.chunker.fixed
        next_size = self.chunker.next_size
        out: list[Unit] = []
        chunks = self.chunks_cut
        have = len(items_in)
        items: Any
        while i < stop and len(out) < most:
            n = fixed or min(next_size(chunks, i), budget - i)
            if n <= 0:
                break
            n = min(n, total - i)
            if have < i + n:
                # The caller shrank the list under the map: its results cannot all come.
                self.fail(RuntimeError("the input list changed size during the map"))
                break
            if n == 1:
                items = [items_in[i]]
            else:
                items = cut(items_in, i, i + n)
                if n < 64 and type(items) is range:
                    items = list(items)  # a short list pickles faster than a range
            out.append(Unit(self, TASK, items, i, n))
            chunks += 1
            i += n
        self.chunks_cut, self.sent_items = chunks, i
        if i >= total:
            self.input_done = True
            self._ended(i)
        return out

    def _ended(self, total: int) -> None:
        if self.progress is not None:
            self.progress.end(total)
        self.sink.end(total)

    def ahead_limit(self) -> int:
        """How many items a lazy job reads ahead of its consumer: `hold`, or four chunks
        per worker if that is more, up to READ_AHEAD_ITEMS (chunks of very cheap items are
        huge: their read-ahead must not be); and, once items were weighed, no more than
        READ_AHEAD_BYTES of them and their results, but two (chunks) per worker at least."""
        limit = max(self.hold or 0, min(4 * self.processes * self.chunker.size, READ_AHEAD_ITEMS))
        weight = self.item_bytes[0] + self.item_bytes[1]
        if weight * limit > READ_AHEAD_BYTES:
            # Whole chunks of the caller's size must still fit, or none could be cut.
            limit = max(2 * self.processes * (self.chunker.fixed or 1), int(READ_AHEAD_BYTES // weight))
        return limit

    def weigh(self, out: bool, nbytes: int, items: int) -> None:
        if items > 0:
            i = 0 if out else 1
            per = nbytes / items
            self.item_bytes[i] = max(per, (self.item_bytes[i] + per) / 2)
            self.chunker.weigh(self.item_bytes[0] + self.item_bytes[1])

    def unit_seconds(self) -> float | None:
        return self.chunker.unit_seconds()

    def done(self, unit: Unit, ok: bool, value: Any, elapsed_ns: int) -> None:
        self.done_many([(unit, ok, value, elapsed_ns)])

    def done_many(self, answers: list[tuple[Unit, bool, Any, int]]) -> None:
        # Results may be a machine array (bytes, see as_array): the sink unpacks it.
        chunks = [
            (unit.start, unit.count, ok, value.loaded() if type(value) is Segments else value)
            for unit, ok, value, _ in answers
        ]
        # A failed chunk does not stop the map: the rest still runs, as with multiprocessing
        # (users count on the other items' side effects).
        for unit, ok, _, elapsed_ns in answers:
            if elapsed_ns:  # a unit that raised measures too; a lost one (0) does not
                self.chunker.measure(unit.count, elapsed_ns)
        self.chunker.update()
        if self.progress is not None:  # (first: its bar is drawn before the map's result is set)
            self.progress.advance(sum(c[1] for c in chunks))
        self.sink.chunks(chunks)

    def remember_cost(self) -> None:
        """Leaves what its items cost for the next map of its function (once, at its end:
        not per message)."""
        if self.costs is not None and self.chunker.trusted and not self.chunker.primed:
            self.costs.remember(self.fn, self.chunker.per_item)

    def fail(self, exc: BaseException) -> None:
        if self.progress is not None:
            self.progress.close()  # (first: the bar ends before the failure is reported)
        if not self.finished:
            self.finished = True
            self.sink.fail(exc)
        self.starved()

    def stop(self) -> None:
        super().stop()
        if self.progress is not None:
            self.progress.close()


class _Dropped:
    """The sink of a lazy map whose consumer is gone: outcomes are dropped, and the input
    is never held back for it."""

    fails_whole = False

    def expect(self, total: int) -> None:
        pass

    def chunks(self, chunks: list[tuple[int, int, bool, Any]]) -> None:
        pass

    def end(self, total: int) -> None:
        pass

    def settle(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def input_failed(self, position: int, exc: BaseException) -> None:
        pass

    def consumed_items(self) -> int:
        return 1 << 62  # never behind


_DROPPED = _Dropped()
