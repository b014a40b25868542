"""A small stand-in for nvidia-ml-py's ``pynvml``, driven by a scenario dict.

Two ways to use it:

* in-process: ``fake = load(scenario)`` returns a fresh module (its own state) to pass as
  ``GpuCollector(nvml=fake)``; tests change ``scenario`` (the same dict) to change readings;
* in a subprocess: put this directory first on PYTHONPATH so ``import pynvml`` finds it; the
  scenario is then the JSON file named by ``FAKE_NVML_SCENARIO``, re-read when it changes.

It mirrors the real module for what the exporter uses: the same function names and signatures,
the NVMLError hierarchy built from the real error codes, str for names/UUIDs but bytes for
``pciInfo.busId`` (as ctypes char arrays come back), ``usedGpuMemory`` None when not available.

Scenario keys (all optional): ``init_error`` (error name such as "LIBRARY_NOT_FOUND"),
``driver_version``, ``cuda_version`` (int, 12040 for 12.4), ``gpus``: a list of dicts with
``name uuid pci_bus_id``, ``utilization {gpu, memory}`` (percent), ``memory {total used free
reserved}`` (bytes), ``power_mw power_limit_mw energy_mj temperature``, ``clocks_mhz {sm mem}``,
``clock_event_reasons`` (bitmask), ``pcie {gen max_gen width max_width}``, ``fields {field id:
value}``, ``processes [{pid used_memory}]``, ``mig {enabled, max_count, devices: [{gi ci uuid
memory} or null]}``, ``gpm {supported, metrics {metric id: percent}}``, ``xid_events [codes]``
(each delivered once through the event set), ``errors {function name: error name}``, ``hang
{function name: seconds}``, ``lost`` (every call on that GPU raises GPU_IS_LOST).
A GPU key that is missing makes the matching call raise NVMLError_NotSupported.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import importlib.util
import json
import os
import string
import time

# Return codes are the C library's (nvml.h), the same numbers the real bindings define.
NVML_SUCCESS = 0
_ERROR_CODES = dict(
    UNINITIALIZED=1, INVALID_ARGUMENT=2, NOT_SUPPORTED=3, NO_PERMISSION=4, ALREADY_INITIALIZED=5, NOT_FOUND=6,
    INSUFFICIENT_SIZE=7, INSUFFICIENT_POWER=8, DRIVER_NOT_LOADED=9, TIMEOUT=10, IRQ_ISSUE=11,
    LIBRARY_NOT_FOUND=12, FUNCTION_NOT_FOUND=13, CORRUPTED_INFOROM=14, GPU_IS_LOST=15, RESET_REQUIRED=16,
    OPERATING_SYSTEM=17, LIB_RM_VERSION_MISMATCH=18, IN_USE=19, MEMORY=20, NO_DATA=21,
    ARGUMENT_VERSION_MISMATCH=25, GPU_NOT_FOUND=28, UNKNOWN=999)
globals().update({f"NVML_ERROR_{name}": code for name, code in _ERROR_CODES.items()})
_ERROR_STRINGS = {3: "Not Supported", 6: "Not Found", 9: "Driver Not Loaded", 10: "Timeout",
                  12: "NVML Shared Library Not Found", 15: "GPU is lost", 999: "Unknown Error"}
NVML_VALUE_NOT_AVAILABLE_uint = ctypes.c_uint(-1)
NVML_VALUE_NOT_AVAILABLE_ulonglong = ctypes.c_ulonglong(-1)
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
nvmlMemory_v2 = 0x02000028
nvmlEventTypeXidCriticalError = 0x0000000000000008
NVML_GPM_METRICS_GET_VERSION = 1
NVML_GPM_METRIC_SM_UTIL = 2
NVML_GPM_METRIC_SM_OCCUPANCY = 3
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
NVML_GPM_METRIC_DRAM_BW_UTIL = 10
NVML_GPM_METRIC_MAX = 477
NVML_FI_DEV_MEMORY_TEMP = 82


class NVMLError(Exception):
    _valClassMapping: dict = {}

    def __new__(typ, value):
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self):
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value


def _extractNVMLErrorsAsClasses():
    # As the real module does: NVML_ERROR_GPU_IS_LOST becomes class NVMLError_GpuIsLost, and
    # NVMLError(15) returns an instance of it.
    for name, code in _ERROR_CODES.items():
        class_name = "NVMLError_" + string.capwords(name, "_").replace("_", "")
        new = (lambda value: lambda typ, *args: NVMLError.__new__(typ, value))(code)
        cls = type(class_name, (NVMLError,), {"__new__": new, "__module__": __name__})
        globals()[class_name] = NVMLError._valClassMapping[code] = cls


_extractNVMLErrorsAsClasses()


def nvmlExceptionClass(nvmlErrorCode):
    return NVMLError._valClassMapping[nvmlErrorCode]


# ---- structs: ctypes where the caller fills them in, plain objects where the real module
# hands back a struct the caller only reads.
class _Struct:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class c_nvmlValue_t(ctypes.Union):
    _fields_ = [("dVal", ctypes.c_double), ("uiVal", ctypes.c_uint), ("ulVal", ctypes.c_ulong),
                ("ullVal", ctypes.c_ulonglong), ("sllVal", ctypes.c_longlong), ("siVal", ctypes.c_int),
                ("usVal", ctypes.c_ushort)]


class c_nvmlFieldValue_t(ctypes.Structure):
    _fields_ = [("fieldId", ctypes.c_uint32), ("scopeId", ctypes.c_uint32), ("timestamp", ctypes.c_int64),
                ("latencyUsec", ctypes.c_int64), ("valueType", ctypes.c_uint), ("nvmlReturn", ctypes.c_uint),
                ("value", c_nvmlValue_t)]


class _GpmSampleBuffer(ctypes.Structure):
    # Opaque in the real library; here it records which GPU it was taken on and in what order.
    _fields_ = [("device", ctypes.c_int), ("seq", ctypes.c_uint64)]


c_nvmlGpmSample_t = ctypes.POINTER(_GpmSampleBuffer)


class c_nvmlGpmMetric_t(ctypes.Structure):
    _fields_ = [("metricId", ctypes.c_uint), ("nvmlReturn", ctypes.c_uint), ("value", ctypes.c_double)]


class c_nvmlGpmMetricsGet_t(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("numMetrics", ctypes.c_uint), ("sample1", c_nvmlGpmSample_t),
                ("sample2", c_nvmlGpmSample_t), ("metrics", c_nvmlGpmMetric_t * NVML_GPM_METRIC_MAX)]


# ---- scenario and library state
_state = {"scenario": {}, "path": os.environ.get("FAKE_NVML_SCENARIO"), "stamp": None, "checked": 0.0,
          "inits": 0, "delivered": {}, "handles": {}, "gpm_seq": 0}


def load(scenario=None):
    """A fresh copy of this module (its own state) reading ``scenario`` in place."""
    spec = importlib.util.spec_from_file_location("fake_pynvml", __file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._state.update(path=None, scenario={} if scenario is None else scenario)
    return module


def _scenario():
    path = _state["path"]
    now = time.monotonic()
    # Check the file at most every 50 ms: a test changes it rarely, a poll reads it often.
    if path and (_state["stamp"] is None or now - _state["checked"] > 0.05):
        _state["checked"] = now
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if stamp != _state["stamp"]:
                with open(path, encoding="utf-8") as f:
                    _state["scenario"] = json.load(f)
                _state["stamp"] = stamp
        except (OSError, ValueError):
            pass  # missing or half-written: keep the previous scenario and look again later
    return _state["scenario"]


def _code(error):
    return error if isinstance(error, int) else globals()["NVML_ERROR_" + error]


def _check_init():
    if _state["inits"] == 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


_Handle = collections.namedtuple("_Handle", "index mig")  # a GPU, or MIG device ``mig`` on it


def _handle(index, mig=None):
    return _state["handles"].setdefault((index, mig), _Handle(index, mig))


def _gpu(index, fn_name):
    _check_init()
    gpus = _scenario().get("gpus", [])
    if not 0 <= index < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = gpus[index]
    if gpu.get("lost"):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    if fn_name in gpu.get("hang", {}):
        time.sleep(gpu["hang"][fn_name])
    if fn_name in gpu.get("errors", {}):
        raise NVMLError(_code(gpu["errors"][fn_name]))
    return gpu


def _need(mapping, key):
    if mapping.get(key) is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return mapping[key]


def _device_call(on="gpu"):
    """Resolve a handle to its scenario dict; ``on`` says which handles the call accepts."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(handle, *args, **kwargs):
            gpu = _gpu(handle.index, fn.__name__)
            if handle.mig is None:
                if on == "mig":
                    raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
                return fn(gpu, *args, **kwargs)
            if on == "gpu":  # most queries are not available on a MIG device
                raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
            devices = gpu.get("mig", {}).get("devices", [])
            if handle.mig >= len(devices) or devices[handle.mig] is None:
                raise NVMLError(NVML_ERROR_NOT_FOUND)
            return fn(devices[handle.mig], *args, **kwargs)
        return call
    return wrap


# ---- library and system
def nvmlInitWithFlags(flags):
    error = _scenario().get("init_error")
    if error:
        raise NVMLError(_code(error))
    _state["inits"] += 1


def nvmlInit():
    nvmlInitWithFlags(0)


def nvmlShutdown():
    _check_init()
    _state["inits"] -= 1


def nvmlSystemGetDriverVersion():
    _check_init()
    return _scenario().get("driver_version", "550.54.15")


def nvmlSystemGetCudaDriverVersion():
    _check_init()
    return _scenario().get("cuda_version", 12040)


nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion


def nvmlDeviceGetCount():
    _check_init()
    return len(_scenario().get("gpus", []))


def nvmlDeviceGetHandleByIndex(index):
    _gpu(index, "nvmlDeviceGetHandleByIndex")
    return _handle(index)


def nvmlDeviceGetIndex(handle):
    _gpu(handle.index, "nvmlDeviceGetIndex")
    return handle.index


# ---- device queries
@_device_call()
def nvmlDeviceGetPciInfo(d):
    bus_id = _need(d, "pci_bus_id").encode()
    return _Struct(busId=bus_id, busIdLegacy=bus_id[4:], domain=int(bus_id[:8], 16), bus=int(bus_id[9:11], 16))


@_device_call()
def nvmlDeviceGetUtilizationRates(d):
    util = _need(d, "utilization")
    return _Struct(gpu=util["gpu"], memory=util["memory"])


@_device_call(on="both")
def nvmlDeviceGetMemoryInfo(d, version=None):
    mem = _need(d, "memory")
    if version:
        if version != nvmlMemory_v2:
            raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        if "nvmlDeviceGetMemoryInfo_v2" in d.get("errors", {}):
            raise NVMLError(_code(d["errors"]["nvmlDeviceGetMemoryInfo_v2"]))
        return _Struct(version=version, total=mem["total"], reserved=mem.get("reserved", 0),
                       free=mem["free"], used=mem["used"])
    # The v1 struct has no reserved field: the driver counts reserved memory as used.
    return _Struct(total=mem["total"], free=mem["free"], used=mem["used"] + mem.get("reserved", 0))


@_device_call()
def nvmlDeviceGetTemperature(d, sensor):
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _need(d, "temperature")


@_device_call()
def nvmlDeviceGetClockInfo(d, type):
    names = {NVML_CLOCK_SM: "sm", NVML_CLOCK_MEM: "mem"}
    if type not in names:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _need(_need(d, "clocks_mhz"), names[type])


def _getter(name, *path, on="gpu"):
    """Define ``name(handle)`` returning the scenario value at ``path`` (NotSupported if absent)."""
    def query(d):
        for key in path:
            d = _need(d, key)
        return d
    query.__name__ = name  # errors and hangs are injected by function name
    globals()[name] = _device_call(on)(query)


_getter("nvmlDeviceGetUUID", "uuid", on="both")
_getter("nvmlDeviceGetGpuInstanceId", "gi", on="mig")
_getter("nvmlDeviceGetComputeInstanceId", "ci", on="mig")
for _name, _path in {
    "nvmlDeviceGetName": ("name",),
    "nvmlDeviceGetPowerUsage": ("power_mw",),  # milliwatts
    "nvmlDeviceGetEnforcedPowerLimit": ("power_limit_mw",),
    "nvmlDeviceGetTotalEnergyConsumption": ("energy_mj",),  # millijoules
    "nvmlDeviceGetCurrentClocksEventReasons": ("clock_event_reasons",),
    "nvmlDeviceGetCurrentClocksThrottleReasons": ("clock_event_reasons",),
    "nvmlDeviceGetCurrPcieLinkGeneration": ("pcie", "gen"),
    "nvmlDeviceGetMaxPcieLinkGeneration": ("pcie", "max_gen"),
    "nvmlDeviceGetCurrPcieLinkWidth": ("pcie", "width"),
    "nvmlDeviceGetMaxPcieLinkWidth": ("pcie", "max_width"),
}.items():
    _getter(_name, *_path)


@_device_call()
def nvmlDeviceGetFieldValues(d, fieldIds):
    values = (c_nvmlFieldValue_t * len(fieldIds))()
    known = d.get("fields", {})
    for slot, field_id in zip(values, fieldIds):
        slot.fieldId = field_id
        value = known.get(str(field_id), known.get(field_id))
        if value is None:
            slot.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
        elif isinstance(value, float):
            slot.valueType, slot.value.dVal = NVML_VALUE_TYPE_DOUBLE, value
        else:
            slot.valueType, slot.value.ullVal = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, value
    return values


@_device_call()
def nvmlDeviceGetComputeRunningProcesses(d):
    return [_Struct(pid=p["pid"], usedGpuMemory=p.get("used_memory"), gpuInstanceId=p.get("gi", 0xFFFFFFFF),
                    computeInstanceId=p.get("ci", 0xFFFFFFFF)) for p in d.get("processes", [])]


# ---- MIG
@_device_call()
def nvmlDeviceGetMigMode(d):
    mode = NVML_DEVICE_MIG_ENABLE if _need(d, "mig").get("enabled") else NVML_DEVICE_MIG_DISABLE
    return [mode, mode]


@_device_call()
def nvmlDeviceGetMaxMigDeviceCount(d):
    mig = _need(d, "mig")
    return mig.get("max_count", len(mig.get("devices", [])))


def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    mig = _gpu(device.index, "nvmlDeviceGetMigDeviceHandleByIndex").get("mig") or {}
    if not mig.get("enabled"):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    devices = mig.get("devices", [])
    if index >= len(devices) or devices[index] is None:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return _handle(device.index, index)


# ---- GPM
@_device_call()
def nvmlGpmQueryDeviceSupport(d):
    return _Struct(version=1, isSupportedDevice=1 if d.get("gpm", {}).get("supported") else 0)


def nvmlGpmSampleAlloc():
    _check_init()
    return ctypes.pointer(_GpmSampleBuffer())


def nvmlGpmSampleFree(gpmSample):
    pass


def nvmlGpmSampleGet(device, gpmSample):
    if not _gpu(device.index, "nvmlGpmSampleGet").get("gpm", {}).get("supported"):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    _state["gpm_seq"] += 1
    gpmSample.contents.device, gpmSample.contents.seq = device.index, _state["gpm_seq"]
    return gpmSample


def nvmlGpmMetricsGet(metricsGet):
    first, second = metricsGet.sample1.contents, metricsGet.sample2.contents
    # Like the real library: two samples of the same GPU, the first one taken earlier.
    if first.seq == 0 or second.seq <= first.seq or first.device != second.device:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    known = _gpu(second.device, "nvmlGpmMetricsGet").get("gpm", {}).get("metrics", {})
    for i in range(metricsGet.numMetrics):
        metric = metricsGet.metrics[i]
        value = known.get(str(metric.metricId), known.get(metric.metricId))
        metric.nvmlReturn = NVML_ERROR_NOT_SUPPORTED if value is None else NVML_SUCCESS
        metric.value = value or 0.0
    return metricsGet


# ---- events
def nvmlEventSetCreate():
    _check_init()
    return _Struct(devices=set(), types=0)


def nvmlDeviceRegisterEvents(handle, eventTypes, eventSet):
    _gpu(handle.index, "nvmlDeviceRegisterEvents")
    eventSet.devices.add(handle.index)
    eventSet.types |= eventTypes


def nvmlEventSetWait_v2(eventSet, timeoutms):
    deadline = time.monotonic() + timeoutms / 1000
    while True:
        gpus = _scenario().get("gpus", [])
        for index in sorted(eventSet.devices):
            events = gpus[index].get("xid_events", []) if index < len(gpus) else []
            done = _state["delivered"].get(index, 0)
            if done < len(events) and eventSet.types & nvmlEventTypeXidCriticalError:
                _state["delivered"][index] = done + 1
                return _Struct(device=_handle(index), eventType=nvmlEventTypeXidCriticalError,
                               eventData=events[done], gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        time.sleep(min(0.1, remaining))  # the real call blocks in C; a coarse poll keeps the fake cheap


nvmlEventSetWait = nvmlEventSetWait_v2


def nvmlEventSetFree(eventSet):
    eventSet.devices.clear()
