"""Policy reload: what applies live, what waits for a restart; a broken text changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from quiver.policy import Policy, PolicyError, parse_policy
from quiver.policy.reload import PolicySource, PolicyWatcher, merge_live

BASE = """
default_pool = "p"
[delivery]
ehlo = "mta.example.test"
[sources.a]
ip = "192.0.2.10"
ehlo = "a.example.test"
[pools.p]
sources = ["a"]
[retry]
first = "5m"
[[throttles]]
source = "*"
max_connections = 3
"""


def variant(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


def test_throttles_retry_and_pipelining_apply_live() -> None:
    current = parse_policy(BASE)
    new = parse_policy(variant('first = "5m"', 'first = "1m"').replace(
        "max_connections = 3", "max_connections = 1").replace(
        'ehlo = "mta.example.test"', 'ehlo = "mta.example.test"\npipeline_next = false'))
    merged, change = merge_live(current, new)
    assert change.applied == ("throttles", "retry", "delivery.pipeline_next")
    assert change.restart == ()
    assert merged.throttles == new.throttles and merged.retry.first == 60
    assert merged.delivery.pipeline_next is False
    assert merged.sources == current.sources


def test_throttles_wait_for_a_restart_when_the_sources_they_name_change() -> None:
    current = parse_policy(BASE)
    new = parse_policy(BASE.replace("[sources.a]", "[sources.b]").replace(
        'sources = ["a"]', 'sources = ["b"]').replace("max_connections = 3",
                                                       "max_connections = 1"))
    merged, change = merge_live(current, new)
    assert "throttles" in change.restart and "sources" in change.restart
    assert "throttles" not in change.applied
    assert merged.throttles == current.throttles


def test_other_sections_are_left_for_a_restart() -> None:
    current = parse_policy(BASE)
    new = parse_policy(variant('ip = "192.0.2.10"', 'ip = "192.0.2.11"').replace(
        'ehlo = "mta.example.test"', 'ehlo = "mta2.example.test"'))
    merged, change = merge_live(current, new)
    assert change.applied == ()
    assert change.restart == ("sources", "delivery")
    assert merged == current  # nothing of it is used until the restart


class Source:
    """The policy text a watcher reads: set by the test, or failing to be read."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.unreadable = False
        self.reads = 0

    def read(self) -> str:
        self.reads += 1
        if self.unreadable:
            raise PolicyError(["cannot read SSM parameter /quiver/policy: throttled"], "ssm:x")
        return self.text


def watcher(source: Source, applied: list[Policy]) -> PolicyWatcher:
    return PolicyWatcher(
        PolicySource(origin="ssm:/quiver/policy", read=source.read, text=BASE, interval=0.05),
        current=parse_policy(BASE), apply=applied.append)


async def test_an_unchanged_text_is_not_applied_again() -> None:
    source, applied = Source(BASE), []
    w = watcher(source, applied)
    assert await w.check() is None
    source.text = BASE.replace("max_connections = 3", "max_connections = 2")
    change = await w.check()
    assert change is not None and change.applied == ("throttles",)
    assert await w.check() is None
    assert len(applied) == 1 and w.reloads == 1
    limits = [t.max_connections for t in applied[0].throttles]
    assert limits == [2]


async def test_a_broken_policy_changes_nothing_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    source, applied = Source(BASE), []
    w = watcher(source, applied)
    source.text = BASE.replace("max_connections = 3", "max_connections = -1").replace(
        'first = "5m"', 'first = "soon"')
    with caplog.at_level(logging.ERROR, logger="quiver.policy"):
        first = await w.check()
        again = await w.check()
    assert first is not None  # every problem, with its path
    assert any(e.startswith("throttles[0].max_connections:") for e in first.errors)
    assert any(e.startswith("retry.first:") for e in first.errors)
    assert again is not None and again.errors == first.errors
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "\n" not in refused[0].getMessage()
    assert applied == [] and w.failures == 1
    assert w.current.throttles == parse_policy(BASE).throttles
    # Fixed: applied as usual.
    source.text = BASE.replace("max_connections = 3", "max_connections = 5")
    change = await w.check()
    assert change is not None and change.applied == ("throttles",) and len(applied) == 1


async def test_an_unreadable_source_keeps_the_policy_and_is_read_again() -> None:
    source, applied = Source(BASE), []
    w = watcher(source, applied)
    source.unreadable = True
    assert await w.check() is None
    source.unreadable = False
    source.text = BASE.replace("max_connections = 3", "max_connections = 4")
    assert (await w.check()) is not None and len(applied) == 1


async def until(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Wait for what the watcher's loop will make true; the deadline only catches a hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_the_watcher_polls_until_stopped() -> None:
    source, applied = Source(BASE), []
    w = watcher(source, applied)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    source.text = BASE.replace("max_connections = 3", "max_connections = 2")
    await until(lambda: bool(applied))
    stop.set()
    await asyncio.wait_for(task, 30)
    assert len(applied) == 1 and source.reads >= 1


async def test_every_log_line_is_one_line_without_double_quotes(
        caplog: pytest.LogCaptureFixture) -> None:
    source, applied = Source(BASE), []
    w = watcher(source, applied)
    source.unreadable = True
    with caplog.at_level(logging.WARNING, logger="quiver.policy"):
        await w.check()
        source.unreadable = False
        source.text = 'default_pool = "unterminated'  # a TOML error quoting a '"'
        await w.check()
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert "\n" not in record.getMessage() and '"' not in record.getMessage()


async def test_a_failing_apply_is_logged_and_tried_again() -> None:
    source, calls = Source(BASE), []

    def apply(policy: Policy) -> None:
        calls.append(policy)
        if len(calls) == 1:
            raise RuntimeError("boom")

    w = PolicyWatcher(PolicySource(origin="x", read=source.read, text=BASE, interval=0.02),
                      current=parse_policy(BASE), apply=apply)
    source.text = BASE.replace("max_connections = 3", "max_connections = 2")
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    await until(lambda: w.reloads > 0)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert len(calls) == 2 and w.reloads == 1  # the watcher kept going, and retried
