"""Reading one GPU (and its MIG devices) through NVML into plain samples.

A ``GpuDevice`` remembers which fields its GPU does not support, so after the first poll only
supported fields are queried, and each unsupported field is logged once instead of being
exported as a sentinel. Errors are sorted by what they mean for the poll:

* unsupported (NotSupported, NotFound, FunctionNotFound, NoPermission, version mismatch):
  omit the field from now on;
* device lost (GpuIsLost, Unknown, ResetRequired, GpuNotFound): this GPU's reading stops and it
  is marked down; the next poll tries it again;
* NVML gone (Uninitialized, DriverNotLoaded, LibraryNotFound, RM version mismatch): raised as
  ``NvmlGone`` so the collector re-initialises NVML;
* anything else: the field is omitted this poll and the error is counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .gpu_gpm import GpmSampler
from .nvml_codes import GONE_CODES, LOST_CODES, NOT_FOUND, SENTINELS, UNSUPPORTED_CODES, error_code, text

log = logging.getLogger(__name__)

# Clock event (formerly "throttle") reason bits from nvml.h, with the label each gets.
CLOCK_EVENT_REASONS = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clocks_setting", 0x100),
)

# Field values read in one nvmlDeviceGetFieldValues call: id name -> (metric, extra labels).
# ECC single-bit errors are the corrected ones, double-bit the uncorrected ones.
FIELDS = {
    "NVML_FI_DEV_MEMORY_TEMP": ("training_gpu_memory_temperature_celsius", {}),
    "NVML_FI_DEV_ECC_SBE_VOL_TOTAL": ("training_gpu_ecc_errors_total", {"error_type": "corrected", "counter": "volatile"}),
    "NVML_FI_DEV_ECC_DBE_VOL_TOTAL": ("training_gpu_ecc_errors_total", {"error_type": "uncorrected", "counter": "volatile"}),
    "NVML_FI_DEV_ECC_SBE_AGG_TOTAL": ("training_gpu_ecc_errors_total", {"error_type": "corrected", "counter": "aggregate"}),
    "NVML_FI_DEV_ECC_DBE_AGG_TOTAL": ("training_gpu_ecc_errors_total", {"error_type": "uncorrected", "counter": "aggregate"}),
    "NVML_FI_DEV_RETIRED_SBE": ("training_gpu_retired_pages", {"cause": "single_bit_ecc"}),
    "NVML_FI_DEV_RETIRED_DBE": ("training_gpu_retired_pages", {"cause": "double_bit_ecc"}),
    "NVML_FI_DEV_RETIRED_PENDING": ("training_gpu_retired_pages_pending", {}),
    "NVML_FI_DEV_REMAPPED_COR": ("training_gpu_remapped_rows", {"cause": "correctable"}),
    "NVML_FI_DEV_REMAPPED_UNC": ("training_gpu_remapped_rows", {"cause": "uncorrectable"}),
    "NVML_FI_DEV_REMAPPED_PENDING": ("training_gpu_remapped_rows_pending", {}),
    "NVML_FI_DEV_REMAPPED_FAILURE": ("training_gpu_remapped_rows_failed", {}),
}
# Field ids from nvml.h, used when the bindings predate a name.
FIELD_IDS = {
    "NVML_FI_DEV_MEMORY_TEMP": 82, "NVML_FI_DEV_ECC_SBE_VOL_TOTAL": 3, "NVML_FI_DEV_ECC_DBE_VOL_TOTAL": 4,
    "NVML_FI_DEV_ECC_SBE_AGG_TOTAL": 5, "NVML_FI_DEV_ECC_DBE_AGG_TOTAL": 6, "NVML_FI_DEV_RETIRED_SBE": 29,
    "NVML_FI_DEV_RETIRED_DBE": 30, "NVML_FI_DEV_RETIRED_PENDING": 31, "NVML_FI_DEV_REMAPPED_COR": 142,
    "NVML_FI_DEV_REMAPPED_UNC": 143, "NVML_FI_DEV_REMAPPED_PENDING": 144, "NVML_FI_DEV_REMAPPED_FAILURE": 145,
}
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by NVML_VALUE_TYPE_*

Sample = tuple[str, dict[str, str], float]  # metric name, all labels, value


class DeviceLost(Exception):
    """This GPU stopped answering (fell off the bus, needs a reset, ...)."""


class NvmlGone(Exception):
    """NVML itself stopped working (driver unloaded, library mismatch): re-initialise."""


@dataclass(frozen=True)
class GpuReading:
    """What one poll learned about one GPU; immutable so scrapes can read it without locks."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    up: bool
    sample_time: float | None  # wall time of the last successful read of this GPU
    samples: tuple[Sample, ...] = ()
    pids: frozenset[int] = frozenset()


@dataclass
class GpuDevice:
    nvml: Any
    index: int
    on_error: Callable[[], None] = lambda: None  # counts an unexpected per-field error
    # The labels naming a compute process beside its pid: its name (and pod, in DaemonSet mode).
    describe_process: Callable[[int], dict[str, str]] = lambda pid: {"process_name": ""}
    handle: Any = None
    uuid: str = ""
    name: str = ""
    pci_bus_id: str = ""
    mig_enabled: bool = False
    last_ok: float | None = None
    up: bool = False
    _down: bool = False  # failed since its last good reading
    skip: set[str] = field(default_factory=set)  # fields this GPU does not support
    _noted: set[str] = field(default_factory=set)  # messages already logged
    _newly_unsupported: list[tuple[str, str]] = field(default_factory=list)  # (why, field), logged after a poll
    _static: list[Sample] = field(default_factory=list)  # max PCIe link: read once
    _fields: list[tuple[int, str]] | None = None  # (field id, FIELDS key) still worth asking
    _gpm: GpmSampler | None = None

    # -- public
    def read(self) -> GpuReading:
        """One poll of this GPU; never raises except ``NvmlGone``."""
        try:
            if self.handle is None:
                self._open()
            samples, pids = self._read_all()
        except DeviceLost as exc:
            self._log_unsupported()
            if not self._down:  # log the transition, not every poll while it stays down
                log.warning("GPU %d (%s) stopped answering: %s; its series stop until it recovers",
                            self.index, self.uuid or "uuid unknown", exc)
            self.up, self._down, self.handle = False, True, None  # a fresh handle next time
            return GpuReading(self.index, self.uuid, self.name, self.pci_bus_id, False, self.last_ok)
        self._log_unsupported()
        if self._down:
            log.warning("GPU %d (%s) answers again", self.index, self.uuid)
        self.up, self._down, self.last_ok = True, False, time.time()
        return GpuReading(self.index, self.uuid, self.name, self.pci_bus_id, True, self.last_ok,
                          tuple(samples), frozenset(pids))

    def close(self) -> None:
        if self._gpm is not None:
            self._gpm.close()
            self._gpm = None

    # -- NVML calls, sorted by what their errors mean
    def call(self, key: str, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``nvml.<fn_name>``; None when the field is unsupported or failed this poll."""
        if key in self.skip:
            return None
        fn = getattr(self.nvml, fn_name, None)
        if fn is None:  # bindings too old to know the function
            self.unsupported(key, f"{fn_name} missing from the NVML bindings")
            return None
        try:
            value = fn(*args, **kwargs)
        except self.nvml.NVMLError as exc:
            self.handle_error(key, exc)
            return None
        if isinstance(value, int) and value in SENTINELS:
            self.note(key, "reported as not available (sentinel value); omitted")
            return None
        return value

    def handle_error(self, key: str, exc: BaseException) -> None:
        code = error_code(exc)
        if code in UNSUPPORTED_CODES:
            self.unsupported(key, str(exc))
        elif code in LOST_CODES:
            raise DeviceLost(f"{key}: {exc}")
        elif code in GONE_CODES:
            raise NvmlGone(f"{key}: {exc}")
        else:
            self.on_error()
            self.note(f"{key}:{code}", f"failed: {exc}", logging.WARNING)

    def unsupported(self, key: str, why: str) -> None:
        self.skip.add(key)
        if key not in self._noted:
            self._noted.add(key)
            self._newly_unsupported.append((why, key))

    def _log_unsupported(self) -> None:
        # One line per GPU and poll (in practice: the first), naming each field once.
        if self._newly_unsupported:
            by_reason: dict[str, list[str]] = {}
            for why, key in self._newly_unsupported:
                by_reason.setdefault(why, []).append(key)
            log.info("GPU %d (%s) omits fields it does not support: %s", self.index, self.uuid,
                     "; ".join(f"{why}: {', '.join(keys)}" for why, keys in by_reason.items()))
            self._newly_unsupported.clear()

    def note(self, key: str, message: str, level: int = logging.INFO) -> None:
        if key not in self._noted:
            self._noted.add(key)
            log.log(level, "GPU %d (%s) %s %s", self.index, self.uuid, key, message)

    # -- reading
    def _open(self) -> None:
        nvml = self.nvml
        try:
            self.handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
        except nvml.NVMLError as exc:
            if error_code(exc) in GONE_CODES:
                raise NvmlGone(f"handle: {exc}") from None
            raise DeviceLost(f"no handle: {exc}") from None
        if self._down:
            # Back after a loss (perhaps a reset, a new MIG mode): ask for every field again.
            self.skip.clear()
            self._fields = None
            self.close()
        h = self.handle
        self.uuid = text(self.call("uuid", "nvmlDeviceGetUUID", h) or self.uuid)
        self.name = text(self.call("name", "nvmlDeviceGetName", h) or self.name)
        pci = self.call("pci", "nvmlDeviceGetPciInfo", h)
        if pci is not None:
            self.pci_bus_id = text(pci.busId)
        mode = self.call("mig_mode", "nvmlDeviceGetMigMode", h)
        self.mig_enabled = bool(mode) and mode[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        self._static = []
        for key, fn_name, metric in (
                ("pcie_max_gen", "nvmlDeviceGetMaxPcieLinkGeneration", "training_gpu_pcie_link_generation_max"),
                ("pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth", "training_gpu_pcie_link_width_max_lanes")):
            value = self.call(key, fn_name, h)
            if value is not None:
                self._static.append((metric, self._labels(), float(value)))
        if self._gpm is None and "gpm" not in self.skip:
            self._gpm = GpmSampler(self)  # new after a loss: old samples must not be paired with new

    def _labels(self) -> dict[str, str]:
        return {"gpu": str(self.index), "uuid": self.uuid}

    def _read_all(self) -> tuple[list[Sample], set[int]]:
        h, out = self.handle, list(self._static)
        labels = self._labels()

        def add(metric: str, value: float | None, scale: float = 1.0, **extra: str) -> None:
            if value is not None:
                out.append((metric, {**labels, **extra} if extra else labels, float(value) * scale))

        util = self.call("utilization", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            add("training_gpu_utilization_ratio", util.gpu, 0.01)
            add("training_gpu_memory_utilization_ratio", util.memory, 0.01)
        self._memory(h, "memory", add)
        add("training_gpu_power_draw_watts", self.call("power", "nvmlDeviceGetPowerUsage", h), 1e-3)
        add("training_gpu_power_limit_watts", self.call("power_limit", "nvmlDeviceGetEnforcedPowerLimit", h), 1e-3)
        add("training_gpu_energy_joules_total", self.call("energy", "nvmlDeviceGetTotalEnergyConsumption", h), 1e-3)
        core_sensor = getattr(self.nvml, "NVML_TEMPERATURE_GPU", 0)
        sm_clock, mem_clock = getattr(self.nvml, "NVML_CLOCK_SM", 1), getattr(self.nvml, "NVML_CLOCK_MEM", 2)
        add("training_gpu_temperature_celsius", self.call("temperature", "nvmlDeviceGetTemperature", h, core_sensor))
        add("training_gpu_sm_clock_hertz", self.call("sm_clock", "nvmlDeviceGetClockInfo", h, sm_clock), 1e6)
        add("training_gpu_memory_clock_hertz", self.call("mem_clock", "nvmlDeviceGetClockInfo", h, mem_clock), 1e6)
        self._clock_events(h, add)
        add("training_gpu_pcie_link_generation", self.call("pcie_gen", "nvmlDeviceGetCurrPcieLinkGeneration", h))
        add("training_gpu_pcie_link_width_lanes", self.call("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth", h))
        self._field_values(h, add)
        pids = self._processes(h, add)
        if self._gpm is not None:
            for metric, ratio in self._gpm.sample(h).items():
                add(metric, ratio)
        if self.mig_enabled:
            out.extend(self._mig(h))
        return out, pids

    def _memory(self, h: Any, key: str, add: Callable[..., None], prefix: str = "training_gpu_memory") -> None:
        # v2 separates driver-reserved memory from "used" (matching nvidia-smi); older drivers
        # only have v1, whose "used" includes the reserved part.
        version = getattr(self.nvml, "nvmlMemory_v2", None)
        info = self.call(f"{key}_v2", "nvmlDeviceGetMemoryInfo", h, version=version) if version else None
        if info is None and (version is None or f"{key}_v2" in self.skip):
            info = self.call(key, "nvmlDeviceGetMemoryInfo", h)
        if info is None:
            return
        add(f"{prefix}_used_bytes", info.used)
        add(f"{prefix}_free_bytes", info.free)
        add(f"{prefix}_total_bytes", info.total)
        if prefix == "training_gpu_memory" and getattr(info, "reserved", None) is not None:
            add("training_gpu_memory_reserved_bytes", info.reserved)

    def _clock_events(self, h: Any, add: Callable[..., None]) -> None:
        mask = self.call("clock_events", "nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is None and "clock_events" in self.skip:  # drivers before the rename
            mask = self.call("clock_throttle", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if mask is not None:
            for reason, bit in CLOCK_EVENT_REASONS:
                add("training_gpu_clock_event_reason_active", 1 if mask & bit else 0, reason=reason)

    def _field_values(self, h: Any, add: Callable[..., None]) -> None:
        if self._fields is None:
            self._fields = [(getattr(self.nvml, name, FIELD_IDS[name]), name) for name in FIELDS]
        if not self._fields:
            return
        values = self.call("field_values", "nvmlDeviceGetFieldValues", h, [fid for fid, _ in self._fields])
        if values is None:
            return
        keep = []
        for (fid, name), value in zip(self._fields, values):
            code = value.nvmlReturn
            if code != 0:
                exc = self.nvml.NVMLError(code)
                if code in UNSUPPORTED_CODES:
                    self.unsupported(name, str(exc))
                    continue
                keep.append((fid, name))
                self.handle_error(name, exc)  # lost/gone raise; others are counted
                continue
            keep.append((fid, name))
            member = _VALUE_MEMBERS[value.valueType] if value.valueType < len(_VALUE_MEMBERS) else None
            number = getattr(value.value, member) if member else None
            if number is None or (isinstance(number, int) and number in SENTINELS):
                self.note(name, "reported as not available; omitted")
                continue
            metric, extra = FIELDS[name]
            add(metric, number, **extra)
        self._fields = keep  # later polls ask only for fields this GPU answers

    def _processes(self, h: Any, add: Callable[..., None]) -> set[int]:
        procs = self.call("processes", "nvmlDeviceGetComputeRunningProcesses", h)
        used: dict[int, int] = {}
        pids: set[int] = set()
        for proc in procs or ():
            pids.add(proc.pid)
            memory = proc.usedGpuMemory
            # None (or the sentinel) under MIG, in some containers, or without permission.
            if memory is not None and memory not in SENTINELS:
                used[proc.pid] = used.get(proc.pid, 0) + memory
        for pid, memory in sorted(used.items()):
            add("training_gpu_process_memory_used_bytes", memory, pid=str(pid), **self.describe_process(pid))
        return pids

    def _mig(self, h: Any) -> list[Sample]:
        count = self.call("mig_count", "nvmlDeviceGetMaxMigDeviceCount", h) or 0
        out: list[Sample] = []
        for slot in range(count):
            try:
                mig = self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except self.nvml.NVMLError as exc:
                if error_code(exc) != NOT_FOUND:  # NOT_FOUND: an empty slot
                    self.handle_error(f"mig{slot}", exc)
                continue
            gi = self.call(f"mig{slot}_gi", "nvmlDeviceGetGpuInstanceId", mig)
            ci = self.call(f"mig{slot}_ci", "nvmlDeviceGetComputeInstanceId", mig)
            uuid = self.call(f"mig{slot}_uuid", "nvmlDeviceGetUUID", mig)
            if gi is None or ci is None or uuid is None:
                continue
            labels = {"gpu": str(self.index), "gpu_instance": str(gi), "compute_instance": str(ci), "uuid": text(uuid)}

            def add(metric: str, value: float | None, labels: dict[str, str] = labels) -> None:
                if value is not None:
                    out.append((metric, labels, float(value)))

            self._memory(mig, f"mig{slot}_memory", add, prefix="training_gpu_mig_memory")
        return out
