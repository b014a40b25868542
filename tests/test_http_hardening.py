"""The HTTP server against bad clients: trickled requests, floods of idle connections, clients that
hang up mid-response, exhausted descriptors and threads, hostile headers and bodies; and what it
answers good ones (dual-stack, content negotiation, the Server header).

Each test drives a real exporter process, or a real MetricsServer where only HTTP is at stake,
over real sockets on loopback."""

from __future__ import annotations

import http.client
import json
import logging
import os
import resource
import socket
import ssl
import statistics
import struct
import time
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from conftest import ExporterProcess, wait_for
from exporter import __version__, passwords, server
from exporter.server import MetricsServer
from exporter.webconfig import load_web_config
from test_security import PASSWORD, PASSWORD_HASH, USER, pki, tls_config  # noqa: F401 - pki is a fixture

HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.fixture
def exporter(tmp_path):
    """A real exporter process following a one-line log, with the hardware collectors off."""
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        log = tmp_path / "train.jsonl"
        log.write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
        process = ExporterProcess(["--log", str(log), *HW_OFF, *args])
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def metrics_server(tmp_path):
    """A real MetricsServer in this process, on loopback; a web config if given."""
    servers: list[MetricsServer] = []

    def start(web_config: str | None = None, registry: CollectorRegistry | None = None,
              address: str = "127.0.0.1:0", **options) -> MetricsServer:
        security = None
        if web_config is not None:
            path = tmp_path / "web.yml"
            path.write_text(web_config)
            security = load_web_config(str(path))
        metrics = MetricsServer(address, registry or CollectorRegistry(), lambda: True, security, **options)
        metrics.start()
        servers.append(metrics)
        return metrics

    yield start
    for metrics in servers:
        metrics.stop()


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def read_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response


def assert_logged_once_without_traceback(process: ExporterProcess, what: str) -> None:
    """Stop the exporter; its log must tell of ``what`` in one line, and hold no traceback."""
    output = process.stop()
    assert "Traceback" not in output, output
    assert sum(what in line for line in output.splitlines()) == 1, output


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# ---------------------------------------------------------------------- 10: slow clients, fds

def trickle(sock: socket.socket, data: bytes, interval: float, seconds: float) -> float | None:
    """Send ``data`` a byte at a time; the seconds until the server cut us off, None if it never did."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > seconds:
            return None
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # reset, or a broken pipe: cut off
            return time.monotonic() - started
        if closed_by_server(sock, interval):
            return time.monotonic() - started
    return None


@pytest.mark.parametrize("secure", [False, True], ids=["http", "tls-and-basic-auth"])
def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_its_deadline(secure, pki, metrics_server, monkeypatch,
                                                                        caplog):
    monkeypatch.setattr(server, "REQUEST_TIMEOUT_SECONDS", 1.0)
    web_config = tls_config(pki) + f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n" if secure else None
    metrics = metrics_server(web_config)
    sock = connect(metrics.port)
    if secure:
        sock = ssl.create_default_context(cafile=str(pki / "ca.crt")).wrap_socket(sock, server_hostname="127.0.0.1")
    headers = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with caplog.at_level(logging.WARNING, logger="exporter.server"), sock:
        # Each byte comes well within a read timeout of 1 s; the request as a whole never does.
        cut_after = trickle(sock, headers, interval=0.2, seconds=8)
    assert cut_after is not None, "a trickling client held its connection for 8 s"
    assert cut_after < 4
    assert [r.getMessage() for r in caplog.records if "cut off" in r.getMessage()], caplog.text
    scheme = "https" if secure else "http"
    answer = requests.get(f"{scheme}://127.0.0.1:{metrics.port}/-/healthy", timeout=5,
                          verify=str(pki / "ca.crt"), auth=(USER, PASSWORD))
    assert answer.status_code == 200


def test_failed_tls_handshakes_are_said_once_not_per_client(pki, metrics_server, caplog):
    metrics = metrics_server(tls_config(pki))
    with caplog.at_level(logging.WARNING, logger="exporter.server"):
        for _ in range(5):  # plain HTTP to the TLS port
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5)
        time.sleep(0.2)
    said = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(said) == 1 and "127.0.0.1" in said[0].getMessage(), caplog.text


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit(tmp_path, exporter):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 512:
        pytest.skip(f"the hard limit on open files is {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the exporter
    try:
        process = exporter()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert psutil.Process(process.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
    output = process.stop()
    assert f"raised the limit on open files from 256 to {hard}" in output, output


def test_out_of_descriptors_it_backs_off_and_keeps_answering(exporter):
    process = exporter()
    exporter_process = psutil.Process(process.proc.pid)
    # As if 1,100 clients met a limit of 1024: the limit lowered to what is open now, plus a few.
    limit = exporter_process.num_fds() + 8
    resource.prlimit(process.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    flood = [connect(process.port) for _ in range(60)]
    try:
        time.sleep(0.5)
        cpu_before = sum(exporter_process.cpu_times()[:2])
        time.sleep(2)
        cpu = sum(exporter_process.cpu_times()[:2]) - cpu_before
        assert cpu < 0.5, f"{cpu:.2f} s of CPU in 2 s with descriptors exhausted: spinning"
        for _ in range(3):  # a scrape gets in, for a waiting connection's room
            assert requests.get(process.url + "/metrics", timeout=5).status_code == 200
    finally:
        for sock in flood:
            sock.close()
    assert_logged_once_without_traceback(process, "out of file descriptors")


# ------------------------------------------------------------- 11: bounded connections, hang-ups

def test_idle_connections_are_bounded_and_a_scrape_always_gets_in(exporter):
    process = exporter()
    exporter_process = psutil.Process(process.proc.pid)
    threads_before = exporter_process.num_threads()
    idle = [connect(process.port) for _ in range(server.MAX_CONNECTIONS + 44)]
    try:
        # One thread per held connection, and no more connections than the limit.
        wait_for(lambda: exporter_process.num_threads() <= threads_before + server.MAX_CONNECTIONS, 10,
                 f"more than {server.MAX_CONNECTIONS} connections held")
        assert requests.get(process.url + "/metrics", timeout=5).status_code == 200
        # The ones that waited longest made room.
        assert all(closed_by_server(sock, 5) for sock in idle[:40])
        assert not closed_by_server(idle[-1], 0.1)
    finally:
        for sock in idle:
            sock.close()
    assert_logged_once_without_traceback(process, "closed to make room")


def test_kept_alive_connections_make_room_first_then_the_longest_waiting(metrics_server):
    metrics = metrics_server(max_connections=3)

    def ask(sock: socket.socket, close: bool = True) -> None:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n%s\r\n" % (b"Connection: close\r\n" if close else b""))
        assert read_response(sock).status == 200

    kept_alive = connect(metrics.port)
    ask(kept_alive, close=False)  # answered, and kept open for the next request
    silent = connect(metrics.port)
    half = connect(metrics.port)
    half.sendall(b"GET /metrics HTTP/1.1\r\n")
    time.sleep(0.2)
    ask(connect(metrics.port))  # the fourth: the kept-alive one makes room
    assert closed_by_server(kept_alive, 2)
    assert not closed_by_server(silent, 0.2) and not closed_by_server(half, 0.2)
    latest = connect(metrics.port)
    time.sleep(0.2)
    ask(connect(metrics.port))  # then the one waiting longest for its request
    assert closed_by_server(silent, 2)
    assert not closed_by_server(half, 0.2) and not closed_by_server(latest, 0.2)
    for sock in (kept_alive, silent, half, latest):
        sock.close()


def hang_up(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a FIN
    sock.close()


def test_clients_hanging_up_mid_response_cost_one_log_line_and_no_traceback(exporter):
    process = exporter()
    for i in range(30):
        sock = connect(process.port)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        if i % 2:
            sock.recv(100)  # part of the answer
        hang_up(sock)
    time.sleep(0.5)
    assert requests.get(process.url + "/metrics", timeout=5).status_code == 200
    assert_logged_once_without_traceback(process, "disconnected mid-response")


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def thread_capped_cgroup():
    """A cgroup (v1 pids controller) whose tasks may have few threads in all."""
    if not os.access(PIDS_CGROUP, os.W_OK):
        pytest.skip("no writable cgroup v1 pids controller here to cap an exporter's threads")
    group = PIDS_CGROUP / f"training-exporter-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cannot make a pids cgroup: {error}")
    yield group
    for pid in (group / "cgroup.procs").read_text().split():  # back where everything else runs
        (PIDS_CGROUP / "cgroup.procs").write_text(pid)
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:  # its last task is still leaving
            time.sleep(0.1)


def test_with_threads_capped_idle_connections_do_not_shut_scrapes_out(exporter, thread_capped_cgroup):
    process = exporter()
    exporter_process = psutil.Process(process.proc.pid)
    (thread_capped_cgroup / "cgroup.procs").write_text(str(process.proc.pid))
    (thread_capped_cgroup / "pids.max").write_text(str(exporter_process.num_threads() + 40))
    idle = [connect(process.port) for _ in range(100)]
    try:
        for _ in range(3):
            assert requests.get(process.url + "/metrics", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    output = process.stop()
    assert "Traceback" not in output, output
    assert "the system refused a new thread" in output, output


# --------------------------------------------------------------------- 12: basic auth's answers

def test_a_non_ascii_authorization_header_gets_401(metrics_server):
    metrics = metrics_server(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
    for credentials in (b"Basic \xff\xfe\xfd", b"Basic " + "bé:pässwörd".encode("latin-1"), b"\xe9 abc"):
        with connect(metrics.port) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + credentials + b"\r\n\r\n")
            response = read_response(sock)
            assert response.status == 401, credentials
            assert response.getheader("WWW-Authenticate") == "Basic"


def bcrypt_hash(password: str, cost: int) -> str:
    compute = passwords.backend()[1]
    return compute(password.encode(), f"$2b${cost:02d}$" + "CCCCCCCCCCCCCCCCCCCCC.")


def test_an_unknown_user_takes_as_long_as_a_wrong_password_whatever_the_costs(metrics_server):
    # Two users at different costs: an unknown name is checked at the highest, so it answers
    # no faster than a wrong password for the slowest user (and the names cannot be told apart).
    users = {"cheap": bcrypt_hash("pw", 4), "dear": bcrypt_hash("pw", 7)}
    metrics = metrics_server("basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items()))
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    session = requests.Session()
    assert session.get(url, auth=("dear", "pw"), timeout=5).status_code == 200

    def median_seconds(user: str) -> float:
        times = []
        for attempt in range(15):
            started = time.perf_counter()
            assert session.get(url, auth=(user, f"wrong{attempt}"), timeout=5).status_code == 401
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    wrong_password, unknown_user = median_seconds("dear"), median_seconds("nobody")
    assert 1 / 3 < unknown_user / wrong_password < 3, (unknown_user, wrong_password)


# ------------------------------------------------------- 13: dual stack, GET bodies, Server header

def test_colon_port_listens_on_ipv6_and_ipv4(metrics_server):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here ({error.strerror})")
    metrics = metrics_server(address=":0")
    for host in ("[::1]", "127.0.0.1"):
        assert requests.get(f"http://{host}:{metrics.port}/-/healthy", timeout=5).status_code == 200, host


def test_a_get_body_is_not_taken_for_a_second_request(metrics_server):
    metrics = metrics_server()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(metrics.port) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        assert read_response(sock).status == 200
        sock.sendall(b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock)
        assert response.status == 200, "the body was answered as a request of its own"
    with connect(metrics.port) as sock:  # a body too large to read and drop ends the connection
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        response = read_response(sock)
        assert response.status == 200 and response.getheader("Connection") == "close"
        assert closed_by_server(sock, 5)


def test_the_server_header_names_the_exporter_only(metrics_server):
    metrics = metrics_server()
    for path in ("/metrics", "/nope"):
        response = requests.get(f"http://127.0.0.1:{metrics.port}{path}", timeout=5)
        assert response.headers["Server"] == f"training-exporter/{__version__}"
    with connect(metrics.port) as sock:  # an error answered by http.server itself
        sock.sendall(b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock)
        assert response.status == 501 and response.getheader("Server") == f"training-exporter/{__version__}"


# ------------------------------------------------------------------------ content negotiation

@pytest.mark.parametrize("accept, content_type", [
    (None, "text/plain; version=0.0.4; charset=utf-8"),
    ("*/*", "text/plain; version=0.0.4; charset=utf-8"),
    ("text/plain", "text/plain; version=0.0.4; charset=utf-8"),
    ("text/plain;version=1.0.0", "text/plain; version=1.0.0; charset=utf-8"),
    ("text/plain;version=0.0.4;q=0.5,text/plain;version=1.0.0;q=0.9", "text/plain; version=1.0.0; charset=utf-8"),
    ("application/openmetrics-text; version=1.0.0", "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    (PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;version=0.0.4;q=0.5",
     "text/plain; version=0.0.4; charset=utf-8"),
    ("application/openmetrics-text;version=1.0.0;q=0,*/*;q=0.1", "text/plain; version=0.0.4; charset=utf-8"),
    ("application/openmetrics-text;version=9.9.9,text/plain;q=0.1", "text/plain; version=0.0.4; charset=utf-8"),
    ("application/json", "text/plain; version=0.0.4; charset=utf-8"),
])
def test_the_format_follows_the_accept_header(exporter_process_once, accept, content_type):
    headers = {"Accept": accept} if accept else {}
    response = requests.get(exporter_process_once.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    if content_type.startswith("application/openmetrics-text"):
        assert response.text.endswith("# EOF\n")
        families = {family.name: family for family in openmetrics_families(response.text)}
        loss = families["training_loss"].samples[0]
        assert loss.labels == {"source": "train.jsonl"} and loss.value == 2.5
        assert families["training_log_lines"].type == "counter"
        assert {s.name for s in families["training_log_lines"].samples} == {"training_log_lines_total"}
    else:
        assert not response.text.endswith("# EOF\n")
        families = {family.name: family for family in text_string_to_metric_families(response.text)}
        assert families["training_loss"].samples[0].value == 2.5


@pytest.fixture(scope="module")
def exporter_process_once(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("negotiation")
    log = tmp_path / "train.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 2.5, "eval_loss": 2.0}) + "\n")
    hparams = tmp_path / "run" / "hparams.yaml"  # numeric and text hyperparameters: two families
    hparams.parent.mkdir()
    hparams.write_text("lr: 0.001\noptimizer: adamw\n")
    process = ExporterProcess(["--log", str(log), "--log", str(hparams.parent), *HW_OFF])
    process.wait_ready()
    yield process
    process.stop()


def test_openmetrics_keeps_the_series_of_the_text_format(exporter_process_once):
    def series(text: str, parse) -> set:
        return {(s.name, tuple(sorted(s.labels.items()))) for family in parse(text) for s in family.samples}

    text = requests.get(exporter_process_once.url + "/metrics", timeout=5).text
    openmetrics = requests.get(exporter_process_once.url + "/metrics", timeout=5,
                               headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}).text
    assert ("training_hparam_text_info", (("key", "optimizer"), ("source", "run"), ("value", "adamw"))) in series(
        openmetrics, openmetrics_families)
    assert series(openmetrics, openmetrics_families) == series(text, text_string_to_metric_families)


def test_openmetrics_writes_counters_with_their_total_suffix(metrics_server):
    registry = CollectorRegistry(auto_describe=False)

    class Collector:
        def collect(self):
            counter = CounterMetricFamily("requests_total", "Requests.", labels=["code"])
            counter.add_metric(["200"], 3)
            yield counter
            yield GaugeMetricFamily("temperature", "Heat.", value=21.5)

    registry.register(Collector())
    metrics = metrics_server(registry=registry)
    text = requests.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5,
                        headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    assert "# TYPE requests counter\nrequests_total{code=\"200\"} 3.0\n" in text
    families = {family.name: family for family in openmetrics_families(text)}
    assert families["requests"].samples[0].value == 3
