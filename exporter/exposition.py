"""The Prometheus text format (0.0.4) and OpenMetrics 1.0.0, byte for byte what prometheus_client's
``generate_latest`` (and its OpenMetrics namesake) writes, at a fraction of its cost.

``generate_latest`` checks and escapes every metric and label name of every sample (since its
UTF-8 name support), which made it most of a scrape's CPU time. The exporter's names are a few
dozen constants, so each distinct name is checked once and remembered. The text of a series
before its number (name, label names, escaped label values) is kept from one scrape to the next,
for the same series come back every time. The exporter's own families (``family.py``) hand their
series over as label pairs, which are that text's key as they are. A name that would need
escaping, or an OpenMetrics-only sample, sends the whole scrape to ``generate_latest``.

A scraper that asks for OpenMetrics (Prometheus does by default) gets OpenMetrics 1.0.0 from the
same writer, byte for byte what prometheus_client's OpenMetrics writer writes, which writes what
the fast writer does not (a timestamp, an exemplar, a name it would change); ``negotiate`` picks
the format from the request's Accept header.
"""

from __future__ import annotations

import math
import re

from typing import Callable, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, CONTENT_TYPE_PLAIN_1_0_0
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

from .family import Family

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


def render_openmetrics(registry: CollectorRegistry) -> bytes:
    """OpenMetrics 1.0.0, byte for byte what prometheus_client's OpenMetrics writer writes (it
    ends with ``# EOF``), which writes it when the fast writer cannot."""
    metrics = list(registry.collect())
    try:
        return _render(metrics, openmetrics=True)
    except _Unusual:
        return openmetrics.generate_latest(_Fixed(metrics))


def _openmetrics_name(name: str) -> str:
    # prometheus_client's OpenMetrics writer turns a ":" in a sample's name into "_".
    if ":" in _name(name):
        raise _Unusual
    return name


def _render(metrics, openmetrics: bool = False) -> bytes:
    # The loop runs once per series: the names' check and the number's text are inlined for
    # their common cases, and a series' text before its number is looked up, not rebuilt. The
    # series' lines are the same in both formats; what differs is around them: OpenMetrics names
    # a family without its counter's _total or info's _info and gives its type as it is, escapes
    # '"' in the help too, has units, keeps a counter's _created, and ends with "# EOF".
    out: list[str] = []
    append = out.append
    valid_names, series_texts, inf = _valid_metric_names, _series_texts, math.inf
    for metric in metrics:
        if openmetrics:
            name = _openmetrics_name(metric.name)
            append(f"# HELP {name} {_escape_value(metric.documentation)}\n# TYPE {name} {metric.type}")
            if metric.unit:
                append(f"# UNIT {name} {metric.unit}")
        else:
            suffix, kind = _TYPES.get(metric.type, ("", metric.type))
            name = _name(metric.name + suffix)
            documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {name} {documentation}\n# TYPE {name} {kind}")
        if type(metric) is Family:
            sample_name = _openmetrics_name(metric.sample_name) if openmetrics else name
            texts = series_texts.setdefault(sample_name, {})
            for labels, value in metric.series:
                # Below a million, repr is what Go writes; NaN, the infinities and large numbers
                # (which Go writes as 1.5e+07) take prometheus_client's conversion.
                number = repr(value) if -inf < value < 1e6 else floatToGoString(value)
                append((texts.get(labels) or _series_text(sample_name, labels)) + number)
            continue
        openmetrics_only = () if openmetrics else {metric.name + s for s in _OPENMETRICS_SUFFIXES}
        for sample in metric.samples:
            sample_name, labels, value = sample.name, sample.labels, sample.value
            if sample_name in openmetrics_only or sample.timestamp is not None or sample.exemplar is not None \
                    or sample.native_histogram is not None or value is None:
                raise _Unusual  # only in the other format, or what only prometheus_client writes
            if openmetrics:
                _openmetrics_name(sample_name)
            elif sample_name not in valid_names:
                _name(sample_name)
            value = float(value)
            number = repr(value) if -inf < value < 1e6 else floatToGoString(value)
            key = tuple(labels.items())
            append((series_texts.get(sample_name, {}).get(key) or _series_text(sample_name, key)) + number)
    if openmetrics:
        append("# EOF")
    out.append("")
    return "\n".join(out).encode("utf-8")


# The same series come back at every scrape (a GPU's gpu and uuid, a log's source): the text of
# each before its number is kept, by sample name and label pairs, for a few thousand series of
# modest length.
_series_texts: dict[str, dict[tuple, str]] = {}
_MAX_SERIES_TEXTS = 10_000
_MAX_CACHED_SERIES_TEXT = 300
_cached = 0


def _series_text(name: str, labels: tuple) -> str:
    global _cached
    if labels:
        pairs = ",".join(f'{_label_name(k)}="{_escape_value(v)}"' for k, v in sorted(labels))
        text = f"{name}{{{pairs}}} "
    else:
        text = f"{name} "
    if len(text) <= _MAX_CACHED_SERIES_TEXT:
        if _cached >= _MAX_SERIES_TEXTS:
            _series_texts.clear()  # the series in use come back at the next scrape
            _cached = 0
        _series_texts.setdefault(name, {})[labels] = text
        _cached += 1
    return text


class _Fixed:
    """Already collected families, for generate_latest (collectors run once per scrape)."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics


class Format(NamedTuple):
    render: Callable[[CollectorRegistry], bytes]
    content_type: str


TEXT = Format(render, CONTENT_TYPE_PLAIN_0_0_4)
TEXT_1_0_0 = Format(render, CONTENT_TYPE_PLAIN_1_0_0)  # the same text; names need no escaping
OPENMETRICS = Format(render_openmetrics, openmetrics.CONTENT_TYPE_LATEST)
# (media type, version) -> format; no version means the media type's first version here.
_OFFERED = {("text/plain", ""): TEXT, ("text/plain", "0.0.4"): TEXT, ("text/plain", "1.0.0"): TEXT_1_0_0,
            ("application/openmetrics-text", ""): OPENMETRICS,
            ("application/openmetrics-text", "1.0.0"): OPENMETRICS,
            ("*/*", ""): TEXT, ("text/*", ""): TEXT, ("application/*", ""): OPENMETRICS}


def negotiate(accept: str | None) -> Format:
    """The format for an Accept header: the offered one with the highest q-value (the first of
    equals); the text format 0.0.4 when nothing offered is asked for, as Prometheus's exporters
    answer."""
    best, best_q = TEXT, 0.0
    for media_range in (accept or "").split(","):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        version, q = "", 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "version":
                version = value
            elif key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        offered = _OFFERED.get((media_type.lower(), version))
        if offered is not None and 0 < q <= 1 and q > best_q:
            best, best_q = offered, q
    return best
