"""Bytes into lines: newline separated, capped, decoded forgivingly."""

from __future__ import annotations

import re

# Terminal control sequences (tqdm moves the cursor up with ESC[A between nested bars): they are
# screen drawing, not log content, and would hide a line's start from the parsers.
_ANSI_CSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")


class LineSplitter:
    """Cuts a byte stream into text lines.

    * Only ``\\n`` ends a line. A carriage return (tqdm's redraw) is kept: what a container
      runtime or launcher wrapped around the line comes before it, and is unwrapped first
      (``envelopes.py``, which then cuts the payload at each ``\\r``).
    * A partial last line is held until its end arrives (the writer may be mid-line); what of it
      ends with ``\\r`` is handed on at once.
    * Lines longer than ``max_line_bytes`` are dropped whole and counted: a 10 MB line must not
      cost 10 MB of memory.
    * Invalid UTF-8 is replaced, NUL bytes removed: the parsers never see undecodable text.
    """

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        self._tail = b""
        self._skipping = False  # inside an over-long line, discarding until its end
        self.too_long = 0

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []
        parts = data.split(b"\n")
        first = parts[0]
        if self._skipping:
            if len(parts) > 1:
                self._skipping = False
            first = None
        elif self._tail:
            first = self._tail + first
        self._tail = b""
        tail = parts.pop()
        if len(parts) == 0:
            # No separator in this chunk: the whole chunk continues the current line.
            tail = first if first is not None else None
        elif first is not None:
            parts[0] = first
        else:
            parts = parts[1:]
        if tail and not self._skipping and b"\r" in tail:
            # A progress bar redrawn with \r and no newline for minutes: each redraw is complete
            # at its \r, and is handed on now rather than when the line ends.
            cut = tail.rfind(b"\r")
            parts.append(tail[:cut])
            tail = tail[cut + 1:]
        if parts and max(map(len, parts)) <= self.max_line_bytes:
            lines = self._decode_all(parts)
        else:
            lines = [self._decode(p) for p in parts if p]
        if tail is not None and not self._skipping:
            if len(tail) > self.max_line_bytes:
                self.too_long += 1
                self._skipping = True
            else:
                self._tail = tail
        return [line for line in lines if line is not None]

    def flush(self) -> list[str]:
        """The writer is gone (the file was rotated away): its unterminated last line is whole."""
        tail, self._tail, self._skipping = self._tail, b"", False
        line = self._decode(tail) if tail else None
        return [line] if line else []

    @staticmethod
    def _decode_all(parts: list[bytes]) -> list[str]:
        """``_decode`` of every part, done on them joined: one decode, one NUL and one escape
        pass for a whole chunk instead of one per line. Nothing they remove or replace can reach
        across the joining newline, so the lines are the same."""
        joined = b"\n".join(parts)
        if b"\x00" in joined:
            joined = joined.replace(b"\x00", b"")
        if b"\x1b" in joined:
            joined = _ANSI_CSI.sub(b"", joined)
        return list(filter(None, map(str.strip, joined.decode("utf-8", "replace").split("\n"))))

    def _decode(self, raw: bytes) -> str | None:
        if len(raw) > self.max_line_bytes:
            self.too_long += 1
            return None
        if b"\x00" in raw:
            raw = raw.replace(b"\x00", b"")
        if b"\x1b" in raw:
            raw = _ANSI_CSI.sub(b"", raw)
        text = raw.decode("utf-8", "replace").strip()
        return text or None
