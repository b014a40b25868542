"""The guard end to end: a real exporter process follows the log of a tiny training job (a real
process writing Hugging Face Trainer lines, tests/guard_job.py) and stops it, or rightly does
not; Alertmanager's webhook, with and without credentials."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, ExporterProcess, value, wait_for
from stack import alertmanager_server, prometheus_server, webhook_receiver  # noqa: F401  fixtures
from test_alerts_e2e import fast_rules
from test_security import PASSWORD, PASSWORD_HASH, USER, client_cert, pki, tls_config  # noqa: F401  pki: a fixture

JOB = Path(__file__).resolve().parent / "guard_job.py"
HW_OFF = ("--no-collector.gpu", "--no-collector.host")
WEBHOOK = "/-/guard/alertmanager"


class Job:
    """tests/guard_job.py as a child process; its events (JSON lines) go to a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log, self.pid_file, self.events_file = tmp_path / "train.log", tmp_path / "train.pid", tmp_path / "job.out"
        with open(self.events_file, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(JOB), str(self.log), str(self.pid_file), *args],
                                         stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        wait_for(self.pid_file.exists, 10, "the job never wrote its PID file")

    def events(self) -> dict[str, float]:
        lines = self.events_file.read_text().splitlines()
        return {event["event"]: event["time"] for event in map(json.loads, lines)}

    def wait_for(self, event: str, timeout: float = 20) -> float:
        return wait_for(lambda: self.events().get(event), timeout, f"the job never said {event!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def job(tmp_path):
    started: list[Job] = []

    def start(*args: str) -> Job:
        started.append(Job(tmp_path, *args))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def guarded(exporter_process, job: Job, *flags: str, env: dict | None = None) -> ExporterProcess:
    return exporter_process("--log", str(job.log), "--process.pid-file", str(job.pid_file), *HW_OFF, *flags, env=env)


def test_a_nan_line_stops_the_job_within_a_second(tmp_path, exporter_process, job):
    log = tmp_path / "train.log"
    log.touch()
    exporter = exporter_process("--log", str(log), "--process.pid-file", str(tmp_path / "train.pid"), *HW_OFF,
                                "--guard.on-nonfinite", "loss,grad_norm")
    trainer = job("--steps", "100", "--nan-at", "40")
    written = trainer.wait_for("nan_written")
    stopped = trainer.wait_for("SIGINT", timeout=5)
    assert trainer.proc.wait(5) == 130
    assert stopped - written < 1.0
    assert "steps_done" not in trainer.events()
    metrics = exporter.metrics()
    assert value(metrics, "training_guard_actions_total", rule="nonfinite", action="SIGINT") == 1
    assert value(metrics, "training_guard_action_errors_total", rule="nonfinite", action="SIGINT") == 0
    output = exporter.stop()
    assert (f"guard: rule nonfinite holds for train.log: 1 non-finite value(s) seen, the last of loss; acting: "
            f"send SIGINT to process {trainer.proc.pid}") in output
    print(f"\nNaN line written -> SIGINT received: {stopped - written:.3f} s")


def test_in_dry_run_the_job_runs_on_and_the_decision_is_reported(exporter_process, job):
    trainer = job("--steps", "60", "--nan-at", "30")
    exporter = guarded(exporter_process, trainer, "--guard.on-nonfinite", "loss", "--guard.dry-run")
    trainer.wait_for("steps_done")
    assert trainer.proc.poll() is None
    wait_for(lambda: value(exporter.metrics(), "training_guard_actions_total", rule="nonfinite", action="dry_run") == 1,
             5, "no dry-run decision counted")
    output = exporter.stop()
    assert f"would send SIGINT to process {trainer.proc.pid}, and does nothing" in output


@pytest.mark.parametrize("args, flags, stopped", [
    (("--steps", "60"), ("--guard.on-nonfinite", "loss,grad_norm,validation_loss"), False),  # healthy
    (("--steps", "60", "--growth", "3"), ("--guard.on-nonfinite", "loss,grad_norm"), False),  # diverging, finite
    (("--steps", "60", "--growth", "3"), ("--guard.on-divergence", "3"), True),  # the rule that fits it
], ids=["healthy", "diverging-finite-nan-rule", "diverging-divergence-rule"])
def test_runs_that_are_not_failing_as_the_rules_say_are_not_stopped(exporter_process, job, args, flags, stopped):
    trainer = job(*args, "--interval", "0.03")
    exporter = guarded(exporter_process, trainer, *flags)
    if stopped:
        trainer.wait_for("SIGINT")
        return
    trainer.wait_for("steps_done")
    time.sleep(0.5)
    assert trainer.proc.poll() is None
    metrics = exporter.metrics()
    assert value(metrics, "training_step", source="train.log") is None  # HF console lines: no step
    assert value(metrics, "training_loss", source="train.log") > 0
    assert sum(v for (name, _), v in metrics.items() if name == "training_guard_actions_total") == 0


def test_a_restarted_exporter_does_not_act_on_an_old_nan(tmp_path, exporter_process, job):
    log = tmp_path / "train.log"
    log.write_text("{'loss': 2.1, 'grad_norm': 0.9, 'learning_rate': 1e-05, 'epoch': 0.001}\n"
                   "{'loss': nan, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.002}\n")
    trainer = job("--steps", "300", "--nan-at", "150", "--interval", "0.03")  # the same job, going on
    exporter = guarded(exporter_process, trainer, "--guard.on-nonfinite", "loss")
    assert value(exporter.metrics(), "training_nonfinite_values_total", source="train.log", key="loss") >= 1
    time.sleep(0.5)
    assert trainer.proc.poll() is None, "stopped for the NaN it logged before the exporter started"
    # It is watching all the same: the job's next NaN stops it.
    written = trainer.wait_for("nan_written")
    assert trainer.wait_for("SIGINT", timeout=5) - written < 1.0
    assert value(exporter.metrics(), "training_guard_actions_total", rule="nonfinite", action="SIGINT") == 1


# -- the webhook ----------------------------------------------------------------------------


def alertmanager_payload(job_label: str, status: str = "firing") -> dict:
    starts = time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime())
    return {"version": "4", "groupKey": "{}:{}", "status": status, "receiver": "stop-the-run",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
            "alerts": [{"status": status, "labels": {"alertname": "GPUIdleForLong", "job": job_label},
                        "annotations": {}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus", "fingerprint": "0123456789abcdef"}]}


def test_the_webhook_needs_credentials_and_acts_only_for_this_run(tmp_path, exporter_process, job):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
    trainer = job("--steps", "1000", "--interval", "0.05")
    exporter = ExporterProcess(["--log", str(trainer.log), "--process.pid-file", str(trainer.pid_file), *HW_OFF,
                                "--web.config.file", str(web), "--guard.webhook.match", "job=llm-42"])
    try:
        wait_for(lambda: requests.get(exporter.url + "/-/ready", auth=(USER, PASSWORD), timeout=2).status_code == 200,
                 15, "exporter not ready")
        url = exporter.url + WEBHOOK
        ours, theirs = alertmanager_payload("llm-42"), alertmanager_payload("llm-41")
        assert requests.post(url, json=ours, timeout=5).status_code == 401
        assert requests.post(url, json=ours, auth=(USER, "wrong horse"), timeout=5).status_code == 401
        refused = requests.post(url, json=theirs, auth=(USER, PASSWORD), timeout=5)
        assert refused.status_code == 409
        assert refused.json() == {"error": "no firing alert is about this run", "match": {"job": "llm-42"}}
        resolved = requests.post(url, json=alertmanager_payload("llm-42", "resolved"), auth=(USER, PASSWORD), timeout=5)
        assert resolved.json() == {"outcome": "nothing_firing"}
        for garbage in (b"{not json", b"[" * 100_000, b"\xff\xfe"):
            assert requests.post(url, data=garbage, auth=(USER, PASSWORD), timeout=5).status_code == 400
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:  # 2 MiB announced
            credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            sock.sendall(f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n"
                         f"Content-Length: {2 << 20}\r\n\r\n".encode())
            head = sock.makefile("rb").read().split(b"\r\n\r\n")[0].decode()  # read to the close
        assert head.startswith("HTTP/1.1 400 ") and "Connection: close" in head
        time.sleep(0.3)
        assert trainer.proc.poll() is None
        acted = requests.post(url, json=ours, auth=(USER, PASSWORD), timeout=5)
        assert (acted.status_code, acted.json()) == (200, {"outcome": "acted", "alert": "GPUIdleForLong"})
        trainer.wait_for("SIGINT", timeout=5)
        again = requests.post(url, json=ours, auth=(USER, PASSWORD), timeout=5)
        assert again.json()["outcome"] in ("already_acted", "no_process")  # once per rule and run
        metrics = requests.get(exporter.url + "/metrics", auth=(USER, PASSWORD), timeout=5).text
        assert 'training_guard_actions_total{action="SIGINT",rule="webhook"} 1.0' in metrics
    finally:
        exporter.stop()


def test_a_webhook_without_credentials_configured_stops_the_start(tmp_path):
    log = tmp_path / "train.log"
    log.touch()
    result = subprocess.run([sys.executable, "-m", "exporter", "--log", str(log), "--process.pid-file", "x.pid",
                             "--guard.webhook.match", "job=llm-42"], capture_output=True, text=True, cwd=ROOT,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr == ("training-exporter: error: command line: guard.webhook: needs credentials: a web config "
                             "(web.config_file) with basic_auth_users or client certificates (client_auth_type)\n")


def test_without_the_guard_the_webhook_refuses_everything(tmp_path, exporter_process):
    log = tmp_path / "train.log"
    log.touch()
    exporter = exporter_process("--log", str(log), *HW_OFF, "--no-collector.process")
    answer = requests.post(exporter.url + WEBHOOK, json=alertmanager_payload("llm-42"), timeout=5)
    assert (answer.status_code, answer.json()) == (403, {"error": "the guard is off"})
    other = requests.post(exporter.url + "/metrics", data=b"x", timeout=5)
    assert other.status_code == 405 and other.headers["Allow"] == "GET, HEAD"
    assert requests.get(exporter.url + "/-/healthy", timeout=5).status_code == 200  # still serving


def test_a_verified_client_certificate_is_a_credential(tmp_path, pki, job):  # noqa: F811
    web = tmp_path / "web.yml"
    web.write_text(tls_config(pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki / 'ca.crt'}\n"))
    trainer = job("--steps", "1000", "--interval", "0.05")
    exporter = ExporterProcess(["--log", str(trainer.log), "--process.pid-file", str(trainer.pid_file), *HW_OFF,
                                "--web.config.file", str(web), "--guard.webhook.match", "job=llm-42"])
    https, ca = f"https://127.0.0.1:{exporter.port}", str(pki / "ca.crt")
    try:
        wait_for(lambda: requests.get(https + "/-/ready", verify=ca, timeout=2).status_code == 200, 15,
                 "exporter not ready")
        anonymous = requests.post(https + WEBHOOK, json=alertmanager_payload("llm-42"), verify=ca, timeout=5)
        assert anonymous.status_code == 403
        assert anonymous.json() == {"error": "the guard's webhook needs basic auth or a verified client certificate"}
        assert trainer.proc.poll() is None
        acted = requests.post(https + WEBHOOK, json=alertmanager_payload("llm-42"), verify=ca,
                              cert=client_cert(pki, "client"), timeout=5)
        assert acted.json() == {"outcome": "acted", "alert": "GPUIdleForLong"}
        trainer.wait_for("SIGINT", timeout=5)
    finally:
        exporter.stop()


# -- the whole loop -------------------------------------------------------------------------


def test_a_prometheus_rule_stops_the_run_through_alertmanager_and_the_people_are_told(
        tmp_path, job, alertmanager_server, prometheus_server, webhook_receiver):  # noqa: F811
    """A rule of the user's own fires in Prometheus; Alertmanager posts it, with basic auth, to the
    exporter of its run, whose guard stops the job; TrainingGuardActed reaches the people."""
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
    trainer = job("--steps", "3000", "--interval", "0.05", "--growth", "1.0001")  # the loss stays near 2
    exporter = ExporterProcess(["--log", str(trainer.log), "--process.pid-file", str(trainer.pid_file), *HW_OFF,
                                "--web.config.file", str(web), "--guard.webhook.match", "job=llm-42"])
    rules = tmp_path / "rules.yml"
    rules.write_text(open(fast_rules(tmp_path)).read().replace("groups:\n", "groups:\n- name: users-own\n  rules:\n"
                     "  - alert: TrainingLossTooHigh\n    expr: training_loss > 1\n"
                     "    labels: {severity: critical}\n", 1))
    try:
        wait_for(lambda: requests.get(exporter.url + "/-/ready", auth=(USER, PASSWORD), timeout=2).status_code == 200,
                 15, "exporter not ready")
        stop_the_run = {"name": "stop-the-run", "webhook_configs": [{
            "url": exporter.url + WEBHOOK, "send_resolved": False,
            "http_config": {"basic_auth": {"username": USER, "password": PASSWORD}}}]}
        alertmanager = alertmanager_server(webhook_receiver.url, receivers=[stop_the_run],
                                           routes=[{"matchers": ['alertname="TrainingLossTooHigh"'],
                                                    "receiver": "stop-the-run"}])
        prometheus_server([f"127.0.0.1:{exporter.port}"], job="llm-42", rule_files=[rules],
                                       alertmanager_url=alertmanager.url, basic_auth=(USER, PASSWORD))
        trainer.wait_for("SIGINT", timeout=40)
        told = webhook_receiver.wait_for_alert("TrainingGuardActed", timeout=30)
        instance = f"127.0.0.1:{exporter.port}"
        assert told.labels == {"alertname": "TrainingGuardActed", "severity": "warning", "rule": "webhook",
                               "action": "SIGINT", "instance": instance, "job": "llm-42"}
        assert told.annotations["description"] == (
            f"The guard on {instance} acted on the training process for rule webhook: SIGINT (1 time(s) in the "
            "last 1m); the exporter's log says why and which process.")
    finally:
        output = exporter.stop()
    assert ("guard: rule webhook holds for the run: alert TrainingLossTooHigh firing since" in output
            and f"acting: send SIGINT to process {trainer.proc.pid}" in output), output
