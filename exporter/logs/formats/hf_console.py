"""Hugging Face Trainer console output: the logs dict that the progress callback prints.

Two generations of the same line::

    {'loss': 2.31, 'grad_norm': nan, 'learning_rate': 4.5e-05, 'epoch': 0.5}          # 4.x: repr
    {'loss': '2.564', 'grad_norm': 'nan', 'learning_rate': '4.5e-05', 'epoch': '0.5'}  # 5.x: '{:.4g}'

The 4.x form is a Python repr, so it holds bare ``nan``/``inf`` (which ``ast.literal_eval``
rejects) and, with numpy 2 or an unconverted tensor, ``np.float64(0.85)`` or
``tensor(1.2, device='cuda:0')``. The dict is written through tqdm, so when stdout and stderr
share a file the training bar is often glued in front of it with no separator.
"""

from __future__ import annotations

import re

from .base import MAX_LEARNED_LINE, MAX_RUN, Kind, ParseError, Record, Run, to_float
from .events import MAX_LINE, parse_progress_bar

# Keys the Trainer itself puts in its logs. A dict without any of them is some other print
# (a config, a batch) and not this dialect's.
_MARKER_KEYS = frozenset({"loss", "epoch", "learning_rate", "grad_norm", "train_runtime", "train_loss"})
_MARKER_PREFIXES = ("eval_", "test_")

# What may stand in front of the dict: tqdm's redraws, ending with the "[elapsed<left, rate]"
# bracket. Anything else in front means the dict is quoted inside some other message.
_BAR_TAIL = re.compile(r"\[[^\[\]]{0,200}(?:it/s|s/it|\?)[^\[\]]{0,200}\]\s*$")

# Wrappers a repr may put around a number: numpy scalars and tensors.
_WRAPPED = re.compile(
    r"(?:np|numpy)\.(?:float|int|uint)\d{1,3}\(\s*([^,()\s]{1,64})\s*\)$"
    r"|tensor\(\s*([^,()\s]{1,64})\s*(?:,[^()]{0,200})?\)$"
)


# Shapes of dict lines learned per file (a training line's, an evaluation's, the summary's).
MAX_SHAPES = 8


class HuggingFaceConsole:
    name = "huggingface"

    def __init__(self) -> None:
        self._shapes: list[_Shape] = []

    def parse(self, line: str) -> list[Record]:
        if len(line) > MAX_LINE:
            return []
        if line[:1] == "{":
            # Most lines are dicts with the keys of one seen before, printed the same way.
            for shape in self._shapes:
                record = shape.read(line)
                if record is not None:
                    return [record]
        start = _dict_start(line)
        if start < 0:
            progress = parse_progress_bar(line)
            # A bare progress bar still tells how far training is.
            return [Record(progress=progress)] if progress is not None else []
        prefix = line[:start]
        progress = None
        if prefix.strip():
            if not _BAR_TAIL.search(prefix):
                return []  # the dict is quoted inside some other message
            progress = parse_progress_bar(prefix)
        try:
            items, end = _read_flat_dict(line, start)
        except _Unreadable:
            if _mentions_marker(line, start):
                raise ParseError(f"unreadable Trainer log dict: {line[start:start + 60]!r}") from None
            return []
        for key, _ in items:
            if key in _MARKER_KEYS or key.startswith(_MARKER_PREFIXES):
                break
        else:
            return []  # no key the Trainer writes: some other dict
        # A redraw glued after the dict (rare: the dict ends with a newline) still counts.
        after = parse_progress_bar(line[end:])
        if after is not None:
            progress = after
        record = _record(items, progress)
        if start == 0 and end == len(line) <= MAX_LEARNED_LINE and len(self._shapes) < MAX_SHAPES:
            shape = _Shape.learn(line, items, record)
            if shape is not None:
                self._shapes.append(shape)
        return [record]

    def read_run(self, lines: list[str], start: int, end: int) -> Run | None:
        """Training dict lines of one learned shape from ``lines[start]`` on, before
        ``lines[end]``, each with the progress bar drawn on the line before it or each without
        one: what ``parse`` reads them as, with each bar's progress on the dict after it, as the
        reader merges them."""
        with_bars = lines[start][:1] != "{"
        first = start + 1 if with_bars else start
        if first >= end or lines[first][:1] != "{" or len(lines[first]) > MAX_LINE:
            return None  # (most often: a line of other output, and no dict after it)
        end = min(end, start + 2 * MAX_RUN)
        for shape in self._shapes:  # no two learned shapes read the same line
            if shape.kind is Kind.TRAIN and shape.pattern.fullmatch(lines[first]):
                break
        else:
            return None
        keys, fullmatch = shape.keys, shape.pattern.fullmatch
        rows: list[tuple[float, ...]] = []
        progress: list[tuple[int, int]] = []
        i = start
        while i < end:
            if with_bars:
                # A line that parse reads as a bare progress bar: no dict in it, a bar's counter.
                bar = lines[i]
                done_total = parse_progress_bar(bar) if "{" not in bar else None
                if done_total is None or i + 1 >= end:
                    break
                i += 1
            line = lines[i]
            found = fullmatch(line) if len(line) <= MAX_LINE else None
            if found is None:
                break
            try:
                rows.append(tuple(map(float, found.groups())))
            except ValueError:
                break
            if with_bars:
                progress.append(done_total)
            i += 1
        if not rows:
            return None
        return Run(keys=keys, rows=rows, lines=len(rows) * (2 if with_bars else 1),
                   progress=progress if with_bars else None)


class _Shape:
    """The keys of a dict line, in order, each value quoted or bare, printed as ``repr`` prints
    a dict: read by one anchored regular expression and ``float`` on each value. A line it does
    not match, or with a value ``float`` refuses, goes the general way (which reads it the same).
    """

    __slots__ = ("pattern", "keys", "kind")

    def __init__(self, pattern: re.Pattern[str], keys: tuple[str, ...], kind: Kind) -> None:
        self.pattern, self.keys, self.kind = pattern, keys, kind

    @classmethod
    def learn(cls, line: str, items: list[tuple[str, object]], record: Record) -> _Shape | None:
        """The shape of ``line``, if it is a dict of numbers, printed plainly, without a step."""
        keys = tuple(key for key, _ in items)
        # Every value a number, no key twice, and no "step" (read as the step only when whole).
        if not keys or "step" in keys or len(record.values) != len(keys) or len(set(keys)) != len(keys):
            return None
        parts = []
        for key, raw in items:
            quote = raw[:1] if raw[:1] in ("'", '"') else ""
            if "'" in key or "\\" in key:
                return None
            value = f"{quote}([^'\"\\\\]*){quote}" if quote else r"([^'\"()\[\]{},\s]+)"
            parts.append(f"'{re.escape(key)}': {value}")
        if "{" + ", ".join(f"'{key}': {raw}" for key, raw in items) + "}" != line:
            return None  # spaced or quoted some other way: left to the general reader
        return cls(re.compile(r"\{" + ", ".join(parts) + r"\}"), keys, record.kind)

    def read(self, line: str) -> Record | None:
        match = self.pattern.fullmatch(line)
        if match is None:
            return None
        try:
            values = dict(zip(self.keys, map(float, match.groups())))
        except ValueError:
            return None  # a value that is not a plain number: the general reader decides
        return Record(values=values, kind=self.kind)


def _mentions_marker(line: str, start: int) -> bool:
    head = line[start:start + 4096]
    return any(f"{q}{key}{q}" in head for key in _MARKER_KEYS for q in "'\"") or any(
        f"{q}{prefix}" in head for prefix in _MARKER_PREFIXES for q in "'\""
    )


def _dict_start(line: str) -> int:
    """Where a dict with a quoted first key begins, or -1."""
    brace = line.find("{")  # one scan of the line when it has no brace, as most have not
    while brace >= 0:
        if line[brace + 1:brace + 2] in ("'", '"'):
            return brace
        brace = line.find("{", brace + 1)
    return -1


def _record(items: list[tuple[str, object]], progress: tuple[int, int] | None) -> Record:
    summary = evaluation = False
    values: dict[str, float] = {}
    step: int | None = None
    for key, raw in items:
        if key == "train_runtime":
            summary = True
        elif key.startswith(_MARKER_PREFIXES):
            evaluation = True
        try:  # _number's common case, inline: this runs for every value of every line
            value = float(raw[1:-1] if raw[:1] in ("'", '"') else raw)
        except ValueError:
            value = _number(raw)
        if value is None:
            continue  # strings, None, lists: not metrics
        if key == "step" and value.is_integer():
            step = int(value)  # the Trainer's console dict has none; a custom callback may add it
            continue
        values[key] = value
    kind = Kind.SUMMARY if summary else Kind.EVAL if evaluation else Kind.TRAIN
    return Record(values=values, kind=kind, step=step, progress=progress)


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
_ITEM = (r"""[ \t]*('[^'\\]*'|"[^"\\]*")[ \t]*:[ \t]*"""
         r"""('[^'\\]*'[ \t]*|"[^"\\]*"[ \t]*|[^'"()\[\]{},\s][^'"()\[\]{},]*)""")
_ITEMS = re.compile("(" + _ITEM + "[,}])")  # (the item with its "," or "}", key, value)
_EMPTY_DICT = re.compile(r"[ \t]*}")


def _read_flat_dict(text: str, start: int) -> tuple[list[tuple[str, object]], int]:
    """Read ``{'key': value, ...}`` from ``text[start]``: the (key, raw value) pairs and the end.

    A dict of simple items is read by one regular expression, its items one after the other up
    to the one ending with "}"; anything else (nested values, escapes, something unreadable) by
    ``_read_dict_carefully``, which gives the same answer for simple dicts at several times the
    cost.
    """
    empty = _EMPTY_DICT.match(text, start + 1)
    if empty:
        return [], empty.end()
    pos = start + 1
    items = []
    for whole, key, raw in _ITEMS.findall(text, pos):
        if not text.startswith(whole, pos):  # not the next item: something else comes first
            break
        items.append((key[1:-1], raw.strip()))
        pos += len(whole)
        if whole[-1] == "}":
            return items, pos
    return _read_dict_carefully(text, start)


def _read_dict_carefully(text: str, start: int) -> tuple[list[tuple[str, object]], int]:
    """Read ``{'key': value, ...}`` from ``text[start]``: the (key, raw value) pairs and the end.

    A raw value is its source text: a quoted string keeps its quotes, so numbers printed as
    strings can be told from real strings; nested containers are skipped over, never read.
    Linear in the length of the dict.
    """
    i = start + 1
    n = len(text)
    items: list[tuple[str, object]] = []

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
