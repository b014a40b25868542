"""Hugging Face ``trainer_state.json``, written into every ``checkpoint-N/`` directory.

Its ``log_history`` is the whole run so far, one entry per ``Trainer.log`` call: training steps,
evaluations (``eval_*`` keys) and the end-of-run summary (``train_runtime``). The top level holds
facts about the run. The file is written by Python's json module, so a NaN loss appears as the
bare literal ``NaN``.
"""

from __future__ import annotations

from .base import ParseError, Record, kind_of
from .jsonl import as_step, loads, number

META_NUMBERS = (
    "global_step", "max_steps", "num_train_epochs", "train_batch_size", "logging_steps",
    "eval_steps", "save_steps", "best_metric", "best_global_step", "epoch", "total_flos",
    "num_input_tokens_seen",
)
MAX_META_STRING = 128


def _number(value) -> float | None:
    # HF writes numbers as numbers; a string here is a name or a path, never a metric.
    return None if isinstance(value, str) else number(value)


def parse_trainer_state(data: bytes) -> tuple[list[Record], dict[str, float | str]]:
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise ParseError("trainer_state.json is not UTF-8") from None
    state = loads(text)
    if not isinstance(state, dict):
        raise ParseError("trainer_state.json is not an object")

    meta: dict[str, float | str] = {}
    for key in META_NUMBERS:
        value = _number(state.get(key))
        if value is not None:
            meta[key] = value
    checkpoint = state.get("best_model_checkpoint")
    if isinstance(checkpoint, str) and 0 < len(checkpoint) <= MAX_META_STRING:
        meta["best_model_checkpoint"] = checkpoint

    history = state.get("log_history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise ParseError("log_history is not a list")

    records = []
    for entry in history:
        if not isinstance(entry, dict):
            continue  # one odd entry should not hide the rest of the run
        values = {}
        for key, raw in entry.items():
            value = _number(raw)
            if value is not None and key != "step":
                values[key] = value
        if not values:
            continue
        records.append(Record(values=values, kind=kind_of(values), step=as_step(entry.get("step"))))
    return records, meta
