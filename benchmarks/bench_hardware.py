"""Cost of the hardware collectors: one GPU poll (fake NVML, 8 GPUs) and one host + process collect.

    python benchmarks/bench_hardware.py [--runs 500] [--gpus 8]

The GPU figures are the exporter's own Python work around NVML plus the fake's: on a real GPU
each NVML call adds the driver's time, so the table also counts the NVML calls per GPU poll.
Prints medians (and p90) in microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from exporter.hardware.gpu import GpuCollector  # noqa: E402
from exporter.hardware.host import HostCollector  # noqa: E402
from exporter.hardware.process import ProcessCollector  # noqa: E402
from fake_nvml import pynvml as fake_pynvml  # noqa: E402

GIB = 2**30


def h100(index: int) -> dict:
    return {
        "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{index:08x}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "utilization": {"gpu": 90, "memory": 45},
        "memory": {"total": 80 * GIB, "used": 60 * GIB, "free": 19 * GIB, "reserved": GIB},
        "power_mw": 650_000, "power_limit_mw": 700_000, "energy_mj": 10**9, "temperature": 60,
        "clocks_mhz": {"sm": 1980, "mem": 2619}, "clock_event_reasons": 0x4,
        "pcie": {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16},
        "fields": {"82": 70, "3": 0, "4": 0, "5": 0, "6": 0, "142": 0, "143": 0, "144": 0, "145": 0},
        "processes": [{"pid": 1000 + index, "used_memory": 60 * GIB}],
        "gpm": {"supported": True, "metrics": {"2": 80.0, "3": 40.0, "5": 60.0, "10": 50.0}},
    }


def timed(fn, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def row(name: str, micros: list[float], note: str = "") -> str:
    p90 = statistics.quantiles(micros, n=10)[-1] if len(micros) >= 10 else max(micros)
    return f"| {name:<48} | {statistics.median(micros):>10.1f} | {p90:>10.1f} | {note}"


def count_calls(fake) -> dict:
    """Count the NVML calls and the time spent inside the fake (to tell it from the exporter's)."""
    counts = {"n": 0, "seconds": 0.0}
    for name in dir(fake):
        fn = getattr(fake, name)
        if name.startswith("nvml") and callable(fn) and not isinstance(fn, type):
            def wrapper(*args, _fn=fn, **kwargs):
                counts["n"] += 1
                started = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    counts["seconds"] += time.perf_counter() - started
            setattr(fake, name, wrapper)
    return counts


def bench_gpu(runs: int, gpus: int) -> list[str]:
    fake = fake_pynvml.load({"driver_version": "550.54.15", "cuda_version": 12040,
                             "gpus": [h100(i) for i in range(gpus)]})
    calls = count_calls(fake)
    collector = GpuCollector(nvml=fake)
    started = time.perf_counter()
    assert collector._init()  # first poll included: it finds out which fields are supported
    first = (time.perf_counter() - started) * 1e6
    collector._watcher.stop()  # the Xid thread would compete for the CPU
    calls["n"] = 0
    collector._poll()
    per_gpu_calls = calls["n"] / gpus
    calls["seconds"] = 0.0
    poll = timed(collector._poll, runs)
    in_fake = calls["seconds"] / runs / gpus * 1e6
    collect = timed(collector.collect, runs)
    collector.stop()
    return [
        row(f"GPU init + first poll ({gpus} GPUs), once", [first]),
        row("GPU poll, per GPU", [m / gpus for m in poll],
            f"{per_gpu_calls:.0f} NVML calls per GPU; {in_fake:.0f} µs of it (mean) inside the fake"),
        row(f"GPU poll, all {gpus} GPUs", poll),
        row(f"GPU collect() from the snapshot ({gpus} GPUs)", collect),
    ]


def bench_host_process(runs: int) -> list[str]:
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # bench-trainer"])
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".pid", delete=False) as f:
            f.write(str(trainer.pid))
        host = HostCollector(filesystem_paths=["/", tempfile.gettempdir()])  # not started: statvfs inline
        by_file = ProcessCollector(pid_file=f.name)
        by_pattern = ProcessCollector(cmdline_pattern="bench-trainer")
        missing = ProcessCollector(cmdline_pattern="no-such-process-anywhere-0xdeadbeef")
        host_times = timed(host.collect, runs)
        file_times = timed(by_file.collect, runs)
        pattern_times = timed(by_pattern.collect, runs)
        both = timed(lambda: (host.collect(), by_file.collect()), runs)
        scan = timed(missing.collect, max(10, runs // 10))
        processes = len(psutil_pids())
    finally:
        trainer.kill()
        trainer.wait()
        os.unlink(f.name)
    return [
        row("host collect()", host_times),
        row("process collect(), found by PID file", file_times),
        row("process collect(), found by pattern (followed)", pattern_times),
        row("host + process collect()", both),
        row("process collect(), pattern matches nothing", scan, f"full scan of {processes} processes"),
    ]


def psutil_pids() -> list[int]:
    import psutil

    return psutil.pids()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs per row")
    print(f"| {'what':<48} | {'median µs':>10} | {'p90 µs':>10} | note")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 12}|------")
    for line in bench_gpu(args.runs, args.gpus) + bench_host_process(args.runs):
        print(line)


if __name__ == "__main__":
    main()
