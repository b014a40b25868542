"""Waking the follower when a watched directory changes, and saying which files changed:
inotify where Linux offers it, else a plain timeout. A missed or coalesced event costs latency,
never data: the follower reads every file again at each rescan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct

log = logging.getLogger(__name__)

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x002, 0x004, 0x008
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x040, 0x080, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
# Data appended, files created, moved in or out, deleted, attributes (truncate) changed.
_IN_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
            | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF)
# A name appearing or going away: the set of files to follow may have changed.
_NAMES_CHANGED = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Changes:
    """What changed since the last wait: the paths written to, and whether anything happened
    that only a look at every file can sort out (a name came or went, the queue overflowed)."""

    __slots__ = ("paths", "everything", "names")

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.everything = False
        self.names = False  # a file appeared, moved or went away


class Waker:
    """``wait(timeout)`` returns the changes in watched directories as soon as there are any,
    or when ``interrupt()`` is called (so that stopping never waits out a timeout)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._directories: dict[int, str] = {}  # watch descriptor -> directory
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

    def watch(self, directory: str) -> bool:
        """Watch a directory; True when the watch is new, and so changes made in the directory
        before now went unseen. One that does not exist yet is retried by the caller.

        A watch dies with its directory: one removed and created again under the same name is
        a new directory, and is watched afresh, even when it got the old one's inode (the kernel
        gives an existing watch's descriptor back, and a new one where the old is gone).
        """
        if self._fd is None:
            return False
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_MASK)
        if wd < 0:
            return False
        new = self._directories.get(wd) != directory
        self._directories[wd] = directory
        return new

    def wait(self, timeout: float) -> Changes:
        changes = Changes()
        # poll(), not select(): with the open-files limit raised, a descriptor may be past 1024.
        poller = select.poll()
        for fd in (self._fd, self._interrupt_read):
            if fd is not None and fd >= 0:
                poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)}  # nothing to watch: a sleep
        if self._interrupt_read in ready:
            _drain(self._interrupt_read)
        if self._fd is not None and self._fd in ready:
            self._read_events(changes)
        return changes

    def _read_events(self, changes: Changes) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # BlockingIOError once drained
                return
            if not data:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                directory = self._directories.get(wd)
                if mask & _IN_Q_OVERFLOW or directory is None:
                    changes.everything = True
                    continue
                if mask & _IN_IGNORED:  # the watch is gone with its directory
                    self._directories.pop(wd, None)
                    changes.everything = changes.names = True
                    continue
                if mask & _NAMES_CHANGED or not name:
                    changes.names = True
                if name:
                    changes.paths.add(os.path.join(directory, os.fsdecode(name)))
                else:
                    changes.everything = True

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


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # BlockingIOError once drained
        pass
