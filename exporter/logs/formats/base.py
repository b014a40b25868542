"""What every log dialect produces: records, with no I/O and no knowledge of Prometheus; and the
few rules about key names that every dialect shares."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


class Kind(enum.Enum):
    """What a record describes, so signals know which values are which."""

    TRAIN = "train"  # a training step's logged values
    EVAL = "eval"  # one evaluation on held-out data
    SUMMARY = "summary"  # end-of-run aggregates (e.g. HF's train_runtime line): not a step


class Event(enum.Enum):
    """Things a log says happened, counted rather than gauged."""

    OOM = "oom"  # CUDA/host out-of-memory seen in the log
    LOSS_SCALE_OVERFLOW = "loss_scale_overflow"  # fp16 overflow: step skipped, loss scale lowered


# What a record holds when it holds no values or no run facts: one shared, read-only mapping, so
# that the many records that carry only a progress bar or an event cost no dictionaries.
_NONE: Mapping[str, float] = MappingProxyType({})


@dataclass(slots=True, init=False)
class Record:
    """One thing a log line (or event, or document entry) said.

    ``values`` keeps the keys exactly as the framework wrote them (``eval_loss``, ``lm loss``,
    ``val loss``); the vocabulary maps them to canonical names later. Values are floats and may
    be NaN or infinite: hiding those is exactly what must not happen.
    """

    values: Mapping[str, float]
    kind: Kind
    step: int | None
    event: Event | None
    # Facts about the run: hyperparameters, max_steps, batch size. Numbers or short strings.
    meta: Mapping[str, float | str]
    # (done, total) from a progress bar such as tqdm's "50/1000".
    progress: tuple[int, int] | None
    # When the line was written, where something says so: TensorBoard's wall_time, or the
    # time a container runtime stamped on the line.
    wall_time: float | None

    def __init__(self, values: Mapping[str, float] = _NONE, kind: Kind = Kind.TRAIN, step: int | None = None,
                 event: Event | None = None, meta: Mapping[str, float | str] = _NONE,
                 progress: tuple[int, int] | None = None, wall_time: float | None = None) -> None:
        self.values = values
        self.kind = kind
        self.step = step
        self.event = event
        self.meta = meta
        self.progress = progress
        self.wall_time = wall_time


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


# -- key names shared by every dialect ------------------------------------------------------

# A value measured on the validation split, and one measured on a test split: both are
# evaluations, but only the first is the validation loss that early stopping watches.
VALIDATION_PREFIXES = ("eval_", "eval/", "val_", "val/", "valid_", "valid/", "validation_", "validation/")
TEST_PREFIXES = ("test_", "test/")
EVAL_PREFIXES = VALIDATION_PREFIXES + TEST_PREFIXES
TRAIN_PREFIXES = ("train_", "train/", "training_", "training/")
# A path segment that alone names the split: TensorBoard's "Loss/val", "eval/loss".
_EVAL_SEGMENTS = frozenset({"eval", "evaluation", "val", "valid", "validation", "test"})
# Keys that say when, not what: they neither make a record an evaluation nor stop it being one.
NEUTRAL_KEYS = frozenset({"epoch", "timestamp", "time", "wall_time", "elapsed"})
# The key by which Hugging Face (and loggers that copy it) mark the end-of-run aggregates.
SUMMARY_KEY = "train_runtime"


def is_eval_key(key: str) -> bool:
    """``eval_loss``, ``val/acc``, ``Loss/val``, ``test_f1``: a value measured on held-out data."""
    lowered = key.lower()
    if lowered.startswith(EVAL_PREFIXES) or lowered in _EVAL_SEGMENTS:
        return True
    if "/" not in lowered:
        return False
    return any(part in _EVAL_SEGMENTS or part.startswith(EVAL_PREFIXES) for part in lowered.split("/"))


# Words that make a key a measured quantity (``val_loss``, ``train/acc``, ``top1_err``), as
# opposed to a setting (``learning_rate``, ``batch_size``) or a count: what the generic dialects
# (key/value text, console tables) require before they call a line metrics.
MEASURED_WORDS = frozenset({
    "loss", "nll", "acc", "accuracy", "ppl", "perplexity", "f1", "bleu", "rouge", "auc", "mae", "mse",
    "rmse", "wer", "cer", "iou", "map", "precision", "recall", "reward", "err", "error", "top1", "top5",
})
_WORDS_OF_KEY = re.compile(r"[^a-z0-9]+")


def is_measured_key(key: str) -> bool:
    """``val_loss``, ``Acc``, ``eval/top1``: a key one of whose words names a measured quantity."""
    return not MEASURED_WORDS.isdisjoint(_WORDS_OF_KEY.split(key.lower()))


def is_neutral_key(key: str) -> bool:
    return key in NEUTRAL_KEYS or key[:1] == "_"  # "_step", "_runtime": a logger's bookkeeping


def as_test_values(values: dict[str, float]) -> dict[str, float]:
    """Values a log says were measured on the test split, under ``test/`` keys: evaluations that
    never pose as the validation loss."""
    return {key if is_neutral_key(key) else f"test/{key}": value for key, value in values.items()}


_NEUTRAL, _EVALUATION, _TRAINING = "neutral", "evaluation", "training"
_CLASSES: dict[str, str] = {}  # key -> its class: a log repeats its few keys on every line


def _key_class(key: str) -> str:
    found = _CLASSES.get(key)
    if found is None:
        found = _NEUTRAL if is_neutral_key(key) else _EVALUATION if is_eval_key(key) else _TRAINING
        if len(_CLASSES) < 10_000 and len(key) <= 256:
            _CLASSES[key] = found
    return found


# A key set -> what it holds: a kind, or SPLIT (training and evaluation values together), or
# NOTHING (no key that measures anything). A log repeats a few key sets on every line.
SPLIT, NOTHING = "split", "nothing"
_KEY_SETS: dict[tuple[str, ...], Kind | str] = {}


def _key_set(keys: tuple[str, ...]) -> Kind | str:
    found = _KEY_SETS.get(keys)
    if found is None:
        classes = set(map(_key_class, keys))
        if _TRAINING not in classes and _EVALUATION not in classes:
            found = NOTHING
        elif SUMMARY_KEY in keys:
            found = Kind.SUMMARY
        elif _EVALUATION not in classes:
            found = Kind.TRAIN
        else:
            found = SPLIT if _TRAINING in classes else Kind.EVAL
        if len(_KEY_SETS) < 1000 and sum(map(len, keys)) <= 4096:
            _KEY_SETS[keys] = found
    return found


def kind_of(keys) -> Kind:
    """The kind of a record from its keys alone: the end-of-run summary, an evaluation when every
    key that measures something is an evaluation key, else a training step."""
    found = _key_set(tuple(keys))
    return found if isinstance(found, Kind) else Kind.TRAIN


def records_by_kind(values: dict[str, float], step: int | None = None) -> list[Record]:
    """The records that ``values`` hold when one line may carry a training step's values and an
    evaluation's together (Keras' ``loss: ... - val_loss: ...``, a CSV row, a JSON object with
    ``train/loss`` and ``eval/loss``): the evaluation keys in an evaluation record, the others in
    a training record (or the summary), and the keys that say when (the epoch) in each. Keys
    that only say when make no record."""
    found = _key_set(tuple(values))
    if isinstance(found, Kind):
        return [Record(values=values, kind=found, step=step)]
    if found is NOTHING:
        return []
    train: dict[str, float] = {}
    evaluation: dict[str, float] = {}
    for key, value in values.items():
        found = _key_class(key)
        if found is _NEUTRAL:
            train[key] = evaluation[key] = value
        else:
            (evaluation if found is _EVALUATION else train)[key] = value
    return [Record(values=train, kind=Kind.TRAIN, step=step), Record(values=evaluation, kind=Kind.EVAL, step=step)]
