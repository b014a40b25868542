"""200 concurrent scrapers for 30 s against a real exporter process with 8 (fake) GPUs, host and
process metrics and a few hundred training series: no errors, bounded latency, stable memory.

This is the suite's one long test. Each scraper asks every 2 s (with jitter), so the offered
load is about 100 scrapes a second: far beyond any real Prometheus setup, while leaving the
2-core CI machine some room."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time

import requests
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from conftest import value
from exporter.server import MetricsServer
from procs import fake_nvml_env, gpu, rss_mib, write_scenario

SCRAPERS = 200
SECONDS = 30.0
INTERVAL = 2.0


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


def test_scrapes_arriving_together_share_one_collection():
    calls = []

    class Slow:
        def collect(self):
            calls.append(time.monotonic())
            time.sleep(0.3)
            metric = GaugeMetricFamily("slow", "A slow collector.")
            metric.add_metric([], len(calls))
            yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Slow())
    server = MetricsServer("127.0.0.1:0", registry, lambda: True)
    server.start()
    responses = []
    try:
        def scrape() -> None:
            responses.append(requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10,
                                          headers={"Accept-Encoding": "gzip"}))

        threads = [threading.Thread(target=scrape) for _ in range(12)]
        for thread in threads:
            thread.start()
            time.sleep(0.01)
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [200] * 12
    assert all(r.headers["Content-Encoding"] == "gzip" for r in responses)
    assert len(calls) <= 2  # the first collection, and one more for those that came after it began
    assert {r.text for r in responses} <= {f"# HELP slow A slow collector.\n# TYPE slow gauge\nslow {float(n)}\n"
                                           for n in (1, 2)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_two_hundred_concurrent_scrapers(tmp_path, exporter_process):
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, [gpu(i) for i in range(8)])
    logs = []
    for rank in range(4):
        log = tmp_path / f"rank{rank}.jsonl"
        with open(log, "w") as handle:
            for step in range(1, 201):
                handle.write(json.dumps({"step": step, "loss": 2.0 / step, "lr": 1e-4,
                                         **{f"metric_{k}": k * 0.5 for k in range(40)}}) + "\n")
                if step % 20 == 0:
                    handle.write(json.dumps({"step": step, "eval_loss": 1.0 + 1 / step}) + "\n")
        logs += ["--log", str(log)]
    exporter = exporter_process(*logs, env=fake_nvml_env(scenario))
    metrics = exporter.metrics()
    series = len(metrics)
    assert value(metrics, "training_exporter_collector_success", collector="gpu") == 1
    assert series > 400

    latencies: list[float] = []
    errors: list[str] = []
    rss: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def scraper(seed: int) -> None:
        rng = random.Random(seed)
        time.sleep(rng.uniform(0, INTERVAL))  # spread the first scrapes out
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
                connection.request("GET", "/metrics")
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status != 200 or b"training_exporter_collector_success" not in body:
                    raise AssertionError(f"status {response.status}, {len(body)} bytes")
            except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    errors.append(repr(error))
            else:
                with lock:
                    latencies.append(time.monotonic() - started)
            time.sleep(max(0.0, INTERVAL * rng.uniform(0.8, 1.2) - (time.monotonic() - started)))

    threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        rss.append(rss_mib(exporter.proc.pid))
        time.sleep(1.0)
    for thread in threads:
        thread.join(timeout=30)

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    warm = sum(rss[3:8]) / 5  # after the first seconds of thread stacks and buffers
    report = (f"{len(latencies)} scrapes of {series} series by {SCRAPERS} scrapers in {SECONDS:.0f} s: "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
              f"RSS {rss[0]:.1f} -> {warm:.1f} (warm) -> {rss[-1]:.1f} MiB; {len(errors)} errors")
    print(report)
    assert not errors, f"{report}: {errors[:5]}"
    assert len(latencies) > SCRAPERS * SECONDS / INTERVAL * 0.8, report
    assert p50 < 0.25 and p99 < 2.0, report
    assert rss[-1] - warm < 10, report
    assert exporter.proc.poll() is None
