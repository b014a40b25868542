"""The real Prometheus and Alertmanager harness, end to end with a real exporter process.

An alert on ``training_loss`` goes log line -> exporter -> Prometheus scrape -> rule evaluation ->
Alertmanager -> webhook, and its resolution goes the same way when the loss falls.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

import pytest
from conftest import FAKE_NVML_DIR
from stack import (  # noqa: F401  fixtures
    StackError,
    alertmanager_server,
    prometheus_binary_available,
    prometheus_server,
    webhook_receiver,
)

GIB = 1024**3
GPU = {
    "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "pci_bus_id": "00000000:18:00.0", "utilization": {"gpu": 90, "memory": 45},
    "memory": {"total": 80 * GIB, "used": 60 * GIB, "free": 19 * GIB, "reserved": GIB},
    "power_mw": 650_000, "power_limit_mw": 700_000, "temperature": 60,
}

RULES = """\
groups:
  - name: test
    rules:
      - alert: TestLossHigh
        expr: training_loss > 2
        for: 0s
        labels:
          severity: page
        annotations:
          summary: "loss {{ $value }} on {{ $labels.source }}"
"""


def append(path, record: dict) -> None:
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def iso_seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def test_binaries_are_installed():
    # CI installs them; a machine without them must fail here, loudly, rather than skip.
    assert prometheus_binary_available(), "missing: apt-get install prometheus prometheus-alertmanager"


def test_loss_alert_fires_and_resolves_through_prometheus_and_alertmanager(
        tmp_path, exporter_process, webhook_receiver, alertmanager_server, prometheus_server):  # noqa: F811
    started = time.monotonic()
    scenario = tmp_path / "nvml.json"
    scenario.write_text(json.dumps({"driver_version": "550.54.15", "cuda_version": 12040, "gpus": [GPU]}))
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    log = tmp_path / "train.jsonl"

    alertmanager = alertmanager_server(webhook_receiver.url)
    first_written = time.monotonic()
    append(log, {"step": 3, "loss": 2.5})
    env = {"FAKE_NVML_SCENARIO": str(scenario),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), os.environ.get("PYTHONPATH")]))}
    exporter = exporter_process("--log", str(log), "--format", "jsonl",
                                "--no-collector.host", "--no-collector.process", env=env)
    prometheus = prometheus_server([f"127.0.0.1:{exporter.port}"], job="training", rule_files=[rules],
                                   alertmanager_url=alertmanager.url)
    prometheus.wait_for_target_up(timeout=15)
    up_at = time.monotonic()

    [rule] = [rule for group in prometheus.rules() for rule in group["rules"]]
    assert (rule["name"], rule["health"]) == ("TestLossHigh", "ok"), rule
    [loss] = prometheus.query("training_loss")
    assert loss["metric"]["source"] == "train.jsonl"
    assert loss["metric"]["job"] == "training"
    assert float(loss["value"][1]) == 2.5
    [gpu_up] = prometheus.query("training_gpu_up")
    assert (gpu_up["metric"]["uuid"], float(gpu_up["value"][1])) == (GPU["uuid"], 1.0)
    with pytest.raises(StackError, match="parse error"):
        prometheus.query("training_loss{")

    firing = webhook_receiver.wait_for_alert("TestLossHigh", timeout=15, source="train.jsonl", severity="page")
    assert firing.labels["instance"] == f"127.0.0.1:{exporter.port}"
    assert firing.annotations == {"summary": "loss 2.5 on train.jsonl"}
    assert [a["labels"]["alertname"] for a in prometheus.alerts()] == ["TestLossHigh"]

    resolved_written, resolved_written_wall = time.monotonic(), time.time()
    append(log, {"step": 4, "loss": 1.0})
    resolved = webhook_receiver.wait_for_alert("TestLossHigh", status="resolved", timeout=15, source="train.jsonl")
    assert resolved.labels == firing.labels
    assert resolved.monotonic > firing.monotonic

    # Both losses are in the TSDB, in order.
    [series] = prometheus.query_range("training_loss", time.time() - 60, time.time(), "1s")
    values = [float(v) for _, v in series["values"]]
    assert values[0] == 2.5 and values[-1] == 1.0

    print(f"\nfiring: {firing.monotonic - first_written:.2f}s after the line was written "
          f"(exporter and Prometheus started in between), {firing.monotonic - up_at:.2f}s after the target was up;"
          f"\nresolved: {resolved.monotonic - resolved_written:.2f}s after the line was written (the rule "
          f"evaluation that resolved it ran {iso_seconds(resolved.ends_at) - resolved_written_wall:.2f}s after);"
          f"\nwhole test: {time.monotonic() - started:.2f}s")
