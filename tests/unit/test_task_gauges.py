"""The task's gauges: mail in hand and the part of it that is not waiting on a limit
(what the autoscaler reads), and each proxy node's health as this task sees it."""

from __future__ import annotations

import asyncio
import io
import json

from test_budget_zero_share import fleet_queues
from test_ready_queue_reload import FakeMx

from quiver.scheduler.ready import Job
from quiver.sender.gauges import TaskGauges
from quiver.sender.metrics import OutcomeMetrics


def test_sendable_now_is_the_mail_in_hand_not_waiting_on_limits() -> None:
    gauges = TaskGauges(held=lambda: 120, waiting=lambda: 100, clock=lambda: 1.5)
    (doc,) = gauges.documents()
    assert (doc["held"], doc["sendable_now"]) == (120, 20)
    (spec,) = doc["_aws"]["CloudWatchMetrics"]
    # No dimension: every task writes the same metric; its Average is the mean per task.
    assert spec["Dimensions"] == [[]]
    assert {m["Name"] for m in spec["Metrics"]} == {"held", "sendable_now"}
    assert doc["_aws"]["Timestamp"] == 1500
    # Jobs (per domain) counted against messages: never below zero.
    (doc,) = TaskGauges(held=lambda: 3, waiting=lambda: 5).documents()
    assert doc["sendable_now"] == 0


def test_every_proxy_node_is_written_every_flush_as_1_or_0() -> None:
    down = {"egress-b"}
    gauges = TaskGauges(held=lambda: 0, waiting=lambda: 0,
                        nodes=["egress-a", "egress-b", "egress-c"], down=lambda: down)
    nodes = {d["node"]: d["proxy_node_healthy"] for d in gauges.documents() if "node" in d}
    assert nodes == {"egress-a": 1, "egress-b": 0, "egress-c": 1}
    down.clear()
    nodes = {d["node"]: d["proxy_node_healthy"] for d in gauges.documents() if "node" in d}
    assert nodes == {"egress-a": 1, "egress-b": 1, "egress-c": 1}
    (doc, *_) = [d for d in gauges.documents() if "node" in d]
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["node"]]


async def test_a_ready_queue_counts_the_jobs_its_limits_hold_back() -> None:
    mx = FakeMx()
    queues = fleet_queues(mx, limit=1, tasks=2)
    (seated,) = [q for q in queues if q.seated()]
    (unseated,) = [q for q in queues if not q.seated()]
    loop = asyncio.get_running_loop()
    jobs = [Job(sender="s@x.test", recipients=[f"r{i}@d.test"], message=b"m",
                future=loop.create_future()) for i in range(10)]
    for job in jobs:
        seated.submit(job)
    # One connection (the limit) takes the first job; nine wait for it.
    assert seated.waiting_on_limits() == 9
    assert unseated.waiting_on_limits() == 0  # it holds nothing: its mail went elsewhere
    await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 60)
    assert seated.waiting_on_limits() == 0
    await seated.close()


def test_the_outcome_flush_writes_the_gauges_even_with_nothing_counted() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out, gauges=TaskGauges(held=lambda: 4, waiting=lambda: 1,
                                                         nodes=["n1"]))
    assert metrics.flush() == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d.get("sendable_now") for d in docs] == [3, None]
    assert docs[1]["proxy_node_healthy"] == 1
