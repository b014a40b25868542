"""nanoGPT's ``train.py`` prints::

    iter 100: loss 2.3000, time 50.00ms, mfu 30.00%
    step 2000: train loss 2.1000, val loss 2.2000

``mfu`` is a running average that starts at -1 (printed ``-100.00%``) until five iterations
have been timed: that placeholder is not a measurement and is dropped. Forks append more
``name value`` fields (``grad_norm 0.412``); those are kept when numeric.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, to_float
from .events import MAX_LINE

_TRAIN = re.compile(r"iter (\d{1,15}): loss (.*)$")
_EVAL = re.compile(r"step (\d{1,15}): train loss (.*)$")


class NanoGPT:
    name = "nanogpt"

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        match = _TRAIN.match(line)
        if match:
            fields = _fields("loss " + match.group(2))
            return [Record(values=_train_values(fields, line), kind=Kind.TRAIN, step=int(match.group(1)))]
        match = _EVAL.match(line)
        if match:
            fields = _fields("train loss " + match.group(2))
            if "val loss" not in fields:
                raise ParseError(f"nanoGPT eval line without val loss: {line[:80]!r}")
            values = {}
            for name, text in fields.items():
                value = _number(text)
                if value is None and name in ("train loss", "val loss"):
                    raise ParseError(f"unreadable nanoGPT {name}: {text[:40]!r}")
                if value is not None:
                    values[name] = value
            return [Record(values=values, kind=Kind.EVAL, step=int(match.group(1)))]
        return []


def _fields(text: str) -> dict[str, str]:
    """``"loss 2.3, time 50.00ms"`` -> ``{"loss": "2.3", "time": "50.00ms"}``."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, _, value = part.strip().rpartition(" ")
        if name:
            fields.setdefault(name, value)
    return fields


def _train_values(fields: dict[str, str], line: str) -> dict[str, float]:
    loss = _number(fields.get("loss", ""))
    if loss is None:
        raise ParseError(f"unreadable nanoGPT loss: {line[:80]!r}")
    values = {"loss": loss}
    for name, text in fields.items():
        if name == "loss":
            continue
        if name == "time":
            seconds = _seconds(text)
            if seconds is not None:
                values["iter_time_seconds"] = seconds
        elif name == "mfu":
            percent = _number(text[:-1]) if text.endswith("%") else None
            # Negative means "not measured yet" (the -1 sentinel), never a real utilisation.
            if percent is not None and not percent < 0:
                values["mfu"] = percent / 100.0
        else:
            value = _number(text)
            if value is not None:
                values[name] = value
    return values


def _seconds(text: str) -> float | None:
    if text.endswith("ms"):
        value = _number(text[:-2])
        return None if value is None else value / 1000.0
    if text.endswith("s"):
        return _number(text[:-1])
    return None


def _number(text: str) -> float | None:
    try:
        return to_float(text)
    except ParseError:
        return None
