"""DeepSpeed engine progress, every ``steps_per_print`` steps, behind DeepSpeed's log prefix::

    [2024-05-01 10:00:00,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]
    [2024-05-01 10:00:00,125] [INFO] [timer.py:260:stop] epoch=0/micro_step=10/global_step=10, RunningAvgSamplesPerSec=45.2, CurrSamplesPerSec=46.1, MemAllocated=4.5GB, MaxMemAllocated=6.1GB

``lr`` and ``mom`` list one entry per optimizer param group; the first group's lr is reported.
Memory is ``memory_allocated() / 1024**3`` rounded to 2 places, so "GB" here means GiB. The
loss-scale OVERFLOW lines are events (``events.py``), not records of this dialect.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, to_float
from .events import MAX_LINE

_STEP = re.compile(r"\bstep=(\d{1,15}), skipped=(\d{1,15}), lr=")
_TIMER = re.compile(r"\bepoch=(\d{1,15})/micro_step=(\d{1,15})/global_step=(\d{1,15})")
_GIB = 1024**3
# The timer's memory readings, renamed because their unit is folded into the value.
_MEMORY = {"MemAllocated": "mem_allocated_bytes", "MaxMemAllocated": "max_mem_allocated_bytes"}


class DeepSpeed:
    name = "deepspeed"

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        match = _STEP.search(line)
        if match:
            values = {"skipped": float(match.group(2))}
            lr = _first_lr(line, match.end())
            if lr is not None:
                values["lr"] = lr
            return [Record(values=values, kind=Kind.TRAIN, step=int(match.group(1)))]
        match = _TIMER.search(line)
        if match:
            values = {"epoch": float(match.group(1)), "micro_step": float(match.group(2))}
            values.update(_timer_fields(line[match.end():]))
            return [Record(values=values, kind=Kind.TRAIN, step=int(match.group(3)))]
        return []


def _first_lr(line: str, start: int) -> float | None:
    """The first param group's lr from ``[0.0001, 0.0001]`` (or a bare ``0.0001``)."""
    if line.startswith("[", start):
        close = line.find("]", start)
        if close < 0:
            raise ParseError(f"DeepSpeed step line cut inside lr: {line[start:start + 60]!r}")
        first = line[start + 1:close].split(",", 1)[0].strip()
        if not first:
            return None  # no optimizer: DeepSpeed prints lr=[]
    else:
        first = line[start:].split(",", 1)[0].strip()
    try:
        return to_float(first)
    except ParseError:
        return None  # e.g. a scheduler that left None in the group: the rest is still good


def _timer_fields(text: str) -> dict[str, float]:
    """``", RunningAvgSamplesPerSec=45.2, MemAllocated=4.5GB"`` -> values, memory in bytes.

    With ``monitor_memory`` the timer prints ``vm %: 41.2, swap %: 0.0`` instead; read alike.
    """
    values: dict[str, float] = {}
    for part in text.split(","):
        name, sep, raw = part.partition("=")
        if not sep:
            name, sep, raw = part.partition(":")
        name, raw = name.strip(), raw.strip()
        if not sep or not name:
            continue
        try:
            if name in _MEMORY and raw.endswith("GB"):
                # Whole bytes: the GiB figure was already rounded to 2 places.
                values[_MEMORY[name]] = float(round(to_float(raw[:-2]) * _GIB))
            else:
                values[name] = to_float(raw)
        except (ParseError, OverflowError, ValueError):  # round() of inf/nan: unusable
            continue
    return values
