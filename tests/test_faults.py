"""Faults around a real exporter process: NVML failing at start or mid-run, a GPU lost, an NVML
call that hangs, the log's directory removed and recreated, nowhere to write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import requests

from conftest import ROOT, ExporterProcess, free_port, parse_metrics, value, wait_for
from procs import HW_OFF, fake_nvml_env, gpu, write_scenario


def jsonl(**values) -> str:
    return json.dumps(values) + "\n"


def timed_scrape(exporter) -> tuple[float, dict]:
    started = time.monotonic()
    response = requests.get(exporter.url + "/metrics", timeout=10)
    took = time.monotonic() - started
    assert response.status_code == 200
    return took, parse_metrics(response.text)


def gpu_exporter(tmp_path, exporter_process, scenario_gpus, **top):
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, scenario_gpus, **top)
    log = tmp_path / "train.jsonl"
    log.write_text(jsonl(step=1, loss=2.0))
    exporter = exporter_process("--log", str(log), "--gpu.poll-interval", "0.2", "--no-collector.process",
                                env=fake_nvml_env(scenario))
    return exporter, scenario


def test_nvml_failing_at_start_leaves_the_rest_working(tmp_path, exporter_process):
    exporter, _ = gpu_exporter(tmp_path, exporter_process, [gpu(0)], init_error="DRIVER_NOT_LOADED")
    took, metrics = timed_scrape(exporter)
    assert value(metrics, "training_exporter_collector_success", collector="gpu") == 0
    assert value(metrics, "training_exporter_collector_success", collector="training") == 1
    assert value(metrics, "training_exporter_collector_success", collector="host") == 1
    assert value(metrics, "training_loss", source="train.jsonl") == 2.0
    assert not [k for k in metrics if k[0].startswith("training_gpu_")]
    assert took < 1.0


def test_a_gpu_lost_then_nvml_failing_mid_run(tmp_path, exporter_process):
    gpus = [gpu(i) for i in range(4)]
    exporter, scenario = gpu_exporter(tmp_path, exporter_process, gpus)
    metrics = exporter.metrics()
    assert [value(metrics, "training_gpu_up", gpu=str(i), uuid=gpus[i]["uuid"]) for i in range(4)] == [1, 1, 1, 1]

    gpus[2]["lost"] = True  # one GPU falls off the bus
    write_scenario(scenario, gpus)
    wait_for(lambda: value(exporter.metrics(), "training_gpu_up", gpu="2", uuid=gpus[2]["uuid"]) == 0, 10,
             "the lost GPU is still reported up")
    metrics = exporter.metrics()
    assert [value(metrics, "training_gpu_up", gpu=str(i), uuid=gpus[i]["uuid"]) for i in range(4)] == [1, 1, 0, 1]
    assert value(metrics, "training_gpu_power_draw_watts", gpu="1", uuid=gpus[1]["uuid"]) == 650.0
    assert value(metrics, "training_exporter_collector_success", collector="gpu") == 1

    for spec in gpus:  # then the driver goes away under the exporter
        spec["errors"] = {"nvmlDeviceGetPowerUsage": "DRIVER_NOT_LOADED"}
    write_scenario(scenario, gpus)
    wait_for(lambda: value(exporter.metrics(), "training_exporter_collector_success", collector="gpu") == 0, 10,
             "NVML failing was not reported")
    took, metrics = timed_scrape(exporter)
    assert took < 1.0
    assert value(metrics, "training_exporter_collector_success", collector="training") == 1
    assert not [k for k in metrics if k[0] == "training_gpu_up"]  # no stale readings served as current
    assert exporter.proc.poll() is None


def test_a_hung_nvml_call_never_slows_a_scrape(tmp_path, exporter_process):
    gpus = [gpu(i) for i in range(8)]
    exporter, scenario = gpu_exporter(tmp_path, exporter_process, gpus)
    gpus[3]["hang"] = {"nvmlDeviceGetPowerUsage": 4.0}
    write_scenario(scenario, gpus)
    time.sleep(0.5)  # the poll thread is now stuck inside NVML
    stuck_at = value(exporter.metrics(), "training_gpu_last_poll_timestamp_seconds")
    latencies = []
    for _ in range(20):
        took, metrics = timed_scrape(exporter)
        latencies.append(took)
        time.sleep(0.1)
    assert max(latencies) < 0.5, latencies
    # The last good snapshot is served, and its age says the poll is stuck.
    assert value(metrics, "training_gpu_last_poll_timestamp_seconds") == stuck_at
    assert value(metrics, "training_gpu_up", gpu="0", uuid=gpus[0]["uuid"]) == 1
    gpus[3]["hang"] = {}
    write_scenario(scenario, gpus)
    wait_for(lambda: value(exporter.metrics(), "training_gpu_last_poll_timestamp_seconds") > stuck_at, 10,
             "polling did not resume after the hang")


def test_the_log_directory_removed_and_recreated(tmp_path, exporter_process):
    directory = tmp_path / "run"
    directory.mkdir()
    log = directory / "train.jsonl"
    log.write_text(jsonl(step=1, loss=2.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    shutil.rmtree(directory)
    wait_for(lambda: value(exporter.metrics(), "training_log_up", source="train.jsonl") == 0, 10,
             "a missing log is not reported")
    directory.mkdir()
    log.write_text(jsonl(step=2, loss=1.5))
    wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == 2, 10,
             "the recreated log is not followed")
    # Followed promptly again, not only at the next periodic rescan.
    latencies = []
    for step in range(3, 9):
        written = time.monotonic()
        with open(log, "a") as handle:
            handle.write(jsonl(step=step, loss=1.0))
        wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == step, 10,
                 f"step {step} not seen", interval=0.01)
        latencies.append(time.monotonic() - written)
        time.sleep(0.2)
    assert sorted(latencies)[len(latencies) // 2] < 0.3, latencies
    metrics = exporter.metrics()
    assert value(metrics, "training_log_up", source="train.jsonl") == 1
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == 8


# Runs the exporter with an audit hook that reports every attempt to create, change or remove a
# file; Python raises these events for every open() and os.* call, whoever makes them.
WATCHED = textwrap.dedent("""
    import os, runpy, sys
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    CHANGES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
               "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.rmtree", "tempfile.mkstemp",
               "tempfile.mkdtemp"}

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path == os.devnull:  # subprocess's stand-in for no output: not a file on disk
                return
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
                os.write(2, f"WRITE ATTEMPT open {path!r} {mode!r} {flags!r}\\n".encode())
        elif event in CHANGES:
            os.write(2, f"WRITE ATTEMPT {event} {args!r}\\n".encode())

    sys.addaudithook(hook)
    sys.argv = ["exporter", *sys.argv[1:]]
    runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
""")


def run_watched(tmp_path, module_args: list[str], cwd_name: str, env: dict) -> subprocess.Popen:
    """Start ``python -m MODULE ARGS`` under the audit hook, in a working directory that is
    removed as it starts: nobody, not even root, can create a file in a removed directory."""
    cwd = tmp_path / cwd_name
    cwd.mkdir()
    script = tmp_path / "watched.py"
    script.write_text(WATCHED)
    command = " ".join(f"'{a}'" for a in [sys.executable, str(script), *module_args])
    full_env = {**os.environ, **env, "HOME": "/nonexistent", "TMPDIR": "/nonexistent",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(ROOT)]))
    return subprocess.Popen(["sh", "-c", f"rmdir ../{cwd_name} && exec {command}"], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_write_check_sees_writes(tmp_path):
    # The check below must be able to fail: a module that writes a file is caught.
    (tmp_path / "writes_a_file.py").write_text("open('/tmp/' + __import__('uuid').uuid4().hex, 'w').close()\n")
    proc = run_watched(tmp_path, ["writes_a_file"], "cwd", {"PYTHONPATH": str(tmp_path)})
    output, _ = proc.communicate(timeout=30)
    assert "WRITE ATTEMPT open" in output, output


def test_writes_no_file_at_all(tmp_path):
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, [gpu(i) for i in range(2)])
    log = tmp_path / "train.jsonl"
    log.write_text(jsonl(step=1, loss=2.0))
    port = free_port()
    proc = run_watched(tmp_path, ["exporter", "--log", str(log), "--web.listen-address", f"127.0.0.1:{port}",
                                  "--host.filesystem-path", str(tmp_path)],
                       "cwd", fake_nvml_env(scenario))
    exporter = ExporterProcess.__new__(ExporterProcess)  # only for its helpers, on our process
    exporter.proc, exporter.port, exporter.url = proc, port, f"http://127.0.0.1:{port}"
    try:
        exporter.wait_ready()
        with open(log, "a") as handle:
            handle.write(jsonl(step=2, loss=1.5))
        wait_for(lambda: value(exporter.metrics(), "training_step", source="train.jsonl") == 2, 10, "log not read")
        metrics = exporter.metrics()
        for collector in ("training", "gpu", "host", "process"):
            assert value(metrics, "training_exporter_collector_success", collector=collector) == 1, collector
        time.sleep(1.5)  # a few GPU polls and rescans
    finally:
        output = exporter.stop()
    assert proc.returncode == 0, output
    assert "WRITE ATTEMPT" not in output, output
