"""The exporter's own log lines on stderr, as Prometheus's exporters write theirs: ``logfmt``
(the default) or ``json``, one record per line. A traceback or a stack dump stays inside its
record (escaped newlines in logfmt, a field in json), so a log collector never splits it.

    ts=2025-01-31T12:00:00.123Z level=info logger=exporter.app msg="listening on http://[::]:9945"
    {"ts": "2025-01-31T12:00:00.123Z", "level": "info", "logger": "exporter.app", "msg": "listening ..."}
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# A logfmt value needs quotes when it is empty or holds a space, quote, equals sign, backslash
# or anything unprintable.
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[^\x21-\x7e\u00a0-\U0010ffff]')


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    fields = {"ts": _timestamp(record.created), "level": record.levelname.lower(), "logger": record.name,
              "msg": record.getMessage()}
    if record.exc_info:
        fields["traceback"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record, self).items())


def _logfmt_value(value: str) -> str:
    if value and not _NEEDS_QUOTES.search(value):
        return value
    return json.dumps(value, ensure_ascii=False)  # quoted, with \n, \" and \\ escaped


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


FORMATTERS = {"logfmt": LogfmtFormatter, "json": JsonFormatter}


def setup_logging(level: str, form: str = "logfmt") -> None:
    """The exporter's own log lines, at ``level``, to stderr in the ``form`` asked for."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[form]())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
