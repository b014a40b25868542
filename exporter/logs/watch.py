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
import time
from typing import Callable

log = logging.getLogger(__name__)

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x002, 0x004, 0x008
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x040, 0x080, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
# Two queues: data appended (or a file truncated or its attributes changed), which may wait to be
# read together; and names (a file created, moved in or out, deleted, or its directory gone),
# which wake the follower at once: a rotation must be followed before the next one.
_WRITES_MASK = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE
_NAMES_MASK = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
# A name appearing or going away: the set of files to follow may have changed.
_NAMES_CHANGED = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Changes:
    """What changed since the last wait: the paths written to, and whether anything happened
    that only a look at every file can sort out (a name came or went, the queue overflowed)."""

    __slots__ = ("paths", "everything", "names", "named")

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.everything = False
        self.names = False  # a file appeared, moved or went away
        self.named: set[str] = set()  # the paths that appeared, moved or went away

    def __bool__(self) -> bool:
        return bool(self.paths) or self.everything or self.names

    def merge(self, other: Changes) -> None:
        self.paths |= other.paths
        self.everything |= other.everything
        self.names |= other.names
        self.named |= other.named


class Waker:
    """``wait(timeout)`` returns the changes in watched directories as soon as there are any;
    ``sleep(timeout)`` waits out the timeout unless a name changes (the writes seen are kept for
    the next ``wait``). Both return at once when ``interrupt()`` is called (a scrape, stopping);
    an interrupt that ended a sleep makes the next ``wait`` return at once too."""

    def __init__(self) -> None:
        self._writes: int | None = None  # the two inotify queues; None without inotify
        self._names: int | None = None
        self._directories: dict[tuple[int, int], str] = {}  # (queue, watch descriptor) -> directory
        self._pending = Changes()  # what was seen since the last wait()
        self._interrupted = False  # an interrupt came since the last wait()
        self._libc = None
        self._interrupt_read, self._interrupt_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            writes = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            names = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC) if writes >= 0 else -1
        except (OSError, AttributeError):
            writes = names = -1
        if names >= 0:
            self._writes, self._names, self._libc = writes, names, libc
        else:
            if writes >= 0:
                os.close(writes)
            log.info("inotify is not available; following logs by polling")

    @property
    def uses_inotify(self) -> bool:
        return self._names is not None

    def watch(self, directory: str) -> bool:
        """Watch a directory; True when the watch is new, and so changes made in the directory
        before now went unseen. One that does not exist yet is retried by the caller.

        A watch dies with its directory: one removed and created again under the same name is
        a new directory, and is watched afresh, even when it got the old one's inode (the kernel
        gives an existing watch's descriptor back, and a new one where the old is gone).
        """
        if self._names is None:
            return False
        new = False
        for queue, mask in ((self._names, _NAMES_MASK), (self._writes, _WRITES_MASK)):
            wd = self._libc.inotify_add_watch(queue, os.fsencode(directory), mask)
            if wd < 0:
                return False
            new |= self._directories.get((queue, wd)) != directory
            self._directories[(queue, wd)] = directory
        return new

    def wait(self, timeout: float) -> Changes:
        if self._pending or self._interrupted:
            timeout = 0  # what a sleep saw, or an interrupt it took, is news already
        self._wait((self._names, self._writes), timeout, self._pending)
        changes, self._pending, self._interrupted = self._pending, Changes(), False
        return changes

    def sleep(self, timeout: float, wakes: Callable[[str], bool]) -> bool:
        """Wait out ``timeout``, unless interrupted, or unless a path appears, moves or goes away
        that ``wakes`` accepts (True then). Whatever was seen is kept for the next ``wait``."""
        deadline = time.monotonic() + timeout
        while True:
            seen = Changes()
            woken = self._wait((self._names,), deadline - time.monotonic(), seen)
            self._pending.merge(seen)  # an interrupt may come with names: they are kept too
            if not woken:
                return False  # the timeout, or an interrupt
            if seen.everything or any(map(wakes, seen.named)):
                return True
            if time.monotonic() >= deadline:
                return False

    def _wait(self, queues: tuple[int | None, ...], timeout: float, changes: Changes) -> bool:
        """Wait on the queues; what they hold goes into ``changes``. False when the timeout
        passed or an interrupt came, True when a queue woke it."""
        # poll(), not select(): with the open-files limit raised, a descriptor may be past 1024.
        poller = select.poll()
        for fd in (*queues, self._interrupt_read):
            if fd is not None and fd >= 0:
                poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)}  # nothing to watch: a sleep
        interrupted = self._interrupt_read in ready
        if interrupted:
            _drain(self._interrupt_read)
            self._interrupted = True
        for queue in queues:
            # A wait takes what every queue holds, ready or not (poll() may have returned for
            # another descriptor): what a sleep left in the writes queue too.
            if queue is not None:
                self._read_events(queue, changes)
        return bool(ready) and not interrupted

    def _read_events(self, queue: int, changes: Changes) -> None:
        while True:
            try:
                data = os.read(queue, 65536)
            except OSError:  # BlockingIOError once drained
                return
            if not data:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                directory = self._directories.get((queue, wd))
                if mask & _IN_Q_OVERFLOW or directory is None:
                    changes.everything = True
                    continue
                if mask & _IN_IGNORED:  # the watch is gone with its directory
                    self._directories.pop((queue, wd), None)
                    changes.everything = changes.names = True
                    continue
                path = os.path.join(directory, os.fsdecode(name)) if name else None
                if mask & _NAMES_CHANGED or not name:
                    changes.names = True
                    if path is not None:
                        changes.named.add(path)
                if path is not None:
                    changes.paths.add(path)
                else:
                    changes.everything = True

    def interrupt(self) -> None:
        try:
            os.write(self._interrupt_write, b"x")
        except OSError:  # the pipe is full: a wake-up is pending anyway
            pass

    def close(self) -> None:
        for fd in (self._writes, self._names):
            if fd is not None:
                os.close(fd)
        self._writes = self._names = None
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
