"""The typed DuckDB read of exported objects (quiver.event_schema.duckdb_source): every
field a column of its type whatever the files sampled hold, the partitions typed as
Athena types them, `meta` a map of strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from quiver.event_schema import duckdb_columns, duckdb_source
from quiver.events import EventRecord
from quiver.export import partition


def _record(event: Any, n: int, **fields: Any) -> EventRecord:
    record: EventRecord = {
        "v": 1, "event": event, "at": f"2026-12-03T08:{n % 60:02d}:00.250Z", "id": f"m-{n}",
        "rcpt": f"u{n}@x.example", "from": "b@y.example", "tenant": None,
        "campaign": "spring", "pool": "shared", "meta": {"n": n, "vip": True, "s": "x"},
        "attempt": 1, **fields,
    }
    return record


def _export(root: Path, batch: str, records: list[EventRecord]) -> None:
    for key, data in partition(batch, records).items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_typed_read_keeps_every_column_and_its_type(tmp_path: Path) -> None:
    # Forty objects of delivered events sort before the one rejected object: schema
    # inference (read_json_auto samples 32 files) would lose `reason`.
    for n in range(40):
        _export(tmp_path, f"b{n:02d}", [_record(
            "delivered", n, source="local1", source_ip="127.0.0.2",
            response={"code": 250, "enhanced": "2.0.0", "text": "OK"}, queued_ms=120 + n,
            message_size=4096, dkim_domain="y.example", dkim_selector="s1",
            message_id_header=f"<m-{n}@y.example>", transaction_ms=7)])
    _export(tmp_path, "zz", [_record("rejected", 99, attempt=0, response=None,
                                     reason="pool: unknown pool", sqs_message_id="q-1")])
    glob = str(tmp_path / "events/event=*/date=*/hour=*/*.jsonl.gz")
    db = duckdb.connect()
    db.execute(f"CREATE VIEW events AS SELECT * FROM {duckdb_source(glob)}")
    described = {row[0]: row[1] for row in db.execute("DESCRIBE events").fetchall()}
    assert {k: v for k, v in described.items() if k in duckdb_columns()} == _as_described(db)
    assert described["at"] == "TIMESTAMP WITH TIME ZONE"
    assert described["hour"] == described["date"] == described["event"] == "VARCHAR"
    assert described["dsn"].startswith("STRUCT(recipient VARCHAR")  # in no file: still typed

    (reason, rcpt, sqs_id), = db.execute(
        "SELECT reason, rcpt, sqs_message_id FROM events WHERE event = 'rejected'").fetchall()
    assert (reason, rcpt, sqs_id) == ("pool: unknown pool", "u99@x.example", "q-1")
    # The partitions are strings, as in Athena: two digits, so '08' matches, '8' not.
    assert db.execute("SELECT count(*) FROM events WHERE hour = '08'").fetchone() == (41,)
    assert db.execute("SELECT count(*) FROM events WHERE hour = '8'").fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM events WHERE \"date\" = '2026-12-03'").fetchone() == (41,)
    row = db.execute(
        "SELECT meta['n'], meta['vip'], meta['s'], response.code, queued_ms, message_size, "
        "transaction_ms, extract('minute' FROM \"at\") FROM events WHERE id = 'm-7'").fetchone()
    assert row == ("7", "true", "x", 250, 127, 4096, 7, 7)


def _as_described(db: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The schema's DuckDB types as DuckDB spells them back (TIMESTAMPTZ and so on)."""
    out = {}
    for name, type_ in duckdb_columns().items():
        description = db.execute(f"SELECT CAST(NULL AS {type_})").description
        assert description is not None
        out[name] = str(description[0][1])
    return out


def test_the_readme_query_runs_over_the_typed_read(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (query,) = [b.split("```", 1)[0] for b in readme.split("```sql\n")[1:]
                if "FROM events WHERE id" in b.split("```", 1)[0]]
    _export(tmp_path, "b1", [
        _record("deferred", 1, id="welcome-00042", response={
            "code": 451, "enhanced": "4.7.1", "text": "greylisted"},
            next_attempt_at="2026-12-03T08:05:00.000Z"),
        _record("delivered", 2, id="welcome-00042", attempt=2, response={
            "code": 250, "enhanced": "2.0.0", "text": "OK"})])
    db = duckdb.connect()
    db.execute("CREATE VIEW events AS SELECT * FROM "
               + duckdb_source(str(tmp_path / "events/event=*/date=*/hour=*/*.jsonl.gz")))
    rows = db.execute(query).fetchall()
    assert [(event, attempt, why) for _, event, _, attempt, why in rows] == [
        ("deferred", 1, "greylisted"), ("delivered", 2, "OK")]
