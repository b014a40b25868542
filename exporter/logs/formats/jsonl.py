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

from .base import MAX_LEARNED_LINE, MAX_RUN, Kind, ParseError, Record, Run, to_float

# Metrics lines are small; anything this long is a dump of something else (or an attack).
MAX_LINE_CHARS = 1 << 20

STEP_KEYS = ("step", "global_step", "iteration", "iter", "trainer/global_step", "_step")
EVAL_PREFIXES = ("eval_", "val_", "val/", "eval/", "valid_", "validation_", "test_", "test/")
EVAL_WORDS = frozenset({"eval", "evaluation", "val", "valid", "validation", "test"})
SPLIT_FIELDS = ("split", "mode", "phase")
_STEP_KEY_SET = frozenset(STEP_KEYS)
_SPLIT_FIELD_SET = frozenset(SPLIT_FIELDS)
# Keys that say when, not what: they neither make a row an eval row nor stop it being one.
NEUTRAL_KEYS = frozenset({"epoch", "timestamp", "time", "wall_time", "elapsed"})

_INT64 = 1 << 63
_FLOAT = frozenset({float})


def is_eval_key(key: str) -> bool:
    return key.lower().startswith(EVAL_PREFIXES)


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
        if type(value) is float:  # the common case, without the general coercion's cost
            out[name] = value
            continue
        if isinstance(value, dict):
            if depth < 2:
                out.update(flatten(value, name + "/", depth + 1))
            continue
        num = number(value)
        if num is not None:
            out[name] = num
    return out


def _take_step(obj: dict, step_key: str | None) -> tuple[bool, int | None]:
    """Pop a learned layout's step from ``obj``: whether the object holds the layout's kind of
    values (an int step, or null; every other value a float), and the step."""
    step = obj.pop(step_key) if step_key is not None else None
    fits = (step is None or type(step) is int and abs(step) < _INT64) and _FLOAT.issuperset(map(type, obj.values()))
    return fits, step


def _split_says_eval(obj: dict) -> bool | None:
    for field in SPLIT_FIELDS:
        value = obj.get(field)
        if isinstance(value, str):
            return value.strip().lower() in EVAL_WORDS
    return None


# Key layouts learned per file: a training row's, an evaluation row's, a few more.
MAX_LAYOUTS = 16


class JsonLines:
    name = "jsonl"

    def __init__(self) -> None:
        # The keys of an object, in order -> (its step key or None, its kind), for objects whose
        # values were all floats but for an int step: the next object with those keys and such
        # values is a record without any of the general path's questions.
        self._layouts: dict[tuple[str, ...], tuple[str | None, Kind]] = {}
        # The line read_run decoded last and could not take, with its object, so that parse,
        # called next on that line, does not decode it again.
        self._decoded: tuple[str, dict] | None = None

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
        decoded, self._decoded = self._decoded, None
        obj = decoded[1] if decoded is not None and decoded[0] == text else _loads_stripped(text)
        if not isinstance(obj, dict):
            raise ParseError("JSON line is not an object")
        keys = tuple(obj)
        layout = self._layouts.get(keys)
        if layout is not None:
            step_key, kind = layout
            fits, step = _take_step(obj, step_key)
            if fits:
                return [Record(values=obj, kind=kind, step=step)]
            obj = _loads_stripped(text)  # not this layout's kind of values: read it afresh
        records = self._read(obj)
        if records and len(self._layouts) < MAX_LAYOUTS and len(text) <= MAX_LEARNED_LINE:
            self._learn(keys, obj, records[0])
        return records

    def read_run(self, lines: list[str], start: int, end: int) -> Run | None:
        """Objects from ``lines[start]`` on, before ``lines[end]``, with the keys of one learned
        training layout and its kind of values, each written without space around it: what
        ``parse`` reads them as."""
        if not self._layouts:
            return None  # nothing learned (yet, or at all: nested objects are not learned)
        layout_keys: tuple[str, ...] | None = None
        step_key: str | None = None
        rows: list[tuple[float, ...]] = []
        steps: list[int] = []
        for index in range(start, min(end, start + MAX_RUN)):  # (a slice would copy)
            line = lines[index]
            if line[:1] != "{" or line[-1:] != "}" or len(line) > MAX_LINE_CHARS:
                break  # (parse would strip the line: this one has nothing to strip)
            try:
                obj, decoded_to = _raw_decode(line)
            except (ValueError, TypeError, OverflowError, RecursionError):
                break
            if decoded_to != len(line) or type(obj) is not dict:
                break
            keys = tuple(obj)
            if layout_keys is None:
                layout = self._layouts.get(keys)
                if layout is None or layout[1] is not Kind.TRAIN:
                    self._decoded = (line, obj)
                    return None
                layout_keys, step_key = keys, layout[0]
            elif keys != layout_keys:
                break
            fits, step = _take_step(obj, step_key)
            if not fits or (step is None and step_key is not None):  # a run's steps are numbers
                break
            rows.append(tuple(obj.values()))
            steps.append(step)
        if not rows:
            return None
        return Run(keys=tuple(key for key in layout_keys if key != step_key), rows=rows, lines=len(rows),
                   steps=steps if step_key is not None else None)

    def _learn(self, keys: tuple[str, ...], obj: dict, record: Record) -> None:
        step_keys = _STEP_KEY_SET.intersection(keys)
        if len(step_keys) > 1 or len(record.values) != len(keys) - len(step_keys):
            return  # nested, not numbers, several step keys: left to the general path
        step_key = next(iter(step_keys), None)
        if step_key is not None and type(obj[step_key]) is not int:
            return
        if all(type(obj[key]) is float for key in keys if key != step_key):
            self._layouts[keys] = (step_key, record.kind)

    def _read(self, obj: dict) -> list[Record]:
        values = flatten(obj)
        step = None
        # Flat ("trainer/global_step": 5) or nested ({"trainer": {"global_step": 5}}); the set
        # test first, in C, so that the usual line with one step key costs one round below.
        present = _STEP_KEY_SET.intersection(obj) | _STEP_KEY_SET.intersection(values)
        for key in STEP_KEYS if present else ():
            if key not in present:
                continue
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
        # One pass: is there a metric at all, and are all metrics evaluation keys?
        has_metric, all_eval = False, True
        for key in values:
            if key in NEUTRAL_KEYS or key[:1] == "_":
                continue
            has_metric = True
            if all_eval and not key.lower().startswith(EVAL_PREFIXES):
                all_eval = False
        if not has_metric:
            return []

        split = None if _SPLIT_FIELD_SET.isdisjoint(obj) else _split_says_eval(obj)
        if split is None:
            split = all_eval
        if split:
            kind = Kind.EVAL
        elif "train_runtime" in values:  # HF's end-of-run aggregate, dumped as a line
            kind = Kind.SUMMARY
        else:
            kind = Kind.TRAIN
        return [Record(values=values, kind=kind, step=step)]
