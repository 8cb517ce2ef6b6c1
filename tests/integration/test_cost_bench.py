"""bench/cost.py runs end to end with tiny counts, prints one JSON line of priced line
items and a fixed monthly line, and cleans up. Asserts nothing about speed or price
levels: the figures only have to be present and consistent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cost.py"


@pytest.mark.skipif(not (shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin")),
                    reason="smtp-sink is not installed (postfix)")
def test_cost_bench_prints_priced_line_items_and_cleans_up() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--messages", "60", "--runs", "1",
                           "--json"], capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:]
    data = json.loads(lines[0])
    assert data["runs"] == 1 and data["prices_recorded"]
    items = data["line_items"]
    assert data["usd_per_million"] == pytest.approx(
        sum(v["usd_per_million"] for v in items.values()), abs=1e-3)
    # The calls a message makes: its receive and delete, its events, their export.
    for wanted in ("sqs outbound queue ReceiveMessage", "sqs outbound queue DeleteMessageBatch",
                   "sqs events queue SendMessageBatch", "s3 events bucket PUT",
                   "lambda export invocations", "fargate sender vCPU-seconds"):
        assert any(k.startswith(wanted) for k in items), (wanted, sorted(items))
    assert all(v["per_msg"] >= 0 and v["usd_per_million"] >= 0 for v in items.values())
    # The sender confirmed its flushes in the finals table.
    assert any(k.startswith("dynamodb finals table PutItem") for k in items), sorted(items)
    fixed = data["fixed_usd_per_month"]
    assert fixed["total"] > 0 and len(fixed) > 2
    assert not Path(data["work_dir"]).exists()
