"""The reading path as the container image runs it: compiled by mypyc (build_backend.py). Compiled
code is the same source, but it checks annotations at run time and its classes are native, so the
reading path's tests run again, unchanged, against a compiled build: in-process, and through the
exporter processes they start, from a tree where the compiled package comes first.

Skipped where nothing can be compiled (no C compiler or no Python headers; CI has both).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, ExporterProcess, load_script, value

# The tests of every module build_backend.READING_PATH compiles, and of what runs beside them;
# test_bad_input's hostile lines too, since compiled code checks types where the source carries on.
READING_TESTS = ("test_envelopes.py", "test_formats_console.py", "test_formats_shapes.py", "test_formats_structured.py",
                 "test_real_fixtures.py", "test_real_shapes.py", "test_signals.py", "test_loss_plateau.py",
                 "test_fast_paths.py", "test_not_understood.py", "test_events.py", "test_follow.py",
                 "test_sources.py", "test_pods.py", "test_bad_input.py", "test_inspect.py")


compiled = load_script(ROOT / "benchmarks" / "compiled.py", "compiled")
build_backend = load_script(ROOT / "build_backend.py", "build_backend")
pytestmark = pytest.mark.skipif(not compiled.available(), reason="no C compiler or no Python headers")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The compiled package with the tests beside it: the tests' ROOT, so that what they import
    and the exporters they start are the compiled build."""
    tree = tmp_path_factory.mktemp("compiled")
    compiled.build(str(tree))
    shutil.copytree(ROOT / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)  # pytest's options
    shutil.copy(ROOT / "README.md", tree)  # test_inspect checks the README's examples
    return tree


def test_the_build_compiles_the_reading_path_and_says_so(tree, tmp_path):
    modules = [path.removesuffix(".py").replace("/", ".") for path in build_backend.READING_PATH]
    check = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"
    files = subprocess.run([sys.executable, "-c", check, *modules], cwd=tree, capture_output=True, text=True,
                           check=True, timeout=60).stdout.split()
    assert len(files) == len(modules) > 5
    assert all(path.startswith(str(tree)) and path.endswith(".so") for path in files), files

    log = tmp_path / "train.log"
    log.write_text("{'loss': '2.5', 'grad_norm': '0.9', 'learning_rate': '1e-05', 'epoch': '0.1'}\n")
    exporter = ExporterProcess(["--log", str(log), "--no-collector.gpu"], cwd=tree)
    try:
        exporter.wait_ready()
        metrics = exporter.metrics()
    finally:
        exporter.stop()
    [labels] = [dict(labels) for name, labels in metrics if name == "training_exporter_build_info"]
    assert labels["reading_path"] == "compiled"
    assert value(metrics, "training_loss", source="train.log") == 2.5


def test_the_reading_paths_tests_pass_against_the_compiled_build(tree):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                             *(f"tests/{name}" for name in READING_TESTS)],
                            cwd=tree, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-6000:] + result.stderr[-2000:]
