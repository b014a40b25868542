"""The reading path's fast paths against the plain code they short-cut: the same answers, the
same errors, for real lines and for anything Hypothesis makes up; and a file read in chunks of
any size against its lines read one by one."""

from __future__ import annotations

import json
import math
import re
from collections import deque

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from exporter.logs.formats import base, events, hf_console, jsonl, megatron
from exporter.logs.formats.base import ParseError
from exporter.logs.lines import LineSplitter
from exporter.training import vocabulary

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REAL = [line for path in sorted((FIXTURES / "console").iterdir()) + [FIXTURES / "real" / "hf_console.log"]
        for line in re.split(r"[\r\n]", path.read_text(encoding="utf-8")) if line.strip()]


def same(a, b) -> bool:
    """Equal, NaN included, through lists, tuples and dicts."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(fn, *args, errors=(ParseError,)):
    try:
        return "ok", fn(*args)
    except errors as error:
        return "error", type(error).__name__


def assert_same_outcome(fast, slow, *args, errors=(ParseError,)):
    got, expected = outcome(fast, *args, errors=errors), outcome(slow, *args, errors=errors)
    assert got[0] == expected[0] and same(got[1], expected[1]), (args, got, expected)


# ------------------------------------------------------------------------------- numbers

def to_float_reference(text: str) -> float:
    cleaned = text.strip().strip("'\"").strip()
    lowered = cleaned.lower()
    if lowered in ("nan", "+nan", "-nan"):
        return float("nan")
    if lowered in ("inf", "+inf", "infinity", "+infinity"):
        return float("inf")
    if lowered in ("-inf", "-infinity"):
        return float("-inf")
    try:
        return float(cleaned)
    except ValueError:
        raise ParseError(f"not a number: {text[:40]!r}") from None


numberish = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats().map(lambda x: f"{x:E}"),
    st.sampled_from(["nan", "NaN", "-nan", "+nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "INF",
                     "1_000", "1e999", "'2.5'", '"nan"', " 3 ", "\t4\n", "0x10", "١٢", "1.0E+00", "", " ", "None"]),
    st.text(max_size=12),
)


@PROPERTY
@given(numberish)
def test_to_float(text):
    assert_same_outcome(base.to_float, to_float_reference, text)


@PROPERTY
@given(st.one_of(numberish, numberish.map(lambda t: f"'{t}'"), st.sampled_from(
    ["np.float64(0.85)", "tensor(1.2, device='cuda:0')", "True", "'None'", "[1, 2]", "'", '"', "''"])))
def test_hugging_face_values(raw):
    # _value reads a plain number first; _number is the reference.
    assert same(hf_console._value(raw), hf_console._number(raw)), raw


@PROPERTY
@given(st.text(max_size=60))
def test_megatron_fields(text):
    def reference(text: str) -> dict:
        values = {}
        for field in text.split("|"):
            name, colon, raw = field.partition(":")
            name = name.strip()
            if colon and name:
                value = megatron._number(raw.strip())
                if value is not None:
                    values[name] = value
        return values

    for candidate in (text, " lm loss: " + text + " | grad norm: 1.5 |", "a:" + text.replace("|", "")):
        assert same(megatron._fields(candidate), reference(candidate)), candidate


# -------------------------------------------------------------------- Hugging Face dicts

DICT_TOKENS = ["{", "}", "'", '"', ":", ",", " ", "\t", "\\", "'loss'", "'eval_loss'", '"epoch"', "1.5", "'2.5'",
               "nan", "[1, 2]", "(", ")", "np.float64(1)", "{'a': 1}", "\x0c", "'x,y'", "'a\\'b'", "True"]
dict_text = st.lists(st.one_of(st.sampled_from(DICT_TOKENS), st.text(max_size=3)), max_size=30).map("".join)


spaces = st.sampled_from(["", " ", "  ", "\t", " \t ", "\x0c"])
dict_key = st.sampled_from(["'loss'", '"epoch"', "'eval_loss'", "'a,b'", "'x\\'y'", "'}'", "''"])
dict_value = st.sampled_from(["1.5", "'2.5'", '"nan"', "nan", "[1, 2]", "'a,b'", "np.float64(3)", "x y", "", "'q' r",
                              "'}'", "{'n': 1}", "-1e-05", "'a\\'b'", ")"])


@st.composite
def built_dict(draw) -> str:
    """Dicts the way they are printed, and a little beside: every spacing, odd keys and values."""
    items = draw(st.lists(st.tuples(spaces, dict_key, spaces, spaces, dict_value, spaces), max_size=5))
    body = ",".join(f"{a}{k}{b}:{c}{v}{d}" for a, k, b, c, v, d in items)
    return "{" + body + draw(st.sampled_from(["}", " }", "", ",}", "} tail"]))


@PROPERTY
@given(st.one_of(dict_text, st.sampled_from(REAL)))
def test_hugging_face_dict_start(text):
    found = [i for i in (text.find("{'"), text.find('{"')) if i >= 0]
    assert hf_console._dict_start(text) == (min(found) if found else -1)


@PROPERTY
@given(st.one_of(dict_text.map(lambda t: "{" + t), built_dict(), st.sampled_from(REAL)))
def test_hugging_face_dicts(text):
    start = hf_console._dict_start(text)
    if start < 0:
        start, text = 0, "{" + text
    assert_same_outcome(hf_console._read_flat_dict, hf_console._read_dict_carefully, text, start,
                        errors=(hf_console._Unreadable,))


@PROPERTY
@given(st.one_of(dict_text.map(lambda t: "{" + t), built_dict(), st.sampled_from(REAL)))
def test_hugging_face_dicts_read_as_json(text):
    # The common dict goes through the JSON decoder; the general reader gives the same record.
    start = hf_console._dict_start(text)
    if start < 0:
        start, text = 0, "{" + text
    fast = hf_console._read_as_json(text, start)
    if fast is None:
        return
    items, end = hf_console._read_dict_carefully(text, start)
    general = {key: value for key, raw in items if (value := hf_console._value(raw)) is not None}
    assert end == fast[1], text
    assert comparable_record(hf_console._record(fast[0], None)) == comparable_record(hf_console._record(general, None))


def comparable_record(record) -> tuple:
    return (record.kind, record.step, [(k, "nan" if v != v else v) for k, v in record.values.items()])


# ------------------------------------------------------------------ events and progress

def scan_events_reference(line: str):
    if len(line) > events.MAX_LINE:
        return None
    if line.strip() == "Killed" or events._OOM.search(line):
        return "oom"
    if events._OVERFLOW.search(line):
        return "loss_scale_overflow"
    return None


def progress_reference(line: str):
    found = None
    for match in events._BAR.finditer(line):
        if match.group(2) != "?":
            found = match
    return None if found is None else (int(found.group(1)), int(found.group(2)))


EVENT_TOKENS = ["Killed", " Killed ", "OutOfMemoryError: CUDA", "CUDA out of memory", "RuntimeError: ", "memory",
                "Error: CUBLAS_STATUS_ALLOC_FAILED", "DefaultCPUAllocator: can't allocate memory",
                "[deepspeed] OVERFLOW!", "Gradient overflow.  Skipping step", "gradient overflow detected, ignoring gradient",
                "| 450/1000 [", "| 5/? [", "|", "/", " ", "[", "\r"]


@PROPERTY
@given(st.one_of(st.lists(st.one_of(st.sampled_from(EVENT_TOKENS), st.text(max_size=4)), max_size=12).map("".join),
                 st.sampled_from(REAL)))
def test_events_and_progress_bars(line):
    found = events.scan_events(line)
    assert (found.event.value if found else None) == scan_events_reference(line), line
    if found is not None:  # the reader skips scanning chunks this calls eventless
        assert events.may_report_events(f"before\n{line}\nafter"), line
    assert events.parse_progress_bar(line) == progress_reference(line), line


# --------------------------------------------------------------------------- JSON lines

def json_parse_reference(line: str):
    """JsonLines.parse before its fast paths."""
    text = line.strip().lstrip("\ufeff")
    if not text.startswith("{"):
        return []
    if len(text) > jsonl.MAX_LINE_CHARS:
        raise ParseError("too long")
    obj = jsonl.loads(text)
    if not isinstance(obj, dict):
        raise ParseError("not an object")
    values = jsonl.flatten(obj)
    step = None
    for key in jsonl.STEP_KEYS:
        raw = obj.get(key)
        if raw is None and key in values:
            raw = values[key]
        if raw is None:
            continue
        if step is None:
            step = raw if type(raw) is int and abs(raw) < jsonl._INT64 else jsonl.as_step(raw)
            if step is None:
                raise ParseError("unusable step")
        values.pop(key, None)
    metrics = [k for k in values if k not in base.NEUTRAL_KEYS and not k.startswith("_")]
    if not metrics:
        return []
    split = jsonl._split_says_eval(obj)
    if split is None:
        return [(r.values, r.kind.value, r.step) for r in base.records_by_kind(values, step)]
    kind = "eval" if split else "summary" if "train_runtime" in values else "train"
    return [(values, kind, step)]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=10)
json_keys = st.one_of(st.sampled_from(["step", "global_step", "_step", "iter", "eval_loss", "val/acc", "loss", "epoch",
                                       "split", "mode", "train_runtime", "_x", "trainer/global_step", "Eval_Loss"]),
                      st.text(max_size=6))


@PROPERTY
@given(st.one_of(st.dictionaries(json_keys, json_values, max_size=6).map(json.dumps),
                 st.dictionaries(json_keys, json_values, max_size=4).map(lambda d: json.dumps(d) + " x"),
                 st.text(max_size=30).map(lambda t: "{" + t)))
def test_json_lines(line):
    def fast(line):
        return [(r.values, r.kind.value, r.step) for r in jsonl.JsonLines().parse(line)]

    assert_same_outcome(fast, json_parse_reference, line)


# ------------------------------------------------------------------------------- lines

line_pieces = st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"\x00", b"\x1b[A", b"\x1b[", b"\xff", b"\xe2\x82", b"\xe2\x82\xac", b" \t", b"x" * 40])),
    max_size=30)


def redraws(lines: list[str]) -> list[str]:
    """Lines cut at carriage returns, as a dialect gets them."""
    return [piece for line in lines for piece in map(str.strip, line.split("\r")) if piece]


@PROPERTY
@given(line_pieces)
def test_lines_fed_in_pieces_are_the_lines_of_the_whole(pieces):
    # Whole lines end at "\n"; the part of an unfinished line that ends with "\r" (a progress
    # bar's redraws) may be handed on before the line ends: cut at "\r", the same text.
    data = b"".join(pieces)
    reference = LineSplitter(max_line_bytes=1 << 20)
    expected = [line for line in map(reference._decode, data.split(b"\n")[:-1]) if line is not None]
    splitter = LineSplitter(max_line_bytes=1 << 20)
    got = [line for piece in pieces for line in splitter.feed(piece)]
    last = reference._decode(data.split(b"\n")[-1])
    assert redraws(got + splitter.flush()) == redraws(expected + ([last] if last else []))


@PROPERTY
@given(line_pieces, st.integers(min_value=1, max_value=80))
def test_lines_over_the_limit_are_dropped_whole_and_counted(pieces, limit):
    # One chunk, however its lines compare with the limit: each whole line (and the redraws of
    # the unfinished one) read on its own, those over the limit dropped and counted.
    data = b"".join(pieces)
    *whole, rest = data.split(b"\n")
    if b"\r" in rest:
        whole.append(rest[:rest.rfind(b"\r")])
        rest = rest[rest.rfind(b"\r") + 1:]
    reference = LineSplitter(max_line_bytes=limit)
    expected = [line for line in map(reference._decode, whole) if line is not None]
    splitter = LineSplitter(max_line_bytes=limit)
    assert splitter.feed(data) == expected
    assert splitter.too_long == reference.too_long + (len(rest) > limit)


@PROPERTY
@given(line_pieces)
def test_lines_decoded_whole_chunk_or_line_by_line(pieces):
    data = b"".join(pieces)
    parts = data.split(b"\n")
    splitter = LineSplitter(max_line_bytes=1 << 20)
    expected = [line for line in map(splitter._decode, parts) if line is not None]
    assert LineSplitter._decode_all(b"\n".join(parts)) == expected


# ------------------------------------------------------------------------------ key names

@PROPERTY
@given(st.one_of(st.text(alphabet="ab_0Z -/é", max_size=80), st.text(max_size=20),
                 st.sampled_from(["loss", "eval_loss", "_x", "x_", "a__b", "a" * 64, "a" * 65, "A", "9", ""])))
def test_key_names(key):
    reference = vocabulary._FOLD.sub("_", key.lower()).strip("_")[:vocabulary.MAX_KEY_LENGTH] or "_"
    assert vocabulary.normalise(key) == reference


# ------------------------------------------------------------------ reading whole chunks

CONSOLE_LINES = ["  5%|▌   | 50/1000 [00:10<03:00,  5.0it/s]", " 30%|███ | 3/10 [00:01<00:02,  3.1it/s]",
                 "{'loss': 2.5, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.1}",
                 "{'loss': '1.9', 'epoch': '0.2'}", "{'eval_loss': 2.1, 'epoch': 0.2}", "{'step': 7, 'loss': 2.0}",
                 "{'train_runtime': 10.0, 'train_loss': 2.2, 'epoch': 1.0}", " 51/1000 [00:10<03:00] {'loss': 2.4}",
                 "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                 "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0",
                 "{'loss': 2.3}  6%|▌   | 60/1000 [00:12<03:00,  5.0it/s]", "Killed", "some other line", "{'lo",
                 "[default1]:{'loss': 1.5, 'epoch': 0.3}", "[rank0]:  7%|▌   | 70/1000 [00:12<03:00,  5.0it/s]",
                 "2026-12-01T10:00:00.5Z stdout F {'loss': 1.25}", "2026-12-01T10:00:01Z stdout P {'loss'",
                 "2026-12-01T10:00:01Z stdout F : 1.5}", "12/01/2026 10:00:00 - INFO - __main__ - {'loss': 3.5}",
                 "iter 9: loss 2.5000, time 50.00ms, mfu 30.00%", " 8%|▌ | 80/1000 [00:12<03:00]\r{'loss': 0.5}"]


class RecordingSink:
    """Every batch a reader hands over, in order."""

    def __init__(self) -> None:
        self.batches: list[tuple[str | None, list]] = []

    def add_source(self, source):
        pass

    def rewritten(self, source):
        pass

    def apply(self, source, rank, records, observed_at):
        self.batches.append((rank, [(r.values, r.kind, r.step, r.event, r.progress, r.wall_time) for r in records]))

    def by_rank(self) -> list[tuple]:
        return [(rank, record) for rank, records in self.batches for record in records]


def read_in_chunks(lines: list[str], cuts: list[int], fmt: str) -> RecordingSink:
    from exporter.logs.readers import LineReader, LogSpec

    sink = RecordingSink()
    reader = LineReader("/nonexistent/train.log", "train", sink, LogSpec("/nonexistent/train.log", fmt), 1 << 20)
    data = "".join(line + "\n" for line in lines).encode()
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        reader.on_data(data[start:end])
    return sink


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(CONSOLE_LINES), st.sampled_from(REAL)), max_size=40),
       st.sampled_from(["huggingface", "auto"]), st.lists(st.integers(0, 4000), max_size=6))
def test_a_file_read_in_chunks_gives_the_records_of_the_file_read_whole(lines, fmt, cuts):
    data_length = len("".join(line + "\n" for line in lines).encode())
    whole = read_in_chunks(lines, [], fmt)
    chunked = read_in_chunks(lines, sorted(c for c in set(cuts) if c < data_length), fmt)
    assert same(chunked.by_rank(), whole.by_rank())
