"""``training-exporter inspect``: what a user sees before deploying."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_real_shapes import SHAPES, close, expected, number

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


# One example of each shape the reading path learnt to read with no config.
NEW_SHAPES = ["keras/fit_verbose1_nan", "keras/fit_verbose2", "lightning/tqdm_nan", "lightning/rich",
              "hf/example_script", "hf/logged_dicts", "mmengine/runner_nan", "plain/epoch_step_nan",
              "plain/key_equals_nan", "plain/step_colon_nan", "plain/epoch_batch_nan", "plain/nested_json_nan",
              "plain/epoch_table_nan"]


@pytest.mark.parametrize("name", NEW_SHAPES)
def test_inspect_shows_what_the_framework_recorded(name):
    result = inspect(str(FIXTURES / "real" / f"{name}.log"), "--json")
    assert result.returncode == 0, result.stderr
    (source,) = [s for s in json.loads(result.stdout)["sources"] if s["rank"] is None]
    dialect, _rank, tolerance = SHAPES[name]
    want = expected(name)
    assert source["files"][0]["format"] == dialect
    keys = {k["key"]: k for k in source["keys"]}
    loss = keys["loss"]["last"]
    assert close(number(loss), number(want["last_loss"]), tolerance), loss
    validation = source["validation"]
    assert validation["evaluations"] == want["evaluations"]
    assert close(number(validation["best"]), number(want["best_validation_loss"]), tolerance)
    assert validation["evals_since_best"] == want["evals_since_best"]
    assert source["last_step"] == want["last_step"]
    assert {k: v["nonfinite"] for k, v in keys.items() if v["nonfinite"]} == want["nonfinite"]


def readme_regex_config() -> str:
    """The config the README gives as the regex format's example."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Your own format: `regex`"):]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


def test_inspect_checks_the_readme_regex_example_on_a_sample(tmp_path):
    """inspect --config FILE SAMPLE reads the sample as the config's log: its regex patterns
    (one giving the loss and the validation loss from a Keras-like line, one naming the step)."""
    config = tmp_path / "exporter.yaml"
    config.write_text(readme_regex_config())
    sample = tmp_path / "sample.log"
    sample.write_text("64/64 - 0s - 3ms/step - loss: 0.0238 - val_loss: 0.0100\n"
                      "2026-12-01 10:00:00 [INFO] step 120 | loss 0.41\n"
                      "test accuracy 0.93\n"
                      "an unrelated line\n")
    result = inspect("--config", str(config), str(sample), "--json")
    assert result.returncode == 0, result.stderr
    (source,) = json.loads(result.stdout)["sources"]
    assert source["files"][0]["format"] == "regex" and source["files"][0]["not_understood"] == 1
    assert source["records"] == {"train": 2, "eval": 2, "summary": 0}
    assert source["last_step"] == 120
    keys = {k["key"]: k["last"] for k in source["keys"]}
    assert (keys["loss"], keys["validation_loss"], keys["accuracy"]) == (0.41, 0.01, 0.93)
    assert source["validation"]["best"] == 0.01


def test_inspect_reads_the_logs_of_a_config_and_forces_a_format(tmp_path):
    log = tmp_path / "fit.log"
    log.write_text((FIXTURES / "real" / "keras" / "fit_verbose2.log").read_text())
    config = tmp_path / "exporter.yaml"
    config.write_text(f"logs:\n  - path: {log}\n    source: keras-run\n")
    (source,) = json.loads(inspect("--config", str(config), "--json").stdout)["sources"]
    assert source["source"] == "keras-run" and source["files"][0]["format"] == "keras"
    forced = json.loads(inspect("--config", str(config), "--format", "key_value", "--json").stdout)["sources"][0]
    assert forced["files"][0]["format"] == "key_value" and forced["records"]["train"] == 0


def test_inspect_without_logs_is_a_one_line_usage_error(tmp_path):
    result = inspect()
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--config" in result.stderr
    config = tmp_path / "exporter.yaml"
    config.write_text("log_level: info\n")
    result = inspect("--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "has no logs" in result.stderr


def test_inspect_report_has_no_evaluations_since_best_before_any_evaluation():
    result = inspect(str(FIXTURES / "real" / "plain" / "epoch_batch.log"), "--json")
    validation = json.loads(result.stdout)["sources"][0]["validation"]
    assert (validation["evaluations"], validation["evals_since_best"], validation["plateau"]) == (0, None, False)
