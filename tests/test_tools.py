"""The measurement scripts under tools/ still run (at smoke size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_cpu_contention_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "tools/cpu_contention.py", "--rounds", "1", "--epochs", "1", "--limit", "64",
         "--conditions", "none", "2 busy loops"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| seconds") and len(rows) == 3  # header, no competitor, busy loops
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(cells) == 2 and all(float(c.split()[0]) > 0 for c in cells)
