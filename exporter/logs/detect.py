"""Which dialect a file speaks: by its name where the name is telling, else by its lines."""

from __future__ import annotations

import fnmatch
import os

from .formats import CONSOLE_FORMATS, LINE_FORMATS, LineFormat, ParseError, Record
from .formats.jsonl import JsonLines

# Names that give the format away. Anything else is read as console text and detected by content.
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


class CsvDetector:
    """A CSV file is Lightning's (it has a ``step`` column) or Keras's (one row per epoch)."""

    name = "csv"

    def __init__(self) -> None:
        self.chosen: LineFormat | None = None

    def parse(self, line: str) -> list[Record]:
        if self.chosen is None:
            columns = [c.strip().strip('"') for c in line.split(",")]
            self.chosen = LINE_FORMATS["lightning_csv" if "step" in columns else "keras_csv"]()
        return self.chosen.parse(line)


class ConsoleDetector:
    """Tries every console dialect (and JSON lines) on each line until one understands a line,
    then locks the file to it. Before the lock, a dialect's ParseError only means "not mine";
    after it, errors are real and counted."""

    name = "auto"

    def __init__(self) -> None:
        self._candidates: list[LineFormat] = [factory() for factory in CONSOLE_FORMATS.values()]
        self._candidates.insert(len(self._candidates) - 1, JsonLines())
        self.chosen: LineFormat | None = None

    def parse(self, line: str) -> list[Record]:
        if self.chosen is not None:
            return self.chosen.parse(line)
        progress_only: list[Record] = []
        for candidate in self._candidates:
            try:
                records = candidate.parse(line)
            except ParseError:
                continue
            if any(r.values or r.meta for r in records):
                self.chosen = candidate
                return records
            if records and not progress_only:
                progress_only = records  # a bare progress bar: useful, but proves no dialect
        return progress_only


def line_format_for(path: str, forced: str | None) -> LineFormat:
    """The line parser for a text file: the forced one, or one chosen by name, or by content."""
    if forced and forced != "auto":
        return LINE_FORMATS[forced]()
    fmt = format_by_name(path)
    if fmt == "csv":
        return CsvDetector()
    if fmt == "jsonl":
        return JsonLines()
    return ConsoleDetector()
