"""Training state into metric families, at scrape time."""

from __future__ import annotations

import math
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from ..collector_base import Collector
from ..logs.sources import LogFollower
from .signals import DEDICATED

_DEDICATED_HELP = {
    "loss": "Latest training loss the log reported.",
    "validation_loss": "Latest validation loss the log reported.",
    "learning_rate": "Latest learning rate the log reported.",
    "grad_norm": "Latest gradient norm the log reported.",
    "epoch": "Latest epoch the log reported (fractional where the framework logs it so).",
    "tokens_per_second": "Latest throughput in tokens per second the log reported.",
    "samples_per_second": "Latest throughput in samples per second the log reported.",
    "loss_scale": "Latest mixed-precision loss scale the log reported.",
}


class TrainingCollector(Collector):
    name = "training"

    def __init__(self, follower: LogFollower) -> None:
        self.follower = follower

    def start(self) -> None:
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()

    def collect(self) -> Iterable[Metric]:
        yield from self._signal_families()
        yield from self._reader_families()

    def _signal_families(self) -> Iterable[Metric]:
        settings = self.follower.signal_settings
        src = ["source"]
        dedicated = {name: GaugeMetricFamily(f"training_{name}", help_, labels=src)
                     for name, help_ in _DEDICATED_HELP.items()}
        step = GaugeMetricFamily("training_step", "Latest training step (iteration) the log reported.", labels=src)
        value = GaugeMetricFamily("training_value", "Latest value of any other numeric key the log reported.",
                                  labels=["source", "key"])
        nonfinite = CounterMetricFamily("training_nonfinite_values", "Values that were NaN or infinite, by key.",
                                        labels=["source", "key"])
        records = CounterMetricFamily("training_records", "Records read from the log, by kind.", labels=["source", "kind"])
        oom = CounterMetricFamily("training_oom_events", "Out-of-memory errors seen in the log.", labels=src)
        overflow = CounterMetricFamily("training_loss_scale_overflows",
                                       "Mixed-precision overflows (step skipped, loss scale lowered) seen in the log.",
                                       labels=src)
        progress = GaugeMetricFamily("training_last_progress_timestamp_seconds",
                                     "When the step last advanced (Unix time; the log file's modification time "
                                     "when read from a backlog).", labels=src)
        last_record = GaugeMetricFamily("training_last_record_timestamp_seconds",
                                        "When the log last reported any value (Unix time).", labels=src)
        rate = GaugeMetricFamily("training_steps_per_second", "Step rate over the recent step advances.", labels=src)
        max_steps = GaugeMetricFamily("training_max_steps", "Total steps the run is configured for, if the log says.",
                                      labels=src)
        eta = GaugeMetricFamily("training_eta_seconds", "Estimated seconds until max_steps at the current step rate.",
                                labels=src)
        best = GaugeMetricFamily("training_validation_loss_best",
                                 "Best value so far of the monitored validation metric (validation loss by default).",
                                 labels=src)
        best_step = GaugeMetricFamily("training_validation_best_step", "Step at which the best validation value was seen.",
                                      labels=src)
        since_best = GaugeMetricFamily("training_validation_evals_since_best",
                                       "Evaluations since the monitored validation metric last improved by more than "
                                       "min_delta (EarlyStopping's wait count).", labels=src)
        evals = CounterMetricFamily("training_validation_evals", "Evaluations of the monitored validation metric.",
                                    labels=src)
        patience = GaugeMetricFamily("training_validation_patience",
                                     "Configured patience: evaluations without improvement that make a plateau.",
                                     labels=src)
        baseline = GaugeMetricFamily("training_loss_baseline",
                                     "Median of the recent finite training losses (the spike baseline).", labels=src)
        spikes = CounterMetricFamily("training_loss_spikes",
                                     "Training losses at least spike_factor times the baseline.", labels=src)
        hparam = GaugeMetricFamily("training_hparam", "Numeric hyperparameters and run facts the logs carry.",
                                   labels=["source", "key"])
        hparam_info = InfoMetricFamily("training_hparam", "Short text hyperparameters the logs carry.",
                                       labels=["source", "key"])
        dropped = CounterMetricFamily("training_dropped_keys",
                                      "Keys dropped because the source reached its limit of distinct keys.", labels=src)

        for source, state in sorted(self.follower.states.items()):
            snap = state.snapshot()
            labels = [source]
            for name in DEDICATED:
                if name in snap.values:
                    dedicated[name].add_metric(labels, snap.values[name])
            if snap.step is not None:
                step.add_metric(labels, snap.step)
            for key, number in sorted(snap.extra.items()):
                value.add_metric([source, key], number)
            for key, count in sorted(snap.nonfinite.items()):
                nonfinite.add_metric([source, key], count)
            for kind, count in snap.records.items():
                records.add_metric([source, kind], count)
            oom.add_metric(labels, snap.events["oom"])
            overflow.add_metric(labels, snap.events["loss_scale_overflow"])
            if snap.last_progress_time is not None:
                progress.add_metric(labels, snap.last_progress_time)
            if snap.last_record_time is not None:
                last_record.add_metric(labels, snap.last_record_time)
            if snap.steps_per_second is not None:
                rate.add_metric(labels, snap.steps_per_second)
            if snap.max_steps is not None:
                max_steps.add_metric(labels, snap.max_steps)
                if snap.steps_per_second and snap.step is not None:
                    eta.add_metric(labels, max(0.0, (snap.max_steps - snap.step) / snap.steps_per_second))
            if snap.best is not None:
                best.add_metric(labels, snap.best)
                if snap.best_step is not None:
                    best_step.add_metric(labels, snap.best_step)
            since_best.add_metric(labels, snap.evals_since_best)
            evals.add_metric(labels, snap.evals_total)
            patience.add_metric(labels, settings.patience)
            if snap.loss_baseline is not None and math.isfinite(snap.loss_baseline):
                baseline.add_metric(labels, snap.loss_baseline)
            spikes.add_metric(labels, snap.spikes_total)
            for key, number in sorted(snap.meta_numbers.items()):
                hparam.add_metric([source, key], number)
            for key, text in sorted(snap.meta_strings.items()):
                hparam_info.add_metric([source, key], {"value": text})
            dropped.add_metric(labels, snap.dropped_keys_total)

        yield step
        yield from dedicated.values()
        yield from (value, nonfinite, records, oom, overflow, progress, last_record, rate, max_steps, eta,
                    best, best_step, since_best, evals, patience, baseline, spikes, hparam, hparam_info, dropped)

    def _reader_families(self) -> Iterable[Metric]:
        src = ["source"]
        lines = CounterMetricFamily("training_log_lines", "Lines (or binary records) read from the source's files.",
                                    labels=src)
        errors = CounterMetricFamily("training_log_parse_errors",
                                     "Lines that belong to the format but could not be read (skipped).", labels=src)
        too_long = CounterMetricFamily("training_log_lines_too_long",
                                       "Lines over the line-length limit (dropped whole).", labels=src)
        read_bytes = CounterMetricFamily("training_log_read_bytes", "Bytes read from the source's files.", labels=src)
        resets = CounterMetricFamily("training_log_resets",
                                     "Times a file was rotated, truncated or rewritten and reading began again.",
                                     labels=["source", "reason"])
        updated = GaugeMetricFamily("training_log_last_update_timestamp_seconds",
                                    "Modification time of the source's files when new data was last read.", labels=src)
        up = GaugeMetricFamily("training_log_up", "1 when every file of the source exists and is being followed.",
                               labels=src)
        fmt = InfoMetricFamily("training_log_format", "The format each of the source's files is read as.",
                               labels=["source"])

        totals: dict[str, dict] = {}
        for reader in self.follower.readers.values():
            entry = totals.setdefault(reader.source, {"lines": 0, "errors": 0, "too_long": 0, "bytes": 0,
                                                      "resets": {}, "updated": None, "up": 1, "formats": set()})
            stats = reader.stats
            entry["lines"] += stats.lines
            entry["errors"] += stats.parse_errors
            entry["too_long"] += stats.too_long
            entry["bytes"] += stats.bytes
            for reason, count in stats.resets.items():
                entry["resets"][reason] = entry["resets"].get(reason, 0) + count
            if stats.last_update is not None:
                entry["updated"] = max(entry["updated"] or 0.0, stats.last_update)
            if not reader.exists:
                entry["up"] = 0
            entry["formats"].add(reader.format_name)
        for source, entry in sorted(totals.items()):
            labels = [source]
            lines.add_metric(labels, entry["lines"])
            errors.add_metric(labels, entry["errors"])
            too_long.add_metric(labels, entry["too_long"])
            read_bytes.add_metric(labels, entry["bytes"])
            for reason, count in sorted(entry["resets"].items()):
                resets.add_metric([source, reason], count)
            if entry["updated"] is not None:
                updated.add_metric(labels, entry["updated"])
            up.add_metric(labels, entry["up"])
            fmt.add_metric(labels, {"format": ",".join(sorted(entry["formats"]))})
        yield from (lines, errors, too_long, read_bytes, resets, updated, up, fmt)
