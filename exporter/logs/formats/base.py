"""What every log format produces: records, with no I/O and no knowledge of Prometheus."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """What a record describes, so signals know which values are which."""

    TRAIN = "train"  # a training step's logged values
    EVAL = "eval"  # one evaluation on held-out data
    SUMMARY = "summary"  # end-of-run aggregates (e.g. HF's train_runtime line): not a step


class Event(enum.Enum):
    """Things a log says happened, counted rather than gauged."""

    OOM = "oom"  # CUDA/host out-of-memory seen in the log
    LOSS_SCALE_OVERFLOW = "loss_scale_overflow"  # fp16 overflow: step skipped, loss scale lowered


@dataclass(slots=True)
class Record:
    """One thing a log line (or event, or document entry) said.

    ``values`` keeps the keys exactly as the framework wrote them (``eval_loss``, ``lm loss``,
    ``val loss``); the vocabulary maps them to canonical names later. Values are floats and may
    be NaN or infinite: hiding those is exactly what must not happen.
    """

    values: dict[str, float] = field(default_factory=dict)
    kind: Kind = Kind.TRAIN
    step: int | None = None
    event: Event | None = None
    # Facts about the run: hyperparameters, max_steps, batch size. Numbers or short strings.
    meta: dict[str, float | str] = field(default_factory=dict)
    # (done, total) from a progress bar such as tqdm's "50/1000".
    progress: tuple[int, int] | None = None
    # When the log itself says the value was written (TensorBoard's wall_time), if it says.
    wall_time: float | None = None


@dataclass(slots=True)
class Run:
    """Consecutive lines that all read by one learned layout as training records, by column.

    A log repeats one layout line after line; a run lets the state take a stretch of such lines
    without a ``Record`` per line. ``records()`` lists the records the lines read one by one
    give, and applying the run must do what applying them in order does.
    """

    keys: tuple[str, ...]
    rows: list[tuple[float, ...]]  # each line's values, in the order of ``keys``
    lines: int  # lines read, progress-bar lines included
    steps: list[int] | None = None  # each row's step, when the lines print one
    progress: list[tuple[int, int]] | None = None  # each row's progress bar, when one comes first
    meta: dict[str, float | str] | None = None  # what every line says alike (Megatron's max_steps)

    def records(self) -> list[Record]:
        keys, steps, progress, meta = self.keys, self.steps, self.progress, self.meta
        return [Record(values=dict(zip(keys, row)), kind=Kind.TRAIN,
                       step=steps[i] if steps is not None else None,
                       progress=progress[i] if progress is not None else None,
                       meta=dict(meta) if meta else {})
                for i, row in enumerate(self.rows)]


# Lines taken into one run at most: the state applies a run under its lock.
MAX_RUN = 1024

# Parsers learn the layout of the lines they read often (the keys of a metrics line, in order)
# and read lines of that layout by one regular expression. Only short lines are learned from:
# metrics lines are, and a layout keeps its keys.
MAX_LEARNED_LINE = 4096


class ParseError(ValueError):
    """A line that belongs to this format but cannot be read (counted, then skipped)."""


def to_float(text: str) -> float:
    """Parse a number as frameworks print it: nan, inf, -inf, NaN, Infinity, 1.0E+00, '2.5'."""
    try:
        # Most values are plain numbers, which float() takes as they are; it also takes every
        # spelling of nan and inf that the rules below accept, with the same result.
        return float(text)
    except ValueError:
        pass
    cleaned = text.strip().strip("'\"").strip()
    lowered = cleaned.lower()
    if lowered in ("nan", "+nan", "-nan"):
        return float("nan")
    if lowered in ("inf", "+inf", "infinity", "+infinity"):
        return float("inf")
    if lowered in ("-inf", "-infinity"):
        return float("-inf")
    try:
        return float(cleaned)
    except ValueError:
        raise ParseError(f"not a number: {text[:40]!r}") from None
