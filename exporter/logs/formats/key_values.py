"""Key/value text that no trainer's own dialect claims: what a plain training loop prints.

    epoch 3 step 120 loss 0.4123 lr 1.0e-03
    step=120 loss=0.41 val_loss=0.52
    Step 120: loss: 0.41, acc: 0.88
    [3,    40] loss: 0.466                  PyTorch's tutorial: [epoch, batch within the epoch]
    val: loss=0.52 acc=0.88                 a leading split label names the split
    Validation metrics:                     a header naming the split, then one value a line
        loss: 0.52                          (until a line that is not one value)
        acc: 0.88

A line is read only when it is made of ``key value`` pairs (``key=value`` and ``key: value``
too) and nothing else but separators, when one of its keys measures something
(``base.is_measured_key``: loss, acc, ppl...), and when it holds a second pair or says where
training is (a step or an epoch). So prose that mentions a loss, a traceback, pip's output or a
config dump's ``learning_rate=0.001,`` lines are not metrics. Values are numbers, ``nan`` or
``inf``; a value with a unit (``50ms``, ``3%``) belongs to the line but is not taken. Every
other numeric pair of a line that is read is kept, as every dialect keeps its lines' keys.

``step``, ``iter``, ``iteration`` and ``global_step`` give the record's step. ``epoch`` is a
value, never the step, and so is the epoch of ``[epoch, batch]``; the batch within the epoch is
neither. Tried after every other dialect.
"""

from __future__ import annotations

import re

from .base import MEASURED_WORDS, Kind, Record, as_test_values, is_measured_key, records_by_kind, to_float
from .events import MAX_LINE

# A key starts a word and is bounded in length, so that a long word costs a bounded number of
# tries, never a scan to its end from each of its characters.
_KEY = r"(?<![\w./@])[A-Za-z_][\w./@]{0,63}"
_NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[Nn]a[Nn]|[Ii]nf(?:inity)?)"
# A key, how it is tied to its value (=, : or a space), the value, and a unit glued to it.
_PAIR = re.compile(rf"({_KEY})(?:\s*[=:]\s*|\s+)({_NUMBER})([A-Za-z%/]{{0,8}})(?=[\s,;|:]|$)")
_SEPARATORS = re.compile(r"[\s,;|:=\-]*")
_EPOCH_BATCH = re.compile(r"\[\s*(\d{1,9}),\s*\d{1,12}\]\s*")
_SPLITS = r"train|training|val|valid|validation|eval|evaluation|test"
_LABEL = re.compile(rf"(?i)\[?({_SPLITS})\]?(?:\s*[:|\-])?\s+")
_HEADER = re.compile(rf"(?i)({_SPLITS})(?: (?:set|split|metrics|results|scores|losses|stats))*\s*:")
_BLOCK_LINE = re.compile(rf"({_KEY})(?:\s*[=:]\s*|\s+)({_NUMBER})([A-Za-z%/]{{0,8}})$")
_STEP_KEYS = frozenset({"step", "global_step", "iter", "iteration"})
# A measured key's word, looked for in the lower-cased line before any pattern is tried: most
# lines of other output hold none.
_HINTS = tuple(sorted(MEASURED_WORDS))


class KeyValues:
    name = "key_value"

    def __init__(self) -> None:
        self._block: str | None = None  # the split named by the header of the block being read

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        text = line.strip()
        if self._block is not None:
            match = _BLOCK_LINE.fullmatch(text)
            if match is not None:
                key, number, unit = match.groups()
                return [] if unit else [_split_record(self._block, {key: to_float(number)}, None)]
            self._block = None
        if text[-1:] == ":":
            header = _HEADER.fullmatch(text)
            if header is not None:
                self._block = header.group(1).lower()
            return []
        lowered = text.lower()
        if not any(hint in lowered for hint in _HINTS):
            return []
        return self._pairs(text)

    def _pairs(self, text: str) -> list[Record]:
        values: dict[str, float] = {}
        pos = 0
        start = _EPOCH_BATCH.match(text)
        if start is not None:
            values["epoch"] = float(start.group(1))
            pos = start.end()
        label = _LABEL.match(text, pos)
        split = None
        if label is not None:
            split, pos = label.group(1).lower(), label.end()
        pairs = []
        for match in _PAIR.finditer(text, pos):
            if _SEPARATORS.fullmatch(text, pos, match.start()) is None:
                return []  # words between the pairs: prose
            pairs.append(match.groups())
            pos = match.end()
        if not pairs or _SEPARATORS.fullmatch(text, pos) is None:
            return []
        step = None
        for key, number, unit in pairs:
            lowered = key.lower()
            if lowered in _STEP_KEYS:
                if number.isdigit() and not unit:
                    step = int(number)  # a step of 1.5 or 50ms is no step, and no value either
            elif not unit:
                values["epoch" if lowered == "epoch" else key] = to_float(number)
        if not any(map(is_measured_key, values)) or (len(pairs) < 2 and step is None and "epoch" not in values):
            return []
        if split is None:
            return records_by_kind(values, step)
        return [_split_record(split, values, step)]


def _split_record(split: str, values: dict[str, float], step: int | None) -> Record:
    """The record of values that a label or a header said were measured on ``split``."""
    if split.startswith("train"):
        return Record(values=values, kind=Kind.TRAIN, step=step)
    return Record(values=as_test_values(values) if split == "test" else values, kind=Kind.EVAL, step=step)
