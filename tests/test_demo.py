"""The quickstart's demo: a simulated run that falls, plateaus and goes NaN, served live."""

from __future__ import annotations

import subprocess
import sys

import requests

from conftest import ROOT, free_port, parse_metrics, value, wait_for


def test_demo_serves_a_run_that_plateaus_then_goes_nan(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--speed", "400", "--dir", str(tmp_path),
         "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert "simulated run writing" in proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/metrics" in proc.stdout.readline()

        def metrics():
            return parse_metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

        # While the simulated job runs, its own process is watched.
        wait_for(lambda: value(metrics(), "training_step", source="train.log") > 0, 30, "no progress")
        running = metrics()
        assert value(running, "training_process_up") == 1
        assert value(running, "training_process_resident_memory_bytes") > 1e6

        wait_for(lambda: value(metrics(), "training_records_total", source="train.log", kind="summary") == 1,
                 30, "the simulated run did not finish")
        m = metrics()
        src = "train.log"
        assert value(m, "training_step", source=src) == 600
        assert value(m, "training_max_steps", source=src) == 600
        # The logged loss stays finite (HF's nan filter) but grad_norm and eval_loss are nan.
        assert value(m, "training_nonfinite_values_total", source=src, key="grad_norm") >= 1
        assert value(m, "training_nonfinite_values_total", source=src, key="validation_loss") >= 1
        assert value(m, "training_validation_evals_since_best", source=src) >= 5
        assert value(m, "training_validation_evals_total", source=src) == 12
        assert value(m, "training_loss", source=src) < 2.0
        assert value(m, "training_log_format_info", source=src, format="huggingface") == 1
        # The job has exited: reported as gone, not silently vanished.
        wait_for(lambda: value(metrics(), "training_process_up") == 0, 10, "finished job not reported gone")
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert proc.returncode == 0
