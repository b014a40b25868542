"""Training semantics: plateau (EarlyStopping's rule), non-finite values, spikes, progress."""

from __future__ import annotations

import math

import pytest

from exporter.logs.formats.base import Event, Kind, Record
from exporter.training.signals import SignalSettings, SourceState
from exporter.training.vocabulary import Vocabulary, normalise


def state(**settings) -> SourceState:
    return SourceState(SignalSettings(**settings), Vocabulary(), keep_history=True)


def evaluate(s: SourceState, values: list[float], key: str = "eval_loss", start_step: int = 100) -> None:
    for i, v in enumerate(values):
        s.apply(Record(values={key: v}, kind=Kind.EVAL, step=start_step * (i + 1)), observed_at=1000.0 + i)


def test_plateau_counts_evaluations_since_best():
    s = state()
    evaluate(s, [2.0, 1.5, 1.4, 1.41, 1.42, 1.40, 1.45])
    snap = s.snapshot()
    assert snap.best == 1.4
    assert snap.best_step == 300
    assert snap.evals_since_best == 4
    assert snap.evals_total == 7


def test_min_delta_requires_a_real_improvement():
    s = state(min_delta=0.01)
    evaluate(s, [1.0, 0.995, 0.991, 0.989])
    snap = s.snapshot()
    # 0.995 and 0.991 are within min_delta of 1.0; 0.989 beats 1.0 by more than 0.01.
    assert snap.best == 0.989
    assert snap.evals_since_best == 0


def test_improvement_exactly_min_delta_is_not_enough():
    s = state(min_delta=0.5)
    evaluate(s, [2.0, 1.5])
    assert s.snapshot().evals_since_best == 1
    assert s.snapshot().best == 2.0


def test_mode_max_for_accuracy():
    s = state(monitor="eval_accuracy", mode="max")
    evaluate(s, [0.5, 0.7, 0.69, 0.71], key="eval_accuracy")
    snap = s.snapshot()
    assert snap.best == 0.71
    assert snap.evals_since_best == 0


def test_nan_validation_loss_is_never_an_improvement_and_is_counted():
    s = state()
    evaluate(s, [2.0, float("nan"), 1.9])
    snap = s.snapshot()
    assert snap.best == 1.9
    assert snap.nonfinite == {"validation_loss": 1}
    assert snap.nonfinite_steps == [(200, "validation_loss")]


def test_nonfinite_counted_for_any_key_and_hf_filter_case():
    s = state()
    # logging_nan_inf_filter=True: the logged loss stays finite while grad_norm is nan.
    s.apply(Record(values={"loss": 1.2, "grad_norm": float("nan"), "learning_rate": 1e-5}), 10.0)
    s.apply(Record(values={"my_metric": float("inf")}), 11.0)
    snap = s.snapshot()
    assert snap.nonfinite == {"grad_norm": 1, "my_metric": 1}
    assert snap.values["loss"] == 1.2
    assert math.isnan(snap.values["grad_norm"])


def test_summary_does_not_pose_as_the_current_loss():
    s = state()
    s.apply(Record(values={"loss": 0.9}, step=10), 1.0)
    s.apply(Record(values={"train_loss": 1.7, "train_runtime": 12.0}, kind=Kind.SUMMARY), 2.0)
    snap = s.snapshot()
    assert snap.values["loss"] == 0.9
    assert snap.extra["summary_train_loss"] == 1.7
    assert snap.extra["summary_train_runtime"] == 12.0


def test_spike_against_median_baseline():
    s = state(spike_window=10, spike_min_points=5, spike_factor=2.0)
    for step, loss in enumerate([1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 2.5, 1.0, 1.9], start=1):
        s.apply(Record(values={"loss": loss}, step=step), float(step))
    snap = s.snapshot()
    assert snap.spikes_total == 1  # 2.5 >= 2 x 1.0; 1.9 is below 2 x median
    assert snap.loss_baseline == pytest.approx(1.0)


def test_no_spike_judged_before_enough_points():
    s = state(spike_min_points=5)
    for step, loss in enumerate([1.0, 5.0, 9.0], start=1):
        s.apply(Record(values={"loss": loss}, step=step), float(step))
    assert s.snapshot().spikes_total == 0


def test_progress_time_moves_only_when_the_step_advances():
    s = state()
    s.apply(Record(values={"loss": 1.0}, step=10), 100.0)
    s.apply(Record(values={"loss": 1.0}, step=10), 150.0)
    assert s.snapshot().last_progress_time == 100.0
    s.apply(Record(values={"loss": 1.0}, step=20), 110.0 + 100)
    snap = s.snapshot()
    assert snap.last_progress_time == 210.0
    assert snap.steps_per_second == pytest.approx(10 / 110)


def test_progress_bar_gives_steps_when_the_dialect_has_none():
    s = state()
    s.apply(Record(progress=(50, 1000)), 10.0)
    s.apply(Record(progress=(3, 8)), 11.0)  # an evaluation bar: shorter, ignored
    s.apply(Record(progress=(60, 1000)), 12.0)
    snap = s.snapshot()
    assert snap.step == 60
    assert snap.max_steps == 1000
    assert snap.steps_per_second == pytest.approx(5.0)


def test_rewritten_file_does_not_count_twice():
    s = state()
    evaluate(s, [2.0, 2.1])
    s.apply(Record(values={"loss": float("nan")}, step=150), 5.0)
    s.mark_rewritten()
    # The same history read again from the top, then one new evaluation.
    evaluate(s, [2.0, 2.1])
    s.apply(Record(values={"loss": float("nan")}, step=150), 5.0)
    evaluate(s, [2.2], start_step=300)
    snap = s.snapshot()
    assert snap.evals_total == 3
    assert snap.evals_since_best == 2
    assert snap.nonfinite == {"loss": 1}


def test_events_are_counted():
    s = state()
    s.apply(Record(event=Event.OOM), 1.0)
    s.apply(Record(event=Event.OOM), 2.0)
    s.apply(Record(event=Event.LOSS_SCALE_OVERFLOW), 3.0)
    assert s.snapshot().events == {"oom": 2, "loss_scale_overflow": 1}


def test_key_limit_drops_and_counts():
    s = state(max_keys=3)
    s.apply(Record(values={f"k{i}": float(i) for i in range(10)} | {"loss": 1.0}, step=1), 1.0)
    snap = s.snapshot()
    assert len(snap.extra) == 3
    assert snap.dropped_keys_total == 7
    assert snap.values["loss"] == 1.0  # canonical values are never dropped


def test_meta_numbers_strings_and_limits():
    s = state()
    s.apply(Record(meta={"max_steps": 5000, "train_batch_size": 8, "optimizer": "adamw",
                         "notes": "x" * 500, "lr_schedule": "cos\nine"}), 1.0)
    snap = s.snapshot()
    assert snap.max_steps == 5000
    assert snap.meta_numbers == {"max_steps": 5000.0, "train_batch_size": 8.0}
    assert snap.meta_strings == {"optimizer": "adamw"}


@pytest.mark.parametrize("raw,kind,expected", [
    ("eval_loss", Kind.EVAL, "validation_loss"),
    ("val_loss", Kind.EVAL, "validation_loss"),
    ("val loss", Kind.EVAL, "validation_loss"),
    ("valid_loss", Kind.EVAL, "validation_loss"),
    ("lm loss value", Kind.EVAL, "validation_loss"),
    ("loss", Kind.EVAL, "validation_loss"),
    ("eval/loss", Kind.EVAL, "validation_loss"),
    ("loss", Kind.TRAIN, "loss"),
    ("lm loss", Kind.TRAIN, "loss"),
    ("train/loss", Kind.TRAIN, "loss"),
    ("train loss", Kind.EVAL, "loss"),
    ("grad norm", Kind.TRAIN, "grad_norm"),
    ("gnorm", Kind.TRAIN, "grad_norm"),
    ("lr", Kind.TRAIN, "learning_rate"),
    ("learning_rate", Kind.TRAIN, "learning_rate"),
    ("train/learning_rate", Kind.TRAIN, "learning_rate"),
    ("eval_accuracy", Kind.EVAL, "eval_accuracy"),
    ("Some Weird/Key!", Kind.TRAIN, "some_weird_key"),
])
def test_vocabulary(raw, kind, expected):
    assert Vocabulary().name(raw, kind) == expected


def test_vocabulary_extra_aliases_and_bounded_names():
    vocab = Vocabulary({"validation_loss": ["holdout nll"]})
    assert vocab.name("holdout_nll", Kind.EVAL) == "validation_loss"
    assert len(normalise("k" * 500)) == 64
    assert normalise('a"b\nc{}=') == "a_b_c"


def test_the_same_nan_reported_twice_at_one_step_counts_once():
    s = state()
    # torchtune's console: the bar "1|3|Loss: nan" is redrawn beside "Step 3 | loss:nan".
    s.apply(Record(values={"Loss": float("nan")}, step=3), 1.0)
    s.apply(Record(values={"loss": float("nan")}, step=3), 1.0)
    s.apply(Record(values={"Loss": float("nan")}, step=3), 1.1)
    s.apply(Record(values={"loss": float("nan")}, step=4), 1.2)
    assert s.snapshot().nonfinite == {"loss": 2}
