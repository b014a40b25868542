"""Build prometheus_client metric families from plain (name, labels, value) samples.

Every hardware metric is declared once in a table of specs (type and help text), so a name that
is not declared fails loudly in tests instead of appearing undocumented in production.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

# name -> (type, help). Counters are declared with their ``_total`` sample name.
Specs = Mapping[str, tuple[str, str]]


class Families:
    """Collects samples for one scrape and yields one family per metric name, in add order."""

    def __init__(self, specs: Specs) -> None:
        self._specs = specs
        self._families: dict[str, Metric] = {}

    def add(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        family = self._families.get(name)
        if family is None:
            kind, help_text = self._specs[name]
            # prometheus_client names a counter family without its _total suffix.
            family_name = name[: -len("_total")] if kind == "counter" else name
            family = Metric(family_name, help_text, kind)
            self._families[name] = family
        family.samples.append(Sample(name, dict(labels) if labels else {}, float(value)))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())
