"""A real exporter process, read over real HTTP while a test writes its log like a trainer."""

from __future__ import annotations

import http.client
import json
import math
import os

import requests

from conftest import value, wait_for

HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")


def append(path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")


def jsonl(**values) -> str:
    return json.dumps(values)


def test_endpoints_and_live_values(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=2.5, lr=1e-4), jsonl(step=2, loss=2.4, lr=1e-4, grad_norm=1.5))
    exporter = exporter_process("--log", str(log), *HW_OFF)

    index = requests.get(exporter.url + "/", timeout=5)
    assert index.status_code == 200 and "/metrics" in index.text
    assert requests.get(exporter.url + "/-/ready", timeout=5).text.startswith("Ready")
    assert requests.get(exporter.url + "/nope", timeout=5).status_code == 404

    m = exporter.metrics()
    src = "train.jsonl"
    assert value(m, "training_step", source=src) == 2
    assert value(m, "training_loss", source=src) == 2.4
    assert value(m, "training_learning_rate", source=src) == 1e-4
    assert value(m, "training_grad_norm", source=src) == 1.5
    assert value(m, "training_log_lines_total", source=src) == 2
    assert value(m, "training_exporter_collector_success", collector="training") == 1
    assert value(m, "training_log_format_info", source=src, format="jsonl") == 1

    # A line written now shows up without a restart.
    append(log, jsonl(step=3, loss=float("nan"), accuracy=0.5))
    wait_for(lambda: value(exporter.metrics(), "training_step", source=src) == 3, 5, "step 3 not seen")
    m = exporter.metrics()
    assert math.isnan(value(m, "training_loss", source=src))
    assert value(m, "training_nonfinite_values_total", source=src, key="loss") == 1
    assert value(m, "training_value", source=src, key="accuracy") == 0.5


def test_a_scrape_shows_every_line_written_before_it_whatever_the_poll_interval(tmp_path, exporter_process):
    """Between scrapes the follower reads at most once per poll interval (30 s here); a scrape
    reads what was written before it at once, so nothing it returns is stale."""
    log = tmp_path / "train.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(f"logs:\n  - path: {log}\nfollow:\n  poll_interval_seconds: 30\n")
    append(log, jsonl(step=1, loss=2.5))
    exporter = exporter_process("--config", str(config), *HW_OFF)
    for step in range(2, 6):
        append(log, jsonl(step=step, loss=2.5 - step / 10))
        m = exporter.metrics()  # the first scrape after the write, no waiting
        assert value(m, "training_step", source="train.jsonl") == step
        assert value(m, "training_log_lines_total", source="train.jsonl") == step


def test_gzip_when_asked(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=1.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    response = requests.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert response.headers["Content-Encoding"] == "gzip"
    assert "training_loss" in response.text


def test_one_connection_serves_scrape_after_scrape(tmp_path, exporter_process):
    # Prometheus keeps its connection to a target open between scrapes: the responses come on
    # the same connection (HEAD's without a body) until the client asks for it to be closed.
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=1.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    exporter.wait_ready()
    connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=5)
    bodies, sockets = [], []
    for method in ("GET", "HEAD", "GET"):
        connection.request(method, "/metrics")
        response = connection.getresponse()
        bodies.append(response.read())
        sockets.append(connection.sock)
        assert response.status == 200 and response.version == 11 and not response.will_close
    assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]
    assert bodies[1] == b"" and b"training_loss" in bodies[0] and b"training_loss" in bodies[2]
    connection.request("GET", "/metrics", headers={"Connection": "close"})
    assert connection.getresponse().will_close
    connection.close()


def test_waits_for_a_log_that_does_not_exist_yet(tmp_path, exporter_process):
    log = tmp_path / "later" / "train.jsonl"
    exporter = exporter_process("--log", str(log), *HW_OFF)
    assert value(exporter.metrics(), "training_log_up", source="train.jsonl") == 0
    os.makedirs(log.parent)
    append(log, jsonl(step=7, loss=1.0))
    wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == 7, 10,
             "late file not followed")
    assert value(exporter.metrics(), "training_log_up", source="train.jsonl") == 1


def test_rotation_counts_every_line(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=0, loss=3.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    written, step = 1, 0
    for rotation in range(3):
        for _ in range(50):
            step += 1
            append(log, jsonl(step=step, loss=1.0))
            written += 1
        os.rename(log, tmp_path / f"train.jsonl.{rotation}")
        append(log, jsonl(step=step + 1, loss=1.0))
        step += 1
        written += 1
        # Like tail -F, a generation is followed once it has been seen; the follower wakes on
        # every change, so this only needs the new file to exist for a moment before the next
        # rotation (real rotations are hours apart).
        wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == step, 5,
                 "new file after rotation not followed")
    wait_for(lambda: value(exporter.metrics(), "training_log_lines_total", source="train.jsonl") == written, 10,
             "lines lost across rotations")
    m = exporter.metrics()
    assert value(m, "training_step", source="train.jsonl") == step
    assert value(m, "training_log_parse_errors_total", source="train.jsonl") == 0


def test_malformed_lines_are_counted_and_skipped(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=1.0), '{"step": 2, "loss": ', "\x00\xff garbage", jsonl(step=3, loss=0.5))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    m = exporter.metrics()
    assert value(m, "training_log_parse_errors_total", source="train.jsonl") == 1
    assert value(m, "training_step", source="train.jsonl") == 3


def test_restart_rebuilds_the_same_state(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    for i, v in enumerate([2.0, 1.5, 1.6, float("nan"), 1.7, 1.55], start=1):
        append(log, jsonl(step=i * 10, loss=1.0), jsonl(step=i * 10, eval_loss=v))
    keys = ["training_validation_loss_best", "training_validation_evals_since_best",
            "training_validation_best_step", "training_nonfinite_values_total"]

    def signals(exporter):
        m = exporter.metrics()
        return {k: v for k, v in m.items() if k[0] in keys}

    first = exporter_process("--log", str(log), *HW_OFF)
    before = signals(first)
    first.proc.kill()
    second = exporter_process("--log", str(log), *HW_OFF)
    assert signals(second) == before
    assert before[("training_validation_loss_best", frozenset({("source", "train.jsonl")}))] == 1.5
    assert before[("training_validation_evals_since_best", frozenset({("source", "train.jsonl")}))] == 4


def test_gpu_collector_without_nvml_reports_failure_and_the_rest_works(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=1.0))
    # An empty directory first on the path hides nothing; a library path with no NVML makes init fail.
    exporter = exporter_process("--log", str(log), "--no-collector.process", env={"LD_LIBRARY_PATH": str(tmp_path)})
    m = exporter.metrics()
    assert value(m, "training_exporter_collector_success", collector="gpu") == 0
    assert value(m, "training_exporter_collector_success", collector="training") == 1
    assert value(m, "training_exporter_collector_success", collector="host") == 1
    assert value(m, "training_loss", source="train.jsonl") == 1.0


def test_sigterm_stops_within_a_second(tmp_path, exporter_process):
    import time

    log = tmp_path / "train.jsonl"
    append(log, jsonl(step=1, loss=1.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    started = time.monotonic()
    exporter.proc.terminate()
    exporter.proc.wait(timeout=5)
    assert exporter.proc.returncode == 0
    assert time.monotonic() - started < 1.5


def test_config_file_with_a_user_regex_format_and_aliases(tmp_path, exporter_process):
    log = tmp_path / "custom.out"
    config = tmp_path / "exporter.yaml"
    config.write_text(f"""
logs:
  - path: {log}
    format: regex
    source: rank0
    patterns:
      - '^\\[(?P<step>\\d+)\\] loss=(?P<loss>\\S+)$'
      - {{pattern: '^eval (?P<step>\\d+) nll=(?P<holdout_nll>\\S+)$', kind: eval}}
vocabulary:
  validation_loss: [holdout_nll]
signals:
  patience: 2
collectors: {{gpu: false, host: false, process: false}}
""")
    append(log, "[10] loss=2.5", "eval 10 nll=2.0", "[20] loss=nan", "eval 20 nll=2.1",
           "something else entirely")
    exporter = exporter_process("--config", str(config))
    m = exporter.metrics()
    assert value(m, "training_step", source="rank0") == 20
    assert value(m, "training_validation_loss_best", source="rank0") == 2.0
    assert value(m, "training_validation_evals_since_best", source="rank0") == 1
    assert value(m, "training_validation_patience", source="rank0") == 2
    assert value(m, "training_nonfinite_values_total", source="rank0", key="loss") == 1
    assert value(m, "training_log_format_info", source="rank0", format="regex") == 1
