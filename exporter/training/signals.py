"""Training semantics, per source: best-so-far, patience, non-finite values, spikes, progress.

Knows nothing of files or Prometheus. A reader feeds ``SourceState.apply`` with records and the
time they were observed; the collector reads a ``snapshot`` at scrape time.
"""

from __future__ import annotations

import math
import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

from ..logs.formats.base import Event, Kind, Record, Run
from .vocabulary import Vocabulary, normalise

# Canonical values that have a dedicated metric; every other key goes to the generic gauge.
DEDICATED = ("loss", "validation_loss", "learning_rate", "grad_norm", "epoch",
             "tokens_per_second", "samples_per_second", "loss_scale")

_DEDICATED_SET = frozenset(DEDICATED)
_TRAIN, _EVAL, _SUMMARY = Kind.TRAIN, Kind.EVAL, Kind.SUMMARY  # module globals: a cheaper lookup
MAX_META_STRING = 64
RATE_WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class SignalSettings:
    """How signals are judged; every field is a config key under ``signals``."""

    monitor: str = "validation_loss"  # the evaluated value whose best and patience are tracked
    mode: str = "min"  # "min": lower is better (a loss); "max": higher is better (accuracy)
    min_delta: float = 0.0  # an improvement must beat the best by more than this
    patience: int = 5  # evaluations without improvement that make a plateau (inspect's verdict)
    spike_window: int = 50  # recent finite training losses the spike baseline is the median of
    spike_factor: float = 2.0  # a loss at least this many times the baseline is a spike
    spike_min_points: int = 10  # no spike is judged before the window holds this many losses
    max_keys: int = 200  # distinct non-canonical keys kept per source; the rest are dropped


@dataclass
class Snapshot:
    """A consistent copy of one source's state, taken under its lock."""

    values: dict[str, float]
    extra: dict[str, float]
    step: int | None
    last_progress_time: float | None
    last_record_time: float | None
    steps_per_second: float | None
    max_steps: float | None
    progress_done: int | None
    progress_total: int | None
    nonfinite: dict[str, int]
    records: dict[str, int]
    events: dict[str, int]
    best: float | None
    best_step: int | None
    evals_since_best: int
    evals_total: int
    last_monitored: float | None
    loss_baseline: float | None
    spikes_total: int
    dropped_keys_total: int
    meta_numbers: dict[str, float]
    meta_strings: dict[str, str]
    nonfinite_steps: list[tuple[int | None, str]] = field(default_factory=list)
    best_history: list[tuple[int | None, float]] = field(default_factory=list)
    key_counts: dict[str, int] = field(default_factory=dict)


class SourceState:
    """Everything one log source has said so far, turned into training signals."""

    def __init__(self, settings: SignalSettings, vocabulary: Vocabulary, keep_history: bool = False) -> None:
        self.settings = settings
        self.vocabulary = vocabulary
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._extra: dict[str, float] = {}
        self._step: int | None = None
        self._highest_step: int | None = None
        self._seen_explicit_step = False
        self._last_progress_time: float | None = None
        self._last_record_time: float | None = None
        self._advances: deque[tuple[float, int]] = deque(maxlen=64)
        self._max_steps: float | None = None
        self._progress: tuple[int, int] | None = None
        self._nonfinite: dict[str, int] = {}
        self._nonfinite_at: dict[str, int | None] = {}  # the step of each key's last NaN
        self._records = {kind.value: 0 for kind in Kind}
        self._events = {event.value: 0 for event in Event}
        self._best: float | None = None
        self._best_step: int | None = None
        self._evals_since_best = 0
        self._evals_total = 0
        self._last_monitored: float | None = None
        self._recent_losses: deque[float] = deque(maxlen=settings.spike_window)
        self._recent_sorted: list[float] = []  # the same losses in order: the median is O(1)
        self._spikes_total = 0
        self._dropped_keys_total = 0
        self._meta_numbers: dict[str, float] = {}
        self._meta_strings: dict[str, str] = {}
        self._meta_names: dict[str, str] = {}  # raw meta key -> its normalised name
        # A file rewritten whole (Lightning's CSVLogger does this) is read again from the top:
        # records up to this step were already counted and must not be counted twice.
        self._replay_through: int | None = None
        # Offline inspection wants the details; a long-running exporter keeps only counters.
        self._keep_history = keep_history
        self._nonfinite_steps: list[tuple[int | None, str]] = []
        self._best_history: list[tuple[int | None, float]] = []
        self._key_counts: dict[str, int] = {}

    # -- feeding ---------------------------------------------------------------------------

    def mark_rewritten(self) -> None:
        """The source's file was rewritten from the top: skip counting what was counted."""
        with self._lock:
            self._replay_through = self._highest_step

    def apply(self, record: Record, observed_at: float) -> None:
        """Fold one record into the state. ``observed_at`` is when it was written, at the latest."""
        with self._lock:
            self._apply(record, record.wall_time if record.wall_time is not None else observed_at)

    def apply_all(self, records: list[Record], observed_at: float) -> None:
        """``apply`` each record in order, taking the lock once for them all."""
        with self._lock:
            apply = self._apply
            for record in records:
                apply(record, record.wall_time if record.wall_time is not None else observed_at)

    def apply_run(self, run: Run, observed_at: float) -> None:
        """``apply_all(run.records(), observed_at)``, by column where that gives the same state:
        the usual stretch of a log, steps going up, every value finite, one name per key."""
        with self._lock:
            if not self._apply_run(run, observed_at):
                for record in run.records():
                    self._apply(record, observed_at)

    def _apply_run(self, run: Run, when: float) -> bool:
        """Apply the run by column, or do nothing and return False when that could differ from
        applying its records one by one (a rewritten file being replayed, a step going back, a
        progress bar of another total, a NaN to count per step, two keys of one name)."""
        rows, steps, progress = run.rows, run.steps, run.progress
        if self._replay_through is not None or not run.keys or (steps is not None and progress is not None):
            return False
        known, vocabulary = self.vocabulary.names(_TRAIN), self.vocabulary
        names = [known.get(key) or vocabulary.name(key, _TRAIN) for key in run.keys]
        if len(set(names)) != len(names):
            return False
        columns = list(zip(*rows))
        for column in columns:
            # The sum of finite values is finite unless it overflows; either way, count by record.
            if math.isinf(total := sum(column)) or total != total:
                return False
        if progress is not None:
            total = progress[0][1]
            if self._progress is not None and total < self._progress[1]:
                return False
            if any(bar[1] != total for bar in progress):
                return False
            advancing = None if self._seen_explicit_step else [done for done, _ in progress]
        else:
            advancing = steps
        if advancing is not None:
            if advancing[0] == self._step:
                advancing = advancing[1:]  # the step the state is at already: no advance
            if not _rising(advancing, self._step):
                return False

        # From here on the run is applied: the same changes as its records', in effect.
        count = len(rows)
        self._last_record_time = when
        self._records["train"] += count
        if run.meta:
            for key, value in run.meta.items():
                self._set_repeated(self._set_meta, key, value, count)
        if progress is not None:
            self._progress = progress[-1]
        if steps is not None:
            self._seen_explicit_step = True
        if advancing:
            self._last_progress_time = when
            self._advances.extend((when, step) for step in advancing[-self._advances.maxlen:])
            self._step = advancing[-1]
            if self._highest_step is None or self._step > self._highest_step:
                self._highest_step = self._step
        elif not self._seen_explicit_step and self._progress is None:
            self._last_progress_time = when  # a dialect without steps or bars: each line is progress

        values, counts = self._values, self._key_counts if self._keep_history else None
        for name, column in zip(names, columns):
            if name in _DEDICATED_SET:
                values[name] = column[-1]
            else:
                self._set_repeated(self._set_extra, name, column[-1], count)
            if counts is not None and (name in counts or len(counts) < self.settings.max_keys + len(DEDICATED)):
                counts[name] = counts.get(name, 0) + count
        if "loss" in names:
            self._judge_spikes(columns[names.index("loss")])
        return True

    def _apply(self, record: Record, when: float) -> None:
        # The hot path of reading a log: written for speed (locals, identity tests, the enums'
        # _value_ attribute rather than the .value descriptor), every branch as documented.
        step = record.step
        replay = False
        if self._replay_through is not None and step is not None:
            if step <= self._replay_through:
                replay = True
            else:
                self._replay_through = None  # past the old end: counting resumes

        if record.event is not None:
            if not replay:
                self._events[record.event._value_] += 1
            return
        self._last_record_time = when
        kind, values_in = record.kind, record.values
        if not replay and (values_in or kind is _SUMMARY):
            self._records[kind._value_] += 1
        if record.meta:
            for key, value in record.meta.items():
                self._set_meta(key, value)
        if record.progress is not None:
            self._apply_progress_bar(record.progress, when)

        if kind is _SUMMARY:
            # End-of-run aggregates (an average train_loss) must not pose as the current loss.
            for key, value in values_in.items():
                self._set_extra("summary_" + normalise(key), value)
            return

        if step is not None:
            self._seen_explicit_step = True
            if self._step is None or step > self._step:  # _advance, inline
                self._last_progress_time = when
                self._advances.append((when, step))
                self._step = step
                if self._highest_step is None or step > self._highest_step:
                    self._highest_step = step
            else:
                self._advance(step, when)
        elif kind is _TRAIN and values_in and not self._seen_explicit_step and self._progress is None:
            # A dialect without steps and without a progress bar: each train line is progress.
            self._last_progress_time = when
        if not values_in:
            return

        known, vocabulary, monitor = self.vocabulary.names(kind), self.vocabulary, self.settings.monitor
        values, extra, counts = self._values, self._extra, self._key_counts if self._keep_history else None
        saw_loss = saw_monitor = False
        for key, value in values_in.items():
            name = known.get(key) or vocabulary.name(key, kind)
            if value - value:  # NaN or an infinity: for any finite x, x - x is 0.0
                if not replay:
                    self._count_nonfinite(name, step if step is not None else self._step)
            if name in _DEDICATED_SET:
                values[name] = value
            elif name in extra:
                extra[name] = value
            else:
                self._set_extra(name, value)
            if counts is not None and (name in counts or len(counts) < self.settings.max_keys + len(DEDICATED)):
                counts[name] = counts.get(name, 0) + 1
            if name == "loss":
                saw_loss = True
            if name == monitor:
                saw_monitor = True
        if replay:
            return
        if saw_loss and kind is _TRAIN:
            self._judge_spikes((values["loss"],))
        if saw_monitor and kind is _EVAL:
            value = values[monitor] if monitor in values else extra.get(monitor)
            if value is not None:
                self._judge_evaluation(value, step if step is not None else self._step)

    def _advance(self, step: int, when: float) -> None:
        if self._step is None or step > self._step:
            self._last_progress_time = when
            self._advances.append((when, step))
        elif step < self._step:
            self._advances.clear()  # resumed from an earlier checkpoint: the old rate is moot
        self._step = step
        if self._highest_step is None or step > self._highest_step:
            self._highest_step = step

    def _apply_progress_bar(self, progress: tuple[int, int], when: float) -> None:
        done, total = progress
        # Evaluation bars run beside the training bar; the training bar is the longest one.
        if self._progress is not None and total < self._progress[1]:
            return
        self._progress = (done, total)
        if not self._seen_explicit_step:
            self._advance(done, when)

    def _count_nonfinite(self, name: str, step: int | None) -> None:
        # One NaN per key and step: a progress bar redrawn beside its step line (torchtune) or a
        # value logged twice must not count twice.
        if step is not None and self._nonfinite_at.get(name) == step:
            return
        if name not in self._nonfinite and len(self._nonfinite) >= self.settings.max_keys:
            self._dropped_keys_total += 1
            return
        self._nonfinite[name] = self._nonfinite.get(name, 0) + 1
        self._nonfinite_at[name] = step
        if self._keep_history and len(self._nonfinite_steps) < 10_000:
            self._nonfinite_steps.append((step, name))

    def _set_repeated(self, setter, name: str, value, count: int) -> None:
        """``setter(name, value)`` as ``count`` records saying the same would call it: the value
        is set once, a key dropped for the cap is counted ``count`` times."""
        dropped = self._dropped_keys_total
        setter(name, value)
        self._dropped_keys_total += (self._dropped_keys_total - dropped) * (count - 1)

    def _set_extra(self, name: str, value: float) -> None:
        if name not in self._extra and len(self._extra) >= self.settings.max_keys:
            self._dropped_keys_total += 1
            return
        self._extra[name] = value

    def _set_meta(self, key: str, value: float | str) -> None:
        name = self._meta_names.get(key)
        if name is None:
            name = normalise(key)
            if len(self._meta_names) < 1000 and len(key) <= 256:  # Megatron repeats max_steps every line
                self._meta_names[key] = name
        if name == "max_steps" and isinstance(value, (int, float)) and value > 0:
            self._max_steps = float(value)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            target: dict = self._meta_numbers
            value = float(value)
        elif isinstance(value, str) and value and len(value) <= MAX_META_STRING and value.isprintable():
            target = self._meta_strings
        else:
            return
        if name not in target and len(self._meta_numbers) + len(self._meta_strings) >= self.settings.max_keys:
            self._dropped_keys_total += 1
            return
        target[name] = value

    def _judge_spikes(self, losses) -> None:
        """Each training loss in turn against the median of the finite losses before it."""
        window, ordered, settings = self._recent_losses, self._recent_sorted, self.settings
        factor, min_points, insort, bisect_left = settings.spike_factor, settings.spike_min_points, bisect.insort, bisect.bisect_left
        spikes = 0
        for loss in losses:
            if loss - loss:  # NaN or an infinity
                continue
            size = len(window)  # the ordered copy is as long
            if size >= min_points:
                middle = size // 2  # _median, inline: a call per training line is 5% of reading
                baseline = ordered[middle] if size % 2 else (ordered[middle - 1] + ordered[middle]) / 2
                if baseline > 0 and loss >= factor * baseline:
                    spikes += 1
            if size == window.maxlen:
                del ordered[bisect_left(ordered, window[0])]
            window.append(loss)
            insort(ordered, loss)
        self._spikes_total += spikes

    def _judge_evaluation(self, value: float, step: int | None) -> None:
        """EarlyStopping's rule: improvement means beating the best by more than min_delta."""
        self._evals_total += 1
        self._last_monitored = value
        if not math.isfinite(value):
            self._evals_since_best += 1
            return
        if self._best is None:
            improved = True
        elif self.settings.mode == "max":
            improved = value > self._best + self.settings.min_delta
        else:
            improved = value < self._best - self.settings.min_delta
        if improved:
            self._best, self._best_step, self._evals_since_best = value, step, 0
            if self._keep_history:
                self._best_history.append((step, value))
        else:
            self._evals_since_best += 1

    # -- reading ---------------------------------------------------------------------------

    def _steps_per_second(self) -> float | None:
        """Step rate over the recent advances (the last few minutes of them, at most 64)."""
        if len(self._advances) < 2:
            return None
        t1, s1 = self._advances[-1]
        recent = [(t, s) for t, s in self._advances if t >= t1 - RATE_WINDOW_SECONDS]
        t0, s0 = recent[0]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                values=dict(self._values),
                extra=dict(self._extra),
                step=self._step,
                last_progress_time=self._last_progress_time,
                last_record_time=self._last_record_time,
                steps_per_second=self._steps_per_second(),
                max_steps=self._max_steps if self._max_steps is not None
                else (float(self._progress[1]) if self._progress and not self._seen_explicit_step else None),
                progress_done=self._progress[0] if self._progress else None,
                progress_total=self._progress[1] if self._progress else None,
                nonfinite=dict(self._nonfinite),
                records=dict(self._records),
                events=dict(self._events),
                best=self._best,
                best_step=self._best_step,
                evals_since_best=self._evals_since_best,
                evals_total=self._evals_total,
                last_monitored=self._last_monitored,
                loss_baseline=_median(self._recent_sorted) if self._recent_sorted else None,
                spikes_total=self._spikes_total,
                dropped_keys_total=self._dropped_keys_total,
                meta_numbers=dict(self._meta_numbers),
                meta_strings=dict(self._meta_strings),
                nonfinite_steps=list(self._nonfinite_steps),
                best_history=list(self._best_history),
                key_counts=dict(self._key_counts),
            )


def _rising(steps: list[int], after: int | None) -> bool:
    """Each step above the one before it, the first above ``after``."""
    previous = after
    for step in steps:
        if previous is not None and step <= previous:
            return False
        previous = step
    return True


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
