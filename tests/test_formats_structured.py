"""Structured log formats: JSON lines, Lightning/Keras CSV, TensorBoard events, trainer_state.json
and hparams.yaml. Exact values, NaN/inf kept, kinds and steps; corrupt input never raises
anything but ParseError."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.logs.formats.base import Kind, ParseError, Record
from exporter.logs.formats.csvlog import KerasCsv, LightningCsv
from exporter.logs.formats.hparams import parse_hparams_yaml
from exporter.logs.formats.jsonl import JsonLines
from exporter.logs.formats.tfevents import (
    MAX_RECORD,
    TfEventsDecoder,
    _header_ok,
    crc32c,
    masked_crc32c,
    parse_bytes,
)
from exporter.logs.formats.trainer_state import parse_trainer_state

NAN = float("nan")
INF = float("inf")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def assert_values(record: Record, expected: dict[str, float]) -> None:
    assert set(record.values) == set(expected), record.values
    for key, value in expected.items():
        assert same(record.values[key], value), (key, record.values[key], value)


# ------------------------------------------------------------------------------------- JSON lines


class TestJsonLines:
    def parse(self, line: str) -> list[Record]:
        return JsonLines().parse(line)

    def test_python_json_literals_nan_and_infinity(self):
        (rec,) = self.parse('{"step": 7, "loss": NaN, "grad_norm": Infinity, "x": -Infinity}')
        assert rec.step == 7 and rec.kind is Kind.TRAIN
        assert_values(rec, {"loss": NAN, "grad_norm": INF, "x": -INF})

    def test_quoted_lowercase_nan_inf_strings(self):
        (rec,) = self.parse('{"step": 1, "loss": "nan", "a": "inf", "b": "-inf", "c": "2.5"}')
        assert_values(rec, {"loss": NAN, "a": INF, "b": -INF, "c": 2.5})

    @pytest.mark.parametrize(
        "key", ["step", "global_step", "iteration", "iter", "trainer/global_step", "_step"]
    )
    def test_step_keys(self, key):
        (rec,) = self.parse(f'{{"{key}": 42, "loss": 1.5, "epoch": 0.5}}')
        assert rec.step == 42
        assert_values(rec, {"loss": 1.5, "epoch": 0.5})  # step out of values, epoch kept

    def test_integral_float_step(self):
        assert self.parse('{"step": 10.0, "loss": 1}')[0].step == 10

    def test_flattening_and_leaf_filtering(self):
        line = (
            '{"step": 3, "train": {"loss": 1, "opt": {"lr": 0.1, "deep": {"x": 9}}},'
            ' "ok": true, "tags": [1, 2], "name": "gpt", "gpu": null}'
        )
        (rec,) = self.parse(line)
        assert_values(rec, {"train/loss": 1.0, "train/opt/lr": 0.1})

    def test_nested_step_key_from_wandb_style(self):
        (rec,) = self.parse('{"trainer": {"global_step": 5}, "train/loss": 2}')
        assert rec.step == 5 and rec.values == {"train/loss": 2.0}

    @pytest.mark.parametrize(
        "line",
        [
            '{"step": 10, "eval_loss": 0.5, "eval_acc": 0.9, "epoch": 1}',
            '{"step": 10, "val/loss": 0.5}',
            '{"step": 10, "valid_loss": 0.5}',
            '{"step": 10, "validation_loss": 0.5}',
            '{"step": 10, "test_loss": 0.5}',
            '{"step": 10, "val": {"loss": 0.5}}',
            '{"step": 10, "split": "val", "loss": 0.5}',
            '{"step": 10, "mode": "eval", "loss": 0.5}',
            '{"step": 10, "phase": "Validation", "loss": 0.5}',
        ],
    )
    def test_eval_rows(self, line):
        assert self.parse(line)[0].kind is Kind.EVAL

    @pytest.mark.parametrize(
        "line",
        [
            '{"step": 10, "loss": 0.5, "val_loss": 0.7}',  # mixed keys
            '{"step": 10, "split": "train", "val_loss": 0.5}',  # the split field decides
        ],
    )
    def test_train_rows(self, line):
        assert self.parse(line)[0].kind is Kind.TRAIN

    def test_summary_row(self):
        (rec,) = self.parse('{"train_runtime": 12.5, "train_loss": 2.0, "epoch": 3}')
        assert rec.kind is Kind.SUMMARY and rec.step is None

    @pytest.mark.parametrize("line", ["", "   ", "hello world", "[1, 2]", '"x"', "42", "\x00"])
    def test_not_ours(self, line):
        assert self.parse(line) == []

    def test_no_numbers_no_record(self):
        assert self.parse('{"step": 3, "msg": "saving checkpoint"}') == []

    @pytest.mark.parametrize(
        "line",
        [
            "{",
            '{"loss": 1,}',
            '{"a": "\x00"}',
            '{"step": 1.5, "loss": 1}',
            '{"step": NaN, "loss": 1}',
            '{"step": "ten", "loss": 1}',
            '{"step": 1e30, "loss": 1}',
            '{"a": ' + "1" * 5000 + "}",  # past Python's int digit limit
            '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",  # recursion
            '{"a": "' + "x" * (11 << 20) + '"}',  # 11 MB line
        ],
    )
    def test_malformed_is_parse_error(self, line):
        with pytest.raises(ParseError):
            self.parse(line)

    def test_huge_numbers_are_infinite(self):
        (rec,) = self.parse('{"a": 1e999, "b": ' + "9" * 400 + ', "c": -' + "9" * 400 + "}")
        assert rec.values == {"a": INF, "b": INF, "c": -INF}

    def test_bytes_input(self):
        assert JsonLines().parse(b'{"loss": 1}')[0].values == {"loss": 1.0}
        with pytest.raises(ParseError):
            JsonLines().parse(b'{"loss": "\xff"}')


# ------------------------------------------------------------------------------------------- CSV


def feed(parser, lines: list[str]) -> list[Record]:
    out = []
    for line in lines:
        out += parser.parse(line)
    return out


class TestLightningCsv:
    HEADER = "epoch,step,train_acc,train_loss_epoch,train_loss_step,val_loss\n"

    def test_sparse_rows(self):
        recs = feed(
            LightningCsv(),
            [
                self.HEADER,
                "0,0,,,1.25,\n",
                "0,2,,,,0.75\n",
                "0,2,,0.5,,\n",
                "1,3,0.5,,nan,\n",
            ],
        )
        assert [(r.kind, r.step) for r in recs] == [
            (Kind.TRAIN, 0), (Kind.EVAL, 2), (Kind.TRAIN, 2), (Kind.TRAIN, 3)
        ]
        assert_values(recs[0], {"train_loss_step": 1.25, "epoch": 0.0})
        assert_values(recs[1], {"val_loss": 0.75, "epoch": 0.0})
        assert_values(recs[2], {"train_loss_epoch": 0.5, "epoch": 0.0})
        assert_values(recs[3], {"train_acc": 0.5, "train_loss_step": NAN, "epoch": 1.0})

    def test_mixed_row_splits_in_two(self):
        recs = feed(LightningCsv(), [self.HEADER, "2,8,,0.78,,0.61\r\n"])
        assert [(r.kind, r.step) for r in recs] == [(Kind.TRAIN, 8), (Kind.EVAL, 8)]
        assert_values(recs[0], {"train_loss_epoch": 0.78, "epoch": 2.0})
        assert_values(recs[1], {"val_loss": 0.61, "epoch": 2.0})

    def test_val_like_names(self):
        p = LightningCsv()
        p.parse("step,val/acc,valid_f1,validation_loss\n")
        (rec,) = p.parse("5,0.1,0.2,0.3\n")
        assert rec.kind is Kind.EVAL and rec.step == 5

    def test_header_and_blank_lines(self):
        p = LightningCsv()
        assert p.parse(self.HEADER) == []
        assert p.parse("\n") == [] and p.parse("") == []
        assert p.header[-1] == "val_loss"

    def test_header_change_mid_stream_is_adopted(self):
        p = LightningCsv()
        p.parse("epoch,step,train_loss_step\n")
        p.parse("0,0,1.0\n")
        assert p.parse(self.HEADER) == []
        (rec,) = p.parse("1,3,0.5,,0.9,\n")
        assert_values(rec, {"train_acc": 0.5, "train_loss_step": 0.9, "epoch": 1.0})

    @pytest.mark.parametrize("row", ["0,0,1.0\n", "0,0,,,abc,\n", "0,0.5,,,1,\n", '0,"0,,,,\n'])
    def test_bad_rows(self, row):
        p = LightningCsv()
        p.parse(self.HEADER)
        with pytest.raises(ParseError):
            p.parse(row)

    def test_first_line_must_be_a_header(self):
        with pytest.raises(ParseError):
            LightningCsv().parse("0,1,2.5\n")


class TestKerasCsv:
    HEADER = "epoch,accuracy,f1_score,learning_rate,loss,val_accuracy,val_f1_score,val_loss\n"

    def test_rows(self):
        recs = feed(
            KerasCsv(),
            [
                self.HEADER,
                '0,0.5,"""[0.7, 0.0]""",0.01,0.96,NA,NA,NA\n',
                '1,0.55,"""[0.7, 0.0]""",0.005,nan,0.56,"""[0.72, 0.0]""",0.82\n',
            ],
        )
        # The file has no global step: the epoch is a value, never passed off as the step.
        assert [(r.kind, r.step) for r in recs] == [
            (Kind.TRAIN, None), (Kind.TRAIN, None), (Kind.EVAL, None)
        ]
        assert_values(recs[0], {"accuracy": 0.5, "learning_rate": 0.01, "loss": 0.96,
                                "epoch": 0.0})
        assert_values(recs[1], {"accuracy": 0.55, "learning_rate": 0.005, "loss": NAN,
                                "epoch": 1.0})
        assert_values(recs[2], {"val_accuracy": 0.56, "val_loss": 0.82, "epoch": 1.0})

    def test_header_only_and_blank(self):
        p = KerasCsv()
        assert p.parse("epoch,loss\n") == [] and p.parse("\n") == []

    def test_bad_rows(self):
        p = KerasCsv()
        p.parse("epoch,loss\n")
        for row in ("x,1\n", "1,abc\n", "1\n", ",1\n"):
            with pytest.raises(ParseError):
                p.parse(row)


# ---------------------------------------------------------------------------------- TensorBoard


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(payload)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload  # fixed32/fixed64 already packed


def _value(tag: str, simple: float | None = None, tensor: bytes | None = None,
           extra: bytes = b"") -> bytes:
    body = _field(1, 2, tag.encode())
    if simple is not None:
        body += _field(2, 5, struct.pack("<f", simple))
    if tensor is not None:
        body += _field(8, 2, tensor)
    return _field(1, 2, body + extra)


def _event(step: int | None, values: list[bytes], wall_time: float = 1700000000.5) -> bytes:
    body = _field(1, 1, struct.pack("<d", wall_time))
    if step:  # proto3 leaves a zero step out
        body += _field(2, 0, step)
    return body + _field(5, 2, b"".join(values))


def _frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked_crc32c(length)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def _scalar_tensor(dtype: int, field: bytes) -> bytes:
    return _field(1, 0, dtype) + _field(2, 2, b"") + field


def _f32(x: float) -> bytes:
    return struct.pack("<f", x)


def _shape(*dims: int) -> bytes:
    return _field(2, 2, b"".join(_field(2, 2, _field(1, 0, d)) for d in dims))


_FILE_VERSION = _field(1, 1, struct.pack("<d", 1.0)) + _field(3, 2, b"brain.Event:2")


def _small_file() -> bytes:
    header = _frame(_FILE_VERSION)
    events = [
        _event(None, [_value("train/loss", 2.5)]),
        _event(1, [_value("train/loss", NAN), _value("lr", 0.001)]),
        _event(2, [_value("eval/loss", 1.5), _value("eval/acc", 0.25)]),
        _event(3, [_value("Loss/val", tensor=_scalar_tensor(1, _field(5, 2, _f32(INF))))]),
        _event(4, [_value("train/loss_d",
                          tensor=_scalar_tensor(2, _field(4, 2, struct.pack("<d", 0.125))))]),
    ]
    return header + b"".join(_frame(e) for e in events)


SMALL_EXPECTED = [
    (0, Kind.TRAIN, {"train/loss": 2.5}),
    (1, Kind.TRAIN, {"train/loss": NAN, "lr": struct.unpack("<f", struct.pack("<f", 0.001))[0]}),
    (2, Kind.EVAL, {"eval/loss": 1.5, "eval/acc": 0.25}),
    (3, Kind.EVAL, {"Loss/val": INF}),
    (4, Kind.TRAIN, {"train/loss_d": 0.125}),
]


def check_small(records: list[Record]) -> None:
    assert [(r.step, r.kind) for r in records] == [(s, k) for s, k, _ in SMALL_EXPECTED]
    for rec, (_, _, values) in zip(records, SMALL_EXPECTED):
        assert_values(rec, values)
        assert rec.wall_time == 1700000000.5


def key(records: list[Record]) -> str:
    return repr(records)  # NaN-safe equality


class TestTfEvents:
    def test_crc32c_known_answer(self):
        assert crc32c(b"123456789") == 0xE3069283
        assert crc32c(b"") == 0

    def test_whole_file(self):
        check_small(parse_bytes(_small_file()))

    def test_every_split_point(self):
        data = _small_file()
        want = key(parse_bytes(data))
        for cut in range(len(data) + 1):
            d = TfEventsDecoder()
            got = d.feed(data[:cut]) + d.feed(data[cut:])
            assert key(got) == want, cut
            assert d.error_count == 0

    def test_byte_by_byte(self):
        d = TfEventsDecoder()
        got = []
        for i, byte in enumerate(_small_file()):
            got += d.feed(bytes([byte]))
            assert len(d._buf) <= 200  # never more than the one record being assembled
        check_small(got)

    def test_tensor_encodings(self):
        f32 = struct.pack("<f", 1.5)
        cases = {
            "packed_float_val": _scalar_tensor(1, _field(5, 2, f32)),
            "unpacked_float_val": _scalar_tensor(1, _field(5, 5, f32)),
            "double_val": _scalar_tensor(2, _field(6, 2, struct.pack("<d", 1.5))),
            "content_f32": _scalar_tensor(1, _field(4, 2, f32)),
            "half_val": _scalar_tensor(19, _field(13, 0, int.from_bytes(struct.pack("<e", 1.5),
                                                                           "little"))),
            "bf16_content": _scalar_tensor(14, _field(4, 2, f32[2:])),
            "shape_one": _field(1, 0, 1) + _shape(1) + _field(5, 2, f32),
        }
        values = [_value(tag, tensor=t) for tag, t in cases.items()]
        (rec,) = parse_bytes(_frame(_event(9, values)))
        assert rec.values == {tag: 1.5 for tag in cases}
        ints = [_value("int_val", tensor=_scalar_tensor(3, _field(7, 0, -3))),
                _value("int64", tensor=_scalar_tensor(9, _field(4, 2, struct.pack("<q", 7))))]
        (rec,) = parse_bytes(_frame(_event(9, ints)))
        assert rec.values == {"int_val": -3.0, "int64": 7.0}

    def test_non_scalars_are_skipped(self):
        histogram = _field(1, 0, 2) + _shape(2, 3) + _field(4, 2, bytes(48))
        text = _field(1, 0, 7) + _field(2, 2, b"") + _field(8, 2, b"hello")
        image = _field(1, 2, b"img") + _field(4, 2, _field(4, 2, b"\x89PNG" + bytes(100)))
        values = [_value("hist", tensor=histogram), _value("text", tensor=text),
                  _field(1, 2, image), _value("ok", 3.0)]
        graph = _field(1, 1, struct.pack("<d", 1.0)) + _field(4, 2, bytes(1000))
        recs = parse_bytes(
            _frame(graph) + _frame(_event(5, values)) + _frame(_event(6, values[:2]))
        )
        assert len(recs) == 1 and recs[0].values == {"ok": 3.0} and recs[0].step == 5

    def test_eval_detection(self):
        def kind(*tags):
            return parse_bytes(_frame(_event(1, [_value(t, 1.0) for t in tags])))[0].kind

        assert kind("eval/loss", "val/acc", "Loss/validation", "valid", "test/acc") is Kind.EVAL
        assert kind("val_loss") is Kind.EVAL
        assert kind("eval/loss", "train/loss") is Kind.TRAIN
        assert kind("train/validity", "interval") is Kind.TRAIN

    def test_negative_and_large_steps(self):
        one = [_value("a", 1.0)]
        recs = parse_bytes(_frame(_event(-1, one)) + _frame(_event(2**40, one)))
        assert [r.step for r in recs] == [-1, 2**40]

    def test_bad_length_crc_resyncs(self):
        good = _small_file()
        bad = bytearray(good)
        first_event = len(_frame(_FILE_VERSION))
        bad[first_event + 8] ^= 0xFF  # the length CRC of the first scalar event
        d = TfEventsDecoder()
        recs = d.feed(bytes(bad))
        assert [r.step for r in recs] == [1, 2, 3, 4]
        assert d.error_count == 1 and len(d.pop_errors()) == 1 and d.pop_errors() == []

    def test_bad_data_crc_skips_one_record(self):
        good = _small_file()
        bad = bytearray(good)
        bad[-1] ^= 0x01  # data CRC of the last event
        d = TfEventsDecoder()
        recs = d.feed(bytes(bad))
        assert [r.step for r in recs] == [0, 1, 2, 3]
        assert d.error_count == 1

    def test_corrupt_payload_with_valid_crc(self):
        broken = _frame(b"\x0a\xff\xff\xff")  # length-delimited field running past the end
        d = TfEventsDecoder()
        recs = d.feed(broken + _small_file())
        check_small(recs)
        assert d.error_count == 1

    @pytest.mark.parametrize("junk", [b"garbage!" * 50, bytes(5000), b"\xff" * 77, b"\0\0\0\0" * 9])
    def test_garbage_around_records(self, junk):
        data = _small_file()
        half = len(_frame(_FILE_VERSION))
        d = TfEventsDecoder()
        recs = d.feed(junk + data[:half] + junk + data[half:] + junk)
        check_small(recs)
        assert d.error_count == 3
        assert len(d._buf) < 12

    def test_truncated_file(self):
        data = _small_file()
        d = TfEventsDecoder()
        recs = d.feed(data[:-10])
        assert [r.step for r in recs] == [0, 1, 2, 3]
        assert d.error_count == 0  # the last record may simply not be written yet
        assert [r.step for r in d.feed(data[-10:])] == [4]

    def test_oversized_length_is_corruption(self):
        length = struct.pack("<Q", MAX_RECORD + 1)
        header = length + struct.pack("<I", masked_crc32c(length))
        d = TfEventsDecoder()
        recs = d.feed(header + b"x" * 100 + _small_file())
        check_small(recs)
        assert d.error_count == 1
        assert len(d._buf) < 12

    def test_buffer_holds_at_most_one_record(self):
        d = TfEventsDecoder()
        assert d.feed(b"\x13" * 1_000_000) == []
        assert len(d._buf) < 12
        vector = _field(1, 0, 1) + _shape(2500)
        pad = _value("pad", tensor=vector + _field(4, 2, bytes(10_000)))
        big = _frame(_event(1, [_value("a", 1.0), pad]))
        assert d.feed(big[:5000]) == []
        assert len(d._buf) <= 5000 + 12
        assert d.feed(big[5000:])[0].values == {"a": 1.0}
        assert len(d._buf) == 0

    def test_empty_input(self):
        assert parse_bytes(b"") == []
        assert TfEventsDecoder().feed(b"") == []


# ------------------------------------------------------------------------------ trainer_state


TRAINER_STATE = b"""{
  "best_metric": 0.5, "best_model_checkpoint": "out/checkpoint-4", "epoch": 2.0,
  "eval_steps": 4, "global_step": 12, "logging_steps": 1, "max_steps": 12,
  "num_train_epochs": 2, "save_steps": 4, "train_batch_size": 8, "is_world_process_zero": true,
  "trial_name": null,
  "log_history": [
    {"epoch": 0.1, "grad_norm": 0.9, "learning_rate": 0.001, "loss": 3.9, "step": 1},
    {"epoch": 0.5, "grad_norm": NaN, "learning_rate": 0.0005, "loss": 0.0, "step": 6},
    {"epoch": 0.5, "eval_loss": NaN, "eval_runtime": 0.06, "step": 6},
    "not an entry",
    {"epoch": 2.0, "step": 12, "total_flos": 1e8, "train_loss": 3.88, "train_runtime": 0.43,
     "train_samples_per_second": 225.2}
  ]
}"""


class TestTrainerState:
    def test_records_and_meta(self):
        records, meta = parse_trainer_state(TRAINER_STATE)
        assert [(r.kind, r.step) for r in records] == [
            (Kind.TRAIN, 1), (Kind.TRAIN, 6), (Kind.EVAL, 6), (Kind.SUMMARY, 12)
        ]
        assert_values(records[1], {"epoch": 0.5, "grad_norm": NAN, "learning_rate": 0.0005,
                                   "loss": 0.0})
        assert math.isnan(records[2].values["eval_loss"])
        assert records[3].values["train_runtime"] == 0.43
        assert meta == {
            "best_metric": 0.5, "best_model_checkpoint": "out/checkpoint-4", "epoch": 2.0,
            "eval_steps": 4.0, "global_step": 12.0, "logging_steps": 1.0, "max_steps": 12.0,
            "num_train_epochs": 2.0, "save_steps": 4.0, "train_batch_size": 8.0,
        }

    def test_long_checkpoint_path_dropped(self):
        _, meta = parse_trainer_state(b'{"best_model_checkpoint": "/' + b"x" * 300 + b'"}')
        assert meta == {}

    @pytest.mark.parametrize(
        "data", [b"", b"{", b"[]", b'{"log_history": 3}', b"\xff\xfe", b"[" * 100_000]
    )
    def test_invalid(self, data):
        with pytest.raises(ParseError):
            parse_trainer_state(data)


# ------------------------------------------------------------------------------------- hparams


class TestHparams:
    def test_lightning_style(self):
        doc = b"""betas: !!python/tuple
- 0.9
- 0.999
hidden: 8
lr: 0.05
wd: 1e-4
optimizer: adamw
use_amp: true
nothing: null
long: """ + b"x" * 65 + b"""
schedule:
  kind: cosine
  warmup: 2
  inner: {a: {b: 1}}
"""
        assert parse_hparams_yaml(doc) == {
            "hidden": 8.0, "lr": 0.05, "wd": 1e-4, "optimizer": "adamw",
            "schedule.kind": "cosine", "schedule.warmup": 2.0, "schedule.inner.a.b": 1.0,
        }

    def test_python_object_tags(self):
        doc = b"""args: !!python/object:argparse.Namespace
  lr: 0.1
  name: run
dtype: !!python/object/apply:torch.float32 []
fn: !!python/name:math.sqrt ''
special: .nan
"""
        out = parse_hparams_yaml(doc)
        assert out["args.lr"] == 0.1 and out["args.name"] == "run"
        assert math.isnan(out["special"]) and "dtype" not in out

    def test_recursive_and_exploding_aliases(self):
        assert parse_hparams_yaml(b"a: &a {x: 1, y: *a}")["a.x"] == 1.0
        bomb = b"l0: &l0 {a: 1, b: 2}\n" + b"".join(
            b"l%d: &l%d {a: *l%d, b: *l%d, c: *l%d}\n" % (i, i, i - 1, i - 1, i - 1)
            for i in range(1, 14)
        )
        with pytest.raises(ParseError):
            parse_hparams_yaml(bomb)

    @pytest.mark.parametrize("data", [b"a: [1, 2", b"- 1\n- 2\n", b"a: \x00", b"\xff", b"a: b: c",
                                      b"[" * 10_000])
    def test_invalid(self, data):
        with pytest.raises(ParseError):
            parse_hparams_yaml(data)

    def test_empty(self):
        assert parse_hparams_yaml(b"") == {} and parse_hparams_yaml(b"{}\n") == {}


# ---------------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def only_parse_errors(fn, *args):
    try:
        return fn(*args)
    except ParseError:
        return None


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_line_formats(data):
    text = data.decode("utf-8", "surrogateescape")
    for parser in (JsonLines(), LightningCsv(), KerasCsv()):
        for line in (text, "{" + text, text.replace("\n", "")):
            only_parse_errors(parser.parse, line)
    only_parse_errors(JsonLines().parse, data)


@PROPERTY
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_json_objects_give_float_values(obj):
    import json

    recs = only_parse_errors(JsonLines().parse, json.dumps(obj))
    for rec in recs or []:
        assert all(isinstance(v, float) for v in rec.values.values())
        assert rec.step is None or isinstance(rec.step, int)


@PROPERTY
@given(st.lists(st.text(alphabet=",\"\n\r 0123456789.-eNAnaifst_v[]", max_size=30), max_size=8))
def test_csv_lines_never_crash(lines):
    for parser in (LightningCsv(), KerasCsv()):
        for line in ["epoch,step,loss,val_loss"] + lines:
            only_parse_errors(parser.parse, line)


@PROPERTY
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_documents_and_events(data):
    only_parse_errors(parse_trainer_state, data)
    only_parse_errors(parse_hparams_yaml, data)
    d = TfEventsDecoder()
    d.feed(data)
    # Whatever stays buffered is either too short to judge or a valid header awaiting its data.
    assert len(d._buf) < 12 or _header_ok(d._buf, 0) is not None


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.lists(st.integers(1, 60), max_size=10))
def test_mutated_event_files_never_crash(mutations, chunks):
    data = bytearray(_small_file())
    for pos, byte in mutations:
        if pos < len(data):
            data[pos] = byte
    d = TfEventsDecoder()
    pos = 0
    for size in chunks + [len(data)]:
        for rec in d.feed(bytes(data[pos : pos + size])):
            assert all(isinstance(v, float) for v in rec.values.values())
        pos += size
    if not mutations:
        assert d.error_count == 0


@PROPERTY
@given(st.lists(st.integers(0, 300), max_size=8))
def test_any_chunking_gives_the_same_records(cuts):
    data = _small_file()
    d = TfEventsDecoder()
    got, prev = [], 0
    for cut in sorted(cuts) + [len(data)]:
        got += d.feed(data[prev:cut])
        prev = max(prev, cut)
    check_small(got)
