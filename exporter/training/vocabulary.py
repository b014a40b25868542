"""One vocabulary for the many names frameworks give the same quantity.

Frameworks disagree on names (``eval_loss``, ``val_loss``, ``val loss``, ``valid_loss``,
``lm loss value``...). Keys are matched after normalisation (lower case, runs of anything but
letters and digits folded to ``_``), so ``val loss``, ``val/loss`` and ``Val_Loss`` are one key.
Users can add aliases in the config; every key that is not in the vocabulary is kept too, under
its sanitised raw name.

A key may name its split as one segment of a path (``metrics/eval/loss``, ``run/train/lr``,
``Loss/val``): such a key is read as its last other segment, in its record's kind, where that
is a canonical name of that split; the other segments are namespaces.
"""

from __future__ import annotations

import re

from ..logs.formats.base import TRAIN_PREFIXES, VALIDATION_PREFIXES, Kind

# Canonical name -> aliases, as normalised keys.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "train_loss", "training_loss", "train_loss_step", "lm_loss", "train_lm_loss", "train_loss_iter"),
    "validation_loss": (
        "validation_loss", "val_loss", "eval_loss", "valid_loss", "val_loss_epoch",
        "lm_loss_value", "eval_lm_loss", "val_lm_loss",
    ),
    "learning_rate": ("learning_rate", "lr", "learning_rate_0", "lr_0"),
    "grad_norm": ("grad_norm", "gnorm", "gradient_norm", "grad_norm_total"),
    "epoch": ("epoch",),
    "tokens_per_second": ("tokens_per_second", "tokens_per_sec", "tok_s", "tokens_s", "tokens_per_second_per_gpu", "wps", "tps"),
    "samples_per_second": ("samples_per_second", "train_samples_per_second_step", "currsamplespersec", "samples_per_sec"),
    "loss_scale": ("loss_scale",),
}

# Frameworks prefix the keys of an evaluation or a training record with the split's name
# (``eval/loss``, ``train_loss``): the prefix is stripped before the lookup, so each finds its
# canonical name through the record's kind. Keys are normalised first: "/" becomes "_".
_VALIDATION_PREFIXES = tuple(dict.fromkeys(prefix.replace("/", "_") for prefix in VALIDATION_PREFIXES))
_TRAIN_PREFIXES = tuple(dict.fromkeys(prefix.replace("/", "_") for prefix in TRAIN_PREFIXES))

# Path segments that name the split a value was measured on (a test split is never validation).
_TRAIN_SEGMENTS = frozenset({"train", "training"})
_VALIDATION_SEGMENTS = frozenset({"eval", "evaluation", "val", "valid", "validation"})
_SPLIT_SEGMENTS = _TRAIN_SEGMENTS | _VALIDATION_SEGMENTS

_FOLD = re.compile(r"[^a-z0-9]+")
# What normalise returns unchanged: lower-case letters and digits, single "_" between them.
_ALREADY_NORMAL = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
MAX_KEY_LENGTH = 64
# The name cache is bounded in entries and, through this, in bytes: a hostile log inventing
# 10 KB keys would otherwise park 10,000 of them in memory for good.
MAX_CACHED_KEY_LENGTH = 256


def normalise(key: str) -> str:
    """Fold a raw key into a safe, comparable name: ``Val Loss/step`` -> ``val_loss_step``."""
    if len(key) <= MAX_KEY_LENGTH and _ALREADY_NORMAL.fullmatch(key):
        return key  # most keys are written this way already: no folding to do
    folded = _FOLD.sub("_", key.lower()).strip("_")
    return folded[:MAX_KEY_LENGTH] or "_"


class Vocabulary:
    """Maps raw keys, in the context of a record's kind, to canonical or sanitised names."""

    def __init__(self, extra_aliases: dict[str, list[str]] | None = None) -> None:
        self._canonical: dict[str, str] = {}
        for name, aliases in DEFAULT_ALIASES.items():
            for alias in aliases:
                self._canonical[alias] = name
        for name, extra in (extra_aliases or {}).items():
            for alias in extra:
                self._canonical[normalise(alias)] = name
        self.canonical_names = frozenset(DEFAULT_ALIASES) | frozenset(extra_aliases or {})
        self._caches: dict[Kind, dict[str, str]] = {kind: {} for kind in Kind}  # raw key -> name
        self._cached = 0

    def name(self, raw_key: str, kind: Kind) -> str:
        """The name a value is exported under: canonical where known, else the folded key."""
        cache = self._caches[kind]
        known = cache.get(raw_key)
        if known is not None:
            return known
        result = self._lookup(normalise(raw_key), kind)
        if "/" in raw_key and result not in self.canonical_names:
            result = self._namespaced(raw_key, kind) or result
        if self._cached < 10_000 and len(raw_key) <= MAX_CACHED_KEY_LENGTH:
            cache[raw_key] = result
            self._cached += 1
        return result

    def _namespaced(self, raw_key: str, kind: Kind) -> str | None:
        """The canonical name of a key whose path names its split, or None. Of the canonical
        names only the validation loss is measured on a validation split; the others (learning
        rate, throughput...) are training's."""
        segments = [normalise(segment) for segment in raw_key.split("/") if segment]
        others = [segment for segment in segments if segment not in _SPLIT_SEGMENTS]
        if len(others) == len(segments) or not others or "test" in segments:
            return None
        found = self._lookup(others[-1], kind)
        validation = not _VALIDATION_SEGMENTS.isdisjoint(segments)
        if found not in self.canonical_names or (found == "validation_loss") != validation:
            return None
        return found

    def _lookup(self, key: str, kind: Kind) -> str:
        if kind is Kind.EVAL:
            # In an eval record, a plain "loss" is the validation loss (Keras, fairseq, nanoGPT).
            if key in ("loss", "lm_loss"):
                return "validation_loss"
            for prefix in _VALIDATION_PREFIXES:
                if key.startswith(prefix) and key[len(prefix):] in ("loss", "lm_loss"):
                    return "validation_loss"
        found = self._canonical.get(key)
        if found is not None:
            return found
        if not key.startswith(_TRAIN_PREFIXES):  # one test in C for the usual key
            return key
        for prefix in _TRAIN_PREFIXES:
            if key.startswith(prefix):
                stripped = self._canonical.get(key[len(prefix):])
                if stripped is not None and stripped != "validation_loss":
                    return stripped
        return key
