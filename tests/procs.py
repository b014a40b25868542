"""Helpers for the reliability tests: fake-GPU exporters, log writers, process measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import FAKE_NVML_DIR, ROOT

HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")
GIB = 2**30
WRITER = Path(__file__).resolve().parent / "log_writer.py"


def gpu(index: int, **overrides) -> dict:
    """An H100 as the fake NVML describes it."""
    spec = {
        "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{index:08x}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "utilization": {"gpu": 90, "memory": 45},
        "memory": {"total": 80 * GIB, "used": 60 * GIB, "free": 19 * GIB, "reserved": GIB},
        "power_mw": 650_000, "power_limit_mw": 700_000, "energy_mj": 10**9, "temperature": 60,
        "clocks_mhz": {"sm": 1980, "mem": 2619}, "clock_event_reasons": 0x4,
        "pcie": {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16},
        "fields": {"82": 70, "3": 0, "4": 0, "5": 0, "6": 0, "142": 0, "143": 0, "144": 0, "145": 0},
        "processes": [], "gpm": {"supported": True, "metrics": {"2": 80.0, "3": 40.0, "5": 60.0, "10": 50.0}},
    }
    spec.update(overrides)
    return spec


def write_scenario(path: Path, gpus: list[dict], **top) -> None:
    """Replace the scenario atomically: the fake re-reads it when its mtime or inode changes."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"driver_version": "550.54.15", "cuda_version": 12040, "gpus": gpus, **top}))
    os.replace(partial, path)


def fake_nvml_env(scenario: Path) -> dict:
    return {"PYTHONPATH": str(FAKE_NVML_DIR), "FAKE_NVML_SCENARIO": str(scenario)}


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def start_writer(path: Path, *args: str) -> subprocess.Popen:
    """tests/log_writer.py as a child process; its summary is the JSON it prints at the end."""
    return subprocess.Popen([sys.executable, str(WRITER), str(path), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def writer_summary(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def elapsed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started
