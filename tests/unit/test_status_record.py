"""The status record a sender writes with its heartbeat: capped to the deepest queues
and newest errors with counts of what was left out, compressed under the item bound
whatever the snapshot, refused when it is not a record (or inflates past the read
bound); and the fleet view `quiver status` builds from the records."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest

from quiver.status.fleet import aggregate, sort_queues
from quiver.status.record import (
    MAX_JSON_BYTES,
    MAX_QUEUES,
    MAX_RECORD_BYTES,
    RecordError,
    decode,
    encode,
)
from quiver.status.render import QUEUE_HEADER, TASK_HEADER, render
from quiver.storage.dynamo import SenderItem


def queue(source: str, site: str, *, depth: int, state: str = "sending",
          delivered: int = 0, deferred: int = 0, **extra: Any) -> dict[str, Any]:
    total = delivered + deferred
    return {"source": source, "site": site, "provider": "gmail", "depth": depth,
            "recipients": depth * 2, "connections": min(depth, 3), "idle": 0,
            "delivered": delivered, "deferred": deferred, "bounced": 0,
            "deferral_rate": deferred / total if total else 0.0, "state": state, **extra}


def snapshot(task: str, queues: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"v": 1, "task": task, "at": "2026-01-01T00:00:00.000Z",
            "started_at": "2026-01-01T00:00:00.000Z",
            "policy": {"version": 2, "digest": "abcdef0123456789"}, "share": 0.5,
            "loop_age": 0.4, "inflight": {"messages": 3, "bytes": 300,
                                          "jobs": sum(q["depth"] for q in queues),
                                          "connections": 2},
            "outcome_window": 300.0, "queues": queues, "queues_omitted": 0,
            "proxies": [], "controls": [], "last_errors": [], "last_errors_omitted": 0,
            **extra}


def test_a_record_round_trips_and_caps_the_queues_it_lists() -> None:
    queues = [queue("ip-1", f"mx{i}.example-{i}.test", depth=1000 - i) for i in range(450)]
    data = encode(snapshot("t", queues))
    back = decode(data)
    assert len(back["queues"]) == MAX_QUEUES
    assert back["queues_omitted"] == 450 - MAX_QUEUES
    assert back["queues"][0]["depth"] == 1000  # the deepest kept
    text = zlib.decompress(data)
    print(f"record of {MAX_QUEUES} queues: {len(text)} bytes of JSON, {len(data)} stored")
    assert len(data) <= MAX_RECORD_BYTES


def test_an_incompressible_snapshot_still_fits_by_halving_the_lists() -> None:
    # Random site names do not compress: the lists shrink until the record fits.
    queues = [queue("ip-1", os.urandom(250).hex(), depth=5000 - i) for i in range(5000)]
    errors = [{"site": os.urandom(40).hex(), "at": "x", "source": "ip-1", "code": 451,
               "enhanced": None, "text": os.urandom(150).hex()} for _ in range(3000)]
    data = encode(snapshot("t", queues, last_errors=errors))
    assert len(data) <= MAX_RECORD_BYTES
    back = decode(data)
    assert 0 < len(back["queues"]) < MAX_QUEUES
    assert back["queues_omitted"] + len(back["queues"]) == 5000
    assert back["last_errors_omitted"] + len(back["last_errors"]) == 3000


@pytest.mark.parametrize(("data", "message"), [
    (b"not zlib", "not a compressed status record"),
    (zlib.compress(b"\xff\xfe"), "not JSON"),
    (zlib.compress(b"[1, 2]"), "not a version 1 snapshot"),
    (zlib.compress(b'{"v": 2}'), "not a version 1 snapshot"),
    (zlib.compress(b" " * (MAX_JSON_BYTES + 1)), "inflates past"),
])
def test_what_is_not_a_record_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode(data)


def item(task: str, snap: dict[str, Any] | None, *, beat: float,
         raw: bytes | None = None) -> SenderItem:
    status = raw if raw is not None else (encode(snap) if snap is not None else None)
    return SenderItem(task_id=task, heartbeat=beat, stale=30.0, status=status)


def fleet_items(now: float) -> list[SenderItem]:
    a = snapshot("task-a", [
        queue("ip-1", "gmail-smtp-in.l.google.com", depth=40, delivered=90, deferred=10),
        queue("ip-2", "mx.yahoo.test", depth=5, state="backing off", delivered=0,
              deferred=20, why="421 4.7.0 try later", until="2026-01-01T00:05:00.000Z"),
    ], proxies=[{"node": "proxy-b", "healthy": False, "why": "health probe failed"}],
       controls=[{"kind": "pause", "selector": {"provider": "yahoo"}}])
    b = snapshot("task-b", [
        queue("ip-1", "gmail-smtp-in.l.google.com", depth=60, delivered=100, deferred=0),
        queue("ip-2", "mx.yahoo.test", depth=1, state="throttled", held_by="rate"),
        queue("ip-3", "mx.outlook.test", depth=2, delivered=1, deferred=3),
    ], controls=[{"kind": "pause", "selector": {"provider": "yahoo"}}],
       last_errors=[{"site": "mx.outlook.test", "at": "2026-01-01T00:00:01.000Z",
                     "source": "ip-3", "code": 451, "enhanced": "4.7.650",
                     "text": "IP reputation"}])
    return [item("task-a", a, beat=now - 2), item("task-b", b, beat=now - 5),
            item("task-old", snapshot("task-old", []), beat=now - 31),
            item("task-bad", None, beat=now - 1, raw=b"garbage"),
            item("task-none", None, beat=now - 1)]


def test_the_fleet_sums_queues_across_tasks_and_keeps_the_most_held_back_state() -> None:
    fleet = aggregate(fleet_items(10_000.0), now=10_000.0)
    assert [t["task"] for t in fleet.tasks] == ["task-a", "task-b"]
    assert fleet.stale == 1
    assert set(fleet.unreadable) == {"task-bad", "task-none"}
    assert "not a compressed status record" in fleet.unreadable["task-bad"]
    by_key = {(q["source"], q["site"]): q for q in fleet.queues}
    gmail = by_key[("ip-1", "gmail-smtp-in.l.google.com")]
    assert (gmail["depth"], gmail["tasks"], gmail["delivered"], gmail["deferred"]) == \
        (100, 2, 190, 10)
    assert gmail["deferral_rate"] == pytest.approx(10 / 200)
    yahoo = by_key[("ip-2", "mx.yahoo.test")]
    assert (yahoo["depth"], yahoo["state"], yahoo["why"]) == \
        (6, "backing off", "421 4.7.0 try later")
    outlook = by_key[("ip-3", "mx.outlook.test")]
    assert outlook["last_error"]["text"] == "IP reputation"
    assert outlook["last_error"]["task"] == "task-b"
    assert fleet.proxies_down == {"proxy-b": "health probe failed"}
    assert fleet.controls == [{"kind": "pause", "selector": {"provider": "yahoo"}}]
    assert [q["site"] for q in fleet.queues] == [
        "gmail-smtp-in.l.google.com", "mx.yahoo.test", "mx.outlook.test"]
    by_rate = sort_queues(fleet.queues, "deferrals")
    assert [q["site"] for q in by_rate] == [
        "mx.yahoo.test", "mx.outlook.test", "gmail-smtp-in.l.google.com"]


def test_the_rendered_table() -> None:
    fleet = aggregate(fleet_items(10_000.0), now=10_000.0)
    lines = render(fleet, max_queues=2)
    text = "\n".join(lines)
    print(text)
    assert lines[0] == "2 live sender task(s), 1 stale; 3 ready queue(s)"
    assert any(line.split() == list(TASK_HEADER) for line in lines)
    header = next(line for line in lines if line.startswith("SOURCE"))
    assert header.split() == " ".join(QUEUE_HEADER).split()
    row = next(line for line in lines if "gmail-smtp-in" in line)
    assert row.split()[:7] == ["ip-1", "gmail-smtp-in.l.google.com", "100", "200", "6",
                               "5.0", "sending"]
    assert "backing off  421 4.7.0 try later; until 2026-01-01T00:05:00.000Z" in text
    assert "... 1 more queue(s)" in text
    assert "proxy proxy-b DOWN: health probe failed" in text
    assert 'control: {"kind": "pause", "selector": {"provider": "yahoo"}}' in text
    assert "task task-none: no status record" in text
    task_row = next(line for line in lines if line.startswith("task-a"))
    assert task_row.split() == ["task-a", "2.0s", "v2", "abcdef01", "1/2", "3", "45", "2",
                                "0.4s"]
    assert all(len(line) <= 40 for line in render(fleet, width=40))


def adaptive_rate(version: int, rate: float) -> dict[str, Any]:
    return {"source": "ip-1", "provider": "gmail", "rate": rate, "static_max": 40.0,
            "action": "reduce", "rule": "gmail-rate-limited", "version": version,
            "reason": "421 4.7.28 on 7 of 60 attempts in 60s (11.7% >= 5.0%)",
            "since": "2026-01-01T00:00:00.000Z"}


def test_the_fleet_shows_each_adapted_rate_once_newest_first_and_adaptive_suspensions() -> None:
    suspension = {"id": "adaptive-0123", "kind": "pause", "who": "adaptive",
                  "selector": {"source": "ip-2", "provider": "outlook"},
                  "reason": "451 4.7.500 matched rule outlook-blocklisted: (S3150)",
                  "created_at": 1_767_225_600.0, "expires_at": 1_767_229_200.0}
    a = snapshot("task-a", [], controls=[suspension],
                 adaptive={"enabled": True, "rates": [adaptive_rate(3, 10.0)],
                           "suspensions": [suspension]})
    # task-b has not polled since the last cut: the newer record wins.
    b = snapshot("task-b", [], adaptive={"enabled": True, "rates": [adaptive_rate(2, 20.0)],
                                         "suspensions": []})
    fleet = aggregate([item("task-a", a, beat=99.0), item("task-b", b, beat=99.0)], now=100.0)
    assert [(r["rate"], r["version"]) for r in fleet.adaptive_rates] == [(10.0, 3)]
    lines = render(fleet)
    assert ("adaptive rate: ip-1 x gmail 10/s (static 40/s, reduce) since "
            "2026-01-01T00:00:00.000Z: 421 4.7.28 on 7 of 60 attempts in 60s (11.7% >= 5.0%) "
            "[rule gmail-rate-limited]") in lines
    assert ("adaptive suspension: source=ip-2 provider=outlook until 2026-01-01T01:00:00Z: "
            "451 4.7.500 matched rule outlook-blocklisted: (S3150)") in lines
