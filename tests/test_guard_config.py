"""The guard's configuration: the README's example as written, flags over the file, and every
mistake one line naming the file and the key, exit status 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from exporter.flags import config_from_args, serve_parser
from exporter.config import ConfigError, load_file
from test_security import PASSWORD_HASH


@pytest.fixture
def web_config(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alertmanager: {PASSWORD_HASH}\n")
    return path


def test_the_readme_example_is_a_valid_config(tmp_path, web_config):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Guard: stopping a failing run"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    path = tmp_path / "exporter.yaml"
    path.write_text(example.replace("/etc/training-exporter/web.yml", str(web_config)))
    guard = load_file(str(path)).guard
    assert guard.rules.nonfinite.keys == ["loss", "validation_loss"] and guard.rules.nonfinite.count == 1
    assert guard.rules.validation_plateau is not None and guard.rules.loss_plateau is not None
    assert guard.rules.stalled.seconds == 1800 and guard.rules.diverging.ratio == 3
    assert guard.webhook.match == {"job": "llm-pretrain-42"} and guard.signal == "SIGINT"


def config(*argv: str):
    return config_from_args(serve_parser("training-exporter").parse_args(["--log", "x.log", *argv]), ["x.log"])


def test_flags_make_the_guard_and_override_the_file(tmp_path):
    assert config().guard is None  # off unless asked for
    guard = config("--process.pid-file", "t.pid", "--guard.on-nonfinite", "loss, grad_norm",
                   "--guard.nonfinite-count", "3", "--guard.on-stall", "600", "--guard.dry-run").guard
    assert guard.rules.nonfinite.keys == ["loss", "grad_norm"] and guard.rules.nonfinite.count == 3
    assert guard.rules.stalled.seconds == 600 and guard.dry_run and guard.rules.diverging is None
    path = tmp_path / "exporter.yaml"
    path.write_text("process: {pid_file: t.pid}\nguard:\n  rules: {nonfinite: {count: 2}}\n  signal: SIGTERM\n")
    guard = config("--config", str(path), "--guard.command", "touch stop").guard
    assert guard.command == "touch stop" and guard.signal is None  # the flag's action replaces the file's
    assert guard.rules.nonfinite.count == 2 and guard.rules.nonfinite.keys == ["loss", "validation_loss"]


@pytest.mark.parametrize("body, message", [
    ("guard: {}", "guard: no rule and no webhook: nothing to act on (see guard.rules)"),
    ("guard: {rules: {nonfinite: true}, signal: SIGSEGV}",
     "guard.signal: expected one of SIGINT, SIGTERM, SIGKILL, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, got 'SIGSEGV'"),
    ("guard: {rules: {nonfinite: true}, signal: SIGINT, command: scancel 1}",
     "guard.command: give a signal or a command, not both"),
    ("guard: {rules: {nonfinite: true}, command: '  '}", "guard.command: empty"),
    ("guard: {rules: {nonfinite: {keys: []}}}", "guard.rules.nonfinite.keys: expected at least one key"),
    ("guard: {rules: {nonfinite: {count: 0}}}", "guard.rules.nonfinite.count: expected 1 or more and at most 1e+06, got 0"),
    ("guard: {rules: {stalled: {seconds: .inf}}}", "guard.rules.stalled.seconds: expected a finite number"),
    ("guard: {rules: {diverging: {ratio: 1}}}", "guard.rules.diverging.ratio: expected more than 1 and at most 1e+06, got 1"),
    ("guard: {rules: {flaky: true}}", "unknown key 'guard.rules.flaky' (expected one of: nonfinite, validation_plateau, "
                                      "loss_plateau, stalled, diverging)"),
    ("guard: {rules: {validation_plateau: yes please}}", "guard.rules.validation_plateau: expected a mapping"),
    ("guard: {webhook: {match: {}}}", "guard.webhook.match: expected the labels that name this run's alerts"),
    ("guard: {webhook: {match: {job-name: x}}}", "guard.webhook.match.job-name: not a label name"),
    ("guard: {webhook: {match: {job: x}}}", "guard.webhook: needs credentials: a web config (web.config_file) with "
                                            "basic_auth_users or client certificates (client_auth_type)"),
    ("signals: {loss_patience: 0}", "signals.loss_patience: expected 1 or more and at most 1e+06, got 0"),
    ("signals: {loss_window_steps: -5}", "signals.loss_window_steps: expected 1 or more"),
])
def test_a_mistake_is_one_line_naming_the_file_and_the_key(tmp_path, body, message):
    path = tmp_path / "exporter.yaml"
    path.write_text(f"logs: [x.log]\nprocess: {{pid_file: t.pid}}\n{body}\n")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


def test_the_guard_needs_a_way_to_find_the_process(tmp_path):
    path = tmp_path / "exporter.yaml"
    path.write_text("logs: [x.log]\ncollectors: {gpu: false}\nguard: {rules: {nonfinite: true}}\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "--config", str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert result.stderr == (f"training-exporter: error: {path}: guard: nothing finds the training process it acts on: "
                             "set process.pid_file or process.cmdline_pattern (or keep process.from_gpu with the gpu "
                             "collector)\n")
