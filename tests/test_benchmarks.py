"""The benchmark that needs nothing beyond the project runs and prints its table (the others
need mtail or node_exporter and run by hand)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_bench_reading_prints_a_row_per_log_shape():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reading.py"), "--lines", "3000",
                             "--repeat", "1", "--against", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "lines/s |" in line]
    assert len(rows) == 7, result.stdout
    for row in rows:
        ours, theirs = (float(cell.split()[0].replace(",", "")) for cell in row.split("|")[2:4])
        assert ours > 0 and theirs > 0, row
