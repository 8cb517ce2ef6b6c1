"""bench/guards_cost.py runs on moto's server and prints its figures as one JSON line.

Asserts nothing about speed: the figures only have to be present and plausible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "guards_cost.py"


def test_the_guards_bench_prints_its_figures() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--batches", "2", "--events", "100",
                           "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert set(figures) >= {"plain_ms", "guarded_ms", "extra_ms", "ratio", "plain_cpu_ms",
                            "guarded_cpu_ms", "guard_requests"}
    assert figures["plain_ms"] > 0 and figures["guarded_ms"] > 0
    # One transaction and one window Query per tenant and campaign named (5 and 10).
    assert figures["guard_requests"] == 16
