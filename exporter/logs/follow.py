"""Following one file the way ``tail -F`` does, knowing nothing of what the bytes mean.

A poll returns what happened since the last poll, in order: data, the end of a file that was
rotated away, and resets (the file was truncated or rewritten from the top). It survives a file
that does not exist yet, rotation by rename, copy-truncate, truncation in place, a file
rewritten whole, deletion, and a symlink switched to a new target.

Copy-truncate (logrotate's ``copytruncate``) copies the log, then truncates it. What was written
after our last read but before the copy is only in the copy, so when the file turns out to have
been truncated, the rest is read from the copy: a sibling whose head and whose bytes up to our
offset are exactly what was read (``train.log.1``, ``train.log-20240501``). Only lines written
between the copy and the truncation are lost; they are in neither file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

FINGERPRINT_BYTES = 512  # how much of the file's head identifies its content
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
    def __init__(self, path: str, max_bytes_per_poll: int = 64 << 20) -> None:
        self.path = path
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

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> Iterator[Data | EndOfFile | Reset]:
        """What happened since the last poll, in order, yielded as it is read: a backlog costs
        the memory of one chunk at a time, however large it is."""
        try:
            path_stat = os.stat(self.path)
        except OSError:
            path_stat = None
        self.exists = path_stat is not None

        if self._fd is not None and path_stat is not None and \
                (path_stat.st_dev, path_stat.st_ino) != self._identity:
            # Renamed away (rotation) or a symlink now points elsewhere: finish the old file
            # first, since the writer may have appended to it after our last look.
            yield from self._read_available(limit=None)
            yield EndOfFile()
            self.close()
        if self._fd is None:
            if path_stat is None:
                self.at_end = True  # nothing to read yet; the file will be waited for
                return
            self._open()
            if self._fd is None:
                self.at_end = True
                return

        stat = os.fstat(self._fd)
        signature = (stat.st_size, stat.st_mtime_ns)
        if signature != self._last_stat:
            self._last_stat = signature
            if stat.st_size < self._offset:
                yield from self._finish_from_copy()
                yield Reset("truncated")
                self._restart()
            elif self._fingerprint and not self._head_matches():
                # Also copy-truncate, when the writer refilled the file past our offset before
                # this poll; or a file rewritten whole, whose old content has no copy.
                yield from self._finish_from_copy()
                yield Reset("rewritten")
                self._restart()
        yield from self._read_available(limit=self.max_bytes_per_poll)

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        stat = os.fstat(fd)
        self._fd = fd
        self._identity = (stat.st_dev, stat.st_ino)
        self._last_stat = None
        self._restart()

    def _restart(self) -> None:
        self._offset = 0
        self._fingerprint = b""
        self._last_read = b""

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
                fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                before = self._offset - len(self._last_read)
                if os.fstat(fd).st_size < self._offset \
                        or os.pread(fd, len(self._fingerprint), 0) != self._fingerprint \
                        or os.pread(fd, len(self._last_read), before) != self._last_read:
                    continue
                own_fd, self._fd = self._fd, fd
                try:
                    yield from self._read_available(limit=None)
                finally:
                    self._fd = own_fd
                return
            finally:
                os.close(fd)

    def _head_matches(self) -> bool:
        head = os.pread(self._fd, len(self._fingerprint), 0)
        return head == self._fingerprint

    def _read_available(self, limit: int | None) -> Iterator[Data]:
        read = 0
        while limit is None or read < limit:
            chunk = os.pread(self._fd, READ_CHUNK, self._offset)
            if not chunk:
                self.at_end = True
                return
            if len(self._fingerprint) < FINGERPRINT_BYTES and self._offset < FINGERPRINT_BYTES:
                self._fingerprint = (self._fingerprint + chunk)[:FINGERPRINT_BYTES]
            self._last_read = (self._last_read + chunk[-FINGERPRINT_BYTES:])[-FINGERPRINT_BYTES:]
            self._offset += len(chunk)
            read += len(chunk)
            # When what was read was written, at the latest: set before it is handed on.
            self.mtime = os.fstat(self._fd).st_mtime
            yield Data(chunk)
        self.at_end = False  # more is waiting: the next poll continues


def _mtime_ns(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return 0
