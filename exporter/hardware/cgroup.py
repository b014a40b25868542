"""Container memory limit, usage and OOM kills from the cgroup filesystem.

cgroup v2 (one unified hierarchy) is tried first, then the v1 memory controller. The exporter's
own cgroup comes from /proc/self/cgroup; when the container has its own cgroup namespace that
path is "/" and the files sit at the mount root, otherwise they sit under root + path, so both
places are tried. Run as a Kubernetes sidecar, these are the sidecar container's own readings,
not the training container's (docs/hardware.md says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# cgroup v1 says "no limit" with LONG_MAX rounded down to the page size (9223372036854771712);
# anything this large is no real limit.
V1_NO_LIMIT = 2**60


@dataclass(frozen=True)
class CgroupMemory:
    version: int
    limit: int | None  # None: no limit set
    usage: int | None
    oom_kills: int | None


def own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """Controller -> path of this process's cgroup; the v2 hierarchy is under key ""."""
    paths: dict[str, str] = {}
    with open(proc_cgroup, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)  # hierarchy-id:controllers:path
            if len(parts) == 3:
                for controller in parts[1].split(","):
                    paths[controller] = parts[2]
    return paths


def _find(root: str, path: str, probe: str) -> str | None:
    for directory in (os.path.join(root, path.lstrip("/")), root):
        if os.path.exists(os.path.join(directory, probe)):
            return directory
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def _read_key(path: str, key: str) -> int | None:
    """A "key value" line from files such as memory.events or memory.oom_control."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                name, _, number = line.partition(" ")
                if name == key:
                    return int(number)
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class MemoryCgroup:
    """Where this process's memory cgroup files are: found once, read at every scrape."""

    version: int
    directory: str | None  # None: cgroup v2 at the root cgroup, which has no memory files

    def read(self) -> CgroupMemory:
        directory = self.directory
        if directory is None:
            return CgroupMemory(2, None, None, None)
        if self.version == 2:
            return CgroupMemory(2, _read_int(os.path.join(directory, "memory.max")),
                                _read_int(os.path.join(directory, "memory.current")),
                                _read_key(os.path.join(directory, "memory.events"), "oom_kill"))
        limit = _read_int(os.path.join(directory, "memory.limit_in_bytes"))
        return CgroupMemory(1, None if limit is None or limit >= V1_NO_LIMIT else limit,
                            _read_int(os.path.join(directory, "memory.usage_in_bytes")),
                            # oom_kill in memory.oom_control needs Linux 4.13 or later.
                            _read_key(os.path.join(directory, "memory.oom_control"), "oom_kill"))


def find_memory(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> MemoryCgroup | None:
    """This process's memory cgroup, or None without a cgroup filesystem."""
    paths = own_cgroups(proc_cgroup)
    if os.path.exists(os.path.join(root, "cgroup.controllers")):  # v2 mounted at root
        # The root cgroup has no memory.current/memory.max: nothing to report there.
        return MemoryCgroup(2, _find(root, paths.get("", "/"), "memory.current"))
    directory = _find(os.path.join(root, "memory"), paths.get("memory", "/"), "memory.usage_in_bytes")
    return MemoryCgroup(1, directory) if directory is not None else None


def read_memory(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> CgroupMemory | None:
    """The memory readings of this process's cgroup, or None without a cgroup filesystem."""
    found = find_memory(root, proc_cgroup)
    return found.read() if found is not None else None
