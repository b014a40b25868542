"""Lightning ``hparams.yaml``: the hyperparameters saved by ``save_hyperparameters()``.

Lightning writes it with ``yaml.dump``, not ``safe_dump``, so values such as tuples arrive with
Python tags (``!!python/tuple``) that ``safe_load`` refuses. The loader below reads any unknown
tag as if it were untagged: a tagged mapping still yields its fields, and a tagged sequence is
dropped like every other list.
"""

from __future__ import annotations

import re

import yaml

from .base import ParseError
from .jsonl import number

MAX_STRING = 64
MAX_DEPTH = 16
MAX_NODES = 10_000  # anchors/aliases can make a small file expand enormously
# YAML 1.1 reads 1e-3 as a string (it wants a dot); hand-written configs are full of them.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that builds unknown tags as plain YAML instead of failing."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


_TolerantLoader.add_multi_constructor("", _untagged)


def _leaf(value) -> float | str | None:
    if not isinstance(value, str):
        return number(value)
    if len(value) <= MAX_STRING:
        return float(value) if _EXPONENT.fullmatch(value) else value
    return None


def parse_hparams_yaml(data: bytes) -> dict[str, float | str]:
    try:
        text = bytes(data).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise ParseError("hparams.yaml is not UTF-8") from None
    try:
        doc = yaml.load(text, Loader=_TolerantLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ParseError("hparams.yaml nested too deeply") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # ValueError/TypeError: e.g. an int past the digit limit, an unhashable mapping key.
        raise ParseError(f"invalid YAML: {str(exc)[:80]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ParseError("hparams.yaml is not a mapping")

    out: dict[str, float | str] = {}
    budget = [MAX_NODES]

    def walk(node: dict, prefix: str, depth: int) -> None:
        for key, value in node.items():
            budget[0] -= 1
            if budget[0] < 0:
                raise ParseError("hparams.yaml has too many entries")
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                if depth < MAX_DEPTH:  # also stops self-referencing aliases
                    walk(value, name + ".", depth + 1)
                continue
            leaf = _leaf(value)
            if leaf is not None:
                out[name] = leaf

    walk(doc, "", 0)
    return out
