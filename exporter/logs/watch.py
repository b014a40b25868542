"""Waking the follower when a watched directory changes: inotify where Linux offers it, else a
plain timeout. Only a wake-up signal: the follower polls its files after every wake-up, so a
missed or coalesced event costs latency, never data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select

log = logging.getLogger(__name__)

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# Data appended, files created, moved in or out, deleted, attributes (truncate) changed.
_IN_MASK = 0x002 | 0x004 | 0x008 | 0x040 | 0x080 | 0x100 | 0x200 | 0x400 | 0x800


class Waker:
    """``wait(timeout)`` returns early when something in a watched directory changes, or when
    ``interrupt()`` is called (so that stopping never waits out a timeout)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._watched: dict[str, tuple[int, int]] = {}  # directory -> its (device, inode) when watched
        self._libc = None
        self._interrupt_read, self._interrupt_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._fd, self._libc = fd, libc
        else:
            log.info("inotify is not available; following logs by polling")

    @property
    def uses_inotify(self) -> bool:
        return self._fd is not None

    def watch(self, directory: str) -> None:
        """Watch a directory (idempotent); one that does not exist yet is retried by the caller.

        A watch dies with its directory: one removed and created again under the same name is
        a new directory, and is watched afresh.
        """
        if self._fd is None:
            return
        try:
            stat = os.stat(directory)
        except OSError:
            return
        identity = (stat.st_dev, stat.st_ino)
        if self._watched.get(directory) == identity:
            return
        if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_MASK) >= 0:
            self._watched[directory] = identity

    def wait(self, timeout: float) -> None:
        watched = [fd for fd in (self._fd, self._interrupt_read) if fd is not None and fd >= 0]
        ready, _, _ = select.select(watched, [], [], timeout)  # with nothing to watch, a sleep
        for fd in ready:
            try:
                while os.read(fd, 65536):
                    pass  # drain: what changed does not matter, only that something did
            except OSError:  # BlockingIOError once drained
                pass

    def interrupt(self) -> None:
        try:
            os.write(self._interrupt_write, b"x")
        except OSError:  # the pipe is full: a wake-up is pending anyway
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for fd in (self._interrupt_read, self._interrupt_write):
            if fd >= 0:
                os.close(fd)
        self._interrupt_read = self._interrupt_write = -1
