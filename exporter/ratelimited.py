"""Log lines about events that a misbehaving client can repeat at will: the first of a kind is
logged at once, later ones within the interval are counted and summed up in one line when the
interval is over. A flood of bad clients then costs a line a minute, not a line each."""

from __future__ import annotations

import logging
import threading
import time

INTERVAL_SECONDS = 60.0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL_SECONDS) -> None:
        self._log = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._last_line: dict[str, float] = {}  # what -> when its last line was written
        self._counted: dict[str, tuple[int, str]] = {}  # what -> (events since that line, latest detail)

    def note(self, what: str, detail: str, exc_info=None) -> None:
        """One event: ``what`` happened (a fixed text), ``detail`` says to whom and how."""
        now = time.monotonic()
        with self._lock:
            last = self._last_line.get(what)
            if what not in self._counted and (last is None or now - last >= self._interval):
                self._last_line[what] = now
                log_now = True
            else:
                count, _ = self._counted.get(what, (0, ""))
                self._counted[what] = (count + 1, detail)
                log_now = False
        if log_now:
            self._log.warning("%s (%s); more are counted and logged once a minute at most", what, detail,
                              exc_info=exc_info)

    def flush(self) -> None:
        """Write the summaries whose interval is over; called often (every few hundred ms)."""
        now = time.monotonic()
        due = []
        with self._lock:
            for what, (count, detail) in list(self._counted.items()):
                elapsed = now - self._last_line[what]
                if elapsed >= self._interval:
                    due.append((what, count, elapsed, detail))
                    del self._counted[what]
                    self._last_line[what] = now
        for what, count, elapsed, detail in due:
            self._log.warning("%s: %d more in the last %.0f s (latest: %s)", what, count, elapsed, detail)
