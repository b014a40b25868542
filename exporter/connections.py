"""What a client may hold of the server: a bounded number of connections, and a deadline for
each request, so that no client, however slow or numerous, keeps a scrape from being answered.

``Connections`` keeps at most ``limit`` connections (each is a thread). When a new one needs room,
a waiting one is closed: idle kept-alive connections first, then those whose request is still
incomplete, the one waiting longest first. A connection whose request is being answered is never
closed for another.

``DeadlineReader`` reads a request under one deadline for all of it (request line, headers and
any body), not a timeout per read: a client that trickles a byte every few seconds is cut off
when the deadline passes, as one that sends nothing is.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import OrderedDict


class Connection:
    """One accepted connection: its socket (replaced by the TLS one once wrapped) and thread."""

    __slots__ = ("sock", "thread")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.thread: threading.Thread | None = None


class Connections:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        # Dicts as ordered sets, oldest first. Every held connection is in one of the three.
        self._kept_alive: OrderedDict[Connection, None] = OrderedDict()  # between requests
        self._incomplete: OrderedDict[Connection, None] = OrderedDict()  # new, or its request not read yet
        self._answering: dict[Connection, None] = {}

    def __len__(self) -> int:
        return len(self._kept_alive) + len(self._incomplete) + len(self._answering)

    def add(self, sock: socket.socket) -> tuple[Connection | None, int]:
        """Hold a new connection, closing waiting ones while there is no room: (the connection,
        or None when every held one is being answered; how many were closed for it)."""
        with self._lock:
            closed = 0
            while len(self) >= self.limit:
                if not self._close_one():
                    return None, closed
                closed += 1
            connection = Connection(sock)
            self._incomplete[connection] = None
            return connection, closed

    def answering(self, connection: Connection) -> None:
        with self._lock:
            if self._forget(connection):
                self._answering[connection] = None

    def kept_alive(self, connection: Connection) -> None:
        with self._lock:
            if self._forget(connection):
                self._kept_alive[connection] = None

    def replace_socket(self, connection: Connection, sock: socket.socket) -> None:
        with self._lock:  # so that a close from another thread sees the socket in use
            connection.sock = sock

    def remove(self, connection: Connection) -> None:
        with self._lock:
            self._forget(connection)

    def close_one(self) -> Connection | None:
        """Close the first waiting connection in line, to free its descriptor or thread."""
        with self._lock:
            return self._close_one()

    def hold_fewer(self) -> Connection | None:
        """The system refused a thread: hold one connection fewer from now on."""
        with self._lock:
            self.limit = max(1, len(self) - 1)
            return self._close_one()

    def close_all(self) -> None:
        with self._lock:
            while self._close_one():
                pass
            for connection in self._answering:
                _shut(connection.sock)
            self._answering.clear()

    def _close_one(self) -> Connection | None:
        for waiting in (self._kept_alive, self._incomplete):
            if waiting:
                connection, _ = waiting.popitem(last=False)
                _shut(connection.sock)
                return connection
        return None

    def _forget(self, connection: Connection) -> bool:
        """Take the connection out of whichever set holds it; False when it was closed meanwhile."""
        for held in (self._kept_alive, self._incomplete, self._answering):
            if connection in held:
                del held[connection]
                return True
        return False


def _shut(sock: socket.socket) -> None:
    # The kernel's shutdown only, never the TLS layer's (its object belongs to the connection's
    # thread): that thread's blocked read returns at once, and it closes the connection itself.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class DeadlineReader(io.RawIOBase):
    """A socket's reads under a deadline; ``start`` sets it for the next request."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout  # what the socket's other operations (the writes) wait
        self._deadline = 0.0  # until start()
        self.received = 0  # bytes read since start
        self.expired = False

    def start(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self.received = 0
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise TimeoutError("the request was not complete in time")
        self._sock.settimeout(remaining)
        try:
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = True
            raise
        finally:
            self._sock.settimeout(self._timeout)
        self.received += count
        return count
