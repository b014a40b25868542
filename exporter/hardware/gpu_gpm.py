"""GPU Performance Monitoring (GPM, Hopper and later) from NVML alone, without DCGM.

GPM metrics are rates over an interval, so each poll takes one sample and asks NVML for the
metrics between it and the previous poll's sample. Two sample buffers are allocated once and
swapped, so a poll costs one nvmlGpmSampleGet and one nvmlGpmMetricsGet per GPU.
"""

from __future__ import annotations

from typing import Any

from .nvml_codes import UNSUPPORTED_CODES

# (binding constant, its nvml.h value, metric name). NVML reports each as a percentage.
METRICS = (
    ("NVML_GPM_METRIC_SM_UTIL", 2, "training_gpu_sm_active_ratio"),
    ("NVML_GPM_METRIC_SM_OCCUPANCY", 3, "training_gpu_sm_occupancy_ratio"),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", 5, "training_gpu_tensor_active_ratio"),
    ("NVML_GPM_METRIC_DRAM_BW_UTIL", 10, "training_gpu_dram_active_ratio"),
)


class GpmSampler:
    """GPM for one GPU; ``device`` is its GpuDevice (for NVML calls and error handling)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._metrics = [(getattr(device.nvml, const, value), name) for const, value, name in METRICS]
        self._buffers: list[Any] = []
        self._have_previous = False
        support = device.call("gpm", "nvmlGpmQueryDeviceSupport", device.handle)
        if support is not None and not support.isSupportedDevice:
            device.unsupported("gpm", "this GPU has no GPM (Hopper or later)")
        if "gpm" in device.skip or support is None:
            return
        for _ in range(2):
            buffer = device.call("gpm", "nvmlGpmSampleAlloc")
            if buffer is None:
                self.close()
                return
            self._buffers.append(buffer)

    def close(self) -> None:
        for buffer in self._buffers:
            try:
                self.device.nvml.nvmlGpmSampleFree(buffer)
            except Exception:  # freeing during shutdown: nothing useful to do on failure
                pass
        self._buffers = []

    def sample(self, handle: Any) -> dict[str, float]:
        """Take this poll's sample; the ratios since the previous poll (empty on the first)."""
        if len(self._buffers) != 2 or "gpm" in self.device.skip:
            return {}
        previous, current = self._buffers
        if self.device.call("gpm", "nvmlGpmSampleGet", handle, current) is None:
            self._have_previous = False
            return {}
        ratios = self._between(previous, current) if self._have_previous else {}
        self._buffers.reverse()  # this sample is the next poll's "previous"
        self._have_previous = True
        return ratios

    def _between(self, previous: Any, current: Any) -> dict[str, float]:
        nvml = self.device.nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = getattr(nvml, "NVML_GPM_METRICS_GET_VERSION", 1)
        request.numMetrics = len(self._metrics)
        request.sample1, request.sample2 = previous, current
        for slot, (metric_id, _) in enumerate(self._metrics):
            request.metrics[slot].metricId = metric_id
        if self.device.call("gpm_metrics", "nvmlGpmMetricsGet", request) is None:
            return {}
        ratios, keep = {}, []
        for slot, (metric_id, name) in enumerate(self._metrics):
            result = request.metrics[slot]
            if result.nvmlReturn in UNSUPPORTED_CODES:
                self.device.note(name, "not supported by GPM on this GPU; omitted")
                continue
            keep.append((metric_id, name))
            if result.nvmlReturn == 0:
                ratios[name] = result.value / 100.0
        self._metrics = keep
        return ratios
