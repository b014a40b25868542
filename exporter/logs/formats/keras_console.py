"""Keras ``model.fit`` console output (Keras 3 and tf.keras 2), ``verbose=1`` and ``verbose=2``::

    Epoch 3/20
    64/64 ━━━━━━━━━━━━━━━━━━━━ 0s 3ms/step - loss: 0.6931 - val_loss: 0.7012       Keras 3, verbose=1
    64/64 - 0s - 3ms/step - loss: 0.6931 - val_loss: 0.7012                       Keras 3, verbose=2
    64/64 [==============================] - 0s 3ms/step - loss: 0.6931            tf.keras 2

With ``verbose=1`` Keras redraws its bar in place even through a pipe: each redraw begins with
backspaces over the one before and a carriage return, and bold and colour codes wrap the counter
and the bar. The envelope layer cuts at the carriage return; the backspaces, left trailing each
redraw, and the colour codes are dropped here. (Not in the envelope layer: a Keras backspace run
always ends at a carriage return, which already starts a new payload, while a backspace
anywhere else means "one column left", not a new line.)

The counter is the batch within the epoch and Keras prints no global step, so records carry
none. A redraw shows the epoch's running mean loss; the epoch's last bar (``64/64``) shows the
values ``History`` records for the epoch, validation values included. Only that bar's values are
read, so each epoch's values (and a NaN among them) count once, as in ``History``; the redraws
before it say that training moves, and in which epoch (``Epoch N/M``, 1-based as printed).
A finished bar after the epoch's own, with no ``Epoch N/M`` between, is ``model.evaluate()``:
an evaluation.
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, records_by_kind, to_float
from .events import MAX_LINE

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_EPOCH = re.compile(r"Epoch (\d{1,9})/\d{1,9}\s*$")
# "64/64" then the bar (Keras 3's ━, tf.keras's [===>...]) or verbose=2's " - "; the metrics
# follow as " - name: value".
_BAR = re.compile(r"\s*(\d{1,15})/(\d{1,15}|Unknown) (?:━|\[[=>.]*\]|- )")
_METRIC = re.compile(r" - ([A-Za-z_][\w./@]{0,63}): (\S+)")


class KerasConsole:
    name = "keras"

    def __init__(self) -> None:
        self._epoch: float | None = None  # the epoch being trained, as printed
        self._epoch_done = False  # its last bar was read: a further finished bar is evaluate()

    def parse(self, line: str) -> list[Record]:
        if "/step" not in line and "ETA:" not in line:
            if line[:6] == "Epoch ":
                match = _EPOCH.match(line)
                if match:
                    self._epoch, self._epoch_done = float(match.group(1)), False
                    return [Record(values={"epoch": self._epoch})]
            return []
        if len(line) > MAX_LINE:
            return []
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        match = _BAR.match(line)
        if match is None:
            return []
        done, total = match.groups()
        if total == "Unknown" or int(done) < int(total):
            # A redraw within the epoch: its loss is a running mean, not what History keeps.
            return [Record(values={"epoch": self._epoch})] if self._epoch is not None else [Record()]
        values: dict[str, float] = {}
        for key, text in _METRIC.findall(line.rstrip("\b "), match.end()):
            try:
                values[key] = to_float(text)
            except ParseError:
                raise ParseError(f"unreadable Keras {key}: {text[:40]!r}") from None
        if self._epoch is not None:
            values["epoch"] = self._epoch
        if self._epoch_done:
            return [Record(values=values, kind=Kind.EVAL)] if values else [Record()]
        self._epoch_done = True
        return records_by_kind(values) or [Record()]
