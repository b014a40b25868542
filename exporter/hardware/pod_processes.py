"""Which pod a process runs in: its cgroup names the pod's UID, the kubelet's log directories
name that UID's namespace and pod.

Seen from the node's PID namespace (a DaemonSet with ``hostPID``), ``/proc/<pid>/cgroup`` of a
container's process holds its pod's cgroup, whatever the layout:

- cgroupfs driver: ``/kubepods/burstable/pod<uid>/<container id>`` (``/kubepods/pod<uid>/...``
  for a Guaranteed pod);
- systemd driver: ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
  underscores for dashes>.slice/cri-containerd-<id>.scope`` (``crio-<id>.scope`` under CRI-O);
- cgroup v1 (a line per hierarchy) or v2 (one ``0::`` line), and, from inside a cgroup namespace
  of our own, the same path below a few ``/..``.

A static pod's UID is a 32-digit hash without dashes. The process's cgroup file is read at each
look (a PID may be reused); the UIDs' pods are listed again when a UID is not among them.
"""

from __future__ import annotations

import os
import re
import time

from ..logs.pods import Pod, pods_by_uid

_POD_UID = re.compile(r"(?:^|[/-])pod([0-9a-f]{8}(?:[-_][0-9a-f]{4}){3}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?(?:/|$)",
                      re.MULTILINE)
RELIST_SECONDS = 1.0  # the pods' directories listed again at most this often, for a UID not found
NO_POD = {"namespace": "", "pod": ""}


def pod_uid(cgroup: str) -> str | None:
    """The UID of the pod a ``/proc/<pid>/cgroup`` content names, or None."""
    found = _POD_UID.search(cgroup)
    return found.group(1).replace("_", "-") if found else None


class ProcessPods:
    """The ``namespace`` and ``pod`` labels of a process, from ``<procfs>/<pid>/cgroup`` and the
    pod log directories under ``pods_root``. Used by the GPU poll thread and by scrapes: the map
    of pods is replaced whole, never changed in place."""

    def __init__(self, pods_root: str, procfs: str = "/proc") -> None:
        self.pods_root = pods_root
        self.procfs = procfs
        self._pods: dict[str, Pod] = {}
        self._listed = -RELIST_SECONDS

    def labels(self, pid: int) -> dict[str, str]:
        """{"namespace": ..., "pod": ...}, both empty for a process in no pod the log
        directories name (a process of the node itself, a pod on another root)."""
        try:
            with open(os.path.join(self.procfs, str(pid), "cgroup"), encoding="utf-8", errors="replace") as handle:
                uid = pod_uid(handle.read(65536))
        except OSError:  # gone, or not ours to see
            return NO_POD
        if uid is None:
            return NO_POD
        pod = self._pods.get(uid)
        now = time.monotonic()
        if pod is None and now - self._listed >= RELIST_SECONDS:
            self._listed = now
            self._pods = pods_by_uid(self.pods_root)
            pod = self._pods.get(uid)
        return NO_POD if pod is None else {"namespace": pod.namespace, "pod": pod.name}
