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

from ..training.signals import SignalSettings, SourceState
from ..training.vocabulary import Vocabulary
from .detect import is_known_file
from .readers import DocumentReader, LogSpec, Reader, make_reader
from .watch import Waker

log = logging.getLogger(__name__)

# Files whose names say nothing about the run: their source is named after their directory.
GENERIC_NAMES = ("metrics.csv", "trainer_state.json", "hparams.yaml")
MAX_DIRECTORY_DEPTH = 4


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
                        readers[path] = DocumentReader(path, source, state, "trainer_state",
                                                       already_applied=previous.applied)
                        continue
                readers[path] = make_reader(path, source, state, spec, self.max_line_bytes)
                log.info("following %r as source %r", path, source)
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
                log.exception("error reading %r; it will be tried again", reader.path)
                reader.caught_up = True  # wait for the next change rather than spin

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
        self._waker.interrupt()
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
