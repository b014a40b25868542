"""The HTTP endpoint: /metrics, /-/healthy, /-/ready, an index page, and the guard's webhook
for Alertmanager. Knows nothing of training: it serves a registry, asks a callable whether the
exporter is ready, and hands the webhook's parsed JSON to another.

With a web config (``webconfig.py``) it serves HTTPS and asks every request, whatever its path,
for basic-auth credentials, as Prometheus's own exporters do. The webhook, which can stop the
training job, answers only a client that proved who it is: with basic auth, or with a verified
client certificate.
"""

from __future__ import annotations

import base64
import errno
import gzip
import io
import json
import logging
import os
import re
import selectors
import socket
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry

from . import __version__
from .config import parse_listen_address
from .connections import Connection, Connections, DeadlineReader
from .exposition import OPENMETRICS, TEXT, negotiate
from .ratelimited import RateLimitedLog
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


# A client that connects and then says nothing, or trickles its request, must not hold a
# thread for ever: the TLS handshake must be over within the first limit, and a request (line,
# headers, body) must have arrived within the second of the connection's start or of its
# previous response. A kept-alive connection idle for that long is closed.
HANDSHAKE_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
# Each connection is a thread. Prometheus needs one per server, so this leaves room for many
# scrapers and probes; beyond it, waiting connections are closed (connections.py).
MAX_CONNECTIONS = 256
# A GET's body means nothing here, but left unread it would be taken for the next request: up to
# this much is read and dropped, more (or a chunked body) ends the connection after the answer.
MAX_DISCARDED_BODY = 64 * 1024
# Where Alertmanager posts to the guard, and the largest payload taken (hundreds of alerts).
GUARD_WEBHOOK_PATH = "/-/guard/alertmanager"
MAX_WEBHOOK_BODY = 1 << 20
JSON = "application/json"
_CONTENT_LENGTH = re.compile(r"[0-9]{1,10}")


class Scrapes:
    """One collection serves every scrape that arrives while it runs.

    Several scrapers at once (a Prometheus HA pair, a scrape storm) cost one collection, not one
    each: a scrape that arrives while a collection runs waits for it and is answered with its
    result, which began at most one collection's time (milliseconds) before the scrape came.
    """

    def __init__(self, registry: CollectorRegistry, render: Callable[[CollectorRegistry], bytes]) -> None:
        self.registry = registry
        self.render = render
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
            result = _Result(self.render(self.registry))
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
    timeout = REQUEST_TIMEOUT_SECONDS  # for each write; reads have the request's deadline
    request_timeout = REQUEST_TIMEOUT_SECONDS  # that deadline; MetricsServer sets it when it starts
    server: _Server
    scrapes: dict[Callable, Scrapes]  # by the format's render function
    is_ready: Callable[[], bool]
    security: WebSecurity | None = None
    # The guard's handler of an Alertmanager payload: (HTTP status, answer); None: the guard is off.
    guard_webhook: Callable[[object], tuple[int, dict]] | None = None

    def setup(self) -> None:
        # The server hands over its Connection, not the bare socket.
        self.held: Connection = self.request
        self.request = self.connection = self.held.sock
        self.connection.settimeout(self.timeout)
        self.reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = self.connection.makefile("wb", self.wbufsize)
        self.answering = False

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as error:  # the client went away or stopped reading; never our fault
            if self.answering:
                self.server.problems.note("a client disconnected mid-response",
                                          f"{self.client_address[0]}: {type(error).__name__}")
            else:
                log.debug("%s went away: %r", self.client_address[0], error)

    def handle_one_request(self) -> None:
        self.reader.start(self.request_timeout)
        self.answering = False
        super().handle_one_request()  # answers a timeout by ending the connection
        if self.reader.expired and self.reader.received:
            self.server.problems.note(f"a client was cut off: its request was not complete within "
                                      f"{self.request_timeout:g} s", self.client_address[0])
        elif not self.close_connection:
            self.server.connections.kept_alive(self.held)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command != "POST":  # a POST's body is read once the request may be answered
            self._read_body(MAX_DISCARDED_BODY)
        self.answering = True
        self.server.connections.answering(self.held)
        return True

    def _read_body(self, limit: int) -> bytes | None:
        """The request's body, at most ``limit`` bytes; None when there is none, or when it is
        larger, chunked or of ambiguous length (then the connection ends after the answer)."""
        lengths = self.headers.get_all("Content-Length", [])
        chunked = "Transfer-Encoding" in self.headers
        if not lengths and not chunked:
            return None
        length = lengths[0].strip() if len(lengths) == 1 and not chunked else ""  # else ambiguous
        if _CONTENT_LENGTH.fullmatch(length) and int(length) <= limit:
            return self.rfile.read(int(length))  # under the request's deadline
        self.close_connection = True
        return None

    def finish(self) -> None:
        for stream in (self.wfile, self.rfile):
            try:
                stream.close()  # the writer's close sends what is buffered
            except OSError:  # the client is gone; handle() has said so
                pass

    def version_string(self) -> str:
        return self.server_version  # not the Python version as well

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

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        asked_to_close = self.close_connection
        self.close_connection = True  # the body is read only if the request is taken
        if not self._authorized():
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8", {"WWW-Authenticate": "Basic"})
        elif self.path.split("?", 1)[0] != GUARD_WEBHOOK_PATH:
            self._send(405, b"Method not allowed\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})
        elif self.guard_webhook is None:
            self._send_json(403, {"error": "the guard is off"})
        elif not self._identified():
            self._send_json(403, {"error": "the guard's webhook needs basic auth or a verified client certificate"})
        else:
            self.close_connection = asked_to_close
            body = self._read_body(MAX_WEBHOOK_BODY)
            try:
                payload = json.loads(body) if body is not None else None
            except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond the parser
                payload = None
            if payload is None:
                self.close_connection = self.close_connection or body is None  # a body left unread
                self._send_json(400, {"error": f"expected a JSON payload of at most {MAX_WEBHOOK_BODY} bytes, "
                                               "sent with a Content-Length"})
                return
            self._send_json(*self.guard_webhook(payload))

    def _identified(self) -> bool:
        """Whether the client proved who it is: basic auth (checked for every request when
        configured) or a client certificate verified in the TLS handshake."""
        if self.security is not None and self.security.passwords is not None:
            return True
        getpeercert = getattr(self.connection, "getpeercert", None)
        return bool(getpeercert and getpeercert())

    def _send_json(self, status: int, answer: dict) -> None:
        self._send(status, json.dumps(answer).encode() + b"\n", JSON)

    def _authorized(self) -> bool:
        passwords = self.security.passwords if self.security else None
        if passwords is None:
            return True
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 underneath
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and passwords.check(user, password)

    def _metrics(self) -> None:
        form = negotiate(self.headers.get("Accept"))
        result = self.scrapes[form.render].get()
        if result is None:
            self._send(500, b"error generating metrics\n", "text/plain; charset=utf-8")
        elif "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, result.gzipped(), form.content_type, {"Content-Encoding": "gzip"})
        else:
            self._send(200, result.body, form.content_type)

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
    """Accepts connections, within the limits of ``Connections``, each served by its own thread.

    A client's misbehaviour (hanging up, trickling, flooding) ends its own connection and is
    logged as one rate-limited line; running out of descriptors or threads makes the server back
    off and close waiting connections, never spin or stop answering the ones it holds.
    """

    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog is 5: with more scrapers connecting at once, Linux drops
    # their SYNs and they retry after 1 s, 3 s, 7 s. The kernel caps this at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], handler, family: socket.AddressFamily, dual_stack: bool,
                 max_connections: int, tls: ssl.SSLContext | None, allowed_sans: tuple[str, ...]) -> None:
        self.address_family, self.dual_stack = family, dual_stack
        self.tls, self.allowed_sans = tls, allowed_sans
        self.connections = Connections(max_connections)
        self.problems = RateLimitedLog(log)
        self._backoff = 0.0
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.dual_stack:  # IPv4 clients too, as ::ffff:a.b.c.d (off by default on some systems)
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer's, which looks up the host's fully qualified name: DNS at start, unused.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        try:
            request = super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # The connection stays queued and the listening socket readable: retried at
                # once, accept would fail again at full speed. Wait, and free a descriptor.
                self.problems.note("cannot accept connections: out of file descriptors or memory",
                                   f"{error.strerror}; closing a waiting connection and backing off")
                self.connections.close_one()
                self._backoff = min(max(0.005, self._backoff * 2), 0.5)
                time.sleep(self._backoff)
            raise
        self._backoff = 0.0
        return request

    def process_request(self, request, client_address) -> None:
        connection, closed = self.connections.add(request)
        if closed:
            self.problems.note("a waiting connection was closed to make room", f"at most {self.connections.limit} "
                               f"are held, idle ones are closed first; for {client_address[0]}")
        if connection is None:
            self.problems.note("a connection was refused", f"all {self.connections.limit} held connections are "
                               f"being answered; refused {client_address[0]}")
            self.shutdown_request(request)
            return
        for attempt in range(2):
            thread = threading.Thread(target=self._serve, args=(connection, client_address), daemon=True)
            connection.thread = thread
            try:
                thread.start()
                return
            except RuntimeError:  # "can't start new thread": a limit on threads or memory
                freed = self.connections.hold_fewer() if attempt == 0 else None
                self.problems.note("the system refused a new thread", f"holding at most {self.connections.limit} "
                                   f"connections from now on; {client_address[0]} waits")
                if freed is None:
                    break
                if freed.thread is not None:
                    freed.thread.join(1.0)  # its thread ends once its socket is shut
        self._close(connection)

    def _serve(self, connection: Connection, client_address) -> None:
        try:
            if self.tls is None or self._handshake(connection, client_address):
                self.RequestHandlerClass(connection, client_address, self)
        except Exception:  # noqa: BLE001 - a bug must cost one connection, logged, not the server
            self.problems.note("error while serving a client", client_address[0], exc_info=True)
        finally:
            self._close(connection)

    def _handshake(self, connection: Connection, client_address) -> bool:
        # The TLS handshake happens here, in the connection's own thread: done on the listening
        # socket, one slow or silent client would stall every other.
        connection.sock.settimeout(HANDSHAKE_TIMEOUT_SECONDS)  # for the whole handshake
        try:
            tls = self.tls.wrap_socket(connection.sock, server_side=True, do_handshake_on_connect=False)
            self.connections.replace_socket(connection, tls)
            tls.do_handshake()
        except (ssl.SSLError, OSError) as error:  # plain HTTP, no or untrusted client certificate
            self.problems.note("a TLS handshake failed", f"{client_address[0]}: {error}")
            return False
        if self.allowed_sans and not client_sans(tls.getpeercert()) & set(self.allowed_sans):
            self.problems.note("a client certificate names none of client_allowed_sans", client_address[0])
            return False
        return True

    def _close(self, connection: Connection) -> None:
        self.connections.remove(connection)
        self.shutdown_request(connection.sock)

    def serve_forever(self, poll_interval: float = 60.0) -> None:
        """socketserver's loop, woken by ``shutdown`` at once rather than by its next timeout: so
        it can sleep for a long interval, and an idle exporter does not wake up to do nothing."""
        self._stopping = False
        self._stopped = threading.Event()
        wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with selectors.PollSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(wake_read, selectors.EVENT_READ)
                while not self._stopping:
                    ready = selector.select(poll_interval)
                    if self._stopping:
                        break
                    if any(key.fileobj is self for key, _ in ready):
                        self._handle_request_noblock()
                    self.service_actions()
        finally:
            os.close(wake_read)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_write, b"x")
        except (AttributeError, OSError):  # not serving, or already woken
            pass
        stopped = getattr(self, "_stopped", None)
        if stopped is not None:
            stopped.wait()
        if hasattr(self, "_wake_write"):
            os.close(self._wake_write)
            del self._wake_write

    def service_actions(self) -> None:
        self.problems.flush()  # the serving loop calls this after each request and each interval

    def handle_error(self, request, client_address) -> None:
        self.problems.note("error while accepting a client", client_address[0], exc_info=True)


class MetricsServer:
    def __init__(self, address: str, registry: CollectorRegistry, is_ready: Callable[[], bool],
                 security: WebSecurity | None = None, max_connections: int = MAX_CONNECTIONS,
                 guard_webhook: Callable[[object], tuple[int, dict]] | None = None) -> None:
        host, port = parse_listen_address(address)
        scrapes = {form.render: Scrapes(registry, form.render) for form in (TEXT, OPENMETRICS)}
        handler = type("Handler", (_Handler,), {"scrapes": scrapes, "is_ready": staticmethod(is_ready),
                                                "security": security, "request_timeout": REQUEST_TIMEOUT_SECONDS,
                                                "guard_webhook": staticmethod(guard_webhook) if guard_webhook
                                                else None})
        tls, sans = (security.tls, security.allowed_sans) if security else (None, ())
        if host:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.httpd = _Server((host, port), handler, family, False, max_connections, tls, sans)
        else:  # ":PORT": every address, IPv6 and IPv4, as Prometheus's exporters listen
            try:
                self.httpd = _Server(("::", port), handler, socket.AF_INET6, True, max_connections, tls, sans)
            except OSError as error:
                if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    raise
                log.debug("no IPv6 here (%s): listening on IPv4 only", error.strerror)
                self.httpd = _Server(("", port), handler, socket.AF_INET, False, max_connections, tls, sans)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        # Woken by stop() at once, the serving loop need not look up often: once a minute, for
        # the rate-limited log's summary lines.
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.connections.close_all()
