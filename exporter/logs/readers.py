"""One reader per file: follows it and feeds what it says to its source's state.

Three kinds, by how the file is written: text logs (lines), TensorBoard event files (binary
records, appended) and documents rewritten whole on every save (trainer_state.json,
hparams.yaml).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field

from ..training.signals import SourceState
from .detect import format_by_name, line_format_for
from .follow import Data, EndOfFile, FileFollower, Reset
from .formats import ParseError, Record
from .formats.events import may_report_events, scan_events
from .formats.hparams import parse_hparams_yaml
from .formats.regex import RegexFormat
from .formats.tfevents import TfEventsDecoder
from .formats.trainer_state import parse_trainer_state
from .lines import LineSplitter

MAX_DOCUMENT_BYTES = 64 << 20
EXAMPLES_KEPT = 5
# Records applied under one acquisition of the state's lock: few enough that a scrape waiting
# for the lock waits milliseconds, many enough that the lock costs nothing per record.
APPLY_BATCH = 256


@dataclass(frozen=True)
class LogSpec:
    """One configured log: a file, a glob or a directory."""

    path: str
    format: str = "auto"
    source: str | None = None
    patterns: tuple[tuple[str, str], ...] = ()  # (regex, kind) for format "regex"


@dataclass
class ReaderStats:
    lines: int = 0
    parse_errors: int = 0
    ignored: int = 0
    too_long: int = 0
    bytes: int = 0
    resets: dict[str, int] = field(default_factory=lambda: {"rotated": 0, "truncated": 0, "rewritten": 0})
    last_update: float | None = None
    error_examples: deque = field(default_factory=lambda: deque(maxlen=EXAMPLES_KEPT))
    ignored_examples: deque = field(default_factory=lambda: deque(maxlen=EXAMPLES_KEPT))


class Reader:
    """Follows one file and feeds what it says to its source's state."""

    def __init__(self, path: str, source: str, state: SourceState) -> None:
        self.path = path
        self.source = source
        self.state = state
        self.stats = ReaderStats()
        self.follower = FileFollower(path)
        # Everything there was has been read *and applied*. Set only at the end of a poll: the
        # follower is at the end of the file as soon as it has read a backlog, long before the
        # backlog is parsed, and /-/ready must not call a half-rebuilt state ready.
        self.caught_up = False

    format_name = "unknown"  # each reader kind names the format it reads

    @property
    def exists(self) -> bool:
        return self.follower.exists

    def poll(self) -> None:
        for item in self.follower.poll():
            if isinstance(item, Data):
                self.stats.bytes += len(item.data)
                self.on_data(item.data)
            elif isinstance(item, EndOfFile):
                self.stats.resets["rotated"] += 1
                self.on_end_of_file()
            elif isinstance(item, Reset):
                self.stats.resets[item.reason] += 1
                if item.reason == "rewritten":
                    self.state.mark_rewritten()
                self.on_reset()
        if self.follower.mtime is not None:
            self.stats.last_update = self.follower.mtime
        self.caught_up = self.follower.at_end

    def observed_at(self) -> float:
        """When what was just read was written, at the latest: the file's mtime, capped by now."""
        mtime = self.follower.mtime
        now = time.time()
        return now if mtime is None else min(mtime, now)

    def apply(self, records: list[Record]) -> None:
        self.state.apply_all(records, self.observed_at())

    def on_data(self, data: bytes) -> None: ...
    def on_end_of_file(self) -> None: ...
    def on_reset(self) -> None: ...

    def close(self) -> None:
        self.follower.close()


class LineReader(Reader):
    """A text log: lines cut by the splitter, parsed by a dialect, scanned for OOM events."""

    def __init__(self, path: str, source: str, state: SourceState, spec: LogSpec, max_line_bytes: int) -> None:
        super().__init__(path, source, state)
        self.spec = spec
        self.max_line_bytes = max_line_bytes
        self._new_parser()

    def _new_parser(self) -> None:
        self.splitter = LineSplitter(self.max_line_bytes)
        if self.spec.format == "regex":
            self.parser = RegexFormat([p for p, _ in self.spec.patterns], [k for _, k in self.spec.patterns])
        else:
            self.parser = line_format_for(self.path, self.spec.format)
        # Files written by a logger (CSV, JSON lines by name) carry no console text; anything
        # else may have stderr merged in, with an OOM traceback.
        self.scans_events = self.parser.name not in ("csv", "lightning_csv", "keras_csv", "jsonl")

    @property
    def format_name(self) -> str:
        chosen = getattr(self.parser, "chosen", None)
        if chosen is not None:
            return chosen.name
        return "undetected" if self.parser.name in ("auto", "csv") else self.parser.name

    def on_data(self, data: bytes) -> None:
        too_long_before = self.splitter.too_long
        self._handle(self.splitter.feed(data))
        self.stats.too_long += self.splitter.too_long - too_long_before

    def on_end_of_file(self) -> None:
        self._handle(self.splitter.flush())
        self._new_parser()

    def on_reset(self) -> None:
        self._new_parser()

    def _handle(self, lines: list[str]) -> None:
        when = self.observed_at()
        stats, state = self.stats, self.state
        stats.lines += len(lines)
        scans_events = self.scans_events and may_report_events("\n".join(lines))
        # Once a file's dialect is known, call it directly rather than through the detector.
        dialect = getattr(self.parser, "chosen", None) or self.parser
        parse = dialect.parse
        # Stretches of lines of one learned layout go to the state as runs, by column; a line
        # that reports an event is read on its own, so that its event keeps its place.
        read_run = getattr(dialect, "read_run", None)
        events = [scan_events(line) for line in lines] if scans_events else None
        # The lines that report an event, then the chunk's end: a run stops before the next one.
        stops = [index for index, event in enumerate(events) if event is not None] if events else []
        stops.append(len(lines))
        next_stop = 0
        # Records go to the state in batches, one lock acquisition each, in the order read.
        pending: list[Record] = []
        # A progress bar's record, held back to ride on the next line's record: a tqdm redraw
        # comes before most metric lines, and the state applies a record's progress before its
        # values, so one record does what the two would, in the same order, for half the cost.
        bar: Record | None = None
        # A run is looked for where one may start: at the chunk's start, and after a line that
        # gave records; not on every line of a stretch of other output.
        i, count, may_start_run = 0, len(lines), read_run is not None
        try:
            while i < count:
                run = None
                if may_start_run and bar is None:
                    while stops[next_stop] < i:
                        next_stop += 1
                    if stops[next_stop] > i:
                        run = read_run(lines, i, stops[next_stop])
                may_start_run = run is not None
                if run is not None:
                    i += run.lines
                    if len(run.rows) > 1:
                        if pending:
                            state.apply_all(pending, when)
                            pending = []
                        state.apply_run(run, when)
                        continue
                    records, event = run.records(), None  # one line costs less as its record
                else:
                    line = lines[i]
                    event = events[i] if events is not None else None
                    i += 1
                    if event is not None:
                        if bar is not None:
                            pending.append(bar)
                            bar = None
                        pending.append(event)
                    try:
                        records = parse(line)
                    except ParseError as error:
                        stats.parse_errors += 1
                        stats.error_examples.append((line[:200], str(error)[:200]))
                        continue
                if records:
                    first = records[0]
                    if bar is not None:
                        if first.progress is None and first.event is None:
                            first.progress = bar.progress
                        else:
                            pending.append(bar)
                        bar = None
                    if (len(records) == 1 and not first.values and first.progress is not None
                            and first.step is None and not first.meta and first.event is None):
                        bar = first
                        continue
                    pending += records
                    may_start_run = read_run is not None
                    if len(pending) >= APPLY_BATCH:
                        state.apply_all(pending, when)
                        pending = []
                elif event is None:
                    stats.ignored += 1
                    stats.ignored_examples.append(line[:200])
        finally:
            if bar is not None:
                pending.append(bar)
            if pending:
                state.apply_all(pending, when)


class TensorBoardReader(Reader):
    """A TensorBoard event file: length-prefixed binary records, decoded incrementally."""

    format_name = "tensorboard"

    def __init__(self, path: str, source: str, state: SourceState) -> None:
        super().__init__(path, source, state)
        self.decoder = TfEventsDecoder()

    def on_data(self, data: bytes) -> None:
        # The decoder never raises: a damaged record is skipped (it resynchronises) and reported.
        records = self.decoder.feed(data)
        for error in self.decoder.pop_errors():
            self.stats.parse_errors += 1
            self.stats.error_examples.append(("<binary record>", str(error)[:200]))
        self.stats.lines += len(records)
        self.apply(records)

    def on_end_of_file(self) -> None:
        self.on_reset()

    def on_reset(self) -> None:
        self.decoder = TfEventsDecoder()


class DocumentReader(Reader):
    """A file rewritten whole on every save: Hugging Face's trainer_state.json or Lightning's
    hparams.yaml. Re-read when it changes; of trainer_state.json's cumulative log_history only
    the entries not yet seen are applied."""

    def __init__(self, path: str, source: str, state: SourceState, fmt: str, already_applied: int = 0) -> None:
        super().__init__(path, source, state)
        self.format_name = fmt
        self._signature: tuple[int, int] | None = None
        # log_history entries already applied (from an older checkpoint's copy, when continuing).
        self.applied = already_applied

    def poll(self) -> None:
        try:
            self._read()
        finally:
            self.caught_up = True  # a document is read whole in one poll, and applied

    def _read(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self.follower.exists = False
            return
        self.follower.exists = True
        signature = (stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return
        self._signature = signature
        if stat.st_size > MAX_DOCUMENT_BYTES:
            self._error(f"file of {stat.st_size} bytes is over the {MAX_DOCUMENT_BYTES} byte limit")
            return
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_DOCUMENT_BYTES)
        except OSError as error:
            self._error(str(error))
            return
        self.stats.bytes += len(data)
        self.stats.last_update = stat.st_mtime
        self.follower.mtime = stat.st_mtime
        try:
            if self.format_name == "hparams":
                self.stats.lines += 1
                self.apply([Record(meta=parse_hparams_yaml(data))])
            else:
                self._apply_trainer_state(data)
        except ParseError as error:
            # Often a save caught half-written: the next change is read again.
            self._error(str(error))

    def _apply_trainer_state(self, data: bytes) -> None:
        records, meta = parse_trainer_state(data)
        if len(records) < self.applied:
            # A shorter history is a new run writing into the same place.
            self.stats.resets["rewritten"] += 1
            self.state.mark_rewritten()
            self.applied = 0
        fresh = records[self.applied:]
        self.applied = len(records)
        self.stats.lines += len(fresh)
        self.apply([Record(meta=meta), *fresh] if meta else fresh)

    def _error(self, message: str) -> None:
        self.stats.parse_errors += 1
        self.stats.error_examples.append((os.path.basename(self.path), message[:200]))


def make_reader(path: str, source: str, state: SourceState, spec: LogSpec, max_line_bytes: int) -> Reader:
    fmt = spec.format if spec.format not in ("auto", None) else (format_by_name(path) or "auto")
    if fmt == "tensorboard":
        return TensorBoardReader(path, source, state)
    if fmt in ("trainer_state", "hparams"):
        return DocumentReader(path, source, state, fmt)
    return LineReader(path, source, state, spec, max_line_bytes)
