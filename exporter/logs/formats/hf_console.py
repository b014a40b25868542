"""Hugging Face Trainer console output: the logs dict that the progress callback prints.

Two generations of the same line::

    {'loss': 2.31, 'grad_norm': nan, 'learning_rate': 4.5e-05, 'epoch': 0.5}          # 4.x: repr
    {'loss': '2.564', 'grad_norm': 'nan', 'learning_rate': '4.5e-05', 'epoch': '0.5'}  # 5.x: '{:.4g}'

The 4.x form is a Python repr, so it holds bare ``nan``/``inf`` (which ``ast.literal_eval``
rejects) and, with numpy 2 or an unconverted tensor, ``np.float64(0.85)`` or
``tensor(1.2, device='cuda:0')``. The dict is written through tqdm, so when stdout and stderr
share a file the training bar is often glued in front of it with no separator. The Trainer's
bar has no description; a bar with one (``Map:``, ``Loading weights:``) is some other tqdm.

A callback that also logs each logs dict (``logger.info(logs)``) prints it with full precision
next to the Trainer's own 4-digit line: the second of two such neighbours is the same record,
read once.

The example scripts end with ``trainer.log_metrics`` blocks::

    ***** eval metrics *****
      epoch                   =        2.0
      eval_loss               =     3.9167

An ``eval`` (or ``test``, ``predict``) block is the evaluation that ``trainer.evaluate()`` ran,
which the progress callback does not print (its bar is closed by then): its lines are read as
evaluation values, at the precision of the Trainer's own dicts where those were printed with 4
significant digits (the block prints more), so that the last evaluation is compared with the
earlier ones like with like. The ``train`` block repeats the end-of-run dict printed just before it, and an
``eval`` block that follows the evaluation's own dict (printed where ``disable_tqdm`` puts the
printer callback in the bar's place) repeats that dict: neither is read again.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from .base import Kind, ParseError, Record, kind_of, to_float
from .events import MAX_LINE, parse_progress_bar

_EVAL = Kind.EVAL

# Keys the Trainer itself puts in its logs. A dict without any of them is some other print
# (a config, a batch) and not this dialect's.
_MARKER_KEYS = frozenset({"loss", "epoch", "learning_rate", "grad_norm", "train_runtime", "train_loss"})
_MARKER_PREFIXES = ("eval_", "test_")

# What may stand in front of the dict: tqdm's redraws, ending with the "[elapsed<left, rate]"
# bracket. Anything else in front means the dict is quoted inside some other message.
_BAR_TAIL = re.compile(r"\[[^\[\]]{0,200}(?:it/s|s/it|\?)[^\[\]]{0,200}\]\s*$")

# trainer.log_metrics: "***** eval metrics *****", then "  eval_loss   =     3.9167" lines.
_BLOCK_HEADER = re.compile(r"\*\*\*\*\* (\w{1,40}) metrics \*\*\*\*\*\s*$")
_BLOCK_LINE = re.compile(r"([\w/.-]{1,200}) *= *(\S{1,64})$")
_EVALUATION_BLOCKS = frozenset({"eval", "test", "predict"})

# Wrappers a repr may put around a number: numpy scalars and tensors.
_WRAPPED = re.compile(
    r"(?:np|numpy)\.(?:float|int|uint)\d{1,3}\(\s*([^,()\s]{1,64})\s*\)$"
    r"|tensor\(\s*([^,()\s]{1,64})\s*(?:,[^()]{0,200})?\)$"
)


class HuggingFaceConsole:
    name = "huggingface"

    def __init__(self) -> None:
        # The last logs dict read, whether its numbers were quoted strings (transformers 5 prints
        # 4 significant digits so) and whether it was an evaluation's: to tell the same dict
        # printed twice, and a log_metrics block that repeats a dict.
        self._previous: dict[str, float] | None = None
        self._quoted = False
        self._previous_eval = False
        # Inside a log_metrics block: True when its lines are read, False when they repeat a dict.
        self._block: bool | None = None

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        start = _dict_start(line) if "{" in line else -1  # most lines have no brace: no call
        if start < 0:
            # The Trainer's bar, "45%|...": its percentage first, as tqdm writes it (3 wide), with
            # no description before it. Tested without a pattern: bars are half of a Trainer's
            # lines. A bare bar still tells how far training is.
            if "%|" in line[1:5]:
                progress = parse_progress_bar(line)
                return [Record(progress=progress)] if progress is not None else []
            if self._block is not None or line[:6] == "***** ":
                found = self._metrics_block(line)
                if found is not None:
                    return found
            return []
        if self._block is not None:
            self._block = None
        if line[start + 1] == '"' and _is_json_object(line, start):
            return []  # JSON, not a Python repr: the Trainer's dict quotes its keys with '
        prefix = line[:start]
        progress = None
        if prefix.strip():
            if not _BAR_TAIL.search(prefix):
                return []  # the dict is quoted inside some other message
            progress = parse_progress_bar(prefix)
        read = _read_as_json(line, start)
        if read is None:
            try:
                items, end = _read_flat_dict(line, start)
            except _Unreadable:
                if _mentions_marker(line, start):
                    raise ParseError(f"unreadable Trainer log dict: {line[start:start + 60]!r}") from None
                return []
            keys: Iterable[str] = [key for key, _ in items]
            values = {key: value for key, raw in items if (value := _value(raw)) is not None}
            quoted = any(raw[:1] in ("'", '"') and key in values for key, raw in items)
        else:
            values, end, quoted = read
            keys = values
        if _MARKER_KEYS.isdisjoint(keys) and not any(key.startswith(_MARKER_PREFIXES) for key in keys):
            return []  # no key the Trainer writes: some other dict
        if line[end:]:
            # A redraw glued after the dict (rare: the dict ends with a newline) still counts.
            progress = parse_progress_bar(line[end:]) or progress
        record = _record(values, progress)
        if quoted is not self._quoted and self._previous is not None \
                and _printed_twice(self._previous, self._quoted, values, quoted):
            self._previous = None
            return [Record(progress=progress)]
        self._previous, self._quoted, self._previous_eval = values, quoted, record.kind is _EVAL
        return [record]

    def _metrics_block(self, line: str) -> list[Record] | None:
        """The records of a line of a ``log_metrics`` block (none for its header, for a block
        that repeats a dict, and for a value that is not a number); None when the line is not
        in a block."""
        header = _BLOCK_HEADER.match(line)
        if header is not None:
            self._block = header.group(1) in _EVALUATION_BLOCKS and not self._previous_eval
            self._previous = None
            return []
        found = _BLOCK_LINE.match(line)
        if found is None:
            self._block = None
            return None
        value = _number(found.group(2)) if self._block else None
        if value is None:
            return []
        if self._quoted:
            value = float(f"{value:.4g}")
        return [Record(values={found.group(1): value}, kind=Kind.EVAL)]


_json_decode = json.JSONDecoder().raw_decode


def _is_json_object(line: str, start: int) -> bool:
    try:
        return isinstance(_json_decode(line, start)[0], dict)
    except (ValueError, RecursionError):
        return False


def _mentions_marker(line: str, start: int) -> bool:
    head = line[start:start + 4096]
    return any(f"{q}{key}{q}" in head for key in _MARKER_KEYS for q in "'\"") or any(
        f"{q}{prefix}" in head for prefix in _MARKER_PREFIXES for q in "'\""
    )


def _dict_start(line: str) -> int:
    """Where a dict with a quoted first key begins, or -1."""
    brace = line.find("{")
    while brace >= 0:
        if line[brace + 1:brace + 2] in ("'", '"'):
            return brace
        brace = line.find("{", brace + 1)
    return -1


def _read_as_json(line: str, start: int) -> tuple[dict[str, float], int, bool] | None:
    """The common dict, read by the JSON decoder (in C): every value a number or a quoted number,
    no double quote or backslash anywhere, so that each single quote delimits a string and
    swapping quotes makes it JSON. The values, the dict's end and whether a number was quoted;
    None for any other dict, which the general reader takes."""
    if '"' in line or "\\" in line:
        return None
    try:
        obj, end = _json_decode(line.replace("'", '"'), start)
        # Every value a number or a quoted one: a quoted one's item reads "'key': '".
        return {key: float(raw) for key, raw in obj.items()}, end, line.find("': '", start, end) >= 0
    except (ValueError, TypeError, OverflowError, RecursionError, AttributeError):
        return None  # bare nan, True, None, a list, a tensor(...): the general reader's


def _value(raw: str) -> float | None:
    """A raw value as a float, or None when it is not a number: ``_number``, its common case first."""
    try:
        return float(raw[1:-1] if raw[:1] in ("'", '"') else raw)
    except ValueError:
        return _number(raw)


def _printed_twice(before: dict[str, float], before_quoted: bool, after: dict[str, float], after_quoted: bool) -> bool:
    """Whether two neighbouring dicts are one logs dict printed twice: once with its numbers in
    full (a callback's own ``logger.info(logs)``), once as transformers 5's Trainer prints it,
    every float a string of 4 significant digits (and without ``total_flos``). Two dicts printed
    the same way are two records, however alike: a run of NaN steps prints alike."""
    if before_quoted == after_quoted:
        return False
    short, full = (before, after) if before_quoted else (after, before)
    if not short.keys() <= full.keys():
        return False
    for key, value in short.items():
        number = full[key]
        if not (value == number or value == float(f"{number:.4g}") or value != value and number != number):
            return False
    return True


def _record(values: dict[str, float], progress: tuple[int, int] | None) -> Record:
    step = values.get("step")
    if step is not None and step.is_integer():
        step = int(values.pop("step"))  # the Trainer's console dict has none; a callback may add it
    else:
        step = None
    return Record(values=values, kind=kind_of(values), step=step, progress=progress)


def _number(raw: object) -> float | None:
    """A value as a float, or None when it is not a number (bools included: not metrics)."""
    if not isinstance(raw, str):
        return None
    text = raw
    if text[:1] in ("'", '"'):
        text = text[1:-1]  # transformers 5 quotes every float: '2.564', 'nan'
    try:
        return float(text)  # the common case; nothing float() takes is wrapped or a bool
    except ValueError:
        pass
    wrapped = _WRAPPED.match(text)
    if wrapped:
        text = wrapped.group(1) or wrapped.group(2)
    if text in ("True", "False", "None"):
        return None
    try:
        return to_float(text)
    except ParseError:
        return None


class _Unreadable(Exception):
    pass


_SPACE = " \t"
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


# One item of a dict as the Trainer prints it: a quoted key without escapes, then a quoted value
# without escapes, or a bare value without quotes or brackets. Each part can begin in one way
# only, so matching is linear, whatever a hostile line holds.
_KEY = r"'[^'\\]*'" "|" r'"[^"\\]*"'
_VALUE = r"""'[^'\\]*'[ \t]*|"[^"\\]*"[ \t]*|[^'"()\[\]{},\s][^'"()\[\]{},]*"""
_ITEM = rf"[ \t]*({_KEY})[ \t]*:[ \t]*({_VALUE})"
_ITEM_UNGROUPED = rf"[ \t]*(?:{_KEY})[ \t]*:[ \t]*(?:{_VALUE})"
# A whole dict of such items, and each item in it.
_SIMPLE_DICT = re.compile(rf"\{{(?:{_ITEM_UNGROUPED},)*{_ITEM_UNGROUPED}}}|\{{[ \t]*}}")
_ITEMS = re.compile(_ITEM)


def _read_flat_dict(text: str, start: int) -> tuple[list[tuple[str, str]], int]:
    """Read ``{'key': value, ...}`` from ``text[start]``: the (key, raw value) pairs and the end.

    A dict of simple items is read by two regular expressions (the whole dict, then its items);
    anything else (nested values, escapes, something unreadable) by ``_read_dict_carefully``,
    which gives the same answer for simple dicts at several times the cost.
    """
    whole = _SIMPLE_DICT.match(text, start)
    if whole is None:
        return _read_dict_carefully(text, start)
    end = whole.end()
    return [(key[1:-1], raw.strip()) for key, raw in _ITEMS.findall(text, start + 1, end)], end


def _read_dict_carefully(text: str, start: int) -> tuple[list[tuple[str, str]], int]:
    """Read ``{'key': value, ...}`` from ``text[start]``: the (key, raw value) pairs and the end.

    A raw value is its source text: a quoted string keeps its quotes, so numbers printed as
    strings can be told from real strings; nested containers are skipped over, never read.
    Linear in the length of the dict.
    """
    i = start + 1
    n = len(text)
    items: list[tuple[str, str]] = []

    def skip_space(pos: int) -> int:
        while pos < n and text[pos] in _SPACE:
            pos += 1
        return pos

    i = skip_space(i)
    if i < n and text[i] == "}":
        return items, i + 1
    while True:
        i = skip_space(i)
        if i >= n or text[i] not in "'\"":
            raise _Unreadable
        key_end = _end_of_string(text, i)
        key = _unquote(text[i:key_end])
        i = skip_space(key_end)
        if i >= n or text[i] != ":":
            raise _Unreadable
        i = skip_space(i + 1)
        value_end = _end_of_value(text, i)
        raw = text[i:value_end].strip()
        if not raw:
            raise _Unreadable
        items.append((key, raw))
        i = skip_space(value_end)
        if i >= n:
            raise _Unreadable
        if text[i] == "}":
            return items, i + 1
        if text[i] != ",":
            raise _Unreadable
        i += 1


def _end_of_string(text: str, i: int) -> int:
    """Index just past the quoted string starting at ``text[i]``."""
    quote = text[i]
    j = i + 1
    while True:
        close = text.find(quote, j)
        if close < 0:
            raise _Unreadable
        escape = text.find("\\", j, close)
        if escape < 0:
            return close + 1
        j = escape + 2  # the escaped character, a quote or not, does not end the string


def _end_of_value(text: str, i: int) -> int:
    """Index of the ``,`` or ``}`` that ends the value starting at ``text[i]``."""
    n = len(text)
    stack: list[str] = []
    j = i
    while j < n:
        char = text[j]
        if char in "'\"":
            j = _end_of_string(text, j)
            continue
        if char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in ")]}":
            if not stack:
                if char == "}":
                    return j
                raise _Unreadable
            if stack.pop() != char:
                raise _Unreadable
        elif char == "," and not stack:
            return j
        j += 1
    raise _Unreadable


def _unquote(quoted: str) -> str:
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    # Enough of Python's escapes for a key: \\, \', \" and the common control characters.
    out = []
    k = 0
    while k < len(body):
        char = body[k]
        if char == "\\" and k + 1 < len(body):
            nxt = body[k + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            k += 2
            continue
        out.append(char)
        k += 1
    return "".join(out)
