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
        cut = data.rfind(b"\n")
        # The chunk's whole lines, joined by their newlines (None when it ends none), and the
        # start of the next line.
        body, tail = (None, data) if cut < 0 else (data[:cut], data[cut + 1:])
        if self._skipping:
            if body is not None:
                # The over-long line ends at the chunk's first newline: what follows is read.
                self._skipping = False
                end = body.find(b"\n")
                body = None if end < 0 else body[end + 1:]
        elif self._tail:
            if body is None:
                tail = self._tail + tail
            else:
                body = self._tail + body
        self._tail = b""
        if tail and not self._skipping and b"\r" in tail:
            # A progress bar redrawn with \r and no newline for minutes: each redraw is complete
            # at its \r, and is handed on now rather than when the line ends.
            cut = tail.rfind(b"\r")
            body = tail[:cut] if body is None else body + b"\n" + tail[:cut]
            tail = tail[cut + 1:]
        lines = self._decode_lines(body) if body is not None else []
        if not self._skipping:
            if len(tail) > self.max_line_bytes:
                self.too_long += 1
                self._skipping = True
            else:
                self._tail = tail
        return lines

    def flush(self) -> list[str]:
        """The writer is gone (the file was rotated away): its unterminated last line is whole."""
        tail, self._tail, self._skipping = self._tail, b"", False
        line = self._decode(tail) if tail else None
        return [line] if line else []

    def _decode_lines(self, body: bytes) -> list[str]:
        """The lines of ``body`` (lines joined by their newlines): one decode, one NUL and one
        escape pass for them all when none of them can be too long, as in nearly every chunk."""
        if len(body) <= self.max_line_bytes:
            return self._decode_all(body)
        parts = body.split(b"\n")
        if max(map(len, parts)) <= self.max_line_bytes:
            return self._decode_all(body)
        return [line for line in map(self._decode, parts) if line is not None]

    @staticmethod
    def _decode_all(body: bytes) -> list[str]:
        """``_decode`` of every line of ``body``, done on them joined. Nothing it removes or
        replaces can reach across a newline, so the lines are the same."""
        if b"\x00" in body:
            body = body.replace(b"\x00", b"")
        if b"\x1b" in body:
            body = _ANSI_CSI.sub(b"", body)
        return list(filter(None, map(str.strip, body.decode("utf-8", "replace").split("\n"))))

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
