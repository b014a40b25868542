"""What the dialect tests share: a log's text as dialects get it, and the rule that only a
line's own dialect may read it."""

from __future__ import annotations

import pytest

from exporter.logs.envelopes import Envelopes
from exporter.logs.formats import CONSOLE_FORMATS, ParseError

# The general shapes, offered a line only when every trainer's own dialect passed on it
# (AUTO_ORDER puts them last): a line its owner reads never reaches them.
GENERAL_DIALECTS = ("table", "key_value")


def payloads(text: str) -> list[str]:
    """The lines the reader hands over: split on \\n and on \\r, as tqdm's redraws demand, each
    unwrapped of what a launcher or Python logging put around it."""
    envelopes = Envelopes()
    return [piece for line in text.split("\n") for piece in envelopes.unwrap(line.strip())]


def assert_only_its_owner_reads(line: str, owner: str | None, where: str) -> None:
    """Only ``owner`` may find values (or run facts) in ``line``; no other dialect may even call
    it a broken line of its own; a general dialect may read it only where the owner does not."""
    owners = CONSOLE_FORMATS[owner]().parse(line) if owner else []
    for name, factory in CONSOLE_FORMATS.items():
        if name == owner or name in GENERAL_DIALECTS and any(r.values for r in owners):
            continue
        try:
            records = factory().parse(line)
        except ParseError:
            pytest.fail(f"{name} calls {where} a broken line of its own: {line!r}")
        claimed = [r for r in records if r.values or r.meta or r.step is not None]
        assert not claimed, f"{name} claims {where}: {line!r} -> {claimed}"
