"""Everything about the package is in pyproject.toml; this adds the compiled reading path, when
the build compiles it (build_backend.py)."""

from build_backend import extensions
from setuptools import setup

setup(ext_modules=extensions())
