"""Many scrapers at once against the HTTP server."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry

from exporter.server import MetricsServer


def test_a_burst_of_connections_is_queued_not_dropped():
    # Not serving yet: every connection waits in the listen queue, as when a burst arrives faster
    # than the accepting thread takes them. The kernel completes a handshake only for those the
    # queue has room for; the others' SYNs are dropped and they would retry after a second.
    server = MetricsServer("127.0.0.1:0", CollectorRegistry(), lambda: True)
    sockets = []
    try:
        for _ in range(64):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=0.5))
    finally:
        for connection in sockets:
            connection.close()
        server.httpd.server_close()
    assert len(sockets) == 64
