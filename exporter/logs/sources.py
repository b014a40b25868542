"""From configured log paths to records per source: discovery, one reader per file, and the
background loop that follows them all.

A *source* is what the ``source`` label names: one training log as a user thinks of it (a
rank's console log, a Lightning run directory). A source may be fed by several files (a
run directory's metrics.csv and hparams.yaml; a TensorBoard run's event files). The follower
hands each source's records to a sink and knows nothing of what becomes of them.

One file is one source, whatever paths lead to it: files are known by device and inode, so a
``latest -> run-2`` link or a loop of links adds no second reader. Source names are unique and
stable: a file's name, or its run directory's, made longer by its parent directories when that
name is taken (``rank0/train.log``, ``node2/rank0/train.log``); once given, a name stays.
A file that disappears is read to its end and let go; if it stays away for ``retire_after``
seconds, its reader goes, and its source with it when no other file feeds it.

The files of one source are read in the order they were found, each to its end before the
next: a container's restarts' logs (``pods.py``) tell one history, oldest first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from .discovery import has_magic
from .readers import DocumentReader, Labels, LogSpec, Reader, RecordSink, make_reader
from .watch import Changes, Waker

log = logging.getLogger(__name__)

# Files whose names say nothing about the run: their source is named after their directory.
GENERIC_NAMES = ("metrics.csv", "trainer_state.json", "hparams.yaml")
MAX_SOURCE_NAME = 200
# With inotify, a directory's news comes as events: a search follows at most this often, and
# every file is looked at now and then anyway, in case a change went unseen (a network filesystem).
MIN_DISCOVERY_GAP = 1.0
# While a followed log is being rotated (renamed away, or a file named after it appearing, as
# train.log.1 or train.log-20261201), it is read at least this often and at once when it rotates
# again: rotations closer together than the poll interval would otherwise lose what was written
# between them. A log that has not rotated for a while goes back to the poll interval.
ROTATING_INTERVAL = 0.2
ROTATING_SECONDS = 300.0
SWEEP_INTERVAL = 30.0


def source_name(path: str, spec: LogSpec) -> str:
    """The ``source`` label: configured, or the file's name, or for files whose names are
    generic (metrics.csv, event files), the name of the run directory holding them."""
    configured, _ = spec.source_of(path)
    if configured:
        return configured
    name = os.path.basename(path)
    if name in GENERIC_NAMES or name.startswith("events.out.tfevents."):
        if os.path.isdir(spec.path) and not has_magic(spec.path):
            return os.path.basename(os.path.normpath(spec.path)) or name
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or name
    return name


def safe_label(text: str) -> str:
    """A name fit for a label value, whatever bytes a file name held: valid UTF-8 (a byte that
    is not becomes U+FFFD; the exposition escapes the rest), bounded in length."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:MAX_SOURCE_NAME]


def _linked(path: str) -> bool:
    """Whether a link lies on the path: of several paths to one file, one without is followed."""
    return os.path.realpath(path) != os.path.abspath(path)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


@dataclass(frozen=True)
class FileStatus:
    """One followed file as the collector sees it: a copy, taken when asked."""

    path: str
    source: str
    labels: Labels
    format: str
    exists: bool
    lines: int
    parse_errors: int
    ignored: int
    too_long: int
    bytes: int
    resets: dict[str, int]
    last_update: float | None
    error: str | None  # why it cannot be read now
    errors: dict[str, int]  # times it became unreadable, by why
    ignored_examples: tuple[str, ...] = ()
    error_examples: tuple[tuple[str, str], ...] = ()


class LogFollower:
    """Discovers files, keeps one reader per file, and follows them in a background thread:
    woken by inotify for the files that changed, or by polling where inotify is unavailable.

    Reading is rate-limited to once per ``poll_interval``: writes that come closer together are
    read together, so a trainer's many small writes (a progress bar redrawn ten times a second)
    cost one wake-up per interval. A scrape does not wait for the interval: ``catch_up`` reads
    what was written before it at once, so /metrics always shows every line written before the
    scrape. Nor does a rotation: a followed log renamed away, or a file named after it appearing,
    wakes the follower at once, and while a log is being rotated it is read every 0.2 s.
    """

    def __init__(self, specs: list[LogSpec], sink: RecordSink, max_line_bytes: int = 1 << 20,
                 poll_interval: float = 1.0, rescan_interval: float = 2.0, retire_after: float = 300.0) -> None:
        self.specs = specs
        self.sink = sink
        self.max_line_bytes = max_line_bytes
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self.retire_after = retire_after
        # Replaced whole, never mutated, so the scrape thread can read it without a lock.
        self.readers: dict[str, Reader] = {}
        self._by_watched_path: dict[str, Reader] = {}  # where inotify names a reader's file
        self._log_names: dict[str, tuple[str, ...]] = {}  # directory -> the followed files' names
        self._rotating_until = 0.0  # the reads come closer together until then
        self._order: dict[Reader, int] = {}  # the order in which the readers were made
        self._names: dict[str, str] = {}  # path -> the source name it was given
        self._claims: dict[str, str] = {}  # source name -> the file or run directory it names
        self._log_directories: set[str] = set()  # where the followed files are written
        self._waker = Waker()
        self._stop = threading.Event()
        self._passes = threading.Condition()
        self._passes_started = self._passes_finished = 0
        self._thread: threading.Thread | None = None
        self._scanned_once = False
        self._last_scan = 0.0

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> set[Reader]:
        """Search the configured paths again; the readers of the files found new."""
        readers = dict(self.readers)
        followed = {reader.follower.identity: reader for reader in readers.values()
                    if reader.follower.identity is not None}
        found: set[str] = set()
        new: set[Reader] = set()
        searched: set[str] = set()
        for spec in self.specs:
            paths, directories = spec.find()
            found.update(paths)
            searched.update(directories)
            named: list[str] = []
            for path in sorted((path for path in paths if path not in readers), key=_linked):
                identity = _identity(path)
                if identity is not None and identity in followed:
                    continue  # the same file by another path (a link): followed once
                source = self._name(path, spec)
                _, labels = spec.source_of(path)
                self.sink.add_source(source, labels)
                reader = self._reader(path, source, spec, readers)
                reader.labels = labels
                readers[path] = reader
                new.add(reader)
                if identity is not None:
                    followed[identity] = reader
                log.debug("following %r as source %r", path, source)
                named.append(f"{path!r} as {source!r}")
            if named:
                more = f" and {len(named) - 3} more" if len(named) > 3 else ""
                log.info("%s: following %s%s", spec.path, ", ".join(named[:3]), more)
        self._retire(readers, found)
        if readers.keys() != self.readers.keys() or new:
            self._by_watched_path = {path: reader for reader in readers.values()
                                     for path in (reader.abs_path, reader.real_path)}
            log_names: dict[str, set[str]] = {}
            for path in self._by_watched_path:
                directory, name = os.path.split(path)
                log_names.setdefault(directory, set()).add(name)
            self._log_names = {directory: tuple(names) for directory, names in log_names.items()}
            self._order = {reader: index for index, reader in enumerate(readers.values())}
        self.readers = readers
        # Watched: the directories searched (a file or directory appearing in them is news), and
        # each log's own directory and, for a link, its target's (the writes happen there).
        self._log_directories.update(os.path.dirname(path) for reader in new for path in (reader.abs_path, reader.real_path))
        newly_watched = {directory for directory in searched | self._log_directories if self._waker.watch(directory)}
        if newly_watched:
            # Watched from now on: what happened in these directories before is read now.
            new.update(reader for reader in readers.values()
                       if os.path.dirname(reader.abs_path) in newly_watched
                       or os.path.dirname(reader.real_path) in newly_watched)
        self._scanned_once = True
        self._last_scan = time.monotonic()
        return new

    def _reader(self, path: str, source: str, spec: LogSpec, readers: dict[str, Reader]) -> Reader:
        if os.path.basename(path) == "trainer_state.json":
            previous = next((r for r in readers.values() if r.source == source
                             and isinstance(r, DocumentReader) and r.format_name == "trainer_state"), None)
            if previous is not None:
                # A newer checkpoint's copy continues the same history.
                readers.pop(previous.path).close()
                return DocumentReader(path, source, self.sink, "trainer_state", already_applied=previous.applied)
        return make_reader(path, source, self.sink, spec, self.max_line_bytes)

    def _name(self, path: str, spec: LogSpec) -> str:
        """The source a file feeds: its name, unique and stable (see the module's docstring)."""
        known = self._names.get(path)
        if known is not None:
            return known
        name = safe_label(source_name(path, spec))
        if not spec.source:
            # A run directory's files share its name on purpose (the directory claims it); any
            # other file has its own.
            if os.path.basename(path) == source_name(path, spec):
                claimant = os.path.abspath(path)
            elif os.path.isdir(spec.path) and not has_magic(spec.path):
                claimant = os.path.abspath(spec.path)
            else:
                claimant = os.path.dirname(os.path.abspath(path))
            parents = os.path.dirname(claimant).split(os.sep)
            while self._claims.setdefault(name, claimant) != claimant:
                if not parents or not parents[-1]:
                    name = f"{name}#{len(self._claims)}"  # nothing left to tell them apart by
                    continue
                name = safe_label(f"{parents.pop()}/{name}")
        self._names[path] = name
        return name

    def _retire(self, readers: dict[str, Reader], found: set[str]) -> None:
        """Let go of the files that went away more than ``retire_after`` seconds ago, and of the
        sources no file feeds any more."""
        now = time.monotonic()
        retired = False
        for path, reader in list(readers.items()):
            gone = reader.follower.gone_since
            if path in found or gone is None or now - gone < self.retire_after:
                continue
            reader.close()
            del readers[path]
            self._names.pop(path, None)
            retired = True
            log.info("no longer following %r: it went away", path)
            if not any(other.source == reader.source for other in readers.values()):
                self.sink.remove_source(reader.source)
                self._claims.pop(reader.source, None)
        if retired:
            # Pods come and go on a node for months: what was kept for the files gone goes too.
            self._log_directories = {os.path.dirname(path) for reader in readers.values()
                                     for path in (reader.abs_path, reader.real_path)}

    # -- following -------------------------------------------------------------------------

    def poll(self, readers) -> bool:
        """Read the readers, in the order given; whether any of them read anything. A file whose
        source has an earlier file with more to read waits for the next poll."""
        behind: set[str] = set()  # sources with a file not read to its end
        read = False
        for reader in readers:
            if reader.source in behind:
                reader.caught_up = False  # its news waits, and is read next time round
                continue
            before = reader.stats.bytes
            try:
                reader.poll()
            except Exception:  # noqa: BLE001 - one bad file must not stop the others
                log.exception("error reading %r; it will be tried again", reader.path)
                reader.caught_up = True  # wait for the next change rather than spin
            read = read or reader.stats.bytes != before
            if not reader.caught_up:
                behind.add(reader.source)
        return read

    def read_to_end(self, max_passes: int = 10_000) -> None:
        """Read everything there is now (for offline inspection)."""
        self.discover()
        for _ in range(max_passes):
            self.poll(self.readers.values())
            if self.ready:
                break

    @property
    def ready(self) -> bool:
        return self._scanned_once and all(r.caught_up for r in self.readers.values())

    def files(self) -> list[FileStatus]:
        """Every followed file, as it stands now."""
        return [FileStatus(path=r.path, source=r.source, labels=r.labels, format=r.format_name, exists=r.exists,
                           lines=r.stats.lines, parse_errors=r.stats.parse_errors, ignored=r.stats.ignored,
                           too_long=r.stats.too_long, bytes=r.stats.bytes, resets=dict(r.stats.resets),
                           last_update=r.stats.last_update, error=r.error, errors=dict(r.stats.errors),
                           ignored_examples=tuple(r.stats.ignored_examples),
                           error_examples=tuple(r.stats.error_examples))
                for r in list(self.readers.values())]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)
        self._thread.start()

    def catch_up(self, timeout: float) -> None:
        """Return once everything written before the call has been read, or after ``timeout``:
        a pass of the follower that starts after now has finished."""
        if self._thread is None or not self._thread.is_alive():
            return
        with self._passes:
            ticket = self._passes_started + 1
            self._waker.interrupt()
            self._passes.wait_for(lambda: self._passes_finished >= ticket or self._stop.is_set(), timeout)

    def stop(self) -> None:
        self._stop.set()
        self._waker.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for reader in self.readers.values():
            reader.close()
        self._waker.close()

    def _run(self) -> None:
        changed: Changes | None = None
        last_read = last_pass = last_sweep = 0.0
        names_changed = False
        while not self._stop.is_set():
            with self._passes:
                self._passes_started += 1
                this_pass = self._passes_started
            try:
                now = time.monotonic()
                to_poll: set[Reader] = set()
                if changed is not None and (changed.everything or any(map(self._rotates_a_log, changed.named))):
                    self._rotating_until = now + ROTATING_SECONDS
                if not self._scanned_once or now - self._last_scan >= self.rescan_interval \
                        or (names_changed and now - self._last_scan >= MIN_DISCOVERY_GAP):
                    to_poll |= self.discover()
                    names_changed = False
                    # A file not open yet (not there, or not readable) may have come in a
                    # directory that could not be watched: looked at after every search; so is
                    # one held though gone from its path, so that it is let go in time.
                    to_poll.update(reader for reader in self.readers.values()
                                   if not reader.follower.is_open or reader.follower.gone_since is not None)
                if not self._waker.uses_inotify or now - last_sweep >= SWEEP_INTERVAL \
                        or (changed is not None and changed.everything):
                    # Every file, now and then: a change inotify could not tell (a network
                    # filesystem) costs at most this long.
                    to_poll.update(self.readers.values())
                    last_sweep = now
                elif changed is not None:
                    by_path = self._by_watched_path
                    to_poll.update(by_path[path] for path in changed.paths if path in by_path)
                    names_changed |= changed.names
                to_poll.update(reader for reader in self.readers.values() if not reader.caught_up)
                order = self._order
                last_pass = now
                if self.poll(sorted(to_poll, key=lambda reader: order.get(reader, 0))):
                    last_read = now
            except Exception:  # noqa: BLE001 - the follower must outlive any surprise
                log.exception("log follower error; continuing")
                self._stop.wait(self.poll_interval)
                changed = None
                continue
            finally:
                with self._passes:
                    self._passes_finished = this_pass
                    self._passes.notify_all()
            if not self.ready:
                changed = None
                continue  # a backlog is waiting: keep reading
            changed = self._wait(last_read, last_pass)

    def _rotates_a_log(self, path: str) -> bool:
        """Whether a name that appeared, moved or went away is a followed log rotating: the log
        itself, or a file named after it beside it."""
        directory, name = os.path.split(path)
        names = self._log_names.get(directory)
        return names is not None and name.startswith(names)

    def _wait(self, last_read: float, last_pass: float) -> Changes:
        """The changes to read next. A poll interval passes since the last read that found
        something (what is written meanwhile is read together, one wake-up for many writes), or
        less when a scrape asks or a followed log rotates; then what changed is taken, or, when
        nothing did, waited for (an idle exporter sleeps until a write, which is then read at
        once). Without inotify, the interval alone."""
        now = time.monotonic()
        shortest = min(self.poll_interval, ROTATING_INTERVAL)
        interval = self.poll_interval if now >= self._rotating_until else shortest
        if self._waker.uses_inotify:
            # After a pass that found nothing (a quiet spell, a log its rotation just emptied),
            # the next write is read sooner: a log must not be emptied twice between two reads.
            rest = max(last_read + interval, last_pass + shortest) - now
        else:
            rest = last_pass + interval - now
        if rest > 0:
            # Writes wait out the interval; a scrape, or a followed log rotating, does not.
            self._waker.sleep(rest, self._rotates_a_log)
            if self._stop.is_set():
                return Changes()
        if not self._waker.uses_inotify:
            return Changes()
        return self._waker.wait(max(0.0, self._last_scan + self.rescan_interval - time.monotonic()))

