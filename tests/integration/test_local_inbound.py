"""The local stand-in for SES inbound, and the intakes the local stack runs on their
queues: a DSN mailed over SMTP to a signed return path ends as an async_bounce event
and a suppression row, through moto's S3 notifications, as in AWS."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inbound_mail import dsn

from quiver.devstack.intake_pump import IntakePumps
from quiver.devstack.moto_server import MotoServer, client, create_resources, start_moto
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.servers.inbound import NO_RULE_REPLY, InboundSmtp
from quiver.events import Record, unpack_batch
from quiver.intake.receipt import receipt_rules
from quiver.policy import parse_policy
from quiver.returnpath import ReturnPaths
from quiver.returnpath.admin import rotate_file
from quiver.returnpath.keys import load_key_ring
from quiver.settings import Deployment
from quiver.storage.dynamo import DynamoReturnPaths

pytestmark = pytest.mark.integration

WAIT = 60.0


def policy_text(key_file: Path) -> str:
    return f"""
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]

[return_path]
key_file = "{key_file}"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"

[feedback]
addresses = ["fbl@fbl.example.com"]
"""


class Rig:
    def __init__(self, moto: MotoServer, dns: DnsServer, deployment: Deployment,
                 key_file: Path, inbound: InboundSmtp) -> None:
        self.moto, self.dns, self.deployment = moto, dns, deployment
        self.key_file, self.inbound = key_file, inbound

    def client(self, service: str) -> Any:
        return client(self.moto.endpoint, service)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("local-inbound")
    moto = start_moto(log_dir=root)
    dns = start_dns(Zone(), prefer="builtin")
    inbound = None
    try:
        deployment = create_resources(moto.endpoint)
        key_file = root / "keys.json"
        rotate_file(key_file, now=time.time())
        text = policy_text(key_file)
        client(moto.endpoint, "ssm").put_parameter(
            Name=deployment.policy_parameter, Value=text, Type="String")
        inbound = InboundSmtp(rules=receipt_rules(parse_policy(text)),
                              s3=client(moto.endpoint, "s3"), bucket=deployment.inbound_bucket)
        yield Rig(moto, dns, deployment, key_file, inbound)
    finally:
        if inbound is not None:
            inbound.stop()
        dns.stop()
        moto.stop()


def signed_return_path(rig: Rig, *, message_id: str, recipient: str) -> str:
    paths = ReturnPaths(load_key_ring(key_file=str(rig.key_file)))
    address, record = paths.address(bounce_domain="bounces.example.com", message_id=message_id,
                                    recipient=recipient, tenant=None, campaign="winter")
    asyncio.run(DynamoReturnPaths(rig.client("dynamodb"), rig.deployment.finals_table)
                .put([record]))
    return address


def events_until(rig: Rig, done: Any) -> list[Record]:
    sqs = rig.client("sqs")
    seen: list[Record] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not done(seen):
        for m in sqs.receive_message(QueueUrl=rig.deployment.events_queue_url,
                                     MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1).get("Messages", []):
            seen += unpack_batch(m["Body"])[1]
            sqs.delete_message(QueueUrl=rig.deployment.events_queue_url,
                               ReceiptHandle=m["ReceiptHandle"])
    return seen


def test_a_dsn_mailed_to_the_return_path_becomes_an_event_and_a_suppression(rig: Rig) -> None:
    rcpt = "gone@alpha.test"
    verp = signed_return_path(rig, message_id="m-1", recipient=rcpt)
    raw = dsn(return_path=verp, recipient=rcpt)
    raw = raw[raw.index(b"From: MAILER-DAEMON"):]  # as the reporting MTA sends it
    pumps = IntakePumps(endpoint=rig.moto.endpoint, deployment=rig.deployment,
                        nameservers=[rig.dns.address], log_dir=rig.key_file.parent)
    pumps.start()
    try:
        host, port = rig.inbound.address
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.sendmail("", [verp], raw)
        (stored,) = [s for s in rig.inbound.stored() if verp in s.recipients]
        assert stored.key.startswith("bounce/")
        body = rig.client("s3").get_object(Bucket=rig.deployment.inbound_bucket,
                                           Key=stored.key)["Body"].read()
        head = body[:body.index(b"From: MAILER-DAEMON")].decode()
        assert head.startswith("Return-Path: <>\r\nReceived: from ")
        assert f"for {verp};" in head
        seen = events_until(rig, lambda s: any(e["event"] == "async_bounce" for e in s))
    finally:
        pumps.stop()
    (event,) = [e for e in seen if e["event"] == "async_bounce"]
    assert (event["id"], event["rcpt"], event["campaign"]) == ("m-1", rcpt, "winter")
    assert event["bounce"]["kind"] == "hard"
    assert event["inbound_object"] == f"s3://{rig.deployment.inbound_bucket}/{stored.key}"
    rows = rig.client("dynamodb").scan(TableName=rig.deployment.suppression_table)["Items"]
    assert [r["reason"]["S"] for r in rows if r["sk"]["S"] == f"address:{rcpt}"] == [
        "hard_bounce"]
    assert pumps.outcomes() == {"bounce/accepted/hard": 1}


def test_a_recipient_no_rule_covers_is_refused_and_nothing_is_stored(rig: Rig) -> None:
    before = len(rig.inbound.stored())
    host, port = rig.inbound.address
    with smtplib.SMTP(host, port, timeout=30) as smtp, \
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.sendmail("", ["someone@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    code, text = refused.value.recipients["someone@example.com"]
    assert f"{code} {text.decode()}" == NO_RULE_REPLY
    assert len(rig.inbound.stored()) == before


def test_a_store_that_fails_answers_451_and_the_sender_keeps_the_mail(rig: Rig) -> None:
    broken = InboundSmtp(rules=rig.inbound._handler.rules, s3=rig.client("s3"),
                         bucket="no-such-inbound-bucket")
    try:
        host, port = broken.address
        with smtplib.SMTP(host, port, timeout=30) as smtp, \
                pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail("", ["fbl@fbl.example.com"], b"Subject: r\r\n\r\nreport\r\n")
        assert failed.value.smtp_code == 451
        assert broken.stored() == []
    finally:
        broken.stop()
