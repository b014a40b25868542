"""Log dialects: one module per way a trainer prints its metrics.

A dialect is a class with a ``name`` and one method::

    Megatron().parse("iteration 10/ 100 | lm loss: 2.3 |")  -> list[Record]   ([] when not its line)

``parse`` gets a payload: one line as the trainer printed it, with whatever a container runtime,
a launcher or Python ``logging`` wrapped around it already taken off (``logs/envelopes.py``).
It raises ``ParseError`` when a line is clearly of its dialect but cannot be read; the reader
counts and skips it. No I/O, and no state beyond what the dialect itself needs (a CSV header).

Adding a dialect is one module here, with its tests, and one entry in ``CONSOLE_FORMATS``.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .base import Event, Kind, ParseError, Record
from .console_table import ConsoleTable
from .csvlog import KerasCsv, LightningCsv
from .deepspeed import DeepSpeed
from .fairseq import Fairseq
from .hf_console import HuggingFaceConsole
from .jsonl import JsonLines
from .keras_console import KerasConsole
from .key_values import KeyValues
from .lightning_console import LightningConsole
from .megatron import Megatron
from .mmengine import MMEngine
from .nanogpt import NanoGPT
from .torchtune import Torchtune


class LineFormat(Protocol):
    @property
    def name(self) -> str: ...

    def parse(self, line: str) -> list[Record]: ...


# The console dialects, each recognising its own lines only: the trainers' own, then the
# general shapes (a table, key/value text) that any script may print.
CONSOLE_FORMATS: dict[str, Callable[[], LineFormat]] = {
    "megatron": Megatron,
    "deepspeed": DeepSpeed,
    "fairseq": Fairseq,
    "torchtune": Torchtune,
    "nanogpt": NanoGPT,
    "mmengine": MMEngine,
    "keras": KerasConsole,
    "lightning": LightningConsole,
    "huggingface": HuggingFaceConsole,
    "table": ConsoleTable,
    "key_value": KeyValues,
}

# The order in which a console log's line is tried by the dialects, after the one that read the
# line before: the most specific first, so that a generic dialect (any JSON object, any key/value
# text) never claims a line that a specific one understands. Lightning's bars come before the
# Hugging Face dialect, which would take their batch counts for the Trainer's steps.
AUTO_ORDER = ("megatron", "deepspeed", "fairseq", "torchtune", "nanogpt", "mmengine", "keras", "lightning",
              "jsonl", "huggingface", "table", "key_value")

LINE_FORMATS: dict[str, Callable[[], LineFormat]] = {
    **CONSOLE_FORMATS,
    "jsonl": JsonLines,
    "lightning_csv": LightningCsv,
    "keras_csv": KerasCsv,
}

# Formats that are not read line by line; the reader for each lives beside its parser.
BINARY_FORMATS = ("tensorboard",)
DOCUMENT_FORMATS = ("trainer_state", "hparams")

ALL_FORMATS = (*LINE_FORMATS, *BINARY_FORMATS, *DOCUMENT_FORMATS, "regex")

__all__ = [
    "ALL_FORMATS",
    "AUTO_ORDER",
    "BINARY_FORMATS",
    "CONSOLE_FORMATS",
    "DOCUMENT_FORMATS",
    "Event",
    "Kind",
    "LINE_FORMATS",
    "LineFormat",
    "ParseError",
    "Record",
]
