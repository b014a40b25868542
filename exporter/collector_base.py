"""The small contract every collector keeps, so the registry can time it and report its health."""

from __future__ import annotations

import abc
from typing import Iterable

from prometheus_client.metrics_core import Metric


class CollectorUnavailable(Exception):
    """The collector cannot produce anything right now (no NVML, no driver, ...).

    Raised from ``collect``; the registry marks the collector as failed in the self-metrics and
    the rest of the exporter keeps working. The message is a short human-readable reason.
    """


class Collector(abc.ABC):
    """A source of metric families, read at scrape time.

    Anything slow (NVML calls, file reads) belongs in a background thread started by ``start``;
    ``collect`` should only turn the latest snapshot into families.
    """

    name: str = "unnamed"

    def start(self) -> None:
        """Begin background work, if any."""

    def stop(self) -> None:
        """End background work; must return promptly."""

    @abc.abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Yield metric families from the latest state."""
