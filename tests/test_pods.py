"""DaemonSet mode: the kubelet's container logs of the pods a selector picks, each container a
source labelled with its namespace, pod and container; GPU and training processes labelled with
their pod. Against a /var/log/pods tree written as the kubelet writes it (tests/kubelet.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import wait_for
from exporter.flags import config_from_args, serve_parser
from exporter.config import ConfigError
from exporter.hardware.pod_processes import ProcessPods, pod_uid
from exporter.logs.pods import PodLogs as PodSelection
from exporter.logs.sources import LogFollower
from exporter.training.signals import SignalSettings
from exporter.training.states import TrainingStates
from exporter.training.vocabulary import Vocabulary
from kubelet import PodLogs, cri_records
from procs import fake_nvml_env, gpu, write_scenario

UID = "0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b"


def step_line(step: int, loss: float, **more) -> str:
    return json.dumps({"step": step, "loss": loss, **more})


def follower_of(*specs) -> tuple[LogFollower, TrainingStates]:
    states = TrainingStates(SignalSettings(), Vocabulary())
    return LogFollower(list(specs), states, rescan_interval=0.1), states


# ---- which files, which sources ------------------------------------------------------------------

def test_the_selector_picks_namespaces_pods_and_containers_and_only_their_restart_logs(tmp_path):
    root = tmp_path / "pods"
    llm = PodLogs(root, "training", "llm-0", UID)
    trainer = llm.container("trainer")
    trainer.write(step_line(1, 2.0))
    trainer.compress(trainer.rotate("20261201-090000"))
    trainer.reopen()
    trainer.write(step_line(2, 1.9))
    trainer.rotate("20261201-100000")  # the latest rotation stays uncompressed
    trainer.reopen()
    for restart in range(1, 11):  # 10.log sorts before 2.log by name, not by restart
        trainer.restarted()
    llm.container("istio-proxy").write("proxy says hi")
    PodLogs(root, "default", "llm-1").container("trainer").write(step_line(1, 1.0))
    PodLogs(root, "training", "notebook-0").container("trainer").write(step_line(1, 1.0))
    (root / "not-a-pod-directory" / "trainer").mkdir(parents=True)
    (root / "not-a-pod-directory" / "trainer" / "0.log").write_text("x\n")

    selection = PodSelection(path=str(root), namespaces=("training",), pod_pattern="llm-.*", containers=("trainer",))
    paths, directories = selection.find()
    container = llm.directory / "trainer"
    assert paths == [str(container / f"{restart}.log") for restart in range(11)]
    assert directories == [str(root), str(llm.directory), str(container)]
    # "llm" alone matches no whole pod name; no selection is every pod's every container.
    assert PodSelection(path=str(root), pod_pattern="llm").find()[0] == []
    everything = PodSelection(path=str(root)).find()[0]
    assert len(everything) == 11 + 3 and not any(".log." in path for path in everything)

    follower, states = follower_of(selection)
    follower.read_to_end()
    assert list(states) == ["training/llm-0/trainer"]
    labels = (("namespace", "training"), ("pod", "llm-0"), ("container", "trainer"))
    assert {entry.labels for entry in states.items()} == {labels}
    assert {file.labels for file in follower.files()} == {labels}
    follower.stop()


def test_a_containers_restarts_are_read_in_order_whatever_the_backlog(tmp_path):
    """The first run's log is read to its end before the next run's, even when it is longer than
    one poll reads: the latest values are the latest run's."""
    pod = PodLogs(tmp_path / "pods", "training", "llm-0", UID)
    trainer = pod.container("trainer")
    padding = "x" * 900
    trainer.write(*(step_line(step, 3.0, note=padding) for step in range(1, 6001)))  # about 6 MB
    trainer.restarted()
    trainer.write(step_line(4000, 1.5), step_line(4001, 1.25))  # resumed from a checkpoint
    trainer.close()
    follower, states = follower_of(PodSelection(path=str(tmp_path / "pods")))
    follower.start()
    try:
        wait_for(lambda: follower.ready, 30, "the follower never caught up")
    finally:
        follower.stop()
    snapshot = states["training/llm-0/trainer"].snapshot()
    assert (snapshot.step, snapshot.values["loss"]) == (4001, 1.25)
    assert snapshot.records["train"] == 6002


def test_a_later_restarts_news_waits_for_the_earlier_log_and_is_not_lost(tmp_path):
    """Written to while an earlier log of its container still has a backlog, a restart's log
    waits its turn and is then read, without another write to wake the follower."""
    pod = PodLogs(tmp_path / "pods", "training", "llm-0", UID)
    trainer = pod.container("trainer")
    trainer.write(step_line(1, 3.0))
    trainer.restarted()
    trainer.write(step_line(1, 2.0))
    follower, states = follower_of(PodSelection(path=str(tmp_path / "pods")))
    follower.start()
    try:
        wait_for(lambda: follower.ready and states["training/llm-0/trainer"].snapshot().records["train"] == 2, 10,
                 "the two logs were not read")
        padding = "x" * 900
        with open(trainer.directory / "0.log", "ab") as first_run:  # the first run's last words, late
            first_run.write(b"".join(cri_records(step_line(step, 3.0, note=padding)) for step in range(2, 6002)))
        trainer.write(step_line(2, 1.5))
        wait_for(lambda: states["training/llm-0/trainer"].snapshot().records["train"] == 6003, 10,
                 "the restart's line written meanwhile was not read")
        assert states["training/llm-0/trainer"].snapshot().values["loss"] == 1.5
    finally:
        follower.stop()


def test_a_deleted_pod_is_retired_with_its_source_and_what_was_kept_for_it(tmp_path):
    root = tmp_path / "pods"
    gone, staying = PodLogs(root, "training", "llm-0", UID), PodLogs(root, "training", "llm-1")
    gone.container("trainer").write(step_line(1, 2.0))
    staying.container("trainer").write(step_line(1, 2.0))
    states = TrainingStates(SignalSettings(), Vocabulary())
    follower = LogFollower([PodSelection(path=str(root))], states, rescan_interval=0.1, retire_after=0.2)
    follower.read_to_end()
    assert set(states) == {"training/llm-0/trainer", "training/llm-1/trainer"}
    gone.delete()
    follower.start()
    try:
        wait_for(lambda: set(states) == {"training/llm-1/trainer"}, 10, "the deleted pod's source stayed")
        assert [file.source for file in follower.files()] == ["training/llm-1/trainer"]
        assert not any(str(gone.directory) in directory for directory in follower._log_directories)
        assert not any(str(gone.directory) in path for path in follower._names)
        assert "training/llm-0/trainer" not in follower._claims
    finally:
        follower.stop()


# ---- configuration --------------------------------------------------------------------------------

def config_of(*argv: str):
    args = serve_parser("training-exporter").parse_args(list(argv))
    return config_from_args(args, args.log)


def test_any_pods_flag_turns_daemonset_mode_on(tmp_path):
    assert config_of("--log", "x.log").pods is None
    pods = config_of("--pods.namespace", "training", "--pods.namespace", "research",
                     "--pods.pod-pattern", "llm-.*", "--pods.container", "trainer").pods
    assert (pods.path, pods.namespaces, pods.pod_pattern, pods.containers) == \
        ("/var/log/pods", ["training", "research"], "llm-.*", ["trainer"])
    config = tmp_path / "exporter.yaml"
    config.write_text(yaml.safe_dump({"pods": {"namespaces": ["training"], "procfs": "/host/proc"}}))
    pods = config_of("--config", str(config), "--pods.path", "/node/pods").pods
    assert (pods.path, pods.namespaces, pods.procfs) == ("/node/pods", ["training"], "/host/proc")


@pytest.mark.parametrize("flags, message", [
    (("--pods.pod-pattern", "llm-("), "pods.pod_pattern: invalid regular expression"),
    (("--pods.namespace", "training_x"), "pods.namespaces[0]: expected a namespace name, got 'training_x'"),
    (("--pods.container", "a/b"), "pods.containers[0]: expected a container name, got 'a/b'"),
])
def test_a_bad_selection_is_one_line_naming_the_key(flags, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        config_of(*flags)


# ---- a process's pod ------------------------------------------------------------------------------

@pytest.mark.parametrize("cgroup", [
    # cgroup v2, systemd driver, containerd; and CRI-O
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f4e6a2c_1b3d_4e5f_8a9b_0c1d2e3f4a5b.slice/"
    "cri-containerd-7d3c1e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c3d.scope\n",
    "0::/kubepods.slice/kubepods-pod0f4e6a2c_1b3d_4e5f_8a9b_0c1d2e3f4a5b.slice/crio-7d3c1e9f0a2b.scope\n",
    # cgroup v2, cgroupfs driver; from inside a cgroup namespace of the reader's own
    "0::/kubepods/besteffort/pod0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b/7d3c1e9f0a2b4c6d\n",
    "0::/../../kubepods-besteffort-pod0f4e6a2c_1b3d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-7d3c.scope\n",
    # cgroup v1: a line per hierarchy (the pod's sandbox process sits in the pod's cgroup itself)
    "12:pids:/kubepods/pod0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b/7d3c1e9f\n"
    "11:memory:/kubepods/pod0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b/7d3c1e9f\n1:name=systemd:/kubepods/pod0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b\n",
    "4:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f4e6a2c_1b3d_4e5f_8a9b_0c1d2e3f4a5b.slice\n",
    # kind's nodes: the kubelet's slice under its own
    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    "kubelet-kubepods-besteffort-pod0f4e6a2c_1b3d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-ab.scope\n",
])
def test_a_pods_uid_in_every_cgroup_layout(cgroup):
    assert pod_uid(cgroup) == UID


@pytest.mark.parametrize("cgroup", [
    "0::/system.slice/containerd.service\n", "0::/user.slice/user-0.slice/session-1.scope\n", "0::/\n",
    "0::/kubepods.slice/kubepods-burstable.slice\n",  # the QoS class, no pod
    "0::/kubepods/podnot-a-uid/abc\n", "0::/apps/mypod0f4e6a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b/x\n",
])
def test_no_pod_where_the_cgroup_names_none(cgroup):
    assert pod_uid(cgroup) is None


def test_a_static_pods_uid_is_a_hash():
    assert pod_uid("0::/kubepods/burstable/pod6d0bd4d8f5e8f1a4c3b2a1908f7e6d5c/abc\n") == "6d0bd4d8f5e8f1a4c3b2a1908f7e6d5c"


def fake_process(procfs: Path, pid: int, cgroup: str) -> None:
    (procfs / str(pid)).mkdir(parents=True)
    (procfs / str(pid) / "cgroup").write_text(cgroup)


def test_a_process_gets_the_namespace_and_pod_its_uid_names(tmp_path):
    root, procfs = tmp_path / "pods", tmp_path / "proc"
    fake_process(procfs, 101, f"0::/kubepods/besteffort/pod{UID}/abc\n")
    fake_process(procfs, 102, "0::/system.slice/sshd.service\n")
    pods = ProcessPods(str(root), str(procfs))
    assert pods.labels(101) == {"namespace": "", "pod": ""}  # no log directory names it yet
    PodLogs(root, "training", "llm-0", UID).container("trainer")
    wait_for(lambda: pods.labels(101) == {"namespace": "training", "pod": "llm-0"}, 5,
             "the pods' directories were not listed again")
    assert pods.labels(102) == {"namespace": "", "pod": ""}  # the node's own
    assert pods.labels(103) == {"namespace": "", "pod": ""}  # gone


# ---- end to end: a real exporter reading /metrics ----------------------------------------------

def pod_series(metrics: dict, name: str, **labels) -> dict:
    """{source: value} of a family's series carrying these labels."""
    return {dict(key)["source"]: number for (sample, key), number in metrics.items()
            if sample == name and labels.items() <= dict(key).items()}


def test_daemonset_mode_follows_the_kubelets_logs_through_partial_lines_rotation_restart_and_deletion(
        tmp_path, exporter_process):
    root = tmp_path / "pods"
    llm = PodLogs(root, "training", "llm-0", UID)
    trainer = llm.container("trainer")
    # A line longer than the runtime's buffer comes as P records and an F record.
    trainer.write(*(step_line(step, 3.0 - step / 10) for step in range(1, 5)),
                  step_line(5, 2.5, note="x" * 40_000), step_line(6, 2.4), stream="stdout")
    trainer.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", stream="stderr")
    llm.container("istio-proxy").write(step_line(1, 9.0))  # a container not picked
    PodLogs(root, "default", "llm-1").container("trainer").write(step_line(1, 9.0))  # another namespace
    PodLogs(root, "training", "notebook-0").container("trainer").write(step_line(1, 9.0))  # another pod
    config = tmp_path / "exporter.yaml"
    config.write_text(yaml.safe_dump({"follow": {"retire_after_seconds": 1, "rescan_interval_seconds": 0.2}}))
    exporter = exporter_process("--config", str(config), "--pods.path", str(root), "--pods.namespace", "training",
                                "--pods.pod-pattern", "llm-.*", "--pods.container", "trainer",
                                "--no-collector.gpu", "--no-collector.process")
    source = "training/llm-0/trainer"
    labels = {"source": source, "namespace": "training", "pod": "llm-0", "container": "trainer"}
    metrics = exporter.metrics()
    assert pod_series(metrics, "training_loss") == {source: 2.4}
    assert metrics[("training_loss", frozenset(labels.items()))] == 2.4
    assert pod_series(metrics, "training_records_total", kind="train") == {source: 6}
    assert pod_series(metrics, "training_oom_events_total") == {source: 1}
    assert pod_series(metrics, "training_log_parse_errors_total") == {source: 0}
    assert pod_series(metrics, "training_log_up", **labels) == {source: 1}

    # The kubelet rotates: renamed, written on until the runtime reopens, compressed later.
    rotated = trainer.rotate("20261201-100000")
    trainer.write(step_line(7, 2.3))
    trainer.reopen()
    trainer.write(step_line(8, 2.2))
    wait_for(lambda: pod_series(exporter.metrics(), "training_records_total", kind="train") == {source: 8}, 10,
             "lines written around the rotation were lost")
    trainer.compress(rotated)
    rotated = trainer.rotate("20261201-110000")
    trainer.reopen()
    trainer.write(step_line(9, 2.1))
    wait_for(lambda: pod_series(exporter.metrics(), "training_step") == {source: 9}, 10, "the third file went unread")
    metrics = exporter.metrics()
    assert pod_series(metrics, "training_log_resets_total", reason="rotated") == {source: 2}
    assert pod_series(metrics, "training_records_total", kind="train") == {source: 9}

    # The container restarts and resumes from a checkpoint: the same source, read on.
    trainer.restarted()
    trainer.write(step_line(7, 2.05), step_line(8, 1.9))
    wait_for(lambda: pod_series(exporter.metrics(), "training_loss") == {source: 1.9}, 10, "the restart went unread")
    metrics = exporter.metrics()
    assert pod_series(metrics, "training_step") == {source: 8}
    assert pod_series(metrics, "training_records_total", kind="train") == {source: 11}
    assert pod_series(metrics, "training_log_up") == {source: 1}

    # The pod is deleted: its series go once it has been gone for the grace period.
    llm.delete()
    wait_for(lambda: not any("llm-0" in str(key) for key in exporter.metrics()), 15,
             "the deleted pod's series stayed")
    assert exporter.proc.poll() is None


def test_gpu_processes_and_the_training_process_carry_their_pod(tmp_path, exporter_process):
    """With the node's PIDs in view (hostPID), each GPU process's cgroup names its pod; here the
    node's /proc is a tree of cgroup files (pods.procfs) for real processes the fake NVML lists."""
    root, procfs = tmp_path / "pods", tmp_path / "proc"
    PodLogs(root, "training", "llm-0", UID).container("trainer").write(step_line(1, 2.0))
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "llm-trainer-marker"])
    try:
        node_process = 4_000_000  # a GPU process of the node itself, whose cgroup names no pod
        fake_process(procfs, trainer.pid, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                     f"{UID.replace('-', '_')}.slice/cri-containerd-7d3c1e9f0a2b.scope\n")
        fake_process(procfs, node_process, "0::/system.slice/nvidia-persistenced.service\n")
        scenario = tmp_path / "nvml.json"
        write_scenario(scenario, [gpu(0, processes=[{"pid": trainer.pid, "used_memory": 3 * 2**30},
                                                   {"pid": node_process, "used_memory": 2**20}])])
        config = tmp_path / "exporter.yaml"
        config.write_text(yaml.safe_dump({"pods": {"path": str(root), "procfs": str(procfs)}}))
        exporter = exporter_process("--config", str(config), "--process.cmdline-pattern", "llm-trainer-marker",
                                    env=fake_nvml_env(scenario))
        uuid = gpu(0)["uuid"]
        pod = {"namespace": "training", "pod": "llm-0"}

        def gpu_memory() -> dict:
            return {dict(key)["pid"]: dict(key) for (name, key) in exporter.metrics()
                    if name == "training_gpu_process_memory_used_bytes"}

        memory = wait_for(gpu_memory, 10, "no GPU process memory")
        assert memory[str(trainer.pid)] == {"gpu": "0", "uuid": uuid, "pid": str(trainer.pid),
                                            "process_name": memory[str(trainer.pid)]["process_name"], **pod}
        assert memory[str(node_process)] == {"gpu": "0", "uuid": uuid, "pid": str(node_process), "process_name": "",
                                             "namespace": "", "pod": ""}
        metrics = exporter.metrics()
        info = [dict(key) for (name, key) in metrics if name == "training_process_info"]
        assert info == [{"pid": str(trainer.pid), "name": info[0]["name"], "source": "cmdline", **pod}]
        assert metrics[("training_process_resident_memory_bytes", frozenset(pod.items()))] > 0
        assert metrics[("training_process_up", frozenset())] == 1
    finally:
        trainer.kill()
        trainer.wait()
