"""NVML return codes grouped by what they mean for a poll, and small helpers.

The numbers are nvml.h's return codes: part of the C ABI, so they hold for every binding version
(and for the test stand-in, which uses the same values).
"""

from __future__ import annotations

from typing import Any

# The GPU (or this driver) cannot give this field: omit it from now on.
UNSUPPORTED_CODES = frozenset({
    3,  # NOT_SUPPORTED
    4,  # NO_PERMISSION
    6,  # NOT_FOUND
    13,  # FUNCTION_NOT_FOUND: the driver predates the call
    25,  # ARGUMENT_VERSION_MISMATCH: the driver predates the struct version
    26,  # DEPRECATED
})
# This GPU stopped answering: mark it down, try again next poll.
LOST_CODES = frozenset({15, 16, 28, 999})  # GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND, UNKNOWN
# NVML as a whole stopped working: shut down and initialise again.
GONE_CODES = frozenset({1, 9, 12, 18})  # UNINITIALIZED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND, LIB_RM_VERSION_MISMATCH
NOT_FOUND = 6
TIMEOUT = 10

# NVML_VALUE_NOT_AVAILABLE as unsigned int and unsigned long long: "no value", never a reading.
SENTINELS = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})


def error_code(exc: BaseException) -> int | None:
    return getattr(exc, "value", None)


def text(value: Any) -> str:
    """NVML strings come back as str from current bindings but as bytes from struct fields."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
