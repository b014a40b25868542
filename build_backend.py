"""The package's build backend: setuptools', which also compiles the reading path with mypyc when
``TRAINING_EXPORTER_COMPILE=1`` is set (the container image is built so).

Compiled, the modules every line of a text log goes through (the splitter, the envelopes, the
dialect choice, the three dialects of the most common logs, the training state) are the same
source turned into C extensions: about a third fewer instructions per line, so a backlog is read
faster and a live log is followed for less CPU (docs/benchmarks.md). The ``.py`` files stay in the
package beside them, and are what a build without the variable installs. Compiling needs a C
compiler and the Python headers; mypy, which brings mypyc, is added to the build's requirements.
"""

from __future__ import annotations

import contextlib
import os

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F401,F403 - every other hook, as setuptools has it

COMPILE_VARIABLE = "TRAINING_EXPORTER_COMPILE"
MYPY = "mypy==2.4.1"

# Compiled code checks annotations at run time, so these modules' annotations must be true: the
# build type-checks them first and stops on an error. A compiled class can only be extended by a
# compiled class: pods.py extends readers.LogSpec.
READING_PATH = (
    "exporter/logs/lines.py",
    "exporter/logs/envelopes.py",
    "exporter/logs/dialects.py",
    "exporter/logs/readers.py",
    "exporter/logs/pods.py",
    "exporter/logs/formats/base.py",
    "exporter/logs/formats/events.py",
    "exporter/logs/formats/hf_console.py",
    "exporter/logs/formats/jsonl.py",
    "exporter/logs/formats/megatron.py",
    "exporter/training/signals.py",
)


def compiling() -> bool:
    return os.environ.get(COMPILE_VARIABLE, "") not in ("", "0")


# Set while setuptools runs setup.py only to learn the build's requirements (mypyc is not
# installed yet) or its metadata (which the extensions do not change): nothing is compiled then.
_not_building = False


@contextlib.contextmanager
def _without_extensions():
    global _not_building
    _not_building = True
    try:
        yield
    finally:
        _not_building = False


def get_requires_for_build_wheel(config_settings=None):
    with _without_extensions():
        required = build_meta.get_requires_for_build_wheel(config_settings)
    return required + ([MYPY] if compiling() else [])


def get_requires_for_build_editable(config_settings=None):
    if compiling():
        # The extensions would sit beside the checkout's sources and be imported instead of them:
        # every edit would be silently ignored.
        raise SystemExit(f"{COMPILE_VARIABLE}=1 does not apply to an editable install, whose compiled modules "
                         "would hide the sources being edited: install without -e, or unset it")
    return build_meta.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    with _without_extensions():
        return build_meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def extensions() -> list:
    """setup.py's extension modules: the reading path's when compiling, else none."""
    if not compiling() or _not_building:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(f"{COMPILE_VARIABLE}=1 needs mypyc: pip install {MYPY} (build isolation adds it "
                         "itself), and a C compiler with the Python headers") from None
    return mypycify(["--ignore-missing-imports", *READING_PATH], opt_level="3")
