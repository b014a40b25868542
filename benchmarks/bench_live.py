"""Following a live log: CPU of the exporter against mtail, both following the same file at once.

    python benchmarks/bench_live.py [--seconds 40] [--rates 50,500,5000] [--runs 1] [--compiled]

What users pay all day. A writer appends Hugging Face Trainer console lines (a tqdm bar glued in
front of each logs dict by "\\r", as tests/fixtures/real/hf_console.log shows them) at a given
rate, in the small writes trainers make: one write per line up to 100 lines/s, then one write
per 10 ms tick. Side by side, from the same start, the same file is followed by

* the exporter: ``python -m exporter --log FILE`` (training collector only), and
* mtail (Debian package ``mtail``) with the Hugging Face program of bench_ingestion.py, reading
  the file as it grows (its default: polled every 250 ms).

CPU is each process's own user+system time over the writing window, as % of one core; the
ratio is the exporter's over mtail's. With ``--rates 0`` the two idle on an unchanging file.
``--compiled`` runs the exporter with its reading path compiled by mypyc (compiled.py).
Prints a markdown table: medians over the runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

import compiled  # noqa: E402
from bench_ingestion import MTAIL_PROGRAMS, free_port, hf_lines  # noqa: E402


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def write_at(path: str, rate: int, seconds: float, stop: threading.Event) -> int:
    """Append lines at ``rate`` per second for ``seconds``; the number written."""
    lines = (text for text, _ in hf_lines(10**9))
    per_write, tick = (1, 1.0 / rate) if rate <= 100 else (max(1, rate // 100), 0.01)
    written = 0
    started = time.monotonic()
    with open(path, "a", encoding="utf-8") as handle:
        while not stop.is_set() and time.monotonic() - started < seconds:
            handle.write("".join(next(lines) for _ in range(per_write)))
            handle.flush()
            written += per_write
            delay = started + written / rate - time.monotonic() if rate <= 100 else \
                started + (written / per_write) * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return written


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def one_run(rate: int, seconds: float, workdir: str, root: str = ROOT) -> tuple[float, float, int]:
    """(exporter % of a core, mtail % of a core, lines written) for one rate, the exporter run
    from ``root``."""
    log = os.path.join(workdir, "train.log")
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("".join(text for text, _ in hf_lines(10)))
    progs = os.path.join(workdir, "progs")
    os.makedirs(progs, exist_ok=True)
    with open(os.path.join(progs, "training.mtail"), "w") as handle:
        handle.write(MTAIL_PROGRAMS["hf"])
    ours_port, mtail_port = free_port(), free_port()
    ours = subprocess.Popen([sys.executable, "-m", "exporter", "--log", log, "--no-collector.gpu",
                             "--no-collector.host", "--no-collector.process",
                             "--web.listen-address", f"127.0.0.1:{ours_port}"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mtail = subprocess.Popen(["mtail", "--progs", progs, "--logs", log, "--port", str(mtail_port),
                              "--address", "127.0.0.1", "--logtostderr"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{ours_port}/-/ready")
        wait_http(f"http://127.0.0.1:{mtail_port}/metrics")
        time.sleep(2)  # both settled after their start
        processes = psutil.Process(ours.pid), psutil.Process(mtail.pid)
        before = [cpu_seconds(p) for p in processes]
        started = time.monotonic()
        written = write_at(log, rate, seconds, threading.Event()) if rate else (time.sleep(seconds) or 0)
        time.sleep(0.5)  # the last lines read by both
        took = time.monotonic() - started
        after = [cpu_seconds(p) for p in processes]
    finally:
        for process in (ours, mtail):
            process.terminate()
            process.wait(timeout=10)
    return (after[0] - before[0]) / took * 100, (after[1] - before[1]) / took * 100, written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rates", default="50,500,5000")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--compiled", action="store_true", help="the exporter's reading path compiled by mypyc")
    args = parser.parse_args()
    if not shutil.which("mtail"):
        print("mtail is not installed (apt-get install -y mtail)", file=sys.stderr)
        return 2
    with compiled.exporter_tree(args.compiled) as root:
        rows = measure(args, root)
    print(f"python {sys.version.split()[0]} ({compiled.describe(args.compiled)}), "
          f"{os.cpu_count()} CPUs, {args.seconds:.0f} s per run, median of {args.runs} run(s)")
    print()
    print("| lines/s | lines written | exporter CPU | mtail CPU | exporter / mtail (min-max) |")
    print("|---|---|---|---|---|")
    for rate, ours, theirs, ratio, low, high, written in rows:
        print(f"| {rate} | {written:,.0f} | {ours:.2f}% | {theirs:.2f}% | {ratio:.2f} ({low:.2f}-{high:.2f}) |")
    return 0


def measure(args: argparse.Namespace, root: str) -> list[tuple]:
    """One row per rate: the medians over the runs."""
    rows = []
    for rate in (int(r) for r in args.rates.split(",")):
        results = []
        for _ in range(args.runs):
            workdir = tempfile.mkdtemp()
            try:
                results.append(one_run(rate, args.seconds, workdir, root))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        ours = statistics.median(r[0] for r in results)
        theirs = statistics.median(r[1] for r in results)
        ratios = [r[0] / r[1] if r[1] else float("inf") for r in results]
        rows.append((rate, ours, theirs, statistics.median(ratios), min(ratios), max(ratios),
                     statistics.median(r[2] for r in results)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
