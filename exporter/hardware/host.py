"""Host and container metrics through psutil and the cgroup filesystem.

Everything here reads /proc and /sys, which answer in microseconds, so ``collect()`` reads at
scrape time. The exception is filesystem usage: statvfs on a network filesystem (a checkpoint
directory on NFS) can block for minutes, so after ``start()`` a thread refreshes it and the
scrape only reads the last result, dropping a path whose check has not finished for a while.
Each group of readings (cpu, memory, disk, ...) fails on its own: the others are still exported.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Iterable

import psutil
from prometheus_client.metrics_core import Metric

from ..collector_base import Collector
from . import cgroup
from ._families import Families

log = logging.getLogger(__name__)

G, C = "gauge", "counter"
SPECS = {
    "training_host_cpu_seconds_total": (C, "CPU time spent in each mode (all CPUs, or per cpu when per_cpu is on)."),
    "training_host_cpus": (G, "Logical CPUs of the host."),
    "training_host_load1": (G, "1-minute load average."),
    "training_host_load5": (G, "5-minute load average."),
    "training_host_load15": (G, "15-minute load average."),
    "training_host_memory_total_bytes": (G, "Physical memory of the host."),
    "training_host_memory_available_bytes": (G, "Memory available to new work without swapping."),
    "training_host_swap_total_bytes": (G, "Swap space in total."),
    "training_host_swap_used_bytes": (G, "Swap space in use."),
    "training_host_disk_read_bytes_total": (C, "Bytes read from a block device."),
    "training_host_disk_written_bytes_total": (C, "Bytes written to a block device."),
    "training_host_network_receive_bytes_total": (C, "Bytes received on a network interface."),
    "training_host_network_transmit_bytes_total": (C, "Bytes sent on a network interface."),
    "training_host_filesystem_free_bytes": (G, "Bytes free to unprivileged users on the filesystem holding path."),
    "training_host_filesystem_size_bytes": (G, "Size of the filesystem holding path."),
    "training_host_read_errors_total": (C, "Collections in which a group of host readings failed."),
    "training_container_memory_limit_bytes": (G, "Memory limit of this container's cgroup (absent: no limit)."),
    "training_container_memory_usage_bytes": (G, "Memory charged to this container's cgroup."),
    "training_container_oom_kills_total": (C, "Processes killed by the OOM killer in this container's cgroup."),
}

# psutil's Linux CPU modes, as node_exporter names them. guest and guest_nice are left out:
# the kernel already counts them inside user and nice.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# What the memory readings need of /proc/meminfo: total, available, swap total, swap free.
MEMINFO_KEYS = (b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree")
# Block devices that are not disks: loop files, RAM disks, compressed RAM swap.
VIRTUAL_DISKS = ("loop", "ram", "zram")


class HostCollector(Collector):
    name = "host"
    filesystem_interval = 15.0  # seconds between statvfs checks once started

    def __init__(self, filesystem_paths: Iterable[str] = (), per_cpu: bool = False,
                 cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> None:
        self.filesystem_paths = list(filesystem_paths)
        self.per_cpu = per_cpu
        self.cgroup_root, self.proc_cgroup = cgroup_root, proc_cgroup
        self._errors: Counter[str] = Counter()
        self._usage: dict[str, tuple[float, int, int]] = {}  # path -> (checked at, free, size)
        self._warned_paths: set[str] = set()
        self._memory_cgroup: cgroup.MemoryCgroup | None = None
        self._cgroup_looked_up = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.filesystem_paths and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch_filesystems, name="host-filesystems", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a statvfs stuck on NFS is left behind (daemon)
            self._thread = None

    def collect(self) -> Iterable[Metric]:
        fam = Families(SPECS)
        for group, read in (("cpu", self._cpu), ("load", self._load), ("memory", self._memory),
                            ("disk", self._disk), ("network", self._network),
                            ("filesystem", self._filesystems), ("cgroup", self._cgroup)):
            try:
                read(fam)
            except Exception as exc:  # one broken source must not hide the others
                self._errors[group] += 1
                if self._errors[group] == 1:
                    log.warning("host %s readings failed: %s (further failures are counted only)", group, exc)
        for group, count in sorted(self._errors.items()):
            fam.add("training_host_read_errors_total", count, {"group": group})
        return list(fam)

    # -- groups of readings
    def _cpu(self, fam: Families) -> None:
        if self.per_cpu:
            for cpu, times in enumerate(psutil.cpu_times(percpu=True)):
                self._cpu_modes(fam, times, {"cpu": str(cpu)})
        else:
            self._cpu_modes(fam, psutil.cpu_times(), {})
        fam.add("training_host_cpus", psutil.cpu_count(logical=True) or 0)

    @staticmethod
    def _cpu_modes(fam: Families, times: object, labels: dict[str, str]) -> None:
        for mode in CPU_MODES:
            seconds = getattr(times, mode, None)  # not every platform has every mode
            if seconds is not None:
                fam.add("training_host_cpu_seconds_total", seconds, {**labels, "mode": mode})

    @staticmethod
    def _load(fam: Families) -> None:
        for name, value in zip(("training_host_load1", "training_host_load5", "training_host_load15"), os.getloadavg()):
            fam.add(name, value)

    @staticmethod
    def _memory(fam: Families) -> None:
        total, available, swap_total, swap_used = _memory_bytes()
        fam.add("training_host_memory_total_bytes", total)
        fam.add("training_host_memory_available_bytes", available)
        fam.add("training_host_swap_total_bytes", swap_total)
        fam.add("training_host_swap_used_bytes", swap_used)

    @staticmethod
    def _disk(fam: Families) -> None:
        # The kernel lists partitions too; only whole disks (in /sys/block) avoid double counting.
        whole_disks = set(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else set()
        for device, read, written in sorted(_disk_bytes()):
            if device.startswith(VIRTUAL_DISKS) or device not in whole_disks:
                continue
            fam.add("training_host_disk_read_bytes_total", read, {"device": device})
            fam.add("training_host_disk_written_bytes_total", written, {"device": device})

    @staticmethod
    def _network(fam: Families) -> None:
        for device, received, sent in sorted(_network_bytes()):
            if device == "lo":
                continue
            fam.add("training_host_network_receive_bytes_total", received, {"device": device})
            fam.add("training_host_network_transmit_bytes_total", sent, {"device": device})

    def _filesystems(self, fam: Families) -> None:
        if self._thread is None:  # not started: check inline
            self._check_filesystems()
        too_old = time.monotonic() - 3 * self.filesystem_interval
        for path in self.filesystem_paths:
            checked, free, size = self._usage.get(path, (None, 0, 0))
            if checked is None or (self._thread is not None and checked < too_old):
                continue  # never checked, or the check hangs: omit rather than report stale numbers
            fam.add("training_host_filesystem_free_bytes", free, {"path": path})
            fam.add("training_host_filesystem_size_bytes", size, {"path": path})

    def _cgroup(self, fam: Families) -> None:
        # Where the cgroup's files are is looked up once (three files and a parse), and again
        # only if they go away.
        if not self._cgroup_looked_up:
            self._memory_cgroup = cgroup.find_memory(self.cgroup_root, self.proc_cgroup)
            self._cgroup_looked_up = True
        if self._memory_cgroup is None:
            return
        memory = self._memory_cgroup.read()
        if memory.usage is None and self._memory_cgroup.directory is not None:
            self._cgroup_looked_up = False
        if memory.limit is not None:
            fam.add("training_container_memory_limit_bytes", memory.limit)
        if memory.usage is not None:
            fam.add("training_container_memory_usage_bytes", memory.usage)
        if memory.oom_kills is not None:
            fam.add("training_container_oom_kills_total", memory.oom_kills)

    # -- filesystem checks
    def _watch_filesystems(self) -> None:
        while not self._stop.is_set():
            self._check_filesystems()
            self._stop.wait(self.filesystem_interval)

    def _check_filesystems(self) -> None:
        for path in self.filesystem_paths:
            try:
                usage = psutil.disk_usage(path)
            except OSError as exc:
                self._usage.pop(path, None)
                if path not in self._warned_paths:
                    self._warned_paths.add(path)
                    log.warning("filesystem usage of %s unavailable: %s", path, exc)
                continue
            self._usage[path] = (time.monotonic(), usage.free, usage.total)


def _read(path: str) -> bytes | None:
    """A /proc file's content, or None where it is missing (off Linux)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _meminfo(path: str = "/proc/meminfo") -> dict[bytes, int] | None:
    """MEMINFO_KEYS from /proc/meminfo, in bytes (the file says kB), or None where it is missing."""
    text = _read(path)
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(b":")
        if name in MEMINFO_KEYS:
            values[name] = int(rest.split()[0]) * 1024
    return values


def _memory_bytes() -> tuple[int, int, int, int]:
    """Memory total and available, swap total and used. All four are in /proc/meminfo, read
    once; psutil reads it twice and /proc/vmstat besides. psutil is the fallback: off Linux, or
    before MemAvailable (Linux 3.14)."""
    info = _meminfo()
    if info is not None and len(info) == len(MEMINFO_KEYS):
        total, available, swap_total, swap_free = (info[key] for key in MEMINFO_KEYS)
        return total, available, swap_total, swap_total - swap_free
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return memory.total, memory.available, swap.total, swap.used


# Disk and network counters are read from /proc directly, as the kernel keeps them (Prometheus
# takes a decrease for a reset): psutil's readers parse every field, make a named tuple of each
# and keep a history to hide 32-bit wrap-arounds, at twice the cost. psutil stays the fallback
# where /proc is not there.
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors, whatever the device's own size


def _disk_bytes(path: str = "/proc/diskstats") -> list[tuple[str, int, int]]:
    """(device, bytes read, bytes written) of every block device the kernel lists."""
    text = _read(path)
    if text is None:
        return [(device, io.read_bytes, io.write_bytes)
                for device, io in (psutil.disk_io_counters(perdisk=True, nowrap=False) or {}).items()]
    disks = []
    for row in text.splitlines():
        # major minor name reads merged sectors-read ms writes merged sectors-written ...; a
        # partition on a 2.6-4.x kernel has only four numbers, and is not a whole disk anyway.
        fields = row.split()
        if len(fields) >= 14:
            disks.append((fields[2].decode(), int(fields[5]) * SECTOR_BYTES, int(fields[9]) * SECTOR_BYTES))
    return disks


def _network_bytes(path: str = "/proc/net/dev") -> list[tuple[str, int, int]]:
    """(interface, bytes received, bytes sent) of every network interface."""
    text = _read(path)
    if text is None:
        return [(device, io.bytes_recv, io.bytes_sent)
                for device, io in psutil.net_io_counters(pernic=True, nowrap=False).items()]
    interfaces = []
    for row in text.splitlines()[2:]:  # after two lines of column headings
        # "  eth0: rx-bytes packets errs drop fifo frame compressed multicast tx-bytes ..."
        name, _, counters = row.partition(b":")
        fields = counters.split()
        interfaces.append((name.strip().decode(), int(fields[0]), int(fields[8])))
    return interfaces
