"""User-defined line format: Python regexes with named groups, for logs no dialect knows.

    RegexFormat([r"step (?P<step>\\d+) loss=(?P<loss>\\S+)",
                 r"eval at (?P<step>\\d+): (?P<val_loss>\\S+)"], ["train", "eval"])

Group ``step`` becomes the record's step, every other named group a value (``epoch`` too),
kept only when it reads as a number. A pattern's kind is ``auto`` unless it names one: each
value's kind then follows from its name, as for every dialect (``base.records_by_kind``), so one
pattern with ``loss`` and ``val_loss`` groups gives a training and an evaluation record. The
first pattern that matches a line decides it, so overlapping patterns never count a line twice.
Patterns come from the user's config, so their cost is theirs; lines are still capped in length
before they reach them.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, records_by_kind, to_float
from .events import MAX_LINE

# A pattern's kind; "auto" (None): each value's kind follows from its name.
_KINDS = {"auto": None, "train": Kind.TRAIN, "eval": Kind.EVAL, "summary": Kind.SUMMARY}


class RegexFormat:
    name = "regex"

    def __init__(self, patterns: list[str], kind_by_pattern: list[str] | None = None) -> None:
        if not patterns:
            raise ValueError("regex format: no pattern given")
        if kind_by_pattern is not None and len(kind_by_pattern) != len(patterns):
            raise ValueError(
                f"regex format: {len(kind_by_pattern)} kinds given for {len(patterns)} patterns"
            )
        self._rules: list[tuple[re.Pattern[str], Kind | None]] = []
        for index, pattern in enumerate(patterns):
            try:
                compiled = re.compile(pattern)
            except (re.error, TypeError, ValueError, OverflowError, RecursionError) as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(f"regex format: pattern {pattern!r} does not compile: {message}") from None
            if not compiled.groupindex:
                raise ValueError(
                    f"regex format: pattern {pattern!r} has no named group such as (?P<loss>...)"
                )
            kind_name = str(kind_by_pattern[index] if kind_by_pattern is not None else "auto").strip().lower()
            kind = _KINDS.get(kind_name)
            if kind_name not in _KINDS:
                raise ValueError(
                    f"regex format: kind {kind_name!r} for pattern {pattern!r} is not one of "
                    f"{', '.join(_KINDS)}"
                )
            self._rules.append((compiled, kind))

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        for pattern, kind in self._rules:
            match = pattern.search(line)
            if match is None:
                continue
            return _record(match, kind)
        return []


def _record(match: re.Match[str], kind: Kind | None) -> list[Record]:
    step: int | None = None
    values: dict[str, float] = {}
    for name, text in match.groupdict().items():
        if text is None:
            continue  # an optional group that did not take part
        if name == "step":
            step = _step(text)
            continue
        try:
            values[name] = to_float(text)
        except ParseError:
            continue  # not a number: skipped, as promised
    if step is None and not values:
        return []
    if kind is None:
        # A line of values that only say when (an epoch) still says where training is.
        return records_by_kind(values, step) or [Record(values=values, step=step)]
    return [Record(values=values, kind=kind, step=step)]


def _step(text: str) -> int:
    """A step as the log prints it: ``120``, ``1,200`` or ``120.0``."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    try:
        if cleaned.isascii() and cleaned.isdigit():
            return int(cleaned)
        value = float(cleaned)
    except ValueError:  # not a number, or more digits than int() accepts
        raise ParseError(f"step group is not a number: {text[:40]!r}") from None
    if not value.is_integer():
        raise ParseError(f"step group is not a whole number: {text[:40]!r}")
    return int(value)
