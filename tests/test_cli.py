"""The command's errors: one clear line, exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_config(tmp_path, text: str):
    path = tmp_path / "exporter.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_flag():
    assert_one_line_error(run("--log", "x.log", "--bogus"), "unrecognized arguments: --bogus")


def test_bad_flag_value():
    assert_one_line_error(run("--log", "x.log", "--gpu.poll-interval", "-1"), "--gpu.poll-interval")


def test_unknown_format():
    assert_one_line_error(run("--log", "x.log", "--format", "nope"), "--format")


def test_no_logs_given():
    assert_one_line_error(run(), "no logs to follow")


def test_bad_listen_address():
    assert_one_line_error(run("--log", "x.log", "--web.listen-address", "localhost"), "listen address")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_config(tmp_path, "logs:\n  - path: a.log\n  bad: [unclosed\n")
    assert_one_line_error(run("--config", path), path, "invalid YAML", "line")


def test_unknown_key_names_the_key(tmp_path):
    path = write_config(tmp_path, "logs: [a.log]\nsignals:\n  patiense: 3\n")
    assert_one_line_error(run("--config", path), path, "'signals.patiense'", "patience")


def test_wrong_type_names_the_key_and_expectation(tmp_path):
    path = write_config(tmp_path, "logs: [a.log]\nsignals:\n  patience: soon\n")
    assert_one_line_error(run("--config", path), path, "signals.patience", "expected a whole number")


def test_out_of_range_value(tmp_path):
    path = write_config(tmp_path, "logs: [a.log]\nsignals:\n  spike_factor: 0.5\n")
    assert_one_line_error(run("--config", path), "signals.spike_factor", "more than 1")


def test_invalid_regex_pattern(tmp_path):
    path = write_config(tmp_path, "logs:\n  - path: a.log\n    format: regex\n    patterns: ['(?P<loss>[0-9']\n")
    assert_one_line_error(run("--config", path), "logs[0].patterns[0]", "invalid regular expression")


def test_regex_without_named_group(tmp_path):
    path = write_config(tmp_path, "logs:\n  - path: a.log\n    format: regex\n    patterns: ['loss=\\S+']\n")
    assert_one_line_error(run("--config", path), "logs[0].patterns[0]", "named group")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run("--config", str(tmp_path / "nope.yaml")), "nope.yaml", "cannot read config")


def test_unknown_collector(tmp_path):
    path = write_config(tmp_path, "logs: [a.log]\ncollectors:\n  disk: true\n")
    assert_one_line_error(run("--config", path), "collectors.disk")


def test_inspect_missing_path(tmp_path):
    assert_one_line_error(run("inspect", str(tmp_path / "missing.log")), "missing.log")


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("training-exporter ")


@pytest.mark.parametrize("command", [["--help"], ["inspect", "--help"], ["demo", "--help"]])
def test_help(command):
    result = run(*command)
    assert result.returncode == 0
    assert "usage:" in result.stdout
