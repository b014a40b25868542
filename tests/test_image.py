"""The container image, built from the Dockerfile and run for real by a container engine, as a
Kubernetes sidecar runs it: read-only root filesystem, every capability dropped, a training log
mounted read-only. The engine and the base image (a Debian stand-in for the official Python image,
since no registry can be reached) come from tests/container/engine.py; where no engine can run a
container, every test here is skipped with the engine's error.

The exporter's endpoints are asked from inside the container (`exec`), so the container needs no
network and no published port, whatever the engine's networking can do here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import time

import pytest
from conftest import FIXTURES, ROOT, parse_metrics, value
from container.engine import Engine, EngineUnavailable, open_engine

LOG = FIXTURES / "real" / "hf_console.log"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # as CI would pass a commit id
TAG = f"localhost/training-exporter-test:{os.getpid()}"
USER = "10001"
_names = itertools.count()

# The exporter answers on its default address inside the container; prints status and body.
FETCH = ("import sys, urllib.request\n"
         "with urllib.request.urlopen('http://127.0.0.1:9945' + sys.argv[1], timeout=5) as response:\n"
         "    sys.stdout.write(f'{response.status}\\n' + response.read().decode())\n")


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    stack = contextlib.ExitStack()
    try:
        engine = stack.enter_context(open_engine(tmp_path_factory.mktemp("engine")))
    except EngineUnavailable as error:
        pytest.skip(f"no container engine can run the image here: {error}")
    with stack:
        yield engine


@pytest.fixture(scope="module")
def image(engine) -> str:
    engine.build(ROOT, TAG, {"PYTHON_IMAGE": engine.base, "REVISION": REVISION})
    yield TAG
    engine("rmi", "--force", TAG, check=False)


def image_config(engine: Engine, image: str) -> dict:
    [config] = json.loads(engine("image", "inspect", image).stdout)
    return config


def healthcheck(engine: Engine, image: str) -> dict | None:
    """docker keeps the HEALTHCHECK in the image's Config, podman beside it."""
    config = image_config(engine, image)
    return config["Config"].get("Healthcheck") or config.get("Healthcheck")


def start(engine: Engine, image: str) -> str:
    """A container of the image as a sidecar runs it, following the log with its default command."""
    name = f"training-exporter-test-{os.getpid()}-{next(_names)}"
    engine("run", "--detach", "--name", name, "--read-only", "--cap-drop", "ALL", "--network", "none",
           *engine.run_options, "--volume", f"{LOG}:/logs/{LOG.name}:ro", image)
    return name


def fetch(engine: Engine, container: str, path: str) -> tuple[int, str] | None:
    """(status, body) of a GET from inside the container; None when the exporter did not answer 2xx."""
    result = engine("exec", container, "python", "-c", FETCH, path, check=False)
    if result.returncode != 0:
        return None
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def wait_ready(engine: Engine, container: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if fetch(engine, container, "/-/ready"):
            return
        if engine("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            break
        time.sleep(0.3)
    logs = engine("logs", container, check=False)
    raise AssertionError(f"the exporter in the container never became ready:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def running(engine, image) -> str:
    container = start(engine, image)
    try:
        wait_ready(engine, container)
        yield container
    finally:
        engine("rm", "--force", container, check=False)


def test_runs_as_user_10001_with_no_capabilities(engine, running):
    status = dict(line.split(":", 1) for line in engine("exec", running, "cat", "/proc/1/status").stdout.splitlines())
    assert "training-exporter" in engine("exec", running, "cat", "/proc/1/cmdline").stdout
    assert set(status["Uid"].split()) == {USER} and set(status["Gid"].split()) == {USER}
    assert int(status["CapEff"], 16) == 0


def test_follows_the_mounted_log_on_a_read_only_root(engine, running):
    ready = fetch(engine, running, "/-/ready")
    assert ready and ready[0] == 200
    answer = fetch(engine, running, "/metrics")
    assert answer and answer[0] == 200
    metrics = parse_metrics(answer[1])
    last_loss = float(re.findall(r"\{'loss': '([^']+)'", LOG.read_text())[-1])
    assert value(metrics, "training_loss", source=LOG.name) == last_loss
    assert value(metrics, "training_log_up", source=LOG.name) == 1
    logs = engine("logs", running)
    assert "Traceback" not in logs.stderr + logs.stdout and "Read-only file system" not in logs.stderr + logs.stdout


def test_build_info_and_labels_carry_the_revision_built_from_and_the_compiled_reading_path(engine, image, running):
    [build] = [labels for name, labels in parse_metrics(fetch(engine, running, "/metrics")[1])
               if name == "training_exporter_build_info"]
    assert dict(build)["revision"] == REVISION
    assert dict(build)["reading_path"] == "compiled"
    assert image_config(engine, image)["Config"]["Labels"]["org.opencontainers.image.revision"] == REVISION


def test_the_images_own_healthcheck_passes(engine, image, running):
    check = healthcheck(engine, image)
    assert check, "the image lost its HEALTHCHECK (an OCI-format build drops it)"
    kind, *command = check["Test"]
    assert kind == "CMD"
    result = engine("exec", running, *command, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sigterm_stops_it_within_a_second(engine, image):
    """The engine's stop sends SIGTERM and, after the grace period given (1 s), SIGKILL: exit
    status 0 means the exporter was gone within the second, by itself."""
    container = start(engine, image)
    try:
        wait_ready(engine, container)
        started = time.monotonic()
        engine("stop", "-t", "1", container)
        took = time.monotonic() - started
        exit_status = engine("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()
        assert exit_status == "0", f"exit status {exit_status}, {took:.2f} s after SIGTERM"
    finally:
        engine("rm", "--force", container, check=False)


def docker_clients() -> list[str]:
    """Every docker client on PATH, in PATH's order: a newer client without the buildx plugin
    cannot use BuildKit, while the one packaged with the daemon can."""
    found: dict[str, str] = {}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        client = shutil.which("docker", path=directory)
        if client:
            found.setdefault(os.path.realpath(client), client)
    return list(found.values())


@pytest.mark.parametrize("buildkit", ["0", "1"], ids=["classic-builder", "buildkit"])
def test_docker_builds_it_with_either_builder(engine, image, buildkit):
    """Without BuildKit (no RUN --mount) and with it offline (no `# syntax` frontend to fetch)."""
    if engine.name != "docker":
        pytest.skip(f"{engine.name} has one builder, which built the image above")
    tag = f"{TAG}-builder-{buildkit}"
    refusals = []
    for client in docker_clients():
        builder = dataclasses.replace(engine, command=[client, *engine.command[1:]])
        result = builder.build(ROOT, tag, {"PYTHON_IMAGE": engine.base}, env={"DOCKER_BUILDKIT": buildkit}, check=False)
        if result.returncode == 0 or "buildx" not in result.stderr:
            break
        refusals += [f"{client}: {line.strip()}" for line in result.stderr.splitlines() if "buildx" in line][:1]
    else:
        pytest.skip(f"no docker client here can use BuildKit: {'; '.join(refusals)}")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert image_config(engine, tag)["Config"]["User"] == f"{USER}:{USER}"
        assert healthcheck(engine, tag)
    finally:
        engine("rmi", "--force", tag, check=False)
