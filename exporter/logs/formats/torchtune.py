"""torchtune's metric loggers (``training/metric_logging.py``), DiskLogger and StdoutLogger::

    Step 10 | loss:2.3045 lr:2e-05 tokens_per_second_per_gpu:1523.4 peak_memory_active:10.2 ...

(``name:value`` pairs separated by one space, with a trailing space.) The recipes also describe
their tqdm bar as ``{epoch}|{step}|Loss: {loss}``, so a console without a metric logger still
shows step and loss::

    1|10|Loss: 2.304518699645996:   1%|          | 10/1000 [00:12<19:48,  1.20s/it]
"""

from __future__ import annotations

import re

from .base import Kind, ParseError, Record, kind_of, to_float
from .events import MAX_LINE, parse_progress_bar

_STEP = re.compile(r"Step (\d{1,15}) \|(.*)$")
_TENSOR = re.compile(r"tensor\(\s*([^,()\s]{1,64})")
_BAR = re.compile(r"(\d{1,9})\|(\d{1,15})\|Loss: ([^\s:]{1,64}):\s{1,4}\d{1,3}%\|")


class Torchtune:
    name = "torchtune"

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        step_line = _STEP.match(line)
        if step_line:
            return [_step_record(step_line, line)]
        bar = _BAR.match(line)
        if not bar:
            return []
        progress = parse_progress_bar(line)
        # StdoutLogger's line may be glued behind the bar when stdout and stderr share a file.
        glued = line.find("]Step ")
        if glued >= 0:
            step_line = _STEP.match(line, glued + 1)
            if step_line:
                record = _step_record(step_line, line)
                record.progress = progress
                return [record]
        values = {"epoch": float(bar.group(1))}
        try:
            values["loss"] = to_float(bar.group(3))
        except ParseError:
            raise ParseError(f"unreadable torchtune bar loss: {bar.group(3)!r}") from None
        return [Record(values=values, kind=Kind.TRAIN, step=int(bar.group(2)), progress=progress)]


def _step_record(match: re.Match[str], line: str) -> Record:
    values: dict[str, float] = {}
    for name, raw in _pairs(match.group(2)):
        tensor = _TENSOR.match(raw)
        if tensor:
            raw = tensor.group(1)
        try:
            values[name] = to_float(raw)
        except ParseError:
            continue  # a non-numeric entry; the others still count
    if not values:
        raise ParseError(f"torchtune Step line with no readable metric: {line[:120]!r}")
    # Validation runs log through the same logger, under their own names.
    return Record(values=values, kind=kind_of(values), step=int(match.group(1)))


def _pairs(text: str) -> list[tuple[str, str]]:
    """``"loss:2.3 lr:2e-05 "`` -> ``[("loss", "2.3"), ("lr", "2e-05")]``.

    A value printed from a tensor spans several words ("tensor(2.3045, device='cuda:0')"), so
    its words are joined back up to the closing parenthesis.
    """
    pairs: list[tuple[str, str]] = []
    words = text.split()
    i = 0
    while i < len(words):
        name, colon, raw = words[i].partition(":")
        i += 1
        if not colon or not name:
            continue
        if raw.startswith("tensor(") and not raw.endswith(")"):
            parts = [raw]
            while i < len(words) and not parts[-1].endswith(")"):
                parts.append(words[i])
                i += 1
            raw = " ".join(parts)
        pairs.append((name, raw))
    return pairs
