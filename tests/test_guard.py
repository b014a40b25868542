"""The guard, in-process: its rules over real training states, and its safety rules around a
real training process (a child process found through its PID file, as in production)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from exporter.config import (DivergenceRuleConfig, GuardConfig, GuardRulesConfig, GuardWebhookConfig,
                             NonFiniteRuleConfig, PlateauRuleConfig, StallRuleConfig)
from exporter.guard.actions import SignalAction
from exporter.guard.collector import GuardCollector
from exporter.guard.core import Guard
from exporter.guard.rules import Finding
from exporter.hardware.process import ProcessFinder
from exporter.logs.formats.base import Kind, Record
from exporter.training.signals import SignalSettings
from exporter.training.states import TrainingStates
from exporter.training.vocabulary import Vocabulary

NAN = float("nan")
SOURCE = "train.log"


class Run:
    """Training states fed by hand, a trainer process, and a guard watching both."""

    def __init__(self, tmp_path: Path, rules: GuardRulesConfig | None = None, signals: SignalSettings | None = None,
                 ready: bool = True, **guard) -> None:
        self.pid_file = tmp_path / "train.pid"
        self.states = TrainingStates(signals or SignalSettings(), Vocabulary())
        self.states.add_source(SOURCE)
        self.ready = ready
        self.trainers: list[subprocess.Popen] = []
        config = GuardConfig(rules=rules or GuardRulesConfig(nonfinite=NonFiniteRuleConfig(keys=["loss"])), **guard)
        self.guard = Guard(config, self.states.settings, self.states, ProcessFinder(pid_file=str(self.pid_file)),
                           is_ready=lambda: self.ready)

    def start_trainer(self) -> subprocess.Popen:
        """A process that sleeps, with Python's own reaction to signals, named by the PID file.
        Its SIGINT handler is set explicitly: Python sets it up only where SIGINT was not ignored
        by whatever started the tests (a shell's background job inherits it ignored)."""
        trainer = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                    "signal.signal(signal.SIGINT, signal.default_int_handler); "
                                    "print('up', flush=True); time.sleep(60)"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.trainers.append(trainer)
        assert trainer.stdout.readline() == "up\n"  # Python's own SIGINT handler is in place
        self.pid_file.write_text(str(trainer.pid))
        return trainer

    def log(self, *records: Record, at: float | None = None, rank: str | None = None) -> None:
        self.states.apply(SOURCE, rank, list(records), time.time() if at is None else at)

    def train(self, loss: float, step: int | None = None, **more: float) -> None:
        self.log(Record(values={"loss": loss, **more}, step=step))

    def counts(self):
        actions, errors, skipped = self.guard.counts()
        return ({k: v for k, v in actions.items() if v}, {k: v for k, v in errors.items() if v}, skipped)

    def close(self) -> None:
        for trainer in self.trainers:
            trainer.kill()
            trainer.wait()


@pytest.fixture
def make_run(tmp_path):
    runs: list[Run] = []

    def make(**kwargs) -> Run:
        run = Run(tmp_path, **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def stopped_by(trainer: subprocess.Popen, sig: signal.Signals, timeout: float = 5.0) -> bool:
    try:
        return trainer.wait(timeout) == -sig
    except subprocess.TimeoutExpired:
        return False


def still_running(trainer: subprocess.Popen) -> bool:
    time.sleep(0.2)
    return trainer.poll() is None


# -- acting, and what it takes ------------------------------------------------------------


def test_a_nan_seen_arriving_stops_the_trainer_with_sigint(make_run):
    run = make_run()
    trainer = run.start_trainer()
    run.guard.check()
    run.train(1.2, step=1)
    run.guard.check()
    assert still_running(trainer)
    run.train(NAN, step=2)
    run.guard.check()
    assert stopped_by(trainer, signal.SIGINT)
    assert run.counts() == ({("nonfinite", "SIGINT"): 1}, {}, {})


def test_the_backlog_is_read_but_not_acted_on(make_run):
    run = make_run(ready=False)
    trainer = run.start_trainer()
    run.train(NAN, step=1)  # in the logs before the exporter had read them to their end
    run.guard.check()
    run.ready = True
    run.guard.check()
    run.train(1.0, step=2)
    run.guard.check()
    assert still_running(trainer)
    run.train(NAN, step=3)  # a new one, seen arriving
    run.guard.check()
    assert stopped_by(trainer, signal.SIGINT)


def test_act_on_backlog_acts_on_what_the_logs_said_before(make_run):
    run = make_run(ready=False, act_on_backlog=True)
    trainer = run.start_trainer()
    run.train(NAN, step=1)
    run.guard.check()
    assert still_running(trainer)  # never while the backlog is still being read
    run.ready = True
    run.guard.check()
    assert stopped_by(trainer, signal.SIGINT)


def test_dry_run_decides_once_per_rule_and_run_and_does_nothing(make_run, caplog):
    run = make_run(dry_run=True, rules=GuardRulesConfig(nonfinite=NonFiniteRuleConfig(keys=["loss"]),
                                                        diverging=DivergenceRuleConfig(ratio=3)))
    trainer = run.start_trainer()
    run.guard.check()
    for step in range(1, 4):
        run.train(NAN, step=step)
        run.guard.check()
    assert still_running(trainer)
    assert run.counts() == ({("nonfinite", "dry_run"): 1}, {}, {})
    decisions = [r.getMessage() for r in caplog.records if "dry run" in r.getMessage()]
    assert decisions == [f"guard (dry run): rule nonfinite holds for {SOURCE}: 1 non-finite value(s) seen, the last "
                         f"of loss; would send SIGINT to process {trainer.pid}, and does nothing"]


def test_once_per_rule_and_run_a_new_run_is_a_new_one(make_run):
    run = make_run(signal="SIGTERM")
    first = run.start_trainer()
    run.guard.check()
    run.train(NAN, step=1)
    run.guard.check()
    assert stopped_by(first, signal.SIGTERM)
    second = run.start_trainer()  # the job restarted: a new run
    run.train(NAN, step=2)
    run.guard.check()
    assert stopped_by(second, signal.SIGTERM)
    assert run.counts()[0] == {("nonfinite", "SIGTERM"): 2}


def test_a_process_started_after_the_event_is_left_alone(make_run):
    run = make_run()
    run.guard.check()
    logged = time.time()
    time.sleep(0.05)  # start times are known to a clock tick (10 ms)
    trainer = run.start_trainer()  # a restarted job, younger than the NaN
    run.log(Record(values={"loss": NAN}, step=1), at=logged)
    run.guard.check()
    assert still_running(trainer)
    assert run.counts() == ({}, {}, {("nonfinite", "process_newer"): 1})


def test_no_process_no_action_and_the_next_event_tries_again(make_run):
    run = make_run()
    run.guard.check()
    run.train(NAN, step=1)
    run.guard.check()
    assert run.counts() == ({}, {}, {("nonfinite", "no_process"): 1})
    trainer = run.start_trainer()
    run.train(NAN, step=2)
    run.guard.check()
    assert stopped_by(trainer, signal.SIGINT)


def test_a_signal_to_a_process_gone_since_it_was_found_is_a_failure():
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    found = psutil.Process(trainer.pid)
    trainer.kill()
    trainer.wait()
    failures: list[str] = []
    SignalAction("SIGINT").run(found, Finding("nonfinite", "a NaN", 0.0), failures.append)
    assert failures == [f"process {trainer.pid} is gone (or its PID was reused)"]


def test_a_signal_the_process_ignores_is_a_failure_not_an_action_that_did_nothing():
    # As `python train.py &` in a batch script starts it: SIGINT ignored, inherited.
    trainer = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert trainer.stdout.readline() == "up\n"
        failures: list[str] = []
        SignalAction("SIGINT").run(psutil.Process(trainer.pid), Finding("nonfinite", "a NaN", 0.0), failures.append)
        assert len(failures) == 1 and f"process {trainer.pid} ignores SIGINT" in failures[0]
        assert still_running(trainer)
        SignalAction("SIGTERM").run(psutil.Process(trainer.pid), Finding("nonfinite", "a NaN", 0.0), failures.append)
        assert stopped_by(trainer, signal.SIGTERM) and len(failures) == 1
    finally:
        trainer.kill()
        trainer.wait()


# -- the rules ----------------------------------------------------------------------------


def test_nonfinite_counts_only_the_chosen_keys_by_their_canonical_names_n_times(make_run):
    run = make_run(dry_run=True, rules=GuardRulesConfig(nonfinite=NonFiniteRuleConfig(keys=["eval_loss"], count=2)))
    run.start_trainer()
    run.guard.check()
    run.train(NAN, step=1, grad_norm=NAN)  # not the chosen key
    run.log(Record(values={"eval_loss": NAN}, kind=Kind.EVAL, step=1))
    run.guard.check()
    assert run.counts()[0] == {}  # one of two
    run.log(Record(values={"val_loss": float("inf")}, kind=Kind.EVAL, step=2))  # the validation loss, too
    run.guard.check()
    assert run.counts()[0] == {("nonfinite", "dry_run"): 1}


def test_the_validation_plateau_holds_at_patience_on_an_evaluation_seen_arriving(make_run):
    run = make_run(dry_run=True, rules=GuardRulesConfig(validation_plateau=PlateauRuleConfig()),
                   signals=SignalSettings(patience=3))
    run.start_trainer()
    run.guard.check()
    for step, eval_loss in enumerate([2.0, 2.1, 2.05], start=1):
        run.log(Record(values={"eval_loss": eval_loss}, kind=Kind.EVAL, step=step))
        run.guard.check()
    assert run.counts()[0] == {}  # two evaluations without improvement
    run.log(Record(values={"eval_loss": 2.0}, kind=Kind.EVAL, step=4))  # not better than 2.0
    run.guard.check()
    assert run.counts()[0] == {("validation_plateau", "dry_run"): 1}


def test_the_loss_plateau_holds_at_loss_patience(make_run):
    run = make_run(dry_run=True, rules=GuardRulesConfig(loss_plateau=PlateauRuleConfig()),
                   signals=SignalSettings(loss_patience=2))
    run.start_trainer()
    run.guard.check()
    for epoch, loss in enumerate([2.0, 1.0, 1.2, 1.1]):
        run.train(loss, step=epoch * 10, epoch=float(epoch))
        run.guard.check()
    assert run.counts()[0] == {}  # epochs 0-2 judged: one without improvement
    run.train(1.0, step=40, epoch=4.0)  # closes epoch 3: the second
    run.guard.check()
    assert run.counts()[0] == {("loss_plateau", "dry_run"): 1}


def test_divergence_is_the_recent_median_rising_over_ratio_times_its_lowest(make_run):
    signals = SignalSettings(spike_window=5)
    run = make_run(dry_run=True, rules=GuardRulesConfig(diverging=DivergenceRuleConfig(ratio=3)), signals=signals)
    run.start_trainer()
    run.guard.check()
    for step, loss in enumerate([2.0, 1.5, 1.0, 1.0, 1.0, 1.0, 50.0, 1.0, 2.0, 2.5], start=1):
        run.train(loss, step=step)  # one wild batch does not move the median
        run.guard.check()
    assert run.counts()[0] == {}
    for step, loss in enumerate([3.5, 4.0, 5.0], start=20):
        run.train(loss, step=step)
        run.guard.check()
    assert run.counts()[0] == {("diverging", "dry_run"): 1}


def test_stalled_counts_from_the_last_step_of_any_rank_and_not_after_the_run_finished(make_run):
    run = make_run(dry_run=True, rules=GuardRulesConfig(stalled=StallRuleConfig(seconds=60)))
    run.start_trainer()
    now = time.time()
    run.log(Record(values={"loss": 1.0}, step=1), at=now, rank="0")
    run.log(Record(values={"loss": 1.0}, step=1), at=now - 600, rank="1")  # a rank that stopped printing
    run.guard.check(clock=now + 1)
    run.guard.check(clock=now + 59)
    assert run.counts()[0] == {}
    run.guard.check(clock=now + 61)
    run.guard.check(clock=now + 62)
    assert run.counts()[0] == {("stalled", "dry_run"): 1}

    finished = make_run(dry_run=True, rules=GuardRulesConfig(stalled=StallRuleConfig(seconds=60)))
    finished.start_trainer()
    finished.log(Record(values={"loss": 1.0}, step=1), at=now)
    finished.guard.check(clock=now + 1)
    finished.log(Record(values={"train_runtime": 12.0}, kind=Kind.SUMMARY), at=now)
    finished.guard.check(clock=now + 600)
    assert finished.counts()[0] == {}


def test_stalled_does_not_count_the_time_before_the_guard_watched(make_run):
    run = make_run(dry_run=True, rules=GuardRulesConfig(stalled=StallRuleConfig(seconds=60)))
    run.start_trainer()
    now = time.time()
    run.log(Record(values={"loss": 1.0}, step=1), at=now - 3600)  # hung an hour before the restart
    run.guard.check(clock=now)
    run.guard.check(clock=now + 30)
    assert run.counts()[0] == {}
    run.guard.check(clock=now + 61)
    assert run.counts()[0] == {("stalled", "dry_run"): 1}


# -- the webhook --------------------------------------------------------------------------


def alert(name: str = "TrainingGPUIdleLong", status: str = "firing", starts: str | None = None,
          **labels: str) -> dict:
    starts = starts or time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime())  # after the trainer started
    return {"status": status, "labels": {"alertname": name, **labels}, "annotations": {}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "f00"}


def payload(*alerts: dict) -> dict:
    return {"version": "4", "status": "firing", "receiver": "guard", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am", "alerts": list(alerts)}


def test_webhook_acts_on_a_firing_alert_about_this_run_only(make_run):
    run = make_run(rules=GuardRulesConfig(), webhook=GuardWebhookConfig(match={"job": "llm-42"}))
    trainer = run.start_trainer()
    assert run.guard.webhook(payload(alert(job="llm-41"))) == (
        409, {"error": "no firing alert is about this run", "match": {"job": "llm-42"}})
    assert run.guard.webhook(payload(alert(status="resolved", job="llm-42"))) == (200, {"outcome": "nothing_firing"})
    assert still_running(trainer)
    assert run.guard.webhook(payload(alert(job="llm-41"), alert(job="llm-42"))) == (
        200, {"outcome": "acted", "alert": "TrainingGPUIdleLong"})
    assert stopped_by(trainer, signal.SIGINT)
    assert run.counts()[0] == {("webhook", "SIGINT"): 1}


def test_webhook_leaves_a_process_younger_than_the_alert_alone(make_run):
    run = make_run(rules=GuardRulesConfig(), webhook=GuardWebhookConfig(match={"job": "llm-42"}))
    trainer = run.start_trainer()
    earlier = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    assert run.guard.webhook(payload(alert(starts=earlier, job="llm-42"))) == (
        200, {"outcome": "process_newer", "alert": "TrainingGPUIdleLong"})
    assert still_running(trainer)


@pytest.mark.parametrize("body, error", [
    ([], "expected Alertmanager's webhook payload"),
    ({"alerts": "x"}, "expected Alertmanager's webhook payload"),
    ({"alerts": [{"status": "firing", "labels": {"job": 1}}]}, "alerts[0].labels"),
    ({"alerts": [{"status": "firing", "labels": {}, "startsAt": "yesterday"}]}, "alerts[0].startsAt"),
    ({"alerts": [{"status": "firing", "labels": {}, "startsAt": "2020-01-01T00:00:00"}]}, "alerts[0].startsAt"),
])
def test_webhook_refuses_what_is_not_alertmanagers_payload(make_run, body, error):
    run = make_run(rules=GuardRulesConfig(), webhook=GuardWebhookConfig(match={"job": "llm-42"}))
    status, answer = run.guard.webhook(body)
    assert status == 400 and answer["error"].startswith(error)


def test_webhook_is_refused_when_not_configured(make_run):
    run = make_run()
    assert run.guard.webhook(payload(alert(job="llm-42")))[0] == 403


# -- the command action and the metrics -----------------------------------------------------


def test_a_command_runs_with_the_finding_in_its_environment(make_run, tmp_path):
    out = tmp_path / "command.out"
    run = make_run(command=f'echo "$TRAINING_GUARD_RULE $TRAINING_GUARD_PID $TRAINING_GUARD_REASON" > {out}')
    trainer = run.start_trainer()
    run.guard.check()
    run.train(NAN, step=1)
    run.guard.check()
    deadline = time.monotonic() + 5
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert out.read_text() == f"nonfinite {trainer.pid} 1 non-finite value(s) seen, the last of loss\n"
    assert still_running(trainer)  # the command, not a signal
    assert run.counts() == ({("nonfinite", "command"): 1}, {}, {})


def test_a_failing_or_hanging_command_is_counted_as_an_error(make_run, caplog):
    for command, why in (("echo no such job >&2; exit 3", "exited with status 3; output: 'no such job'"),
                         ("sleep 30", "ran longer than 0.5 s and was killed")):
        run = make_run(command=command, command_timeout_seconds=0.5)
        run.start_trainer()
        run.guard.check()
        run.train(NAN, step=1)
        run.guard.check()
        deadline = time.monotonic() + 5
        while not run.counts()[1] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.counts()[1] == {("nonfinite", "command"): 1}
        assert any(why in record.getMessage() for record in caplog.records)


def test_the_collector_exports_every_configured_rule_from_zero(make_run):
    run = make_run(rules=GuardRulesConfig(nonfinite=NonFiniteRuleConfig(), stalled=StallRuleConfig()),
                   webhook=GuardWebhookConfig(match={"job": "x"}))
    run.guard.check()
    run.train(NAN, step=1)
    run.guard.check()  # no process: skipped
    families = {family.name: family.series for family in GuardCollector(run.guard).collect()}
    assert families == {
        "training_guard_actions": [((("rule", "nonfinite"), ("action", "SIGINT")), 0.0),
                                   ((("rule", "stalled"), ("action", "SIGINT")), 0.0),
                                   ((("rule", "webhook"), ("action", "SIGINT")), 0.0)],
        "training_guard_action_errors": [((("rule", "nonfinite"), ("action", "SIGINT")), 0.0),
                                         ((("rule", "stalled"), ("action", "SIGINT")), 0.0),
                                         ((("rule", "webhook"), ("action", "SIGINT")), 0.0)],
        "training_guard_skipped": [((("rule", "nonfinite"), ("reason", "no_process")), 1.0)],
    }
