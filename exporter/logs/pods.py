"""The kubelet's container logs: which files under ``/var/log/pods`` a selector picks, and which
pod and container each one is the output of.

The kubelet has the container runtime write each container's output, in the CRI format
(``envelopes.py`` unwraps it), to ``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log``:
``0.log`` for the container's first run, ``1.log`` once it has restarted, and so on. It rotates a
log by renaming it to ``0.log.<timestamp>`` (gzipped later) and having the runtime open a new
``0.log``; the follower reads a renamed file to its end before the new one, so rotated names are
never followed themselves. Each container is one source, named ``<namespace>/<pod>/<container>``
and labelled ``namespace``, ``pod`` and ``container``; its restarts' logs feed it in turn.

Namespaces and pod names are DNS names, which hold no underscore: a pod directory's name is cut
at its first two underscores (the UID may hold dashes, never underscores).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from .discovery import MAX_ENTRIES
from .readers import Labels, LogSpec

log = logging.getLogger(__name__)

_RESTART_LOG = re.compile(r"(\d{1,9})\.log")  # 0.log, 1.log: not 0.log.20261201-100000(.gz)
_reported: set[str] = set()  # directories whose listing failed, said once each


class Pod(NamedTuple):
    namespace: str
    name: str
    uid: str


def pod_of_directory(name: str) -> Pod | None:
    """The pod a log directory's name (``<namespace>_<pod>_<uid>``) names, or None."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return Pod(*parts)


def pods_by_uid(root: str) -> dict[str, Pod]:
    """Every pod with a log directory under ``root``, by UID."""
    pods = {}
    for name in _listing(root, directories=True):
        pod = pod_of_directory(name)
        if pod is not None:
            pods[pod.uid] = pod
    return pods


@dataclass(frozen=True)
class PodLogs(LogSpec):
    """The logs of the containers the selector picks, under the kubelet's log root (``path``).
    Empty namespaces or containers pick every one; ``pod_pattern`` must match a whole pod name."""

    namespaces: tuple[str, ...] = ()
    pod_pattern: str | None = None
    containers: tuple[str, ...] = ()

    def picks(self, pod: Pod) -> bool:
        return (not self.namespaces or pod.namespace in self.namespaces) and \
            (self.pod_pattern is None or re.fullmatch(self.pod_pattern, pod.name) is not None)

    def find(self) -> tuple[list[str], list[str]]:
        """The restart logs of the containers picked, each container's in the order of its
        restarts, and the directories searched (watched for pods, containers and restarts to come).
        At most ``MAX_ENTRIES`` directory entries are looked at."""
        paths: list[str] = []
        directories = [self.path]
        pod_names = _listing(self.path, directories=True, missing_ok=False)
        entries = len(pod_names)
        for pod_name in sorted(pod_names):
            pod = pod_of_directory(pod_name)
            if pod is None or not self.picks(pod):
                continue
            pod_directory = os.path.join(self.path, pod_name)
            directories.append(pod_directory)
            containers = _listing(pod_directory, directories=True)
            entries += len(containers)
            for container in sorted(containers):
                if self.containers and container not in self.containers:
                    continue
                container_directory = os.path.join(pod_directory, container)
                directories.append(container_directory)
                names = _listing(container_directory, directories=False)
                entries += len(names)
                if entries > MAX_ENTRIES:
                    log.warning("searching %r: stopped after %d entries; narrow the selection", self.path, MAX_ENTRIES)
                    return paths, directories
                restarts = sorted(int(found.group(1)) for found in map(_RESTART_LOG.fullmatch, names) if found)
                paths += [os.path.join(container_directory, f"{restart}.log") for restart in restarts]
        return paths, directories

    def source_of(self, path: str) -> tuple[str, Labels]:
        """A restart log feeds its container's source, labelled with the container's pod."""
        container_directory = os.path.dirname(path)
        container = os.path.basename(container_directory)
        pod = pod_of_directory(os.path.basename(os.path.dirname(container_directory)))
        assert pod is not None, path  # find() only returns paths under a pod's directory
        return (f"{pod.namespace}/{pod.name}/{container}",
                (("namespace", pod.namespace), ("pod", pod.name), ("container", container)))


def _listing(directory: str, directories: bool, missing_ok: bool = True) -> list[str]:
    """The names of the directories (or of the other entries) in a directory, hidden ones left
    out; none when it cannot be listed, which is said once (a pod's directory going away while
    it is listed is no news)."""
    try:
        with os.scandir(directory) as scan:
            return [entry.name for entry in scan if not entry.name.startswith(".") and _is_dir(entry) == directories]
    except OSError as error:
        expected = missing_ok and isinstance(error, FileNotFoundError)
        if not expected and directory not in _reported and len(_reported) < 1000:
            _reported.add(directory)
            log.warning("cannot list %r: %s", directory, error.strerror or error)
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
