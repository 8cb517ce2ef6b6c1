"""Signed return paths end to end on the local stack: the key ring in Secrets Manager
on moto's server, the sender rewriting MAIL FROM per recipient, the MX receiving
b-<token>@ the bounce domain in one transaction per recipient, and each token
verifying back to its message and recipient through the DynamoDB store."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackrig import Running, enqueue, running_stack

from quiver.client import OutboundMessage
from quiver.devstack.moto_server import session
from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS
from quiver.returnpath import (
    ReturnPathVerifier,
    Verified,
    dump_key_ring,
    load_key_ring,
    rotated,
)
from quiver.storage.aws import secret_reader
from quiver.storage.dynamo import DynamoReturnPaths

pytestmark = pytest.mark.integration

FROM_DOMAIN = "news.quiver-demo.test"
BOUNCE_DOMAIN = f"bounces.{FROM_DOMAIN}"
SECRET_ID = "quiver-local/return-path/keys"
SECTION = f"""
[return_path]
key_secret = "{SECRET_ID}"
[[return_path.domains]]
from = "{FROM_DOMAIN}"
bounce = "{BOUNCE_DOMAIN}"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("return-path"), start_sender=False) as running:
        sm = running.stack.client("secretsmanager")
        sm.create_secret(Name=SECRET_ID,
                         SecretString=dump_key_ring(rotated(None, now=time.time() - 60)))
        config = running.stack.policy_variant("return-path", lambda text: text + SECTION)
        running.stack.start_sender(config=config)
        yield running


def test_the_mx_gets_one_signed_return_path_per_recipient_and_each_verifies_back(
        stack: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    to = ["ann@alpha.test", "Bob.Smith@alpha.test", "cy@bravo.test"]
    signed = OutboundMessage(
        id="rp-signed-1", sender=f"bounces@{FROM_DOMAIN}", to=to, tenant="acme",
        campaign="december",
        raw=render(message_id="rp-signed-1", from_addr=f"hello@{FROM_DOMAIN}", to=to,
                   subject="signed"))
    # Another From domain, and a null reverse path: both keep their envelope sender.
    plain = OutboundMessage(
        id="rp-plain-1", sender="bounces@alerts.quiver-demo.test", to=to[:2],
        raw=render(message_id="rp-plain-1", from_addr="hello@alerts.quiver-demo.test",
                   to=to[:2], subject="plain"))
    null = OutboundMessage(
        id="rp-null-1", sender="", to=to[:2],
        raw=render(message_id="rp-null-1", from_addr=f"hello@{FROM_DOMAIN}", to=to[:2],
                   subject="null"))
    enqueue(stack, [signed, plain, null])
    events = stack.events_for({"rp-signed-1", "rp-plain-1", "rp-null-1"}, finals=7, timeout=120)
    finals = [e for e in events if e["event"] in FINAL_EVENTS]
    assert Counter(e["event"] for e in finals) == {"delivered": 7}, finals

    received = stack.stack.mx.received()
    by_subject: dict[str, list[dict]] = {}
    for item in received:
        raw = Path(item["file"]).read_bytes()
        subject = next(line for line in raw.split(b"\r\n") if line.startswith(b"Subject:"))
        by_subject.setdefault(subject.split(b":", 1)[1].strip().decode(), []).append(item)

    # One transaction per recipient, each with its own b-<token>@ the bounce domain.
    transactions = by_subject["signed"]
    assert sorted(r for t in transactions for r in t["rcpt_tos"]) == sorted(to)
    assert all(len(t["rcpt_tos"]) == 1 for t in transactions)
    senders = {t["rcpt_tos"][0]: t["mail_from"] for t in transactions}
    assert len(set(senders.values())) == 3
    for sender in senders.values():
        local, _, domain = sender.partition("@")
        assert domain == BOUNCE_DOMAIN and local.startswith("b-") and len(local) <= 64

    # The events keep the caller's `from`, and name the return path used.
    for e in finals:
        if e["id"] == "rp-signed-1":
            assert e["from"] == f"bounces@{FROM_DOMAIN}"
            assert e["return_path"] == senders[e["rcpt"]]
        else:
            assert "return_path" not in e

    # What a bounce intake does: the ring from Secrets Manager, the store in DynamoDB.
    endpoint = stack.stack.moto.endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    ring = load_key_ring(key_secret=SECRET_ID, read_secret=secret_reader(session(endpoint)))
    store = DynamoReturnPaths(stack.stack.client("dynamodb"), stack.deployment.finals_table)
    verifier = ReturnPathVerifier(keys=ring, store=store,
                                  bounce_domains={BOUNCE_DOMAIN: None})
    for rcpt, sender in senders.items():
        # Some receivers fold the local part's case; the token survives it.
        for form in (sender, sender.upper()):
            assert verifier.verify(form) == Verified(
                message_id="rp-signed-1", recipient=rcpt, tenant="acme", campaign="december",
                key_id=1, bounce_domain=BOUNCE_DOMAIN)

    # The others went grouped, with the envelope sender the caller gave.
    assert [(t["mail_from"], sorted(t["rcpt_tos"])) for t in by_subject["plain"]] == [
        ("bounces@alerts.quiver-demo.test", sorted(to[:2]))]
    assert [(t["mail_from"], sorted(t["rcpt_tos"])) for t in by_subject["null"]] == [
        ("<>", sorted(to[:2]))]
