"""Which dialect reads a line: chosen per line, so that a file that mixes shapes is read whole.

A console log rarely speaks one dialect only: logging lines, progress bars, a trainer's dicts and
a final metrics block share one file, and a rank's output may interleave with another's. Each
line is offered first to the dialect that read the line before (a log repeats itself, so that
one almost always reads it), then to the others in their order until one reads it.
"""

from __future__ import annotations

from .formats import AUTO_ORDER, LINE_FORMATS, LineFormat, ParseError, Record
from .formats.csvlog import CsvMetrics
from .formats.jsonl import JsonLines
from .formats.regex import RegexFormat


class DialectChoice:
    """Reads payloads with the first dialect that understands each.

    A dialect's ``ParseError`` means "mine, but broken" only from a dialect that has already
    read values in this file (or the one dialect a user forced): before that, it may just as
    well be another dialect's line, or none. ``names`` are the dialects that read values.
    """

    def __init__(self, dialects: list[LineFormat], forced: bool = False) -> None:
        self._dialects = dialects
        # The dialect that read values last: the first to try. A forced one from the start.
        self._last: LineFormat | None = dialects[0] if forced else None
        self._proven: set[int] = {id(d) for d in dialects} if forced else set()
        self.names: set[str] = {dialects[0].name} if forced else set()

    def parse(self, payload: str) -> list[Record]:
        """The records of the first dialect that reads ``payload``, or [] when none does.
        Raises the ParseError of a proven dialect that calls it its own but broken line."""
        last, error = self._last, None
        if last is not None:
            try:
                records = last.parse(payload)
            except ParseError as caught:
                error = caught
            else:
                if records:
                    return records  # a bare progress bar too: a Trainer's bar between its dicts
        fallback: list[Record] = []
        for dialect in self._dialects:
            if dialect is last:
                continue
            try:
                found = dialect.parse(payload)
            except ParseError as caught:
                if error is None and id(dialect) in self._proven:
                    error = caught
                continue
            if not found:
                continue
            if _reads_values(found):
                self._last = dialect
                self._proven.add(id(dialect))
                self.names.add(dialect.name)
                return found
            fallback = fallback or found  # a bare progress bar: kept if no dialect reads more
        if fallback:
            return fallback
        if error is not None:
            raise error
        return []


def _reads_values(records: list[Record]) -> bool:
    """Whether a dialect found more than a progress bar: values, run facts, a step."""
    for record in records:
        if record.values or record.meta or record.step is not None:
            return True
    return False


def dialects_for(format_name: str, by_name: str | None, patterns: tuple[tuple[str, str], ...] = ()) -> DialectChoice:
    """The choice of dialects for a text file: the one forced, or those its name allows (a CSV
    or JSON-lines file by its extension), or every console dialect in order."""
    if format_name == "regex":
        return DialectChoice([RegexFormat([p for p, _ in patterns], [k for _, k in patterns])], forced=True)
    if format_name not in ("auto", None):
        return DialectChoice([LINE_FORMATS[format_name]()], forced=True)
    if by_name == "csv":
        return DialectChoice([CsvMetrics()])
    if by_name == "jsonl":
        return DialectChoice([JsonLines()])
    return DialectChoice([LINE_FORMATS[name]() for name in AUTO_ORDER])
