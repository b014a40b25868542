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
    """``wait(timeout)`` returns early when something in a watched directory changes."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._watched: dict[str, int] = {}
        self._libc = None
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
        """Watch a directory (idempotent); one that does not exist yet is retried by the caller."""
        if self._fd is None or directory in self._watched:
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_MASK)
        if wd >= 0:
            self._watched[directory] = wd

    def wait(self, timeout: float) -> None:
        if self._fd is None:
            select.select([], [], [], timeout)
            return
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if ready:
            try:
                while os.read(self._fd, 65536):
                    pass  # drain: what changed does not matter, only that something did
            except BlockingIOError:
                pass
            except OSError:
                pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
