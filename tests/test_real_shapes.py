"""Every console shape of the real runs in tests/fixtures/real/, read with no config through the
real reading path, against what the framework itself recorded in the same run (<name>.truth.json):
last step, last loss, evaluations, best validation loss, evaluations since best, which keys were
non-finite and how often, and the last epoch.

Where the console cannot show what the framework recorded, CONSOLE_SHOWS says what it shows
instead and why; nothing else is left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dialect_checks import assert_only_its_owner_reads, payloads
from exporter.app import LogReading
from exporter.config import Config, LogConfig

REAL = Path(__file__).parent / "fixtures" / "real"

# fixture -> (the dialect(s) that read it, the rank whose state holds it, the printed precision
# of its values: (relative, absolute) tolerance).
SHAPES = {
    "keras/fit_verbose1": ("keras", None, (0, 5e-5)),
    "keras/fit_verbose1_nan": ("keras", None, (0, 5e-5)),
    "keras/fit_verbose2": ("keras", None, (0, 5e-5)),
    "keras/fit_verbose2_nan": ("keras", None, (0, 5e-5)),
    "lightning/tqdm": ("lightning", None, (5e-3, 0)),
    "lightning/tqdm_nan": ("lightning", None, (5e-3, 0)),
    "lightning/rich": ("lightning", None, (0, 5e-4)),
    "lightning/rich_nan": ("lightning", None, (0, 5e-4)),
    "hf/example_script": ("huggingface", None, (5e-4, 0)),
    "hf/logged_dicts": ("huggingface", None, (0, 0)),
    "hf/nan_unfiltered": ("huggingface", None, (5e-4, 0)),
    "hf/torchrun": ("huggingface", "0", (5e-4, 0)),
    "mmengine/runner": ("mmengine", None, (0, 5e-5)),
    "mmengine/runner_nan": ("mmengine", None, (0, 5e-5)),
    "plain/epoch_step": ("key_value", None, (0, 5e-5)),
    "plain/epoch_step_nan": ("key_value", None, (0, 5e-5)),
    "plain/key_equals": ("key_value", None, (0, 5e-5)),
    "plain/key_equals_nan": ("key_value", None, (0, 5e-5)),
    "plain/step_colon": ("key_value", None, (0, 5e-3)),
    "plain/step_colon_nan": ("key_value", None, (0, 5e-3)),
    "plain/epoch_batch": ("key_value", None, (0, 5e-4)),
    "plain/epoch_batch_nan": ("key_value", None, (0, 5e-4)),
    "plain/nested_json": ("jsonl", None, (0, 0)),
    "plain/nested_json_nan": ("jsonl", None, (0, 0)),
    "plain/epoch_table": ("table", None, (0, 5e-5)),
    "plain/epoch_table_nan": ("table", None, (0, 5e-5)),
}

# What the console shows where it cannot show what the framework recorded.
CONSOLE_SHOWS = {
    # The bar counts batches within the epoch: no global step anywhere in the console.
    "lightning/tqdm": {"last_step": None},
    "lightning/tqdm_nan": {"last_step": None},
    # RichProgressBar through a pipe prints only its final state: one training loss and one
    # validation loss, the last ones.
    "lightning/rich": {"last_step": None, "evaluations": 1, "best_validation_loss": 0.068, "evals_since_best": 0},
    "lightning/rich_nan": {"last_step": None, "evaluations": 1, "best_validation_loss": None, "evals_since_best": 1,
                           "nonfinite": {"train_loss": 1, "val_loss": 1}},
    # disable_tqdm: no bar, and the Trainer's dicts carry no step.
    "hf/logged_dicts": {"last_step": None},
}

# The framework's key names -> the exporter's, where they differ.
NAMES = {
    "hf": {"eval_loss": "validation_loss", "train_loss": "summary_train_loss"},  # train_loss: the end-of-run mean
    "lightning": {"train_loss": "loss", "val_loss": "validation_loss"},
}
NAMES_ELSEWHERE = {"val_loss": "validation_loss"}


def mmengine_validation(name: str) -> tuple[float | None, int]:
    """MMEngine's validation losses as it recorded them in vis_data/scalars.json (the entries
    without an iteration), which is also what it prints: the best and the evaluations since.
    (truth.json took them from the runner's message hub, whose 'val/loss' holds other values.)"""
    losses = [entry["loss"] for entry in map(json.loads, (REAL / f"{name}_scalars.json").read_text().splitlines())
              if "iter" not in entry]
    best, best_at = math.inf, -1
    for index, loss in enumerate(losses):
        if loss < best:
            best, best_at = loss, index
    return (best, len(losses) - 1 - best_at) if best_at >= 0 else (None, len(losses))


def expected(name: str) -> dict:
    truth = json.loads((REAL / f"{name}.truth.json").read_text())
    truth.update(CONSOLE_SHOWS.get(name, {}))
    if name.startswith("mmengine/"):
        truth["best_validation_loss"], truth["evals_since_best"] = mmengine_validation(name)
    names = NAMES.get(name.split("/")[0], NAMES_ELSEWHERE)
    truth["nonfinite"] = {names.get(key, key): count for key, count in truth["nonfinite"].items()}
    return truth


def number(value) -> float | None:
    return None if value is None else float(value)  # "nan", "inf" too


def close(got: float | None, want: float | None, tolerance: tuple[float, float]) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if math.isnan(want):
        return math.isnan(got)
    relative, absolute = tolerance
    return math.isclose(got, want, rel_tol=relative, abs_tol=absolute) or got == want


def read(path: Path, **settings) -> LogReading:
    reading = LogReading(Config(logs=[LogConfig(path=str(path), **settings)]), keep_history=True)
    reading.read_to_end()
    reading.follower.stop()
    return reading


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_console_log_agrees_with_what_the_framework_recorded(name):
    dialects, rank, tolerance = SHAPES[name]
    want = expected(name)
    path = REAL / f"{name}.log"
    reading = read(path)
    (file,) = reading.follower.files()
    assert file.format == dialects
    snap = reading.states.get(path.name, rank).snapshot()

    assert snap.step == want["last_step"]
    assert close(snap.values.get("loss"), number(want["last_loss"]), tolerance), snap.values.get("loss")
    assert snap.evals_total == want["evaluations"]
    assert close(snap.best, number(want["best_validation_loss"]), tolerance), snap.best
    assert (snap.evals_since_best if snap.evals_total else None) == want["evals_since_best"]
    assert snap.nonfinite == want["nonfinite"]
    assert snap.values.get("epoch") == want["last_epoch"]


def test_logged_dicts_read_once_and_after_the_logging_prefix():
    """The callback's logger.info(logs) line (with its logging prefix) and the Trainer's own line
    after it are one record: each loss counted once, at full precision."""
    reading = read(REAL / "hf" / "logged_dicts.log")
    snap = reading.states.get("logged_dicts.log").snapshot()
    assert snap.records == {"train": 12, "eval": 3, "summary": 1}
    assert snap.values["loss"] == 3.8712105751037598  # the logging line's, not '3.871'


@pytest.mark.parametrize("name", ["pip_install", "traceback", "transformers_warnings", "torch_warnings"])
def test_output_that_is_not_metrics_yields_nothing(name):
    reading = read(REAL / "noise" / f"{name}.log")
    (file,) = reading.follower.files()
    snap = reading.states.get(f"{name}.log").snapshot()
    assert file.lines > 0 and file.ignored == file.lines and file.format == "undetected"
    assert (snap.values, snap.extra, snap.step, snap.progress_total, snap.meta_numbers) == ({}, {}, None, None, {})
    assert sum(snap.records.values()) == 0 and snap.last_record_time is None


# A real line of each shape's fixture, and the dialect that owns it.
OWNERS = {"keras": "keras", "lightning": "lightning", "hf": "huggingface", "mmengine": "mmengine"}


@pytest.mark.parametrize("path", sorted(p for folder in (*OWNERS, "noise") for p in (REAL / folder).glob("*.log")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_dialect_claims_another_frameworks_lines(path):
    """Every payload of every real framework log through every console dialect: only its own
    dialect finds values in it (a general dialect only where the owner does not), and none calls
    a noise line its own."""
    owner = OWNERS.get(path.parent.name)
    for line in payloads(path.read_text(encoding="utf-8", errors="replace")):
        assert_only_its_owner_reads(line, owner, path.name)


def test_tensorboard_summary_scalar_does_not_replace_the_last_loss():
    """report_to="tensorboard": the run's mean loss (train/train_loss) is an end-of-run summary;
    the last training loss stays the last one logged, and the evaluate() after training, in the
    run folder's second event file, is the fourth evaluation."""
    truth = expected("hf/example_script")
    reading = read(REAL / "hf" / "example_script_tensorboard")
    snap = reading.states.get("example_script_tensorboard").snapshot()
    assert snap.values["loss"] == pytest.approx(truth["last_loss"], rel=1e-6)  # float32 in the event file
    assert snap.extra["summary_train_train_loss"] == pytest.approx(3.8824973106384277, rel=1e-6)
    assert snap.step == truth["last_step"]
    assert (snap.evals_total, snap.evals_since_best) == (truth["evaluations"], truth["evals_since_best"])
    assert snap.best == pytest.approx(truth["best_validation_loss"], rel=1e-6)


@pytest.mark.parametrize("name, fmt", [("run1.tfevents", "tensorboard"), ("run1_trainer_state.json", "trainer_state")])
def test_files_recognised_by_content_whatever_their_name(name, fmt):
    truth = expected("hf/example_script")
    reading = read(REAL / "detect" / name)
    (file,) = reading.follower.files()
    assert file.format == fmt
    snap = reading.states.get(name).snapshot()
    assert snap.step == truth["last_step"]
    assert snap.values["loss"] == pytest.approx(truth["last_loss"], rel=1e-6)
    assert snap.evals_total == 3  # the three evaluations during training (evaluate() after it is elsewhere)
