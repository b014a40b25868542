"""What a file is, by its name: a TensorBoard event file, a document rewritten whole on every
save, a CSV or JSON-lines metrics file, or console text (whose dialects are chosen per line)."""

from __future__ import annotations

import fnmatch
import os

# Names that give the format away. Anything else is read as console text.
_BY_NAME = (
    ("events.out.tfevents.*", "tensorboard"),
    ("trainer_state.json", "trainer_state"),
    ("hparams.yaml", "hparams"),
    ("*.csv", "csv"),
    ("*.jsonl", "jsonl"),
    ("*.ndjson", "jsonl"),
)

# What a directory is searched for.
KNOWN_FILES = ("metrics.csv", "*.csv", "*.jsonl", "*.ndjson", "events.out.tfevents.*",
               "trainer_state.json", "hparams.yaml", "*.log", "*.txt")


def format_by_name(path: str) -> str | None:
    name = os.path.basename(path)
    for pattern, fmt in _BY_NAME:
        if fnmatch.fnmatchcase(name, pattern):
            return fmt
    return None


def is_known_file(path: str) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in KNOWN_FILES)
