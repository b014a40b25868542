"""training_exporter_build_info's revision: the image build's, else the checkout's HEAD, else
"unknown"; read from real exporter processes started from copies of the package. And its
reading_path: "source" as the package is checked out (the compiled build: test_compiled.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import ROOT, ExporterProcess
from prometheus_client.parser import text_string_to_metric_families

# Git needs an author to commit; the tests' commits are throwaway.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def build_info(exporter: ExporterProcess) -> dict[str, str]:
    text = requests.get(exporter.url + "/metrics", timeout=5).text
    [labels] = [sample.labels for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "training_exporter_build_info"]
    return labels


def build_labels(source_root: Path, tmp_path: Path, **env: str) -> dict[str, str]:
    """The build an exporter imported from source_root reports (started there, so that
    `python -m exporter` finds that copy first)."""
    exporter = ExporterProcess(["--log", str(tmp_path / "train.log"), "--no-collector.gpu"],
                               env={"PYTHONPATH": str(source_root), "TRAINING_EXPORTER_REVISION": "", **env},
                               cwd=source_root)
    try:
        exporter.wait_healthy()
        labels = build_info(exporter)
    finally:
        output = exporter.stop()
    assert "Traceback" not in output, output
    return labels


def revision_of(source_root: Path, tmp_path: Path, **env: str) -> str:
    return build_labels(source_root, tmp_path, **env)["revision"]


def copy_package(destination: Path) -> Path:
    shutil.copytree(ROOT / "exporter", destination / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def git(repository: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(repository), **GIT_IDENTITY})
    return result.stdout.strip()


def commit_everything(repository: Path) -> str:
    git(repository, "init", "-q")
    git(repository, "add", ".")
    git(repository, "commit", "-q", "-m", "snapshot")
    return git(repository, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path) -> tuple[Path, str]:
    """A git checkout holding the package, and its HEAD."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    source_root = copy_package(tmp_path / "checkout")
    return source_root, commit_everything(source_root)


def test_the_revision_the_image_build_recorded_wins(checkout, tmp_path):
    source_root, _ = checkout
    assert revision_of(source_root, tmp_path, TRAINING_EXPORTER_REVISION="0123abcd") == "0123abcd"


def test_a_checkout_reports_its_head(checkout, tmp_path):
    source_root, head = checkout
    assert len(head) == 40
    assert revision_of(source_root, tmp_path) == head


def test_a_package_inside_some_other_repository_does_not_take_its_head(tmp_path):
    """As a package installed into a virtual environment that lives inside a project's checkout."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('training')\n")
    commit_everything(project)
    site_packages = copy_package(project / "venv" / "site-packages")
    assert revision_of(site_packages, tmp_path) == "unknown"


def test_without_git_the_revision_is_unknown_and_the_exporter_runs(checkout, tmp_path):
    source_root, _ = checkout
    no_tools = tmp_path / "empty-path"
    no_tools.mkdir()
    assert revision_of(source_root, tmp_path, PATH=str(no_tools)) == "unknown"


def test_the_source_says_its_reading_path_is_not_compiled(checkout, tmp_path):
    source_root, _ = checkout
    assert build_labels(source_root, tmp_path)["reading_path"] == "source"
