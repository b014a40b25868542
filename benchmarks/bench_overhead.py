"""Steady-state cost of a running exporter: CPU (% of one core) and RSS over a window.

    python benchmarks/bench_overhead.py [--seconds 60] [--gpus 8]

A real exporter process follows a log that gets one Hugging Face line per second, polls a fake
NVML with N H100-like GPUs every second (tests/fake_nvml, put first on PYTHONPATH), reads host
and process metrics, and is scraped every 5 s. CPU is the exporter's own user+system time over
the window; RSS is sampled every second.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

from bench_hardware import h100  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()

    work = tempfile.mkdtemp()
    scenario = os.path.join(work, "nvml.json")
    with open(scenario, "w") as handle:
        json.dump({"driver_version": "550.54.15", "cuda_version": 12040,
                   "gpus": [h100(i) for i in range(args.gpus)]}, handle)
    log = os.path.join(work, "train.log")
    open(log, "w").close()
    port = free_port()
    env = {**os.environ, "FAKE_NVML_SCENARIO": scenario,
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "fake_nvml"), ROOT])}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--log", log, "--gpu.poll-interval", "1",
                             "--web.listen-address", f"127.0.0.1:{port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(url, timeout=5).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert 'training_exporter_collector_success{collector="gpu"} 1.0' in body, "fake NVML not in use"
        exporter = psutil.Process(proc.pid)
        time.sleep(3)  # past start-up
        cpu_start = exporter.cpu_times()
        started = time.monotonic()
        rss, series = [], 0
        with open(log, "a", buffering=1) as handle:
            for second in range(args.seconds):
                handle.write(f"{{'loss': '{2.0 - second / 1000:.4f}', 'grad_norm': '0.9', "
                             f"'learning_rate': '1e-05', 'epoch': '{second / 100:.2f}'}}\n")
                if second % 5 == 0:
                    body = urllib.request.urlopen(url, timeout=5).read().decode()
                    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
                rss.append(exporter.memory_info().rss)
                time.sleep(max(0.0, started + second + 1 - time.monotonic()))
        cpu_end = exporter.cpu_times()
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=5)

    cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / elapsed
    print("| window | GPUs (fake) | series | CPU (% of one core) | RSS median | RSS max |")
    print("|---|---|---|---|---|---|")
    print(f"| {elapsed:.0f} s | {args.gpus} | {series} | {cpu * 100:.2f}% | "
          f"{statistics.median(rss) / 2**20:.1f} MiB | {max(rss) / 2**20:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
