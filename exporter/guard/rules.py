"""The guard's rules: when what the logs said means the run is failing.

A rule reads a source's training state as the guard takes it, a ``Reading`` at a time, and says
what changed since the previous one: it never judges a state as it stands, only what the guard
saw arrive. What the logs said before the guard began watching (the backlog a restarted exporter
reads again) is the first reading, never a change. A rule that holds returns a ``Finding``: its
name, what it saw in words, and since when the events it rests on happened, so that the guard
acts only on a process that was already running then.

Rules read only what the exporter understood: values of records a dialect parsed. A line no
dialect read changes no reading, so it can never make a rule hold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..training.signals import Snapshot


@dataclass(frozen=True)
class Reading:
    """What the rules read of one source's state at one moment."""

    nonfinite: dict[str, int]
    evals_total: int
    evals_since_best: int
    loss_epochs_total: int
    loss_epochs_since_best: int
    loss_baseline: float | None
    last_progress_time: float | None
    last_record_time: float | None
    finished: bool  # the end-of-run summary was logged

    @classmethod
    def of(cls, snap: Snapshot) -> Reading:
        return cls(snap.nonfinite, snap.evals_total, snap.evals_since_best, snap.loss_epochs_total,
                   snap.loss_epochs_since_best, snap.loss_baseline, snap.last_progress_time,
                   snap.last_record_time, snap.records.get("summary", 0) > 0)


NOTHING = Reading({}, 0, 0, 0, 0, None, None, None, False)  # a source that has said nothing yet


@dataclass(frozen=True)
class Finding:
    rule: str
    reason: str  # what the guard saw, for its log line and the command's environment
    since: float  # Unix time of the first event it rests on: the process acted on must be older


class NonFinite:
    """``count`` NaN or infinite values of the chosen keys, seen arrive in one source."""

    name = "nonfinite"

    def __init__(self, keys: tuple[str, ...], count: int) -> None:
        self.keys, self.count = keys, count
        self.times: deque[float] = deque(maxlen=count)  # when the latest ones arrived

    def judge(self, before: Reading, now: Reading, at: float) -> Finding | None:
        new = sum(now.nonfinite.get(key, 0) - before.nonfinite.get(key, 0) for key in self.keys)
        if new <= 0:
            return None
        self.times.extend([at] * min(new, self.count))
        if len(self.times) < self.count:
            return None
        keys = ", ".join(key for key in self.keys if now.nonfinite.get(key, 0) > before.nonfinite.get(key, 0))
        return Finding(self.name, f"{self.count} non-finite value(s) seen, the last of {keys}", self.times[0])


class Plateau:
    """A judgement arrived (an evaluation, an epoch's best training loss) and the value has not
    improved for ``patience`` of them: the exporter's own plateau rules, as the alerts read them.
    ``judged`` and ``since_best`` name the Reading's counts."""

    def __init__(self, name: str, what: str, unit: str, judged: str, since_best: str, patience: int) -> None:
        self.name, self.what, self.unit = name, what, unit
        self.judged, self.since_best, self.patience = judged, since_best, patience

    def judge(self, before: Reading, now: Reading, at: float) -> Finding | None:
        since = getattr(now, self.since_best)
        if getattr(now, self.judged) > getattr(before, self.judged) and since >= self.patience:
            return Finding(self.name, f"{self.what} has not improved for {since} {self.unit} "
                                      f"(patience {self.patience})", at)
        return None


def validation_plateau(patience: int) -> Plateau:
    """TrainingValidationPlateau's rule: ``signals.patience`` evaluations without improvement."""
    return Plateau("validation_plateau", "the monitored validation value", "evaluations", "evals_total",
                   "evals_since_best", patience)


def loss_plateau(patience: int) -> Plateau:
    """TrainingLossPlateau's rule: ``signals.loss_patience`` epochs without improvement."""
    return Plateau("loss_plateau", "the training loss", "epochs", "loss_epochs_total", "loss_epochs_since_best",
                   patience)


class Diverging:
    """The median of the recent finite training losses (the spike baseline, which one wild batch
    does not move) has risen to more than ``ratio`` times the lowest it has been."""

    name = "diverging"

    def __init__(self, ratio: float, first: Reading) -> None:
        self.ratio = ratio
        self.lowest = first.loss_baseline  # the backlog's level counts as seen, its history does not

    def judge(self, before: Reading, now: Reading, at: float) -> Finding | None:
        median = now.loss_baseline
        if median is None or median - median or median == before.loss_baseline:
            return None
        if self.lowest is None or median < self.lowest:
            self.lowest = median
        if self.lowest > 0 and median > self.ratio * self.lowest:
            return Finding(self.name, f"median training loss {median:.4g} is over {self.ratio:g} times "
                                      f"its lowest, {self.lowest:.4g}", at)
        return None


SourceRule = NonFinite | Plateau | Diverging
# Makes a source's rule from the source's first reading.
SourceRuleFactory = Callable[[Reading], SourceRule]


class Stalled:
    """No source of the run has advanced a step for ``seconds`` and the run has not finished.
    Judged over every source together: one rank that stops printing is not a stalled run. Time
    before the guard began watching does not count unless the backlog does."""

    name = "stalled"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reported: float | None = None  # the stall already found, by when it began

    def judge(self, readings: list[Reading], watching_since: float, clock: float) -> Finding | None:
        progress = [r.last_progress_time for r in readings if r.last_progress_time is not None]
        if not progress or any(r.finished for r in readings):
            return None
        since = max(max(progress), watching_since)
        if clock - since < self.seconds or self.reported == since:
            return None
        self.reported = since
        return Finding(self.name, f"no step for {clock - since:.0f} s", since)
