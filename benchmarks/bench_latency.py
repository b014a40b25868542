"""Latency from a log line written to its value in /metrics, through a real exporter process.

    python benchmarks/bench_latency.py [--lines 300] [--interval 0.02]

Writes one JSON line at a time (a new step each), then reads /metrics until that step shows,
and prints p50/p90/p99/max. Also reports the scrape latency seen along the way.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.02, help="pause between lines")
    args = parser.parse_args()

    directory = tempfile.mkdtemp()
    log = os.path.join(directory, "train.jsonl")
    open(log, "w").close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--log", log, "--web.listen-address", f"127.0.0.1:{port}",
         "--no-collector.gpu", "--no-collector.process"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                scrape(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        latencies, scrapes = [], []
        with open(log, "a", buffering=1) as handle:
            for step in range(1, args.lines + 1):
                needle = f'training_step{{source="train.jsonl"}} {float(step)}'
                written = time.perf_counter()
                handle.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
                while True:
                    started = time.perf_counter()
                    body = scrape(url)
                    scrapes.append(time.perf_counter() - started)
                    if needle in body:
                        latencies.append(time.perf_counter() - written)
                        break
                time.sleep(args.interval)
    finally:
        proc.terminate()
        proc.wait(timeout=5)

    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    print(f"| measure ({args.lines} lines) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, values in (("line written → visible in /metrics", latencies), ("GET /metrics", scrapes)):
        print(f"| {name} | {ms(statistics.median(values))} | {ms(percentile(values, 0.9))} | "
              f"{ms(percentile(values, 0.99))} | {ms(max(values))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
