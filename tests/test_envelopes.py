"""The envelope layer against what container runtimes and launchers really write around a
trainer's lines: files written by dockerd and by conmon (tests/fixtures/envelopes), a real run
under torchrun, and the prefixes of the common logging set-ups."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest

from conftest import FIXTURES
from exporter.app import LogReading
from exporter.config import Config, LogConfig
from exporter.logs.envelopes import Envelopes, strip_logging_prefix
from exporter.logs.lines import LineSplitter

CAPTURES = FIXTURES / "envelopes"
REAL = FIXTURES / "real"


def payloads_by_stream(path) -> dict[str | None, list[str]]:
    """Every payload of a file, by the stream its envelope named (None: no envelope)."""
    splitter, envelopes = LineSplitter(), Envelopes()
    out: dict[str | None, list[str]] = {}
    for line in splitter.feed(path.read_bytes()) + splitter.flush():
        payloads = envelopes.unwrap(line)
        if payloads:
            out.setdefault(envelopes.stream, []).extend(payloads)
    for _, _, payloads in envelopes.flush():  # the last line, which had no newline
        out.setdefault("stdout", []).extend(payloads)
    return out


def plain_payloads(path) -> list[str]:
    return payloads_by_stream(path)[None]


@pytest.mark.parametrize("capture", ["docker_json_file.log", "cri_conmon.log"])
def test_a_runtime_log_gives_back_what_the_container_wrote(capture):
    found = payloads_by_stream(CAPTURES / capture)
    assert set(found) == {"stdout", "stderr"}
    assert found["stdout"] == plain_payloads(CAPTURES / "stdout.txt")
    assert found["stderr"] == plain_payloads(CAPTURES / "stderr.txt")
    # The 40,000-character line came in pieces (16 KiB records from dockerd, 8 KiB from conmon).
    (long_line,) = [payload for payload in found["stdout"] if len(payload) > 30_000]
    assert json.loads(long_line)["loss"] == 3.871


def read(path, **config) -> LogReading:
    reading = LogReading(Config(logs=[LogConfig(path=str(path), **config)]))
    reading.read_to_end()
    reading.follower.stop()
    return reading


def comparable(snapshot) -> dict:
    """What a source's state says of training, times left out (they come from the envelope)."""
    fields = dataclasses.asdict(snapshot)
    for name in ("last_progress_time", "last_record_time", "steps_per_second"):
        fields.pop(name)
    return json.loads(json.dumps(fields, default=str).replace("NaN", '"nan"'))


@pytest.mark.parametrize("capture", ["docker_json_file.log", "cri_conmon.log"])
def test_a_runtime_log_is_read_as_the_log_it_wraps(tmp_path, capture):
    # The same Hugging Face run read three ways: as the container wrote it, and as each runtime
    # wrote it around the container's output. (The last line has no newline: it is read when the
    # writer is gone, so here all three leave it out.)
    plain = tmp_path / "train.log"
    shutil.copy(CAPTURES / "stdout.txt", plain)
    wrapped = tmp_path / capture
    shutil.copy(CAPTURES / capture, wrapped)
    expected = read(plain).states[plain.name].snapshot()
    state = read(wrapped).states[wrapped.name].snapshot()
    assert comparable(state) == comparable(expected)
    assert state.step == 12 and state.evals_total == 3 and state.values["loss"] == 3.871
    # The runtime's own time stamps the records: the last line's, not the file's mtime.
    last_time = wrapped.read_text().splitlines()[-2]
    stamp = json.loads(last_time)["time"] if capture.startswith("docker") else last_time.split(" ", 1)[0]
    from datetime import datetime
    assert state.last_record_time == pytest.approx(datetime.fromisoformat(stamp).timestamp(), abs=1e-3)


def test_a_line_split_by_the_runtime_and_cut_over_the_limit_is_dropped_whole():
    envelopes = Envelopes(max_line_chars=100)
    assert envelopes.unwrap("2026-12-01T10:00:00Z stdout P " + "x" * 80) == []
    assert envelopes.unwrap("2026-12-01T10:00:00Z stderr F {'loss': 1.0}") == ["{'loss': 1.0}"]
    assert envelopes.unwrap("2026-12-01T10:00:01Z stdout P " + "y" * 80) == []
    assert envelopes.unwrap("2026-12-01T10:00:02Z stdout F {'loss': 2.0}") == []
    assert envelopes.too_long == 1
    assert envelopes.unwrap("2026-12-01T10:00:03Z stdout F {'loss': 3.0}") == ["{'loss': 3.0}"]


def test_partial_records_are_joined_per_stream():
    envelopes = Envelopes()
    lines = ['{"log":"{\'lo","stream":"stdout","time":"2026-12-01T10:00:00Z"}',
             '{"log":"an error\\n","stream":"stderr","time":"2026-12-01T10:00:00.5Z"}',
             '{"log":"ss\': 1.5}\\r\\u001b[A 3/8 [\\n","stream":"stdout","time":"2026-12-01T10:00:01Z"}']
    assert [envelopes.unwrap(line) for line in lines] == [[], ["an error"], ["{'loss': 1.5}", "3/8 ["]]
    assert envelopes.stream == "stdout" and envelopes.time == pytest.approx(1796119201.0)


def test_torchrun_ranks_and_lines_glued_onto_an_unfinished_bar():
    envelopes = Envelopes()
    line = ("[default0]: 33%|███▎      | 2/6 [00:00<00:00, 19.17it/s][default1]:{'loss': '3.899', 'epoch': "
            "'0.6667'}")
    assert envelopes.stretches([line]) == [("0", None, ["33%|███▎      | 2/6 [00:00<00:00, 19.17it/s]"]),
                                           ("1", None, ["{'loss': '3.899', 'epoch': '0.6667'}"])]
    # srun's task label around torchrun's prefix: the task, then the process within it.
    assert envelopes.stretches(["3: [rank1]:iter 7: loss 3.1000", "3: [rank1]:x[rank2]:y"]) == [
        ("3:1", None, ["iter 7: loss 3.1000", "x"]), ("3:2", None, ["y"])]
    assert envelopes.stretches(["[1,5]<stdout>:step 3 loss 2.5", "12:00:00 started", "10: done"]) == [
        ("5", None, ["step 3 loss 2.5"]), (None, None, ["12:00:00 started"]), ("10", None, ["done"])]


def test_a_real_torchrun_run_is_read_per_rank_as_the_trainer_recorded_it():
    truth = json.loads((REAL / "hf" / "torchrun.truth.json").read_text())
    reading = read(REAL / "hf" / "torchrun.log")
    ranks = {rank for source, _, rank, _ in reading.states.items() if source == "torchrun.log"}
    assert ranks == {None, "0"}  # rank 1 prints no metrics and no progress bar
    rank0 = reading.states.get("torchrun.log", "0").snapshot()
    assert rank0.step == truth["last_step"]
    assert rank0.values["loss"] == pytest.approx(truth["last_loss"], rel=1e-3)  # printed to 4 digits
    assert rank0.best == pytest.approx(truth["best_validation_loss"], rel=1e-3)
    assert rank0.nonfinite == truth["nonfinite"]
    # The evaluation after training is printed only in the "***** eval metrics *****" block,
    # behind the rank prefix: it counts too.
    assert rank0.evals_total == truth["evaluations"]
    assert rank0.values["epoch"] == truth["last_epoch"]


def test_a_real_run_logging_its_dicts_is_read_as_the_trainer_recorded_it():
    truth = json.loads((REAL / "hf" / "logged_dicts.truth.json").read_text())
    state = read(REAL / "hf" / "logged_dicts.log").states["logged_dicts.log"].snapshot()
    # The Trainer prints each dict after the callback logged it, to 4 significant digits.
    assert state.values["loss"] == pytest.approx(truth["last_loss"], rel=1e-3)
    assert state.best == pytest.approx(truth["best_validation_loss"], rel=1e-3)
    assert state.nonfinite == truth["nonfinite"]


@pytest.mark.parametrize("line,message", [
    ("2026-12-01 10:00:00,123 - __main__ - INFO - {'loss': 1.0}", "{'loss': 1.0}"),
    ("2026-12-01 10:00:00,123 - INFO - __main__ - {'loss': 1.0}", "{'loss': 1.0}"),
    ("12/01/2026 10:00:00 - INFO - __main__ - {'loss': 1.0}", "{'loss': 1.0}"),
    ("INFO:__main__:{'loss': 1.0}", "{'loss': 1.0}"),
    ("WARNING: a warning", "a warning"),
    ("[INFO|trainer.py:2134] 2026-12-01 10:00:00,123 >> ***** Running training *****", "***** Running training *****"),
    ("[2026-12-01 10:00:00,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, skipped=0", "[Rank 0] step=10, skipped=0"),
    ("2026-12-01 10:00:00 | INFO | train_inner | epoch 001:    100 / 1891 loss=9.8", "epoch 001:    100 / 1891 loss=9.8"),
    ("[2026-12-01 10:00:00,123][fairseq.trainer][INFO] - begin training", "begin training"),
    ("2026-12-01 10:00:00.123 | INFO     | __main__:main:12 - step 3 loss 2.5", "step 3 loss 2.5"),
    ("I1201 10:00:00.123456 140000 train.py:12] loss 2.5", "loss 2.5"),
    ("2026-12-01 10:00:00,123 INFO exporter.app: listening", "listening"),
    # Lines that merely start like a prefix are left as they are.
    ("2026-12-01 was a good day - INFO - nothing", "2026-12-01 was a good day - INFO - nothing"),
    ("[2024-05-01 09:59:55] iteration 1/ 10 | lm loss: 3.0E+00 |", "[2024-05-01 09:59:55] iteration 1/ 10 | lm loss: 3.0E+00 |"),
    ("INFORMATION: read the docs", "INFORMATION: read the docs"),
    ("45%|████▌     | 450/1000 [01:02<01:16,  7.21it/s]", "45%|████▌     | 450/1000 [01:02<01:16,  7.21it/s]"),
])
def test_logging_prefixes(line, message):
    assert strip_logging_prefix(line) == message
    assert Envelopes().unwrap(line) == [message]


def test_a_nan_inside_a_runtime_record_is_counted(tmp_path):
    log = tmp_path / "0.log"
    log.write_text("2026-12-01T10:00:00.000000001Z stdout F {'loss': 2.0, 'epoch': 0.1}\n"
                   "2026-12-01T10:00:01.000000001Z stderr F [rank0]:{'loss': nan, 'epoch': 0.2}\n")
    reading = read(log)
    assert reading.states.get("0.log", "0").snapshot().nonfinite == {"loss": 1}
    assert math.isclose(reading.states["0.log"].snapshot().values["loss"], 2.0)
