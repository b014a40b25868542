"""Discovery, sources and readers over real framework output (tests/fixtures/real)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import FIXTURES
from exporter.logs.sources import LogFollower, LogSpec
from exporter.training.signals import SignalSettings
from exporter.training.states import TrainingStates
from exporter.training.vocabulary import Vocabulary

REAL = FIXTURES / "real"


class Following:
    """A follower and the training states it feeds, as the exporter wires them."""

    def __init__(self, specs: list[LogSpec], settings: SignalSettings, **options) -> None:
        self.states = TrainingStates(settings, Vocabulary(), keep_history=True)
        self.follower = LogFollower(specs, self.states, **options)

    @property
    def readers(self):
        return self.follower.readers

    def read_to_end(self) -> None:
        self.follower.read_to_end()

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()


def follow(*specs: LogSpec, **settings) -> Following:
    following = Following(list(specs), SignalSettings(**settings))
    following.read_to_end()
    return following


def test_lightning_rewrite_of_metrics_csv_counts_each_evaluation_once(tmp_path):
    run = tmp_path / "version_0"
    run.mkdir()
    metrics = run / "metrics.csv"
    shutil.copy(REAL / "lightning_metrics_before_rewrite.csv", metrics)
    follower = follow(LogSpec(str(run)))
    assert list(follower.states) == ["version_0"]
    assert follower.states["version_0"].snapshot().evals_total == 1

    # Lightning rewrites the whole file in place when a new key (train_acc) appears.
    with open(metrics, "w") as handle:
        handle.write((REAL / "lightning_metrics.csv").read_text())
    follower.read_to_end()
    snap = follower.states["version_0"].snapshot()
    assert snap.evals_total == 3
    assert snap.best == pytest.approx(0.6109943389892578)
    assert snap.best_step == 8
    assert snap.evals_since_best == 0
    assert snap.values["loss"] == pytest.approx(0.5823924541473389)  # train_loss_step, the last step row
    assert snap.extra["train_acc"] == 0.3125
    reader = next(iter(follower.readers.values()))
    assert reader.stats.resets["rewritten"] == 1
    assert reader.format_name == "lightning_csv"
    follower.stop()


def test_run_directory_is_one_source_with_its_hparams(tmp_path):
    run = tmp_path / "version_3"
    run.mkdir()
    shutil.copy(REAL / "lightning_metrics.csv", run / "metrics.csv")
    shutil.copy(REAL / "lightning_hparams.yaml", run / "hparams.yaml")
    follower = follow(LogSpec(str(tmp_path)))
    assert list(follower.states) == [tmp_path.name]
    snap = follower.states[tmp_path.name].snapshot()
    assert snap.meta_numbers["lr"] == 0.05
    assert snap.meta_numbers["hidden"] == 8
    assert snap.meta_strings["optimizer"] == "sgd"
    assert snap.evals_total == 3
    follower.stop()


def test_only_the_newest_trainer_state_is_followed(tmp_path):
    out = tmp_path / "output"
    (out / "checkpoint-8").mkdir(parents=True)
    shutil.copy(REAL / "hf_trainer_state.json", out / "checkpoint-8" / "trainer_state.json")
    follower = follow(LogSpec(str(out)))
    state = follower.states["output"]
    first = state.snapshot()
    assert first.max_steps == 12
    assert first.step == 12

    # A later checkpoint writes the whole history again, plus what came since.
    import os
    import time

    (out / "checkpoint-12").mkdir()
    shutil.copy(REAL / "hf_trainer_state_final.json", out / "checkpoint-12" / "trainer_state.json")
    future = time.time() + 5
    os.utime(out / "checkpoint-12" / "trainer_state.json", (future, future))
    follower.read_to_end()
    snap = state.snapshot()
    history = json.loads((REAL / "hf_trainer_state_final.json").read_text())["log_history"]
    evals = sum(1 for entry in history if "eval_loss" in entry)
    assert snap.evals_total == evals  # not counted twice
    assert [r.path for r in follower.readers.values()] == [str(out / "checkpoint-12" / "trainer_state.json")]
    follower.stop()


def test_tensorboard_run_directory(tmp_path):
    run = tmp_path / "runs"
    shutil.copytree(REAL / "summarywriter", run)
    follower = follow(LogSpec(str(run)))
    snap = follower.states["runs"].snapshot()
    assert snap.nonfinite.get("loss", 0) >= 1  # the fixture logs a NaN and an inf train/loss
    reader = next(iter(follower.readers.values()))
    assert reader.format_name == "tensorboard"
    assert reader.stats.parse_errors == 0
    follower.stop()


def test_glob_gives_one_source_per_file_and_disambiguates_names(tmp_path):
    for rank in (0, 1):
        d = tmp_path / f"node{rank}"
        d.mkdir()
        (d / "train.log").write_text("iter 10: loss 2.5000, time 50.00ms, mfu 30.00%\n")
    follower = follow(LogSpec(str(tmp_path / "*" / "train.log")))
    assert sorted(follower.states) == ["node1/train.log", "train.log"]
    follower.stop()


CONSOLE = FIXTURES / "console"


@pytest.mark.parametrize("path,expected", [
    (REAL / "hf_console.log", "huggingface"),
    (REAL / "hf_console_nan.log", "huggingface"),
    (REAL / "keras_training.csv", "keras_csv"),
    (REAL / "lightning_metrics.csv", "lightning_csv"),
    (CONSOLE / "hf_transformers4.log", "huggingface"),
    (CONSOLE / "hf_transformers5.log", "huggingface"),
    (CONSOLE / "nanogpt.log", "nanogpt"),
    (CONSOLE / "megatron.log", "megatron"),
    # DeepSpeed's CIFAR-10 example prints its own "[1,   200] loss: 2.117" among DeepSpeed's lines.
    (CONSOLE / "deepspeed.log", "deepspeed,key_value"),
    (CONSOLE / "torchtune.log", "torchtune"),
    (CONSOLE / "fairseq.log", "fairseq"),
    (CONSOLE / "fairseq_hydra_json.log", "fairseq"),
])
def test_logs_are_detected_by_content(path, expected):
    follower = follow(LogSpec(str(path)))
    (reader,) = follower.readers.values()
    assert reader.format_name == expected
    assert reader.stats.parse_errors == 0
    follower.stop()


def test_real_hf_nan_run_is_caught_despite_the_nan_filter():
    follower = follow(LogSpec(str(REAL / "hf_console_nan.log")))
    snap = follower.states["hf_console_nan.log"].snapshot()
    # With logging_nan_inf_filter=True the logged loss never shows the NaN...
    assert all(name != "loss" for _, name in snap.nonfinite_steps)
    # ...but grad_norm and the evaluation do.
    assert snap.nonfinite["grad_norm"] >= 1
    assert snap.nonfinite["validation_loss"] >= 1
    assert snap.step == 12 and snap.max_steps == 12
    follower.stop()


def test_damaged_tensorboard_record_is_counted_and_the_rest_read(tmp_path):
    run = tmp_path / "runs"
    shutil.copytree(REAL / "summarywriter", run)
    (event_file,) = run.iterdir()
    intact = follow(LogSpec(str(run)))
    intact_lines = next(iter(intact.readers.values())).stats.lines
    intact.stop()
    data = bytearray(event_file.read_bytes())
    # Damage the value of one scalar record in the middle: its data checksum no longer holds.
    tag = data.find(b"train/loss", 300)
    assert tag > 0
    data[tag + len(b"train/loss") + 1] ^= 0xFF
    event_file.write_bytes(bytes(data))
    follower = follow(LogSpec(str(run)))
    reader = next(iter(follower.readers.values()))
    assert reader.stats.parse_errors >= 1
    assert 0 < reader.stats.lines < intact_lines
    follower.stop()


def test_megatron_nan_iteration_counts_as_a_nan_loss():
    follower = follow(LogSpec(str(CONSOLE / "megatron.log")))
    snap = follower.states["megatron.log"].snapshot()
    assert snap.nonfinite["loss"] == 1  # the iteration line had no "lm loss" and 1 nan iteration
    assert snap.max_steps is not None
    follower.stop()


def test_oom_traceback_is_one_event():
    follower = follow(LogSpec(str(CONSOLE / "oom_traceback.log")))
    # torchrun's "[rank0]:" prefix names the rank whose traceback it is.
    assert follower.states.get("oom_traceback.log", "0").snapshot().events["oom"] == 1
    assert follower.states["oom_traceback.log"].snapshot().events["oom"] == 0
    follower.stop()


def test_follows_by_polling_where_inotify_is_missing(tmp_path):
    import time

    log = tmp_path / "train.log"
    log.write_text("iter 1: loss 2.0000, time 50.00ms, mfu 30.00%\n")
    follower = Following([LogSpec(str(log))], SignalSettings(), poll_interval=0.05)
    follower.follower._waker.close()  # as on a system without inotify: the follower falls back to polling
    assert not follower.follower._waker.uses_inotify
    follower.start()
    try:
        with open(log, "a") as handle:
            handle.write("iter 2: loss 1.5000, time 50.00ms, mfu 30.00%\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (follower.states.get("train.log") is None
                                               or follower.states["train.log"].snapshot().step != 2):
            time.sleep(0.02)
        assert follower.states["train.log"].snapshot().values["loss"] == 1.5
    finally:
        follower.stop()
