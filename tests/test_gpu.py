"""GpuCollector against the fake NVML: values, unsupported fields, failures and recovery."""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector_base import CollectorUnavailable
from exporter.hardware import gpu as gpu_module
from exporter.hardware.gpu import GpuCollector, cuda_version_text

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:  # whatever pytest's import mode, find the fake next door
    sys.path.insert(0, str(REPO / "tests"))
from fake_nvml import pynvml as fake_pynvml  # noqa: E402
GIB = 2**30
NOT_AVAILABLE_UINT = 0xFFFFFFFF


def h100(index: int, **overrides) -> dict:
    gpu = {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{index:08x}-1111-2222-3333-444455556666",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "utilization": {"gpu": 87, "memory": 40},
        "memory": {"total": 80 * GIB, "used": 30 * GIB, "free": 49 * GIB, "reserved": GIB},
        "power_mw": 350_500, "power_limit_mw": 700_000, "energy_mj": 123_456_789,
        "temperature": 55, "clocks_mhz": {"sm": 1980, "mem": 2619},
        "clock_event_reasons": 0x4 | 0x20,  # sw_power_cap + sw_thermal_slowdown
        "pcie": {"gen": 4, "max_gen": 5, "width": 16, "max_width": 16},
        "fields": {"82": 61, "3": 12, "4": 0, "5": 40, "6": 1, "142": 2, "143": 0, "144": 0, "145": 0},
        "processes": [],
        "gpm": {"supported": True, "metrics": {"2": 55.0, "3": 30.0, "5": 20.0, "10": 45.0}},
    }
    gpu.update(overrides)
    return gpu


def scenario(*gpus: dict, **top) -> dict:
    return {"driver_version": "550.54.15", "cuda_version": 12040,
            "gpus": list(gpus) or [h100(0), h100(1)], **top}


def scrape(collector) -> dict:
    """What Prometheus would see: {family name: family} after a text-format round trip."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(families: dict, sample_name: str, **labels: str) -> list[float]:
    family_name = sample_name[: -len("_total")] if sample_name.endswith("_total") else sample_name
    family = families.get(family_name)
    if family is None:
        return []
    return [s.value for s in family.samples
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, sample_name: str, **labels: str) -> float:
    found = values(families, sample_name, **labels)
    assert len(found) == 1, f"{sample_name}{labels}: {found}"
    return found[0]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except CollectorUnavailable:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


@contextlib.contextmanager
def running(scn: dict, poll_interval: float = 0.05, wait: bool = True, retry_interval: float = 0.1, prepare=None):
    fake = fake_pynvml.load(scn)
    if prepare is not None:
        prepare(fake)
    collector = GpuCollector(poll_interval=poll_interval, nvml=fake)
    collector.retry_interval = retry_interval
    collector.event_timeout_ms = 50
    collector.start()
    try:
        if wait:
            wait_for(lambda: scrape(collector))
        yield collector, fake
    finally:
        collector.stop()


def polls_after(collector, count: int = 2) -> dict:
    """Scrape once ``count`` more polls have finished since now."""
    start = value(scrape(collector), "training_gpu_last_poll_timestamp_seconds")
    seen = {start}
    fams = None

    def advanced():
        nonlocal fams
        fams = scrape(collector)
        seen.add(value(fams, "training_gpu_last_poll_timestamp_seconds"))
        return len(seen) > count

    wait_for(advanced)
    return fams


def test_values_in_base_units_and_types():
    with running(scenario()) as (collector, _):
        fams = polls_after(collector)
    g0 = {"gpu": "0", "uuid": "GPU-00000000-1111-2222-3333-444455556666"}
    assert value(fams, "training_gpu_up", **g0) == 1
    assert value(fams, "training_gpu_utilization_ratio", **g0) == pytest.approx(0.87)
    assert value(fams, "training_gpu_memory_utilization_ratio", **g0) == pytest.approx(0.40)
    assert value(fams, "training_gpu_memory_used_bytes", **g0) == 30 * GIB
    assert value(fams, "training_gpu_memory_free_bytes", **g0) == 49 * GIB
    assert value(fams, "training_gpu_memory_total_bytes", **g0) == 80 * GIB
    assert value(fams, "training_gpu_memory_reserved_bytes", **g0) == GIB
    assert value(fams, "training_gpu_power_draw_watts", **g0) == pytest.approx(350.5)
    assert value(fams, "training_gpu_power_limit_watts", **g0) == pytest.approx(700.0)
    assert value(fams, "training_gpu_energy_joules_total", **g0) == pytest.approx(123_456.789)
    assert value(fams, "training_gpu_temperature_celsius", **g0) == 55
    assert value(fams, "training_gpu_memory_temperature_celsius", **g0) == 61
    assert value(fams, "training_gpu_sm_clock_hertz", **g0) == 1980e6
    assert value(fams, "training_gpu_memory_clock_hertz", **g0) == 2619e6
    assert value(fams, "training_gpu_pcie_link_generation", **g0) == 4
    assert value(fams, "training_gpu_pcie_link_generation_max", **g0) == 5
    assert value(fams, "training_gpu_pcie_link_width_lanes", **g0) == 16
    assert value(fams, "training_gpu_pcie_link_width_max_lanes", **g0) == 16
    assert value(fams, "training_gpu_ecc_errors_total", error_type="corrected", counter="volatile", **g0) == 12
    assert value(fams, "training_gpu_ecc_errors_total", error_type="uncorrected", counter="aggregate", **g0) == 1
    assert value(fams, "training_gpu_remapped_rows", cause="correctable", **g0) == 2
    assert value(fams, "training_gpu_remapped_rows_failed", **g0) == 0
    assert fams["training_gpu_energy_joules"].type == "counter"
    assert fams["training_gpu_ecc_errors"].type == "counter"
    assert fams["training_gpu_poll_errors"].type == "counter"
    assert fams["training_gpu_utilization_ratio"].type == "gauge"
    assert abs(value(fams, "training_gpu_last_poll_timestamp_seconds") - time.time()) < 5
    assert abs(value(fams, "training_gpu_sample_timestamp_seconds", **g0) - time.time()) < 5
    # Per-GPU series carry only gpu and uuid plus the one label that splits them.
    allowed = {"gpu", "uuid", "reason", "error_type", "counter", "cause", "pid", "process_name", "xid",
               "gpu_instance", "compute_instance"}
    for family in fams.values():
        for s in family.samples:
            if family.name == "training_gpu_info":
                continue
            assert set(s.labels) <= allowed, s
            if s.labels:
                assert {"gpu", "uuid"} <= set(s.labels), s


def test_info_labels():
    with running(scenario()) as (collector, _):
        fams = scrape(collector)
    infos = {s.labels["gpu"]: s for s in fams["training_gpu_info"].samples}
    assert set(infos) == {"0", "1"}
    assert infos["1"].value == 1
    assert infos["1"].labels == {
        "gpu": "1", "uuid": "GPU-00000001-1111-2222-3333-444455556666", "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:19:00.0",  # decoded from the bytes NVML hands back
        "driver_version": "550.54.15", "cuda_version": "12.4"}
    assert cuda_version_text(12020) == "12.2" and cuda_version_text(11080) == "11.8"


def test_clock_event_reasons_are_named_zero_one_gauges():
    with running(scenario()) as (collector, _):
        fams = scrape(collector)
    reasons = {s.labels["reason"]: s.value for s in fams["training_gpu_clock_event_reason_active"].samples
               if s.labels["gpu"] == "0"}
    assert reasons == {"gpu_idle": 0, "sw_power_cap": 1, "hw_slowdown": 0, "sw_thermal_slowdown": 1,
                       "hw_thermal_slowdown": 0, "hw_power_brake_slowdown": 0, "sync_boost": 0,
                       "applications_clocks_setting": 0, "display_clocks_setting": 0}


def test_memory_falls_back_to_v1_without_reserved():
    old_driver = h100(0, errors={"nvmlDeviceGetMemoryInfo_v2": "FUNCTION_NOT_FOUND"})
    with running(scenario(old_driver)) as (collector, _):
        fams = polls_after(collector)
    # v1 counts the reserved GiB as used, and has no reserved field to export.
    assert value(fams, "training_gpu_memory_used_bytes", gpu="0") == 31 * GIB
    assert values(fams, "training_gpu_memory_reserved_bytes") == []


def test_unsupported_fields_are_omitted_logged_once_and_not_queried_again(caplog):
    partial = h100(1, power_limit_mw=NOT_AVAILABLE_UINT, fields={"82": NOT_AVAILABLE_UINT, "3": 5},
                   errors={"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED", "nvmlDeviceGetTemperature": "NOT_FOUND"})
    del partial["pcie"]
    calls = {"power": 0}
    caplog.set_level(logging.INFO, logger="exporter.hardware")

    def count_power_calls(fake):
        real_power = fake.nvmlDeviceGetPowerUsage

        def counted(handle):
            calls["power"] += handle.index == 1
            return real_power(handle)

        fake.nvmlDeviceGetPowerUsage = counted

    with running(scenario(h100(0), partial), prepare=count_power_calls) as (collector, fake):
        fams = polls_after(collector, 3)
    for name in ("training_gpu_power_draw_watts", "training_gpu_power_limit_watts", "training_gpu_temperature_celsius",
                 "training_gpu_memory_temperature_celsius", "training_gpu_pcie_link_generation"):
        assert values(fams, name, gpu="1") == [], name
        assert len(values(fams, name, gpu="0")) == 1, name
    assert value(fams, "training_gpu_ecc_errors_total", gpu="1", error_type="corrected", counter="volatile") == 5
    assert value(fams, "training_gpu_up", gpu="1") == 1
    assert value(fams, "training_gpu_poll_errors_total") == 0
    for family in fams.values():  # a sentinel never passes as a reading
        assert all(s.value not in (NOT_AVAILABLE_UINT, 2**64 - 1) for s in family.samples)
    assert calls["power"] == 1, "a field known to be unsupported must not be queried again"
    gpu1_lines = [r.getMessage() for r in caplog.records if "GPU 1 " in r.getMessage()]
    for key in ("power", "temperature", "pcie_gen", "power_limit", "NVML_FI_DEV_MEMORY_TEMP"):
        mentions = [line for line in gpu1_lines if re.search(rf"(?<!\w){key}(?!\w)", line)]
        assert len(mentions) == 1, (key, gpu1_lines)


@pytest.mark.parametrize("setup, reason", [
    ({"init_error": "LIBRARY_NOT_FOUND"}, "NVML Shared Library Not Found|Library Not Found"),
    ({"init_error": "DRIVER_NOT_LOADED"}, "Driver Not Loaded"),
    ({"gpus": []}, "no GPU"),
])
def test_unavailable_nvml_raises_logs_once_and_recovers(caplog, setup, reason):
    scn = scenario(h100(0))
    scn.update(setup)
    caplog.set_level(logging.WARNING, logger="exporter.hardware.gpu")
    with running(scn, wait=False, retry_interval=0.05) as (collector, _):
        time.sleep(0.4)  # several retries
        with pytest.raises(CollectorUnavailable) as info:
            collector.collect()
        assert re.search(reason, str(info.value), re.I), str(info.value)
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
        scn.pop("init_error", None)
        scn["gpus"] = [h100(0)]
        fams = wait_for(lambda: scrape(collector))
    assert value(fams, "training_gpu_up", gpu="0") == 1


def test_missing_pynvml_module_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` raise ImportError
    collector = GpuCollector(poll_interval=0.05)
    collector.start()
    try:
        wait_for(lambda: collector._reason)
        with pytest.raises(CollectorUnavailable, match="pynvml cannot be imported"):
            collector.collect()
    finally:
        collector.stop()


def test_real_pynvml_without_a_driver_is_unavailable_not_a_crash():
    pytest.importorskip("pynvml")
    collector = GpuCollector(poll_interval=0.05)
    collector.start()
    try:
        wait_for(lambda: collector._reason or collector._snapshot)
        if collector._snapshot is not None:
            pytest.skip("this machine has a working NVIDIA driver")
        with pytest.raises(CollectorUnavailable, match="nvmlInit failed"):
            collector.collect()
    finally:
        collector.stop()


def test_start_does_not_wait_long_for_a_hung_nvml_init():
    def slow_init(fake):
        real_init = fake.nvmlInit
        fake.nvmlInit = lambda: (time.sleep(1.5), real_init())[1]

    fake = fake_pynvml.load(scenario())
    slow_init(fake)
    collector = GpuCollector(poll_interval=0.05, nvml=fake)
    collector.start_wait = 0.2
    started = time.perf_counter()
    collector.start()
    try:
        assert time.perf_counter() - started < 1.0
        with pytest.raises(CollectorUnavailable, match="no GPU poll"):
            collector.collect()
        wait_for(lambda: scrape(collector))  # and it gets there once NVML answers
    finally:
        collector.stop()


def test_collect_before_the_first_poll_is_unavailable():
    collector = GpuCollector(nvml=fake_pynvml.load(scenario()))
    with pytest.raises(CollectorUnavailable, match="no GPU poll"):
        collector.collect()
    with pytest.raises(ValueError):
        GpuCollector(poll_interval=0)


@pytest.mark.parametrize("break_gpu", [
    lambda gpu: gpu.update(lost=True),
    lambda gpu: gpu.update(errors={"nvmlDeviceGetUtilizationRates": "UNKNOWN"}),
], ids=["gpu_is_lost", "unknown_error"])
def test_one_gpu_lost_mid_run_others_continue_and_it_recovers(break_gpu):
    scn = scenario()
    with running(scn) as (collector, _):
        healthy = copy.deepcopy(scn["gpus"][1])
        break_gpu(scn["gpus"][1])
        fams = wait_for(lambda: (f := scrape(collector)) and value(f, "training_gpu_up", gpu="1") == 0 and f)
        assert values(fams, "training_gpu_utilization_ratio", gpu="1") == []
        assert values(fams, "training_gpu_memory_used_bytes", gpu="1") == []
        assert value(fams, "training_gpu_info", gpu="1") == 1  # identity stays, marked down
        scn["gpus"][0]["utilization"] = {"gpu": 12, "memory": 3}  # GPU 0 keeps being polled
        wait_for(lambda: values(scrape(collector), "training_gpu_utilization_ratio", gpu="0") == [pytest.approx(0.12)])
        stale = value(scrape(collector), "training_gpu_sample_timestamp_seconds", gpu="1")
        assert value(scrape(collector), "training_gpu_last_poll_timestamp_seconds") > stale
        scn["gpus"][1] = healthy
        fams = wait_for(lambda: (f := scrape(collector)) and value(f, "training_gpu_up", gpu="1") == 1 and f)
        assert value(fams, "training_gpu_utilization_ratio", gpu="1") == pytest.approx(0.87)


def test_a_lost_gpu_is_logged_once_and_rediscovered_from_scratch(caplog):
    scn = scenario(h100(0), h100(1, lost=True, errors={"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"}))
    caplog.set_level(logging.WARNING, logger="exporter.hardware")
    with running(scn) as (collector, _):
        fams = polls_after(collector, 5)
        assert value(fams, "training_gpu_up", gpu="1") == 0
        assert values(fams, "training_gpu_sample_timestamp_seconds", gpu="1") == []  # never read
        assert len([r for r in caplog.records if "stopped answering" in r.getMessage()]) == 1
        scn["gpus"][1]["lost"] = False  # first reading: power is not supported, so omitted
        wait_for(lambda: value(scrape(collector), "training_gpu_up", gpu="1") == 1)
        assert values(scrape(collector), "training_gpu_power_draw_watts", gpu="1") == []
        scn["gpus"][1].update(lost=True, errors={})  # lost again, and replaced by a board with power
        wait_for(lambda: value(scrape(collector), "training_gpu_up", gpu="1") == 0)
        scn["gpus"][1]["lost"] = False
        wait_for(lambda: values(scrape(collector), "training_gpu_power_draw_watts", gpu="1") == [pytest.approx(350.5)])
        assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 2


def test_transient_error_is_counted_and_the_field_omitted_for_that_poll():
    scn = scenario(h100(0, errors={"nvmlDeviceGetPowerUsage": "TIMEOUT"}))
    with running(scn) as (collector, _):
        fams = polls_after(collector)
        assert values(fams, "training_gpu_power_draw_watts") == []
        assert value(fams, "training_gpu_up", gpu="0") == 1
        assert value(fams, "training_gpu_poll_errors_total") >= 2
        scn["gpus"][0]["errors"] = {}  # not marked unsupported: it comes back
        wait_for(lambda: values(scrape(collector), "training_gpu_power_draw_watts") == [pytest.approx(350.5)])


def test_nvml_failing_as_a_whole_is_reinitialised():
    scn = scenario(h100(0))
    with running(scn, retry_interval=0.05) as (collector, fake):
        scn["gpus"][0]["errors"] = {"nvmlDeviceGetUtilizationRates": "DRIVER_NOT_LOADED"}
        wait_for(lambda: collector._reason)
        with pytest.raises(CollectorUnavailable, match="NVML stopped working"):
            collector.collect()
        assert fake._state["inits"] == 0, "NVML must be shut down before initialising again"
        scn["gpus"][0]["errors"] = {}
        fams = wait_for(lambda: scrape(collector))
        assert value(fams, "training_gpu_up", gpu="0") == 1
        assert fake._state["inits"] == 1


def test_mig_devices_have_their_own_series():
    mig = {"enabled": True, "max_count": 7, "devices": [
        {"gi": 1, "ci": 0, "uuid": "MIG-aaaa", "memory": {"total": 10 * GIB, "used": 2 * GIB, "free": 8 * GIB}},
        None,  # an empty slot
        {"gi": 2, "ci": 0, "uuid": "MIG-bbbb", "memory": {"total": 20 * GIB, "used": 0, "free": 20 * GIB}},
    ]}
    parent = h100(0, mig=mig, processes=[{"pid": 4242, "used_memory": None, "gi": 1, "ci": 0}])
    del parent["utilization"]  # NVML does not report utilisation for a GPU in MIG mode
    with running(scenario(parent)) as (collector, _):
        fams = polls_after(collector)
        assert collector.gpu_pids() == {4242}
    samples = fams["training_gpu_mig_memory_used_bytes"].samples
    assert sorted((s.labels["gpu_instance"], s.labels["uuid"], s.value) for s in samples) == [
        ("1", "MIG-aaaa", 2 * GIB), ("2", "MIG-bbbb", 0)]
    assert all(s.labels["gpu"] == "0" and s.labels["compute_instance"] == "0" for s in samples)
    assert value(fams, "training_gpu_mig_memory_total_bytes", uuid="MIG-bbbb") == 20 * GIB
    # The parent keeps its own series, without MIG labels and not mixed with the MIG devices.
    parent_used = fams["training_gpu_memory_used_bytes"].samples
    assert [s.labels for s in parent_used] == [{"gpu": "0", "uuid": parent["uuid"]}]
    assert values(fams, "training_gpu_utilization_ratio") == []
    assert values(fams, "training_gpu_process_memory_used_bytes") == []  # usedGpuMemory None: omitted


def test_gpm_ratios_need_two_samples_and_are_omitted_when_unsupported():
    no_gpm = h100(1, gpm={"supported": False})
    no_dram = h100(2, gpm={"supported": True, "metrics": {"2": 55.0, "3": 30.0, "5": 20.0}})
    with running(scenario(h100(0), no_gpm, no_dram), poll_interval=0.3, wait=False) as (collector, _):
        first = wait_for(lambda: scrape(collector))
        assert values(first, "training_gpu_sm_active_ratio") == []  # one sample: no interval yet
        fams = polls_after(collector, 1)
    assert value(fams, "training_gpu_sm_active_ratio", gpu="0") == pytest.approx(0.55)
    assert value(fams, "training_gpu_sm_occupancy_ratio", gpu="0") == pytest.approx(0.30)
    assert value(fams, "training_gpu_tensor_active_ratio", gpu="0") == pytest.approx(0.20)
    assert value(fams, "training_gpu_dram_active_ratio", gpu="0") == pytest.approx(0.45)
    assert values(fams, "training_gpu_sm_active_ratio", gpu="1") == []
    assert values(fams, "training_gpu_dram_active_ratio", gpu="2") == []
    assert value(fams, "training_gpu_tensor_active_ratio", gpu="2") == pytest.approx(0.20)
    assert value(fams, "training_gpu_poll_errors_total") == 0


def test_xid_events_count_up_by_code():
    scn = scenario(h100(0), h100(1, xid_events=[31, 31, 79]))
    with running(scn) as (collector, _):
        fams = wait_for(lambda: (f := scrape(collector)) and sum(values(f, "training_gpu_xid_errors_total")) == 3 and f)
        assert fams["training_gpu_xid_errors"].type == "counter"
        assert value(fams, "training_gpu_xid_errors_total", gpu="1", xid="31") == 2
        assert value(fams, "training_gpu_xid_errors_total", gpu="1", xid="79") == 1
        assert values(fams, "training_gpu_xid_errors_total", gpu="0") == []
        scn["gpus"][1]["xid_events"].append(31)  # the same code again is another increment
        wait_for(lambda: values(scrape(collector), "training_gpu_xid_errors_total", xid="31") == [3])


def test_process_memory_with_names_where_the_pid_is_visible():
    unseen_pid = 4_000_000  # above Linux's pid_max: never a live process here
    procs = [{"pid": os.getpid(), "used_memory": 3 * GIB}, {"pid": unseen_pid, "used_memory": GIB},
             {"pid": 5_000_000, "used_memory": None}]
    with running(scenario(h100(0, processes=procs))) as (collector, _):
        fams = scrape(collector)
        assert collector.gpu_pids() == {os.getpid(), unseen_pid, 5_000_000}
    mine = value(fams, "training_gpu_process_memory_used_bytes", pid=str(os.getpid()))
    assert mine == 3 * GIB
    names = {s.labels["pid"]: s.labels["process_name"] for s in fams["training_gpu_process_memory_used_bytes"].samples}
    assert names[str(os.getpid())].startswith("python") or names[str(os.getpid())] == Path(sys.executable).name
    assert names[str(unseen_pid)] == ""
    assert str(5_000_000) not in names  # no memory figure: no series


def test_hung_nvml_call_does_not_delay_collect():
    hang = 2.0
    scn = scenario()
    with running(scn) as (collector, fake):
        scn["gpus"][1]["hang"] = {"nvmlDeviceGetUtilizationRates": hang}
        time.sleep(0.3)  # the poll thread is now inside the hanging call
        before = value(scrape(collector), "training_gpu_last_poll_timestamp_seconds")
        worst = 0.0
        for _ in range(20):
            started = time.perf_counter()
            fams = scrape(collector)
            worst = max(worst, time.perf_counter() - started)
        assert worst < 0.1 * hang, f"a scrape took {worst:.3f}s while NVML hung"
        # The data is stale and says so: the poll timestamp does not move.
        assert value(fams, "training_gpu_last_poll_timestamp_seconds") == before
        started = time.perf_counter()
    assert time.perf_counter() - started < 1.5, "stop() must not wait for the hung call"
    # Once the call returns, the thread left behind releases NVML itself.
    wait_for(lambda: fake._state["inits"] == 0, timeout=hang + 2)


def test_stop_releases_nvml_and_its_threads():
    before = set(threading.enumerate())
    with running(scenario(h100(0, xid_events=[13]))) as (collector, fake):
        wait_for(lambda: values(scrape(collector), "training_gpu_xid_errors_total"))
        assert fake._state["inits"] == 1
        assert {t.name for t in set(threading.enumerate()) - before} == {"gpu-poll", "gpu-xid-events"}
    assert fake._state["inits"] == 0
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def test_gpu_pids_empty_before_any_poll():
    assert GpuCollector(nvml=fake_pynvml.load(scenario())).gpu_pids() == set()


def test_fake_mirrors_the_installed_pynvml():
    real = pytest.importorskip("pynvml")
    fake = fake_pynvml.load({})
    for name in dir(fake):
        attr = getattr(fake, name)
        if name.startswith("NVML_ERROR_") or name.startswith("NVML_FI_") or name.startswith("NVML_GPM_METRIC_"):
            assert getattr(real, name) == attr, name
        elif name.startswith("NVMLError_"):
            assert getattr(real, name).__name__ == attr.__name__
            assert issubclass(attr, fake.NVMLError)
        elif name.startswith("nvml") and callable(attr) and not isinstance(attr, type):
            real_params = list(inspect.signature(getattr(real, name)).parameters)
            fake_params = list(inspect.signature(attr).parameters)
            if hasattr(attr, "__wrapped__"):  # the fake resolves the handle first: compare the rest
                real_params, fake_params = real_params[1:], fake_params[1:]
            assert real_params == fake_params, name
    assert type(fake.NVMLError(fake.NVML_ERROR_GPU_IS_LOST)) is fake.NVMLError_GpuIsLost
    assert fake.NVMLError_NotSupported().value == 3
    assert str(fake.NVMLError(fake.NVML_ERROR_DRIVER_NOT_LOADED)) == str(real.NVMLError(real.NVML_ERROR_DRIVER_NOT_LOADED))


def test_exporter_subprocess_reads_the_scenario_file_and_its_changes(tmp_path):
    path = tmp_path / "scenario.json"

    def write(scn):  # atomically, as a running exporter may read it at any moment
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(scn))
        os.replace(tmp, path)

    scn = scenario(h100(0))
    write(scn)
    script = textwrap.dedent("""
        import sys, time
        from exporter.hardware.gpu import GpuCollector
        collector = GpuCollector(poll_interval=0.05)   # default: import pynvml
        collector.start()
        def util():
            for family in collector.collect():
                for sample in family.samples:
                    if sample.name == "training_gpu_utilization_ratio":
                        return sample.value
        while True:
            try:
                first = util(); break
            except Exception:
                time.sleep(0.05)
        import pynvml
        print(pynvml.__file__, first, flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + 10
        while util() == first and time.monotonic() < deadline:
            time.sleep(0.05)
        print(util(), flush=True)
        collector.stop()
    """)
    env = {**os.environ, "FAKE_NVML_SCENARIO": str(path),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fake_nvml"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        module_file, first = proc.stdout.readline().split()
        assert Path(module_file).resolve() == (REPO / "tests" / "fake_nvml" / "pynvml.py").resolve()
        assert float(first) == pytest.approx(0.87)
        scn["gpus"][0]["utilization"] = {"gpu": 25, "memory": 5}
        write(scn)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert float(proc.stdout.readline()) == pytest.approx(0.25)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_every_gpu_metric_is_documented():
    doc = (REPO / "docs" / "hardware.md").read_text()
    missing = [name for name in gpu_module.SPECS if f"`{name}`" not in doc]
    assert not missing
