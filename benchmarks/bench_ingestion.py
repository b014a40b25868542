"""Catching up on a large existing log: lines per second, the exporter against mtail.

    python benchmarks/bench_ingestion.py [--lines 1000000] [--runs 1] [--formats hf,jsonl,megatron] [--cpus 0]
                                         [--compiled]

For each format a log of N lines is written once: Hugging Face Trainer console output with
tqdm bars glued in front of the dict lines by ``\\r`` (as in tests/fixtures/real/hf_console.log),
JSON lines, Megatron-LM iteration lines; an evaluation every 50 steps in each. Then, in the same
run and on the same file:

* the exporter: ``python -m exporter --log FILE`` (training collector only) from its start until
  ``/-/ready`` answers 200, which it does once every line has been read *and applied*; its final
  ``training_log_lines_total`` and ``training_step`` are checked;
* mtail (Debian package ``mtail``) with ``--one_shot`` and a program that extracts the same values
  into gauges (``MTAIL_PROGRAMS`` below), from its start until it exits.

Both times include the process's start. Prints a markdown table: medians over the runs, and two
ratios: of speed (mtail's time over the exporter's) and of CPU (mtail's CPU time over the
exporter's; above 1 the exporter spends less). mtail spreads its work over more than one core
where it can; ``--cpus 0`` pins both to the listed CPUs (as a sidecar limited to one core would
run them), so that the speed ratio compares the same budget. ``--compiled`` runs the exporter with
its reading path compiled by mypyc (compiled.py) instead of as source.
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

import psutil

import compiled  # this directory's: the script's own directory comes first on the path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_EVERY = 50


def hf_lines(n: int):
    total = n  # steps are lines, roughly: the bar's total
    step = 0
    written = 0
    while written < n:
        step += 1
        loss = 2.0 + 1.0 / step
        bar = (f"\r{step * 100 // total:3d}%|████▌     | {step}/{total} [01:02<01:16,  7.21it/s]"
               f"\r                                              \r")
        if step % EVAL_EVERY == 0:
            yield (f"\r\x1b[A{{'eval_loss': '{loss + 0.1:.4g}', 'eval_runtime': '0.0086', "
                   f"'eval_samples_per_second': '1855', 'epoch': '{step / 1000:.4g}'}}\n"), step
            written += 1
            if written >= n:
                return
        yield (f"{bar}{{'loss': '{loss:.4g}', 'grad_norm': '0.8871', 'learning_rate': '{1e-3 / step:.4g}', "
               f"'epoch': '{step / 1000:.4g}'}}\n"), step
        written += 1


def jsonl_lines(n: int):
    step = 0
    written = 0
    while written < n:
        step += 1
        loss = 2.0 + 1.0 / step
        if step % EVAL_EVERY == 0:
            yield json.dumps({"step": step, "eval_loss": loss + 0.1}) + "\n", step
            written += 1
            if written >= n:
                return
        yield json.dumps({"step": step, "loss": loss, "learning_rate": 1e-3 / step, "grad_norm": 0.8871,
                          "epoch": step / 1000}) + "\n", step
        written += 1


def megatron_lines(n: int):
    step = 0
    written = 0
    while written < n:
        step += 1
        loss = 2.0 + 1.0 / step
        if step % EVAL_EVERY == 0:
            yield f" validation loss at iteration {step} | lm loss value: {loss + 0.1:E} | lm loss PPL: 1.815046E+02 | \n", step
            written += 1
            if written >= n:
                return
        yield (f" [2024-05-01 09:59:55] iteration {step:8d}/ {n:8d} | consumed samples: {step * 512:12d} | "
               f"elapsed time per iteration (ms): 741.2 | throughput per GPU (TFLOP/s/GPU): 197.6 | "
               f"learning rate: {1.5e-4:E} | global batch size:   512 | lm loss: {loss:E} | loss scale: 1.0 | "
               f"grad norm: 2.374 | number of skipped iterations:   0 | number of nan iterations:   0 |\n"), step
        written += 1


GENERATORS = {"hf": (hf_lines, "train.log"), "jsonl": (jsonl_lines, "train.jsonl"),
              "megatron": (megatron_lines, "train.log")}

# The same values the exporter extracts, as gauges. mtail splits lines on \n only, so a Hugging
# Face line still carries its glued tqdm bars; the step is the last bar's position, as for the
# exporter.
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
MTAIL_PROGRAMS = {
    "hf": f"""
gauge step
gauge loss
gauge grad_norm
gauge learning_rate
gauge epoch
gauge validation_loss
/\\| (?P<step>\\d+)\\/\\d+ \\[.*\\{{'loss'/ {{
  step = $step
}}
/\\{{'loss': '(?P<loss>{_NUMBER})', 'grad_norm': '(?P<gn>{_NUMBER})', 'learning_rate': '(?P<lr>{_NUMBER})', 'epoch': '(?P<epoch>{_NUMBER})'\\}}/ {{
  loss = float($loss)
  grad_norm = float($gn)
  learning_rate = float($lr)
  epoch = float($epoch)
}}
/\\{{'eval_loss': '(?P<vl>{_NUMBER})'/ {{
  validation_loss = float($vl)
}}
""",
    "jsonl": f"""
gauge step
gauge loss
gauge grad_norm
gauge learning_rate
gauge epoch
gauge validation_loss
/"step": (?P<step>\\d+)/ {{
  step = $step
}}
/"loss": (?P<loss>{_NUMBER}|NaN|Infinity)/ {{
  loss = float($loss)
}}
/"learning_rate": (?P<lr>{_NUMBER})/ {{
  learning_rate = float($lr)
}}
/"grad_norm": (?P<gn>{_NUMBER}|NaN|Infinity)/ {{
  grad_norm = float($gn)
}}
/"epoch": (?P<epoch>{_NUMBER})/ {{
  epoch = float($epoch)
}}
/"eval_loss": (?P<vl>{_NUMBER}|NaN|Infinity)/ {{
  validation_loss = float($vl)
}}
""",
    "megatron": f"""
gauge step
gauge loss
gauge grad_norm
gauge learning_rate
gauge loss_scale
gauge validation_loss
/iteration +(?P<step>\\d+)\\/ *\\d+ \\|/ {{
  step = $step
}}
/\\| learning rate: (?P<lr>{_NUMBER}) \\|/ {{
  learning_rate = float($lr)
}}
/\\| lm loss: (?P<loss>{_NUMBER}) \\|/ {{
  loss = float($loss)
}}
/\\| loss scale: (?P<ls>{_NUMBER}) \\|/ {{
  loss_scale = float($ls)
}}
/\\| grad norm: (?P<gn>{_NUMBER}) \\|/ {{
  grad_norm = float($gn)
}}
/validation loss at iteration \\d+ \\| lm loss value: (?P<vl>{_NUMBER}) \\|/ {{
  validation_loss = float($vl)
}}
""",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpus: set[int] | None):
    """What the child runs first: its CPUs limited to ``cpus`` (None: left as they are)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def run_exporter(path: str, last_step: int, cpus: set[int] | None, root: str = ROOT) -> tuple[float, float]:
    """(seconds from start until /-/ready, CPU seconds) of a serve process of the exporter in ``root``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--log", path, "--no-collector.gpu",
                             "--no-collector.host", "--no-collector.process", "--web.listen-address", f"127.0.0.1:{port}"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pinned(cpus))
    try:
        while True:
            try:
                if urllib.request.urlopen(base + "/-/ready", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("the exporter exited")
            time.sleep(0.02)
        took = time.perf_counter() - started
        cpu = psutil.Process(proc.pid).cpu_times()
        body = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
        source = os.path.basename(path)
        step = next(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                    if line.startswith(f'training_step{{source="{source}"}}'))
        if step != last_step:
            raise RuntimeError(f"exporter reached step {step}, not {last_step}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return took, cpu.user + cpu.system


def run_mtail(path: str, program: str, workdir: str, cpus: set[int] | None) -> tuple[float, float]:
    progs = os.path.join(workdir, "progs")
    os.makedirs(progs, exist_ok=True)
    with open(os.path.join(progs, "training.mtail"), "w") as handle:
        handle.write(program)
    before = os.times()
    started = time.perf_counter()
    result = subprocess.run(["mtail", "--one_shot", "--one_shot_format", "prometheus", "--progs", progs,
                             "--logs", path, "--logtostderr"], capture_output=True, text=True, timeout=3600,
                            preexec_fn=pinned(cpus))
    took = time.perf_counter() - started
    after = os.times()
    if result.returncode != 0 or "step" not in result.stdout:
        raise RuntimeError(f"mtail failed: {result.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return took, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--formats", default="hf,jsonl,megatron")
    parser.add_argument("--cpus", help="pin both processes to these CPUs, e.g. 0 or 0,1 (default: not pinned)")
    parser.add_argument("--compiled", action="store_true", help="the exporter's reading path compiled by mypyc")
    args = parser.parse_args()
    cpus = {int(cpu) for cpu in args.cpus.split(",")} if args.cpus else None
    if not shutil.which("mtail"):
        print("mtail is not installed (apt-get install -y mtail)", file=sys.stderr)
        return 2

    with compiled.exporter_tree(args.compiled) as root:
        rows = measure(args, root, cpus)

    pinning = f"both pinned to CPU(s) {args.cpus}" if cpus else "not pinned"
    print(f"python {sys.version.split()[0]} ({compiled.describe(args.compiled)}), {os.cpu_count()} CPUs, {pinning}, {args.lines:,} lines per log, "
          f"median of {args.runs} run(s)")
    print()
    print("| log | size | exporter (to /-/ready) | exporter CPU | mtail --one_shot | mtail CPU | exporter / mtail speed "
          "| mtail CPU / exporter CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, size, ours_s, ours_cpu, theirs_s, theirs_cpu in rows:
        print(f"| {fmt} | {size / 2**20:.0f} MiB | {args.lines / ours_s:,.0f} lines/s ({ours_s:.1f} s) | "
              f"{ours_cpu:.1f} s | {args.lines / theirs_s:,.0f} lines/s ({theirs_s:.1f} s) | {theirs_cpu:.1f} s | "
              f"{theirs_s / ours_s:.2f}× | {theirs_cpu / ours_cpu:.2f}× |")
    return 0


def measure(args: argparse.Namespace, root: str, cpus: set[int] | None) -> list[tuple]:
    """One row per log shape: its size, and the medians over the runs of the exporter's time and
    CPU (run from ``root``) and mtail's."""
    work = tempfile.mkdtemp()
    rows = []
    try:
        for fmt in args.formats.split(","):
            generate, name = GENERATORS[fmt]
            directory = os.path.join(work, fmt)
            os.makedirs(directory)
            path = os.path.join(directory, name)
            last_step = 0
            with open(path, "w", encoding="utf-8") as handle:
                for text, last_step in generate(args.lines):
                    handle.write(text)
            size = os.path.getsize(path)
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(run_exporter(path, last_step, cpus, root))
                theirs.append(run_mtail(path, MTAIL_PROGRAMS[fmt], directory, cpus))
            ours_s = statistics.median(t for t, _ in ours)
            theirs_s = statistics.median(t for t, _ in theirs)
            rows.append((fmt, size, ours_s, statistics.median(c for _, c in ours), theirs_s,
                         statistics.median(c for _, c in theirs)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
