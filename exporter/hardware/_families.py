"""Build metric families from plain (name, labels, value) samples.

Every hardware metric is declared once in a table of specs (type and help text), so a name that
is not declared fails loudly in tests instead of appearing undocumented in production.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from ..family import Family

# name -> (type, help). Counters are declared with their ``_total`` sample name.
Specs = Mapping[str, tuple[str, str]]


class Families:
    """Collects samples for one scrape and yields one family per metric name, in add order."""

    def __init__(self, specs: Specs) -> None:
        self._specs = specs
        self._families: dict[str, Family] = {}

    def add(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        family = self._families.get(name)
        if family is None:
            kind, help_text = self._specs[name]
            # prometheus_client names a counter family without its _total suffix.
            family_name = name[: -len("_total")] if kind == "counter" else name
            family = Family(family_name, help_text, kind)
            self._families[name] = family
        family.add(tuple(labels.items()) if labels else (), value)

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())
