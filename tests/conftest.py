"""Shared test helpers: a real exporter process on loopback, read over real HTTP."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from stack import free_port  # noqa: F401 - one definition, used by the tests through conftest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAKE_NVML_DIR = Path(__file__).resolve().parent / "fake_nvml"


def load_script(path: Path, name: str):
    """A script of the repository's (alert_rules/build.py, benchmarks/compiled.py), imported as a
    module of its own: the scripts are not a package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ExporterProcess:
    """``python -m exporter ...`` as a child process, listening on a free loopback port."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: Path | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        """``prefix`` runs the exporter under another command (setpriv, say)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [full_env.get("PYTHONPATH", ""), str(ROOT)]))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "exporter", *args, "--web.listen-address", f"127.0.0.1:{self.port}"],
            env=full_env, cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if requests.get(self.url + "/-/healthy", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError("exporter did not become healthy")

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_healthy(timeout)
        wait_for(lambda: requests.get(self.url + "/-/ready", timeout=1).status_code == 200, timeout,
                 "exporter never became ready")

    def metrics(self) -> dict:
        """{(name, frozenset(labels.items())): value} of the current /metrics."""
        response = requests.get(self.url + "/metrics", timeout=5)
        assert response.status_code == 200
        return parse_metrics(response.text)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""


def parse_metrics(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(metrics: dict, name: str, **labels) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def wait_for(predicate, timeout: float = 10.0, message: str = "condition not met", interval: float = 0.02):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (requests.RequestException, KeyError, TypeError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"{message} (last error: {last_error})")


@pytest.fixture
def exporter_process():
    started: list[ExporterProcess] = []

    def start(*args: str, env: dict | None = None, ready: bool = True) -> ExporterProcess:
        process = ExporterProcess(list(args), env=env)
        started.append(process)
        if ready:
            process.wait_ready()
        else:
            process.wait_healthy()
        return process

    yield start
    for process in started:
        process.stop()
