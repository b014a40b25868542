"""A table printed on the console: a header row, then a row of values per epoch (or step)::

    epoch  train_loss  val_loss   time
        1      0.5948    0.5181  0.10s
        2      0.5059    0.4745  0.05s

The header is kept as state. It is recognised by its shape: column names set apart by two or
more spaces, a tab or ``|`` (prose has single spaces; a name's own spaces become ``_``), one of them a position (``epoch``,
``step``, ``iter``...) and one a measured quantity (``base.is_measured_key``). A row is a line
of exactly as many cells, each a number (``nan`` and ``inf`` included) or a number with a unit
(``0.10s``, taken for no value), the first a whole number. A ``step`` column is the record's
step; ``epoch`` is a value. Each row's training and validation columns become a training and an
evaluation record, as one line of a CSV file would.
"""

from __future__ import annotations

import re

from .base import ParseError, Record, is_measured_key, records_by_kind, to_float
from .events import MAX_LINE

_COLUMN_BREAK = re.compile(r"\s{2,}|\t|\|")
_NAME = re.compile(r"[A-Za-z_][\w./@ -]{0,63}")
_WITH_UNIT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?[A-Za-z%/]{1,8}")
_POSITIONS = frozenset({"epoch", "step", "global_step", "iter", "iteration"})
_STEPS = frozenset({"step", "global_step", "iter", "iteration"})
MAX_COLUMNS = 32


class ConsoleTable:
    name = "table"

    def __init__(self) -> None:
        self._columns: list[str] | None = None

    def parse(self, line: str) -> list[Record]:
        text = line.strip()
        if not text or len(text) > MAX_LINE:
            return []
        first = text[0]
        columns = self._columns
        if columns is not None and (first.isdigit() or first == "|"):
            records = self._row(text, columns)
            if records or first != "|":
                return records
        if first.isalpha() or first == "|":
            self._header(text)
        return []

    def _header(self, text: str) -> None:
        names = [name.strip() for name in _COLUMN_BREAK.split(text.strip("|")) if name.strip()]
        if not 2 <= len(names) <= MAX_COLUMNS or len(set(names)) < len(names):
            return
        if not all(_NAME.fullmatch(name) for name in names):
            return
        lowered = [name.lower() for name in names]
        if _POSITIONS.isdisjoint(lowered) or not any(map(is_measured_key, names)):
            return
        self._columns = [name.replace(" ", "_") for name in names]  # "Val Loss" -> "Val_Loss"

    def _row(self, text: str, columns: list[str]) -> list[Record]:
        cells = text.replace("|", " ").split()
        if len(cells) != len(columns) or not cells[0].isdigit():
            return []
        values: dict[str, float] = {}
        step = None
        for name, cell in zip(columns, cells):
            try:
                value = to_float(cell)
            except ParseError:
                if _WITH_UNIT.fullmatch(cell):
                    continue
                return []  # a word among the numbers: not a row of this table
            lowered = name.lower()
            if lowered in _STEPS:
                if value.is_integer():
                    step = int(value)
            else:
                values["epoch" if lowered == "epoch" else name] = value
        return records_by_kind(values, step)
