"""The training-loss plateau: each epoch's best training loss against the best of the epochs
before it, with its own patience and min_delta, apart from the validation plateau."""

from __future__ import annotations

import math

from conftest import value
from exporter.logs.formats.base import Kind, Record
from exporter.training.signals import SignalSettings, SourceState
from exporter.training.vocabulary import Vocabulary


def state(**settings) -> SourceState:
    return SourceState(SignalSettings(**settings), Vocabulary())


def train(s: SourceState, losses_by_epoch: list[list[float]], per_epoch_steps: int = 10) -> None:
    """Each epoch's losses, logged with a fractional epoch as the Hugging Face Trainer logs it."""
    for epoch, losses in enumerate(losses_by_epoch):
        for i, loss in enumerate(losses):
            s.apply(Record(values={"loss": loss, "epoch": epoch + i / len(losses)},
                           step=epoch * per_epoch_steps + i), observed_at=1000.0)


def test_each_epoch_is_judged_by_its_best_loss_once_it_is_over():
    s = state()
    # Noisy within each epoch; the epochs' best: 2.0, 1.5, 1.6, 1.5, 1.55, then an unfinished epoch.
    train(s, [[2.4, 2.0, 2.2], [1.9, 1.5, 1.7], [1.6, 1.8, 1.9], [1.7, 1.5, 1.6], [1.55, 1.9, 1.6], [0.5]])
    snap = s.snapshot()
    assert snap.loss_best == 1.5
    assert snap.loss_epochs_total == 5  # the sixth is not over: its 0.5 is not judged yet
    assert snap.loss_epochs_since_best == 3  # 1.6, 1.5 (not better than 1.5) and 1.55
    assert snap.evals_since_best == 0 and snap.best is None  # the validation plateau is apart


def test_min_delta_asks_for_a_real_improvement():
    s = state(loss_min_delta=0.1)
    train(s, [[2.0], [1.95], [1.85], [1.5], [9.9]])
    snap = s.snapshot()
    assert snap.loss_best == 1.5  # 1.95 and 1.85 within 0.1 of 2.0 were no improvement; 1.5 was
    assert snap.loss_epochs_since_best == 0


def test_an_epoch_of_nothing_but_nan_is_no_improvement():
    s = state()
    train(s, [[2.0], [math.nan, math.inf, -math.inf], [1.9]])
    s.apply(Record(values={"loss": 1.0, "epoch": 3.0}, step=30), observed_at=1000.0)  # closes epoch 2
    snap = s.snapshot()
    assert snap.loss_epochs_total == 3
    assert snap.loss_best == 1.9 and snap.loss_epochs_since_best == 0
    assert snap.nonfinite == {"loss": 3}


def test_without_epochs_windows_of_steps_count_as_epochs():
    s = state(loss_window_steps=100, loss_patience=2)
    for step in range(0, 600, 10):  # improves over the first 300 steps, then stays flat
        s.apply(Record(values={"loss": max(1.0, 3.0 - step / 100)}, step=step), observed_at=1000.0)
    snap = s.snapshot()
    assert snap.loss_epochs_total == 5  # windows 0..4 are over, window 5 is being gathered
    assert snap.loss_best == 1.0  # window 2 reached 1.0 (step 200) ...
    assert snap.loss_epochs_since_best == 2  # ... and windows 3 and 4 did no better


def test_without_epochs_or_steps_each_training_loss_counts_as_a_step():
    s = state(loss_window_steps=3)
    for loss in [3.0, 2.0, 1.0, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 5.0]:
        s.apply(Record(values={"loss": loss}), observed_at=1000.0)
    snap = s.snapshot()
    # Windows of three losses: [3, 2] (the first window holds losses 1-2), [1, 1.5, 1.4], [1.3, 1.2, 1.1], [1, 5]
    assert snap.loss_epochs_total == 3
    assert snap.loss_best == 1.0 and snap.loss_epochs_since_best == 1


def test_a_line_without_the_epoch_in_a_log_that_gives_it_joins_the_current_epoch():
    s = state()
    train(s, [[2.0], [1.5]])
    s.apply(Record(values={"loss": 0.1}, step=999), observed_at=1000.0)  # no epoch: still epoch 1
    s.apply(Record(values={"loss": 1.8, "epoch": 2.0}, step=1000), observed_at=1000.0)
    snap = s.snapshot()
    assert snap.loss_epochs_total == 2 and snap.loss_best == 0.1


def test_evaluation_losses_do_not_count():
    s = state()
    train(s, [[2.0], [1.5]])
    s.apply(Record(values={"eval_loss": 0.1, "epoch": 1.5}, kind=Kind.EVAL, step=15), observed_at=1000.0)
    train(s, [[], [], [1.8]])
    assert s.snapshot().loss_best == 1.5


def test_served_with_its_patience(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    lines = [f'{{"step": {e * 10 + i}, "epoch": {e + i / 2}, "loss": {loss}}}'
             for e, loss in enumerate([2.0, 1.5, 1.5, 1.49, 1.6, 1.0]) for i in range(2)]
    log.write_text("\n".join(lines) + "\n")
    exporter = exporter_process("--log", str(log), "--signals.loss-patience", "3", "--signals.loss-min-delta", "0.05",
                                "--no-collector.gpu", "--no-collector.host", "--no-collector.process")
    metrics = exporter.metrics()
    assert value(metrics, "training_loss_best", source="train.jsonl") == 1.5
    assert value(metrics, "training_loss_epochs_since_best", source="train.jsonl") == 3
    assert value(metrics, "training_loss_epochs_total", source="train.jsonl") == 5
    assert value(metrics, "training_loss_patience", source="train.jsonl") == 3
