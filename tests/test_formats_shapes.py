"""The dialects of the general shapes and of Keras, Lightning and MMEngine, line by line: what each
reads, what it leaves alone, and the steps it never invents. (The real runs' logs, whole, are in
test_real_shapes.py.)"""

from __future__ import annotations

import math
import os
import struct

import pytest

from exporter.logs.detect import format_by_content
from exporter.logs.dialects import dialects_for
from exporter.logs.formats import Kind, ParseError, Record
from exporter.logs.formats.console_table import ConsoleTable
from exporter.logs.formats.hf_console import HuggingFaceConsole
from exporter.logs.formats.keras_console import KerasConsole
from exporter.logs.formats.key_values import KeyValues
from exporter.logs.formats.lightning_console import LightningConsole
from exporter.logs.formats.mmengine import MMEngine
from exporter.logs.formats.regex import RegexFormat
from exporter.logs.formats.tfevents import masked_crc32c, parse_bytes
from exporter.training.signals import SignalSettings, SourceState
from exporter.training.vocabulary import Vocabulary

NAN = float("nan")


def feed(parser, lines: list[str]) -> list[Record]:
    out = []
    for line in lines:
        out += parser.parse(line)
    return out


def shown(records: list[Record]) -> list[tuple]:
    """(kind, step, values) of the records that carry values; NaN shown as "nan"."""
    return [(r.kind, r.step, {k: "nan" if math.isnan(v) else v for k, v in r.values.items()})
            for r in records if r.values]


# ------------------------------------------------------------------------------ key/value text


@pytest.mark.parametrize("line, want", [
    ("epoch 3 step 120 loss 0.4123 lr 1.0e-03",
     [(Kind.TRAIN, 120, {"epoch": 3.0, "loss": 0.4123, "lr": 0.001})]),
    ("step=120 loss=0.41 val_loss=0.52",
     [(Kind.TRAIN, 120, {"loss": 0.41}), (Kind.EVAL, 120, {"val_loss": 0.52})]),
    ("Step 120: loss: 0.41, acc: 0.88", [(Kind.TRAIN, 120, {"loss": 0.41, "acc": 0.88})]),
    ("[3,    40] loss: nan", [(Kind.TRAIN, None, {"epoch": 3.0, "loss": "nan"})]),
    ("iter 50 | loss 2.5 | time 120ms | mfu 3%", [(Kind.TRAIN, 50, {"loss": 2.5})]),
    ("val: loss=0.52 acc=0.88", [(Kind.EVAL, None, {"loss": 0.52, "acc": 0.88})]),
    ("[test] loss 0.5 acc 0.9", [(Kind.EVAL, None, {"test/loss": 0.5, "test/acc": 0.9})]),
    ("loss=inf grad_norm=NaN", [(Kind.TRAIN, None, {"loss": math.inf, "grad_norm": "nan"})]),
])
def test_key_values_reads_pairs(line, want):
    assert shown(KeyValues().parse(line)) == want


@pytest.mark.parametrize("line", [
    "learning_rate=0.001,",  # a config dump's line
    "loss: 0.41",  # one value, no position: a header block's line, not a line of its own
    "Loss went down to 0.41 at step 120",
    "lr=0.001 weight_decay=0.01",  # settings, nothing measured
    "Namespace(batch_size=32, lr=0.001, loss='ce', epochs=10)",
    "    train_step(step, loss_scale=65536.0)",
    "Epoch 0, global step 8: 'val_loss' reached 0.62323 (best 0.62323), saving model to ckpt",
    "Accuracy of the network on the 64 test points: 56 %",
    "  Total train batch size (w. parallel, distributed & accumulation) = 8",
    "loss 1,234 acc 0.5",
])
def test_key_values_leaves_prose_and_settings_alone(line):
    assert KeyValues().parse(line) == []


def test_key_values_header_block_reads_one_value_a_line_until_another_line():
    parser = KeyValues()
    records = feed(parser, ["Step 40: loss: 0.53, acc: 0.80", "Validation metrics:", "loss: 0.5181", "acc: 0.8281",
                            "Step 50: loss: 0.50, acc: 0.82", "loss: 0.49"])
    assert shown(records) == [(Kind.TRAIN, 40, {"loss": 0.53, "acc": 0.8}), (Kind.EVAL, None, {"loss": 0.5181}),
                              (Kind.EVAL, None, {"acc": 0.8281}), (Kind.TRAIN, 50, {"loss": 0.5, "acc": 0.82})]


def test_key_values_never_takes_a_fraction_for_the_step():
    assert shown(KeyValues().parse("step 1.5 loss 0.3 acc 0.5")) == [(Kind.TRAIN, None, {"loss": 0.3, "acc": 0.5})]


# ------------------------------------------------------------------------------ console tables


def test_table_rows_after_their_header():
    parser = ConsoleTable()
    records = feed(parser, ["Epoch | Train Loss | Val Loss | Time", "some other line", "1 | 0.59 | 0.51 | 10.2s",
                            "    2      nan       nan  9.9s", "3 4 5"])
    assert shown(records) == [(Kind.TRAIN, None, {"epoch": 1.0, "Train_Loss": 0.59}),
                              (Kind.EVAL, None, {"epoch": 1.0, "Val_Loss": 0.51}),
                              (Kind.TRAIN, None, {"epoch": 2.0, "Train_Loss": "nan"}),
                              (Kind.EVAL, None, {"epoch": 2.0, "Val_Loss": "nan"})]


def test_table_step_column_is_the_step():
    records = feed(ConsoleTable(), ["step    loss     lr", "  100  2.31  1e-4"])
    assert shown(records) == [(Kind.TRAIN, 100, {"loss": 2.31, "lr": 1e-4})]


@pytest.mark.parametrize("header", ["Epoch loss went down", "name  value", "epoch  epoch  loss", "train_loss  val_loss"])
def test_table_header_needs_columns_a_position_and_a_measure(header):
    assert feed(ConsoleTable(), [header, "1  0.5  0.4"]) == []


# ------------------------------------------------------------------------------ Keras


def test_keras_tf2_bars_and_model_evaluate():
    parser = KerasConsole()
    records = feed(parser, [
        "Epoch 1/2",
        " 10/100 [==>...........................] - ETA: 3s - loss: 0.9000 - accuracy: 0.5000",
        "100/100 [==============================] - 1s 5ms/step - loss: 0.6931 - accuracy: 0.6 - val_loss: 0.7012",
        "32/32 [==============================] - 0s 2ms/step - loss: 0.7100 - accuracy: 0.55",  # evaluate()
    ])
    assert shown(records) == [
        (Kind.TRAIN, None, {"epoch": 1.0}), (Kind.TRAIN, None, {"epoch": 1.0}),
        (Kind.TRAIN, None, {"loss": 0.6931, "accuracy": 0.6, "epoch": 1.0}),
        (Kind.EVAL, None, {"val_loss": 0.7012, "epoch": 1.0}),
        (Kind.EVAL, None, {"loss": 0.71, "accuracy": 0.55, "epoch": 1.0}),
    ]


def test_keras_redraw_is_progress_not_values():
    [record] = KerasConsole().parse("\x1b[1m14/64\x1b[0m \x1b[32m━━━━\x1b[0m 0s 10ms/step - loss: inf    \b\b\b")
    assert (record.values, record.step, record.progress) == ({}, None, None)


def test_keras_unreadable_final_value_is_a_parse_error():
    with pytest.raises(ParseError):
        KerasConsole().parse("64/64 - 0s - 3ms/step - loss: 0.5.1")


# ------------------------------------------------------------------------------ Lightning


def bar(epoch: int, done: int, postfix: str) -> str:
    return f"Epoch {epoch}:  50%|█████     | {done}/8 [00:00<00:00, 300.00it/s{postfix}]"


def test_lightning_reads_each_batch_once_and_each_validation_once():
    parser = LightningConsole()
    records = feed(parser, [
        bar(0, 1, ""), bar(0, 1, ", v_num=0, train_loss=1.100"),
        bar(0, 2, ", v_num=0, train_loss=1.100"), bar(0, 2, ", v_num=0, train_loss=nan.0"),
        "Validation DataLoader 0:  50%|█████     | 1/2 [00:00<00:00, 1091.41it/s]\x1b[A",  # mid-epoch validation
        bar(0, 2, ", v_num=0, train_loss=nan.0, val_loss=0.623"), bar(0, 2, ", v_num=0, train_loss=nan.0, val_loss=0.623"),
        bar(0, 3, ", v_num=0, train_loss=nan.0, val_loss=0.623"), bar(0, 3, ", v_num=0, train_loss=inf.0, val_loss=0.623"),
    ])
    assert shown(records) == [
        (Kind.TRAIN, None, {"epoch": 0.0, "train_loss": 1.1}),
        (Kind.TRAIN, None, {"epoch": 0.0, "train_loss": "nan"}),
        (Kind.EVAL, None, {"epoch": 0.0, "val_loss": 0.623}),
        (Kind.TRAIN, None, {"epoch": 0.0, "train_loss": math.inf}),
    ]
    assert all(r.progress is None and r.step is None for r in records)


def test_lightning_other_bars_are_its_own_and_no_progress():
    for line in ("Sanity Checking DataLoader 0:  50%|█████     | 1/2 [00:00<00:00, 74.49it/s]",
                 "Testing DataLoader 0: 100%|██████████| 2/2 [00:00<00:00, 500.0it/s]"):
        [record] = LightningConsole().parse(line)
        assert (record.values, record.progress, record.step) == ({}, None, None)


def test_lightning_bar_reaches_no_other_dialect_in_auto_detection():
    """Offered in detection order, a Lightning bar is Lightning's: the Trainer dialect would have
    taken its batch count for the step."""
    choice = dialects_for("auto", None)
    records = choice.parse(bar(2, 4, ", v_num=0"))
    assert [(r.progress, r.step) for r in records] == [(None, None)]


# ------------------------------------------------------------------------------ MMEngine


@pytest.mark.parametrize("line, want", [
    ("Iter(train) [  50/1000]  lr: 1.0000e-02  eta: 0:10:12  time: 0.0475  data_time: 0.0003  loss: 0.5759",
     [(Kind.TRAIN, 50, {"lr": 0.01, "time": 0.0475, "data_time": 0.0003, "loss": 0.5759})]),
    ("Epoch [1][658/742]\tlr: 5.000e-05, eta: 2:15:01, time: 0.396, memory: 2650, loss_cls: nan, loss: nan",
     [(Kind.TRAIN, None, {"lr": 5e-05, "time": 0.396, "memory": 2650.0, "loss_cls": "nan", "loss": "nan",
                          "epoch": 1.0})]),
    ("Epoch(val) [1][742]\tbbox_mAP: 0.3740, bbox_mAP_50: 0.5750",
     [(Kind.EVAL, None, {"bbox_mAP": 0.374, "bbox_mAP_50": 0.575, "epoch": 1.0})]),
    ("Epoch(val)  [1][ 50/500]    eta: 0:00:37  time: 0.0755  data_time: 0.0013", []),
    ("Epoch(test) [8/8]    coco/bbox_mAP: 0.3740", [(Kind.EVAL, None, {"test/coco/bbox_mAP": 0.374})]),
    ("Epoch [3] finished", []),
])
def test_mmengine_lines(line, want):
    assert shown(MMEngine().parse(line)) == want


# ------------------------------------------------------------------------------ Hugging Face


def test_eval_block_after_the_evaluations_own_dict_is_read_once():
    """With disable_tqdm the printer callback prints trainer.evaluate()'s dict; the script's
    log_metrics block after it is the same evaluation."""
    parser = HuggingFaceConsole()
    records = feed(parser, ["{'eval_loss': 3.9167, 'eval_runtime': 0.01, 'epoch': 2.0}", "***** eval metrics *****",
                            "epoch                   =        2.0", "eval_loss               =     3.9167"])
    assert shown(records) == [(Kind.EVAL, None, {"eval_loss": 3.9167, "eval_runtime": 0.01, "epoch": 2.0})]


def test_eval_block_after_training_is_an_evaluation_and_train_block_a_repeat():
    parser = HuggingFaceConsole()
    records = feed(parser, [
        "{'train_runtime': '0.78', 'train_loss': '3.882', 'epoch': '2'}",
        "***** train metrics *****", "train_loss               =     3.8825",
        "***** eval metrics *****", "eval_loss               =     3.9159", "eval_runtime            = 0:00:00.01",
        "perplexity              =    50.2367",
    ])
    assert shown(records)[1:] == [(Kind.EVAL, None, {"eval_loss": 3.916}), (Kind.EVAL, None, {"perplexity": 50.24})]


def test_two_alike_dicts_printed_alike_are_two_records():
    """A run of NaN steps prints alike; only a full-precision dict and its 4-digit echo are one."""
    line = "{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '0.00075', 'epoch': '0.6667'}"
    assert len(shown(feed(HuggingFaceConsole(), [line, line]))) == 2
    echo = feed(HuggingFaceConsole(), ["{'loss': 3.8860201835632324, 'epoch': 0.16666666666666666}",
                                       "{'loss': '3.886', 'epoch': '0.1667'}", "{'loss': '3.886', 'epoch': '0.1667'}"])
    assert shown(echo) == [(Kind.TRAIN, None, {"loss": 3.8860201835632324, "epoch": 0.16666666666666666}),
                           (Kind.TRAIN, None, {"loss": 3.886, "epoch": 0.1667})]


@pytest.mark.parametrize("line", ["Map: 100%|██████████| 1000/1000 [00:00<00:00, 9000.00 examples/s]",
                                  "Loading weights: 100%|██████████| 16/16 [00:00<00:00, 16241.25it/s]"])
def test_other_tqdm_bars_are_not_the_trainers(line):
    assert HuggingFaceConsole().parse(line) == []


# ------------------------------------------------------------------------------ regex, vocabulary, state


def test_regex_one_pattern_gives_training_and_evaluation_values():
    fmt = RegexFormat([r"(?P<step>\d+): loss (?P<loss>\S+) val_loss (?P<val_loss>\S+)"])
    assert shown(fmt.parse("120: loss 0.41 val_loss 0.52")) == [(Kind.TRAIN, 120, {"loss": 0.41}),
                                                              (Kind.EVAL, 120, {"val_loss": 0.52})]
    assert shown(RegexFormat([r"val_loss (?P<val_loss>\S+)"]).parse("val_loss 0.5")) == [(Kind.EVAL, None, {"val_loss": 0.5})]


@pytest.mark.parametrize("key, kind, name", [
    ("metrics/eval/loss", Kind.EVAL, "validation_loss"),
    ("metrics/train/loss", Kind.TRAIN, "loss"),
    ("run/train/lr", Kind.TRAIN, "learning_rate"),
    ("Loss/val", Kind.EVAL, "validation_loss"),
    ("eval/samples_per_second", Kind.EVAL, "eval_samples_per_second"),  # not training's throughput
    ("metrics/test/loss", Kind.EVAL, "metrics_test_loss"),  # a test split is never validation
    ("optimizer/lr", Kind.TRAIN, "optimizer_lr"),  # no split named: not read into the vocabulary
])
def test_vocabulary_reads_a_split_named_in_the_key_path(key, kind, name):
    assert Vocabulary().name(key, kind) == name


def test_a_nan_among_end_of_run_values_is_counted_under_its_own_name():
    state = SourceState(SignalSettings(), Vocabulary())
    state.apply(Record(values={"train_runtime": 1.0, "train_loss": NAN}, kind=Kind.SUMMARY), 0.0)
    snap = state.snapshot()
    assert snap.nonfinite == {"summary_train_loss": 1} and "loss" not in snap.values


def test_tensorboard_end_of_run_tags_are_a_summary():
    def record(data: bytes) -> bytes:
        length = struct.pack("<Q", len(data))
        return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))

    def scalar_event(tag: str, value: float, step: int) -> bytes:
        tag_bytes = tag.encode()
        value_msg = b"\x0a" + bytes([len(tag_bytes)]) + tag_bytes + b"\x15" + struct.pack("<f", value)
        summary = b"\x0a" + bytes([len(value_msg)]) + value_msg
        return b"\x10" + bytes([step]) + b"\x2a" + bytes([len(summary)]) + summary

    records = parse_bytes(record(scalar_event("train/loss", 2.0, 12)) + record(scalar_event("train/train_loss", 2.5, 12)))
    assert [(r.kind, dict(r.values)) for r in records] == [(Kind.TRAIN, {"train/loss": 2.0}),
                                                         (Kind.SUMMARY, {"train/train_loss": 2.5})]


# ------------------------------------------------------------------------------ detection by content


def test_content_detection_leaves_json_lines_fifos_and_text_alone(tmp_path):
    jsonl = tmp_path / "metrics.txt"
    jsonl.write_text('{"global_step": 1, "log_history": []}\n')
    text = tmp_path / "run.out"
    text.write_text("epoch 1 step 10 loss 0.5\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer
    assert [format_by_content(str(p)) for p in (jsonl, text, fifo, tmp_path / "missing")] == [None] * 4
