"""``python -m bench.fanout_cpu`` runs end to end and reports both modes (figures are not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"\w+: deliveries per CPU-second by round: (.+); median ([\d,]+)")


@pytest.mark.timeout(120)
def test_fanout_cpu_reports_the_fanout_and_its_floor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.fanout_cpu", "--recipients", "20", "--emits", "5", "--rounds", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["fanout", "floor"], done.stdout
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        rounds, median = match.groups()
        assert len(rounds.split(", ")) == 2 and int(median.replace(",", "")) > 0, line
