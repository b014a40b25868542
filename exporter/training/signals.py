"""Training semantics, per source: best-so-far, patience, non-finite values, spikes, progress.

Knows nothing of files or Prometheus. Records go in through ``SourceState.apply_all`` with the
time they were observed; the collector reads a ``snapshot`` at scrape time.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Mapping

from ..logs.formats.base import Event, Kind, Record
from .vocabulary import Vocabulary, normalise

# Canonical values that have a dedicated metric; every other key goes to the generic gauge.
DEDICATED = ("loss", "validation_loss", "learning_rate", "grad_norm", "epoch",
             "tokens_per_second", "samples_per_second", "loss_scale")

_DEDICATED_SET = frozenset(DEDICATED)
_TRAIN, _EVAL, _SUMMARY = Kind.TRAIN, Kind.EVAL, Kind.SUMMARY
MAX_META_STRING = 64
RATE_WINDOW_SECONDS = 300.0
MAX_HISTORY = 10_000  # NaN steps an offline inspection keeps
MAX_PLANS = 64  # key sets per kind whose names are remembered
MAX_META_SEEN = 1000
_UNSEEN = object()
MAX_PLAN_KEY_CHARS = 4096


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
    loss_patience: int = 5  # epochs whose best training loss did not improve that make a loss plateau
    loss_min_delta: float = 0.0  # an epoch's best training loss must beat the best by more than this
    loss_window_steps: int = 1000  # where the log says no epoch, this many steps count as one


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
    loss_best: float | None = None  # the lowest of the epochs' best training losses
    loss_epochs_since_best: int = 0
    loss_epochs_total: int = 0  # epochs (or windows of steps) judged


class _Plan:
    """What the state does with the values of a record whose keys it has met before: the name
    of each key, in order, and which keys hold the loss and the monitored value. A log repeats a
    few key sets for its whole length, so a record's keys are looked up once, not once each.

    The plan also holds the values of the latest record of its key set (``last``, the record's
    own mapping, and ``seq``, when it came): the latest value of each name is worked out when a
    snapshot is taken, not at every record.
    """

    __slots__ = ("names", "loss", "epoch", "monitor", "dropped", "last", "seq")

    def __init__(self, keys: tuple[str, ...], names: tuple[str, ...], monitor: str, dropped: int) -> None:
        self.names = names
        by_name = dict(zip(names, keys))  # the last key of each name wins, as in a dict update
        self.loss = by_name.get("loss")
        self.epoch = by_name.get("epoch")
        self.monitor = by_name.get(monitor)
        self.dropped = dropped  # names over the cap: each record of these keys drops them again
        self.last: Mapping[str, float] | None = None
        self.seq = 0


class SourceState:
    """Everything one log source has said so far, turned into training signals."""

    def __init__(self, settings: SignalSettings, vocabulary: Vocabulary, keep_history: bool = False) -> None:
        self.settings = settings
        self.vocabulary = vocabulary
        self._lock = threading.Lock()
        # The latest values: each plan holds its key set's latest record; _latest holds the values
        # set one by one (the summary's, and those of key sets not kept as plans). Every value is
        # numbered (_seq) so that a snapshot can tell which is the latest of a name.
        self._latest: dict[str, float] = {}
        self._latest_seq: dict[str, int] = {}
        self._seq = 0
        self._kept: set[str] = set()  # the names kept beside the dedicated ones, max_keys at most
        # One per kind, by the kind's value: an Enum member hashes in Python, its value in C.
        self._plans: dict[str, dict[tuple[str, ...], _Plan]] = {kind.value: {} for kind in Kind}
        self._step: int | None = None
        self._highest_step: int | None = None
        self._seen_explicit_step = False
        self._last_progress_time: float | None = None
        self._last_record_time: float | None = None
        self._advances: deque[tuple[float, int]] = deque(maxlen=64)
        self._max_steps: float | None = None
        self._progress: tuple[int, int] | None = None
        self._nonfinite: dict[str, int] = {}
        self._nonfinite_at: dict[str, int] = {}  # the explicit step of each key's last NaN
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
        self._loss_plateau = LossPlateau(settings)
        self._dropped_keys_total = 0
        self._meta_numbers: dict[str, float] = {}
        self._meta_strings: dict[str, str] = {}
        self._meta_seen: dict[str, float | str] = {}  # raw meta key -> the value last applied
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
        self.apply_all((record,), observed_at)

    def apply_all(self, records, observed_at: float) -> None:
        """Fold records into the state in order, under one acquisition of the lock."""
        with self._lock:
            for record in records:
                self._apply(record, record.wall_time if record.wall_time is not None else observed_at)

    def _apply(self, record: Record, when: float) -> None:
        step = record.step
        replay = False
        if self._replay_through is not None and step is not None:
            if step <= self._replay_through:
                replay = True
            else:
                self._replay_through = None  # past the old end: counting resumes

        if record.event is not None:
            if not replay:
                # An Enum member's _value_ is a plain attribute; .value goes through a descriptor.
                self._events[record.event._value_] += 1
            return
        self._last_record_time = when
        kind, values = record.kind, record.values
        if not replay and (values or kind is _SUMMARY):
            self._records[kind._value_] += 1
        if record.meta:
            seen = self._meta_seen
            for key, value in record.meta.items():
                # Megatron repeats max_steps on every line: a fact kept already is not set again.
                if seen.get(key, _UNSEEN) != value and self._set_meta(key, value) and len(seen) < MAX_META_SEEN:
                    seen[key] = value
        progress = record.progress
        # Evaluation bars run beside the training bar; the training bar is the longest one.
        if progress is not None and (self._progress is None or progress[1] >= self._progress[1]):
            self._progress = progress
            if not self._seen_explicit_step:
                self._advance(progress[0], when)

        if kind is _SUMMARY:
            # End-of-run aggregates (an average train_loss) must not pose as the current loss,
            # but a NaN among them was logged like any other and is counted under its own name.
            self._seq += 1
            for key, value in values.items():
                name = normalise("summary_" + key)
                self._set_latest(name, value)
                if value - value and not replay:
                    self._count_nonfinite(name, step)
            return
        if step is not None:
            self._seen_explicit_step = True
            self._advance(step, when)
        elif kind is _TRAIN and values and not self._seen_explicit_step and self._progress is None:
            # A dialect without steps and without a progress bar: each train line is progress.
            self._last_progress_time = when
        if values:
            self._apply_values(kind, values, step, replay)

    def _apply_values(self, kind: Kind, values: Mapping[str, float], step: int | None, replay: bool) -> None:
        plans = self._plans[kind._value_]
        keys = tuple(values)
        plan = plans.get(keys)
        self._seq += 1
        if plan is None:
            plan = self._plan(keys, kind)
            # A log that invents key sets, or keys of any length, is read all the same, by the
            # long way: only a few plans of ordinary keys are kept.
            if len(plans) < MAX_PLANS and sum(map(len, keys)) <= MAX_PLAN_KEY_CHARS:
                plans[keys] = plan
            else:
                latest, seqs, kept = self._latest, self._latest_seq, self._kept
                for name, number in zip(plan.names, values.values()):
                    if name in _DEDICATED_SET or name in kept:
                        latest[name], seqs[name] = number, self._seq
        plan.last, plan.seq = values, self._seq
        if plan.dropped:
            self._dropped_keys_total += plan.dropped
        numbers = values.values()
        total = sum(numbers)
        if total - total and not replay:  # some value is NaN or infinite (x - x is 0.0 for finite x)
            for name, number in zip(plan.names, numbers):
                if number - number:
                    self._count_nonfinite(name, step)
        if self._keep_history:
            counts, room = self._key_counts, self.settings.max_keys + len(DEDICATED)
            for name in plan.names:
                if name in counts or len(counts) < room:
                    counts[name] = counts.get(name, 0) + 1
        if replay:
            return
        if plan.loss is not None and kind is _TRAIN:
            self._judge_spike(values[plan.loss])
            self._loss_plateau.add(values[plan.loss], values[plan.epoch] if plan.epoch is not None else None,
                                   step if step is not None else self._step)
        if plan.monitor is not None and kind is _EVAL:
            self._judge_evaluation(values[plan.monitor], step if step is not None else self._step)

    def _plan(self, keys: tuple[str, ...], kind: Kind) -> _Plan:
        """The plan of a new key set; its names beyond the cap are left out of the latest values."""
        name = self.vocabulary.name
        names = tuple(name(key, kind) for key in keys)
        dropped, kept = 0, self._kept
        for one in names:
            if one not in _DEDICATED_SET and one not in kept:
                if len(kept) < self.settings.max_keys:
                    kept.add(one)
                else:
                    dropped += 1
        monitor = self.settings.monitor
        return _Plan(keys, names, monitor if monitor in _DEDICATED_SET or monitor in kept else "", dropped)

    def _advance(self, step: int, when: float) -> None:
        """The step the log is at now: progress when it moved up; a resume from an earlier
        checkpoint when it moved down, which makes the old step rate moot."""
        if self._step is None or step > self._step:
            self._last_progress_time = when
            self._advances.append((when, step))
        elif step < self._step:
            self._advances.clear()
        self._step = step
        if self._highest_step is None or step > self._highest_step:
            self._highest_step = step

    def _count_nonfinite(self, name: str, step: int | None) -> None:
        # One NaN per key and logged step: a progress bar redrawn beside its step line (torchtune)
        # says the same NaN twice. A record without a step of its own is never the same as another.
        if step is not None:
            if self._nonfinite_at.get(name) == step:
                return
        if not self._admit(self._nonfinite, name):
            return
        self._nonfinite[name] = self._nonfinite.get(name, 0) + 1
        if step is not None:
            self._nonfinite_at[name] = step
        if self._keep_history and len(self._nonfinite_steps) < MAX_HISTORY:
            self._nonfinite_steps.append((step if step is not None else self._step, name))

    def _admit(self, names: Collection[str], name: str, taken: int | None = None) -> bool:
        """Whether ``name`` may be kept in ``names``: it is there already, or fewer than max_keys
        names are (``taken`` of them, where not all of ``names`` count). A name turned away is
        counted as dropped."""
        if name in names or (len(names) if taken is None else taken) < self.settings.max_keys:
            return True
        self._dropped_keys_total += 1
        return False

    def _set_latest(self, name: str, value: float) -> None:
        if name in _DEDICATED_SET or name in self._kept or self._admit(self._kept, name):
            if name not in _DEDICATED_SET:
                self._kept.add(name)
            self._latest[name] = value
            self._latest_seq[name] = self._seq

    def _set_meta(self, key: str, value: float | str) -> bool:
        """Keep a run fact; False when it is not kept (not a number or a short text, or over
        the cap)."""
        name = normalise(key)
        if name == "max_steps" and isinstance(value, (int, float)) and value > 0:
            self._max_steps = float(value)
        if isinstance(value, (bool, int, float)):
            target: dict = self._meta_numbers
            value = float(value)
        elif isinstance(value, str) and value and len(value) <= MAX_META_STRING and value.isprintable():
            target = self._meta_strings
        else:
            return False
        if name in target or self._admit(target, name, len(self._meta_numbers) + len(self._meta_strings)):
            target[name] = value
            return True
        return False

    def _judge_spike(self, loss: float) -> None:
        """A training loss against the median of the finite losses before it."""
        if loss - loss:  # NaN or an infinity: counted as non-finite, never a spike
            return
        window, ordered, settings = self._recent_losses, self._recent_sorted, self.settings
        if len(window) >= settings.spike_min_points:
            baseline = _median(ordered)
            if baseline > 0 and loss >= settings.spike_factor * baseline:
                self._spikes_total += 1
        if len(window) == window.maxlen:
            del ordered[bisect.bisect_left(ordered, window[0])]
        window.append(loss)
        bisect.insort(ordered, loss)

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

    def _latest_values(self) -> dict[str, float]:
        """The latest value of every name kept: of the values set one by one and the plans'
        latest records, the one numbered last."""
        latest, seqs, kept = dict(self._latest), dict(self._latest_seq), self._kept
        for plans in self._plans.values():
            for plan in plans.values():
                if plan.last is None:
                    continue
                seq = plan.seq
                for name, value in zip(plan.names, plan.last.values()):
                    if seqs.get(name, -1) < seq and (name in _DEDICATED_SET or name in kept):
                        latest[name], seqs[name] = value, seq
        return latest

    def snapshot(self) -> Snapshot:
        with self._lock:
            latest = self._latest_values()
            return Snapshot(
                values={name: value for name, value in latest.items() if name in _DEDICATED_SET},
                extra={name: value for name, value in latest.items() if name not in _DEDICATED_SET},
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
                loss_best=self._loss_plateau.best,
                loss_epochs_since_best=self._loss_plateau.since_best,
                loss_epochs_total=self._loss_plateau.judged,
            )


class LossPlateau:
    """A training loss that stopped improving: the best (lowest) training loss of each epoch
    against the best of the epochs before it, by more than ``loss_min_delta``; the epochs since
    it last improved make the plateau once they reach ``loss_patience``.

    Training losses are noisy from batch to batch, so an epoch is judged by its best loss, and
    only once it is over (a loss of a later epoch arrives). Where the log says no epoch, each
    window of ``loss_window_steps`` steps counts as one (and each training loss as a step where
    the log says no step either). Kept apart from the validation plateau: a training loss that
    stops falling means underfitting or a learning rate decayed to nothing, not overfitting.
    """

    __slots__ = ("min_delta", "window", "losses", "by_epoch", "period", "period_best", "best", "since_best",
                 "judged")

    def __init__(self, settings: SignalSettings) -> None:
        self.min_delta = settings.loss_min_delta
        self.window = settings.loss_window_steps
        self.losses = 0  # training losses seen without a step: the steps of a log without steps
        self.by_epoch = False  # the log gives epochs: they, not windows of steps, are judged
        self.period: int | None = None  # the epoch (or window of steps) being gathered
        self.period_best = math.inf  # its lowest finite loss so far
        self.best: float | None = None
        self.since_best = 0
        self.judged = 0

    def add(self, loss: float, epoch: float | None, step: int | None) -> None:
        period: int | None
        if epoch is not None and not epoch - epoch:  # finite
            period = int(epoch)
            self.by_epoch = True
        elif self.by_epoch:  # a line without the epoch in a log that gives it: the current one
            period = self.period
        elif step is not None:
            period = step // self.window
        else:
            self.losses += 1
            period = self.losses // self.window
        if period != self.period:
            if self.period is not None:
                self._judge()
            self.period, self.period_best = period, math.inf
        if -math.inf < loss < self.period_best:  # never NaN, nor an infinity
            self.period_best = loss

    def _judge(self) -> None:
        """The epoch just over: an improvement, or one more epoch without (also when every loss
        of it was NaN or infinite)."""
        self.judged += 1
        best = self.period_best
        if best < math.inf and (self.best is None or best < self.best - self.min_delta):
            self.best, self.since_best = best, 0
        else:
            self.since_best += 1


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
