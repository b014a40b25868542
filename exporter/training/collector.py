"""Training state, and the state of the files it comes from, into metric families at scrape
time. Reads copies: each source's snapshot, taken under its lock, and the files' status."""

from __future__ import annotations

import math
from typing import Callable, Iterable

from ..collector_base import Collector
from ..family import Family
from ..logs.sources import FileStatus
from .signals import DEDICATED
from .states import TrainingStates

GAUGE, COUNTER, INFO = "gauge", "counter", "info"

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

    def __init__(self, states: TrainingStates, files: Callable[[], list[FileStatus]],
                 catch_up: Callable[[], None] | None = None) -> None:
        self.states = states
        self.files = files
        self.catch_up = catch_up  # reads what the logs said up to now, before a scrape

    def collect(self) -> Iterable[Family]:
        if self.catch_up is not None:
            self.catch_up()
        understood_sources: set[str] = set()  # sources of which something read became a record
        yield from self._signal_families(understood_sources)
        yield from self._file_families(understood_sources)

    def _signal_families(self, understood_sources: set[str]) -> Iterable[Family]:
        settings = self.states.settings
        dedicated = {name: Family(f"training_{name}", help_, GAUGE) for name, help_ in _DEDICATED_HELP.items()}
        step = Family("training_step", "Latest training step (iteration) the log reported.", GAUGE)
        value = Family("training_value", "Latest value of any other numeric key the log reported.", GAUGE)
        nonfinite = Family("training_nonfinite_values", "Values that were NaN or infinite, by key.", COUNTER)
        records = Family("training_records", "Records read from the log, by kind.", COUNTER)
        oom = Family("training_oom_events", "Out-of-memory errors seen in the log.", COUNTER)
        overflow = Family("training_loss_scale_overflows",
                          "Mixed-precision overflows (step skipped, loss scale lowered) seen in the log.", COUNTER)
        progress = Family("training_last_progress_timestamp_seconds",
                          "When the step last advanced (Unix time; the log file's modification time "
                          "when read from a backlog).", GAUGE)
        last_record = Family("training_last_record_timestamp_seconds",
                             "When the log last reported any value (Unix time).", GAUGE)
        rate = Family("training_steps_per_second", "Step rate over the recent step advances.", GAUGE)
        max_steps = Family("training_max_steps", "Total steps the run is configured for, if the log says.", GAUGE)
        eta = Family("training_eta_seconds", "Estimated seconds until max_steps at the current step rate.", GAUGE)
        best = Family("training_validation_loss_best",
                      "Best value so far of the monitored validation metric (validation loss by default).", GAUGE)
        best_step = Family("training_validation_best_step", "Step at which the best validation value was seen.",
                           GAUGE)
        since_best = Family("training_validation_evals_since_best",
                            "Evaluations since the monitored validation metric last improved by more than "
                            "min_delta (EarlyStopping's wait count).", GAUGE)
        evals = Family("training_validation_evals", "Evaluations of the monitored validation metric.", COUNTER)
        patience = Family("training_validation_patience",
                          "Configured patience: evaluations without improvement that make a plateau.", GAUGE)
        baseline = Family("training_loss_baseline",
                          "Median of the recent finite training losses (the spike baseline).", GAUGE)
        spikes = Family("training_loss_spikes", "Training losses at least spike_factor times the baseline.", COUNTER)
        loss_best = Family("training_loss_best", "Lowest of the epochs' best training losses (each epoch judged "
                           "once over; a window of loss_window_steps steps where the log says no epoch).", GAUGE)
        loss_since_best = Family("training_loss_epochs_since_best",
                                 "Epochs since the best training loss last improved by more than loss_min_delta.",
                                 GAUGE)
        loss_epochs = Family("training_loss_epochs", "Epochs (or windows of steps) whose best training loss was judged.",
                             COUNTER)
        loss_patience = Family("training_loss_patience",
                               "Configured loss_patience: epochs without improvement that make a loss plateau.", GAUGE)
        hparam = Family("training_hparam", "Numeric hyperparameters and run facts the logs carry.", GAUGE)
        # Not "training_hparam": OpenMetrics names an info family without its _info, and a name
        # may name one family only.
        hparam_info = Family("training_hparam_text", "Short text hyperparameters the logs carry.", INFO)
        dropped = Family("training_dropped_keys",
                         "Keys dropped because the source reached its limit of distinct keys.", COUNTER)

        for source, labels, rank, state in self.states.items():
            snap = state.snapshot()
            if snap.last_record_time is not None or any(snap.events.values()):
                understood_sources.add(source)
            src = (("source", source), *labels) if rank is None else (("source", source), *labels, ("rank", rank))
            for name in DEDICATED:
                if name in snap.values:
                    dedicated[name].add(src, snap.values[name])
            if snap.step is not None:
                step.add(src, snap.step)
            for key, number in sorted(snap.extra.items()):
                value.add((*src, ("key", key)), number)
            for key, count in sorted(snap.nonfinite.items()):
                nonfinite.add((*src, ("key", key)), count)
            for kind, count in snap.records.items():
                records.add((*src, ("kind", kind)), count)
            oom.add(src, snap.events["oom"])
            overflow.add(src, snap.events["loss_scale_overflow"])
            if snap.last_progress_time is not None:
                progress.add(src, snap.last_progress_time)
            if snap.last_record_time is not None:
                last_record.add(src, snap.last_record_time)
            if snap.steps_per_second is not None:
                rate.add(src, snap.steps_per_second)
            if snap.max_steps is not None:
                max_steps.add(src, snap.max_steps)
                if snap.steps_per_second and snap.step is not None:
                    eta.add(src, max(0.0, (snap.max_steps - snap.step) / snap.steps_per_second))
            if snap.best is not None:
                best.add(src, snap.best)
                if snap.best_step is not None:
                    best_step.add(src, snap.best_step)
            if snap.evals_total:  # before the first evaluation there is no "since best" to tell
                since_best.add(src, snap.evals_since_best)
            evals.add(src, snap.evals_total)
            patience.add(src, settings.patience)
            if snap.loss_baseline is not None and math.isfinite(snap.loss_baseline):
                baseline.add(src, snap.loss_baseline)
            spikes.add(src, snap.spikes_total)
            if snap.loss_best is not None:
                loss_best.add(src, snap.loss_best)
            loss_since_best.add(src, snap.loss_epochs_since_best)
            loss_epochs.add(src, snap.loss_epochs_total)
            loss_patience.add(src, settings.loss_patience)
            for key, number in sorted(snap.meta_numbers.items()):
                hparam.add((*src, ("key", key)), number)
            for key, text in sorted(snap.meta_strings.items()):
                hparam_info.add((*src, ("key", key), ("value", text)), 1)
            dropped.add(src, snap.dropped_keys_total)

        yield step
        yield from dedicated.values()
        yield from (value, nonfinite, records, oom, overflow, progress, last_record, rate, max_steps, eta,
                    best, best_step, since_best, evals, patience, baseline, spikes, loss_best, loss_since_best,
                    loss_epochs, loss_patience, hparam, hparam_info, dropped)

    def _file_families(self, understood_sources: set[str]) -> Iterable[Family]:
        lines = Family("training_log_lines", "Lines (or binary records) read from the source's files.", COUNTER)
        errors = Family("training_log_parse_errors",
                        "Lines that belong to the format but could not be read (skipped).", COUNTER)
        too_long = Family("training_log_lines_too_long", "Lines over the line-length limit (dropped whole).", COUNTER)
        read_bytes = Family("training_log_read_bytes", "Bytes read from the source's files.", COUNTER)
        resets = Family("training_log_resets",
                        "Times a file was rotated, truncated or rewritten and reading began again.", COUNTER)
        updated = Family("training_log_last_update_timestamp_seconds",
                         "Modification time of the source's files when new data was last read.", GAUGE)
        up = Family("training_log_up", "1 when every file of the source exists and can be read.", GAUGE)
        read_errors = Family("training_log_read_errors",
                             "Times a file of the source became unreadable, by why (reason).", COUNTER)
        fmt = Family("training_log_format", "The format each of the source's files is read as.", INFO)
        understood = Family("training_log_understood",
                            "1 once a line read from the source became a record (values, a progress bar, run facts "
                            "or an event); 0 while lines are read and none does. Absent before the first line.",
                            GAUGE)

        totals: dict[str, dict] = {}
        for file in self.files():
            entry = totals.setdefault(file.source, {"lines": 0, "errors": 0, "too_long": 0, "bytes": 0, "labels": file.labels,
                                                    "resets": {}, "updated": None, "up": 1, "formats": set(),
                                                    "read_errors": {}})
            entry["lines"] += file.lines
            entry["errors"] += file.parse_errors
            entry["too_long"] += file.too_long
            entry["bytes"] += file.bytes
            for reason, count in file.resets.items():
                entry["resets"][reason] = entry["resets"].get(reason, 0) + count
            if file.last_update is not None:
                entry["updated"] = max(entry["updated"] or 0.0, file.last_update)
            if not file.exists or file.error is not None:
                entry["up"] = 0
            for reason, count in file.errors.items():
                entry["read_errors"][reason] = entry["read_errors"].get(reason, 0) + count
            entry["formats"].add(file.format)
        for source, entry in sorted(totals.items()):
            src = (("source", source), *entry["labels"])
            if entry["lines"]:
                understood.add(src, 1 if source in understood_sources else 0)
            lines.add(src, entry["lines"])
            errors.add(src, entry["errors"])
            too_long.add(src, entry["too_long"])
            read_bytes.add(src, entry["bytes"])
            for reason, count in sorted(entry["resets"].items()):
                resets.add((*src, ("reason", reason)), count)
            if entry["updated"] is not None:
                updated.add(src, entry["updated"])
            up.add(src, entry["up"])
            for reason, count in sorted(entry["read_errors"].items()):
                read_errors.add((*src, ("reason", reason)), count)
            fmt.add((*src, ("format", ",".join(sorted(entry["formats"])))), 1)
        yield from (lines, errors, too_long, read_bytes, resets, updated, up, read_errors, fmt, understood)
