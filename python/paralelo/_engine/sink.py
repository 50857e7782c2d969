"""What a map job delivers its outcomes to: the typed protocol between the engine and the
result objects (``MapResult``, ``IMapIterator``)."""

from __future__ import annotations

from typing import Any, Protocol


class MapSink(Protocol):
    """Receives a map job's outcomes. Every method but ``consumed_items`` is called with
    the engine lock held, and must not run user code (see ``run_or_defer``)."""

    #: The first failed chunk fails the whole map (``map``, once every chunk ran), rather
    #: than raising in its place (``imap``).
    fails_whole: bool

    def expect(self, total: int) -> None:
        """The input's exact length, known before any outcome (sliceable inputs)."""

    def chunks(self, chunks: list[tuple[int, int, bool, Any]]) -> None:
        """Outcomes in any order: `(start, count, ok, values or exception)`; values may be
        ``Segments`` when some items of a chunk failed, or a machine array of numbers
        (bytes: ``_native.unpack_numbers``), which a sink may keep packed until `settle`."""

    def settle(self) -> None:
        """Unpacks what `chunks` kept packed. The engine calls it once the workers that
        sent those results were given more work: they do not wait on the unpacking."""

    def end(self, total: int) -> None:
        """The input ended after `total` items."""

    def fail(self, exc: BaseException) -> None:
        """The whole job failed (pool broken or terminated)."""

    def input_failed(self, position: int, exc: BaseException) -> None:
        """The input raised `exc` after `position` items."""

    def consumed_items(self) -> int:
        """How many results the consumer has taken (bounds a lazy job's read-ahead)."""
