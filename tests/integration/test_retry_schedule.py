"""Retries on the schedule, attempts per recipient, each recipient's own last reply, one
event per real try, findable rejections and the null reverse-path: on the local stack
(moto, DNS, HAProxy when installed, the sender process) with scripted MXes.

Faults that the stack's shared MX cannot script per test run on MXes of their own:
in-process MXes on other loopback addresses, on the shared MX's port (the only port
the egress proxies forward to), reached through `delivery.routes`. Each counts the
connections it gets, which are the sender's real tries at it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from stackrig import Running, enqueue, message, running_stack

from quiver.devstack.servers.mx import MxServer, start_mx
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration
STACK_MAX_AGE = "40s"
BUSY_RCPT = {"code": 421, "enhanced": "4.7.0", "text": "too busy for this recipient"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("retries"), max_age=STACK_MAX_AGE,
                       start_sender=False) as running:
        yield running


@contextmanager
def own_mx(stack: Running, tmp: Path, address: str, **options: int) -> Iterator[MxServer]:
    assert stack.stack.mx is not None
    mx = start_mx(host=address, port=stack.stack.mx.address[1], store_dir=tmp / address,
                  **options)
    try:
        yield mx
    finally:
        mx.stop()


def policy(*, routes: dict[str, str], max_age: str = STACK_MAX_AGE, cap: str = "1h",
           extra: str = "") -> Callable[[str], str]:
    """Retry first 1 s, factor 2 (the stack's), `cap`, `max_age`; site backoff 1 s."""
    entries = ", ".join(f'"{d}" = "{t}"' for d, t in routes.items())

    def edit(text: str) -> str:
        for old, new in ((f'max_age = "{STACK_MAX_AGE}"', f'max_age = "{max_age}"'),
                         ('cap = "4s"', f'cap = "{cap}"'),
                         ('site_backoff = "2s"', 'site_backoff = "1s"'),
                         ('command_timeout = "30s"\n',
                          f'command_timeout = "30s"\nroutes = {{ {entries} }}\n')):
            assert old in text, old
            text = text.replace(old, new, 1)
        # These MXes offer no STARTTLS, and the stack's default mode is verify.
        return text + plaintext_rules(routes) + extra
    return edit


def plaintext_rules(routes: dict[str, str]) -> str:
    """Opportunistic TLS for each routed domain: its own MX speaks plaintext only."""
    return "".join(f'\n[[tls.rules]]\ndomain = "{d}"\nmode = "opportunistic"\n'
                   for d in routes)


@contextmanager
def sender(stack: Running, name: str, edit: Callable[[str], str]) -> Iterator[None]:
    process = stack.stack.start_sender(name=name,
                                       config=stack.stack.policy_variant(name, edit))
    try:
        yield
    except BaseException:
        stack.stack.stop_sender(process)
        raise
    assert stack.stack.stop_sender(process) == 0


def by_rcpt(events: list[dict], rcpt: str) -> list[dict]:
    return sorted((e for e in events if e["rcpt"] == rcpt), key=lambda e: (e["at"], e["event"]))


def test_a_421_forever_recipient_is_tried_on_the_schedule_and_expires_with_its_own_421(
        stack: Running, tmp_path: Path) -> None:
    """first 1 s, factor 2, max_age 40 s: at most 6 tries (0, 1, 3, 7, 15, 31 s; jitter
    only shortens them), not one per second or per site backoff."""
    rcpt = "busy421-1@forever421.test"
    with own_mx(stack, tmp_path, "127.0.0.66") as mx, \
            sender(stack, "forever421", policy(routes={"forever421.test": "127.0.0.66"})):
        msg = message(0, [rcpt], prefix="forever421")
        enqueue(stack, [msg])
        events = stack.events_for({msg.id}, finals=1, timeout=120)
        tries = mx.stats()["connections"]
    mine = by_rcpt(events, rcpt)
    print(f"421-forever: {tries} tries at the MX in {STACK_MAX_AGE}; events "
          f"{[(e['event'], e['attempt']) for e in mine]}")
    deferred = [e for e in mine if e["event"] == "deferred"]
    (final,) = [e for e in mine if e["event"] in FINAL_EVENTS]
    assert final["event"] == "expired"
    assert 2 <= tries <= 6
    # One deferral per real try but the last, numbered 1, 2, 3 ...; the expiry is the last.
    assert [e["attempt"] for e in deferred] == list(range(1, tries))
    assert final["attempt"] == tries
    assert final["response"] == BUSY_RCPT
    assert all(e["response"] == BUSY_RCPT for e in deferred)


def test_a_recipient_drained_by_its_siblings_421_never_carries_that_421(
        stack: Running, tmp_path: Path) -> None:
    """One message, two recipients at one site, one connection at a time: the 421 to
    the first one's RCPT closes the connection the second one waits for. The second
    one's events carry its own 451 or say it was never attempted; never the 421."""
    sibling, me = "busy421-s@sib-a.test", "tempfail-m@sib-b.test"
    routes = {"sib-a.test": "127.0.0.67", "sib-b.test": "127.0.0.67"}
    one_connection = ('\n[[throttles]]\nsource = "*"\nmx = "127.0.0.67"\n'
                      'max_connections = 1\n')
    with own_mx(stack, tmp_path, "127.0.0.67"), \
            sender(stack, "siblings", policy(routes=routes, extra=one_connection)):
        msg = message(0, [sibling, me], prefix="siblings", pool="bulk")
        enqueue(stack, [msg])
        events = stack.events_for({msg.id}, finals=2, timeout=120)
    mine, theirs = by_rcpt(events, me), by_rcpt(events, sibling)
    print("sibling:", [(e["event"], e["attempt"], e["response"]["code"]) for e in theirs])
    print("me:", [(e["event"], e["attempt"], e["response"]["code"]) for e in mine])
    assert [e["event"] for e in mine if e["event"] in FINAL_EVENTS] == ["expired"]
    for e in mine:
        assert e["response"] != BUSY_RCPT and e["response"]["code"] != 421, e
        if e["event"] == "deferred":
            assert (e["response"]["code"], e["response"]["enhanced"]) == (451, "4.3.0"), e
    (expired,) = [e for e in mine if e["event"] == "expired"]
    tried = [e for e in mine if e["event"] == "deferred"]
    if expired["response"]["enhanced"] == "4.4.7":  # never tried: it says so
        assert expired["response"]["text"].startswith("never attempted: ")
        assert tried == [] and expired["attempt"] == 0
    else:
        assert (expired["response"]["code"], expired["response"]["enhanced"]) == (451, "4.3.0")
    assert [e["attempt"] for e in tried] == list(range(1, len(tried) + 1))
    (their_final,) = [e for e in theirs if e["event"] in FINAL_EVENTS]
    assert their_final["event"] == "expired" and their_final["response"] == BUSY_RCPT


def test_a_busy_mx_gets_at_most_one_deferral_per_message_per_real_try(
        stack: Running, tmp_path: Path) -> None:
    """40 messages to an MX that turns two connections in three away with a 421
    banner: a message drained from a queue by another's refused connection records
    nothing; the one the connection was for records one deferral."""
    with own_mx(stack, tmp_path, "127.0.0.68", busy_every=3) as mx, \
            sender(stack, "busy", policy(routes={"busy.test": "127.0.0.68"}, max_age="180s",
                                         cap="2s")):
        msgs = [message(i, [f"user-{i}@busy.test"], prefix="busy") for i in range(40)]
        enqueue(stack, msgs)
        events = stack.events_for({m.id for m in msgs}, finals=40, timeout=240)
        stats = mx.stats()
    refused = stats["connections"] - (stats["connections"] // 3)
    deferred = [e for e in events if e["event"] == "deferred"]
    finals = Counter(e["event"] for e in events if e["event"] in FINAL_EVENTS)
    print(f"busy MX: {len(events)} records, {len(deferred)} deferred, {stats['connections']} "
          f"connections ({refused} refused), finals {dict(finals)}")
    assert finals == {"delivered": 40}
    per_try = Counter((e["id"], e["rcpt"], e["attempt"]) for e in deferred)
    assert set(per_try.values()) <= {1}, per_try.most_common(3)
    # Each refused connection was one real try for one message, at most.
    assert len(deferred) <= refused


def test_a_message_that_breaks_the_contract_is_found_by_the_callers_id_and_recipients(
        stack: Running) -> None:
    sqs = stack.stack.client("sqs")
    url = stack.deployment.outbound_queue_url
    good = {"v": 1, "from": "bounces@news.quiver-demo.test", "raw": "SGk=",
            "tenant": "acme", "campaign": "spring"}
    bodies = {
        "rej-meta": {**good, "id": "rej-meta", "to": ["a@alpha.test", "b@bravo.test"],
                     "meta": {"nested": {"x": 1}}},
        "rej-pool": {**good, "id": "rej-pool", "to": ["c@alpha.test"], "pool": "no-such-pool"},
        "rej-crlf": {**good, "id": "rej-crlf",
                     "to": ["d@alpha.test", "victim@alpha.test\r\nRCPT TO:<x@evil.test>"]},
    }
    sqs_ids = {key: sqs.send_message(QueueUrl=url, MessageBody=json.dumps(b))["MessageId"]
               for key, b in bodies.items()}
    undecodable = sqs.send_message(QueueUrl=url, MessageBody='{"v": 1, "id": ')["MessageId"]
    ids = {*sqs_ids, undecodable}
    with sender(stack, "rejects", policy(routes={})):
        events = stack.events_for(ids, finals=6, timeout=60)
    rejected = [e for e in events if e["event"] == "rejected"]
    found = {(e["id"], e["rcpt"]) for e in rejected}
    assert found == {
        ("rej-meta", "a@alpha.test"), ("rej-meta", "b@bravo.test"),
        ("rej-pool", "c@alpha.test"),
        ("rej-crlf", "d@alpha.test"), ("rej-crlf", "victim@alpha.test\r\nRCPT TO:<x@evil.test>"),
        (undecodable, None),
    }
    for e in rejected:
        if e["id"] != undecodable:
            assert e["sqs_message_id"] == sqs_ids[e["id"]]
            assert (e["tenant"], e["campaign"]) == ("acme", "spring")
        else:
            assert e["sqs_message_id"] == undecodable and e["reason"].startswith("body: ")
    assert {e["reason"].split(":")[0] for e in rejected if e["id"] == "rej-meta"} == {"meta.nested"}
    assert {e["pool"] for e in rejected if e["id"] == "rej-pool"} == {"no-such-pool"}
    # The caller's own query: everything about its message, or about one recipient.
    assert [e["event"] for e in stack.events() if e["id"] == "rej-pool"] == ["rejected"]
    assert [e["id"] for e in stack.events() if e["rcpt"] == "b@bravo.test"] == ["rej-meta"]


def test_an_empty_from_is_sent_as_the_null_reverse_path(stack: Running, tmp_path: Path) -> None:
    eml = tmp_path / "dsn.eml"
    eml.write_bytes(b"From: Mail Delivery <mailer-daemon@news.quiver-demo.test>\r\n"
                    b"To: someone@alpha.test\r\nSubject: Delivery Status Notification\r\n\r\n"
                    b"A notification that must never bounce.\r\n")
    with sender(stack, "nullsender", policy(routes={})):
        result = subprocess.run(
            [sys.executable, "-m", "quiver", "enqueue", "--from", "", "--to",
             "user-null@alpha.test", "--id", "null-sender-1", str(eml)],
            env={**os.environ, **stack.stack.env()}, capture_output=True, text=True,
            timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr
        events = stack.events_for({"null-sender-1"}, finals=1, timeout=60)
    (delivered,) = [e for e in events if e["event"] in FINAL_EVENTS]
    assert delivered["event"] == "delivered" and delivered["from"] == ""
    assert stack.stack.mx is not None
    (received,) = [r for r in stack.stack.mx.received()
                   if r["rcpt_tos"] == ["user-null@alpha.test"]]
    assert received["mail_from"] == "<>"  # as aiosmtpd records MAIL FROM:<>
