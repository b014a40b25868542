"""A real exporter process under what production does to it: logs rotated while written fast,
SIGKILL and restart mid-run, SIGTERM while busy."""

from __future__ import annotations

import math
import socket
import threading
import time

import requests
from prometheus_client import CollectorRegistry

from conftest import ExporterProcess, value, wait_for
from exporter import server
from procs import HW_OFF, fake_nvml_env, gpu, start_writer, write_scenario, writer_summary


def counts(metrics: dict, source: str) -> tuple:
    return tuple(v for k, v in sorted(metrics.items(), key=repr)
                 if k[0].startswith("training_log_") and ("source", source) in k[1])


def settled(exporter, source: str, step: int, timeout: float = 30) -> dict:
    """The metrics once the exporter has reached ``step`` and stopped reading."""
    wait_for(lambda: value(exporter.metrics(), "training_step", source=source) == step, timeout,
             f"step {step} never reached")
    previous = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = exporter.metrics()
        if previous is not None and counts(metrics, source) == counts(previous, source):
            return metrics
        previous = metrics
        time.sleep(0.3)
    raise AssertionError("the exporter never settled")


# --------------------------------------------------------------------------------- rotation

def test_rename_rotation_under_write_load_loses_no_line(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    log.touch()
    exporter = exporter_process("--log", str(log), *HW_OFF)
    summary = writer_summary(start_writer(log, "--rate", "4000", "--seconds", "3", "--rotate", "rename"))
    assert summary["rotations"] >= 8 and summary["written"] > 10_000
    metrics = settled(exporter, "train.jsonl", summary["last_step"])
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == summary["written"]
    assert value(metrics, "training_log_resets_total", source="train.jsonl", reason="rotated") == summary["rotations"]
    assert value(metrics, "training_log_parse_errors_total", source="train.jsonl") == 0


def test_copytruncate_rotation_under_write_load_loses_only_its_window(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    log.touch()
    exporter = exporter_process("--log", str(log), *HW_OFF)
    summary = writer_summary(start_writer(log, "--rate", "4000", "--seconds", "3", "--rotate", "copytruncate"))
    assert summary["rotations"] >= 8 and summary["written"] > 10_000
    metrics = settled(exporter, "train.jsonl", summary["last_step"])
    read = value(metrics, "training_log_lines_total", source="train.jsonl")
    # Lines written between the start of a copy and the end of its truncate may be lost (they
    # are in neither file when the follower looks); nothing else, and nothing counted twice.
    assert summary["written"] - summary["copytruncate_window"] <= read <= summary["written"], (read, summary)
    resets = sum(value(metrics, "training_log_resets_total", source="train.jsonl", reason=reason)
                 for reason in ("truncated", "rewritten"))
    assert resets == summary["rotations"]
    assert value(metrics, "training_log_parse_errors_total", source="train.jsonl") == 0


# ---------------------------------------------------------------------------------- restart

TRAINING_SERIES = ("training_step", "training_loss", "training_validation_loss", "training_validation_loss_best",
                   "training_validation_best_step", "training_validation_evals_since_best",
                   "training_validation_evals_total", "training_nonfinite_values_total", "training_records_total",
                   "training_loss_spikes_total", "training_loss_baseline", "training_learning_rate",
                   "training_grad_norm", "training_epoch", "training_value", "training_log_lines_total",
                   "training_log_read_bytes_total", "training_log_parse_errors_total", "training_max_steps")


def training_state(metrics: dict) -> dict:
    # NaN != NaN: compare NaN as a word.
    return {key: ("nan" if isinstance(v, float) and math.isnan(v) else v)
            for key, v in metrics.items() if key[0] in TRAINING_SERIES}


def test_sigkill_and_restart_serve_what_an_uninterrupted_exporter_serves(tmp_path):
    jsonl, console = tmp_path / "train.jsonl", tmp_path / "console.log"
    jsonl.touch()
    console.touch()
    args = ["--log", str(jsonl), "--log", str(console), *HW_OFF]
    steady = ExporterProcess(args)
    restarted = ExporterProcess(args)
    try:
        steady.wait_ready()
        restarted.wait_ready()
        writers = [start_writer(jsonl, "--rate", "1500", "--seconds", "3"),
                   start_writer(console, "--rate", "1500", "--seconds", "3", "--format", "hf")]
        time.sleep(1.5)  # mid-run, with both logs being appended to
        restarted.proc.kill()
        restarted.proc.wait()
        restarted = ExporterProcess(args)
        restarted.wait_ready()
        summaries = [writer_summary(w) for w in writers]
        for exporter in (steady, restarted):
            settled(exporter, "train.jsonl", summaries[0]["last_step"])
            settled(exporter, "console.log", summaries[1]["last_step"])
        expected = training_state(steady.metrics())
        got = training_state(restarted.metrics())
    finally:
        steady.stop()
        restarted.stop()
    assert got == expected
    src = frozenset({("source", "train.jsonl")})
    # The log had something to rebuild: a NaN evaluation, a plateau, spikes.
    assert expected[("training_validation_evals_since_best", src)] > 0
    assert expected[("training_nonfinite_values_total", src | {("key", "validation_loss")})] == 1
    assert expected[("training_loss_spikes_total", src)] > 0
    assert expected[("training_nonfinite_values_total", frozenset({("source", "console.log"), ("key", "grad_norm")}))] > 0


def test_ready_only_once_the_whole_backlog_is_applied(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    lines = 60_000  # a few seconds of parsing, read from the file in one go
    with open(log, "w") as handle:
        for step in range(1, lines + 1):
            handle.write(f'{{"step": {step}, "loss": {1 / step}, "lr": 0.0001}}\n')
    exporter = exporter_process("--log", str(log), *HW_OFF, ready=False)
    wait_for(lambda: requests.get(exporter.url + "/-/ready", timeout=5).status_code == 200, 60, "never ready")
    metrics = exporter.metrics()
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == lines
    assert value(metrics, "training_step", source="train.jsonl") == lines


# ------------------------------------------------------------------------------ connections

def test_a_silent_client_does_not_hold_a_connection_for_ever(monkeypatch):
    monkeypatch.setattr(server, "REQUEST_TIMEOUT_SECONDS", 0.3)
    metrics = server.MetricsServer("127.0.0.1:0", CollectorRegistry(), lambda: True)
    metrics.start()
    try:
        silent = socket.create_connection(("127.0.0.1", metrics.port), timeout=5)
        half = socket.create_connection(("127.0.0.1", metrics.port), timeout=5)
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        assert silent.recv(1) == b"" and half.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 3
        assert requests.get(f"http://127.0.0.1:{metrics.port}/-/healthy", timeout=5).status_code == 200
    finally:
        silent.close()
        half.close()
        metrics.stop()


# --------------------------------------------------------------------------------- shutdown

def test_sigterm_exits_cleanly_within_a_second(tmp_path):
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, [gpu(i) for i in range(8)])
    log = tmp_path / "train.jsonl"
    log.touch()
    for attempt in range(3):
        exporter = ExporterProcess(["--log", str(log), "--gpu.poll-interval", "0.2"], env=fake_nvml_env(scenario))
        try:
            exporter.wait_ready()
            assert value(exporter.metrics(), "training_exporter_collector_success", collector="gpu") == 1
            writer_summary(start_writer(log, "--rate", "1000", "--seconds", "0.5"))
            # Then the log is quiet, as between a job's log lines: the follower is waiting.
            # An idle connection and a request left half-sent must not hold the exit up, nor
            # scrapes in flight.
            idle = socket.create_connection(("127.0.0.1", exporter.port))
            half = socket.create_connection(("127.0.0.1", exporter.port))
            half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            stop = threading.Event()

            def scrape() -> None:
                while not stop.is_set():
                    try:
                        requests.get(exporter.url + "/metrics", timeout=2)
                    except requests.RequestException:
                        pass

            scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(2)]
            for thread in scrapers:
                thread.start()
            time.sleep(0.3 + attempt * 0.35)  # a different point in the poll cycles each time
            started = time.monotonic()
            exporter.proc.terminate()
            exporter.proc.wait(timeout=10)
            took = time.monotonic() - started
            stop.set()
            for thread in scrapers:
                thread.join()
            idle.close()
            half.close()
        finally:
            output = exporter.stop()
        assert exporter.proc.returncode == 0, output
        assert "Traceback" not in output, output
        assert took < 1.0, f"took {took:.2f} s to stop"
