"""The project's alert rules, end to end: a log written line by line as a trainer writes it, a
real exporter (GPUs from the fake NVML), a real Prometheus evaluating the rules, a real
Alertmanager delivering to a webhook. Bad runs must page with the right labels and annotations;
a healthy run must deliver nothing.

The rules are rendered by alert_rules/build.py from the committed definitions with every
duration shortened (the thresholds file is the one place they change), so a test takes seconds
instead of the production defaults' minutes.
"""

from __future__ import annotations

import json
import os
import time

from conftest import FAKE_NVML_DIR, ROOT, load_script
from stack import alertmanager_server, prometheus_server, webhook_receiver  # noqa: F401  fixtures

GIB = 1024**3
RUNBOOKS = "https://github.com/training-exporter/training-exporter/blob/main/docs/runbooks.md"

# Production durations shortened for a test; the expressions are the committed ones.
FAST = {
    "event_window": "1m", "overfit_for": "5s", "divergence_for": "5s", "grad_norm_for": "5s",
    "gpu_memory_full_for": "3s", "gpu_memory_fill_lookback": "30s", "gpu_memory_fill_for": "3s",
    "memory_near_limit_for": "3s", "memory_fill_lookback": "30s", "memory_fill_for": "3s",
    "gpu_idle_window": "5s", "gpu_idle_for": "3s", "stall_for": "3s", "log_stale_seconds": 60,
    "log_stale_for": "3s", "target_down_for": "3s", "collector_failing_for": "5s", "log_missing_for": "5s",
    "parse_errors_window": "1m", "thermal_throttle_for": "3s", "power_throttle_for": "3s", "gpu_lost_for": "3s",
}


def fast_rules(tmp_path) -> str:
    build = load_script(ROOT / "alert_rules" / "build.py", "alert_rules_build")
    thresholds = {**build.load_thresholds(), **FAST}
    path = tmp_path / "rules.yml"
    path.write_text(build.render_rules_file(thresholds))
    return str(path)


def gpu(index: int, util: int, used_gib: int) -> dict:
    return {
        "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{index:08x}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "utilization": {"gpu": util, "memory": 40},
        "memory": {"total": 80 * GIB, "used": used_gib * GIB, "free": (80 - used_gib) * GIB},
        "power_mw": 500_000, "power_limit_mw": 700_000, "energy_mj": 10**9, "temperature": 60,
        "clocks_mhz": {"sm": 1980, "mem": 2619}, "clock_event_reasons": 0,
    }


def write_scenario(path, gpus: list[dict]) -> None:
    temporary = str(path) + ".tmp"
    with open(temporary, "w") as handle:
        json.dump({"driver_version": "550.54.15", "cuda_version": 12040, "gpus": gpus}, handle)
    os.replace(temporary, path)  # the fake re-reads it on change; never half-written


class Trainer:
    """Writes a Hugging Face Trainer console log (transformers 5), tqdm bars glued with \\r."""

    def __init__(self, path, total: int = 1000) -> None:
        self.path, self.total, self.step = path, total, 0

    def _write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(text)

    def train(self, steps: int, loss: float = 1.5, grad_norm: str = "0.9") -> None:
        for _ in range(steps):
            self.step += 1
            bar = f"\r{self.step * 100 // self.total:3d}%|█         | {self.step}/{self.total} [00:10<03:10,  5.00it/s]"
            self._write(bar + f"\r{' ' * 40}\r{{'loss': '{loss:.4g}', 'grad_norm': '{grad_norm}', "
                              f"'learning_rate': '4.5e-05', 'epoch': '{self.step / 100:.2f}'}}\n")

    def evaluate(self, eval_loss: float) -> None:
        self._write(f"\n{{'eval_loss': '{eval_loss:.4g}', 'eval_runtime': '1.52', "
                    f"'eval_samples_per_second': '336.8', 'epoch': '{self.step / 100:.2f}'}}\n")

    def oom(self) -> None:
        self._write("Traceback (most recent call last):\n  File \"train.py\", line 41, in <module>\n"
                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                    "capacity of 79.11 GiB of which 1.12 GiB is free.\n")


def start_stack(tmp_path, exporter_process, alertmanager_server, prometheus_server, webhook_receiver, gpus):
    scenario = tmp_path / "nvml.json"
    write_scenario(scenario, gpus)
    log = tmp_path / "train.log"
    trainer = Trainer(log)
    trainer.train(5, loss=2.0)
    trainer.evaluate(1.9)
    env = {"FAKE_NVML_SCENARIO": str(scenario),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(FAKE_NVML_DIR), os.environ.get("PYTHONPATH")]))}
    exporter = exporter_process("--log", str(log), "--signals.patience", "3", "--gpu.poll-interval", "0.5",
                                "--no-collector.process", env=env)
    alertmanager = alertmanager_server(webhook_receiver.url)
    prometheus = prometheus_server([f"127.0.0.1:{exporter.port}"], job="training-exporter",
                                   rule_files=[fast_rules(tmp_path)], alertmanager_url=alertmanager.url)
    prometheus.wait_for_target_up(timeout=20)
    return exporter, prometheus, trainer, scenario


def test_bad_run_pages_with_labels_and_annotations(tmp_path, exporter_process, alertmanager_server,
                                                  prometheus_server, webhook_receiver):  # noqa: F811
    exporter, prometheus, trainer, scenario = start_stack(
        tmp_path, exporter_process, alertmanager_server, prometheus_server, webhook_receiver,
        [gpu(0, 92, 40), gpu(1, 90, 40)])
    instance = f"127.0.0.1:{exporter.port}"
    unhealthy = [r["name"] for g in prometheus.rules() for r in g["rules"] if r.get("health") == "err"]
    assert unhealthy == []

    # NaN, hidden the Hugging Face way: the logged loss stays finite, grad_norm is nan.
    written = time.monotonic()
    trainer.train(1, loss=0.0, grad_norm="nan")
    nan = webhook_receiver.wait_for_alert("TrainingNonFiniteValue", timeout=20, key="grad_norm")
    nan_latency = nan.monotonic - written
    assert nan.labels == {"alertname": "TrainingNonFiniteValue", "severity": "critical", "key": "grad_norm",
                          "source": "train.log", "instance": instance, "job": "training-exporter"}
    assert nan.annotations == {
        "summary": "A training value was NaN or infinite.",
        "description": f"grad_norm was NaN or infinite in train.log on {instance} "
                       "(1 non-finite value(s) in the last 1m).",
        "runbook_url": f"{RUNBOOKS}#trainingnonfinitevalue",
    }

    # Plateau: three evaluations without beating 1.9 (patience 3 on the exporter).
    trainer.train(5)
    for eval_loss in (1.95, 1.9, 1.92):
        trainer.evaluate(eval_loss)
    plateau = webhook_receiver.wait_for_alert("TrainingValidationPlateau", timeout=20, source="train.log")
    assert plateau.labels["severity"] == "warning"
    assert plateau.annotations["description"] == (
        f"The monitored validation value of train.log on {instance} has not improved by more than min_delta "
        "for 3 evaluations (the exporter's patience).")

    # OOM risk and an idle GPU: GPU 1 fills its memory and stops working while training goes on.
    write_scenario(scenario, [gpu(0, 92, 40), gpu(1, 3, 78)])
    trainer.train(5)
    full = webhook_receiver.wait_for_alert("TrainingGPUMemoryNearlyFull", timeout=25, gpu="1")
    assert full.labels["severity"] == "warning" and full.labels["uuid"] == "GPU-00000001-0000-0000-0000-000000000000"
    assert full.annotations["description"] == f"GPU 1 on {instance} has used 97.5% of its memory for 3s."
    idle = webhook_receiver.wait_for_alert("TrainingGPUIdle", timeout=25, gpu="1")
    assert idle.labels["severity"] == "warning"
    assert idle.annotations["description"].startswith(f"GPU 1 on {instance} averaged 3% utilisation over 5s")
    assert "Host CPU is" in idle.annotations["description"]  # says whether the job is input-bound
    assert idle.annotations["runbook_url"] == f"{RUNBOOKS}#traininggpuidle"

    # An OOM in the log.
    written = time.monotonic()
    trainer.oom()
    oom = webhook_receiver.wait_for_alert("TrainingOutOfMemory", timeout=20, source="train.log")
    oom_latency = oom.monotonic - written
    assert oom.labels["severity"] == "critical"
    assert oom.annotations["summary"] == "An out-of-memory error appeared in the training log."

    # GPU 0 stayed healthy throughout: nothing fired for it.
    gpu0 = [a for a in webhook_receiver.alerts() if a.labels.get("gpu") == "0"]
    assert gpu0 == []
    print(f"\nbad line written -> notification received: NaN {nan_latency:.2f}s, OOM {oom_latency:.2f}s")


def test_healthy_run_delivers_nothing(tmp_path, exporter_process, alertmanager_server, prometheus_server,
                                      webhook_receiver):  # noqa: F811
    exporter, prometheus, trainer, scenario = start_stack(
        tmp_path, exporter_process, alertmanager_server, prometheus_server, webhook_receiver,
        [gpu(0, 93, 50), gpu(1, 91, 52)])
    # Twenty seconds of a healthy run: falling loss, improving evaluations, busy GPUs.
    deadline = time.monotonic() + 20
    loss = 2.0
    while time.monotonic() < deadline:
        loss *= 0.99
        trainer.train(2, loss=loss)
        if trainer.step % 10 == 0:
            trainer.evaluate(loss + 0.1)
        time.sleep(0.25)
    # Every rule evaluated fine and none is pending or firing; nothing reached the webhook.
    states = {r["name"]: (r.get("health"), r.get("state")) for g in prometheus.rules() for r in g["rules"]}
    assert all(health == "ok" for health, _ in states.values()), states
    assert prometheus.alerts() == []
    assert webhook_receiver.notifications() == []
    assert float(prometheus.query('training_step{source="train.log"}')[0]["value"][1]) == trainer.step
