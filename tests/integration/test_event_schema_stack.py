"""Real records from the local stack against the schema the Glue table and the docs are
generated from: every field present is a column of a compatible type, a malformed
message's `rejected` events are found by the caller's id and recipient (in Python and
in DuckDB), attempt events say what was sent, and an object downloaded over plain HTTP
(a presigned URL on moto's server) stays gzip."""

from __future__ import annotations

import gzip
import json
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pytest
from stackrig import Running

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.samples import render
from quiver.event_schema import duckdb_columns, duckdb_source, record_problems
from quiver.export import CONTENT_TYPE, read_object

pytestmark = pytest.mark.integration

FROM_DOMAIN, SELECTOR = "news.quiver-demo.test", "q1"  # the local stack signs it (DKIM_DOMAINS)


def _malformed(message_id: str, **fields: Any) -> str:
    body = {"v": 1, "id": message_id, "from": f"bounces@{FROM_DOMAIN}",
            "to": ["Ann@Alpha.test", "bob@bravo.test"], "raw": "SGk=", "tenant": "acme",
            "campaign": "schema", **fields}
    return json.dumps(body)


def _objects(running: Running) -> dict[str, bytes]:
    s3 = running.stack.client("s3")
    bucket = running.deployment.events_bucket
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/"):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def test_real_records_fit_the_schema_and_rejections_are_found(local_stack: Running,
                                                              tmp_path: Path) -> None:
    client = QuiverClient(sqs=local_stack.stack.client("sqs"),
                          s3=local_stack.stack.client("s3"),
                          queue_url=local_stack.deployment.outbound_queue_url,
                          spill_bucket=local_stack.deployment.spill_bucket)
    to = ["schema-ok@alpha.test", "greylist-schema@alpha.test", "permfail-schema@bravo.test"]
    client.enqueue(OutboundMessage(
        id="schema-1", sender=f"bounces@{FROM_DOMAIN}", to=to,
        raw=render(message_id="schema-1", from_addr=f"hello@{FROM_DOMAIN}", to=to,
                   subject="schema"),
        tenant="acme", campaign="schema", meta={"n": 7, "vip": True, "note": None}))
    sqs = local_stack.stack.client("sqs")
    for body in (_malformed("schema-bad-meta", meta={"nested": {"x": 1}}),
                 _malformed("schema-bad-pool", pool="no-such-pool"),
                 _malformed("schema-bad-rcpt",
                            to=["Ann@Alpha.test", "x\r\nRCPT TO:<e@evil.test>"])):
        sqs.send_message(QueueUrl=local_stack.deployment.outbound_queue_url, MessageBody=body)
    ids = {"schema-1", "schema-bad-meta", "schema-bad-pool", "schema-bad-rcpt"}
    events = local_stack.events_for(ids, finals=3 + 2 + 2 + 2, timeout=120)

    # Every record in the bucket (these and every other test's) fits the schema.
    objects = _objects(local_stack)
    problems = {key: p for key, data in objects.items() for r in read_object(data)
                if (p := record_problems(r))}
    assert problems == {}

    # A malformed message is found by the caller's id and recipient.
    for message_id, reason in (("schema-bad-meta", "meta.nested"),
                               ("schema-bad-pool", "pool: unknown pool"),
                               ("schema-bad-rcpt", "to[1]: invalid address")):
        found = [e for e in events if e["id"] == message_id]
        assert {e["event"] for e in found} == {"rejected"}, found
        ann = [e for e in found if e["rcpt"].lower() == "ann@alpha.test"]
        assert len(ann) == 1 and reason in ann[0]["reason"], found
        assert ann[0]["tenant"] == "acme" and ann[0]["campaign"] == "schema"
        assert ann[0]["sqs_message_id"] and ann[0]["sqs_message_id"] != message_id

    # Attempt events say what was sent, and how long its transaction took.
    sent = [e for e in events if e["id"] == "schema-1"]
    kinds = {(e["rcpt"].split("-")[0], e["event"]) for e in sent}
    assert {("schema", "delivered"), ("greylist", "deferred"), ("greylist", "delivered"),
            ("permfail", "bounced")} <= kinds, kinds
    for e in sent:
        assert e["message_size"] > 4000 and e["message_id_header"] == f"<schema-1@{FROM_DOMAIN}>"
        assert (e["dkim_domain"], e["dkim_selector"]) == (FROM_DOMAIN, SELECTOR)
        assert isinstance(e["transaction_ms"], int) and e["transaction_ms"] >= 0
        assert e["meta"] == {"n": "7", "vip": "true", "note": None}

    # The same questions in DuckDB, over the objects as downloaded (key layout kept).
    for key, data in objects.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    db = duckdb.connect()
    db.execute("CREATE VIEW events AS SELECT * FROM "
               + duckdb_source(str(tmp_path / "events/event=*/date=*/hour=*/*.jsonl.gz")))
    keys = {k for data in objects.values() for r in read_object(data) for k in r}
    assert keys - {"event"} <= set(duckdb_columns())
    rows = db.execute(
        "SELECT id, reason FROM events WHERE event = 'rejected' AND lower(rcpt) = ? "
        "AND id LIKE 'schema-bad-%' ORDER BY id", ["ann@alpha.test"]).fetchall()
    assert [r[0] for r in rows] == ["schema-bad-meta", "schema-bad-pool", "schema-bad-rcpt"]
    # The partitions as Athena types them: `hour` two digits, a string.
    at = next(e["at"] for e in events if e["id"] == "schema-bad-meta")
    assert db.execute("SELECT count(*) FROM events WHERE id = 'schema-bad-meta' "
                      "AND \"date\" = ? AND hour = ?", [at[:10], at[11:13]]).fetchone() == (2,)
    row = db.execute(
        "SELECT typeof(\"at\"), typeof(message_size), typeof(meta), meta['vip'] FROM events "
        "WHERE id = 'schema-1' AND event = 'delivered' LIMIT 1").fetchone()
    assert row == ("TIMESTAMP WITH TIME ZONE", "BIGINT", "MAP(VARCHAR, VARCHAR)", "true")


def test_an_object_downloaded_over_plain_http_stays_gzip(local_stack: Running) -> None:
    s3 = local_stack.stack.client("s3")
    bucket = local_stack.deployment.events_bucket
    client = QuiverClient(sqs=local_stack.stack.client("sqs"), s3=s3,
                          queue_url=local_stack.deployment.outbound_queue_url,
                          spill_bucket=local_stack.deployment.spill_bucket)
    client.enqueue(OutboundMessage(
        id="schema-http", sender=f"bounces@{FROM_DOMAIN}", to=["schema-http@alpha.test"],
        raw=render(message_id="schema-http", from_addr=f"hello@{FROM_DOMAIN}",
                   to=["schema-http@alpha.test"], subject="http")))
    (event,) = local_stack.events_for({"schema-http"}, finals=1, timeout=120)
    key = next(k for k in _objects(local_stack)
               if k.startswith("events/event=delivered/")
               and any(r["id"] == "schema-http" for r in read_object(
                   s3.get_object(Bucket=bucket, Key=k)["Body"].read())))
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == CONTENT_TYPE == "application/gzip"
    assert "ContentEncoding" not in head and key.endswith(".jsonl.gz")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                    ExpiresIn=300)
    assert url.startswith("http://127.0.0.1:")
    # A browser's request: it would undo a Content-Encoding it is sent.
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers.get("Content-Encoding") is None
        assert response.headers.get("Content-Type") == "application/gzip"
        data = response.read()
    assert data[:2] == b"\x1f\x8b"
    assert event in [json.loads(line) for line in gzip.decompress(data).splitlines()]
