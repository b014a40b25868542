"""Xid errors from NVML's event API, counted per GPU and Xid code.

Polling cannot see Xids (NVML keeps no history of them), so a thread of its own blocks in
nvmlEventSetWait_v2 with a short timeout and counts every critical-Xid event. The result is a
counter that only goes up for as long as the exporter runs: two Xid 31s in a row are two
increments, which a "last Xid seen" gauge would hide.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Callable, Iterable

from .nvml_codes import TIMEOUT, UNSUPPORTED_CODES, error_code

log = logging.getLogger(__name__)

XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError


def handle_key(handle: Any) -> Any:
    """Something equal for two handles of the same GPU (ctypes hands back a new pointer object)."""
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return handle


class XidWatcher:
    """Reports each Xid event of the GPUs given as (index, uuid, handle) to ``on_xid``.

    The counts live with the caller, so they survive NVML being initialised again.
    """

    def __init__(self, nvml: Any, gpus: Iterable[tuple[int, str, Any]],
                 on_xid: Callable[[str, str, int], None], timeout_ms: int = 500) -> None:
        self._nvml = nvml
        self._gpus = list(gpus)
        self._on_xid = on_xid
        self._timeout_ms = timeout_ms
        self._by_handle = {handle_key(h): (index, uuid) for index, uuid, h in self._gpus}
        self._uuid_by_index = {index: uuid for index, uuid, _ in self._gpus}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None

    def start(self) -> None:
        nvml = self._nvml
        event_type = getattr(nvml, "nvmlEventTypeXidCriticalError", XID_CRITICAL_ERROR)
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as exc:
            log.warning("Xid events unavailable (nvmlEventSetCreate: %s); training_gpu_xid_errors_total stays empty", exc)
            return
        registered = 0
        for index, uuid, handle in self._gpus:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, event_type, self._event_set)
                registered += 1
            except nvml.NVMLError as exc:
                level = logging.INFO if error_code(exc) in UNSUPPORTED_CODES else logging.WARNING
                log.log(level, "GPU %d (%s): Xid events not available: %s", index, uuid, exc)
        if not registered:
            self._free()
            return
        self._thread = threading.Thread(target=self._run, name="gpu-xid-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_ms / 1000 + 1.0)
            if self._thread.is_alive():
                return  # still inside NVML: freeing the set under it would be unsafe
        self._free()

    def _free(self) -> None:
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except Exception:  # shutting down anyway
                pass
            self._event_set = None

    def _run(self) -> None:
        nvml = self._nvml
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait  # older bindings
        failures = 0
        while not self._stop.is_set():
            try:
                data = wait(self._event_set, self._timeout_ms)
            except nvml.NVMLError as exc:
                if error_code(exc) == TIMEOUT:
                    continue
                failures += 1
                if failures == 1:
                    log.warning("waiting for Xid events failed: %s; retrying", exc)
                self._stop.wait(1.0)  # a broken set would otherwise spin
                continue
            failures = 0
            if data.eventType & XID_CRITICAL_ERROR:
                self._count(data)

    def _count(self, data: Any) -> None:
        index, uuid = self._by_handle.get(handle_key(data.device), (None, ""))
        if index is None:  # not one of the handles registered (e.g. after a reset)
            try:
                index = self._nvml.nvmlDeviceGetIndex(data.device)
                uuid = self._uuid_by_index.get(index, "")
            except Exception:
                index = ""
        xid = int(data.eventData)
        log.warning("GPU %s (%s): Xid %d", index, uuid, xid)
        self._on_xid(str(index), uuid, xid)
