"""Latency from a log line written to its value in /metrics, through a real exporter process.

    python benchmarks/bench_latency.py [--lines 300] [--interval 0.02] [--compiled]

Writes one JSON line at a time (a new step each), then reads /metrics until that step shows,
and prints p50/p90/p99/max. Also reports the scrape latency seen along the way. ``--compiled``
runs the exporter with its reading path compiled, as the image does (compiled.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import compiled  # this directory's: the script's own directory comes first on the path


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
    parser.add_argument("--compiled", action="store_true", help="the exporter's reading path compiled by mypyc")
    args = parser.parse_args()
    with compiled.exporter_tree(args.compiled) as root:
        latencies, scrapes = measure(args, root)

    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    print(f"python {sys.version.split()[0]} ({compiled.describe(args.compiled)})")
    print()
    print(f"| measure ({args.lines} lines) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, values in (("line written → visible in /metrics", latencies), ("GET /metrics", scrapes)):
        print(f"| {name} | {ms(statistics.median(values))} | {ms(percentile(values, 0.9))} | "
              f"{ms(percentile(values, 0.99))} | {ms(max(values))} |")
    return 0


def measure(args: argparse.Namespace, root: str) -> tuple[list[float], list[float]]:
    """Seconds from each line written to its step in /metrics, and of each scrape, with the
    exporter run from ``root``."""
    directory = tempfile.mkdtemp()
    log = os.path.join(directory, "train.jsonl")
    open(log, "w").close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--log", log, "--web.listen-address", f"127.0.0.1:{port}",
         "--no-collector.gpu", "--no-collector.process"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        shutil.rmtree(directory, ignore_errors=True)
    return latencies, scrapes


if __name__ == "__main__":
    sys.exit(main())
