"""The HTTP endpoint: /metrics, /-/healthy, /-/ready and an index page. Knows nothing of
training: it serves a registry and asks a callable whether the exporter is ready.

With a web config (``webconfig.py``) it serves HTTPS and asks every request, whatever its path,
for basic-auth credentials, as Prometheus's own exporters do.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from . import __version__
from .exposition import render
from .webconfig import WebSecurity, client_sans

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


# A client that connects and then says nothing must not hold a thread for ever.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0


class Scrapes:
    """One collection serves every scrape that arrives while it runs.

    Several scrapers at once (a Prometheus HA pair, a scrape storm) cost one collection, not one
    each: a scrape that arrives while a collection runs waits for it and is answered with its
    result, which began at most one collection's time (milliseconds) before the scrape came.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._done = threading.Condition()
        self._running = False
        self._generation = 0
        self._result: _Result | None = None

    def get(self) -> _Result | None:
        """The text exposition, or None when collecting failed (already logged)."""
        with self._done:
            if self._running:
                generation = self._generation
                while self._generation == generation:
                    self._done.wait()
                return self._result
            self._running = True
        result = None
        try:
            result = _Result(render(self.registry))
        except Exception:  # noqa: BLE001 - report, never drop the connection
            log.exception("error while generating metrics")
        finally:
            with self._done:
                self._result, self._running = result, False
                self._generation += 1
                self._done.notify_all()
        return result


class _Result:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:  # compressed once for all the scrapes that share this result
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=1)
            return self._gzipped


class _Handler(BaseHTTPRequestHandler):
    server_version = f"training-exporter/{__version__}"
    # Persistent connections, as Prometheus uses them: a scrape then costs no new connection
    # and no new thread. A connection idle for REQUEST_TIMEOUT_SECONDS is closed.
    protocol_version = "HTTP/1.1"
    # Buffered: the status line, headers and body leave in one write when the response ends,
    # not a write each.
    wbufsize = 1 << 16
    scrapes: Scrapes
    is_ready: Callable[[], bool]
    security: WebSecurity | None = None

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if not self._authorized():
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8", {"WWW-Authenticate": "Basic"})
            return
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

    def _authorized(self) -> bool:
        passwords = self.security.passwords if self.security else None
        if passwords is None:
            return True
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and passwords.check(user, password)

    def _metrics(self) -> None:
        result = self.scrapes.get()
        if result is None:
            self._send(500, b"error generating metrics\n", "text/plain; charset=utf-8")
        elif "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, result.gzipped(), CONTENT_TYPE_LATEST, {"Content-Encoding": "gzip"})
        else:
            self._send(200, result.body, CONTENT_TYPE_LATEST)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:  # asked for by the client, or an HTTP/1.0 one
            self.send_header("Connection", "close")
        if self.security is not None:
            for name, value in self.security.headers.items():
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server API
        log.debug("%s %r", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: with more scrapers connecting at once, Linux drops
    # their SYNs and they retry after 1 s, 3 s, 7 s. The kernel caps this at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN
    tls: ssl.SSLContext | None = None
    allowed_sans: tuple[str, ...] = ()

    def finish_request(self, request, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake happens here, in the connection's own thread: done on the listening
        # socket, one slow or silent client would stall every other.
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:  # plain HTTP, no or untrusted client certificate
            log.debug("TLS handshake with %s failed: %s", client_address[0], error)
            return
        try:
            if self.allowed_sans and not client_sans(connection.getpeercert()) & set(self.allowed_sans):
                log.debug("client certificate of %s names none of client_allowed_sans", client_address[0])
                return
            super().finish_request(connection, client_address)
        finally:
            self.shutdown_request(connection)


class MetricsServer:
    def __init__(self, address: str, registry: CollectorRegistry, is_ready: Callable[[], bool],
                 security: WebSecurity | None = None) -> None:
        host, port = parse_listen_address(address)
        handler = type("Handler", (_Handler,), {"scrapes": Scrapes(registry), "is_ready": staticmethod(is_ready),
                                                "security": security, "timeout": REQUEST_TIMEOUT_SECONDS})
        attributes = {"tls": security.tls if security else None,
                      "allowed_sans": security.allowed_sans if security else ()}
        if ":" in host:
            attributes["address_family"] = socket.AF_INET6
        self.httpd = type("Server", (_Server,), attributes)((host, port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        # The poll interval bounds how long stop() waits for the serving loop to notice.
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
