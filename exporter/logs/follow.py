"""Following one file the way ``tail -F`` does, knowing nothing of what the bytes mean.

A poll returns what happened since the last poll, in order: data, the end of a file that was
rotated away, and resets (the file was truncated or rewritten from the top). It survives a file
that does not exist yet, rotation by rename (also when the new file comes a moment after the old
one was renamed away: the old one is read on meanwhile), copy-truncate, truncation in place, a
file rewritten whole (in place, or written beside it and renamed over it), deletion (the file is
let go once it has stayed away a few seconds, its last bytes read), a symlink switched to a new
target, and a path that is not a regular file (a FIFO or a device is never opened for reading in
a way that could block).

Copy-truncate (logrotate's ``copytruncate``) copies the log, then truncates it. What was written
after our last read but before the copy is only in the copy, so when the file turns out to have
been truncated, the rest is read from the copy: a sibling whose head and whose bytes up to our
offset are exactly what was read (``train.log.1``, ``train.log-20240501``). Only lines written
between the copy and the truncation are lost; they are in neither file.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from typing import Iterator

FINGERPRINT_BYTES = 512  # how much of the file's head identifies its content
# How long a file gone from its path is held before it is taken for deleted. Renamed away by a
# rotation, it is written on until the writer reopens the path: the kubelet asks the runtime to
# at once, logrotate's postrotate signals the program; either takes moments, not seconds.
GONE_GRACE_SECONDS = 5.0
READ_CHUNK = 1 << 20
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z")


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class EndOfFile:
    """The file read so far was replaced by another: its last partial line is complete."""


@dataclass(frozen=True)
class Reset:
    """Reading starts again at the top of the same path; ``reason`` is truncated or rewritten."""

    reason: str


class FileFollower:
    """Follows one path. ``error`` says why it cannot be read now (None when it can, or when it
    does not exist yet); ``gone_since`` when a file read before disappeared (monotonic time)."""

    def __init__(self, path: str, max_bytes_per_poll: int = 4 << 20) -> None:
        self.path = path
        # A file with a backlog is read in parts, so that the other files get their turn.
        self.max_bytes_per_poll = max_bytes_per_poll
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._fingerprint = b""
        self._last_read = b""  # the bytes just before the offset: they identify a copy
        self._last_stat: tuple[int, int] | None = None  # (size, mtime_ns) at the last poll
        self.mtime: float | None = None  # the file's mtime when data was last read
        self.exists = False
        self.at_end = False  # the last poll read everything there was
        self.error: str | None = None
        self.gone_since: float | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def identity(self) -> tuple[int, int] | None:
        """The (device, inode) of the file being read, once it was opened."""
        return self._identity

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> Iterator[Data | EndOfFile | Reset]:
        """What happened since the last poll, in order, yielded as it is read: a backlog costs
        the memory of one chunk at a time, however large it is."""
        try:
            path_stat = os.stat(self.path)
        except OSError as error:
            path_stat = None
            self.error = _reason(error) if error.errno not in (errno.ENOENT, errno.ENOTDIR) else None
        self.exists = path_stat is not None
        if path_stat is None:
            if self._identity is not None and self.gone_since is None:
                self.gone_since = time.monotonic()
            if self._fd is not None:
                # Renamed away, or deleted: what the writer wrote is read, and the file held,
                # since a rotation's writer writes on into it until its new file appears (then
                # the old one is read to its end, as below). Once it has stayed away, it was
                # deleted: it is let go (its disk space is freed only once nobody holds it open).
                yield from self._read_available(self._fd, limit=None)
                if self.gone_since is not None and time.monotonic() - self.gone_since >= GONE_GRACE_SECONDS:
                    yield EndOfFile()
                    self.close()
            self.at_end = True
            return
        self.gone_since = None
        if not stat.S_ISREG(path_stat.st_mode):
            self.close()
            self.error, self.at_end = "not_regular_file", True  # a FIFO or a device: never read
            return
        if self._fd is not None and (path_stat.st_dev, path_stat.st_ino) != self._identity:
            yield from self._replaced(self._fd)
        if self._fd is None:
            self._open()
            if self._fd is None:
                self.at_end = True
                return

        stat_now = os.fstat(self._fd)
        signature = (stat_now.st_size, stat_now.st_mtime_ns)
        if signature != self._last_stat:
            self._last_stat = signature
            if stat_now.st_size < self._offset:
                yield from self._finish_from_copy()
                yield Reset("truncated")
                self._restart()
            elif self._fingerprint and not self._head_matches(self._fd):
                # Also copy-truncate, when the writer refilled the file past our offset before
                # this poll; or a file rewritten whole, whose old content has no copy.
                yield from self._finish_from_copy()
                yield Reset("rewritten")
                self._restart()
        yield from self._read_available(self._fd, limit=self.max_bytes_per_poll)

    def _replaced(self, fd: int) -> Iterator[Data | EndOfFile | Reset]:
        """Another file now has the path. Written whole beside it and renamed over it (how many
        programs save a file), it begins with what was read: reading goes on in it, at the same
        offset when nothing before it changed, from the top as a rewrite otherwise. Else the old
        file was rotated away (or a symlink switched): it is read to its end first, since the
        writer may have appended to it after our last look."""
        new = self._open_regular()
        if new is not None and self._fingerprint and self._head_matches(new[0]):
            self.close()
            self._fd, self._identity, self._last_stat = new[0], new[1], None
            if not self._continues(self._fd):
                yield Reset("rewritten")
                self._restart()
            return
        if new is not None:
            os.close(new[0])
        yield from self._read_available(fd, limit=None)
        yield EndOfFile()
        self.close()

    def _open_regular(self) -> tuple[int, tuple[int, int]] | None:
        """A descriptor of the path's file and its identity, or None (with ``error`` set). Opened
        without blocking, so that a FIFO cannot hold the follower; only a regular file is kept."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as error:
            self.error = _reason(error) if error.errno != errno.ENOENT else None
            return None
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            os.close(fd)
            self.error = "not_regular_file"
            return None
        self.error = None
        return fd, (opened.st_dev, opened.st_ino)

    def _open(self) -> None:
        opened = self._open_regular()
        if opened is None:
            return
        self._fd, self._identity = opened
        self._last_stat = None
        self._restart()

    def _restart(self) -> None:
        self._offset = 0
        self._fingerprint = b""
        self._last_read = b""

    def _continues(self, fd: int) -> bool:
        """Whether the file behind ``fd`` holds what was read, up to the offset, as it was."""
        before = self._offset - len(self._last_read)
        return os.fstat(fd).st_size >= self._offset and self._head_matches(fd) \
            and os.pread(fd, len(self._last_read), before) == self._last_read

    def _finish_from_copy(self) -> Iterator[Data]:
        """Read what was written after our offset from the copy that copy-truncate made."""
        if not self._fingerprint:
            return
        directory, name = os.path.split(os.path.abspath(self.path))
        try:
            siblings = [entry for entry in os.scandir(directory)
                        if entry.name != name and entry.name.startswith(name)
                        and not entry.name.lower().endswith(COMPRESSED) and entry.is_file()]
        except OSError:
            return
        siblings.sort(key=_mtime_ns, reverse=True)  # the newest copy first
        for entry in siblings:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode) or not self._continues(fd):
                    continue
                yield from self._read_available(fd, limit=None)
                return
            finally:
                os.close(fd)

    def _head_matches(self, fd: int) -> bool:
        return os.pread(fd, len(self._fingerprint), 0) == self._fingerprint

    def _read_available(self, fd: int, limit: int | None) -> Iterator[Data]:
        """Read ``fd`` (the followed file, or its copy) on from the offset."""
        read = 0
        while limit is None or read < limit:
            chunk = os.pread(fd, READ_CHUNK, self._offset)
            if not chunk:
                self.at_end = True
                return
            if len(self._fingerprint) < FINGERPRINT_BYTES and self._offset < FINGERPRINT_BYTES:
                self._fingerprint = (self._fingerprint + chunk)[:FINGERPRINT_BYTES]
            self._last_read = (self._last_read + chunk[-FINGERPRINT_BYTES:])[-FINGERPRINT_BYTES:]
            self._offset += len(chunk)
            read += len(chunk)
            # When what was read was written, at the latest: set before it is handed on.
            self.mtime = os.fstat(fd).st_mtime
            yield Data(chunk)
        self.at_end = False  # more is waiting: the next poll continues


# Why a file cannot be read, by errno, as a label value: few values, whatever the error.
_REASONS: dict[int | None, str] = {
    errno.EACCES: "permission_denied", errno.EPERM: "permission_denied", errno.ELOOP: "symlink_loop",
    errno.ENAMETOOLONG: "name_too_long", errno.EMFILE: "too_many_open_files", errno.ENFILE: "too_many_open_files"}


def _reason(error: OSError) -> str:
    return _REASONS.get(error.errno, "unreadable")


def _mtime_ns(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return 0
