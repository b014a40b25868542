"""A metric family as the exporter's own collectors build it: series as (label pairs, value).

prometheus_client's families hold a Sample (a namedtuple with its own label dict) per series,
which the text writer then takes apart again. A Family keeps each series' labels as the tuple of
(name, value) pairs they were given in, which the writer (``exposition.py``) uses to look up the
series' text as it wrote it at the last scrape; only the number is new. ``samples`` still gives
prometheus_client's view, for anything else that reads the family.
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

Labels = tuple[tuple[str, str], ...]  # (label name, label value) pairs

# The sample name's suffix for a family type (prometheus_client names a counter family without
# its _total, an info family without its _info).
SAMPLE_SUFFIX = {"counter": "_total", "info": "_info"}


class Family(Metric):
    def __init__(self, name: str, documentation: str, kind: str) -> None:
        # Metric.__init__ is not called: it would set ``samples``, which is derived here.
        self.name, self.documentation, self.type, self.unit = name, documentation, kind, ""
        self.sample_name = name + SAMPLE_SUFFIX.get(kind, "")
        self.series: list[tuple[Labels, float]] = []

    def add(self, labels: Labels, value: float) -> None:
        self.series.append((labels, float(value)))

    @property
    def samples(self) -> list[Sample]:
        return [Sample(self.sample_name, dict(labels), value) for labels, value in self.series]
