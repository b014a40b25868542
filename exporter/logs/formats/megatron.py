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

from .base import Kind, ParseError, Record, to_float
from .events import MAX_LINE

# Bounded quantifiers keep the search linear however long the line.
_ITERATION = re.compile(r"iteration\s{1,20}(\d{1,15})\s{0,20}/\s{0,20}(\d{1,15})\s{0,20}\|")
# Printed at the start of the line (print_rank_last).
_VALIDATION = re.compile(r"\s*validation loss at ")
_AT_ITERATION = re.compile(r"iteration (\d{1,15})\b")
# "496.3 (avg 496.1)": newer releases follow some rates with their running average.
_LEADING_NUMBER = re.compile(r"(\S{1,64}) \([^()]{0,200}\)$")

_LOSS = "lm loss"
_NAN_ITERATIONS = "number of nan iterations"


class Megatron:
    name = "megatron"

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

    def _training(self, line: str, match: re.Match[str]) -> Record:
        values = _fields(line[match.end():])
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
        values = _fields(rest)
        if not values:
            raise ParseError(f"Megatron validation line with no readable value: {line[:120]!r}")
        at_iteration = _AT_ITERATION.match(where)
        step = int(at_iteration.group(1)) if at_iteration else None
        # The test split is evaluated once, after training: an end-of-run result.
        is_test = where.rstrip().endswith(("on test set", "for test data"))
        return Record(values=values, kind=Kind.SUMMARY if is_test else Kind.EVAL, step=step)


def _iteration(line: str) -> re.Match[str] | None:
    """The iteration counter of a training line: where the word is found (in C), and is a word
    of its own, the pattern is tried there; searching the line with it costs twice as much."""
    start = line.find("iteration")
    while start >= 0 and len(line) <= MAX_LINE:
        if start == 0 or not (line[start - 1].isalnum() or line[start - 1] == "_"):
            match = _ITERATION.match(line, start)
            if match is not None:
                return match
        start = line.find("iteration", start + 1)
    return None


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
            values[name] = float(raw)  # the common case; float() ignores the spaces
        except ValueError:
            value = _number(raw.strip())
            if value is not None:
                values[name] = value
    return values


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
