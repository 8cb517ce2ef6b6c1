"""Every saved query under DuckDB against a demo run's events (`quiver demo --keep`),
over the raw objects and over their compaction on moto's server, with the same
answers; `quiver events download` and `quiver events query` as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from demo_run import DemoRun

from quiver.analytics.compaction import GRACE
from quiver.analytics.duck import connect, run
from quiver.analytics.saved import saved_queries
from quiver.devstack import moto_server
from quiver.settings import ENV_EVENTS_BUCKET

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = moto_server.start_moto(log_dir=tmp_path_factory.mktemp("moto"))
    try:
        yield server.endpoint
    finally:
        server.stop()


def digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern))}


def params_for(root: Path) -> dict[str, dict[str, str]]:
    """Parameters that name something the demo did: a recipient that complained, and
    the message it was sent in."""
    with connect(root, "raw") as con:
        _, rows = run(con, "SELECT rcpt, id FROM events WHERE event = 'complaint' "
                           "ORDER BY rcpt LIMIT 1")
    (rcpt, message_id), = rows
    return {"recipient_history": {"rcpt": rcpt.upper()}, "message_history": {"id": message_id}}


@pytest.fixture(scope="module")
def compacted(demo: DemoRun, moto: str,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kept events uploaded to moto's S3 as they are, compacted there with `quiver
    events compact`, and brought back with `quiver events download`."""
    s3 = moto_server.client(moto, "s3")
    bucket = "quiver-events-demo"
    s3.create_bucket(Bucket=bucket)
    for path in sorted(demo.kept.rglob("*.jsonl.gz")):
        s3.put_object(Bucket=bucket, Key=str(path.relative_to(demo.kept)),
                      Body=path.read_bytes())
    hours = [datetime.strptime(f"{p.parent.parent.name[5:]} {p.parent.name[5:]}",
                               "%Y-%m-%d %H").replace(tzinfo=UTC)
             for p in demo.kept.rglob("*.jsonl.gz")]
    now = max(hours) + timedelta(hours=1) + GRACE
    env = {**os.environ, **moto_server.aws_env(moto), ENV_EVENTS_BUCKET: bucket}
    # As an operator runs it against the local stack (after `source env.sh`).
    compact = subprocess.run(
        [sys.executable, "-m", "quiver", "events", "compact",
         "--now", now.isoformat().replace("+00:00", "Z"),
         "--lookback-hours", str(int((now - min(hours)).total_seconds() // 3600) + 1)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert compact.returncode == 0, compact.stderr
    assert " compacted " in compact.stdout, compact.stdout
    target = tmp_path_factory.mktemp("downloaded")
    done = subprocess.run(
        [sys.executable, "-m", "quiver", "events", "download", "--to", str(target)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return target


def test_download_keeps_the_layout_and_the_bytes(demo: DemoRun, compacted: Path) -> None:
    assert digests(compacted, "*.jsonl.gz") == digests(demo.kept, "*.jsonl.gz")
    assert all(p.read_bytes()[:2] == b"\x1f\x8b" for p in compacted.rglob("*.jsonl.gz"))
    assert any(compacted.rglob("events-compacted/event=delivered/*/*/*.parquet"))


@pytest.mark.parametrize("name", sorted(saved_queries()))
def test_every_saved_query_returns_rows_alike_on_both_layouts(
        name: str, demo: DemoRun, compacted: Path) -> None:
    query = saved_queries()[name]
    params = query.bind(params_for(demo.kept).get(name, {}))
    answers: dict[str, Counter[str]] = {}
    for layout in ("raw", "compacted"):
        with connect(compacted, layout) as con:
            names, rows = run(con, query.text("duckdb"), params)
        answers[layout] = Counter(json.dumps(dict(zip(names, r, strict=True)), default=str)
                                  for r in rows)
    assert answers["raw"], f"{name} returned no rows"
    assert answers["raw"] == answers["compacted"]
    if name == "complaint_rate":
        assert any(json.loads(r)["complaints"] > 0 for r in answers["raw"])
    if name == "rejected_messages":
        reasons = [json.loads(r)["reason"] for r in answers["raw"]]
        assert len(reasons) == 2 and all(reasons), reasons


def test_quiver_events_query_runs_a_saved_query_on_a_folder(demo: DemoRun) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quiver", "events", "query", "--dir", str(demo.kept),
         "--saved", "top_bounce_reasons", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows and all(r["bounced"] > 0 and r["kind"] for r in rows)
    refused = subprocess.run(
        [sys.executable, "-m", "quiver", "events", "query", "--dir", str(demo.kept),
         "--saved", "recipient_history"], capture_output=True, text=True, timeout=120,
        check=False)
    assert refused.returncode == 2 and "--param rcpt=" in refused.stderr
