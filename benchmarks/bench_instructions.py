"""What reading one line costs, in instructions: a measure that does not drift with the machine.

    python benchmarks/bench_instructions.py [--formats hf,jsonl,megatron] [--stages] [--compiled]

Timings on a shared machine drift by tens of percent from one hour to the next; the number of
instructions a process executes does not. For each log shape of bench_ingestion.py, the reading
path (``LogReading.read_to_end``: follow, lines, envelopes, dialects, state) reads a log of 2,000
lines and one of 6,000 under valgrind's callgrind; the difference over 4,000 is the cost of a
line, start-up left out. With ``--stages``, the same for the path cut short after each layer:
the line splitter, the envelopes, the dialects (records made and dropped), and all of it. With
``--compiled``, the same again for the reading path compiled by mypyc (compiled.py), beside it.

Needs valgrind (Debian package ``valgrind``). Hash randomisation is fixed, so that a run repeats
to within a few instructions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

import compiled  # noqa: E402
from bench_ingestion import GENERATORS  # noqa: E402

SMALL, LARGE = 2000, 6000

# Reads a log through the path, stopped after the given layer; run inside callgrind.
READER = """
import sys
sys.path.insert(0, sys.argv[1])
path, stage = sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
chunks = [data[i:i + (1 << 16)] for i in range(0, len(data), 1 << 16)]
if stage == "all":
    from exporter.app import LogReading
    from exporter.config import Config, LogConfig
    LogReading(Config(logs=[LogConfig(path=path)])).read_to_end()
elif stage in ("lines", "envelopes"):
    from exporter.logs.envelopes import Envelopes
    from exporter.logs.lines import LineSplitter
    splitter, envelopes = LineSplitter(), Envelopes()
    for chunk in chunks:
        lines = splitter.feed(chunk)
        if stage == "envelopes":
            envelopes.stretches(lines)
else:  # "dialects": records made, then dropped
    from exporter.logs.readers import LineReader
    from exporter.logs.sources import LogSpec

    class Drop:
        def apply(self, source, rank, records, when):
            pass

        def rewritten(self, source):
            pass

    reader = LineReader(path, "bench", Drop(), LogSpec(path, "auto"), 1 << 20)
    for chunk in chunks:
        reader.on_data(chunk)
"""

STAGES = ("lines", "envelopes", "dialects", "all")


def instructions(script: str, root: str, path: str, stage: str) -> int:
    """What reading ``path`` up to ``stage`` costs, with the exporter found in ``root``."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script, root, path, stage],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=1800)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed: {result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="hf,jsonl,megatron")
    parser.add_argument("--stages", action="store_true", help="also the cost up to each layer")
    parser.add_argument("--compiled", action="store_true", help="also with the reading path compiled by mypyc")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    stages = STAGES if args.stages else ("all",)
    work = tempfile.mkdtemp()
    try:
        with compiled.exporter_tree(args.compiled) as tree:
            trees = [("", ROOT)] + ([(", compiled", tree)] if args.compiled else [])
            print_costs(args.formats.split(","), stages, trees, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_costs(formats: list[str], stages: tuple[str, ...], trees: list[tuple[str, str]], work: str) -> None:
    """The table: for each log shape, a line's cost up to each stage, with the exporter of each
    (heading suffix, tree); the logs and the reading script written in ``work``."""
    columns = [(f"up to {stage}" if stage != "all" else "whole path") + suffix
               for stage in stages for suffix, _ in trees]
    script = os.path.join(work, "read.py")
    with open(script, "w") as handle:
        handle.write(READER)
    print(f"python {sys.version.split()[0]}; instructions per line, ({LARGE:,} lines - {SMALL:,} lines) / "
          f"{LARGE - SMALL:,}\n")
    print("| log | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for fmt in formats:
        generate, name = GENERATORS[fmt]
        paths = []
        for count in (SMALL, LARGE):
            path = os.path.join(work, f"{count}-{name}")
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(text for text, _ in generate(count))
            paths.append(path)
        costs = [(instructions(script, root, paths[1], stage) - instructions(script, root, paths[0], stage))
                 // (LARGE - SMALL) for stage in stages for _, root in trees]
        print(f"| {fmt} | " + " | ".join(f"{cost:,}" for cost in costs) + " |")


if __name__ == "__main__":
    sys.exit(main())
