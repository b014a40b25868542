"""The exporter as the container image builds it, its reading path compiled by mypyc.

    python benchmarks/compiled.py DEST

Installs the package into DEST (``pip install --target``) with ``TRAINING_EXPORTER_COMPILE=1``,
as the image's build stage builds its wheel (see build_backend.py): ``python -m exporter`` run in
DEST imports the compiled modules, and the rest as source. bench_instructions.py,
bench_ingestion.py and bench_live.py take ``--compiled`` to measure it against the source, and
tests/test_compiled.py runs the reading path's tests against it.

Needs a C compiler with the Python headers; the build fetches mypy, as the image's does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_build_context(dest: str) -> None:
    """Copy into ``dest`` what the image is built from: the paths .dockerignore lets in."""
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as handle:
        names = [line[1:].strip().rstrip("/") for line in handle if line.startswith("!")]
    for name in names:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(os.path.join(ROOT, name), dest)


def available() -> bool:
    """Whether the reading path can be compiled here: a C compiler and the Python headers."""
    has_compiler = shutil.which("cc") is not None or shutil.which("gcc") is not None
    return has_compiler and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))


@contextlib.contextmanager
def exporter_tree(compile: bool) -> Iterator[str]:
    """Where to run the exporter from: this repository, or with ``compile`` a copy with its
    reading path compiled, in a temporary directory removed afterwards. Where nothing can be
    compiled, says so and exits with status 2, as the benchmarks do for a missing tool."""
    if not compile:
        yield ROOT
        return
    if not available():
        print("cannot compile the reading path: no C compiler, or no Python headers (apt-get install -y gcc "
              "python3-dev)", file=sys.stderr)
        raise SystemExit(2)
    with tempfile.TemporaryDirectory() as work:
        yield build(work)


def describe(compile: bool) -> str:
    """How the exporter measured was built, for a benchmark's heading."""
    return "reading path compiled by mypyc" if compile else "source"


def build(dest: str) -> str:
    """The package installed into ``dest``, its reading path compiled; returns ``dest``.

    Built from a copy of the build's inputs, so that the build's own files (build/, the
    generated C) stay out of the checkout."""
    with tempfile.TemporaryDirectory() as source:
        copy_build_context(source)
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", dest,
                                 source], env={**os.environ, "TRAINING_EXPORTER_COMPILE": "1"},
                                capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"the compiled build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(build(os.path.abspath(sys.argv[1])))
