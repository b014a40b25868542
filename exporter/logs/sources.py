"""From configured log paths to per-source training state: discovery, one reader per file,
and the background loop that follows them all.

A *source* is what the ``source`` label names: one training log as a user thinks of it (a
rank's console log, a Lightning run directory). A source may be fed by several files (a
run directory's metrics.csv and hparams.yaml; a TensorBoard run's event files).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..training.signals import SignalSettings, SourceState
from ..training.vocabulary import Vocabulary
from .detect import format_by_name, is_known_file, line_format_for
from .follow import Data, EndOfFile, FileFollower, Reset
from .formats import ParseError, Record
from .formats.events import scan_events
from .formats.hparams import parse_hparams_yaml
from .formats.regex import RegexFormat
from .formats.tfevents import TfEventsDecoder
from .formats.trainer_state import parse_trainer_state
from .lines import LineSplitter
from .watch import Waker

log = logging.getLogger(__name__)

# Files whose names say nothing about the run: their source is named after their directory.
GENERIC_NAMES = ("metrics.csv", "trainer_state.json", "hparams.yaml")
MAX_DOCUMENT_BYTES = 64 << 20
MAX_DIRECTORY_DEPTH = 4
EXAMPLES_KEPT = 5


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

    format_name = "unknown"  # each reader kind names the format it reads

    @property
    def caught_up(self) -> bool:
        return self.follower.at_end

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

    def observed_at(self) -> float:
        """When what was just read was written, at the latest: the file's mtime, capped by now."""
        mtime = self.follower.mtime
        now = time.time()
        return now if mtime is None else min(mtime, now)

    def apply(self, records: list[Record]) -> None:
        when = self.observed_at()
        for record in records:
            self.state.apply(record, when)

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
        for line in lines:
            stats.lines += 1
            event = scan_events(line) if self.scans_events else None
            if event is not None:
                state.apply(event, when)
            try:
                records = self.parser.parse(line)
            except ParseError as error:
                stats.parse_errors += 1
                stats.error_examples.append((line[:200], str(error)[:200]))
                continue
            if not records and event is None:
                stats.ignored += 1
                stats.ignored_examples.append(line[:200])
            for record in records:
                state.apply(record, when)


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

    def __init__(self, path: str, source: str, state: SourceState, fmt: str) -> None:
        super().__init__(path, source, state)
        self.format_name = fmt
        self._signature: tuple[int, int] | None = None
        self._applied = 0  # log_history entries already applied
        self._caught_up = False

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    def poll(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self.follower.exists = False
            self._caught_up = True
            return
        self.follower.exists = True
        signature = (stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            self._caught_up = True
            return
        self._signature = signature
        self._caught_up = True
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
        if len(records) < self._applied:
            # A shorter history is a new run writing into the same place.
            self.stats.resets["rewritten"] += 1
            self.state.mark_rewritten()
            self._applied = 0
        fresh = records[self._applied:]
        self._applied = len(records)
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


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand(spec: LogSpec) -> list[str]:
    """The files a spec names now. A plain path is returned even before it exists."""
    if _has_magic(spec.path):
        return sorted(p for p in glob.glob(spec.path, recursive=True) if os.path.isfile(p))
    if os.path.isdir(spec.path):
        found = []
        root_depth = spec.path.rstrip(os.sep).count(os.sep)
        for directory, subdirs, files in os.walk(spec.path):
            if directory.count(os.sep) - root_depth >= MAX_DIRECTORY_DEPTH:
                subdirs[:] = []
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            found.extend(os.path.join(directory, f) for f in sorted(files) if is_known_file(f))
        return found
    return [spec.path]


def source_name(path: str, spec: LogSpec) -> str:
    """The ``source`` label: configured, or the file's name, or for files whose names are
    generic (metrics.csv, event files), the name of the run directory holding them."""
    if spec.source:
        return spec.source
    name = os.path.basename(path)
    if name in GENERIC_NAMES or name.startswith("events.out.tfevents."):
        if os.path.isdir(spec.path) and not _has_magic(spec.path):
            return os.path.basename(os.path.normpath(spec.path)) or name
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or name
    return name


class LogFollower:
    """Discovers files, keeps one reader per file and one state per source, and follows them
    in a background thread: woken by inotify, or by polling where inotify is unavailable."""

    def __init__(self, specs: list[LogSpec], signal_settings: SignalSettings, vocabulary: Vocabulary,
                 max_line_bytes: int = 1 << 20, poll_interval: float = 0.1,
                 rescan_interval: float = 2.0, keep_history: bool = False) -> None:
        self.specs = specs
        self.signal_settings = signal_settings
        self.vocabulary = vocabulary
        self.max_line_bytes = max_line_bytes
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.keep_history = keep_history
        # Replaced whole, never mutated, so the scrape thread can read them without a lock.
        self.readers: dict[str, Reader] = {}
        self.states: dict[str, SourceState] = {}
        self._claimed_names: dict[str, str] = {}  # source name -> the path that named it first
        self._waker = Waker()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scanned_once = False
        self._last_scan = 0.0

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> None:
        readers, states = dict(self.readers), dict(self.states)
        for spec in self.specs:
            paths = expand(spec)
            trainer_states = [p for p in paths if os.path.basename(p) == "trainer_state.json"]
            if len(trainer_states) > 1:
                # Every checkpoint-N/ holds the whole history so far: follow only the newest.
                newest = max(trainer_states, key=_mtime)
                paths = [p for p in paths if p not in trainer_states or p == newest]
            for path in paths:
                if path in readers:
                    continue
                source = self._unique_source(source_name(path, spec), path, spec)
                state = states.get(source)
                if state is None:
                    state = states[source] = SourceState(self.signal_settings, self.vocabulary, self.keep_history)
                if os.path.basename(path) == "trainer_state.json":
                    previous = next((r for r in readers.values() if r.source == source
                                     and isinstance(r, DocumentReader) and r.format_name == "trainer_state"), None)
                    if previous is not None:
                        # A newer checkpoint's copy continues the same history.
                        readers.pop(previous.path).close()
                        reader = DocumentReader(path, source, state, "trainer_state")
                        reader._applied = previous._applied
                        readers[path] = reader
                        continue
                readers[path] = make_reader(path, source, state, spec, self.max_line_bytes)
                log.info("following %s as source %r", path, source)
            self._watch(spec, paths)
        self.readers, self.states = readers, states
        self._scanned_once = True
        self._last_scan = time.monotonic()

    def _unique_source(self, name: str, path: str, spec: LogSpec) -> str:
        if spec.source or os.path.basename(path) != name:
            return name  # configured, or a run directory's name that its files share on purpose
        owner = self._claimed_names.setdefault(name, path)
        if owner == path:
            return name
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return f"{parent}/{name}"

    def _watch(self, spec: LogSpec, paths: list[str]) -> None:
        directories = {os.path.dirname(os.path.abspath(p)) for p in paths}
        if os.path.isdir(spec.path):
            directories.add(os.path.abspath(spec.path))
        for directory in directories:
            if os.path.isdir(directory):
                self._waker.watch(directory)

    # -- following -------------------------------------------------------------------------

    def poll_all(self) -> None:
        for reader in self.readers.values():
            try:
                reader.poll()
            except Exception:  # noqa: BLE001 - one bad file must not stop the others
                log.exception("error reading %s; it will be tried again", reader.path)
                reader.follower.at_end = True  # wait for the next change rather than spin

    def read_to_end(self, max_passes: int = 10_000) -> None:
        """Read everything there is now (for offline inspection)."""
        self.discover()
        for _ in range(max_passes):
            self.poll_all()
            if self.ready:
                break

    @property
    def ready(self) -> bool:
        return self._scanned_once and all(r.caught_up for r in self.readers.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for reader in self.readers.values():
            reader.close()
        self._waker.close()

    def _run(self) -> None:
        # With inotify, polls happen on change; the timeout is only a safety net (NFS, a
        # directory that did not exist yet). Without it, the timeout is the poll interval.
        idle_wait = 1.0 if self._waker.uses_inotify else self.poll_interval
        while not self._stop.is_set():
            try:
                if not self._scanned_once or time.monotonic() - self._last_scan >= self.rescan_interval:
                    self.discover()
                self.poll_all()
            except Exception:  # noqa: BLE001 - the follower must outlive any surprise
                log.exception("log follower error; continuing")
                self._stop.wait(idle_wait)
                continue
            if not self.ready:
                continue  # a backlog is waiting: keep reading
            self._waker.wait(min(idle_wait, self.rescan_interval))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
