"""The reading path's fast paths against the plain code they short-cut: the same answers, the
same errors, for real lines and for anything Hypothesis makes up."""

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
from exporter.logs.formats import LINE_FORMATS
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
    # _record reads a value inline; _number is the reference.
    record = hf_console._record([("loss", raw)], None)
    assert same(record.values.get("loss"), hf_console._number(raw)), raw


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


megatron_value = st.one_of(st.sampled_from(["2.373574E+00", "1.0", "  512", "0", "nan", "-inf", "741.2", " 3 "]),
                           st.sampled_from(["496.3 (avg 496.1)", "1:02:03", "x", "", "1e999", "NaN |", ": 4"]))


@st.composite
def megatron_lines_of_one_layout(draw) -> list[str]:
    """Iteration and validation lines with the same fields in the same order, values varying."""
    names = draw(st.lists(st.sampled_from(["lm loss", "grad norm", "loss scale", "learning rate", "x:y", "lm loss PPL",
                                           "number of nan iterations", " "]), min_size=1, max_size=4))
    end = draw(st.sampled_from([" |", " |", "", " | ", "|x"]))
    head = draw(st.sampled_from([" iteration      {i}/  250000 |", " validation loss at iteration {i} |",
                                 " validation loss at iteration {i} on test set |"]))
    return [head.format(i=i) + " | ".join(f" {name}: {draw(megatron_value)}" for name in names) + end
            for i in range(1, draw(st.integers(1, 6)) + 1)]


@PROPERTY
@given(st.lists(megatron_lines_of_one_layout(), max_size=3))
@example([[" iteration 1/ 9 | lm loss: 2.0 | grad norm: 1.0 |", " iteration 2/ 9 | lm loss: 496.3 (avg 496.1) | grad norm: 1.0 |",
           " iteration 3/ 9 | lm loss: 2.0 | grad norm: 1.0", " iteration 4/ 9 | lm loss: 2.0 | grad norm: 1.0 | x"]])
def test_megatron_lines_by_learned_layout(groups):
    # A parser that has learned the layouts of the lines before reads each line as a fresh one does.
    def read(parser, line):
        return [(r.values, r.kind, r.step, r.meta) for r in parser.parse(line)]

    learned = megatron.Megatron()
    for line in [line for group in groups for line in group] * 2:
        assert_same_outcome(lambda text: read(learned, text), lambda text: read(megatron.Megatron(), text), line)


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


shape_key = st.sampled_from(["loss", "eval_loss", "epoch", "step", "grad_norm", "train_runtime", "a b", "a'b", "a\\b",
                             'q"k', "x.y"])
plain_numbers = st.sampled_from(["1.0", "2.5", "3", "nan", "-inf", "1e-05", " 4", "Infinity", "x", "1_0"])
odd_value = st.sampled_from(["np.float64(3)", "True", "None", "[1, 2]", "'a,b'", "x y", "'it''s'", "'nan'", "2.0"])


@st.composite
def lines_of_one_shape(draw) -> list[str]:
    """Dict lines with the same keys in the same order, each value quoted the same way on every
    line (as a run prints them), the values varying; now and then an odd value."""
    keys = draw(st.lists(shape_key, min_size=1, max_size=3))
    styles = [draw(st.sampled_from(["", "'", '"'])) for _ in keys]
    quote = draw(st.sampled_from(["'", '"']))
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        values = [f"{style}{draw(plain_numbers)}{style}" if draw(st.integers(0, 5)) else draw(odd_value)
                  for style in styles]
        items = ", ".join(f"{quote}{key}{quote}: {value}" for key, value in zip(keys, values))
        lines.append("{" + items + draw(st.sampled_from(["}", "}", "}", "} ", "}x", " }"])))
    return lines


@PROPERTY
@given(st.lists(st.one_of(lines_of_one_shape(), st.sampled_from(REAL).map(lambda line: [line])), max_size=4))
@example([["{'step': 2.5, 'loss': 1.0}", "{'step': 3, 'loss': 2.0}", "{'step': 'x', 'loss': 2}"]])
@example([["{'eval_loss': '1.5'}", "{'eval_loss': 'True'}", "{'eval_loss': ' 2.0'}", "{'eval_loss': 'x'}"]])
def test_hugging_face_dict_shapes(groups):
    # A parser that has learned the shapes of the lines before reads each line as a fresh one does.
    def read(parser, line):
        return [(r.values, r.kind, r.step, r.progress) for r in parser.parse(line)]

    learned = hf_console.HuggingFaceConsole()
    for line in [line for group in groups for line in group] * 2:
        assert_same_outcome(lambda text: read(learned, text), lambda text: read(hf_console.HuggingFaceConsole(), text), line)


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
    metrics = [k for k in values if k not in jsonl.NEUTRAL_KEYS and not k.startswith("_")]
    if not metrics:
        return []
    split = jsonl._split_says_eval(obj)
    if split is None:
        split = all(jsonl.is_eval_key(k) for k in metrics)
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


json_leaf = st.one_of(st.floats(), st.floats(), st.integers(-3, 3), st.sampled_from([1 << 63, True, None, "nan", "x", [1.0], {"a": 1.0}]))


@st.composite
def json_lines_of_one_layout(draw) -> list[str]:
    """Objects with the same keys in the same order, as a logger writes them, values varying."""
    keys = draw(st.lists(json_keys, min_size=1, max_size=4, unique=True))
    return [json.dumps(dict(zip(keys, draw(st.lists(json_leaf, min_size=len(keys), max_size=len(keys))))))
            for _ in range(draw(st.integers(1, 6)))]


@PROPERTY
@given(st.lists(json_lines_of_one_layout(), max_size=3))
@example([['{"step": 1, "loss": 2.5}', '{"step": 2.0, "loss": 2.5}', '{"step": 3, "loss": 1}', '{"step": 4, "loss": "x"}']])
@example([['{"step": 1, "loss": 2.5}', '{"step": 9223372036854775808, "loss": 2.5}', '{"step": true, "loss": 2.5}']])
def test_json_lines_by_learned_layout(groups):
    # A parser that has learned the layouts of the lines before reads each line as a fresh one does.
    def read(parser, line):
        return [(r.values, r.kind.value, r.step) for r in parser.parse(line)]

    learned = jsonl.JsonLines()
    for line in [line for group in groups for line in group] * 2:
        assert_same_outcome(lambda text: read(learned, text), lambda text: read(jsonl.JsonLines(), text), line)


# ------------------------------------------------------------------------------- lines

line_pieces = st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"\x00", b"\x1b[A", b"\x1b[", b"\xff", b"\xe2\x82", b"\xe2\x82\xac", b" \t", b"x" * 40])),
    max_size=30)


@PROPERTY
@given(line_pieces)
def test_lines_fed_in_pieces_are_the_lines_of_the_whole(pieces):
    data = b"".join(pieces)
    reference = LineSplitter(max_line_bytes=1 << 20)
    expected = [line for line in map(reference._decode, re.split(rb"[\r\n]", data)[:-1]) if line is not None]
    splitter = LineSplitter(max_line_bytes=1 << 20)
    got = [line for piece in pieces for line in splitter.feed(piece)]
    assert got == expected
    last = reference._decode(re.split(rb"[\r\n]", data)[-1])
    assert splitter.flush() == ([last] if last else [])


@PROPERTY
@given(line_pieces)
def test_lines_decoded_whole_chunk_or_line_by_line(pieces):
    data = b"".join(pieces)
    parts = re.split(rb"[\r\n]", data)
    splitter = LineSplitter(max_line_bytes=1 << 20)
    expected = [line for line in map(splitter._decode, parts) if line is not None]
    assert LineSplitter._decode_all(parts) == expected


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
                 "{'loss': 2.3}  6%|▌   | 60/1000 [00:12<03:00,  5.0it/s]", "Killed", "some other line", "{'lo"]


def state_of(state) -> dict:
    """Everything a source's state holds, to compare two states whole."""
    return {name: list(value) if isinstance(value, deque) else value for name, value in vars(state).items()
            if name not in ("_lock", "vocabulary", "settings")}


def assert_read_as_one_by_one(chunks: list[list[str]], fmt: str, max_keys: int = 200, keep_history: bool = False):
    """Chunks read by the reader, each at its own time, leave the state that applying every
    line's records on their own, in order, leaves."""
    from exporter.logs.detect import line_format_for
    from exporter.logs.readers import LineReader, LogSpec
    from exporter.training.signals import SignalSettings, SourceState

    def new_state():
        settings = SignalSettings(spike_min_points=2, max_keys=max_keys)
        return SourceState(settings, vocabulary.Vocabulary(), keep_history=keep_history)

    reader = LineReader("/nonexistent/train.log", "train", new_state(), LogSpec("/nonexistent/train.log", fmt), 1 << 20)
    expected, parser = new_state(), line_format_for("/nonexistent/train.log", fmt)
    for when, chunk in enumerate(chunks, start=1000):
        reader.observed_at = lambda: float(when)
        reader._handle(chunk)
        for line in chunk:
            event = events.scan_events(line) if reader.scans_events else None
            if event is not None:
                expected.apply(event, when)
            try:
                records = (getattr(parser, "chosen", None) or parser).parse(line)
            except ParseError:
                continue
            for record in records:
                expected.apply(record, when)
    assert same(state_of(reader.state), state_of(expected)), chunks


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(CONSOLE_LINES), st.sampled_from(REAL)), max_size=40),
       st.sampled_from(["huggingface", "auto"]))
def test_a_chunk_of_lines_does_what_its_records_do_one_by_one(lines, fmt):
    # The reader holds a progress bar's record back and merges it into the next line's record;
    # the state must end up as if every record had been applied on its own, in order.
    assert_read_as_one_by_one([lines], fmt)


# Stretches of lines of one layout, as a run prints them, with what ends a run or makes the state
# apply it record by record: NaN and infinite values, text where a number was, a step that stays
# or goes back, a bar of another total, two keys of one name, a NaN loss Megatron leaves out.
plain_number = st.one_of(st.floats(-1e6, 1e6).map(repr), st.sampled_from(["1.5", "0", "1e-05", "3"]))
odd_number = st.sampled_from(["nan", "inf", "-inf", "1e999", "x"])
step_change = st.sampled_from([1, 1, 1, 1, 0, -1, 3])


@st.composite
def run_values(draw, count: int) -> list[str]:
    """A line's values: plain numbers, and on one line in ten an odd one among them."""
    odd = draw(st.integers(0, 9)) == 0
    return [draw(odd_number if odd and draw(st.booleans()) else plain_number) for _ in range(count)]


@st.composite
def hugging_face_run(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(["loss", "grad_norm", "learning_rate", "epoch", "train_loss", "k"]),
                         min_size=1, max_size=4, unique=True))
    quote, bars, total = draw(st.sampled_from(["'", ""])), draw(st.booleans()), draw(st.sampled_from([100, 40]))
    step, lines = draw(st.integers(0, 5)), []
    for _ in range(draw(st.integers(1, 12))):
        step += draw(step_change)
        if bars and draw(st.integers(0, 9)):
            lines.append(f" {step}%|▌   | {step}/{draw(st.sampled_from([total] * 12 + [10, 400]))} [00:01<00:02,  3.1it/s]")
        lines.append("{" + ", ".join(f"'{key}': {quote}{value}{quote}" for key, value in zip(keys, draw(run_values(len(keys)))))
                     + "}")
    return lines


@st.composite
def megatron_run(draw) -> list[str]:
    names = draw(st.lists(st.sampled_from(["lm loss", "grad norm", "learning rate", "loss scale", "number of nan iterations",
                                           "consumed samples", "throughput"]), min_size=1, max_size=5, unique=True))
    step, total, lines = draw(st.integers(0, 5)), draw(st.sampled_from([1000, 1000, 9])), []
    for _ in range(draw(st.integers(1, 12))):
        step += draw(step_change)
        lines.append(f" [2024-05-01 10:00:00] iteration {step:8d}/ {draw(st.sampled_from([total] * 4 + [77]))} |"
                     + "".join(f" {name}: {value} |" for name, value in zip(names, draw(run_values(len(names))))))
    return lines


@st.composite
def json_lines_run(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(["loss", "lr", "grad_norm", "epoch", "train/loss", "val_loss", "k"]),
                         min_size=1, max_size=4, unique=True))
    step_key = draw(st.sampled_from(["step", "iteration", None]))
    step, lines = draw(st.integers(0, 5)), []
    for _ in range(draw(st.integers(1, 12))):
        step += draw(step_change)
        values = {key: float(value.replace("x", "2")) if draw(st.integers(0, 19)) else draw(json_leaf)
                  for key, value in zip(keys, draw(run_values(len(keys))))}
        printed_step = step if draw(st.integers(0, 14)) else draw(st.sampled_from([step + 0.5, None, 1 << 63, True]))
        lines.append(json.dumps({step_key: printed_step, **values} if step_key else values))
    return lines


RUNS = {"huggingface": hugging_face_run(), "megatron": megatron_run(), "jsonl": json_lines_run()}
NOISE = {"huggingface": ["some other line", "{'a': 1}", "Killed", "{'eval_loss': 2.0, 'epoch': 1.0}",
                         " 6%|▌   | 6/100 [00:12<03:00,  5.0it/s]{'loss': 2.3}"],
         "megatron": ["some other line", "Killed", " validation loss at iteration 4 | lm loss value: 2.0 |"],
         "jsonl": ["some other line", '{"step": 4, "eval_loss": 2.0}', '{"a": "b"}']}


@PROPERTY
@given(st.data(), st.sampled_from(sorted(RUNS)), st.sampled_from([0, 2, 200]), st.booleans())
def test_runs_of_one_layout_do_what_their_records_do_one_by_one(data, fmt, max_keys, keep_history):
    # Lines read as runs, by column, in chunks cut anywhere and read at different times, with
    # caps low enough to drop keys.
    lines = [line for group in data.draw(st.lists(st.one_of(RUNS[fmt], st.sampled_from(NOISE[fmt]).map(lambda n: [n])),
                                                  max_size=5)) for line in group]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), max_size=3)))
    assert_read_as_one_by_one([lines[start:end] for start, end in zip([0, *cuts], [*cuts, len(lines)])],
                              fmt, max_keys, keep_history)


run_float = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, 1e308]))
ascending = st.lists(st.integers(-2, 4), min_size=2, max_size=8).map(lambda gaps: [sum(gaps[:i + 1]) for i in range(len(gaps))])


@st.composite
def runs(draw) -> base.Run:
    keys = tuple(draw(st.lists(st.sampled_from(["loss", "train_loss", "grad_norm", "k", "j", "lm loss"]), min_size=0,
                               max_size=3, unique=True)))
    steps = draw(st.one_of(st.none(), ascending.map(lambda steps: [step + 6 for step in steps])))
    count = len(steps) if steps else draw(st.integers(1, 6))
    bars = draw(st.one_of(st.none(), st.lists(st.tuples(st.integers(0, 9), st.sampled_from([9, 9, 9, 5])),
                                              min_size=count, max_size=count)))
    rows = [tuple(draw(run_float if draw(st.integers(0, 9)) == 0 else st.floats(-10, 10)) for _ in keys) for _ in range(count)]
    meta = draw(st.sampled_from([None, {"max_steps": 9}, {"max_steps": 9, "lr": "cosine"}]))
    return base.Run(keys=keys, rows=rows, lines=count, steps=steps, progress=bars, meta=meta)


def records(draw) -> list[base.Record]:
    return draw(st.lists(st.builds(base.Record, values=st.dictionaries(st.sampled_from(["loss", "k", "eval_loss"]), run_float),
                                   kind=st.sampled_from(list(base.Kind)), step=st.one_of(st.none(), st.integers(0, 9)),
                                   progress=st.one_of(st.none(), st.tuples(st.integers(0, 9), st.sampled_from([9, 5]))),
                                   meta=st.sampled_from([{}, {"max_steps": 9}, {"a": 1.0, "b": "x"}])), max_size=4))


@PROPERTY
@given(st.data(), runs(), st.booleans(), st.sampled_from([0, 1, 200]), st.booleans())
def test_a_run_applied_by_column_is_its_records_applied_in_order(data, run, rewritten, max_keys, keep_history):
    # Whatever the state went through before (steps, bars, a file rewritten and replayed), a
    # run leaves it as its records applied one by one would.
    from exporter.training.signals import SignalSettings, SourceState

    states = [SourceState(SignalSettings(spike_min_points=2, max_keys=max_keys), vocabulary.Vocabulary(), keep_history)
              for _ in range(2)]
    before = records(data.draw)
    for state in states:
        state.apply_all(before, 1.0)
        if rewritten:
            state.mark_rewritten()
    by_column, one_by_one = states
    by_column.apply_run(run, 2.0)
    one_by_one.apply_all(run.records(), 2.0)
    assert same(state_of(by_column), state_of(one_by_one))


def bars_and_dicts(*bars: str) -> list[str]:
    return [line for i, bar in enumerate(bars) for line in (f" 5%|▌   | {bar} [00:01<00:02,  3.1it/s]",
                                                              f"{{'loss': {1.5 + i % 3}, 'k': 2.0}}")]


def iterations(*steps: int, total: int = 1000, loss: str = "2.5") -> list[str]:
    return [f" iteration {step:8d}/ {total} | lm loss: {loss} | k: 1.0 | number of nan iterations: 0 |" for step in steps]


@pytest.mark.parametrize("chunks, fmt, max_keys", [
    ([bars_and_dicts("1/100", "2/100"), bars_and_dicts("3/100", "4/100", "5/100")], "huggingface", 200),
    ([bars_and_dicts("1/100", "2/100"), bars_and_dicts("3/100", "4/10", "5/100", "6/100")], "huggingface", 200),
    ([bars_and_dicts("1/100", "2/100"), bars_and_dicts("3/10", "4/10", "5/10")], "huggingface", 200),
    ([bars_and_dicts("1/10", "2/10"), bars_and_dicts("3/100", "4/100", "2/100")], "huggingface", 200),
    ([bars_and_dicts("1/100", "2/100"), bars_and_dicts("3/100", "4/100")], "huggingface", 0),
    ([bars_and_dicts("1/100", "2/100"), [" 5%|▌   | 3/100 [00:01<00:02,  3.1it/s]{'loss': 9.0}", "{'loss': 1.5, 'k': 2.0}"]],
     "huggingface", 200),
    ([["{'loss': 1.0, 'k': 2.0}"] * 2, ["{'loss': 1.0, 'k': 2.0}", "{'loss': 1.0, 'k': 2.0} Killed", "Killed",
                                        "{'loss': 1.0, 'k': 2.0}", "{'loss': 1.0, 'OutOfMemoryError: CUDA': 2.0}"] * 2],
     "huggingface", 200),
    ([iterations(1, 2), iterations(3, 4, 5)], "megatron", 0),
    ([iterations(1, 2, 3, loss="2.5 | torch.OutOfMemoryError: 1.0"), iterations(4, 5, loss="2.5 | torch.OutOfMemoryError: 1.0")
      + iterations(6, loss="2.5 | torch.OutOfMemoryError: inf") + iterations(7, 8, loss="2.5 | torch.OutOfMemoryError: 1.0")],
     "megatron", 200),
    ([iterations(1, 2), iterations(3, 4, 5, total=7)], "megatron", 200),
    ([iterations(1, 2), [" validation loss at iteration 2 | lm loss value: 2.0 |"], iterations(2, 3, 4)], "megatron", 200),
    ([iterations(5, 6), iterations(3, 4, 5)], "megatron", 200),
    ([iterations(1, 2), iterations(3, 4, loss="inf")], "megatron", 200),
    ([["{'loss': 1.0, 'train_loss': 2.0}"] * 2, ["{'loss': 1.0, 'train_loss': 2.0}", "{'loss': 5.0, 'train_loss': 9.0}"]],
     "huggingface", 200),
    ([['{"step": 1, "loss": 1.0}'] * 2, ['{"step": 2, "loss": 1.0}', '{"step": 3, "loss": 1e308}', '{"step": 4, "loss": 1e308}']],
     "jsonl", 200),
])
def test_what_a_run_may_not_take_by_column(chunks, fmt, max_keys):
    # A bar of another total, a step that stays or goes back, a cap reached, an infinity, a sum
    # that overflows, two keys of one name, a bar with a dict glued on, a line that is a record and
    # reports an event (in the middle of a run of its layout, too): each read as the lines'
    # records, one by one, would leave the state.
    assert_read_as_one_by_one(chunks, fmt, max_keys, keep_history=True)


@PROPERTY
@given(st.data(), st.sampled_from(sorted(RUNS)))
def test_a_run_reads_its_lines_as_parse_does(data, fmt):
    # Whatever run a parser reads from a line on, its records are the records parse gives for
    # the lines it covers, and it covers at least one line.
    lines = [line for group in data.draw(st.lists(RUNS[fmt], min_size=1, max_size=3)) for line in group]
    learner, reference = LINE_FORMATS[fmt](), LINE_FORMATS[fmt]()
    for line in lines[:data.draw(st.integers(0, len(lines)))]:
        outcome(learner.parse, line)
    start = data.draw(st.integers(0, len(lines) - 1))
    run = learner.read_run(lines, start, len(lines))
    if run is None:
        return
    assert 1 <= run.lines <= len(lines) - start
    expected, bar = [], None
    for line in lines[start:start + run.lines]:
        (record,) = reference.parse(line)
        if record.values:
            record.progress, bar = bar, None
            expected.append(record)
        else:
            bar = record.progress  # a bar's record rides on the next line's
    assert same([(r.values, r.kind, r.step, r.progress, r.meta) for r in run.records()],
                [(r.values, r.kind, r.step, r.progress, r.meta) for r in expected]), lines[start:]
    assert all(not r.event and r.wall_time is None for r in expected) and bar is None


def test_a_line_a_run_could_not_take_is_parsed_as_itself():
    # read_run keeps the object of a line it decoded but could not take, for parse of that line.
    parser = jsonl.JsonLines()
    parser.parse('{"step": 1, "loss": 1.0}')  # a training layout learned
    assert parser.read_run(['{"step": 2, "eval_loss": 3.0}'], 0, 1) is None
    (record,) = parser.parse('{"step": 3, "acc": 4.0}')  # another line: read as itself
    assert (record.values, record.step) == ({"acc": 4.0}, 3)
    assert parser.read_run(['{"step": 2, "eval_loss": 3.0}'], 0, 1) is None
    (record,) = parser.parse('{"step": 2, "eval_loss": 3.0}')
    assert (record.values, record.step, record.kind) == ({"eval_loss": 3.0}, 2, base.Kind.EVAL)


def test_learned_layouts_are_few_and_come_from_short_lines():
    # A log inventing a new layout on every line, or very long ones, must not grow what the
    # parsers keep: a few layouts each, learned from lines of a metrics line's length.
    long_key = "k" * (base.MAX_LEARNED_LINE + 10)
    hf, mg, js = hf_console.HuggingFaceConsole(), megatron.Megatron(), jsonl.JsonLines()
    for parser, line in ((hf, f"{{'loss': 1.0, '{long_key}': 2.0}}"), (mg, f" iteration 1/ 9 | {long_key}: 1.0 |"),
                         (js, json.dumps({"step": 1, long_key: 1.0}))):
        assert parser.parse(line)[0].values  # read, not learned
    assert not hf._shapes and not mg._shapes and not js._layouts
    for i in range(100):
        hf.parse(f"{{'loss': 1.0, 'k{i}': 2.0}}")
        mg.parse(f" iteration {i + 1}/ 900 | lm loss: 1.0 | k{i}: 2.0 |")
        js.parse(json.dumps({"step": i, "loss": 1.0, f"k{i}": 2.0}))
    assert len(hf._shapes) == hf_console.MAX_SHAPES and len(mg._shapes) == megatron.MAX_SHAPES
    assert len(js._layouts) == jsonl.MAX_LAYOUTS
