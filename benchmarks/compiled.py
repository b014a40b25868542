"""The exporter with its reading path compiled by mypyc: what compiling the same source would buy.

    python benchmarks/compiled.py DEST

Copies ``exporter/`` into DEST and compiles the modules a text log's line goes through (the
splitter, the envelopes, the dialect choice, the Hugging Face, JSON-lines and Megatron-LM
dialects, the state) with mypyc, in place: ``python -m exporter`` run in DEST then imports the
compiled modules, and the rest as source. The source is the same; nothing in the repository is
built this way. bench_instructions.py, bench_ingestion.py and bench_live.py take ``--compiled``
to measure it.

Needs mypy (``pip install mypy``, which brings mypyc) and a C compiler with the Python headers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READING_PATH = (
    "exporter/logs/lines.py",
    "exporter/logs/envelopes.py",
    "exporter/logs/dialects.py",
    "exporter/logs/readers.py",
    # PodLogs extends readers.LogSpec, and only a compiled class may extend a compiled one.
    "exporter/logs/pods.py",
    "exporter/logs/formats/base.py",
    "exporter/logs/formats/events.py",
    "exporter/logs/formats/hf_console.py",
    "exporter/logs/formats/jsonl.py",
    "exporter/logs/formats/megatron.py",
    "exporter/training/signals.py",
)


def available() -> bool:
    """Whether mypyc can run here."""
    if importlib.util.find_spec("mypyc") is None:
        return False
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@contextlib.contextmanager
def exporter_tree(compile: bool) -> Iterator[str]:
    """Where to run the exporter from: this repository, or with ``compile`` a copy with its
    reading path compiled, in a temporary directory removed afterwards. Where mypyc cannot run,
    says so and exits with status 2, as the benchmarks do for a missing tool."""
    if not compile:
        yield ROOT
        return
    if not available():
        print("mypyc is not installed (pip install mypy), or there is no C compiler", file=sys.stderr)
        raise SystemExit(2)
    with tempfile.TemporaryDirectory() as work:
        yield build(work)


def describe(compile: bool) -> str:
    """How the exporter measured was built, for a benchmark's heading."""
    return "reading path compiled by mypyc" if compile else "source"


def build(dest: str) -> str:
    """A copy of the exporter in ``dest`` with its reading path compiled; returns ``dest``.

    Only the package is copied: mypyc builds with setuptools in the working directory, which
    would otherwise read the project's own pyproject.toml."""
    shutil.copytree(os.path.join(ROOT, "exporter"), os.path.join(dest, "exporter"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "mypyc", "--ignore-missing-imports", *READING_PATH],
                            cwd=dest, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"mypyc failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    shutil.rmtree(os.path.join(dest, "build"), ignore_errors=True)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(build(os.path.abspath(sys.argv[1])))
