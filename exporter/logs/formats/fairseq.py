"""fairseq's progress output (``fairseq/logging/progress_bar.py``). It reaches the log through
``fairseq_cli``'s logging format ``%(asctime)s | %(levelname)s | %(name)s | %(message)s`` (or
hydra's ``[time][name][LEVEL] - message`` under ``fairseq-hydra-train``), which the envelope layer
takes off; the messages are::

    epoch 001:    100 / 1891 loss=9.823, ..., num_updates=100, lr=1.25e-05, gnorm=2.034, ...
    epoch 001 | valid on 'valid' subset | loss 8.532 | ... | num_updates 1891
    epoch 001 | loss 9.5 | ... | num_updates 1891 | ...                        (end of an epoch)

``--log-format json`` logs the same stats as a JSON object of strings: the inner training stats
with ``update`` and ``num_updates``, and the end-of-epoch ones with every key prefixed by the
tag (``valid_loss``, ``train_loss``). Releases before 0.10 printed the message alone behind
``| ``. Validation keys come out as ``valid_<key>`` whatever the subset is called (``valid``,
``valid1``, ``test``): the subset is data, not part of the metric's name.
"""

from __future__ import annotations

import json
import re

from .base import Kind, ParseError, Record, to_float
from .events import MAX_LINE

_OLD = re.compile(r"\| ")  # releases before 0.10: no logging, a bar before each message

# fairseq prints the epoch with three digits at least: "epoch 001".
_INNER = re.compile(r"epoch (\d{3,9}):\s{1,20}(\d{1,15}) / (\d{1,15}) (.*)$")
_EPOCH = re.compile(r"epoch (\d{3,9}) \| (.*)$")
_SUBSET = re.compile(r"valid on '([^']{0,200})' subset$")
# Splits "loss=9.8, lr=[1e-05, 2e-05], gnorm=2.0" only before a new "name=".
_COMMA_PAIR = re.compile(r", (?=[A-Za-z_][\w.\-/]{0,100}=)")


class Fairseq:
    name = "fairseq"

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        old = _OLD.match(line)
        message = line[old.end():] if old else line
        inner = _INNER.match(message)
        if inner:
            return [_inner_record(inner, line)]
        summary = _EPOCH.match(message)
        if summary:
            return [_pipe_record(int(summary.group(1)), summary.group(2), line)]
        if message.startswith('{"epoch"'):
            return _json_records(message)
        return []


def _inner_record(match: re.Match[str], line: str) -> Record:
    """``epoch 001:    100 / 1891 loss=9.823, ..., num_updates=100, ...``"""
    values: dict[str, float] = {}
    for pair in _COMMA_PAIR.split(match.group(4)):
        name, sep, raw = pair.partition("=")
        if sep:
            _put(values, name.strip(), raw)
    if not values:
        raise ParseError(f"fairseq train_inner line with no readable stat: {line[:120]!r}")
    step = _take_step(values, "num_updates")
    values["epoch"] = float(match.group(1))
    return Record(
        values=values,
        kind=Kind.TRAIN,
        step=step,
        progress=(int(match.group(2)), int(match.group(3))),
    )


def _pipe_record(epoch: int, text: str, line: str) -> Record:
    """``valid on 'valid' subset | loss 8.532 | ...`` (eval) or ``loss 9.5 | ...`` (epoch end)."""
    parts = [part.strip() for part in text.split(" | ")]
    subset = _SUBSET.match(parts[0]) if parts else None
    if subset:
        parts = parts[1:]
    values: dict[str, float] = {}
    for part in parts:
        name, _, raw = part.rpartition(" ")
        if name:
            _put(values, name, raw)
    if not values:
        raise ParseError(f"fairseq stats line with no readable stat: {line[:120]!r}")
    step = _take_step(values, "num_updates")
    if subset:
        values = {"valid_" + name: value for name, value in values.items()}
    values["epoch"] = float(epoch)
    return Record(values=values, kind=Kind.EVAL if subset else Kind.SUMMARY, step=step)


def _json_records(message: str) -> list[Record]:
    try:
        stats = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting
        raise ParseError(f"fairseq JSON stats cut or malformed: {message[:80]!r}") from None
    if not isinstance(stats, dict):
        return []
    values: dict[str, float] = {}
    for name, raw in stats.items():
        _put(values, str(name), raw)
    if "update" in stats and "num_updates" in stats:  # the inner training stats
        return [Record(values=values, kind=Kind.TRAIN, step=_take_step(values, "num_updates"))]
    # End-of-epoch stats: every key but epoch carries the tag, the split's name ("valid_loss",
    # "train_wall", "test_loss"), and the tag's own "<tag>_num_updates" tells which it is.
    tag = next((name[:-len("_num_updates")] for name in stats if name.endswith("_num_updates")), "")
    own = tag + "_"
    if not tag or not all(name == "epoch" or name.startswith(own) for name in values):
        return []
    values = {name if name == "epoch" else name[len(own):]: value for name, value in values.items()}
    step = _take_step(values, "num_updates")
    if tag == "train":
        return [Record(values=values, kind=Kind.SUMMARY, step=step)]
    values = {name if name == "epoch" else "valid_" + name: value for name, value in values.items()}
    return [Record(values=values, kind=Kind.EVAL, step=step)]


def _put(values: dict[str, float], name: str, raw: object) -> None:
    """Store a stat when it is a number; fairseq also logs lists and strings."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) or not name:
        return
    try:
        values[name] = float(raw) if not isinstance(raw, str) else to_float(raw)
    except (ParseError, OverflowError):  # OverflowError: an int too big for a float
        pass


def _take_step(values: dict[str, float], key: str) -> int | None:
    """The update count is the step: moved out of the values (left there if not a count)."""
    updates = values.get(key)
    if updates is None or not updates.is_integer():  # is_integer() is False for nan and inf
        return None
    del values[key]
    return int(updates)
