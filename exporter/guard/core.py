"""The guard: watches the training states, and when a rule holds (or an alert about this run
arrives through the webhook) acts on the training process: a signal, or a command.

What makes it safe to leave on:

- It acts only on the process the finder found (PID file, command line or GPU), alive, and
  started before the first event the finding rests on: a job restarted after a NaN is not
  stopped for its predecessor's NaN.
- At most once per rule and run; the run is the process, by PID and start time.
- Never on the backlog: until every log has been read to its end once, the guard only watches;
  what the logs said by then is each source's first reading, and rules judge only what changes
  after it. ``act_on_backlog`` makes the backlog count as changes.
- Never because of a line it did not understand: rules read parsed values only (rules.py).
- Every action, and every dry-run decision, is a warning in the log and a count in
  ``training_guard_actions_total{rule,action}``; a rule that held but found no process it may
  act on is a count in ``training_guard_skipped_total{rule,reason}`` and a rate-limited warning.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable

import psutil

from ..config import GuardConfig
from ..hardware.process import ProcessFinder, started_at
from ..logs.formats.base import Kind
from ..ratelimited import RateLimitedLog
from ..training.signals import SignalSettings, SourceState
from ..training.states import TrainingStates
from ..training.vocabulary import Vocabulary
from .actions import CommandAction, SignalAction
from .rules import NOTHING, Diverging, Finding, NonFinite, Reading, SourceRule, SourceRuleFactory, Stalled, \
    loss_plateau, validation_plateau
from .webhook import PayloadError, about_run, firing_alerts

log = logging.getLogger(__name__)

# How often the states are looked at, each look after the follower has read what was written
# before it: a NaN line is acted on within this of being written. A look costs a snapshot of each source (about 20 µs for
# a Hugging Face log), so five a second keep even a thousand ranks' states under a core's 10%.
INTERVAL_SECONDS = 0.2
WEBHOOK = "webhook"  # the rule name of actions asked for through the webhook


class _Watched:
    """A source (rank) as the guard last saw it, with its rules."""

    __slots__ = ("state", "reading", "rules")

    def __init__(self, state: SourceState, first: Reading, rules: list[SourceRule]) -> None:
        self.state, self.reading, self.rules = state, first, rules


def source_rules(config: GuardConfig, signals: SignalSettings, vocabulary: Vocabulary) -> dict[str, SourceRuleFactory]:
    """The configured rules judged per source, by name: each makes a source's rule from its first reading."""
    rules = config.rules
    factories: dict[str, SourceRuleFactory] = {}
    if rules.nonfinite is not None:
        # The names NaNs are counted under: `eval_loss` is the validation loss.
        keys = tuple(dict.fromkeys(vocabulary.name(key, Kind.TRAIN) for key in rules.nonfinite.keys if key.strip()))
        count = rules.nonfinite.count
        factories[NonFinite.name] = lambda first: NonFinite(keys, count)
    if rules.validation_plateau is not None:
        factories["validation_plateau"] = lambda first: validation_plateau(signals.patience)
    if rules.loss_plateau is not None:
        factories["loss_plateau"] = lambda first: loss_plateau(signals.loss_patience)
    if rules.diverging is not None:
        ratio = rules.diverging.ratio
        factories[Diverging.name] = lambda first: Diverging(ratio, first)
    return factories


class Guard:
    def __init__(self, config: GuardConfig, signals: SignalSettings, states: TrainingStates,
                 finder: ProcessFinder, is_ready: Callable[[], bool], interval: float = INTERVAL_SECONDS,
                 catch_up: Callable[[], None] | None = None) -> None:
        self.config = config
        self.states, self.finder, self.is_ready, self.interval = states, finder, is_ready, interval
        self.catch_up = catch_up  # reads what the logs said up to now, before each look
        self.action = (CommandAction(config.command, config.command_timeout_seconds) if config.command
                       else SignalAction(config.signal or "SIGINT"))
        self.action_label = "dry_run" if config.dry_run else self.action.label
        self._factories = source_rules(config, signals, states.vocabulary)
        self._stalled = Stalled(config.rules.stalled.seconds) if config.rules.stalled is not None else None
        names = list(self._factories)
        names += [Stalled.name] if self._stalled else []
        names += [WEBHOOK] if config.webhook is not None else []
        self.rule_names = tuple(names)
        self._watched: dict[int, _Watched] = {}  # by id() of the state
        self._watching_since: float | None = None
        self._acted: set[tuple[str, int, float]] = set()  # (rule, PID, start time)
        self._lock = threading.RLock()  # acting and the counts: the loop, HTTP threads, commands
        self._actions = {(rule, self.action_label): 0 for rule in self.rule_names}
        self._errors = dict(self._actions)
        self._skipped: dict[tuple[str, str], int] = {}
        self._problems = RateLimitedLog(log)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        log.info("guard on: rules %s; action %s%s", ", ".join(self.rule_names), self.action.label,
                 " (dry run: decisions are logged and counted, nothing is done)" if self.config.dry_run else "")
        self._thread = threading.Thread(target=self._run, name="guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.catch_up is not None:
                    self.catch_up()
                self.check()
            except Exception as error:  # noqa: BLE001 - the guard must outlive a surprise
                self._problems.note("guard: error while judging the training states", repr(error), exc_info=True)
            self._problems.flush()

    def check(self, clock: float | None = None) -> None:
        """One look at every source: judge what changed since the last look, act on what holds."""
        clock = time.time() if clock is None else clock
        backlog = self._watching_since is None
        if backlog:
            if not self.is_ready():
                return  # the backlog is being read: nothing in it is an event
            self._watching_since = clock
        findings: list[tuple[Finding, str]] = []
        readings, watched = [], {}
        for entry in self.states.items():
            reading = Reading.of(entry.state.snapshot())
            readings.append(reading)
            seen = self._watched.get(id(entry.state))
            if seen is None or seen.state is not entry.state:
                first = reading if backlog and not self.config.act_on_backlog else NOTHING
                seen = _Watched(entry.state, first, [make(first) for make in self._factories.values()])
            watched[id(entry.state)] = seen
            at = reading.last_record_time if reading.last_record_time is not None else clock
            where = entry.source if entry.rank is None else f"{entry.source} rank {entry.rank}"
            for rule in seen.rules:
                finding = rule.judge(seen.reading, reading, at)
                if finding is not None:
                    findings.append((finding, where))
            seen.reading = reading
        self._watched = watched
        if self._stalled is not None:
            since = 0.0 if self.config.act_on_backlog else self._watching_since
            finding = self._stalled.judge(readings, since, clock)
            if finding is not None:
                findings.append((finding, "the run"))
        for finding, where in findings:
            self.act(finding, where)

    # -- acting -----------------------------------------------------------------------------

    def act(self, finding: Finding, where: str) -> str:
        """Act on the training process for ``finding``, if it may; what was decided, in a word."""
        with self._lock:
            found = self.finder.find()
            proc = found[0] if found is not None else None
            try:
                started, identity = (started_at(proc), proc.create_time()) if proc is not None else (None, None)
            except psutil.Error:  # gone since it was found
                started = identity = None
            if started is None:
                return self._skip(finding, where, "no_process", "no training process is found")
            if (finding.rule, proc.pid, identity) in self._acted:
                return "already_acted"
            if started >= finding.since:
                return self._skip(finding, where, "process_newer",
                                  f"process {proc.pid} started at {_iso(started)}, after what it would be "
                                  f"stopped for ({_iso(finding.since)}): it is not the process that logged it")
            self._acted.add((finding.rule, proc.pid, identity))
            self._actions[(finding.rule, self.action_label)] += 1
            if self.config.dry_run:
                log.warning("guard (dry run): rule %s holds for %s: %s; would %s, and does nothing",
                            finding.rule, where, finding.reason, self.action.describe(proc))
                return "dry_run"
            log.warning("guard: rule %s holds for %s: %s; acting: %s", finding.rule, where, finding.reason,
                        self.action.describe(proc))
            self.action.run(proc, finding, lambda why: self._failed(finding.rule, why))
            return "acted"

    def _skip(self, finding: Finding, where: str, reason: str, detail: str) -> str:
        self._skipped[(finding.rule, reason)] = self._skipped.get((finding.rule, reason), 0) + 1
        self._problems.note(f"guard: rule {finding.rule} holds but the guard does not act ({reason})",
                            f"{where}: {finding.reason}; {detail}")
        return reason

    def _failed(self, rule: str, why: str) -> None:
        with self._lock:
            self._errors[(rule, self.action_label)] += 1
        log.error("guard: rule %s: the action failed: %s", rule, why)

    # -- the webhook ------------------------------------------------------------------------

    def webhook(self, payload) -> tuple[int, dict]:
        """An Alertmanager webhook payload, parsed: (HTTP status, answer) for the server."""
        if self.config.webhook is None:
            return 403, {"error": "the guard's webhook is off (guard.webhook)"}
        try:
            alerts = firing_alerts(payload)
        except PayloadError as error:
            return 400, {"error": str(error)}
        if not alerts:
            return 200, {"outcome": "nothing_firing"}
        match = self.config.webhook.match
        ours = about_run(alerts, match)
        if not ours:
            names = sorted({alert.name for alert in alerts})
            self._problems.note("guard: webhook: refused alerts about another run",
                                f"{', '.join(names)}; this run's alerts carry {match}")
            return 409, {"error": "no firing alert is about this run", "match": match}
        alert = min(ours, key=lambda a: a.starts_at)
        outcome = self.act(Finding(WEBHOOK, f"alert {alert.name} firing since {_iso(alert.starts_at)}",
                                   alert.starts_at), "the run")
        return 200, {"outcome": outcome, "alert": alert.name}

    # -- reading ----------------------------------------------------------------------------

    def counts(self) -> tuple[dict, dict, dict]:
        """Copies of the actions, the failed actions and the skipped findings, by their labels."""
        with self._lock:
            return dict(self._actions), dict(self._errors), dict(self._skipped)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
