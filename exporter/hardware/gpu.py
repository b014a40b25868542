"""GPU metrics through NVML (nvidia-ml-py's ``pynvml``).

A background thread initialises NVML and polls every GPU at ``poll_interval``; ``collect()``
only turns the latest snapshot into families, so a scrape never waits on NVML (a hung driver
call freezes the snapshot, and ``training_gpu_last_poll_timestamp_seconds`` shows it is old).
Without NVML (no library, no driver, no GPU) ``collect()`` raises ``CollectorUnavailable`` and
the thread tries again every ``retry_interval`` seconds, so the collector recovers by itself.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import psutil
from prometheus_client.metrics_core import Metric

from ..collector_base import Collector, CollectorUnavailable
from ._families import Families
from .gpu_device import GpuDevice, GpuReading, NvmlGone
from .gpu_events import XidWatcher
from .nvml_codes import text
from .pod_processes import ProcessPods

log = logging.getLogger(__name__)

G, C = "gauge", "counter"
SPECS = {
    "training_gpu_info": (G, "GPU identity; value 1. Labels: name, uuid, pci_bus_id, driver_version, cuda_version."),
    "training_gpu_up": (G, "1 when the GPU answered the latest poll, 0 when it is lost or not answering."),
    "training_gpu_last_poll_timestamp_seconds": (G, "Unix time the latest GPU poll finished."),
    "training_gpu_poll_duration_seconds": (G, "How long the latest GPU poll took."),
    "training_gpu_poll_errors_total": (C, "NVML calls that failed unexpectedly during polls."),
    "training_gpu_sample_timestamp_seconds": (G, "Unix time this GPU was last read successfully."),
    "training_gpu_utilization_ratio": (G, "Fraction of time a kernel ran on the GPU (0-1)."),
    "training_gpu_memory_utilization_ratio": (G, "Fraction of time device memory was read or written (0-1)."),
    "training_gpu_memory_used_bytes": (G, "Device memory in use."),
    "training_gpu_memory_free_bytes": (G, "Device memory free."),
    "training_gpu_memory_total_bytes": (G, "Device memory in total."),
    "training_gpu_memory_reserved_bytes": (G, "Device memory reserved by the driver (NVML memory info v2)."),
    "training_gpu_power_draw_watts": (G, "Power draw."),
    "training_gpu_power_limit_watts": (G, "Enforced power limit."),
    "training_gpu_energy_joules_total": (C, "Energy used since the driver was loaded."),
    "training_gpu_temperature_celsius": (G, "GPU core temperature."),
    "training_gpu_memory_temperature_celsius": (G, "Memory (HBM) temperature."),
    "training_gpu_sm_clock_hertz": (G, "Current SM clock."),
    "training_gpu_memory_clock_hertz": (G, "Current memory clock."),
    "training_gpu_clock_event_reason_active": (G, "1 while this reason holds the clocks down (or idle), else 0."),
    "training_gpu_pcie_link_generation": (G, "Current PCIe link generation."),
    "training_gpu_pcie_link_generation_max": (G, "Maximum PCIe link generation of the GPU and system."),
    "training_gpu_pcie_link_width_lanes": (G, "Current PCIe link width."),
    "training_gpu_pcie_link_width_max_lanes": (G, "Maximum PCIe link width."),
    "training_gpu_ecc_errors_total": (C, "ECC errors; counter=volatile since driver load, aggregate over the GPU's life."),
    "training_gpu_retired_pages": (G, "Memory pages retired, by cause (GPUs before Ampere)."),
    "training_gpu_retired_pages_pending": (G, "1 when a page retirement waits for the next reset."),
    "training_gpu_remapped_rows": (G, "Memory rows remapped, by cause (Ampere and later)."),
    "training_gpu_remapped_rows_pending": (G, "1 when a row remapping waits for the next reset."),
    "training_gpu_remapped_rows_failed": (G, "1 when a row remapping failed."),
    "training_gpu_process_memory_used_bytes": (G, "Device memory used by a compute process."),
    "training_gpu_sm_active_ratio": (G, "GPM: fraction of SMs busy over the last poll interval (0-1)."),
    "training_gpu_sm_occupancy_ratio": (G, "GPM: resident warps over the theoretical maximum (0-1)."),
    "training_gpu_tensor_active_ratio": (G, "GPM: fraction of time any tensor core pipe was active (0-1)."),
    "training_gpu_dram_active_ratio": (G, "GPM: DRAM bandwidth used over the maximum (0-1)."),
    "training_gpu_mig_memory_used_bytes": (G, "Memory used on a MIG device."),
    "training_gpu_mig_memory_free_bytes": (G, "Memory free on a MIG device."),
    "training_gpu_mig_memory_total_bytes": (G, "Memory of a MIG device."),
    "training_gpu_xid_errors_total": (C, "Xid errors seen through NVML events since the exporter started."),
}


@dataclass(frozen=True)
class Snapshot:
    time: float
    duration: float
    driver_version: str
    cuda_version: str
    gpus: tuple[GpuReading, ...]


def cuda_version_text(version: int) -> str:
    """NVML gives 1000 * major + 10 * minor (12040); print it as nvidia-smi does (12.4)."""
    return f"{version // 1000}.{version % 1000 // 10}"


class GpuCollector(Collector):
    name = "gpu"
    retry_interval = 30.0  # seconds between attempts to initialise NVML
    start_wait = 2.0  # how long start() waits for the first attempt, so early scrapes have data
    event_timeout_ms = 500  # how long the Xid thread blocks in NVML per wait

    def __init__(self, poll_interval: float = 1.0, nvml: Any = None, pods: ProcessPods | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.poll_interval = float(poll_interval)
        self._nvml_given = nvml
        self._pods = pods  # in DaemonSet mode: each compute process's pod
        self._nvml: Any = None
        self._devices: list[GpuDevice] = []
        self._watcher: XidWatcher | None = None
        self._driver_version = ""
        self._cuda_version = ""
        self._snapshot: Snapshot | None = None
        self._reason: str | None = None  # why NVML is unavailable, if it is
        self._warned: set[str] = set()
        self._poll_errors = 0
        self._xids: Counter[tuple[str, str, str]] = Counter()
        self._xid_lock = threading.Lock()
        self._names: dict[int, str] = {}  # pid -> process name, for PIDs still on a GPU
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._thread: threading.Thread | None = None

    # -- Collector
    def start(self) -> None:
        if self._thread is not None:
            return
        # Each thread gets its own events, so one left stuck in NVML by an earlier stop() stays
        # stopped when it returns.
        self._stop, self._first_attempt = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop, self._first_attempt),
                                        name="gpu-poll", daemon=True)
        self._thread.start()
        # NVML is initialised in the thread and waited for only briefly: a hung nvmlInit must
        # not hold the exporter up.
        self._first_attempt.wait(self.start_wait)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)
            if thread.is_alive():
                log.warning("GPU poll thread is stuck in an NVML call; it releases NVML when the call returns")

    def collect(self) -> Iterable[Metric]:
        thread = self._thread
        if thread is not None and not thread.is_alive():
            # Its last snapshot would be served as current for ever: say the collector failed.
            reason = "the GPU poll thread has ended (its error is in the log); restart the exporter"
            if reason not in self._warned:
                self._warned.add(reason)
                log.error("GPU metrics unavailable: %s", reason)
            raise CollectorUnavailable(reason)
        snap = self._snapshot
        if snap is None:
            raise CollectorUnavailable(self._reason or "no GPU poll has completed yet")
        fam = Families(SPECS)
        fam.add("training_gpu_last_poll_timestamp_seconds", snap.time)
        fam.add("training_gpu_poll_duration_seconds", snap.duration)
        fam.add("training_gpu_poll_errors_total", self._poll_errors)
        for gpu in snap.gpus:
            labels = {"gpu": str(gpu.index), "uuid": gpu.uuid}
            fam.add("training_gpu_info", 1, {**labels, "name": gpu.name, "pci_bus_id": gpu.pci_bus_id,
                                             "driver_version": snap.driver_version, "cuda_version": snap.cuda_version})
            fam.add("training_gpu_up", 1 if gpu.up else 0, labels)
            if gpu.sample_time is not None:
                fam.add("training_gpu_sample_timestamp_seconds", gpu.sample_time, labels)
            for name, sample_labels, value in gpu.samples:
                fam.add(name, value, sample_labels)
        with self._xid_lock:
            xids = sorted(self._xids.items())
        for (gpu_index, uuid, xid), count in xids:
            fam.add("training_gpu_xid_errors_total", count, {"gpu": gpu_index, "uuid": uuid, "xid": xid})
        return list(fam)

    def gpu_pids(self) -> set[int]:
        """PIDs of compute processes on any GPU in the latest snapshot (as NVML reports them)."""
        snap = self._snapshot
        return set().union(*(gpu.pids for gpu in snap.gpus)) if snap else set()

    # -- background thread
    def _run(self, stop: threading.Event, first_attempt: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if self._nvml is None:
                    try:
                        initialised = self._init()  # polls once when it succeeds
                    finally:
                        first_attempt.set()
                    if not initialised:
                        stop.wait(self.retry_interval)
                        continue
                else:
                    self._poll()
            except Exception as exc:  # a bug must not kill the thread and freeze the data silently
                self._poll_errors += 1
                if repr(exc) not in self._warned:
                    self._warned.add(repr(exc))
                    log.exception("GPU poll failed (repeats are counted in training_gpu_poll_errors_total)")
            stop.wait(max(0.0, self.poll_interval - (time.monotonic() - started)))
        # The thread that used NVML releases it, also when stop() stopped waiting for it; unless
        # a newer thread has taken over since.
        if self._thread in (None, threading.current_thread()):
            self._shutdown_nvml()

    def _init(self) -> bool:
        try:
            nvml = self._nvml_given or importlib.import_module("pynvml")
        except Exception as exc:  # ImportError, or a broken install
            return self._unavailable(f"pynvml cannot be imported ({exc}); install nvidia-ml-py")
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return self._unavailable(f"nvmlInit failed: {exc}")
        try:
            count = nvml.nvmlDeviceGetCount()
            self._driver_version = text(nvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            self._shutdown(nvml)
            return self._unavailable(f"NVML does not answer: {exc}")
        if count == 0:
            self._shutdown(nvml)
            return self._unavailable("NVML sees no GPU (device count 0)")
        self._cuda_version = self._read_cuda_version(nvml)
        self._nvml, self._reason = nvml, None
        self._devices = [GpuDevice(nvml, i, on_error=self._count_error, describe_process=self._describe_process)
                         for i in range(count)]
        log.info("NVML initialised: %d GPU(s), driver %s, CUDA %s", count, self._driver_version, self._cuda_version)
        self._poll()  # the first poll opens the devices the Xid watcher needs
        if self._nvml is None:  # NVML failed during that poll
            return False
        gpus = [(d.index, d.uuid, d.handle) for d in self._devices if d.handle is not None]
        self._watcher = XidWatcher(nvml, gpus, self._count_xid, self.event_timeout_ms)
        self._watcher.start()
        return True

    @staticmethod
    def _read_cuda_version(nvml: Any) -> str:
        for fn_name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            try:
                return cuda_version_text(int(getattr(nvml, fn_name)()))
            except Exception:
                continue
        return ""

    def _unavailable(self, reason: str) -> bool:
        self._reason, self._snapshot = reason, None
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("GPU metrics unavailable: %s (retrying every %.0f s)", reason, self.retry_interval)
        return False

    def _poll(self) -> None:
        started = time.monotonic()
        try:
            readings = tuple(device.read() for device in self._devices)
        except NvmlGone as exc:
            self._shutdown_nvml()
            self._unavailable(f"NVML stopped working: {exc}")
            return
        self._forget_names(readings)
        self._snapshot = Snapshot(time.time(), time.monotonic() - started, self._driver_version,
                                  self._cuda_version, readings)

    def _shutdown_nvml(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        for device in self._devices:
            device.close()
        self._devices = []
        if self._nvml is not None:
            self._shutdown(self._nvml)
            self._nvml = None

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # already gone; nothing to release
            pass

    # -- helpers handed to the devices and the Xid watcher
    def _count_error(self) -> None:
        self._poll_errors += 1

    def _count_xid(self, gpu: str, uuid: str, xid: int) -> None:
        with self._xid_lock:
            self._xids[(gpu, uuid, str(xid))] += 1

    def _describe_process(self, pid: int) -> dict[str, str]:
        name = {"process_name": self._process_name(pid)}
        return name if self._pods is None else {**name, **self._pods.labels(pid)}

    def _process_name(self, pid: int) -> str:
        # NVML's PIDs may belong to another PID namespace: a PID this process cannot see gets
        # an empty name rather than a guess.
        if pid not in self._names:
            try:
                self._names[pid] = psutil.Process(pid).name()
            except (psutil.Error, OSError):
                self._names[pid] = ""
        return self._names[pid]

    def _forget_names(self, readings: tuple[GpuReading, ...]) -> None:
        live = set().union(*(r.pids for r in readings))
        for pid in [p for p in self._names if p not in live]:
            del self._names[pid]
