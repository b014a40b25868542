"""Scrape latency: GET /metrics of the exporter (8 fake GPUs, host and process metrics, a few
hundred training series) against prometheus-node-exporter, scraped in the same run.

    python benchmarks/bench_scrape.py [--scrapes 1000] [--gpus 8] [--accept text|openmetrics]

Both are scraped the way Prometheus does it (Accept-Encoding: gzip, one scrape at a time), in
turn, in two ways: over one connection kept open, as Prometheus keeps its connection to a target,
and on a new connection per scrape (which adds the connection's set-up and, for the exporter, a
new thread). A scrape is timed from sending the request to the last byte of the body. Prints a
markdown table: series, body size, p50, p90, p99, max. ``--accept`` sends the Accept header of
Prometheus with the text format (the default) or of Prometheus asking for OpenMetrics first, as it
does by default; each exporter answers in what it offers (node_exporter's text format unless it
was started with OpenMetrics on).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

from bench_hardware import h100  # noqa: E402

ACCEPT = {
    "text": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1",
    "openmetrics": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                   "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
HEADERS = {"Accept": ACCEPT["text"], "Accept-Encoding": "gzip", "User-Agent": "Prometheus/2.53.0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int, kept: dict[int, http.client.HTTPConnection] | None = None) -> tuple[float, bytes]:
    """One scrape: on the connection kept in ``kept`` for the port (opened the first time), or
    on a new one."""
    started = time.perf_counter()
    connection = kept.get(port) if kept is not None else None
    if connection is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics", headers=HEADERS)
    response = connection.getresponse()
    body = response.read()
    took = time.perf_counter() - started
    if kept is None or response.will_close:
        connection.close()
    else:
        kept[port] = connection
    if response.status != 200:
        raise RuntimeError(f"status {response.status}")
    return took, body


def wait_until_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited")
        try:
            scrape(port)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not come up")


def text_of(body: bytes) -> str:
    import gzip

    return gzip.decompress(body).decode() if body[:2] == b"\x1f\x8b" else body.decode()


def series(body: bytes) -> int:
    return sum(1 for line in text_of(body).splitlines() if line and not line.startswith("#"))


def format_of(body: bytes) -> str:
    return "OpenMetrics" if text_of(body).endswith("# EOF\n") else "text"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def write_logs(directory: str, sources: int = 4, keys: int = 40, steps: int = 200) -> list[str]:
    args = []
    for rank in range(sources):
        path = os.path.join(directory, f"rank{rank}.jsonl")
        with open(path, "w") as handle:
            for step in range(1, steps + 1):
                handle.write(json.dumps({"step": step, "loss": 2.0 / step, "lr": 1e-4,
                                         **{f"metric_{k}": k * 0.5 for k in range(keys)}}) + "\n")
                if step % 20 == 0:
                    handle.write(json.dumps({"step": step, "eval_loss": 1.0 + 1 / step}) + "\n")
        args += ["--log", path]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--accept", choices=sorted(ACCEPT), default="text",
                        help="the format Prometheus asks for (its Accept header)")
    args = parser.parse_args()
    HEADERS["Accept"] = ACCEPT[args.accept]
    node_exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not node_exporter:
        print("prometheus-node-exporter is not installed (apt-get install -y prometheus-node-exporter)",
              file=sys.stderr)
        return 2

    work = tempfile.mkdtemp()
    scenario = os.path.join(work, "nvml.json")
    with open(scenario, "w") as handle:
        json.dump({"driver_version": "550.54.15", "cuda_version": 12040,
                   "gpus": [h100(i) for i in range(args.gpus)]}, handle)
    ours_port, theirs_port = free_port(), free_port()
    env = {**os.environ, "FAKE_NVML_SCENARIO": scenario,
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "fake_nvml"), ROOT])}
    ours = subprocess.Popen([sys.executable, "-m", "exporter", *write_logs(work), "--gpu.poll-interval", "1",
                             "--web.listen-address", f"127.0.0.1:{ours_port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs = subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{theirs_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(ours_port, ours)
        wait_until_up(theirs_port, theirs)
        time.sleep(2)  # past start-up: the first GPU polls, the first scrapes
        kept: dict[int, http.client.HTTPConnection] = {}
        for port in (ours_port, theirs_port):
            for _ in range(20):
                scrape(port)  # warm both up
                scrape(port, kept)
        timings: dict[tuple[int, bool], list[float]] = {}
        bodies = {}
        for _ in range(args.scrapes):
            for port in (ours_port, theirs_port):
                for keep in (True, False):
                    took, bodies[port] = scrape(port, kept if keep else None)
                    timings.setdefault((port, keep), []).append(took)
                    time.sleep(0.005)  # a gap, as between real scrapes
        if b"training_gpu_up" not in __import__("gzip").decompress(bodies[ours_port]):
            raise RuntimeError("the fake NVML is not in use")
    finally:
        for proc in (ours, theirs):
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.scrapes} scrapes each, alternating, "
          f"Accept: {HEADERS['Accept']}")
    print()
    print("| exporter | connection | format | series | body (gzip) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|")
    ms = lambda v: f"{v * 1000:.2f} ms"  # noqa: E731
    for keep in (True, False):
        for name, port in ((f"training-exporter ({args.gpus} fake GPUs, host, process, training)", ours_port),
                           ("prometheus-node-exporter (default collectors)", theirs_port)):
            values = timings[(port, keep)]
            print(f"| {name} | {'kept open' if keep else 'new per scrape'} | {format_of(bodies[port])} | "
                  f"{series(bodies[port])} | "
                  f"{len(bodies[port]) / 1024:.1f} KiB | {ms(statistics.median(values))} | {ms(percentile(values, 0.9))} | "
                  f"{ms(percentile(values, 0.99))} | {ms(max(values))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
