"""``training-exporter inspect``: what a user sees before deploying."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import FIXTURES, ROOT


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "inspect", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_json_report_of_a_real_nan_run():
    result = inspect(str(FIXTURES / "real" / "hf_console_nan.log"), "--json")
    assert result.returncode == 0, result.stderr
    (source,) = json.loads(result.stdout)["sources"]
    assert source["files"][0]["format"] == "huggingface"
    assert source["files"][0]["parse_errors"] == 0
    validation = source["validation"]
    assert validation["evaluations"] == 3
    assert validation["best"] < 4.0 and validation["best_step"] is not None
    keys = {k["key"]: k for k in source["keys"]}
    assert keys["grad_norm"]["nonfinite"] >= 1
    assert keys["validation_loss"]["last"] == "nan"
    assert {"key": "validation_loss", "step": 12} in source["nonfinite"]


def test_text_report_shows_plateau_oom_and_examples(tmp_path):
    log = tmp_path / "train.log"
    lines = [f"step {i * 100}: train loss {2 - i * 0.01:.4f}, val loss {v:.4f}"
             for i, v in enumerate([2.0, 1.5, 1.52, 1.51, 1.55, 1.6, 1.58], start=1)]
    lines += ["iter 800: loss 1.2000, time 50.00ms, mfu 30.00%",
              "some unrelated warning",
              "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
              "of 79.11 GiB of which 1.12 GiB is free."]
    log.write_text("\n".join(lines) + "\n")
    result = inspect(str(log), "--signals.patience", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "format nanogpt" in out
    assert "best validation_loss: 1.5 at step 200" in out
    assert "5 evaluation(s) since best, patience 5 → PLATEAU" in out
    assert "OOM events: 1" in out
    assert "not understood: 'some unrelated warning'" in out
    assert "non-finite values: none" in out


def test_min_delta_flag_changes_the_verdict(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"step {i}: train loss 1.0, val loss {1.0 - i * 0.001:.4f}\n" for i in range(1, 8)))
    improving = json.loads(inspect(str(log), "--json").stdout)["sources"][0]["validation"]
    assert improving["evals_since_best"] == 0
    flat = json.loads(inspect(str(log), "--json", "--signals.min-delta", "0.01").stdout)["sources"][0]["validation"]
    assert flat["evals_since_best"] == 6 and flat["plateau"] is True
