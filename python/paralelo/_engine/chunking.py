"""How big a map's chunks are: from measured worker time per item, so each chunk takes
about ``CHUNK_SECONDS`` in a worker, with guided (shrinking) chunks near the end."""

from __future__ import annotations

#: An adaptive chunk aims to take this long in a worker: long enough to amortise the
#: ≈ 30 µs a message costs end to end, short enough to balance load.
CHUNK_SECONDS = 0.002
#: Near the end of a map, chunks shrink (guided scheduling) but not below this much work:
#: a smaller chunk costs more in messages than it can save in balance.
MIN_CHUNK_SECONDS = 0.0002
#: An adaptive chunk carries at most this many bytes of items and results (pickled, as
#: weighed so far): big items travel a few at a time, released as they are consumed.
CHUNK_BYTES = 4 << 20


class Chunker:
    """The chunk policy of one map. With a fixed ``chunksize`` every chunk has that size;
    with None, chunks are single items until the cost is measured (so the first items
    spread over every worker, however slow they are), then follow the measured cost, never
    taking more than a worker's share of what remains, nor more than `most` items (a pool's
    ``maxtasksperchild``: a worker then leaves after that many items, not chunks), nor
    more than CHUNK_BYTES of items and results once they are weighed."""

    __slots__ = ("fixed", "processes", "total", "most", "size", "min_size", "per_item",
                 "busy_ns", "measured_items", "measured_chunks", "measured_max", "least",
                 "heaviest", "tail", "primed", "trusted")

    def __init__(self, chunksize: int | None, processes: int, total: int | None,
                 most: int | None = None) -> None:
        self.fixed = chunksize
        self.processes = processes
        self.total = total
        self.most = most or None
        self.size = self.min_size = chunksize or 1
        self.per_item = 0.0
        self.busy_ns = 0  # worker time, items and chunks of the largest chunks measured
        self.measured_items = self.measured_chunks = 0
        self.measured_max = 0  # the largest chunk measured
        self.least: tuple[int, int] | None = None  # (items, ns) of the smallest chunk measured
        self.heaviest = 0  # the most items CHUNK_BYTES holds (0: not weighed yet)
        self.tail = 0  # the size of the last pieces, once cut (0: not there yet)
        self.primed = False  # sized from an earlier map's cost, not measured here yet
        self.trusted = False  # `per_item` is an item's cost, not mostly a chunk's fixed cost

    def next_size(self, chunks_cut: int, items_cut: int) -> int:
        """The size of the next chunk, after `chunks_cut` chunks of `items_cut` items."""
        if self.fixed:
            return self.fixed
        if self.measured_items == 0:
            return 1  # not measured yet: one item per worker until the first answers
        n = self.size
        if self.total is not None:
            left = self.total - items_cut
            if not self.tail and left <= self.processes * self.min_size:
                # What remains is less than a message is worth per worker: it goes in
                # `processes` even pieces, not in ever-halving ones (each a round trip).
                self.tail = -(-left // self.processes)
            if self.tail:
                n = min(n, self.tail)
            else:
                # Guided: leave enough pieces at the end to balance the workers, and never
                # more than one worker's share of what remains.
                n = min(n, max(self.min_size, -(-left // (2 * self.processes))), -(-left // self.processes))
        if self.most:
            n = min(n, self.most)
        if self.heaviest:
            n = min(n, self.heaviest)
        return max(1, n)

    def weigh(self, item_bytes: float) -> None:
        """An item and its results weigh `item_bytes` pickled."""
        self.heaviest = max(1, int(CHUNK_BYTES // item_bytes)) if item_bytes > 0 else 0

    def prime(self, per_item: float) -> None:
        """Starts from an earlier map's measured cost per item (of the same function): a
        hint for chunk sizes, replaced by this map's first measure of a chunk of two items
        or more; `unit_seconds` stays unknown until this map's own first measure, so each
        worker holds two chunks until then (`MapJob.unmeasured_limit`: one to run, one so
        it never idles while its first answer travels). The hint may be wrong: guided
        sizes bound what it commits before a measure (about 63% of the input if it is
        far too low, against 40% with one chunk each)."""
        self.busy_ns, self.measured_items, self.measured_chunks, self.measured_max = int(per_item * 1e9), 1, 1, 1
        self.update()
        self.primed, self.trusted = True, False

    def measure(self, count: int, elapsed_ns: int) -> None:
        """A chunk of `count` items took `elapsed_ns` in a worker."""
        if self.primed:
            self.primed = False
            self.busy_ns = self.measured_items = self.measured_chunks = self.measured_max = 0
        # Cost per item, from the largest chunks seen: a chunk's fixed cost (unpickling,
        # the call loop) would swamp a small chunk's measure.
        if count > 2 * self.measured_max:
            self.busy_ns = self.measured_items = self.measured_chunks = 0
            self.measured_max = count
        if 2 * count >= self.measured_max:
            self.busy_ns += elapsed_ns
            self.measured_items += count
            self.measured_chunks += 1
        if not self.fixed:  # (the slope sizes adaptive chunks only)
            least = self.least
            if least is None or count < least[0] or (count == least[0] and elapsed_ns < least[1]):
                self.least = (count, elapsed_ns)  # of the smallest size, the quickest (warmest)

    def update(self) -> None:
        """Re-derives sizes after a round of measurements."""
        if not self.measured_items:
            return
        self.per_item = self.busy_ns / self.measured_items / 1e9
        least = self.least
        if least is not None and self.measured_max >= 4 * least[0]:
            # Two sizes measured: the slope between them is the cost of an item without the
            # chunk's fixed cost, which the small chunk is mostly made of. So a map whose
            # first chunks are single items (or sized from a tiny earlier map) goes to its
            # true chunk size at once, not in several ever larger steps, each a round trip.
            # While the larger chunk is still mostly fixed cost, the slope is noise: the
            # plain average stays (it overestimates: chunks grow a step at a time).
            n = self.measured_items / self.measured_chunks
            t = self.busy_ns / self.measured_chunks
            if t >= 1.25 * least[1]:
                # Never less than half the plain average: a small chunk slowed by a cold
                # start must not make items look nearly free.
                self.per_item = max((t - least[1]) / (n - least[0]), 0.5 * t / n) / 1e9
                self.trusted = True
        if self.busy_ns >= MIN_CHUNK_SECONDS * 1e9 * self.measured_chunks:
            self.trusted = True  # chunks this long are mostly items
        if not self.fixed:
            self.size = max(1, int(CHUNK_SECONDS / max(self.per_item, 1e-9)))
            self.min_size = max(1, int(MIN_CHUNK_SECONDS / max(self.per_item, 1e-9)))

    def unit_seconds(self) -> float | None:
        """Estimated worker time of one chunk, or None when not measured yet."""
        if self.measured_items == 0 or self.primed:
            return None
        return self.per_item * self.size
