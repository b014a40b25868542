"""The training process: found, followed across restarts, and measured through psutil.

It is found, in this order of priority, by a PID file, by a regular expression over command
lines (the oldest match, never the exporter itself or the processes that launched it), or as a
process NVML sees on a GPU (the oldest). Discovery runs on every collect but stays cheap: the PID file is one small read, and
the command-line scan only runs when the process followed so far has gone. When nothing is
found ``training_process_up`` is 0, so an exited trainer shows as down instead of vanishing. In
DaemonSet mode the series of the process found (all but ``training_process_up``) carry its pod's
``namespace`` and ``pod``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Callable, Iterable

import psutil
from prometheus_client.metrics_core import Metric

from ..collector_base import Collector
from ._families import Families
from .pod_processes import ProcessPods

log = logging.getLogger(__name__)

G, C = "gauge", "counter"
SPECS = {
    "training_process_up": (G, "1 while a training process is found and running, else 0."),
    "training_process_info": (G, "The process followed; value 1. Labels: pid, name, source (pid_file, cmdline or gpu); "
                                 "in DaemonSet mode every series of the process also has namespace and pod."),
    "training_process_start_time_seconds": (G, "Unix time the training process started."),
    "training_process_resident_memory_bytes": (G, "Resident memory (RSS) of the training process."),
    "training_process_cpu_seconds_total": (C, "CPU time of the training process by mode (user, system)."),
    "training_process_threads": (G, "Threads of the training process."),
    "training_process_open_fds": (G, "Open file descriptors of the training process."),
    "training_process_children": (G, "Descendant processes (e.g. data loader workers)."),
    "training_process_children_resident_memory_bytes": (G, "Resident memory of all descendants, summed."),
}

# Reading a field another user's process hides, or one that just turned zombie: skip the field.
_SKIP = (psutil.AccessDenied, psutil.ZombieProcess)


class ProcessFinder:
    """Which process is the training process, now: the one followed so far while it lives, else
    the first found by PID file, command line or GPU. Shared by the process collector and the
    guard, so that they agree on which process that is; safe to ask from several threads."""

    def __init__(self, pid_file: str | None = None, cmdline_pattern: str | None = None,
                 gpu_pids: Callable[[], set[int]] | None = None) -> None:
        try:
            self._pattern = re.compile(cmdline_pattern) if cmdline_pattern else None
        except re.error as exc:
            raise ValueError(f"invalid cmdline pattern {cmdline_pattern!r}: {exc}") from None
        self.pid_file = pid_file
        self._gpu_pids = gpu_pids
        # GPU PIDs none of which could be found: in a sidecar without a shared PID namespace
        # NVML's PIDs are the host's, never to be seen; not looked up again while they stay.
        self._unseen_gpu_pids: frozenset[int] = frozenset()
        self._proc: psutil.Process | None = None
        self._source = ""
        self._own_pid = os.getpid()
        self._lock = threading.Lock()

    def find(self) -> tuple[psutil.Process, str] | None:
        """The training process and how it was found (pid_file, cmdline or gpu), or None."""
        with self._lock:
            proc = self._discover()
            return None if proc is None else (proc, self._source)

    def forget(self, proc: psutil.Process) -> None:
        """``proc`` turned out to be gone: look again next time."""
        with self._lock:
            if self._proc is proc:
                self._proc = None

    def _discover(self) -> psutil.Process | None:
        found = self._from_pid_file()  # cheap, and first in priority: always looked at
        source = "pid_file"
        if found is None and self._alive(self._proc) and self._source != "pid_file":
            return self._proc  # keep following the process found by the slower methods
        if found is None:
            found, source = self._from_cmdline(), "cmdline"
        if found is None:
            found, source = self._from_gpu(), "gpu"
        if found is None:
            if self._proc is not None:
                log.info("training process %d is gone", self._proc.pid)
            self._proc = None
            return None
        if self._proc is None or found.pid != self._proc.pid or source != self._source:
            log.info("following training process %d (found by %s)", found.pid, source)
            self._proc, self._source = found, source
        return self._proc

    @staticmethod
    def _alive(proc: psutil.Process | None) -> bool:
        # is_running also compares the start time, so a reused PID does not count.
        try:
            return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _process(self, pid: int) -> psutil.Process | None:
        if pid == self._own_pid:
            return None
        if self._proc is not None and self._proc.pid == pid and self._alive(self._proc):
            return self._proc  # the same object keeps psutil's cached start time
        try:
            proc = psutil.Process(pid)
        except (psutil.Error, ValueError):
            return None
        return proc if self._alive(proc) else None

    def _from_pid_file(self) -> psutil.Process | None:
        if not self.pid_file:
            return None
        try:
            with open(self.pid_file, encoding="utf-8") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None  # not written yet, or being rewritten: next collect looks again
        return self._process(pid)

    def _from_cmdline(self) -> psutil.Process | None:
        if self._pattern is None:
            return None
        # Never the exporter, nor what launched it: a wrapper such as `sh -c "training-exporter
        # --process.cmdline-pattern train.py"` or `timeout` carries the pattern in its own
        # command line and is older than the trainer.
        try:
            excluded = {self._own_pid, *(p.pid for p in psutil.Process(self._own_pid).parents())}
        except psutil.Error:
            excluded = {self._own_pid}
        matches = []
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            cmdline = proc.info["cmdline"]
            if proc.pid in excluded or not cmdline:
                continue
            if self._pattern.search(" ".join(cmdline)):
                matches.append((proc.info["create_time"] or 0.0, proc.pid))
        for _, pid in sorted(matches):  # the oldest: the launcher rather than its workers
            proc = self._process(pid)
            if proc is not None:
                return proc
        return None

    def _from_gpu(self) -> psutil.Process | None:
        if self._gpu_pids is None:
            return None
        try:
            pids = self._gpu_pids()
        except Exception as exc:  # the GPU collector's trouble must not break this one
            log.debug("gpu_pids failed: %s", exc)
            return None
        pids = frozenset(pids)
        if pids == self._unseen_gpu_pids:
            return None
        candidates = [p for p in map(self._process, sorted(pids)) if p is not None]
        self._unseen_gpu_pids = frozenset() if candidates else pids
        return min(candidates, key=lambda p: p.create_time(), default=None)



def started_at(proc: psutil.Process) -> float:
    """When the process started (Unix time), to about 10 ms. psutil's create_time counts from
    the boot time the kernel gives in whole seconds, so it can be up to a second early: too
    coarse to tell whether a process started before or after a line of its log."""
    try:
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        ticks = int(fields[19])  # field 22, starttime, counted after the command's ")"
        booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        precise = booted + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux, or gone
        return proc.create_time()
    coarse = proc.create_time()
    # Where the clocks disagree by more than the boot time's rounding, psutil's is kept.
    return precise if abs(precise - coarse) <= 2.0 else coarse


class ProcessCollector(Collector):
    name = "process"

    def __init__(self, pid_file: str | None = None, cmdline_pattern: str | None = None,
                 gpu_pids: Callable[[], set[int]] | None = None, finder: ProcessFinder | None = None,
                 pods: ProcessPods | None = None) -> None:
        self.finder = finder or ProcessFinder(pid_file, cmdline_pattern, gpu_pids)
        self._pods = pods  # in DaemonSet mode: the process's pod labels its series

    def collect(self) -> Iterable[Metric]:
        found = self.finder.find()
        readings = None
        if found is not None:
            try:
                readings = self._read(*found)
            except psutil.NoSuchProcess:  # exited between discovery and reading
                self.finder.forget(found[0])
        fam = Families(SPECS)
        fam.add("training_process_up", 1 if readings is not None else 0)
        pod = self._pods.labels(found[0].pid) if self._pods is not None and readings is not None else {}
        for name, labels, value in readings or ():
            fam.add(name, value, {**labels, **pod})
        return list(fam)

    # -- readings
    def _read(self, proc: psutil.Process, source: str) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = []

        def add(name: str, read: Callable[[], float], **labels: str) -> None:
            try:
                out.append((name, labels, float(read())))
            except _SKIP:
                pass

        with proc.oneshot():
            try:
                name = proc.name()
            except _SKIP:
                name = ""
            out.append(("training_process_info", {"pid": str(proc.pid), "name": name, "source": source}, 1.0))
            add("training_process_start_time_seconds", proc.create_time)
            add("training_process_resident_memory_bytes", lambda: proc.memory_info().rss)
            add("training_process_cpu_seconds_total", lambda: proc.cpu_times().user, mode="user")
            add("training_process_cpu_seconds_total", lambda: proc.cpu_times().system, mode="system")
            add("training_process_threads", proc.num_threads)
            add("training_process_open_fds", proc.num_fds)
        children = self._children(proc)
        out.append(("training_process_children", {}, float(len(children))))
        out.append(("training_process_children_resident_memory_bytes", {}, float(sum(children.values()))))
        return out

    @staticmethod
    def _children(proc: psutil.Process) -> dict[int, int]:
        """RSS of each live descendant (a worker may exit while being read: then it is skipped)."""
        rss = {}
        for child in proc.children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    rss[child.pid] = child.memory_info().rss
            except psutil.Error:
                continue
        return rss
