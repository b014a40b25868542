"""The exporter process against signals and bad configuration, and its own log lines.

Signals: SIGHUP is logged and ignored, SIGUSR1 and SIGQUIT dump every thread's stack and the
exporter keeps serving. Every bad config (wrong encoding, deep nesting, a FIFO, a directory, a
huge file, non-finite or absurd numbers, unknown vocabulary) is one line on stderr and exit
status 2. A collector's dead thread shows as a failed collector. Log lines are logfmt or JSON,
one record per line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from conftest import FAKE_NVML_DIR, ROOT, ExporterProcess, parse_metrics, value, wait_for
from exporter.hardware.gpu import GpuCollector
from exporter.logformat import JsonFormatter, LogfmtFormatter
from exporter.registry import build_registry
from exporter.server import MetricsServer
from procs import gpu

if str(FAKE_NVML_DIR.parent) not in sys.path:
    sys.path.insert(0, str(FAKE_NVML_DIR.parent))
from fake_nvml import pynvml as fake_pynvml  # noqa: E402

HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")
LOGFMT_LINE = re.compile(r'ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warning|error|critical) '
                         r'logger=[\w.]+ msg=("([^"\\]|\\.)*"|\S+)( traceback="([^"\\]|\\.)*")?')


def start(tmp_path, *args: str) -> ExporterProcess:
    log = tmp_path / "train.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    process = ExporterProcess(["--log", str(log), *HW_OFF, *args])
    process.wait_ready()
    return process


def signal_and_check_alive(process: ExporterProcess, signum: int) -> None:
    process.proc.send_signal(signum)
    time.sleep(0.5)  # the handler runs when the main thread wakes, within 0.1 s
    assert process.proc.poll() is None, f"{signal.Signals(signum).name} ended the exporter"
    assert requests.get(process.url + "/metrics", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- 14: signals

def test_sighup_is_logged_and_sigusr1_and_sigquit_dump_every_stack(tmp_path):
    process = start(tmp_path)
    try:
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
            signal_and_check_alive(process, signum)
    finally:
        output = process.stop()
    assert process.proc.returncode == 0, output
    lines = output.splitlines()
    hangup = [line for line in lines if "SIGHUP" in line]
    assert len(hangup) == 1 and "restart" in hangup[0] and "level=warning" in hangup[0], output
    for name in ("SIGUSR1", "SIGQUIT"):
        dump = [line for line in lines if f"received {name}" in line]
        # One record, holding every thread's stack: the serving loop, the main thread's wait.
        assert len(dump) == 1, output
        assert "thread http:" in dump[0] and "serve_forever" in dump[0] and "thread MainThread:" in dump[0]
        assert LOGFMT_LINE.fullmatch(dump[0]), dump[0]


# -------------------------------------------------------------------------- 15: bad config

def run_exporter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=20)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


NOT_UTF8 = "logs: [caf\xe9.log]\n".encode("latin-1")
DEEP = ("logs: [a.log]\nsignals: " + "[" * 50_000 + "]" * 50_000 + "\n").encode()


BAD_CONFIGS = {
    "latin-1": (NOT_UTF8, ("not UTF-8", "byte 0xe9 at offset 10")),
    "50000-deep": (DEEP, ("nested more than 32 levels deep",)),
    "44-deep": (b"logs: [a.log]\nsignals: {patience: {a: {b: {c: " + b"[" * 40 + b"]" * 40 + b"}}}}\n",
                ("nested more than 32 levels deep",)),
    "1.1-MB": (b"logs: [a.log]\n" + b"# padding\n" * 110_000, ("larger than 1 MiB",)),
    "inf": (b"logs: [a.log]\ngpu:\n  poll_interval_seconds: .inf\n",
            ("gpu.poll_interval_seconds", "expected a finite number")),
    "nan": (b"logs: [a.log]\ngpu:\n  poll_interval_seconds: .nan\n",
            ("gpu.poll_interval_seconds", "expected a finite number")),
    "negative": (b"logs: [a.log]\ngpu:\n  poll_interval_seconds: -1\n", ("gpu.poll_interval_seconds", "0.01 or more")),
    "huge-interval": (b"logs: [a.log]\ngpu:\n  poll_interval_seconds: 1.0e+12\n",
                      ("gpu.poll_interval_seconds", "at most 3600")),
    "huge-rescan": (b"logs: [a.log]\nfollow:\n  rescan_interval_seconds: 1.0e+300\n",
                    ("follow.rescan_interval_seconds", "at most")),
    "5000-digits": (b"logs: [a.log]\nfollow:\n  max_line_bytes: " + b"9" * 5000 + b"\n", ("invalid YAML",)),
    "huge-patience": (b"logs: [a.log]\nsignals:\n  patience: 1000000000000\n", ("signals.patience", "at most")),
    "4000-digits": (b"logs: [a.log]\nsignals:\n  patience: " + b"9" * 4000 + b"\n", ("signals.patience", "at most")),
    "minus-inf": (b"logs: [a.log]\nsignals:\n  min_delta: -.inf\n", ("signals.min_delta", "finite")),
    "unknown-vocabulary": (b"logs: [a.log]\nvocabulary:\n  validation_los: [holdout_nll]\n",
                           ("vocabulary.validation_los", "not a canonical name", "validation_loss")),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)  # by name: the contents are too large for a test id
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, case):
    content, fragments = BAD_CONFIGS[case]
    path = tmp_path / "exporter.yaml"
    path.write_bytes(content)
    assert_refused(run_exporter("--config", str(path)), str(path), *fragments)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_config_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path, kind):
    path = tmp_path / "exporter.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading, it would wait for a writer for ever
    elif kind == "directory":
        path.mkdir()
    else:
        path = "/dev/zero"  # endless
    expected = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device"}[kind]
    for flag in ("--config", "--web.config.file"):
        assert_refused(run_exporter("--log", "a.log", flag, str(path)), str(path), "not a regular file", expected)


def test_a_bad_web_config_or_certificate_file_is_refused_the_same_way(tmp_path):
    web = tmp_path / "web.yml"
    web.write_bytes("basic_auth_users:\n  us\xe9r: x\n".encode("latin-1"))
    assert_refused(run_exporter("--log", "a.log", "--web.config.file", str(web)), str(web), "not UTF-8",
                   "byte 0xe9 at offset 22")
    fifo = tmp_path / "server.crt"
    os.mkfifo(fifo)
    web.write_text(f"tls_server_config:\n  cert_file: {fifo}\n  key_file: {fifo}\n")
    assert_refused(run_exporter("--log", "a.log", "--web.config.file", str(web)), "tls_server_config.cert_file",
                   "not a regular file but a FIFO")


@pytest.mark.parametrize("flag, number, fragment", [
    ("--gpu.poll-interval", "inf", "--gpu.poll-interval"),
    ("--gpu.poll-interval", "nan", "--gpu.poll-interval"),
    ("--gpu.poll-interval", "1e12", "gpu.poll_interval_seconds"),
    ("--signals.min-delta", "inf", "signals.min_delta"),
])
def test_a_non_finite_or_absurd_number_on_the_command_line_is_refused(flag, number, fragment):
    assert_refused(run_exporter("--log", "a.log", flag, number), fragment)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its death is the point
def test_a_dead_gpu_poll_thread_shows_as_a_failed_collector(caplog):
    # Any error that ends the poll thread (here an interval no wait accepts) would otherwise leave
    # its last snapshot served as current, and the collector reported as working, for ever.
    collector = GpuCollector(poll_interval=float("inf"), nvml=fake_pynvml.load(
        {"driver_version": "550.54.15", "cuda_version": 12040, "gpus": [gpu(0)]}))
    registry = build_registry([collector])
    server = MetricsServer("127.0.0.1:0", registry, lambda: True)
    server.start()

    def scrape() -> dict:
        return parse_metrics(requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text)

    try:
        with caplog.at_level(logging.ERROR, logger="exporter.hardware.gpu"):
            collector.start()
            wait_for(lambda: value(scrape(), "training_exporter_collector_success", collector="gpu") == 0, 10,
                     "the gpu collector still reports success with its poll thread dead")
            metrics = scrape()
    finally:
        collector.stop()
        server.stop()
    assert value(metrics, "training_exporter_collector_success", collector="gpu") == 0
    assert value(metrics, "training_gpu_up", gpu="0", uuid=gpu(0)["uuid"]) is None
    said = [r.getMessage() for r in caplog.records if "poll thread has ended" in r.getMessage()]
    assert len(said) == 1, caplog.text


# --------------------------------------------------------------------------- log format

def test_logfmt_is_the_default_one_record_per_line(tmp_path):
    process = start(tmp_path)
    signal_and_check_alive(process, signal.SIGUSR1)  # a record of many lines of stacks
    output = process.stop()
    lines = output.splitlines()
    assert len(lines) >= 4, output
    for line in lines:
        assert LOGFMT_LINE.fullmatch(line), line
    assert any("level=info logger=exporter.app msg=\"listening on http://127.0.0.1:" in line for line in lines)


def test_json_log_format_from_the_flag_and_the_config(tmp_path):
    config = tmp_path / "exporter.yaml"
    config.write_text("log_format: json\n")
    for args in (("--log.format", "json"), ("--config", str(config))):
        process = start(tmp_path, *args)
        signal_and_check_alive(process, signal.SIGUSR1)
        records = [json.loads(line) for line in process.stop().splitlines()]
        assert all(set(record) == {"ts", "level", "logger", "msg"} for record in records), records
        assert any(r["logger"] == "exporter.app" and r["msg"].startswith("listening on") for r in records)
        dump = [r for r in records if r["msg"].startswith("received SIGUSR1")]
        assert len(dump) == 1 and "\nthread http:\n" in dump[0]["msg"]


def test_a_traceback_stays_inside_its_record():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("exporter.x", logging.ERROR, __file__, 1, 'failed on "%s"', ("a b",),
                                   sys.exc_info())
    line = LogfmtFormatter().format(record)
    assert "\n" not in line and LOGFMT_LINE.fullmatch(line), line
    assert 'msg="failed on \\"a b\\""' in line and 'traceback="Traceback (most recent call last):\\n' in line
    assert "ValueError: bad\\nvalue" in line
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["level"] == "error" and parsed["msg"] == 'failed on "a b"'
    assert parsed["traceback"].startswith("Traceback") and parsed["traceback"].endswith("ValueError: bad\nvalue")
