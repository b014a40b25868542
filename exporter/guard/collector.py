"""The guard's counts as metric families, and the guard's thread started and stopped with the
other collectors'."""

from __future__ import annotations

from typing import Iterable

from ..collector_base import Collector
from ..family import Family
from .core import Guard


class GuardCollector(Collector):
    name = "guard"

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def start(self) -> None:
        self.guard.start()

    def stop(self) -> None:
        self.guard.stop()

    def collect(self) -> Iterable[Family]:
        actions, errors, skipped = self.guard.counts()
        acted = Family("training_guard_actions", "Times the guard acted on the training process (or, with "
                       "action dry_run, decided it would have), by rule and action.", "counter")
        failed = Family("training_guard_action_errors",
                        "Actions that failed: the signal could not be sent, the command failed or timed out.", "counter")
        held = Family("training_guard_skipped", "Times a rule held but the guard did not act, by reason: no_process "
                      "(no training process found) or process_newer (it started after the events).", "counter")
        for (rule, action), count in sorted(actions.items()):
            acted.add((("rule", rule), ("action", action)), count)
        for (rule, action), count in sorted(errors.items()):
            failed.add((("rule", rule), ("action", action)), count)
        for (rule, reason), count in sorted(skipped.items()):
            held.add((("rule", rule), ("reason", reason)), count)
        return [acted, failed, held]
