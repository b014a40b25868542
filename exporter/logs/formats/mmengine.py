"""MMEngine's logger (MMDetection 3, MMPretrain, MMSegmentation 1...) and MMCV 1's before it::

    12/01 21:29:14 - mmengine - INFO - Epoch(train) [1][ 25/100]  lr: 1.0000e-02  eta: 0:00:12  time: 0.0475  loss: 0.5759
    12/01 21:29:31 - mmengine - INFO - Epoch(val) [1][8/8]    loss: 0.0992  accuracy: 100.0000  time: 0.0096
    Iter(train) [  50/1000]  lr: 1.0000e-02  eta: 0:10:12  time: 0.0475  loss: 0.5759         iteration-based
    Epoch [1][658/742]	lr: 5.000e-05, eta: 2:15:01, time: 0.396, loss_cls: nan, loss: nan        MMCV 1
    Epoch(val) [1][742]	bbox_mAP: 0.3740, bbox_mAP_50: 0.5750                                  MMCV 1

``Epoch(train) [e][i/n]`` counts iterations within the epoch: no global step is printed, so the
records carry none, and the epoch as a value. ``Iter(train) [i/n]`` is the global iteration: the
step. The logged training values are means over the logging window (MMEngine's loss is the mean
of the last ``interval`` iterations), as printed. Validation prints its metrics on its last line
(``[n/n]``, or MMCV's ``[n]``); the lines before it carry only timings. Test results are
evaluations too, under ``test/`` keys so that they never pose as the validation loss.
The time and logger prefix in front (MMEngine's own, not Python logging's) are left where they
are: the line is found by its ``Epoch(`` or ``Iter(`` head.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, as_test_values, to_float
from .events import MAX_LINE

_HEADS = ("Epoch(", "Iter(", "Epoch [", "Iter [")
_HEAD = re.compile(r"(Epoch|Iter)(?:\((train|val|test)\))? *((?:\[ *\d{1,15}(?: *\/ *\d{1,15})? *\]){1,2})")
_BRACKET = re.compile(r"\[ *(\d{1,15})(?: *\/ *(\d{1,15}))? *\]")
_PAIR = re.compile(r"(?<![\w./@-])([A-Za-z_][\w./@-]{0,63}): ([^\s,]+)")


class MMEngine:
    name = "mmengine"

    def parse(self, line: str) -> list[Record]:
        if not any(head in line for head in _HEADS) or len(line) > MAX_LINE:
            return []
        match = _HEAD.search(line)
        if match is None:
            return []
        unit, split, brackets = match.group(1), match.group(2) or "train", _BRACKET.findall(match.group(3))
        epoch = None
        if unit == "Epoch" and len(brackets) == 2:
            epoch = float(brackets[0][0])
            brackets = brackets[1:]
        elif unit == "Epoch" and split == "train":
            return []  # "Epoch [3]" alone is not this logger's line
        done, total = brackets[0]
        values: dict[str, float] = {}
        for key, text in _PAIR.findall(line, match.end()):
            try:
                values[key] = to_float(text)
            except ParseError:
                continue  # eta: 0:00:12, a shape, a date: not a number
        if split == "train":
            if epoch is not None:
                values["epoch"] = epoch
            step = int(done) if unit == "Iter" else None
            return [Record(values=values, kind=Kind.TRAIN, step=step)] if values else [Record()]
        if total and int(done) < int(total):
            return [Record()]  # a validation line before the last: timings only
        if split == "test":
            values = as_test_values(values)
        if epoch is not None:
            values["epoch"] = epoch
        return [Record(values=values, kind=Kind.EVAL)] if values else [Record()]
