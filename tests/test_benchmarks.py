"""Every benchmark script runs, on a tiny input, and prints a table with sensible numbers: a
benchmark that broke would otherwise go unnoticed until someone needs its figures. Those that
compare against mtail and node_exporter, and the one that counts instructions with valgrind, are
skipped where those are not installed (CI installs them), as is the one that compiles the
reading path where there is no C compiler or no Python headers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, load_script


def run_benchmark(name: str, *args: str, timeout: float = 120) -> list[list[str]]:
    """The benchmark's markdown table rows (heading and rule left out), as lists of cells."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, result.stdout
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell: str) -> float:
    """The first number in a cell: '17,501 lines/s (0.2 s)' -> 17501.0, '4.1 ms' -> 4.1."""
    return float(re.search(r"[\d,]*\.?\d+", cell).group().replace(",", ""))


def test_bench_reading_prints_a_row_per_log_shape():
    rows = run_benchmark("bench_reading.py", "--lines", "3000", "--repeat", "1", "--against", str(ROOT))
    assert len(rows) == 7
    for row in rows:
        assert number(row[1]) > 0 and number(row[2]) > 0, row


def test_bench_hardware_times_every_collector():
    rows = run_benchmark("bench_hardware.py", "--runs", "5", "--gpus", "2")
    assert {row[0].split(" (")[0] for row in rows} >= {"GPU poll, per GPU", "host collect()"}
    assert all(number(row[1]) > 0 for row in rows)


def test_bench_latency_sees_every_line_in_metrics():
    rows = run_benchmark("bench_latency.py", "--lines", "10", "--interval", "0.01")
    assert [row[0] for row in rows] == ["line written → visible in /metrics", "GET /metrics"]
    assert all(0 < number(cell) < 1000 for row in rows for cell in row[1:])  # milliseconds


def test_bench_overhead_measures_cpu_and_memory():
    [row] = run_benchmark("bench_overhead.py", "--seconds", "2", "--gpus", "2")
    assert number(row[2]) > 100  # series: GPUs, host, process and training
    assert 0 < number(row[3]) < 100 and 10 < number(row[4]) < 200  # % of a core; MiB


@pytest.mark.skipif(not shutil.which("prometheus-node-exporter"), reason="prometheus-node-exporter is not installed")
@pytest.mark.parametrize("accept, answered", [("text", "text"), ("openmetrics", "OpenMetrics")])
def test_bench_scrape_against_node_exporter(accept, answered):
    rows = run_benchmark("bench_scrape.py", "--scrapes", "5", "--gpus", "2", "--accept", accept)
    assert [row[1] for row in rows] == ["kept open", "kept open", "new per scrape", "new per scrape"]
    assert [row[2] for row in rows if row[0].startswith("training-exporter")] == [answered, answered]
    assert all(number(row[3]) > 100 and number(row[6]) > 0 for row in rows)


@pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed")
@pytest.mark.parametrize("pinning", [[], ["--cpus", "0"]])
def test_bench_ingestion_against_mtail(pinning):
    rows = run_benchmark("bench_ingestion.py", "--lines", "2000", *pinning)
    assert [row[0] for row in rows] == ["hf", "jsonl", "megatron"]
    assert all(number(row[2]) > 0 and number(row[4]) > 0 and number(row[6]) > 0 and number(row[7]) > 0 for row in rows)


@pytest.mark.skipif(not shutil.which("mtail"), reason="mtail is not installed")
def test_bench_live_follows_beside_mtail():
    rows = run_benchmark("bench_live.py", "--seconds", "2", "--rates", "0,50")
    assert [row[0] for row in rows] == ["0", "50"]
    assert number(rows[0][1]) == 0 and number(rows[1][1]) > 0  # lines written
    assert all(number(row[2]) >= 0 and number(row[3]) >= 0 for row in rows)  # % of a core each


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_bench_instructions_counts_a_line():
    [row] = run_benchmark("bench_instructions.py", "--formats", "jsonl")
    assert row[0] == "jsonl"
    assert 1_000 < number(row[1]) < 10_000_000  # instructions per line


def can_compile() -> bool:
    return load_script(ROOT / "benchmarks" / "compiled.py", "compiled").available()


@pytest.mark.skipif(not shutil.which("valgrind") or not can_compile(),
                    reason="valgrind is not installed, or nothing can be compiled here")
def test_bench_instructions_compares_the_compiled_reading_path():
    [row] = run_benchmark("bench_instructions.py", "--formats", "jsonl", "--compiled", timeout=600)
    source, compiled = number(row[1]), number(row[2])
    # Fewer: the lines were read with the compiled modules, not with the source beside them.
    assert 1_000 < compiled < source < 10_000_000
