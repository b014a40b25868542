"""The structured parsers against files written by real framework runs.

The files in tests/fixtures/real/ come from tests/fixtures/generate_real_fixtures.py (versions in
VERSIONS.txt there). Numbers asserted here are the deterministic ones (seeded losses, steps,
counts); timings differ from one generation to the next.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from exporter.logs.formats.base import Kind, Record
from exporter.logs.formats.csvlog import KerasCsv, LightningCsv
from exporter.logs.formats.hparams import parse_hparams_yaml
from exporter.logs.formats.tfevents import TfEventsDecoder, parse_bytes
from exporter.logs.formats.trainer_state import parse_trainer_state

REAL = Path(__file__).parent / "fixtures" / "real"


def read(name: str) -> bytes:
    return (REAL / name).read_bytes()


def lines(name: str) -> list[str]:
    return read(name).decode().splitlines(keepends=True)


def feed(parser, text_lines: list[str]) -> list[Record]:
    out = []
    for line in text_lines:
        out += parser.parse(line)
    return out


def f32(x: float) -> float:
    """What a TensorBoard simple_value holds for x."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_versions_recorded():
    text = read("VERSIONS.txt").decode()
    for name in ("torch==2.13.0", "lightning==", "transformers==", "keras==", "tensorboard=="):
        assert name in text


# ------------------------------------------------------------------------------ Lightning


class TestLightning:
    def test_rewritten_metrics_csv(self):
        recs = feed(LightningCsv(), lines("lightning_metrics.csv"))
        # 3 epochs x (3 train steps + 1 val row + 1 train epoch-end row)
        assert len(recs) == 15
        evals = [r for r in recs if r.kind is Kind.EVAL]
        assert [r.step for r in evals] == [2, 5, 8]
        assert all(set(r.values) == {"val_loss", "epoch"} for r in evals)
        assert evals[0].values == {"val_loss": 0.788091778755188, "epoch": 0.0}
        first = recs[0]
        assert first.kind is Kind.TRAIN and first.step == 0
        assert first.values == {"train_loss_step": 1.1732702255249023, "epoch": 0.0}
        epoch_ends = [r for r in recs if "train_loss_epoch" in r.values]
        assert [(r.step, r.kind) for r in epoch_ends] == [(2, Kind.TRAIN), (5, Kind.TRAIN),
                                                          (8, Kind.TRAIN)]
        # train_acc is logged from the second epoch on: that is what forced the rewrite.
        with_acc = [r.step for r in recs if "train_acc" in r.values]
        assert with_acc == [3, 4, 5, 6, 7, 8]
        assert recs[5].values == {"train_acc": 0.5, "train_loss_step": 1.0460792779922485,
                                  "epoch": 1.0}

    def test_rewrite_keeps_earlier_rows(self):
        before = feed(LightningCsv(), lines("lightning_metrics_before_rewrite.csv"))
        after = feed(LightningCsv(), lines("lightning_metrics.csv"))
        assert lines("lightning_metrics_before_rewrite.csv")[0].strip() == (
            "epoch,step,train_loss_epoch,train_loss_step,val_loss")
        assert lines("lightning_metrics.csv")[0].startswith("epoch,step,train_acc,")
        assert len(before) == 5
        assert repr(after[:5]) == repr(before)

    def test_one_parser_that_missed_the_truncation(self):
        # A reader that did not notice the rewrite sees the new header mid-stream.
        parser = LightningCsv()
        both = lines("lightning_metrics_before_rewrite.csv") + lines("lightning_metrics.csv")
        recs = feed(parser, both)
        assert len(recs) == 5 + 15
        assert "train_acc" in parser.header

    def test_hparams_yaml_with_python_tuple_tag(self):
        raw = read("lightning_hparams.yaml")
        assert b"!!python/tuple" in raw  # the real file has the tag that safe_load rejects
        assert parse_hparams_yaml(raw) == {
            "hidden": 8.0, "lr": 0.05, "optimizer": "sgd",
            "schedule.kind": "linear", "schedule.warmup": 2.0,
        }


# ------------------------------------------------------------------------------------ Keras


def test_keras_csv_na_and_list_cells():
    raw = lines("keras_training.csv")
    assert "NA" in raw[1] and '"""[' in raw[1]
    recs = feed(KerasCsv(), raw)
    # No global step in the file: the epoch is each record's value, and no record has a step.
    assert [(r.kind, r.step, r.values["epoch"]) for r in recs] == [
        (Kind.TRAIN, None, 0), (Kind.TRAIN, None, 1), (Kind.EVAL, None, 1), (Kind.TRAIN, None, 2),
        (Kind.TRAIN, None, 3), (Kind.EVAL, None, 3),
    ]
    assert recs[0].values == {"accuracy": 0.5416666865348816, "learning_rate": 0.009999999776482582,
                              "loss": 0.9606685042381287, "epoch": 0.0}
    assert recs[2].values == {"val_accuracy": 0.5625, "val_loss": 0.8248236179351807, "epoch": 1.0}
    assert not any("f1_score" in k for r in recs for k in r.values)  # list-valued: skipped


# ------------------------------------------------------------------------- HF trainer_state


class TestTrainerState:
    def test_last_checkpoint(self):
        records, meta = parse_trainer_state(read("hf_trainer_state.json"))
        assert meta == {"global_step": 12.0, "max_steps": 12.0, "num_train_epochs": 2.0,
                        "train_batch_size": 8.0, "logging_steps": 1.0, "eval_steps": 4.0,
                        "save_steps": 4.0, "epoch": 2.0, "total_flos": 117669888.0,
                        "num_input_tokens_seen": 0.0}
        train = [r for r in records if r.kind is Kind.TRAIN]
        evals = [r for r in records if r.kind is Kind.EVAL]
        assert [r.step for r in train] == list(range(1, 13))
        assert [r.step for r in evals] == [4, 8, 12]
        assert train[0].values["loss"] == 3.8860201835632324
        assert set(train[0].values) == {"loss", "grad_norm", "learning_rate", "epoch"}
        assert evals[-1].values["eval_loss"] == 3.916745185852051
        assert not any(r.kind is Kind.SUMMARY for r in records)  # saved before the summary

    def test_final_state_has_the_summary(self):
        records, _ = parse_trainer_state(read("hf_trainer_state_final.json"))
        last = records[-1]
        assert last.kind is Kind.SUMMARY and last.step == 12
        assert last.values["train_loss"] == pytest.approx(3.8825, abs=1e-4)
        assert "train_runtime" in last.values

    def test_nan_run(self):
        raw = read("hf_trainer_state_nan.json")
        assert b'"grad_norm": NaN' in raw and b'"eval_loss": NaN' in raw
        records, meta = parse_trainer_state(raw)
        train = {r.step: r.values for r in records if r.kind is Kind.TRAIN}
        evals = {r.step: r.values for r in records if r.kind is Kind.EVAL}
        # The loss went NaN from the sixth step; logging_nan_inf_filter logs 0.0 instead,
        # and only grad_norm (and later eval_loss) show the NaN.
        assert [s for s, v in train.items() if math.isnan(v["grad_norm"])] == list(range(6, 13))
        assert all(train[s]["loss"] == 0.0 for s in range(6, 13))
        assert train[5]["loss"] == 3.9092607498168945
        assert evals[4]["eval_loss"] == 3.916395664215088
        assert math.isnan(evals[8]["eval_loss"]) and math.isnan(evals[12]["eval_loss"])
        assert meta["max_steps"] == 12.0


# ---------------------------------------------------------------------------- TensorBoard


class TestTensorBoard:
    def test_hf_trainer_events_match_trainer_state(self):
        d = TfEventsDecoder()
        recs = d.feed(read("hf_tensorboard/events.out.tfevents.fixture"))
        assert d.error_count == 0
        assert len(recs) == 69  # args/config text summaries are skipped
        tags = {t for r in recs for t in r.values}
        assert {"train/loss", "train/grad_norm", "train/learning_rate", "train/epoch",
                "eval/loss", "eval/runtime", "train/train_runtime"} <= tags
        for r in recs:
            assert (r.kind is Kind.EVAL) == all(t.startswith("eval/") for t in r.values)
        assert all(r.wall_time and r.wall_time > 1.6e9 for r in recs)

        events = {(r.step, t): v for r in recs for t, v in r.values.items()}
        history, _ = parse_trainer_state(read("hf_trainer_state.json"))
        for entry in history:
            if "loss" in entry.values:
                assert events[(entry.step, "train/loss")] == f32(entry.values["loss"])
            if "eval_loss" in entry.values:
                assert events[(entry.step, "eval/loss")] == f32(entry.values["eval_loss"])

    def test_summarywriter_nan_inf_and_tensor_scalar(self):
        recs = parse_bytes(read("summarywriter/events.out.tfevents.fixture"))
        loss = {r.step: r.values["train/loss"] for r in recs if "train/loss" in r.values}
        assert list(loss) == list(range(8))
        assert math.isnan(loss[4]) and loss[6] == math.inf
        assert loss[0] == 2.0 and loss[7] == f32(0.8)
        evals = [(r.step, r.values) for r in recs if r.kind is Kind.EVAL]
        assert evals == [(3, {"eval/loss": f32(1.1)}), (7, {"eval/loss": f32(0.95)})]
        lr = {r.step: r.values["lr"] for r in recs if "lr" in r.values}
        assert lr[0] == f32(0.001) and len(lr) == 8
        # add_scalar(new_style=True) writes a TensorProto, not simple_value.
        assert [(r.step, r.values) for r in recs if "train/loss_tensor" in r.values] == [
            (7, {"train/loss_tensor": 0.75})]
        tags = {t for r in recs for t in r.values}
        assert "weights" not in tags and not any("note" in t for t in tags)

    @pytest.mark.parametrize("name", ["summarywriter/events.out.tfevents.fixture",
                                      "hf_tensorboard/events.out.tfevents.fixture"])
    def test_chunked_reads_agree(self, name):
        data = read(name)
        want = repr(parse_bytes(data))
        for cut in range(0, len(data), 13):
            d = TfEventsDecoder()
            assert repr(d.feed(data[:cut]) + d.feed(data[cut:])) == want
        d = TfEventsDecoder()
        got = []
        for i in range(0, len(data), 3):
            got += d.feed(data[i : i + 3])
        assert repr(got) == want

    def test_truncated_real_file(self):
        data = read("summarywriter/events.out.tfevents.fixture")
        full = parse_bytes(data)
        counts = set()
        for cut in range(0, len(data), 97):
            partial = parse_bytes(data[:cut])  # a file caught mid-write
            assert repr(partial) == repr(full[: len(partial)])
            counts.add(len(partial))
        assert {0, len(full)} <= counts and len(counts) > 5
