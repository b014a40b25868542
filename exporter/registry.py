"""Runs every collector at scrape time, each timed and fenced off from the others, and adds the
exporter's own health: per-collector success and duration, node_exporter style."""

from __future__ import annotations

import logging
import platform
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric

from . import __version__
from .collector_base import Collector, CollectorUnavailable
from .family import Family
from .revision import reading_path_build, source_revision

log = logging.getLogger(__name__)


class CollectorSet:
    """The one object registered with prometheus_client: yields every collector's families."""

    def __init__(self, collectors: list[Collector]) -> None:
        self.collectors = collectors
        self._reported: dict[str, str] = {}  # collector -> the failure last logged, to log each once
        # Looked up once: the build cannot change while the process runs.
        self._build_labels = (("version", __version__), ("python_version", platform.python_version()),
                              ("revision", source_revision()), ("reading_path", reading_path_build()))

    def collect(self) -> Iterable[Metric]:
        success = Family("training_exporter_collector_success", "1 when the collector's last scrape succeeded.",
                         "gauge")
        duration = Family("training_exporter_collector_duration_seconds", "How long the collector's last scrape took.",
                          "gauge")
        for collector in self.collectors:
            started = time.perf_counter()
            try:
                families = list(collector.collect())
                ok = 1
            except CollectorUnavailable:
                # The collector says why in the log itself, once; here it only shows as failed.
                families, ok = [], 0
            except Exception as error:  # noqa: BLE001 - one collector's bug must not fail the scrape
                families, ok = [], 0
                self._report(collector.name, f"collector {collector.name} failed: {error!r}")
            else:
                self._reported.pop(collector.name, None)
            yield from families
            labels = (("collector", collector.name),)
            success.add(labels, ok)
            duration.add(labels, time.perf_counter() - started)
        yield success
        yield duration
        build = Family("training_exporter_build",
                       "The exporter's version, source revision, runtime and reading path build (compiled or source).",
                       "info")
        build.add(self._build_labels, 1)
        yield build

    def _report(self, name: str, message: str) -> None:
        if self._reported.get(name) == message:
            return
        self._reported[name] = message
        log.exception(message)


def build_registry(collectors: list[Collector]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet(collectors))
    ProcessCollector(registry=registry)  # the exporter's own CPU and memory, as process_*
    return registry
