"""`quiver trace` shows the adaptive changes that affected a recipient: the control
events of actor `adaptive` whose selector its attempts matched, read from the control
partition (S3) or with an actor query (Athena)."""

from __future__ import annotations

import gzip
import json

from quiver.trace.adaptive import ADAPTIVE, affecting
from quiver.trace.athena import build_query, parse_results
from quiver.trace.s3_reader import scan
from quiver.trace.target import Target, Window

DEFERRED = {"event": "deferred", "at": "2026-01-01T00:00:01.000Z", "id": "m1",
            "rcpt": "a@delta.test", "source": "local1", "provider": "outlook",
            "tenant": "acme", "campaign": None, "pool": "shared"}


def change(at: str, **selector: str) -> dict:
    return {"event": "control", "at": at, "id": f"adaptive-{len(selector)}{at[-6:-4]}",
            "rcpt": None, "actor": ADAPTIVE, "action": "suspend", "selector": selector,
            "rule": "outlook-blocklisted", "reason": "451 4.7.500 (S3150)"}


def test_changes_whose_selector_the_attempts_matched_while_the_recipient_was_in_hand() -> None:
    delivered = {**DEFERRED, "event": "delivered", "at": "2026-01-01T00:00:09.000Z"}
    # Drawn by its own attempt: recorded just before that attempt's event.
    suspension = {**change("2026-01-01T00:00:00.900Z", source="local1", provider="outlook"),
                  "until": "2026-01-01T00:00:05.000Z"}
    tenant = change("2026-01-01T00:00:03.000Z", tenant="acme")
    other_source = change("2026-01-01T00:00:02.000Z", source="local2", provider="outlook")
    ended = {**change("2025-12-31T23:00:00.000Z", source="local1", provider="outlook"),
             "until": "2025-12-31T23:30:00.000Z"}
    after = change("2026-01-01T00:00:10.000Z", source="local1", provider="outlook")
    found = affecting([DEFERRED, delivered], [suspension, tenant, other_source, ended, after])
    assert found == [suspension, tenant]
    assert affecting([], [suspension]) == []


def test_the_actor_target_matches_control_events_of_the_actor_only() -> None:
    target = Target.changes_by(ADAPTIVE)
    operator = {**change("2026-01-01T00:00:02.000Z", domain="x.test"), "actor": "ops@host"}
    mine = change("2026-01-01T00:00:02.000Z", source="local1", provider="outlook")
    data = gzip.compress("\n".join(json.dumps(r) for r in (DEFERRED, operator, mine))
                         .encode())
    assert scan(data, target, needle=target.needle()) == [mine]


def test_the_athena_query_for_an_actor_reads_the_control_fields() -> None:
    query, parameters = build_query(Target.changes_by(ADAPTIVE), Window(0.0, 3600.0),
                                    database="quiver")
    assert "element_at(selector, 'source') AS selector_source" in query
    assert parameters[-2:] == ["'control'", "'adaptive'"]
    page = {"ResultSet": {
        "ResultSetMetadata": {"ColumnInfo": [{"Name": n} for n in (
            "event", "at", "id", "actor", "rule", "selector_source", "selector_provider",
            "selector_tenant")]},
        "Rows": [{"Data": [{"VarCharValue": v} for v in (
            "control", "2026-01-01T00:00:02.000Z", "adaptive-1", "adaptive", "r",
            "local1", "outlook")] + [{}]}]}}
    (record,) = parse_results([page])
    assert record["selector"] == {"source": "local1", "provider": "outlook"}
