"""The exporter's own exposition writes exactly what prometheus_client's writers write, in the text
format and in OpenMetrics, for everything the exporter serves and for what it could be handed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from exporter.app import LogReading, make_collectors
from exporter.config import Config, LogConfig
from exporter import exposition
from exporter.exposition import _Fixed, _render, render, render_openmetrics
from exporter.family import Family
from exporter.hardware.gpu import GpuCollector
from exporter.registry import build_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_nvml import pynvml as fake_pynvml  # noqa: E402
from procs import gpu  # noqa: E402


def same_as_prometheus_client(metrics: list) -> bytes:
    """The text format, and OpenMetrics, both written by the fast writer itself (no fallback)."""
    assert _render(metrics, openmetrics=True) == openmetrics.generate_latest(_Fixed(metrics))
    ours = _render(metrics)
    assert ours == generate_latest(_Fixed(metrics))
    return ours


def test_everything_the_exporter_serves(tmp_path):
    log = tmp_path / "train.jsonl"
    log.write_text(json.dumps({"step": 5, "loss": float("nan"), "lr": 1e-4, "big": 1.5e7, "neg": -3e22,
                               'quo"te\\': 1, "acc": 0.5}) + "\n" + json.dumps({"step": 5, "eval_loss": 2.5}) + "\n")
    hostile = tmp_path / 'a"b\\c\nd.log'
    hostile.write_text("{'loss': 2.0, 'epoch': 0.1}\n")
    hparams = tmp_path / "run" / "hparams.yaml"  # numeric and text hyperparameters
    hparams.parent.mkdir()
    hparams.write_text("lr: 0.001\noptimizer: adamw\n")
    config = Config(logs=[LogConfig(path=str(log)), LogConfig(path=str(hostile)), LogConfig(path=str(hparams))])
    reading = LogReading(config)
    reading.read_to_end()
    collectors = make_collectors(config, reading)
    fake = fake_pynvml.load({"driver_version": "550.54.15", "cuda_version": 12040, "gpus": [gpu(0), gpu(1)]})
    collectors = [GpuCollector(nvml=fake) if c.name == "gpu" else c for c in collectors]
    gpu_collector = next(c for c in collectors if c.name == "gpu")
    assert gpu_collector._init()
    try:
        metrics = list(build_registry(collectors).collect())
        text = same_as_prometheus_client(metrics).decode()
        # An OpenMetrics parser (as strict as Prometheus's) takes it: no family name given twice.
        families = {family.name for family in openmetrics_families(_render(metrics, openmetrics=True).decode())}
    finally:
        gpu_collector.stop()
        reading.follower.stop()
    assert 'training_gpu_up{gpu="1"' in text and "training_host_" in text and "process_cpu_seconds_total" in text
    assert 'source="a\\"b\\\\c\\nd.log"' in text
    assert {"training_hparam", "training_hparam_text", "training_gpu_up", "training_records"} <= families


def family(name: str, value, labels: dict | None = None, kind=GaugeMetricFamily):
    metric = kind(name, "help with \\ and\nnewline", labels=list(labels or {}))
    metric.add_metric(list((labels or {}).values()), value)
    return metric


def test_special_values_and_label_values():
    metrics = [family("a", v) for v in (0, -0.0, 5, 1e6, 999_999.5, 1e6 - 1e-9, 1.5e7, 1e22, -1e22, 1e-7,
                                          math.inf, -math.inf, math.nan, 2**70, True)]
    metrics += [family("b", 1.0, {"key": v}) for v in ('"', "\\", "\n", "}", "ü鍵", "", "a\\\"b\n")]
    metrics.append(family("c", 3, {"z": "1", "a": "2", "m": "3"}, CounterMetricFamily))
    info = InfoMetricFamily("d", "info", labels=["source"])
    info.add_metric(["x"], {"value": 'say "hi"'})
    metrics.append(info)
    same_as_prometheus_client(metrics)


def test_what_it_cannot_write_itself_goes_to_prometheus_client():
    registry = CollectorRegistry(auto_describe=False)

    class Odd:
        def collect(self):
            yield family("needs.escaping", 1.0)
            timestamped = GaugeMetricFamily("t", "t")
            timestamped.add_metric([], 1.0, timestamp=1700000000.5)
            yield timestamped
            yield family("ok", 2.0, {"__reserved": "x"})

    registry.register(Odd())
    assert render(registry) == generate_latest(registry)


def test_what_it_cannot_write_in_openmetrics_goes_to_prometheus_client():
    for odd in (family("needs.escaping", 1.0), family("colon:ed", 1.0), family("ok", 2.0, {"__reserved": "x"})):
        metrics = [family("plain", 1.0), odd]
        assert render_openmetrics(_Fixed(metrics)) == openmetrics.generate_latest(_Fixed(metrics))
    timestamped = GaugeMetricFamily("t", "t")
    timestamped.add_metric([], 1.0, timestamp=1700000000.5)
    counted = CounterMetricFamily("c", "c", labels=["a"])
    counted.add_metric(["x"], 3.0, created=1700000000.25, timestamp=1700000001)
    for metrics in ([timestamped], [counted]):
        written = openmetrics.generate_latest(_Fixed(metrics))
        assert render_openmetrics(_Fixed(metrics)) == written and b" 1700000" in written


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**80, 2**80),
                          st.text(max_size=20)), min_size=1, max_size=10))
def test_any_value_and_label_value(pairs):
    metric = GaugeMetricFamily("g", "g", labels=["key"])
    ours = {kind: Family(f"f_{kind}", "f", kind) for kind in ("gauge", "counter", "info")}
    for number, text in pairs:
        metric.add_metric([text], number)
        for family in ours.values():
            family.add((("z", "1"), ("key", text)), number)
    same_as_prometheus_client([metric, *ours.values()])


def test_series_texts_kept_are_bounded_and_right_when_dropped(monkeypatch):
    monkeypatch.setattr(exposition, "_series_texts", {})
    monkeypatch.setattr(exposition, "_cached", 0)
    many = Family("many", "many", "counter")
    for i in range(exposition._MAX_SERIES_TEXTS + 2_000):
        many.add((("key", f"k{i}"),), i)
    long_value = Family("long", "long", "gauge")
    long_value.add((("key", "x" * 1000),), 1)
    for _ in range(2):  # the second time through, from what the first one kept
        assert same_as_prometheus_client([many, long_value]).count(b"\n") == exposition._MAX_SERIES_TEXTS + 2_000 + 5
        assert sum(len(texts) for texts in exposition._series_texts.values()) <= exposition._MAX_SERIES_TEXTS
        assert not any(len(text) > 1000 for texts in exposition._series_texts.values() for text in texts.values())
