"""The HTTP endpoint: /metrics, /-/healthy, /-/ready and an index page. Knows nothing of
training: it serves a registry and asks a callable whether the exporter is ready."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import __version__

log = logging.getLogger(__name__)

INDEX = """<!doctype html>
<html><head><title>training-exporter</title></head>
<body><h1>training-exporter {version}</h1>
<p>Prometheus metrics from training logs, GPUs and the host.</p>
<ul><li><a href="/metrics">/metrics</a></li>
<li><a href="/-/healthy">/-/healthy</a></li>
<li><a href="/-/ready">/-/ready</a></li></ul>
</body></html>
"""


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:9945``, ``0.0.0.0:9945``, ``127.0.0.1:9945``, ``[::1]:9945`` into (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {address!r} is not HOST:PORT (e.g. ':9945' or '127.0.0.1:9945')")
    host = host.strip("[]")
    return host, int(port)


class _Handler(BaseHTTPRequestHandler):
    server_version = f"training-exporter/{__version__}"
    registry: CollectorRegistry
    is_ready: Callable[[], bool]

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/-/healthy":
            self._send(200, b"Healthy\n", "text/plain; charset=utf-8")
        elif path == "/-/ready":
            if self.is_ready():
                self._send(200, b"Ready\n", "text/plain; charset=utf-8")
            else:
                self._send(503, b"Not ready: still reading the logs' backlog\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, INDEX.format(version=__version__).encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        try:
            body = generate_latest(self.registry)
        except Exception:  # noqa: BLE001 - report, never drop the connection
            log.exception("error while generating metrics")
            self._send(500, b"error generating metrics\n", "text/plain; charset=utf-8")
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, CONTENT_TYPE_LATEST, headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server API
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer:
    def __init__(self, address: str, registry: CollectorRegistry, is_ready: Callable[[], bool]) -> None:
        host, port = parse_listen_address(address)
        handler = type("Handler", (_Handler,), {"registry": registry, "is_ready": staticmethod(is_ready)})
        server_class = ThreadingHTTPServer
        if ":" in host:
            server_class = type("IPv6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.httpd = server_class((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
