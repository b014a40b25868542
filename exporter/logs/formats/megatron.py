"""Megatron-LM (and Megatron-DeepSpeed, NeMo's Megatron bridge) console lines.

``training_log`` prints one line per log interval, ``name: value |`` fields after the counter::

     [2024-05-01 10:00:00] iteration      201/  250000 | consumed samples: 102912 | ... |
         lm loss: 2.373574E+00 | loss scale: 1.0 | grad norm: 0.811 | number of nan iterations:   0 |

The fields vary by version and options, so every field is read generically. Quirk: a loss is
printed only when its interval average is > 0, and a NaN average fails that test, so a NaN loss
*vanishes* from the line; only ``number of nan iterations`` (and often ``grad norm: nan``) tells.

``evaluate_and_print_results`` prints::

     validation loss at iteration 500 | lm loss value: 2.201E+00 | lm loss PPL: 9.034E+00 |
     validation loss at iteration 250000 on validation set | ...
     validation loss at iteration 250000 on test set | ...
     validation loss at the end of training for test data | ...       (older releases)
"""

from __future__ import annotations

import re

from .base import MAX_LEARNED_LINE, MAX_RUN, Kind, ParseError, Record, Run, to_float
from .events import MAX_LINE

# Bounded quantifiers keep the search linear however long the line.
_ITERATION = re.compile(r"\biteration\s{1,20}(\d{1,15})\s{0,20}/\s{0,20}(\d{1,15})\s{0,20}\|")
# Printed at the start of the line (print_rank_last), after a launcher tag at most.
_VALIDATION = re.compile(r"(?:\[[\w.\-]{1,40}\]:|\d{1,6}:)?\s*validation loss at ")
_AT_ITERATION = re.compile(r"iteration (\d{1,15})\b")
# "496.3 (avg 496.1)": newer releases follow some rates with their running average.
_LEADING_NUMBER = re.compile(r"(\S{1,64}) \([^()]{0,200}\)$")

_LOSS = "lm loss"
_NAN_ITERATIONS = "number of nan iterations"
# Field layouts learned per file (the iteration line's, the validation line's, a few spares).
MAX_SHAPES = 4


class Megatron:
    name = "megatron"

    def __init__(self) -> None:
        self._shapes: list[_FieldShape] = []

    def _read_fields(self, text: str) -> dict[str, float]:
        """``_fields``, by a layout seen before when the text has one."""
        for shape in self._shapes:
            values = shape.read(text)
            if values is not None:
                return values
        if len(self._shapes) < MAX_SHAPES and len(text) <= MAX_LEARNED_LINE:
            shape = _FieldShape.learn(text)
            if shape is not None:
                self._shapes.append(shape)
        return _fields(text)

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        match = _iteration(line)
        if match:
            return [self._training(line, match)]
        validation = _VALIDATION.match(line)
        if validation:
            bar = line.find("|", validation.end())
            if bar >= 0:
                return [self._validation(line[validation.end():bar], line[bar + 1:], line)]
        return []

    def read_run(self, lines: list[str], start: int, end: int) -> Run | None:
        """The iteration lines from ``lines[start]`` on, before ``lines[end]``, that one learned
        layout reads, as ``parse`` reads them: each ends the run unless it has the layout, plain
        numbers and the first line's ``max_steps``, and does not need ``parse``'s NaN-loss rule."""
        shape: _FieldShape | None = None
        rows: list[tuple[float, ...]] = []
        steps: list[int] = []
        for index in range(start, min(end, start + MAX_RUN)):  # (a slice would copy)
            line = lines[index]
            match = _iteration(line)
            if match is None:
                break
            if shape is None:  # the first line: its layout is the run's (no two read one text)
                shape = next((s for s in self._shapes if s.pattern.fullmatch(line, match.end())), None)
                if shape is None:
                    return None
                names, total = shape.names, match.group(2)
                nan_count = names.index(_NAN_ITERATIONS) if _LOSS not in names and _NAN_ITERATIONS in names else None
            elif match.group(2) != total:
                break
            found = shape.pattern.fullmatch(line, match.end())
            if found is None:
                break
            try:
                row = tuple(map(float, found.groups()))
            except ValueError:
                break
            if nan_count is not None and row[nan_count] > 0:
                break
            rows.append(row)
            steps.append(int(match.group(1)))
        if not rows:
            return None
        return Run(keys=names, rows=rows, lines=len(rows), steps=steps, meta={"max_steps": int(total)})

    def _training(self, line: str, match: re.Match[str]) -> Record:
        values = self._read_fields(line[match.end():])
        if not values and line[match.end():].strip():
            raise ParseError(f"Megatron iteration line with no readable field: {line[:120]!r}")
        if _LOSS not in values and values.get(_NAN_ITERATIONS, 0.0) > 0:
            # The NaN loss was filtered out of the line by Megatron's "print only if > 0".
            values[_LOSS] = float("nan")
        return Record(
            values=values,
            kind=Kind.TRAIN,
            step=int(match.group(1)),
            meta={"max_steps": int(match.group(2))},
        )

    def _validation(self, where: str, rest: str, line: str) -> Record:
        values = self._read_fields(rest)
        if not values:
            raise ParseError(f"Megatron validation line with no readable value: {line[:120]!r}")
        at_iteration = _AT_ITERATION.match(where)
        step = int(at_iteration.group(1)) if at_iteration else None
        # The test split is evaluated once, after training: an end-of-run result.
        is_test = where.rstrip().endswith(("on test set", "for test data"))
        return Record(values=values, kind=Kind.SUMMARY if is_test else Kind.EVAL, step=step)


def _iteration(line: str) -> re.Match[str] | None:
    """The iteration counter of a training line. The substring test comes first: searching a
    line for the pattern costs ten times as much."""
    return _ITERATION.search(line) if "iteration" in line and len(line) <= MAX_LINE else None


def _fields(text: str) -> dict[str, float]:
    """``" lm loss: 2.3E+00 | grad norm: nan |"`` -> ``{"lm loss": 2.3, "grad norm": nan}``."""
    values: dict[str, float] = {}
    for field in text.split("|"):
        # Names never hold a colon; values may ("ETA Time: 1:02:03"), so split at the first.
        name, colon, raw = field.partition(":")
        name = name.strip()
        if not colon or not name:
            continue
        try:
            values[name] = float(raw)  # the common case, inline; float() ignores the spaces
        except ValueError:
            value = _number(raw.strip())
            if value is not None:
                values[name] = value
    return values


class _FieldShape:
    """The field names of a line, in order, every value a plain number: read by one anchored
    regular expression and ``float`` on each value. A text it does not match, or with a value
    ``float`` refuses, goes to ``_fields``, which reads it the same."""

    __slots__ = ("pattern", "names")

    def __init__(self, pattern: re.Pattern[str], names: tuple[str, ...]) -> None:
        self.pattern, self.names = pattern, names

    @classmethod
    def learn(cls, text: str) -> _FieldShape | None:
        fields = text.split("|")
        if not fields[-1].strip():
            fields.pop()  # the "|" that closes the line
        names = []
        for field in fields:
            name, colon, raw = field.partition(":")
            name = name.strip()
            if not colon or not name:
                return None
            try:
                float(raw)
            except ValueError:
                return None
            names.append(name)
        if not names or len(set(names)) != len(names):
            return None
        # Each field as _fields reads it: the name with any spaces around it, the first colon,
        # the value up to the next "|"; then the closing "|" and spaces, or nothing.
        body = r"\|".join(r"\s*" + re.escape(name) + r"\s*:([^|]*)" for name in names)
        return cls(re.compile(body + r"(?:\|\s*)?"), tuple(names))

    def read(self, text: str) -> dict[str, float] | None:
        match = self.pattern.fullmatch(text)
        if match is None:
            return None
        try:
            return dict(zip(self.names, map(float, match.groups())))
        except ValueError:
            return None


def _number(text: str) -> float | None:
    try:
        return to_float(text)
    except ParseError:
        pass
    leading = _LEADING_NUMBER.match(text)
    if leading:
        try:
            return to_float(leading.group(1))
        except ParseError:
            return None
    return None
