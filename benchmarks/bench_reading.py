"""The reading path in-process: lines per second of reading a whole log (``LogReading.read_to_end``) on logs of
several shapes, optionally against another checkout of the project, side by side.

    python benchmarks/bench_reading.py [--lines 200000] [--repeat 3] [--against DIR]

Shapes: the three logs of bench_ingestion.py (Hugging Face console output with tqdm bars, JSON
lines, Megatron-LM), and logs where the metrics lines are not the whole story: Megatron-LM and
Hugging Face lines among other output, JSON lines of nested objects (which no layout is learned
from), and Hugging Face dicts with a key that holds an event word (``max_memory_allocated``).

Each measurement runs in a fresh interpreter that imports the exporter from the tree being
measured; with ``--against`` (a ``git worktree`` of an older commit, say), the two trees are
measured in turn on the same file. Prints a markdown table: best of ``--repeat`` reads each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

from bench_ingestion import hf_lines, jsonl_lines, megatron_lines  # noqa: E402

OTHER_OUTPUT = "[2024-05-01 10:00:00,123] [INFO] [utils.py:{k}] rank {k}: step {i} took a while to load its batch"


def megatron_among_other_output(n: int):
    """An iteration line after every nine lines of other output."""
    for i in range(1, n // 10 + 1):
        for k in range(9):
            yield OTHER_OUTPUT.format(k=k, i=i) + "\n"
        yield f" [2024-05-01 10:00:00] iteration {i:8d}/ {n:8d} | lm loss: {2 + 1 / i:E} | grad norm: 1.0 | loss scale: 1.0 |\n"


def hf_among_other_output(n: int):
    """A Trainer dict after every four lines of other output."""
    for i in range(1, n // 5 + 1):
        for k in range(4):
            yield OTHER_OUTPUT.format(k=k, i=i) + "\n"
        yield f"{{'loss': {2 + 1 / i:.4f}, 'grad_norm': 1.0, 'learning_rate': 1e-05, 'epoch': {i / 1000}}}\n"


def nested_json_lines(n: int):
    for i in range(1, n + 1):
        yield json.dumps({"step": i, "train": {"loss": 2 + 1 / i, "lr": 1e-4}}) + "\n"


def hf_with_an_event_word(n: int):
    for i in range(1, n + 1):
        yield (f"{{'loss': {2 + 1 / i:.4f}, 'grad_norm': 1.0, 'learning_rate': 1e-05, "
               f"'max_memory_allocated': 1234.5, 'epoch': {i / 1000}}}\n")


def _texts(generator):
    return lambda n: (text for text, _ in generator(n))


# name -> (lines of the log, file name, format)
SHAPES = {
    "Hugging Face console": (_texts(hf_lines), "train.log", "auto"),
    "JSON lines": (_texts(jsonl_lines), "train.jsonl", "auto"),
    "Megatron-LM": (_texts(megatron_lines), "train.log", "auto"),
    "Megatron-LM among other output (1 in 10)": (megatron_among_other_output, "train.log", "megatron"),
    "Hugging Face among other output (1 in 5)": (hf_among_other_output, "train.log", "huggingface"),
    "JSON lines of nested objects": (nested_json_lines, "train.jsonl", "auto"),
    "Hugging Face, a memory key in every dict": (hf_with_an_event_word, "train.log", "huggingface"),
}

# Run in a fresh interpreter: argv = tree, file, format, repeat, lines. Prints lines per second.
READ = """
import sys, time
sys.path.insert(0, sys.argv[1])
from exporter.app import LogReading
from exporter.config import Config, LogConfig
best = None
for _ in range(int(sys.argv[4])):
    reading = LogReading(Config(logs=[LogConfig(path=sys.argv[2], format=sys.argv[3])]))
    started = time.perf_counter()
    reading.read_to_end()
    took = time.perf_counter() - started
    reading.follower.stop()
    best = took if best is None else min(best, took)
print(int(sys.argv[5]) / best)
"""


def lines_per_second(tree: str, path: str, fmt: str, repeat: int, lines: int) -> float:
    result = subprocess.run([sys.executable, "-c", READ, tree, path, fmt, str(repeat), str(lines)],
                            capture_output=True, text=True, check=True, cwd=tree)
    return float(result.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", metavar="DIR", help="another checkout of the project to compare with")
    args = parser.parse_args()
    work = tempfile.mkdtemp()
    rows = []
    try:
        for name, (generate, file_name, fmt) in SHAPES.items():
            path = os.path.join(work, f"{len(rows)}-{file_name}")
            written = 0
            with open(path, "w", encoding="utf-8") as handle:
                for text in generate(args.lines):
                    handle.write(text)
                    written += 1
            ours = lines_per_second(ROOT, path, fmt, args.repeat, written)
            theirs = lines_per_second(args.against, path, fmt, args.repeat, written) if args.against else None
            rows.append((name, ours, theirs))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"python {sys.version.split()[0]}, about {args.lines:,} lines per log, best of {args.repeat}")
    print()
    if args.against:
        print(f"| log | this tree | {args.against} | ratio |")
        print("|---|---|---|---|")
        for name, ours, theirs in rows:
            print(f"| {name} | {ours:,.0f} lines/s | {theirs:,.0f} lines/s | {ours / theirs:.2f}× |")
    else:
        print("| log | lines/s |")
        print("|---|---|")
        for name, ours, _ in rows:
            print(f"| {name} | {ours:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
