"""Real Prometheus and Alertmanager on loopback, for tests that check what users will run.

``PrometheusServer`` scrapes targets and evaluates rule files, ``AlertmanagerServer`` routes every
alert to one webhook, and ``WebhookReceiver`` records what arrives there. Each server is a child
process with its config and storage in its own temporary directory; all of them listen on
127.0.0.1 only, every wait is bounded, and ``stop()`` (also run by ``with`` and by the fixtures
below) kills the process and removes the directory. Configs are written as JSON, which YAML
parsers read, so no YAML library is needed.

The binaries come from Debian's ``prometheus`` and ``prometheus-alertmanager`` packages (CI
installs them). Where they are missing, starting a server raises ``StackError`` saying how to
install them: a test that needs them fails, it is never skipped.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

__all__ = [
    "Alert", "AlertmanagerServer", "Notification", "PrometheusServer", "StackError", "WebhookReceiver",
    "alertmanager_server", "prometheus_binary_available", "prometheus_server", "webhook_receiver",
]

INSTALL_HINT = "install them with `apt-get install prometheus prometheus-alertmanager` (CI does)"
# Debian names Alertmanager's binary prometheus-alertmanager; upstream tarballs name it alertmanager.
PROMETHEUS_NAMES = ("prometheus",)
ALERTMANAGER_NAMES = ("prometheus-alertmanager", "alertmanager")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class StackError(RuntimeError):
    """A server could not be found, started or queried; the message says why."""


def _find_binary(names: tuple[str, ...]) -> str | None:
    return next(filter(None, map(shutil.which, names)), None)


def prometheus_binary_available() -> bool:
    """Whether both ``prometheus`` and Alertmanager are on PATH."""
    return bool(_find_binary(PROMETHEUS_NAMES) and _find_binary(ALERTMANAGER_NAMES))


def _require_binary(names: tuple[str, ...]) -> str:
    path = _find_binary(names)
    if path is None:
        raise StackError(f"{names[0]} is not on PATH: {INSTALL_HINT}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Looked up here, not in the child: between fork and exec (other threads may hold locks, the
# webhook receiver's for one) the child should only make the one system call.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test runner is killed outright (a CI timeout's
    # SIGKILL), no finalizer runs, so let the kernel send the server SIGTERM instead.
    # PR_SET_PDEATHSIG fires when the *thread* that started the child exits: start servers from
    # the main thread (fixtures do) or from a thread that outlives them.
    _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _check_loopback(host_port: str) -> str:
    host = host_port.rpartition(":")[0]
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"{host_port!r}: test servers talk to 127.0.0.1 only")
    return host_port


class _Server:
    """A child process serving HTTP on a free loopback port, with a temporary directory."""

    name = "server"
    ready_timeout = 20.0
    stop_timeout = 5.0

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix=f"test-{self.name}-"))
        self.log_path = self.dir / "output.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.output = ""  # the server's log, kept once stop() has removed the directory
        # Ignore HTTP(S)_PROXY from the environment: a proxy must not see loopback test traffic.
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        raise NotImplementedError

    def _start(self) -> None:
        """Start on a free port and wait for /-/ready; on any failure stop and clean up, then raise."""
        try:
            # free_port() can race with another process taking the port before the server binds
            # it; that shows as an early exit naming the address, and a new port fixes it.
            for _attempt in range(3):
                self.port = free_port()
                with open(self.log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
                    self.proc = subprocess.Popen(
                        [self.binary, *self._args()], stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, cwd=self.dir,
                        preexec_fn=_die_with_parent if _PRCTL else None)  # noqa: PLW1509  see above
                if self._wait_ready():
                    return
            raise StackError(f"{self.name} could not bind a free port three times:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> bool:
        """True once /-/ready answers 200; False when the port was taken; raises on anything else."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                if "address already in use" in log.lower():
                    return False
                raise StackError(f"{self.name} exited with status {self.proc.returncode}:\n{log}")
            try:
                # Only our own process counts: if another server took the port first, its /-/ready
                # answers while ours is still failing to bind. Ours logs that it listens there.
                if self.http.get(self.url + "/-/ready", timeout=1).status_code == 200 and self._listening():
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise StackError(f"{self.name} not ready within {self.ready_timeout:.0f}s:\n{self.log()}")

    def _listening(self) -> bool:
        address = f"address=127.0.0.1:{self.port}"
        return any("Listening on" in line and address in line for line in self.log().splitlines())

    def log(self) -> str:
        """What the server has printed so far (its log lines)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self.output

    def stop(self) -> str:
        """Terminate (kill after ``stop_timeout``), remove the directory; returns the server's log. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=self.stop_timeout)
        if self.dir.exists():
            self.output = self.log()
            shutil.rmtree(self.dir, ignore_errors=True)
        self.http.close()
        return self.output

    def _get(self, path: str, **params) -> dict | list:
        """GET a JSON API path; raise StackError with the server's own error text on failure."""
        response = self.http.get(self.url + path, params=params, timeout=10)
        try:
            body = response.json()
        except ValueError:
            raise StackError(f"{self.name} {path}: HTTP {response.status_code}: {response.text[:500]}") from None
        if isinstance(body, dict) and body.get("status") == "error":
            raise StackError(f"{self.name} {path}: {body.get('errorType')}: {body.get('error')}")
        response.raise_for_status()
        return body

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


class PrometheusServer(_Server):
    """``prometheus`` scraping ``targets`` (``"127.0.0.1:PORT"``) and evaluating ``rule_files``.

    Started and ready when the constructor returns. ``alertmanager_url`` is an Alertmanager's
    base URL (``AlertmanagerServer.url``). ``resend_delay`` is how often a still-firing alert is
    sent again (Prometheus's default is 1m). ``basic_auth`` is (user, password) for scraping
    targets that ask for it.
    """

    name = "prometheus"

    def __init__(self, targets: list[str], job: str = "exporter", scrape_interval: str = "1s",
                 rule_files: list[str | os.PathLike] = (), evaluation_interval: str = "1s",
                 alertmanager_url: str | None = None, resend_delay: str = "1s",
                 basic_auth: tuple[str, str] | None = None) -> None:
        self.scrape_targets = [_check_loopback(target) for target in targets]
        if alertmanager_url:
            _check_loopback(urlsplit(alertmanager_url).netloc)
        super().__init__(_require_binary(PROMETHEUS_NAMES))
        self.resend_delay = resend_delay
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
            "scrape_configs": [{
                # The default scrape_timeout (10s) is refused when longer than the interval.
                "job_name": job, "scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": self.scrape_targets}],
                **({"basic_auth": {"username": basic_auth[0], "password": basic_auth[1]}} if basic_auth else {}),
            }],
            "rule_files": [str(Path(path).resolve()) for path in rule_files],
        }
        if alertmanager_url:
            parts = urlsplit(alertmanager_url)
            config["alerting"] = {"alertmanagers": [{
                "scheme": parts.scheme or "http", "path_prefix": parts.path or "/", "timeout": "5s",
                "static_configs": [{"targets": [parts.netloc]}],
            }]}
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._start()

    def _args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Otherwise built from the host name: alerts' generatorURL would name a non-loopback host.
            f"--web.external-url=http://127.0.0.1:{self.port}/",
            f"--rules.alert.resend-delay={self.resend_delay}",
            "--log.level=info",  # the readiness check reads its "Listening on" line
        ]

    def query(self, expr: str, at: float | None = None) -> list:
        """Instant query; the ``result`` list (for a vector: ``[{"metric": {...}, "value": [ts, "v"]}]``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        return self._get("/api/v1/query", **params)["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float | str) -> list:
        """Range query; ``[{"metric": {...}, "values": [[ts, "v"], ...]}]``."""
        return self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["data"]["result"]

    def targets(self) -> list[dict]:
        """The active targets as the API reports them (``labels``, ``health``, ``lastError``, ...)."""
        return self._get("/api/v1/targets", state="active")["data"]["activeTargets"]

    def targets_up(self) -> list[str]:
        """The ``instance`` of every active target whose last scrape succeeded."""
        return [target["labels"]["instance"] for target in self.targets() if target["health"] == "up"]

    def wait_for_target_up(self, timeout: float = 15.0, target: str | None = None) -> None:
        """Wait until ``target`` (default: every configured target) has been scraped successfully."""
        wanted = {target} if target else set(self.scrape_targets)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= set(self.targets_up()):
                return
            time.sleep(0.1)
        # An empty list means not discovered yet: Prometheus applies a new target list about 5s
        # after start at the earliest (its discovery updates are throttled, with no flag to change).
        states = [(t["labels"]["instance"], t["health"], t["lastError"]) for t in self.targets()]
        raise AssertionError(f"targets {sorted(wanted)} not up within {timeout}s: {states}\n{self.log()}")

    def alerts(self) -> list[dict]:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        return self._get("/api/v1/alerts")["data"]["alerts"]

    def rules(self) -> list[dict]:
        """Rule groups from /api/v1/rules, each with its rules, their health and last error."""
        return self._get("/api/v1/rules")["data"]["groups"]


class AlertmanagerServer(_Server):
    """Alertmanager with one route, every alert to ``webhook_url``; started and ready on return.

    ``group_by=("...",)`` makes each distinct alert its own group, so each waits only its own
    ``group_wait``; ``send_resolved`` makes resolutions arrive at the webhook too. ``routes`` and
    ``receivers`` (Alertmanager's own config, as dicts) send some alerts elsewhere first; their
    webhooks must be on loopback too.
    """

    name = "alertmanager"

    def __init__(self, webhook_url: str, group_wait: str = "1s", group_interval: str = "1s",
                 repeat_interval: str = "1h", group_by: tuple[str, ...] = ("...",),
                 send_resolved: bool = True, routes: list[dict] = (), receivers: list[dict] = ()) -> None:
        for url in [webhook_url, *(hook["url"] for receiver in receivers for hook in receiver["webhook_configs"])]:
            _check_loopback(urlsplit(url).netloc)
        super().__init__(_require_binary(ALERTMANAGER_NAMES))
        config = {
            "route": {"receiver": "webhook", "group_by": list(group_by), "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": repeat_interval, "routes": list(routes)},
            "receivers": [{"name": "webhook",
                           "webhook_configs": [{"url": webhook_url, "send_resolved": send_resolved}]}, *receivers],
        }
        self.config_path = self.dir / "alertmanager.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._start()

    def _args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url=http://127.0.0.1:{self.port}/",
            "--cluster.listen-address=",  # empty: no gossip, no other listener, no peers
            "--log.level=info",  # the readiness check reads its "Listening on" line
        ]

    def alerts(self) -> list[dict]:
        """The alerts Alertmanager holds (/api/v2/alerts)."""
        return self._get("/api/v2/alerts")


@dataclass
class Notification:
    """One webhook POST: Alertmanager's JSON body and when it arrived."""
    body: dict
    time: float       # time.time() at arrival
    monotonic: float  # time.monotonic() at arrival, to subtract from other monotonic readings


@dataclass
class Alert:
    """One alert of a notification, with its own status ("firing" or "resolved")."""
    status: str
    labels: dict
    annotations: dict
    starts_at: str
    ends_at: str
    time: float
    monotonic: float
    raw: dict = field(repr=False)


class WebhookReceiver:
    """Records every Alertmanager webhook POST, on a loopback port, served by a thread.

    ``url`` is what Alertmanager's ``webhook_configs`` needs. Started on construction; ``stop()``
    (or ``with``) shuts the thread down.
    """

    def __init__(self) -> None:
        self._notifications: list[Notification] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived, arrived_monotonic = time.time(), time.monotonic()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver._changed:
                    receiver._notifications.append(Notification(body, arrived, arrived_monotonic))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        # Port 0: the kernel picks a free port while binding, so there is no race to lose.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="webhook-receiver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def notifications(self) -> list[Notification]:
        with self._changed:
            return list(self._notifications)

    def alerts(self) -> list[Alert]:
        """Every alert of every notification, in arrival order."""
        return [Alert(alert.get("status", ""), alert.get("labels", {}), alert.get("annotations", {}),
                      alert.get("startsAt", ""), alert.get("endsAt", ""), n.time, n.monotonic, alert)
                for n in self.notifications() for alert in n.body.get("alerts", [])]

    def wait_for_alert(self, alertname: str, status: str = "firing", timeout: float = 15.0, **labels) -> Alert:
        """The first alert named ``alertname`` with ``status`` and these labels; waits up to ``timeout``."""
        wanted = {"alertname": alertname, **labels}

        def first_match() -> Alert | None:
            return next((alert for alert in self.alerts() if alert.status == status
                         and all(alert.labels.get(k) == v for k, v in wanted.items())), None)

        deadline = time.monotonic() + timeout
        with self._changed:
            while (match := first_match()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(a.status, a.labels) for a in self.alerts()]
                    raise AssertionError(f"no {status} alert {wanted} within {timeout}s; received: {seen}")
                self._changed.wait(left)
        return match

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# Fixtures. Each server fixture is a factory so a test starts what it needs, in the order it
# needs (Alertmanager before the Prometheus that sends to it). A missing binary then fails the
# test itself with StackError's message. On teardown each server's log is printed: pytest shows
# it under the failing test only.

def _factory(cls):
    started = []

    def start(*args, **kwargs):
        server = cls(*args, **kwargs)
        started.append(server)
        return server

    return start, started


def _stop_all(started: list[_Server]) -> None:
    for server in reversed(started):
        output = server.stop()
        print(f"----- {server.name} log -----\n{output}")


@pytest.fixture
def webhook_receiver():
    with WebhookReceiver() as receiver:
        yield receiver
        print("----- webhook notifications -----")
        for notification in receiver.notifications():
            print(notification.time, json.dumps(notification.body))


@pytest.fixture
def alertmanager_server():
    """``alertmanager_server(webhook_url, **options) -> AlertmanagerServer``, stopped at teardown."""
    start, started = _factory(AlertmanagerServer)
    yield start
    _stop_all(started)


@pytest.fixture
def prometheus_server():
    """``prometheus_server(targets, **options) -> PrometheusServer``, stopped at teardown."""
    start, started = _factory(PrometheusServer)
    yield start
    _stop_all(started)
