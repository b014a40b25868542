"""PyTorch Lightning's console progress bars: the default TQDMProgressBar, and RichProgressBar::

    Epoch 3: 100%|██████████| 8/8 [00:00<00:00, 201.99it/s, v_num=0, train_loss=0.0943, val_loss=0.0684]
    Validation DataLoader 0:  50%|█████     | 1/2 [00:00<00:00, 1091.41it/s]
    Epoch 3/3  ━━━━━━━━━━━━━━━━━ 8/8 0:00:00 • 0:00:00 435.64it/s v_num: 0.000          Rich
                                                              train_loss: 0.094     Rich, wrapped

The bar names the epoch (0-based) and counts batches within it; it never shows the global step,
which gradient accumulation or several optimizers make differ from any count of batches. So the
records carry no step: the epoch, and what ``self.log(..., prog_bar=True)`` put in the postfix.
(``lightning_logs/version_N/``, the CSV or TensorBoard logger's files, has the global step.)

TQDM draws twice per batch: when the count moves (still showing the postfix of the batch
before), then when the postfix is set to the batch's own values. A batch's training values are
therefore read from the second redraw at a position (epoch, count), and from no other, so that
each is counted once. Validation values stay in the postfix until the next validation replaces
them: they are read once, as one evaluation, from the first epoch redraw after a validation
bar. Lightning prints NaN and infinity as ``nan.0`` and ``inf.0``.

RichProgressBar, when its output is not a terminal, prints its final state once, at the end: the
last epoch's bar and, wrapped onto the lines after it, the metrics (``name: value`` and nothing
else on each).

Lightning's other bars (sanity check, validation, test, predict) are its own lines too: read as
records without values, so that no other dialect takes their counts for training progress.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, records_by_kind, to_float
from .events import MAX_LINE

_TQDM = re.compile(r"Epoch (\d{1,9}): +\d{1,3}%\|[^|]{0,200}\| *(\d{1,15})/(?:\d{1,15}|\?) *\[([^\]]{0,4096})\]")
_RICH = re.compile(r"Epoch (\d{1,9})/(?:\d{1,9}|\?) +[━╸╺─ ]{0,400}(?:\d{1,15})/(?:\d{1,15}|\?) (.*)$")
_OTHER_BARS = ("Validation", "Sanity Checking", "Training", "Testing", "Predicting")
_METRIC = re.compile(r"(?<![\w./@-])([A-Za-z_][\w./@-]{0,63}): (\S+)")
_METRICS_LINE = re.compile(r"(?:[A-Za-z_][\w./@-]{0,63}: \S+(?:\s+|$))+$")
_NOT_METRICS = frozenset({"v_num"})  # the logger's version number


class LightningConsole:
    name = "lightning"

    def __init__(self) -> None:
        self._position: tuple[int, int] | None = None  # (epoch, count) of the last epoch redraw
        self._redraws = 0  # redraws at that position
        self._validated = False  # a validation bar came after the last epoch redraw
        self._rich_epoch: float | None = None  # inside the metrics wrapped after a Rich bar

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        if self._rich_epoch is not None:
            if _METRICS_LINE.match(line):
                return self._rich_records(line, self._rich_epoch)
            self._rich_epoch = None
        if line[:6] == "Epoch ":
            match = _TQDM.match(line)
            if match is not None:
                return self._tqdm(int(match.group(1)), int(match.group(2)), match.group(3))
            match = _RICH.match(line)
            if match is not None:
                self._rich_epoch = float(match.group(1))
                return self._rich_records(match.group(2), self._rich_epoch)
            return []
        if line.startswith(_OTHER_BARS) and ("%|" in line or "━" in line or "| " in line):
            if line[:10] == "Validation":
                self._validated = True
            return [Record()]
        return []

    def _tqdm(self, epoch: int, count: int, bracket: str) -> list[Record]:
        position = (epoch, count)
        self._redraws = self._redraws + 1 if position == self._position else 1
        self._position = position
        values: dict[str, float] = {"epoch": float(epoch)}
        for item in bracket.split(", "):
            key, equals, text = item.partition("=")
            if equals and key not in _NOT_METRICS:
                value = _number(text)
                if value is not None:
                    values[key] = value
        found = records_by_kind(values)
        validated, self._validated = self._validated, False
        records = [record for record in found if record.kind is Kind.EVAL] if validated else []
        if self._redraws == 2 and count > 0:
            train = [record for record in found if record.kind is not Kind.EVAL]
            records[:0] = train or [Record(values={"epoch": float(epoch)})]
        return records or [Record()]

    @staticmethod
    def _rich_records(text: str, epoch: float) -> list[Record]:
        """The records of the metrics Rich printed as ``name: value`` in ``text``."""
        values: dict[str, float] = {}
        for key, shown in _METRIC.findall(text):
            value = _number(shown)
            if value is not None and key not in _NOT_METRICS:
                values[key] = value
        return records_by_kind({**values, "epoch": epoch}) or [Record(values={"epoch": epoch})]


def _number(text: str) -> float | None:
    """A postfix value: a number, or NaN and infinity as Lightning prints them (``nan.0``)."""
    if text.endswith(".0") and text[-5:-2].lower() in ("nan", "inf"):
        text = text[:-2]
    try:
        return to_float(text)
    except ParseError:
        return None
