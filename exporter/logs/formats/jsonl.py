"""JSON Lines metric logs: one JSON object per line (custom loggers, W&B-style dumps, HF dicts).

Python's json module writes ``NaN``, ``Infinity`` and ``-Infinity`` as bare literals, which strict
JSON parsers reject; the stdlib decoder accepts them, and a diverging run is exactly when they
appear, so they must survive. The helpers here (eval-key detection, number coercion, step
validation) are shared with the other structured formats.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .base import SUMMARY_KEY, Kind, ParseError, Record, is_neutral_key, records_by_kind, to_float

# Metrics lines are small; anything this long is a dump of something else (or an attack).
MAX_LINE_CHARS = 1 << 20

STEP_KEYS = ("step", "global_step", "iteration", "iter", "trainer/global_step", "_step")
EVAL_WORDS = frozenset({"eval", "evaluation", "val", "valid", "validation", "test"})
SPLIT_FIELDS = ("split", "mode", "phase")
_STEP_KEY_SET = frozenset(STEP_KEYS)
_SPLIT_FIELD_SET = frozenset(SPLIT_FIELDS)

_INT64 = 1 << 63


def number(value: Any) -> float | None:
    """A JSON/YAML leaf as a float, or None when it is not a number.

    Booleans are not numbers (True would read as 1.0); numeric strings such as "nan" or "1e-3"
    are, because some loggers stringify everything.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range is still "very large"
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and 0 < len(value) <= 64:
        try:
            return to_float(value)
        except ParseError:
            return None
    return None


def as_step(value: Any) -> int | None:
    """A step as an int, or None when the value cannot be one (NaN, fractional, huge, text)."""
    num = number(value)
    if num is None or not math.isfinite(num) or num != int(num) or abs(num) >= _INT64:
        return None
    return int(num)


def loads(text: str) -> Any:
    """json.loads that turns every way of failing into ParseError."""
    try:
        return json.loads(text)
    except RecursionError:  # deeply nested arrays/objects
        raise ParseError("JSON nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # JSONDecodeError, int digit limit
        raise ParseError(f"invalid JSON: {str(exc)[:80]}") from None


_raw_decode = json.JSONDecoder().raw_decode


def _loads_stripped(text: str) -> Any:
    """``loads`` for text with no whitespace around it, without json.loads's wrappers (a third of
    its cost on a metrics line): the same values, the same errors."""
    try:
        value, end = _raw_decode(text)
    except RecursionError:
        raise ParseError("JSON nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise ParseError(f"invalid JSON: {str(exc)[:80]}") from None
    if end != len(text):
        return loads(text)  # whatever follows the value: json.loads says what is wrong
    return value


def flatten(obj: dict, prefix: str = "", depth: int = 0) -> dict[str, float]:
    """Numeric leaves of an object, nested keys joined with '/', at most three key levels."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}" if prefix else key
        kind = type(value)
        if kind is float:  # the common cases, without the general coercion's cost
            out[name] = value
        elif kind is int and -_INT64 < value < _INT64:
            out[name] = float(value)
        elif kind is dict:
            if depth < 2:
                out.update(flatten(value, name + "/", depth + 1))
        else:
            num = number(value)
            if num is not None:
                out[name] = num
    return out


def _split_says_eval(obj: dict) -> bool | None:
    for field in SPLIT_FIELDS:
        value = obj.get(field)
        if isinstance(value, str):
            return value.strip().lower() in EVAL_WORDS
    return None


class JsonLines:
    name = "jsonl"

    def parse(self, line: str | bytes) -> list[Record]:
        if isinstance(line, (bytes, bytearray)):
            try:
                line = bytes(line).decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("line is not UTF-8") from None
        text = line.strip().lstrip("\ufeff")
        if not text.startswith("{"):
            return []  # not ours: plain text, arrays, blank lines
        if len(text) > MAX_LINE_CHARS:
            raise ParseError(f"JSON line of {len(text)} characters")
        obj = _loads_stripped(text)
        if not isinstance(obj, dict):
            raise ParseError("JSON line is not an object")
        return self._read(obj)

    def _read(self, obj: dict) -> list[Record]:
        values = flatten(obj)
        step = None
        # Flat ("trainer/global_step": 5) or nested ({"trainer": {"global_step": 5}}); the set
        # test first, in C, so that the usual line with one step key costs one round below.
        present = _STEP_KEY_SET.intersection(obj)
        if dict in map(type, obj.values()):
            present |= _STEP_KEY_SET.intersection(values)
        for key in present if len(present) < 2 else [key for key in STEP_KEYS if key in present]:
            raw = obj.get(key)
            if raw is None:
                raw = values.get(key)
                if raw is None:
                    continue
            if step is None:
                step = raw if type(raw) is int and abs(raw) < _INT64 else as_step(raw)
                if step is None:
                    raise ParseError(f"unusable {key}: {str(raw)[:40]!r}")
            values.pop(key, None)
        split = None if _SPLIT_FIELD_SET.isdisjoint(obj) else _split_says_eval(obj)
        if split is None:
            return records_by_kind(values, step)
        if all(map(is_neutral_key, values)):
            return []  # no metric at all
        kind = Kind.EVAL if split else Kind.SUMMARY if SUMMARY_KEY in values else Kind.TRAIN
        return [Record(values=values, kind=kind, step=step)]
