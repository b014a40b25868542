"""Log dialects. Each module knows one dialect: text (or bytes) in, records out; no I/O, no state
beyond what the dialect itself needs (a CSV header, a partial binary record).

Line formats share one small interface::

    fmt = LINE_FORMATS["megatron"]()
    fmt.parse("iteration 10/ 100 | ... |")  -> list[Record]   ([] when the line is not ours)

``parse`` raises ``ParseError`` when a line is clearly of its dialect but cannot be read; the
caller counts and skips it.

A format that learns the layouts of its metrics lines may also offer ``read_run(lines, start,
end)``: the ``Run`` of lines from ``lines[start]`` on, before ``lines[end]``, that its learned
layouts read as training records, or None. A run reads the lines exactly as ``parse`` would, only
without a record per line.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .base import Event, Kind, ParseError, Record, Run
from .csvlog import KerasCsv, LightningCsv
from .deepspeed import DeepSpeed
from .fairseq import Fairseq
from .hf_console import HuggingFaceConsole
from .jsonl import JsonLines
from .megatron import Megatron
from .nanogpt import NanoGPT
from .torchtune import Torchtune


class LineFormat(Protocol):
    name: str

    def parse(self, line: str) -> list[Record]: ...


# Console dialects, in the order auto-detection tries them: the most specific first, so a
# generic dialect never claims a line that a specific one understands.
CONSOLE_FORMATS: dict[str, Callable[[], LineFormat]] = {
    "megatron": Megatron,
    "deepspeed": DeepSpeed,
    "fairseq": Fairseq,
    "torchtune": Torchtune,
    "nanogpt": NanoGPT,
    "huggingface": HuggingFaceConsole,
}

LINE_FORMATS: dict[str, Callable[[], LineFormat]] = {
    **CONSOLE_FORMATS,
    "jsonl": JsonLines,
    "lightning_csv": LightningCsv,
    "keras_csv": KerasCsv,
}

# Formats that are not line-oriented; the reader for each lives beside its parser.
BINARY_FORMATS = ("tensorboard",)
DOCUMENT_FORMATS = ("trainer_state", "hparams")

ALL_FORMATS = (*LINE_FORMATS, *BINARY_FORMATS, *DOCUMENT_FORMATS, "regex")

__all__ = [
    "ALL_FORMATS",
    "BINARY_FORMATS",
    "CONSOLE_FORMATS",
    "DOCUMENT_FORMATS",
    "Event",
    "Kind",
    "LINE_FORMATS",
    "LineFormat",
    "ParseError",
    "Record",
    "Run",
]
