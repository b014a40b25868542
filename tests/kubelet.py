"""A ``/var/log/pods`` tree written the way the kubelet and its container runtime write it.

- ``<root>/<namespace>_<pod>_<uid>/<container>/<restart>.log``, one directory per pod, one per
  container, a log per run of the container (``0.log``, then ``1.log`` after a restart);
- each line in the CRI format, ``<RFC 3339 time, nanoseconds> <stream> <tag> <content>``, a line
  longer than the runtime's buffer (containerd's and CRI-O's 16 KiB) cut into ``P`` (partial)
  records and ended by an ``F`` (full) one;
- rotation as the kubelet does it: the log renamed to ``0.log.<YYYYmmdd-HHMMSS>``, the runtime
  told to reopen (what it writes until then still lands in the renamed file), and the rotated
  file gzipped later (``0.log.<stamp>.gz``, the uncompressed one removed);
- a pod deleted: its directory removed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

MAX_RECORD_BYTES = 16 * 1024  # containerd's max_container_log_line_size, CRI-O's buffer


def cri_records(line: str, stream: str = "stdout", when: float | None = None) -> bytes:
    """One line of a container's output as the runtime writes it: P records, then an F record."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as Go's RFC3339Nano
    data = line.encode()
    pieces = [data[i:i + MAX_RECORD_BYTES] for i in range(0, len(data), MAX_RECORD_BYTES)] or [b""]
    out = b""
    for index, piece in enumerate(pieces):
        tag = b"F" if index == len(pieces) - 1 else b"P"
        out += b"%s %s %s %s\n" % (stamp.encode(), stream.encode(), tag, piece)
    return out


class ContainerLogs:
    """One container's log directory; ``write`` goes where the runtime writes now."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.restart = 0
        self._handle = open(self.path, "ab")

    @property
    def path(self) -> Path:
        return self.directory / f"{self.restart}.log"

    def write(self, *lines: str, stream: str = "stdout") -> None:
        self._handle.write(b"".join(cri_records(line, stream) for line in lines))
        self._handle.flush()

    def rotate(self, stamp: str) -> Path:
        """The kubelet renames the log; the runtime keeps writing to the renamed file until it
        reopens the log (``reopen``)."""
        rotated = self.directory / f"{self.restart}.log.{stamp}"
        os.rename(self.path, rotated)
        return rotated

    def reopen(self) -> None:
        self._handle.close()
        self._handle = open(self.path, "ab")

    @staticmethod
    def compress(rotated: Path) -> Path:
        """The kubelet gzips a rotated log beside it, then removes the uncompressed one."""
        compressed = rotated.with_name(rotated.name + ".gz")
        partial = rotated.with_name(rotated.name + ".gz.tmp")
        with open(rotated, "rb") as source, gzip.open(partial, "wb") as target:
            shutil.copyfileobj(source, target)
        os.rename(partial, compressed)
        os.remove(rotated)
        return compressed

    def restarted(self) -> None:
        """The container ran again: the runtime writes the next restart's log; the previous one stays."""
        self._handle.close()
        self.restart += 1
        self._handle = open(self.path, "ab")

    def close(self) -> None:
        self._handle.close()


class PodLogs:
    """One pod's log directory under the kubelet's root."""

    def __init__(self, root: Path, namespace: str, name: str, uid: str | None = None) -> None:
        self.namespace, self.name = namespace, name
        self.uid = uid or str(uuid.uuid4())
        self.directory = root / f"{namespace}_{name}_{self.uid}"
        self.containers: dict[str, ContainerLogs] = {}

    def container(self, name: str) -> ContainerLogs:
        if name not in self.containers:
            self.containers[name] = ContainerLogs(self.directory / name)
        return self.containers[name]

    def delete(self) -> None:
        for container in self.containers.values():
            container.close()
        shutil.rmtree(self.directory)
