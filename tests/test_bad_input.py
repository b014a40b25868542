"""Bad input through the whole reading path, and through a real exporter process: random and
mutated lines for every format, lines of 10 MB, invalid UTF-8 and NUL bytes, a flood of distinct
keys, deeply nested JSON. The exporter stays up, memory stays bounded, the counters say what
happened."""

from __future__ import annotations

import json
import re
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES, value, wait_for
from exporter.logs.dialects import DialectChoice
from exporter.logs.formats import LINE_FORMATS
from exporter.logs.formats.hf_console import HuggingFaceConsole
from exporter.logs.readers import LineReader, LogSpec
from exporter.logs.sources import LogFollower
from exporter.training.collector import TrainingCollector
from exporter.training.signals import SignalSettings
from exporter.training.states import TrainingStates
from exporter.training.vocabulary import Vocabulary
from procs import HW_OFF, rss_mib

# ------------------------------------------------------------------ fuzzing the reading path

REAL_TEXT = [FIXTURES / "console" / name for name in sorted(p.name for p in (FIXTURES / "console").iterdir())] + [
    FIXTURES / "real" / name for name in ("hf_console.log", "hf_console_nan.log", "keras_training.csv",
                                          "lightning_metrics.csv", "lightning_hparams.yaml")]
REAL_LINES = sorted({line for path in REAL_TEXT for line in re.split(rb"[\r\n]", path.read_bytes()) if line.strip()})
NOISE = [b"\r", b"\n", b"\r\n", b"\x00", b"\xff\xfe", b"\xc3", b"\x1b[A", b"{", b"}", b"'", b'"', b"nan", b"1e999",
         b"-inf", b"[" * 50, b"|", b": ", b",", b"=", b"\t", "ü鍵".encode(), b"\xed\xa0\x80"]


@st.composite
def mutated_line(draw) -> bytes:
    line = bytearray(draw(st.sampled_from(REAL_LINES)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["cut", "insert", "flip", "double"]))
        if action == "cut":
            del line[at:]
        elif action == "insert":
            line[at:at] = draw(st.one_of(st.sampled_from(NOISE), st.binary(max_size=6)))
        elif action == "flip" and at < len(line):
            line[at] = draw(st.integers(0, 255))
        else:
            line[at:] = line[at:] * 2
    return bytes(line)


# A log as it arrives: pieces of lines, whole lines, random bytes, written in several goes.
chunks = st.lists(st.one_of(mutated_line().map(lambda b: b + b"\n"), mutated_line(), st.binary(max_size=40),
                            st.sampled_from(NOISE)), min_size=1, max_size=25)
FILE_NAMES = {"auto": "fuzz.log", "lightning_csv": "fuzz.csv", "keras_csv": "fuzz.csv", "jsonl": "fuzz.jsonl"}
SPECS = [LogSpec(path="", format="auto", source="auto")] + [
    LogSpec(path="", format=name, source=name) for name in LINE_FORMATS] + [
    LogSpec(path="", format="regex", source="regex",
            patterns=((r"(?P<step>\d+).*loss[=: ]+(?P<loss>\S+)", "train"), (r"val\w* loss[=: ]+(?P<v>\S+)", "eval")))]
KEY = re.compile(r"^[a-z0-9_]{1,64}$")


def new_follower(specs: list[LogSpec]) -> LogFollower:
    return LogFollower(specs, TrainingStates(SignalSettings(), Vocabulary()))


def exposition(follower: LogFollower) -> list:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainingCollector(follower.sink, follower.files))
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pieces=chunks)
def test_every_line_format_survives_mutated_and_random_input(tmp_path_factory, pieces):
    directory = tmp_path_factory.mktemp("fuzz")
    specs = []
    for spec in SPECS:
        path = directory / spec.source / FILE_NAMES.get(spec.format, "fuzz.log")
        path.parent.mkdir()
        path.touch()
        specs.append(LogSpec(path=str(path), format=spec.format, source=spec.source, patterns=spec.patterns))
    follower = new_follower(specs)
    follower.discover()
    readers = list(follower.readers.values())
    for piece in pieces:
        for spec in specs:
            with open(spec.path, "ab") as handle:
                handle.write(piece)
        for reader in readers:
            reader.poll()  # directly: an exception must reach the test, not the follower's log
    for reader in readers:
        stats = reader.stats
        assert stats.parse_errors + stats.ignored <= stats.lines
        assert stats.bytes == sum(len(p) for p in pieces)
    families = exposition(follower)
    for family in families:
        for sample in family.samples:
            assert isinstance(sample.value, float)
            assert "key" not in sample.labels or KEY.match(sample.labels["key"]), sample
    follower.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_documents_and_event_files_survive_mutation(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("docs")
    originals = {"trainer_state.json": FIXTURES / "real" / "hf_trainer_state.json",
                 "hparams.yaml": FIXTURES / "real" / "lightning_hparams.yaml",
                 "events.out.tfevents.1": FIXTURES / "real" / "summarywriter" / "events.out.tfevents.fixture"}
    for name, original in originals.items():
        content = bytearray(original.read_bytes())
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(content) - 1))
            content[at] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            del content[data.draw(st.integers(0, len(content))):]
        (directory / name).write_bytes(bytes(content))
    follower = new_follower([LogSpec(path=str(directory))])
    follower.discover()
    assert len(follower.readers) == 3
    for reader in follower.readers.values():
        reader.poll()
    exposition(follower)
    follower.stop()


# ------------------------------------------------------------------- a real exporter process

def jsonl(**values) -> str:
    return json.dumps(values) + "\n"


def metrics_of(exporter) -> dict:
    return exporter.metrics()


def test_ten_megabyte_lines_are_dropped_whole_and_counted(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    exporter = exporter_process("--log", str(log), *HW_OFF)
    baseline = rss_mib(exporter.proc.pid)
    with open(log, "w") as handle:
        handle.write(jsonl(step=1, loss=2.0))
        handle.write('{"step": 2, "loss": 1.0, "blob": "' + "x" * (10 << 20) + '"}\n')  # one 10 MB line
        handle.write(jsonl(step=3, loss=1.5))
        handle.write("y" * (10 << 20))  # and one that arrives in pieces, with no newline yet
        handle.flush()
        time.sleep(0.5)
        handle.write("y" * (10 << 20) + "\n")
        handle.write(jsonl(step=4, loss=1.25))
    wait_for(lambda: value(metrics_of(exporter), "training_step", source="train.jsonl") == 4, 20, "step 4 not read")
    metrics = metrics_of(exporter)
    assert value(metrics, "training_log_lines_too_long_total", source="train.jsonl") == 2
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == 3
    assert value(metrics, "training_loss", source="train.jsonl") == 1.25
    assert value(metrics, "training_log_read_bytes_total", source="train.jsonl") > 30 << 20
    # A line is held until its end only up to the 1 MiB limit: 30 MB of lines cost no 30 MB.
    assert rss_mib(exporter.proc.pid) - baseline < 25


def test_invalid_utf8_and_nul_bytes(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    log.write_bytes(b'{"step": 1, "loss": 2.0}\n'
                    b'{"step": 2, "loss": 1.5, "acc\xff\xfe": 0.5}\n'  # invalid UTF-8 inside a key
                    b'{"step": 3,\x00 "loss": 1.25}\x00\n'  # NULs are removed
                    b'\xff\xfe\xfd\xfc\n'  # nothing but invalid bytes
                    b'{"step": 4, "loss": \xff}\n'  # invalid where a number should be
                    b'{"step": 5, "lo\x00ss": 1.0}\n')
    exporter = exporter_process("--log", str(log), *HW_OFF)
    metrics = metrics_of(exporter)
    assert value(metrics, "training_step", source="train.jsonl") == 5
    assert value(metrics, "training_loss", source="train.jsonl") == 1.0
    assert value(metrics, "training_value", source="train.jsonl", key="acc") == 0.5
    assert value(metrics, "training_log_lines_total", source="train.jsonl") == 6
    assert value(metrics, "training_log_parse_errors_total", source="train.jsonl") == 1
    assert value(metrics, "training_records_total", source="train.jsonl", kind="train") == 4


def test_deeply_nested_json_is_a_parse_error(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    depth = 100_000  # the lines stay under the 1 MiB line limit
    log.write_text(jsonl(step=1, loss=2.0) + '{"loss": ' + "[" * depth + "]" * depth + "}\n"
                   + '{"a": ' * depth + "1" + "}" * depth + "\n" + jsonl(step=2, loss=1.0))
    console = tmp_path / "console.log"
    console.write_text("{'loss': 2.0, 'epoch': 0.1}\n{'loss': " + "[" * depth + "]" * depth + ", 'epoch': 0.2}\n"
                       "{'loss': " + "(" * depth + "\n{'loss': 1.0, 'epoch': 0.3}\n")
    exporter = exporter_process("--log", str(log), "--log", str(console), *HW_OFF)
    metrics = metrics_of(exporter)
    assert value(metrics, "training_step", source="train.jsonl") == 2
    assert value(metrics, "training_log_parse_errors_total", source="train.jsonl") == 2
    assert value(metrics, "training_loss", source="console.log") == 1.0
    assert value(metrics, "training_log_parse_errors_total", source="console.log") == 1
    assert value(metrics, "training_records_total", source="console.log", kind="train") == 3


def test_a_million_distinct_keys_cost_no_memory_beyond_the_key_cap(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    log.write_text(jsonl(step=0, loss=3.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    metrics_of(exporter)
    baseline = rss_mib(exporter.proc.pid)
    keys_per_line, lines = 100, 10_000
    with open(log, "a") as handle:
        for i in range(lines):
            first = i * keys_per_line
            handle.write(json.dumps({"step": i + 1, **{f"k{n:07d}": 0.5 for n in range(first, first + keys_per_line)}}))
            handle.write("\n")
    wait_for(lambda: value(metrics_of(exporter), "training_step", source="train.jsonl") == lines, 60,
             "the flood was not read")
    metrics = metrics_of(exporter)
    kept = [k for k in metrics if k[0] == "training_value" and ("source", "train.jsonl") in k[1]]
    assert len(kept) == 200  # signals.max_keys
    assert value(metrics, "training_dropped_keys_total", source="train.jsonl") == lines * keys_per_line - 200
    grown = rss_mib(exporter.proc.pid) - baseline
    assert grown < 20, f"RSS grew by {grown:.1f} MiB"


def test_long_distinct_keys_are_not_remembered(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    log.write_text(jsonl(step=0, loss=3.0))
    exporter = exporter_process("--log", str(log), *HW_OFF)
    metrics_of(exporter)
    baseline = rss_mib(exporter.proc.pid)
    lines, keys_per_line, key_bytes = 400, 30, 4096
    with open(log, "a") as handle:
        for i in range(lines):
            keys = {f"{n:08d}".ljust(key_bytes, "k"): 1.0 for n in range(i * keys_per_line, (i + 1) * keys_per_line)}
            handle.write(json.dumps({"step": i + 1, **keys}) + "\n")
    wait_for(lambda: value(metrics_of(exporter), "training_step", source="train.jsonl") == lines, 60,
             "the flood was not read")
    grown = rss_mib(exporter.proc.pid) - baseline
    # 12,000 keys of 4 KB went through: keeping any sizeable share of them would show.
    assert grown < 20, f"RSS grew by {grown:.1f} MiB"
    assert value(metrics_of(exporter), "training_dropped_keys_total", source="train.jsonl") == lines * keys_per_line - 200


class _BuggyHuggingFace:
    """The Hugging Face dialect with a bug: it raises something other than ParseError on a line
    it never expected, as a dialect with a slip in it (or compiled code given a value of a type
    its annotations deny) would."""

    name = "huggingface"

    def __init__(self) -> None:
        self._dialect = HuggingFaceConsole()

    def parse(self, line: str):
        if "surprise" in line:
            raise KeyError("surprise")
        return self._dialect.parse(line)


def test_a_dialects_bug_costs_the_line_it_met_not_the_lines_after_it(tmp_path, caplog):
    log = tmp_path / "train.log"
    lines = ["{'loss': 2.5, 'epoch': 0.1}", "{'loss': 2.4, 'surprise': 1, 'epoch': 0.2}",
             "{'loss': 2.3, 'epoch': 0.3}", "{'loss': 2.2, 'surprise': 2, 'epoch': 0.4}", "{'loss': 2.1, 'epoch': 0.5}"]
    log.write_text("\n".join(lines) + "\n")
    states = TrainingStates(SignalSettings(), Vocabulary())
    reader = LineReader(str(log), "train.log", states, LogSpec(path=str(log), format="huggingface"), 1 << 20)
    reader.dialects = DialectChoice([_BuggyHuggingFace()], forced=True)
    states.add_source("train.log")
    reader.poll()
    snapshot = states.get("train.log").snapshot()
    assert snapshot.records["train"] == 3 and snapshot.values["loss"] == 2.1  # every line after each bug
    assert reader.stats.parse_errors == 2 and reader.stats.lines == 5
    assert [message for message in caplog.messages if "a dialect failed" in message] == [
        f"source 'train.log': a dialect failed on a line of {log} (counted as a parse error; reading goes on): "
        f"{lines[1]!r}"]  # said once per file, with its traceback
