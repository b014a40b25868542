"""The deployment files, checked offline: the container image (hadolint and what the image must
do), the Compose stack (the Compose specification, mounts, Prometheus and Alertmanager configs),
and the Kubernetes manifests (built by ``kubectl kustomize``, validated against the Kubernetes
schemas and the Prometheus Operator's CRDs). No Docker engine and no cluster are needed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml
from conftest import FAKE_NVML_DIR, ROOT, ExporterProcess, free_port, load_script, wait_for
from dockerfile_parse import DockerfileParser

from exporter.flags import config_from_args, serve_parser

COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "kubernetes"
COMPONENTS = K8S_DIR / "components"
PORT = 9945


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, **kwargs)


def tool(name: str) -> str:
    """A command installed by the test extra (its scripts directory may not be on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    assert found, f"{name} not found: pip install -e '.[test]' installs it"
    return found


def assert_exporter_arguments(argv: list[str]):
    """The arguments a deployment passes the exporter are ones its command line accepts."""
    args = serve_parser("training-exporter").parse_args(argv)
    config = config_from_args(args, args.log)
    assert config.logs or config.pods is not None or "--no-collector.training" in argv, argv
    return config


# ---- the container image -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def final_stage() -> dict[str, list[str]]:
    """The final build stage's instructions: {instruction: [values]}."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages: list[dict[str, list[str]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append({})
        if stages:
            stages[-1].setdefault(item["instruction"], []).append(item["value"])
    assert len(stages) >= 2, "expected a multi-stage build"
    return stages[-1]


def test_dockerfile_passes_hadolint():
    result = run(tool("hadolint"), "--no-color", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")  # untagged base, unpinned package
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_image_is_slim_non_root_read_only_friendly_and_labelled(final_stage):
    structure = DockerfileParser(path=str(ROOT / "Dockerfile")).structure
    global_args = dict(item["value"].split("=", 1) for item in
                       structure[:[item["instruction"] for item in structure].index("FROM")] if item["instruction"] == "ARG")
    [base] = final_stage["FROM"]
    assert re.fullmatch(r"python:3\.11-slim-\w+", global_args[base.strip("${}")]), "a slim Python 3.11 base image"
    [user] = final_stage["USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), "a numeric non-root user (Kubernetes runAsNonRoot)"
    assert final_stage["EXPOSE"] == [str(PORT)]
    env = " ".join(final_stage["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # a read-only root filesystem takes no .pyc files
    assert json.loads(final_stage["ENTRYPOINT"][0]) == ["training-exporter"]
    assert "training-exporter" in (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1]
    [healthcheck] = final_stage["HEALTHCHECK"]
    assert "python" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    labels = set(re.findall(r"(org\.opencontainers\.image\.[a-z]+)=", " ".join(final_stage["LABEL"])))
    assert {f"org.opencontainers.image.{key}" for key in
            ("title", "description", "version", "revision", "created", "licenses", "source")} <= labels
    assert_exporter_arguments(json.loads(final_stage["CMD"][0]))


def test_build_context_holds_what_the_build_copies_and_nothing_else(final_stage):
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "everything is left out unless named"
    kept = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    copied = set()
    for item in parser.structure:
        if item["instruction"] == "COPY" and "--from" not in item["value"]:
            copied.update(item["value"].split()[:-1])
    assert copied == kept == {"pyproject.toml", "setup.py", "build_backend.py", "MANIFEST.in", "README.md", "LICENSE",
                              "exporter"}
    assert all((ROOT / path).exists() for path in kept)


def test_build_context_makes_the_wheel_the_image_installs(tmp_path):
    """The build stage's `pip wheel .`, from the files .dockerignore lets into the context."""
    context = tmp_path / "context"
    context.mkdir()
    load_script(ROOT / "benchmarks" / "compiled.py", "compiled").copy_build_context(str(context))
    result = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"),
                 str(context))
    assert result.returncode == 0, result.stderr
    assert "/wheels/training_exporter-*.whl" in (ROOT / "Dockerfile").read_text()
    [wheel] = (tmp_path / "wheels").glob("training_exporter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(name for name in names if name.endswith("entry_points.txt"))).decode()
    assert "training-exporter = exporter.cli:main" in entry_points
    assert "exporter/demo.py" in names  # the Compose stack's simulated job
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)  # the image ships the license


def test_healthcheck_command_tells_a_running_exporter_from_a_stopped_one(final_stage, tmp_path):
    command = json.loads(final_stage["HEALTHCHECK"][0].split("CMD", 1)[1])
    exporter = ExporterProcess(["--log", str(tmp_path / "train.log"), "--no-collector.gpu"])
    try:
        exporter.wait_healthy()
        check = [part.replace(f":{PORT}/", f":{exporter.port}/") for part in command]
        assert check != command
        assert run(*check).returncode == 0
    finally:
        exporter.stop()
    assert run(*check).returncode != 0


def test_exporter_runs_on_a_read_only_root_filesystem(tmp_path):
    """As the image does with readOnlyRootFilesystem: the exporter, a log, the fake NVML, and a
    root filesystem remounted read-only in a mount namespace of its own."""
    if not shutil.which("unshare") or run("unshare", "-m", "true").returncode != 0:
        pytest.skip("cannot create a mount namespace here (unshare -m)")
    log = tmp_path / "train.log"
    log.write_text("{'loss': '2.5', 'grad_norm': '0.9', 'learning_rate': '1e-05', 'epoch': '0.1'}\n")
    scenario = tmp_path / "nvml.json"
    scenario.write_text(json.dumps({"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1",
                                              "pci_bus_id": "00000000:18:00.0", "temperature": 60}]}))
    port = free_port()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "FAKE_NVML_SCENARIO": str(scenario),
           "PYTHONPATH": os.pathsep.join([str(FAKE_NVML_DIR), str(ROOT)])}
    process = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", 'mount -o remount,bind,ro / && exec "$@"', "sh",
         sys.executable, "-m", "exporter", "--log", str(log), "--web.listen-address", f"127.0.0.1:{port}",
         "--host.filesystem-path", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(url + "/-/ready", timeout=1).status_code == 200, 15,
                 "exporter on a read-only root never became ready")
        metrics = requests.get(url + "/metrics", timeout=5).text
        assert 'training_loss{source="train.log"} 2.5' in metrics
        assert 'training_gpu_temperature_celsius{gpu="0",uuid="GPU-1"} 60.0' in metrics
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert "Read-only file system" not in output, output
    assert process.returncode == 0, output


# ---- the Compose stack ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def bind_mounts(service: dict) -> dict[str, Path]:
    """{path in the container: path on the host} of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def test_compose_files_follow_the_compose_specification():
    result = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                 str(COMPOSE_DIR / "compose.yaml"), str(COMPOSE_DIR / "compose.gpu.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def docker_compose() -> list[str] | None:
    """Compose v2, as the Docker CLI plugin or the standalone binary; it needs no engine for `config`."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]):
            version = run(*command, "version")
            if version.returncode == 0 and re.search(r"version v?2\.", version.stdout):
                return command
    return None


def test_docker_compose_accepts_the_files():
    compose = docker_compose()
    if compose is None:
        pytest.skip("Docker Compose v2 is not installed (the specification check above still ran)")
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]):
        result = run(*compose, *[arg for name in files for arg in ("-f", name)], "config", "--quiet",
                     cwd=COMPOSE_DIR)
        assert result.returncode == 0, result.stderr


def test_compose_mounts_exist_images_are_pinned_ports_stay_local(compose):
    services = compose["services"]
    assert {"exporter", "training-job", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} should be published on loopback"
    assert bind_mounts(services["prometheus"])["/etc/prometheus/rules/training-exporter.rules.yml"] == \
        ROOT / "alert_rules" / "training-exporter.rules.yml"
    assert bind_mounts(services["grafana"])["/var/lib/grafana/dashboards/training-exporter"] == \
        ROOT / "grafana" / "dashboards"


def test_compose_runs_a_separate_job_that_the_exporter_follows(compose):
    exporter, job = compose["services"]["exporter"], compose["services"]["training-job"]
    assert exporter.get("build") and job["image"] == exporter["image"]
    assert job["entrypoint"][-2:] == ["-m", "exporter.demo"], "the simulated job alone, not the demo's own exporter"
    log = job["command"][0]
    assert_exporter_arguments(exporter["command"])
    assert f"--log={log}" in exporter["command"]
    assert job["pid"] == "service:exporter"  # the process collector sees the job
    assert exporter["read_only"] and job["read_only"]
    gpu = yaml.safe_load((COMPOSE_DIR / "compose.gpu.yaml").read_text())["services"]["exporter"]
    assert_exporter_arguments(gpu["command"])
    assert "--no-collector.gpu" not in gpu["command"]


def test_compose_prometheus_config_and_rules_check(compose, tmp_path):
    """promtool checks the config with the rule files the container would see (the mounted ones)."""
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    mounts = bind_mounts(compose["services"]["prometheus"])
    rules = [str(path) for target, path in mounts.items() if target.startswith("/etc/prometheus/rules/")]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"] and rules
    config["rule_files"] = rules
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"exporter:{PORT}"]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    result = run("promtool", "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout


def test_compose_alertmanager_config_checks():
    result = run("amtool", "check-config", str(COMPOSE_DIR / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Kubernetes ------------------------------------------------------------------------------------

def kustomize(tmp_path: Path, *components: str) -> list[dict]:
    """``kubectl kustomize`` of the base, or of an overlay adding these components (as a user's would)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found (it builds the kustomization): install kubectl"
    target = K8S_DIR
    if components:
        target = tmp_path / "overlay"
        target.mkdir()
        base = os.path.relpath(K8S_DIR, target)  # kustomize takes relative paths only
        (target / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [base], "components": [f"{base}/components/{name}" for name in components]}))
    result = run(kubectl, "kustomize", str(target))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs)
    return kinds


@pytest.fixture(scope="module")
def operator_models():
    return importlib.import_module("cloudcoil.models.prometheus_operator.v1")  # slow: once per module


def validate(docs: list[dict], versions: list[str], operator_models) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # The operator's CRD schema as a typed model: wrong types and patterns raise, and a
            # field the CRD does not know is dropped, so it shows as a difference.
            model = getattr(operator_models, doc["kind"]).model_validate(doc)
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc, doc["kind"]
        else:
            for version in versions:
                kubernetes_validate.validate(doc, version, strict=True)


def test_base_builds_and_validates(tmp_path, operator_models):
    docs = kustomize(tmp_path)
    assert sorted(doc["kind"] for doc in docs) == ["ConfigMap", "Job", "PodMonitor", "PrometheusRule"]
    validate(docs, ["1.29.0", kubernetes_validate.latest_version()], operator_models)


def test_validators_reject_what_they_should(operator_models):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "b", "imagePullPolicy": "Often"}],
                                          "restartPolicy": "Never", "sharedProcessNamespace": True}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.29.0", strict=True)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
               "spec": {"selector": {}, "podMetricEndpoints": [{"port": "metrics"}]}}  # misspelled
    with pytest.raises(AssertionError):
        validate([monitor], [], operator_models)
    monitor["spec"] = {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "interval": "15 s"}]}
    with pytest.raises(ValueError):
        validate([monitor], [], operator_models)


def test_native_sidecar_pod(tmp_path):
    kinds = by_kind(kustomize(tmp_path))
    pod = kinds["Job"]["spec"]["template"]
    spec = pod["spec"]
    [exporter] = spec["initContainers"]
    [trainer] = spec["containers"]
    assert exporter["restartPolicy"] == "Always"  # a native sidecar
    assert spec["shareProcessNamespace"] is True  # the process collector sees the trainer
    assert exporter["image"] == "registry.example.com/training-exporter:0.1.0"
    assert_exporter_arguments(exporter["args"])

    security = exporter["securityContext"]
    uid = DockerfileParser(path=str(ROOT / "Dockerfile")).structure
    [user] = [item["value"] for item in uid if item["instruction"] == "USER"]
    assert (security["runAsNonRoot"], security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]) \
        == (True, True, False)
    assert security["capabilities"]["drop"] == ["ALL"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    for container in (exporter, trainer):
        assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]
    assert "nvidia.com/gpu" in trainer["resources"]["limits"]

    # One emptyDir, written by the trainer, read by the exporter at the path it follows.
    [volume] = spec["volumes"]
    assert "emptyDir" in volume
    [reads] = exporter["volumeMounts"]
    [writes] = trainer["volumeMounts"]
    assert reads["name"] == writes["name"] == volume["name"] and reads["readOnly"] and not writes.get("readOnly")
    log = next(arg.split("=", 1)[1] for arg in exporter["args"] if arg.startswith("--log="))
    assert log.startswith(reads["mountPath"] + "/") and f"tee -a {log}" in trainer["args"][0]

    [port] = exporter["ports"]
    assert port == {"name": "metrics", "containerPort": PORT}
    probes = {exporter[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"/-/healthy", "/-/ready"}
    assert all(exporter[probe]["httpGet"]["port"] == "metrics" for probe in ("startupProbe", "readinessProbe"))

    # The PodMonitor scrapes exactly this pod's exporter port.
    monitor = kinds["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]] == ["metrics"]
    assert monitor["jobLabel"] == "job-name"  # a run's ranks share the job label


def test_classic_two_container_form(tmp_path, operator_models):
    docs = kustomize(tmp_path, "classic-sidecar")
    # 1.25: the oldest schema the validator has; native sidecars need 1.29.
    validate(docs, ["1.25.0", kubernetes_validate.latest_version()], operator_models)
    spec = by_kind(docs)["Job"]["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    trainer, exporter = spec["containers"]
    assert (trainer["name"], exporter["name"]) == ("trainer", "training-exporter")
    assert "restartPolicy" not in exporter and "startupProbe" not in exporter
    shell, flag, script, name = exporter["command"]
    assert (shell, flag, name) == ("/bin/sh", "-c", "training-exporter")
    assert run("sh", "-n", "-c", script).returncode == 0
    # It stops once the trainer has written the marker its command writes on exit, and never fails the Job.
    marker = re.search(r"-e (\S+) ", script).group(1)
    assert f"touch {marker}" in trainer["args"][0]
    assert script.rstrip().endswith("exit 0")
    assert_exporter_arguments(exporter["args"])


def test_daemonset_component(tmp_path, operator_models):
    docs = kustomize(tmp_path, "daemonset", "kube-prometheus-stack")
    validate(docs, ["1.25.0", kubernetes_validate.latest_version()], operator_models)
    kinds = by_kind(docs)
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "PodMonitor", "PrometheusRule"]  # no example Job
    pod = kinds["DaemonSet"]["spec"]["template"]
    spec = pod["spec"]
    [exporter] = spec["containers"]
    assert spec["hostPID"] is True  # a GPU process's cgroup names its pod
    assert exporter["image"] == "registry.example.com/training-exporter:0.1.0"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert exporter["resources"]["requests"] and exporter["resources"]["limits"]
    security = exporter["securityContext"]
    assert (security["readOnlyRootFilesystem"], security["allowPrivilegeEscalation"]) == (True, False)
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]

    # The kubelet's log root, read-only from the node, is where the exporter looks for the pods' logs.
    config = assert_exporter_arguments(exporter["args"])
    [volume] = spec["volumes"]
    [mount] = exporter["volumeMounts"]
    assert volume["hostPath"] == {"path": "/var/log/pods", "type": "Directory"}
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert config.pods.path == mount["mountPath"] and config.pods.namespaces and config.pods.containers
    assert config.pods.procfs == "/proc"  # the node's, with hostPID
    assert {exporter[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")} == \
        {"/-/ready", "/-/healthy"}

    # The PodMonitor scrapes the DaemonSet's pods, keeping the namespace and pod the series carry.
    monitor = kinds["PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert "jobLabel" not in monitor["spec"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["honorLabels"]) == ("metrics", True)
    assert [port["name"] for port in exporter["ports"]] == ["metrics"]


def test_kube_prometheus_stack_component_labels_the_operator_objects_only(tmp_path, operator_models):
    docs = kustomize(tmp_path, "kube-prometheus-stack", "classic-sidecar")
    validate(docs, [kubernetes_validate.latest_version()], operator_models)
    released = {doc["kind"] for doc in docs if "release" in doc["metadata"].get("labels", {})}
    assert released == {"PodMonitor", "PrometheusRule"}


def test_prometheusrule_is_the_generated_one_and_dashboards_fit_a_configmap(tmp_path):
    kinds = by_kind(kustomize(tmp_path))
    generated = yaml.safe_load((K8S_DIR / "prometheusrule.yaml").read_text())
    assert kinds["PrometheusRule"] == generated
    dashboards = kinds["ConfigMap"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(dashboards["data"]) == sorted(path.name for path in (ROOT / "grafana" / "dashboards").glob("*.json"))
    # kubectl's client-side apply copies the object into an annotation capped at 256 KiB.
    assert len(json.dumps(dashboards).encode()) < 256 * 1024
