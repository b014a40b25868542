"""CSV metric files, fed one line at a time: Lightning's CSVLogger and Keras' CSVLogger.

The first line is the header and is kept as state. Both writers can change the header:
Lightning rewrites metrics.csv from the top when a new key appears, and the reader then starts a
new parser instance; a header line met mid-stream is still adopted, as a second line of defence.
"""

from __future__ import annotations

import abc

import csv
import math

from .base import ParseError, Record, records_by_kind, to_float

MAX_LINE_CHARS = 1 << 20


def _cells(line: str) -> list[str] | None:
    """One CSV line split into cells, or None for a blank line."""
    if len(line) > MAX_LINE_CHARS:
        raise ParseError(f"CSV line of {len(line)} characters")
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error as exc:  # unbalanced quotes, oversized field, NUL on older Pythons
        raise ParseError(f"bad CSV line: {exc}") from None
    return rows[0] if rows else None


def _looks_numeric(cell: str) -> bool:
    try:
        to_float(cell)
    except ParseError:
        return False
    return True


class _CsvBase(abc.ABC):
    name = ""
    # A header must name this column; it is how a header met mid-file is recognised.
    anchor = ""

    def __init__(self) -> None:
        self.header: list[str] | None = None

    def parse(self, line: str) -> list[Record]:
        cells = _cells(line)
        if cells is None:
            return []
        if self.header is None or self._is_header(cells):
            if not self._is_header(cells):
                raise ParseError(f"{self.name}: first line is not a header")
            self.header = [c.strip() for c in cells]
            return []
        if len(cells) != len(self.header):
            # A partly written row, or a row from before a header change we did not see.
            raise ParseError(f"{self.name}: {len(cells)} cells for {len(self.header)} columns")
        return self._records(dict(zip(self.header, cells)))

    def _is_header(self, cells: list[str]) -> bool:
        names = [c.strip() for c in cells]
        return self.anchor in names and not any(_looks_numeric(c) for c in names if c)

    @abc.abstractmethod
    def _records(self, row: dict[str, str]) -> list[Record]:
        """The records one data row holds, in the dialect's own layout."""


def _step_from(cell: str, column: str) -> int:
    value = to_float(cell)
    if not math.isfinite(value) or value != int(value):
        raise ParseError(f"unusable {column}: {cell[:40]!r}")
    return int(value)


class LightningCsv(_CsvBase):
    """Lightning ``CSVLogger`` metrics.csv: sparse rows, one per ``log_metrics`` call.

    Train and validation metrics are logged at different times and so usually land in different
    rows with the other columns empty. A row that carries both becomes two records with the same
    step, so an eval value is never mistaken for a training one.
    """

    name = "lightning_csv"
    anchor = "step"

    def _records(self, row: dict[str, str]) -> list[Record]:
        step = None
        values: dict[str, float] = {}
        for key, cell in row.items():
            if not cell.strip():
                continue  # a column this row did not log
            if key == "step":
                step = _step_from(cell, key)
            else:
                values[key] = to_float(cell)
        return records_by_kind(values, step)


class KerasCsv(_CsvBase):
    """Keras ``CSVLogger``: one row per epoch, ``NA`` for a missing value, ``"[...]"`` for lists.

    The file has no global step, so the records carry none: the epoch (as written, counted from
    0) is a value, never passed off as the step.
    """

    name = "keras_csv"
    anchor = "epoch"

    def _records(self, row: dict[str, str]) -> list[Record]:
        epoch_cell = row.get("epoch", "").strip()
        if not epoch_cell:
            raise ParseError("keras_csv: row without an epoch")
        epoch = _step_from(epoch_cell, "epoch")  # a whole number, as Keras writes it
        values: dict[str, float] = {}
        for key, cell in row.items():
            cell = cell.strip()
            # NA: not logged this epoch. A list-valued metric is written as "[a, b]" with the
            # quotes inside the cell (so the file holds """[a, b]"""): not a scalar.
            if key == "epoch" or not cell or cell == "NA" or cell.lstrip('"').startswith("["):
                continue
            values[key] = to_float(cell)
        if not values:
            return []
        values["epoch"] = float(epoch)
        return records_by_kind(values)


class CsvMetrics:
    """A CSV metrics file of either logger: Lightning's has a ``step`` column, Keras's does not.
    The header decides, and the file is read by that logger's dialect from then on."""

    def __init__(self) -> None:
        self.chosen: _CsvBase | None = None

    @property
    def name(self) -> str:
        return self.chosen.name if self.chosen is not None else "csv"

    def parse(self, line: str) -> list[Record]:
        if self.chosen is None:
            columns = [c.strip().strip('"') for c in line.split(",")]
            self.chosen = LightningCsv() if "step" in columns else KerasCsv()
        return self.chosen.parse(line)
