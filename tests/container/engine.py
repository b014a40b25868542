"""A container engine for the image test and the log-capture script, and the base image they build on.

Engines, in order: a Docker daemon that answers already; else a private dockerd started here (as
root, from Debian's docker.io), with its own socket and state, no bridge and no iptables rules, so
it touches no other daemon and no network setting; else podman (runc), with its storage in a
directory of its own. Each picks its storage driver itself: overlay where the kernel allows it,
else vfs (slower: a full copy of the filesystem per layer). Each is stopped and its state removed
afterwards.

No registry can be reached from the machines the tests run on, so the base image is a stand-in
for python:3.11-slim-bookworm: a Debian bookworm root filesystem with python3 and its venv module,
made with debootstrap from Debian's own repository and imported as an image. Making it takes a
minute or two, so its tarball is kept under /var/cache between runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ENGINE_VARIABLE = "TRAINING_EXPORTER_TEST_ENGINE"  # docker or podman, to use that one only
CACHE = Path("/var/cache/training-exporter-tests")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_TARBALL = CACHE / f"bookworm-minbase-{'-'.join(BASE_PACKAGES)}.tar"
BASE_IMAGE = "localhost/training-exporter-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


class EngineUnavailable(RuntimeError):
    """No engine, or no base image, can be had here; the message says what failed."""


@dataclass
class Engine:
    name: str  # "docker" or "podman"
    command: list[str]  # the client and its global options
    version: str = ""
    base: str = ""  # the stand-in base image, once imported
    # podman sets a container's open-files and process limits above its own by default, which
    # fails where root lacks CAP_SYS_RESOURCE (as in some sandboxes): ask for limits it can set.
    run_options: list[str] = field(default_factory=list)
    # buildah and podman write OCI images by default, which have no HEALTHCHECK.
    build_options: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout,
                                check=False, env={**os.environ, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def build(self, context: Path, tag: str, build_args: dict[str, str], env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
        """Build with host networking: the build fetches the exporter's dependencies from PyPI,
        and a private daemon has no bridge."""
        arguments = [argument for name, value in build_args.items() for argument in ("--build-arg", f"{name}={value}")]
        return self("build", *self.build_options, "--network", "host", *arguments, "--tag", tag, str(context),
                    timeout=900, env=env, check=check)


@contextlib.contextmanager
def open_engine(state: Path, kind: str | None = None) -> Iterator[Engine]:
    """The first engine here that runs a container of the stand-in base (only the one named by
    kind or by TRAINING_EXPORTER_TEST_ENGINE, when given); EngineUnavailable says why each failed."""
    kind = kind or os.environ.get(ENGINE_VARIABLE)
    failures = []
    for name, opener in {"docker": _docker, "podman": _podman}.items():
        if kind and name != kind:
            continue
        stack = contextlib.ExitStack()
        try:
            engine = stack.enter_context(opener(state / name))
            engine.base = stand_in_base(engine)
        except EngineUnavailable as error:
            stack.close()
            failures.append(f"{name}: {error}")
            continue
        with stack:
            yield engine
        return
    raise EngineUnavailable("; ".join(failures) or f"unknown engine {kind!r}")


def _version(command: list[str], template: str) -> str:
    result = subprocess.run([*command, "version", "--format", template], capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        raise EngineUnavailable(_last_line(result))
    return result.stdout.strip()


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


@contextlib.contextmanager
def _docker(state: Path) -> Iterator[Engine]:
    if not shutil.which("docker"):
        raise EngineUnavailable("the docker client is not installed (apt-get install docker.io)")
    try:
        running = _version(["docker"], "{{.Server.Version}}")
    except EngineUnavailable as error:
        running, no_daemon = None, f"no Docker daemon answers ({error})"
    if running:
        yield Engine("docker", ["docker"], running)
        return
    if not shutil.which("dockerd"):
        raise EngineUnavailable(f"{no_daemon} and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{no_daemon}, and only root can start one here")
    # Unix socket paths are limited to about 100 bytes: keep the daemon's under a short directory.
    runtime = Path(tempfile.mkdtemp(prefix="te-dockerd-", dir="/tmp"))
    state.mkdir(parents=True, exist_ok=True)
    command = ["docker", "--host", f"unix://{runtime}/docker.sock"]
    with open(state / "dockerd.log", "wb") as log:
        daemon = subprocess.Popen(
            ["dockerd", "--host", f"unix://{runtime}/docker.sock", "--data-root", str(state / "data"),
             "--exec-root", str(runtime / "exec"), "--pidfile", str(runtime / "dockerd.pid"),
             "--bridge", "none", "--iptables=false", "--ip6tables=false"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Engine("docker", command, _wait_for_daemon(daemon, command, state / "dockerd.log"))
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        _remove(runtime)
        _remove(state)


def _wait_for_daemon(daemon: subprocess.Popen, command: list[str], log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise EngineUnavailable(f"dockerd exited with {daemon.returncode}: {_tail(log)}")
        with contextlib.suppress(EngineUnavailable):
            return _version(command, "{{.Server.Version}}")
        time.sleep(0.2)
    raise EngineUnavailable(f"dockerd did not answer within 60 s: {_tail(log)}")


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])


@contextlib.contextmanager
def _podman(state: Path) -> Iterator[Engine]:
    if not shutil.which("podman"):
        raise EngineUnavailable("podman is not installed (apt-get install podman)")
    command = ["podman", "--root", str(state / "root"), "--runroot", str(state / "run"), "--runtime", "runc"]
    try:
        yield Engine("podman", command, _version(command, "{{.Client.Version}}"),
                     run_options=["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"],
                     build_options=["--format", "docker"])
    finally:
        # Containers still there hold mounts; remove them before the storage.
        subprocess.run([*command, "rm", "--all", "--force"], capture_output=True, timeout=120, check=False)
        _remove(state)


def _remove(directory: Path) -> None:
    """Removes what an engine left, mounts first: dockerd leaves its network namespace mounted."""
    prefix = f"{directory.resolve()}/"
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts]
    for point in sorted((point for point in points if point.startswith(prefix)), reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=60, check=False)
    shutil.rmtree(directory, ignore_errors=True)


def stand_in_base(engine: Engine) -> str:
    """The base image's name, imported into the engine from the cached root filesystem and
    checked to run there."""
    tarball = base_tarball()
    imported = engine("import", str(tarball), BASE_IMAGE, timeout=300, check=False)
    if imported.returncode != 0:
        raise EngineUnavailable(f"cannot import the base image: {_last_line(imported)}")
    probe = engine("run", "--rm", "--network", "none", *engine.run_options, BASE_IMAGE, "python3", "-c", "pass",
                   check=False)
    if probe.returncode != 0:
        raise EngineUnavailable(f"cannot run a container: {_last_line(probe)}")
    return BASE_IMAGE


def base_tarball() -> Path:
    """A Debian bookworm root filesystem with python3 and python3-venv, as a tarball (made once)."""
    if BASE_TARBALL.exists():
        return BASE_TARBALL
    if not shutil.which("debootstrap"):
        raise EngineUnavailable("no base image: debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise EngineUnavailable("no base image: debootstrap needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        rootfs = Path(work) / "rootfs"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                 "bookworm", str(rootfs), DEBIAN_MIRROR],
                                capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise EngineUnavailable(f"no base image: debootstrap failed: {' | '.join(output[-5:])}")
        for unneeded in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                         "usr/share/locale", "usr/share/info"):
            shutil.rmtree(rootfs / unneeded)
        # The build fetches from PyPI through whatever this network requires: trust what this
        # machine trusts (a proxy that inspects TLS has its own authority), and have pip (which
        # otherwise brings its own list of authorities) use the system's.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        partial = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "--create", "--file", str(partial), "--directory", str(rootfs), "."], check=True,
                       timeout=300)
        os.replace(partial, BASE_TARBALL)
    return BASE_TARBALL
