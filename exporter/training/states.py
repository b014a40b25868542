"""The training state of every source, fed by the log readers and read by the collector.

One ``SourceState`` per source, and one more per rank where a launcher's prefix names the rank
that printed a line (``[default3]:``): the rank's records go to a state of their own, exported
with a ``rank`` label. The ranks of one source are bounded (``MAX_RANKS``); a line from a rank
beyond them counts toward the source's own state, and the overflow is logged once.
"""

from __future__ import annotations

import logging
import threading
from typing import NamedTuple

from ..logs.formats.base import Record
from .signals import SignalSettings, SourceState
from .vocabulary import Vocabulary

log = logging.getLogger(__name__)

MAX_RANKS = 1024  # ranks kept apart per source: more than one file of a job ever interleaves


Labels = tuple[tuple[str, str], ...]


class Entry(NamedTuple):
    """One state as the collector reads it: its source, the source's labels and the rank."""

    source: str
    labels: Labels
    rank: str | None
    state: SourceState


class TrainingStates:
    """The states of all sources; the readers' sink. Iterating gives the source names."""

    def __init__(self, settings: SignalSettings, vocabulary: Vocabulary, keep_history: bool = False) -> None:
        self.settings = settings
        self.vocabulary = vocabulary
        self.keep_history = keep_history
        # (source, rank) -> state. Changed under the lock; read by a scrape as a copy taken in one
        # step (list(dict.items()) holds the interpreter's lock throughout).
        self._states: dict[tuple[str, str | None], SourceState] = {}
        self._ranks: dict[str, int] = {}  # source -> ranks kept apart
        self._labels: dict[str, Labels] = {}  # source -> the labels it was added with
        self._lock = threading.Lock()

    # -- the sink --------------------------------------------------------------------------

    def add_source(self, source: str, labels: Labels = ()) -> None:
        self._labels[source] = labels
        self._state(source, None)

    def remove_source(self, source: str) -> None:
        with self._lock:
            for key in [key for key in self._states if key[0] == source]:
                del self._states[key]
            self._ranks.pop(source, None)
            self._labels.pop(source, None)

    def apply(self, source: str, rank: str | None, records: list[Record], observed_at: float) -> None:
        self._state(source, rank).apply_all(records, observed_at)

    def rewritten(self, source: str) -> None:
        for (name, _), state in list(self._states.items()):
            if name == source:
                state.mark_rewritten()

    # -- reading ---------------------------------------------------------------------------

    def items(self) -> list[Entry]:
        """Every state, sorted by source, the source's own state first, then its ranks."""
        labels = dict(self._labels)
        return [Entry(source, labels.get(source, ()), rank, state) for (source, rank), state
                in sorted(list(self._states.items()), key=lambda item: (item[0][0], item[0][1] is not None, item[0][1] or ""))]

    def __iter__(self):
        return iter(dict.fromkeys(source for source, _ in list(self._states)))

    def __getitem__(self, source: str) -> SourceState:
        return self._states[(source, None)]

    def get(self, source: str, rank: str | None = None) -> SourceState | None:
        return self._states.get((source, rank))

    def _state(self, source: str, rank: str | None) -> SourceState:
        state = self._states.get((source, rank))
        if state is not None:
            return state
        with self._lock:
            if rank is not None and self._ranks.get(source, 0) >= MAX_RANKS:
                if self._ranks[source] == MAX_RANKS:
                    log.warning("source %r: more than %d ranks; the lines of further ranks count as "
                                "the source's own", source, MAX_RANKS)
                    self._ranks[source] += 1
                rank = None
            state = self._states.get((source, rank))
            if state is None:
                state = SourceState(self.settings, self.vocabulary, self.keep_history)
                self._states[(source, rank)] = state
                if rank is not None:
                    self._ranks[source] = self._ranks.get(source, 0) + 1
            return state
