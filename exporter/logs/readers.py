"""One reader per file: follows it and hands what it says, as records, to a sink.

Three kinds, by how the file is written: text logs (lines), TensorBoard event files (binary
records, appended) and documents rewritten whole on every save (trainer_state.json,
hparams.yaml). A text log's line goes through the layers one way: bytes into lines
(``lines.py``), the envelope taken off (``envelopes.py``), a dialect chosen for it
(``dialects.py``), records out; events (an OOM) are looked for in every console line.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from .detect import format_by_content, format_by_name
from .discovery import expand
from .dialects import DialectChoice, dialects_for
from .envelopes import Envelopes
from .follow import Data, EndOfFile, FileFollower, Reset
from .formats import ParseError, Record
from .formats.events import may_report_events, scan_events
from .formats.hparams import parse_hparams_yaml
from .formats.tfevents import TfEventsDecoder
from .formats.trainer_state import parse_trainer_state
from .lines import LineSplitter

log = logging.getLogger(__name__)

# The largest documents read, by format: a trainer_state.json holds a run's whole log history
# (16 MiB is some 80,000 entries); an hparams.yaml a few kilobytes.
MAX_DOCUMENT_BYTES = {"trainer_state": 16 << 20, "hparams": 256 << 10}
EXAMPLES_KEPT = 5
# Lines read, none of them understood, before the exporter says so in its own log: more than the
# preamble a trainer prints before its first metrics (argument dumps, model summaries, warnings).
NOT_UNDERSTOOD_LINES = 1000
FIRST_NOT_UNDERSTOOD_SHOWN = 3
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

    def find(self) -> tuple[list[str], list[str]]:
        """The files the spec names now (of several checkpoints' trainer_state.json the newest),
        and the directories searched for them."""
        paths, directories = expand(self.path)
        trainer_states = [p for p in paths if os.path.basename(p) == "trainer_state.json"]
        if len(trainer_states) > 1:
            # Every checkpoint-N/ holds the whole history so far: follow only the newest.
            newest = max(trainer_states, key=_mtime)
            paths = [p for p in paths if p not in trainer_states or p == newest]
        return paths, directories

    def source_of(self, path: str) -> tuple[str | None, Labels]:
        """The source a file found by ``find`` feeds, when the spec names it (None: named after
        the file), and the labels of its series."""
        return self.source, ()


Labels = tuple[tuple[str, str], ...]


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


class RecordSink(Protocol):
    """Where the readers' records go: whatever keeps the training state (the readers know nothing
    of it). ``rank`` is the rank a launcher's prefix named, or None."""

    def add_source(self, source: str, labels: Labels = ()) -> None:
        """A source is being followed; ``labels`` say more of where it comes from (a pod)."""

    def remove_source(self, source: str) -> None:
        """A source is no longer followed: its state goes."""

    def apply(self, source: str, rank: str | None, records: list[Record], observed_at: float) -> None: ...

    def rewritten(self, source: str) -> None:
        """The source's file is being read again from the top: what it says again was counted."""


@dataclass
class ReaderStats:
    lines: int = 0
    parse_errors: int = 0
    ignored: int = 0
    too_long: int = 0
    bytes: int = 0
    resets: dict[str, int] = field(default_factory=lambda: {"rotated": 0, "truncated": 0, "rewritten": 0})
    last_update: float | None = None
    # Times the file became unreadable, by why: a FIFO, a permission, a document too large.
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: deque = field(default_factory=lambda: deque(maxlen=EXAMPLES_KEPT))
    ignored_examples: deque = field(default_factory=lambda: deque(maxlen=EXAMPLES_KEPT))
    first_ignored: list = field(default_factory=list)  # the first lines not understood, for the warning


class Reader:
    """Follows one file and hands what it says to the sink, as the records of its source."""

    _format = "unknown"  # each reader kind names the format it reads

    def __init__(self, path: str, source: str, sink: RecordSink) -> None:
        self.path = path
        self.abs_path = os.path.abspath(path)
        self.real_path = os.path.realpath(path)  # where the writes happen, for a link
        self.source = source
        self.labels: Labels = ()
        self.sink = sink
        self.stats = ReaderStats()
        self.follower = FileFollower(path)
        # Everything there was has been read *and applied*. Set only at the end of a poll: the
        # follower is at the end of the file as soon as it has read a backlog, long before the
        # backlog is parsed, and /-/ready must not call a half-rebuilt state ready.
        self.caught_up = False
        self.error: str | None = None  # why the file cannot be read now, if it cannot

    @property
    def format_name(self) -> str:
        return self._format

    def set_error(self, reason: str | None, detail: str = "") -> None:
        """Note whether the file can be read; each time it becomes unreadable is counted and
        said once in the exporter's log."""
        if reason == self.error:
            return
        if reason is not None:
            self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
            log.warning("cannot read %r (source %r): %s%s", self.path, self.source, reason.replace("_", " "),
                        f": {detail}" if detail else "")
        elif self.error is not None:
            log.info("reading %r again", self.path)
        self.error = reason

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
                    self.sink.rewritten(self.source)
                self.on_reset()
        if self.follower.mtime is not None:
            self.stats.last_update = self.follower.mtime
        self.set_error(self.follower.error)
        self.caught_up = self.follower.at_end

    def observed_at(self) -> float:
        """When what was just read was written, at the latest: the file's mtime, capped by now."""
        mtime = self.follower.mtime
        now = time.time()
        return now if mtime is None else min(mtime, now)

    def apply(self, records: list[Record], rank: str | None = None) -> None:
        if records:
            self.sink.apply(self.source, rank, records, self.observed_at())

    def on_data(self, data: bytes) -> None: ...
    def on_end_of_file(self) -> None: ...
    def on_reset(self) -> None: ...

    def close(self) -> None:
        self.follower.close()


class LineReader(Reader):
    """A text log: lines, their envelopes taken off, read by the dialect that understands each,
    and (in console text) scanned for events such as an out-of-memory error."""

    def __init__(self, path: str, source: str, sink: RecordSink, spec: LogSpec, max_line_bytes: int) -> None:
        super().__init__(path, source, sink)
        self.spec = spec
        self.max_line_bytes = max_line_bytes
        by_name = format_by_name(path)
        # Files written by a logger (CSV, JSON lines by name) carry no console text; anything
        # else may have stderr merged in, with an OOM traceback.
        self.scans_events = spec.format not in ("lightning_csv", "keras_csv", "csv", "jsonl") and \
            (spec.format not in ("auto", None) or by_name not in ("csv", "jsonl"))
        self._by_name = by_name
        self._said_not_understood = False
        self._said_dialect_failed = False
        self._restart()

    def _restart(self) -> None:
        self.splitter = LineSplitter(self.max_line_bytes)
        self.envelopes = Envelopes(self.max_line_bytes)
        self.dialects: DialectChoice = dialects_for(self.spec.format, self._by_name, self.spec.patterns)

    @property
    def format_name(self) -> str:
        if self.dialects.names:
            return ",".join(sorted(self.dialects.names))
        return "undetected" if self.spec.format in ("auto", None) else self.spec.format

    def on_data(self, data: bytes) -> None:
        splitter, envelopes = self.splitter, self.envelopes
        too_long_before = splitter.too_long + envelopes.too_long
        self._handle(splitter.feed(data))
        self.stats.too_long += splitter.too_long + envelopes.too_long - too_long_before

    def on_end_of_file(self) -> None:
        self._handle(self.splitter.flush())
        self._handle_stretches(self.envelopes.flush(), self.scans_events)
        self._restart()

    def on_reset(self) -> None:
        self._restart()

    def _handle(self, lines: list[str]) -> None:
        scans_events = self.scans_events and may_report_events("\n".join(lines))
        self._handle_stretches(self.envelopes.stretches(lines), scans_events)

    def _handle_stretches(self, stretches, scans_events: bool) -> None:
        stats, parse = self.stats, self.dialects.parse
        # Records go to the sink in batches, one per stretch of one rank's lines, in the order read.
        for rank, when, payloads in stretches:
            stats.lines += len(payloads)  # a line is what a dialect reads: one redraw of a bar
            pending: list[Record] = []
            for payload in payloads:
                event = scan_events(payload) if scans_events else None
                try:
                    records = parse(payload)
                except Exception as error:  # noqa: BLE001 - a broken line, or a dialect's bug: one line lost
                    stats.parse_errors += 1
                    stats.error_examples.append((payload[:200], str(error)[:200]))
                    if not isinstance(error, ParseError):
                        self._say_dialect_failed(payload)
                    if event is None:
                        continue
                    records = []
                if event is not None:
                    records = [event, *records]
                elif not records:
                    stats.ignored += 1
                    stats.ignored_examples.append(payload[:200])
                    if len(stats.first_ignored) < FIRST_NOT_UNDERSTOOD_SHOWN:
                        stats.first_ignored.append(payload[:200])
                    continue
                pending += records
                if len(pending) >= APPLY_BATCH:
                    self._apply_stretch(pending, rank, when)
                    pending = []
            self._apply_stretch(pending, rank, when)
        if not self._said_not_understood and stats.ignored >= NOT_UNDERSTOOD_LINES \
                and stats.ignored + stats.parse_errors >= stats.lines:
            self._say_not_understood()

    def _say_dialect_failed(self, payload: str) -> None:
        """Once per file: a dialect raised something other than ParseError (a bug, or a line it
        never expected). The line counts as a parse error, and the lines after it are read."""
        if not self._said_dialect_failed:
            self._said_dialect_failed = True
            log.exception("source %r: a dialect failed on a line of %s (counted as a parse error; reading goes on): "
                          "%r", self.source, self.path, payload[:200])

    def _say_not_understood(self) -> None:
        """Once per file: none of its many lines was understood (training_log_understood is 0)."""
        self._said_not_understood = True
        log.warning("source %r: none of the %d lines read from %s was understood (format %s); the first: %s. "
                    "Check it with `training-exporter inspect %s`, then force a format (--format) or write a "
                    "regex (format: regex); see the runbook of TrainingLogNotUnderstood",
                    self.source, self.stats.lines, self.path, self.spec.format,
                    " | ".join(map(repr, self.stats.first_ignored)), self.path)

    def _apply_stretch(self, records: list[Record], rank: str | None, when: float | None) -> None:
        if when is not None:  # the time a container runtime stamped on the line
            for record in records:
                if record.wall_time is None:
                    record.wall_time = when
        self.apply(records, rank)


class TensorBoardReader(Reader):
    """A TensorBoard event file: length-prefixed binary records, decoded incrementally."""

    _format = "tensorboard"

    def __init__(self, path: str, source: str, sink: RecordSink) -> None:
        super().__init__(path, source, sink)
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

    def __init__(self, path: str, source: str, sink: RecordSink, fmt: str, already_applied: int = 0) -> None:
        super().__init__(path, source, sink)
        self._format = fmt
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
            found = os.stat(self.path)
        except OSError as error:
            self.follower.exists = False
            self.set_error(None if error.errno == errno.ENOENT else "unreadable", str(error))
            return
        self.follower.exists = True
        if not stat.S_ISREG(found.st_mode):
            self.set_error("not_regular_file")  # a FIFO would block the read below for good
            return
        signature = (found.st_size, found.st_mtime_ns)
        if signature == self._signature:
            return
        self._signature = signature
        limit = MAX_DOCUMENT_BYTES[self.format_name]
        if found.st_size > limit:
            # Parsing costs several times the file's size in memory, and the time of every other
            # log's reading: a document far beyond what a run writes is refused.
            self.set_error("too_large", f"{found.st_size} bytes, over the limit of {limit}")
            return
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as error:
            self.set_error("permission_denied" if error.errno in (errno.EACCES, errno.EPERM) else "unreadable",
                           str(error))
            return
        self.set_error(None)
        self.stats.bytes += len(data)
        self.stats.last_update = found.st_mtime
        self.follower.mtime = found.st_mtime
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
            self.sink.rewritten(self.source)
            self.applied = 0
        fresh = records[self.applied:]
        self.applied = len(records)
        self.stats.lines += len(fresh)
        self.apply([Record(meta=meta), *fresh] if meta else fresh)

    def _error(self, message: str) -> None:
        self.stats.parse_errors += 1
        self.stats.error_examples.append((os.path.basename(self.path), message[:200]))


def make_reader(path: str, source: str, sink: RecordSink, spec: LogSpec, max_line_bytes: int) -> Reader:
    fmt = spec.format if spec.format not in ("auto", None) else \
        (format_by_name(path) or format_by_content(path) or "auto")
    if fmt == "tensorboard":
        return TensorBoardReader(path, source, sink)
    if fmt in ("trainer_state", "hparams"):
        return DocumentReader(path, source, sink, fmt)
    return LineReader(path, source, sink, spec, max_line_bytes)
