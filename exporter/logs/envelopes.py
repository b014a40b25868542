"""What a runtime or launcher wraps around a trainer's line, unwrapped: the payload, and what the
wrapping said about it (the stream, the time, the rank).

Layers, outermost first, each recognised per line and each optional:

* A container runtime's log format, one of:
  - Kubernetes' CRI format, as containerd and CRI-O write under ``/var/log/pods``:
    ``2026-12-01T10:00:00.123456789Z stdout F {'loss': 0.5}``. A line longer than the runtime's
    buffer comes as ``P`` (partial) records and ends with an ``F`` record; they are joined.
  - Docker's json-file driver: ``{"log":"{'loss': 0.5}\\n","stream":"stdout","time":"..."}``,
    a long line split into records whose ``log`` does not end with a newline; joined likewise.
* A launcher's rank prefix: ``[default3]:`` or ``[rank3]:`` (torchrun ``--tee``), ``3: `` (Slurm's
  ``srun --label``), ``[1,3]<stdout>:`` (Open MPI's ``--tag-output``). Two of them (srun around
  torchrun) make the rank ``"0:3"``: the launcher's task, then the process within it.
* Python ``logging``'s common prefixes (the cookbook's, ``basicConfig``'s, Hugging Face's example
  scripts' and explicit format, DeepSpeed's, fairseq's, hydra's, loguru's, absl's): stripped, so
  that a dialect sees the message a trainer logged exactly as if it had printed it.

Then the payload is cut at carriage returns: a progress bar redrawn with ``\\r`` is glued to the
line that follows it on a terminal-less log, and each redraw is a line of its own to a dialect.

Lines without any wrapping are the common case and cost a look at their first character.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

# -- container runtimes ---------------------------------------------------------------------

_CRI = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([PF])(?::\S*)? ?")
_DOCKER_START = '{"log":"'
_ANSI_CSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# -- launchers ------------------------------------------------------------------------------

_LAUNCHER = re.compile(
    r"\[[A-Za-z_][\w\-]{0,30}?(\d{1,6})\]: ?"  # [default3]: / [rank3]: / [trainer3]:
    r"|\[\d{1,6},(\d{1,6})\]<std(?:out|err)>: ?"  # [1,3]<stdout>:
    r"|(\d{1,6}): "  # srun --label (right-aligned by srun; lines arrive stripped)
)
_LAUNCHER_STARTS = frozenset("[0123456789")
# torchrun's prefix where a rank's line was glued on after another's unfinished one.
_GLUED = re.compile(r"\[[A-Za-z_][\w\-]{0,30}?(\d{1,6})\]:")

# -- Python logging -------------------------------------------------------------------------

_DATE = r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?"
_LEVEL = r"(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|NOTSET)"
_NAME = r"[\w.\-<>]{1,120}"
# Each prefix in full, so that a message that merely starts like one is left alone; grouped by
# how a prefix starts, so that a look at its first characters picks the one pattern to try.
_LOGGING_DATED = re.compile(
    # 2026-12-01 10:00:00,123 - __main__ - INFO - msg  (the logging cookbook's format)
    rf"{_DATE} - {_NAME} - {_LEVEL} - "
    # 2026-12-01 10:00:00,123 - INFO - __main__ - msg  and the same with Hugging Face's example
    # scripts' date: 12/01/2026 10:00:00 - INFO - __main__ - msg
    rf"|(?:{_DATE}|\d\d/\d\d/\d{{4}} \d\d:\d\d:\d\d) - {_LEVEL} - {_NAME} - "
    # 2026-12-01 10:00:00 | INFO | train_inner | msg  (fairseq)
    rf"|{_DATE} \| {_LEVEL} \| {_NAME} \| "
    # 2026-12-01 10:00:00.123 | INFO     | __main__:main:12 - msg  (loguru)
    rf"|{_DATE} \| {_LEVEL} {{0,8}}\| {_NAME}(?::[\w<>]{{1,80}}:\d{{1,7}})? - "
    # 2026-12-01 10:00:00,123 INFO __main__: msg  (this exporter's own, and many like it)
    rf"|{_DATE} {_LEVEL} {_NAME}: "
)
_LOGGING_BRACKETED = re.compile(
    # [INFO|trainer.py:2134] 2026-12-01 10:00:00,123 >> msg  (transformers' explicit format)
    rf"\[{_LEVEL}\|[\w.\-]{{1,120}}:\d{{1,7}}\] {_DATE} >> "
    # [2026-12-01 10:00:00,123] [INFO] [logging.py:96:log_dist] msg  (DeepSpeed)
    rf"|\[{_DATE}\] \[{_LEVEL}\] \[[\w.\-]{{1,120}}:\d{{1,7}}(?::[\w<>]{{1,80}})?\] "
    # [2026-12-01 10:00:00,123][fairseq.trainer][INFO] - msg  (hydra)
    rf"|\[{_DATE}\]\[{_NAME}\]\[{_LEVEL}\] - "
)
_LOGGING_LEVEL_FIRST = re.compile(
    # INFO:__main__:msg  (logging.basicConfig's default)
    rf"{_LEVEL}:{_NAME}:"
    # INFO: msg  (a handler that prints the level alone)
    rf"|{_LEVEL}: "
    # I1201 10:00:00.123456 140000 train.py:12] msg  (absl, glog)
    r"|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{1,9} {1,8}\d{1,10} [\w.\-]{1,120}:\d{1,7}\] "
)
_LEVEL_HEADS = frozenset(("DEBU", "INFO", "WARN", "ERRO", "CRIT", "FATA", "NOTS"))
_DIGITS = frozenset("0123456789")
_LOGGING_STARTS = _DIGITS | frozenset("[DIWECFN")


def strip_logging_prefix(text: str) -> str:
    """The message of a line written through Python ``logging`` (the line itself otherwise).

    A look at a character or two says whether a prefix may start here, so that the lines of a
    log without one (nearly all of a trainer's output) never meet the patterns."""
    first = text[:1]
    if first not in _LOGGING_STARTS:
        return text
    if first in _DIGITS:
        pattern = _LOGGING_DATED if text[4:5] == "-" or text[2:3] == "/" else None
    elif first == "[":
        # "[INFO|trainer.py:", "[2026-12-01 10:00:00,123] [", "[2026-12-01 10:00:00,123]["
        head = text[1:32]
        pattern = _LOGGING_BRACKETED if "|" in head[:9] or "] [" in head or "][" in head else None
    else:
        pattern = _LOGGING_LEVEL_FIRST if text[:4] in _LEVEL_HEADS or text[1:5].isdigit() else None
    if pattern is not None:
        match = pattern.match(text)
        if match is not None:
            return text[match.end():]
    return text


class Envelopes:
    """Unwraps one file's lines; holds what a runtime split (``P`` records) until it is whole.

    ``stretches(lines)`` gives the payloads of a chunk of lines, grouped into stretches that
    share what the wrapping said (rank, time); ``unwrap(line)``, the payloads of one line. After a
    wrapped line, ``time`` and ``stream`` say what its runtime recorded.
    """

    def __init__(self, max_line_chars: int = 1 << 20) -> None:
        self.max_line_chars = max_line_chars
        self._partial: dict[str, _Split] = {}  # stream -> the line being joined
        self.time: float | None = None
        self.stream: str | None = None
        self.too_long = 0  # joined lines over the limit, dropped whole

    def stretches(self, lines: list[str]) -> list[tuple[str | None, float | None, list[str]]]:
        """(rank, time, payloads) for consecutive lines that share rank and time, in order."""
        out: list[tuple[str | None, float | None, list[str]]] = []
        payloads: list[str] = []
        rank = time = None
        for line in lines:
            first = line[:1]
            if first == "{":
                wrapped = line.startswith(_DOCKER_START)
            elif first in _DIGITS:
                # A CRI record's time, or srun's "3: " (the one launcher prefix that starts with a
                # digit); a dated logging prefix is the pieces'.
                wrapped = (line[4:5] == "-" and line[10:11] == "T") or ": " in line[1:8]
            else:
                wrapped = first == "[" and _launcher_head(line)
            if not wrapped:
                # Nothing a runtime or launcher wrapped around it: the common line.
                if rank is not None or time is not None:
                    out.append((rank, time, payloads))
                    payloads, rank, time = [], None, None
                if "\r" in line or first in _LOGGING_STARTS:
                    payloads += _pieces(line)
                else:
                    payloads.append(line)
                continue
            for segment_rank, text in self._segments(line):
                if segment_rank != rank or self.time != time:
                    if payloads:
                        out.append((rank, time, payloads))
                    payloads, rank, time = [], segment_rank, self.time
                payloads += _pieces(text)
        if payloads:
            out.append((rank, time, payloads))
        return out

    def flush(self) -> list[tuple[str | None, float | None, list[str]]]:
        """What a runtime left split when its file ended (a last line without a newline): whole."""
        held, self._partial = self._partial, {}
        return [(None, None, _pieces("".join(split.pieces))) for split in held.values() if not split.dropped]

    def unwrap(self, line: str) -> list[str]:
        """The payloads of one line, cut at carriage returns: [] while a split line is held."""
        return [payload for _, _, payloads in self.stretches([line]) for payload in payloads if payload]

    def _segments(self, line: str) -> list[tuple[str | None, str]]:
        """(rank, text) of what a line holds once its container record and launcher prefixes are
        off: one segment, or more where a launcher glued one rank's output onto another's."""
        self.time = self.stream = None
        first = line[:1]
        if first == "{":
            if line.startswith(_DOCKER_START):
                unwrapped = self._docker(line)
                if unwrapped is None:
                    return []
                line = unwrapped
        elif first in _DIGITS:
            match = _CRI.match(line) if line[4:5] == "-" and line[10:11] == "T" else None
            if match is not None:
                unwrapped = self._cri(match, line[match.end():])
                if unwrapped is None:
                    return []
                line = unwrapped.strip()
        if line[:1] in _LAUNCHER_STARTS and _launcher_head(line):
            return _launcher_segments(line)
        return [(None, line)]

    # -- container runtimes ------------------------------------------------------------

    def _cri(self, match: re.Match[str], content: str) -> str | None:
        stream = match.group(2)
        if match.group(3) == "P":
            self._hold(stream, content)
            return None
        line = self._join(stream, content)
        if line is not None:
            self.stream, self.time = stream, _timestamp(match.group(1))
        return line

    def _docker(self, line: str) -> str | None:
        try:
            entry = json.loads(line)
            text, stream = entry["log"], entry.get("stream")
        except (ValueError, KeyError, TypeError, RecursionError):
            return line  # not a json-file record after all: the line as it is
        if not isinstance(text, str):
            return line
        stream = stream if isinstance(stream, str) else "stdout"
        if not text.endswith("\n"):
            self._hold(stream, text)
            return None
        joined = self._join(stream, text[:-1])
        if joined is None:
            return None
        line = joined
        self.stream = stream
        if isinstance(entry.get("time"), str):
            self.time = _timestamp(entry["time"])
        if "\x1b" in line:
            line = _ANSI_CSI.sub("", line)
        return line.replace("\x00", "").strip()

    def _hold(self, stream: str, piece: str) -> None:
        split = self._partial.get(stream)
        if split is None:
            split = self._partial[stream] = _Split()
        if split.add(piece, self.max_line_chars):
            self.too_long += 1

    def _join(self, stream: str, last: str) -> str | None:
        split = self._partial.pop(stream, None)
        if split is None:
            return last
        if split.add(last, self.max_line_chars):
            self.too_long += 1
        return None if split.dropped else "".join(split.pieces)


def _launcher_head(line: str) -> bool:
    """Whether a line that starts with "[" or a digit may start with a launcher's prefix, which
    ends within a few characters: "]:", "]<stdout>:" or a task's ": "."""
    head = line[1:48]
    return "]:" in head or "]<std" in head or ": " in head[:7]


def _launcher_segments(line: str) -> list[tuple[str | None, str]]:
    """A line's launcher prefixes taken off: srun's task around torchrun's process make the rank
    ``"0:3"``. torchrun tails each rank's stdout and stderr apart, so a progress bar without a
    newline gets the next line glued on, prefix and all (``[default0]: 33%|...]``
    ``[default0]:{'loss': ...}``): the line is cut again at each such prefix."""
    rank: str | None = None
    for _ in range(2):
        match = _LAUNCHER.match(line)
        if match is None:
            break
        found = match.group(1) or match.group(2) or match.group(3)
        rank = found if rank is None else f"{rank}:{found}"
        line = line[match.end():]
    if rank is None or "]:" not in line:
        return [(rank, line.strip())]
    outer = rank.rpartition(":")[0]  # srun's task, when torchrun's prefix is inside it
    segments: list[tuple[str | None, str]] = []
    start, segment_rank = 0, rank
    for glued in _GLUED.finditer(line):
        segments.append((segment_rank, line[start:glued.start()].strip()))
        segment_rank = f"{outer}:{glued.group(1)}" if outer else glued.group(1)
        start = glued.end()
    segments.append((segment_rank, line[start:].strip()))
    return segments


def _pieces(text: str) -> list[str]:
    """A payload cut at carriage returns (each tqdm redraw a line of its own), each piece's
    logging prefix taken off."""
    if "\r" not in text:
        if text[:1] in _LOGGING_STARTS:
            return [strip_logging_prefix(text)]
        return [text] if text else []
    pieces = []
    for piece in text.split("\r"):
        piece = piece.strip()
        if piece:
            pieces.append(strip_logging_prefix(piece) if piece[:1] in _LOGGING_STARTS else piece)
    return pieces


class _Split:
    """A line a runtime wrote in pieces, gathered until its last piece; dropped whole (and
    counted once) when it grows over the line limit, as the line splitter drops long lines."""

    __slots__ = ("pieces", "size", "dropped")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.size = 0
        self.dropped = False

    def add(self, piece: str, limit: int) -> bool:
        """Take the next piece; True when this piece made the line too long."""
        if self.dropped:
            return False
        self.size += len(piece)
        if self.size > limit:
            self.pieces, self.dropped = [], True
            return True
        self.pieces.append(piece)
        return False


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
