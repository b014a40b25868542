"""What the exporter was built from, for training_exporter_build_info: the source revision (the
one the image build recorded, else the commit of the git checkout it runs from, else "unknown"),
and whether its reading path was compiled."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .logs import lines  # the first module a line goes through: compiled with the others, or not

# Set by the container image from its REVISION build argument.
REVISION_VARIABLE = "TRAINING_EXPORTER_REVISION"
UNKNOWN = "unknown"


def source_revision() -> str:
    recorded = os.environ.get(REVISION_VARIABLE, "").strip()
    return recorded or _checkout_revision() or UNKNOWN


def reading_path_build() -> str:
    """"compiled" where the build compiled the reading path with mypyc (the image does: see
    build_backend.py), else "source"."""
    return "source" if lines.__file__.endswith(".py") else "compiled"


def _checkout_revision() -> str | None:
    """HEAD of the checkout whose top level holds this package; None where the package is installed
    elsewhere (a site-packages inside some other repository is not our revision), git is missing,
    or git refuses."""
    source_root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "-C", str(source_root), "rev-parse", "--show-toplevel", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != source_root:
        return None
    return lines[1]
