"""The intake Lambdas on moto's server over HTTP, as in AWS: raw DSNs, ARF reports and
mailed unsubscribe requests put into the inbound bucket, S3's notifications on the
intake queues, the handlers run on the SQS event shape; events read back from the
events queue (and through the export), suppression rows from DynamoDB, drop reasons
from the EMF counts."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from arf_signing import new_key
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from inbound_mail import FBL_ADDRESS, MAILTO, arf, dsn, forged, ses_stored, unsubscribe_request

from functions.bounce_intake import handler as bounce_handler
from functions.fbl_intake import handler as fbl_handler
from quiver.devstack.moto_server import (
    MAX_RECEIVE_COUNT,
    MotoServer,
    aws_env,
    client,
    create_resources,
    session,
    start_moto,
)
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.events import Record, unpack_batch
from quiver.export import Exporter, read_object
from quiver.intake.build import InboundProcessor
from quiver.names import resource_names
from quiver.returnpath import KeyRing, ReturnPathKey, ReturnPaths
from quiver.settings import Deployment, deployment_env
from quiver.storage.dynamo import DynamoReturnPaths
from quiver.unsubscribe import Subject
from quiver.unsubscribe.headers import UnsubscribeHeaders

pytestmark = pytest.mark.integration

DAY = 86400.0
SECRET_ID = "quiver/return-path/keys"
LIVE, OLD = b"L" * 32, b"O" * 32
YAHOO = new_key("yahoo.com")
POLICY = f"""
default_pool = "p"
[sources.s1]
ip = "198.51.100.11"  # the Source-IP of the reports in tests/inbound_mail.py
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]

[return_path]
key_secret = "{SECRET_ID}"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"
[[return_path.domains]]
from = "example.org"
bounce = "bounces.example.org"
tenant = "acme"

[providers]
yahoo = ["*.yahoodns.test"]

[feedback]
addresses = ["{FBL_ADDRESS}"]
own_domains = ["example.com"]
trusted_reporters = [{{ domain = "yahoo.com" }}]

[[unsubscribe.domains]]
from = "example.com"
url = "https://unsubscribe.example.com/u/"
mailto = "{MAILTO}"
"""


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Aws:
    moto: MotoServer
    deployment: Deployment
    dns: DnsServer
    names: Any

    def client(self, service: str) -> Any:
        return client(self.moto.endpoint, service)


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aws]:
    moto = start_moto(log_dir=tmp_path_factory.mktemp("inbound"))
    zone = Zone()
    zone.add_txt(YAHOO.record_name, YAHOO.txt)
    # The recipients' domain, hosted by a provider of the policy.
    zone.add_mx("example.org", "mta5.am0.yahoodns.test")
    zone.add_a("mta5.am0.yahoodns.test", "198.51.100.77")
    dns = start_dns(zone, prefer="builtin")
    try:
        deployment = create_resources(moto.endpoint)
        now = time.time()
        ring = {"keys": [
            {"id": 1, "secret": base64.b64encode(OLD).decode(), "created": stamp(now - 400 * DAY),
             "retired": stamp(now - 40 * DAY)},
            {"id": 2, "secret": base64.b64encode(LIVE).decode(), "created": stamp(now - 40 * DAY)},
        ]}
        client(moto.endpoint, "secretsmanager").create_secret(
            Name=SECRET_ID, SecretString=json.dumps(ring))
        client(moto.endpoint, "ssm").put_parameter(
            Name=deployment.policy_parameter, Value=POLICY, Type="String")
        yield Aws(moto, deployment, dns,
                  resource_names(account=deployment.outbound_queue_url.split("/")[-2],
                                 region=deployment.region))
    finally:
        dns.stop()
        moto.stop()


@pytest.fixture
def lambda_env(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {**aws_env(aws.moto.endpoint), **deployment_env(aws.deployment)}.items():
        monkeypatch.setenv(name, value)
    bounce_handler.intake.cache_clear()
    fbl_handler.intake.cache_clear()
    yield
    bounce_handler.intake.cache_clear()
    fbl_handler.intake.cache_clear()


def return_path(aws: Aws, *, message_id: str, recipient: str, tenant: str | None = "acme",
                domain: str = "bounces.example.com", key: tuple[int, bytes] = (2, LIVE)) -> str:
    """Sign a return path as a sender does, storing its reference in DynamoDB."""
    key_id, secret = key
    paths = ReturnPaths(KeyRing([ReturnPathKey(id=key_id, secret=secret, created=0.0)]))
    address, record = paths.address(bounce_domain=domain, message_id=message_id,
                                    recipient=recipient, tenant=tenant, campaign="december")
    asyncio.run(DynamoReturnPaths(aws.client("dynamodb"), aws.deployment.finals_table)
                .put([record]))
    return address


def put_inbound(aws: Aws, key: str, raw: bytes) -> None:
    aws.client("s3").put_object(Bucket=aws.deployment.inbound_bucket, Key=key, Body=raw)


def receive_all(aws: Aws, queue: str) -> list[dict[str, Any]]:
    """Every message on the queue, in the shape an SQS-triggered Lambda gets, deleted
    from the queue as the Lambda service does once the batch is handled."""
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    records: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                  VisibilityTimeout=300).get("Messages", [])
        if not got:
            return records
        for m in got:
            records.append({
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"], "attributes": {}, "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
                "awsRegion": "us-east-1"})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


@dataclass
class Context:
    function_name: str = "quiver-bounce-intake"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:bounce"
    aws_request_id: str = "req-1"


def events(aws: Aws) -> tuple[list[Record], list[dict[str, Any]]]:
    """The records on the events queue, and its messages (for the export)."""
    messages = receive_all(aws, aws.names.events_queue)
    return [r for m in messages for r in unpack_batch(m["body"])[1]], messages


def suppressed(aws: Aws, address: str) -> list[dict[str, Any]]:
    items = aws.client("dynamodb").scan(TableName=aws.deployment.suppression_table)["Items"]
    return [i for i in items if i["sk"]["S"] == f"address:{address.lower()}"]


def emf_counts(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in text.splitlines():
        if '"CloudWatchMetrics"' not in line:
            continue
        doc = json.loads(line)
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            name = metric["Name"]
            if name.startswith("inbound_"):
                out[(name, doc["kind"], doc["reason"])] = float(doc[name])
    return out


def fbl_processor(aws: Aws) -> InboundProcessor:
    """The FBL Lambda's processor, its DKIM keys from the local DNS server."""
    return InboundProcessor.from_deployment(
        "complaint", aws.deployment, session=session(aws.moto.endpoint),
        nameservers=[aws.dns.address])


def run_fbl(processor: InboundProcessor, records: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(process_partial_response(
        event={"Records": records}, record_handler=processor.handle,
        processor=BatchProcessor(event_type=EventType.SQS)))


def test_a_hard_bounce_and_a_complaint_become_events_and_suppression(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    events(aws)  # start from an empty events queue
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}@example.org", f"bob-{uuid.uuid4().hex[:6]}@example.org"
    bounce_to = return_path(aws, message_id="m-hard", recipient=ann)
    put_inbound(aws, f"bounce/{uuid.uuid4().hex}", dsn(return_path=bounce_to, recipient=ann))
    complaint_from = return_path(aws, message_id="m-complained", recipient=bob)
    report = YAHOO.sign(arf(return_path=complaint_from, recipient=bob))
    put_inbound(aws, f"fbl/{uuid.uuid4().hex}",
                ses_stored(report, recipient=FBL_ADDRESS, sender="fbl@yahoo.com"))

    bounce_batch = receive_all(aws, aws.names.bounce_queue)
    assert bounce_handler.handler({"Records": bounce_batch}, Context()) == {
        "batchItemFailures": []}
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.moto.endpoint)
    fbl = fbl_processor(aws)
    assert run_fbl(fbl, receive_all(aws, aws.names.fbl_queue)) == {
        "batchItemFailures": []}
    metrics = io.StringIO()
    fbl.counts.flush(metrics)
    # The complaint rate's numerator, its provider resolved from example.org's MX.
    docs = [json.loads(line) for line in metrics.getvalue().splitlines()
            if '"complaints"' in line]
    (complaints,) = [d for d in docs if "tenant" in d]
    assert (complaints["tenant"], complaints["campaign"], complaints["provider"],
            complaints["complaints"]) == ("acme", "december", "yahoo", 1)
    # And per egress source, by the report's Source-IP.
    (per_source,) = [d for d in docs if "source" in d]
    assert (per_source["source"], per_source["provider"], per_source["complaints"]) == (
        "s1", "yahoo", 1)

    records, _ = events(aws)
    by_event = {r["event"]: r for r in records}
    assert set(by_event) == {"async_bounce", "complaint"}
    bounce = by_event["async_bounce"]
    assert (bounce["id"], bounce["rcpt"], bounce["tenant"], bounce["campaign"]) == (
        "m-hard", ann, "acme", "december")
    assert bounce["bounce"]["kind"] == "hard" and bounce["dsn"]["status"] == "5.1.1"
    assert bounce["inbound_object"].startswith(f"s3://{aws.deployment.inbound_bucket}/bounce/")
    complaint = by_event["complaint"]
    assert (complaint["id"], complaint["rcpt"], complaint["feedback_type"],
            complaint["reporter"]) == ("m-complained", bob, "abuse", "yahoo.com")
    assert [(i["pk"]["S"], i["reason"]["S"]) for i in suppressed(aws, ann)] == [
        ("tenant:acme", "hard_bounce")]
    assert [(i["pk"]["S"], i["reason"]["S"]) for i in suppressed(aws, bob)] == [
        ("tenant:acme", "complaint")]
    counts = emf_counts(capsys.readouterr().out)
    assert counts[("inbound_accepted", "bounce", "hard")] == 1


def test_forged_expired_and_other_tenant_bounces_are_dropped_with_counted_reasons(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    events(aws)
    victims = [f"v{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(3)]
    forged_to = forged(return_path(aws, message_id="m-forged", recipient=victims[0]))
    expired_to = return_path(aws, message_id="m-expired", recipient=victims[1], key=(1, OLD))
    # Signed by our key, but for a tenant that may not use bounces.example.org.
    other_to = return_path(aws, message_id="m-other", recipient=victims[2], tenant="globex",
                           domain="bounces.example.org")
    for to, victim in zip((forged_to, expired_to, other_to), victims, strict=True):
        put_inbound(aws, f"bounce/{uuid.uuid4().hex}", dsn(return_path=to, recipient=victim))
    capsys.readouterr()
    batch = receive_all(aws, aws.names.bounce_queue)
    assert bounce_handler.handler({"Records": batch}, Context()) == {"batchItemFailures": []}

    counts = emf_counts(capsys.readouterr().out)
    assert {k: v for k, v in counts.items() if k[0] == "inbound_refused"} == {
        ("inbound_refused", "bounce", "bad_hmac"): 1,
        ("inbound_refused", "bounce", "expired_key"): 1,
        ("inbound_refused", "bounce", "other_tenant"): 1,
    }
    assert events(aws)[0] == []
    assert all(suppressed(aws, v) == [] for v in victims)


def test_the_same_object_twice_gives_one_set_of_events(
        aws: Aws, lambda_env: None, tmp_path: Any) -> None:
    events(aws)
    cara = f"cara-{uuid.uuid4().hex[:6]}@example.org"
    to = return_path(aws, message_id="m-twice", recipient=cara)
    put_inbound(aws, f"bounce/{uuid.uuid4().hex}", dsn(return_path=to, recipient=cara))
    batch = receive_all(aws, aws.names.bounce_queue)
    assert [r for r in batch if "Records" in r["body"]]
    # S3 may notify twice and SQS may deliver twice: the handler sees the object again.
    for _ in range(2):
        assert bounce_handler.handler({"Records": batch}, Context()) == {
            "batchItemFailures": []}
    records, messages = events(aws)
    assert len(records) == 2 and records[0] == records[1]
    assert len({unpack_batch(m["body"])[0] for m in messages}) == 1
    # Through the export, as in AWS: one object, one record.
    s3 = aws.client("s3")
    exporter = Exporter(s3=s3, bucket=aws.deployment.events_bucket, finals=None)
    keys = {k for m in messages for k in exporter.export_record(_Body(m["body"]))}
    assert len(keys) == 1
    (key,) = keys
    exported = read_object(s3.get_object(Bucket=aws.deployment.events_bucket, Key=key)[
        "Body"].read())
    assert [(r["event"], r["id"], r["rcpt"]) for r in exported] == [
        ("async_bounce", "m-twice", cara)]
    assert len(suppressed(aws, cara)) == 1


@dataclass
class _Body:
    body: str


def test_a_bad_record_fails_alone_and_an_oversized_object_is_counted_unread(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    events(aws)
    dana = f"dana-{uuid.uuid4().hex[:6]}@example.org"
    to = return_path(aws, message_id="m-good", recipient=dana)
    put_inbound(aws, f"bounce/{uuid.uuid4().hex}", dsn(return_path=to, recipient=dana))
    huge = dsn(return_path=to, recipient=dana) + b"x" * (bounce_handler.intake().intake
                                                        .max_bytes)
    put_inbound(aws, f"bounce/{uuid.uuid4().hex}", huge)
    batch = receive_all(aws, aws.names.bounce_queue)
    foreign = dict(batch[0], messageId="foreign", body=json.dumps({"Records": [{
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "someone-elses"}, "object": {"key": "bounce/x"}}}]}))
    capsys.readouterr()
    assert bounce_handler.handler({"Records": [*batch, foreign]}, Context()) == {
        "batchItemFailures": [{"itemIdentifier": "foreign"}]}
    counts = emf_counts(capsys.readouterr().out)
    assert counts[("inbound_ignored", "bounce", "too_large")] == 1
    assert counts[("inbound_accepted", "bounce", "hard")] == 1
    records, _ = events(aws)
    assert [(r["id"], r["rcpt"]) for r in records] == [("m-good", dana)]


def test_the_fbl_handler_counts_an_unsigned_report_untrusted_and_acts_on_nothing(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """An unsigned report needs no DNS: the FBL Lambda as deployed, with the policy's
    yahoo.com entry requiring DKIM."""
    events(aws)
    erin = f"erin-{uuid.uuid4().hex[:6]}@example.org"
    to = return_path(aws, message_id="m-unsigned", recipient=erin)
    put_inbound(aws, f"fbl/{uuid.uuid4().hex}",
                ses_stored(arf(return_path=to, recipient=erin), recipient=FBL_ADDRESS,
                           sender="fbl@yahoo.com"))
    capsys.readouterr()
    batch = receive_all(aws, aws.names.fbl_queue)
    assert fbl_handler.handler({"Records": batch}, Context(function_name="fbl")) == {
        "batchItemFailures": []}
    counts = emf_counts(capsys.readouterr().out)
    assert counts == {("inbound_untrusted", "complaint", "unsigned"): 1}
    assert events(aws)[0] == []
    assert suppressed(aws, erin) == []


def test_a_message_that_keeps_failing_ends_in_the_intake_dlq(
        aws: Aws, lambda_env: None) -> None:
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=aws.names.bounce_queue)["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=aws.names.bounce_dlq)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody='{"Records": "not a list"}')
    outcomes = []
    # What the Lambda service does: receive, invoke, delete what did not fail; a
    # failed message comes back (at once here: no visibility) until SQS moves it.
    for _ in range(20):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                  WaitTimeSeconds=1).get("Messages", [])
        if not got:
            break
        records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"], "attributes": {}, "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bounce",
                    "awsRegion": "us-east-1"} for m in got]
        try:
            outcome = bounce_handler.handler({"Records": records}, Context())
            failed = {f["itemIdentifier"] for f in outcome["batchItemFailures"]}
        except BatchProcessingError:
            # Every record failed: the invocation fails, and Lambda retries them all.
            failed = {m["MessageId"] for m in got}
        for m in got:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        outcomes.append(failed)
    assert len(outcomes) == MAX_RECEIVE_COUNT and all(len(f) == 1 for f in outcomes)
    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10,
                               WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in dead] == ['{"Records": "not a list"}']


def unsubscribe_token(*, message_id: str, recipient: str,
                      key: tuple[int, bytes] = (2, LIVE)) -> str:
    """The token a sender puts in List-Unsubscribe, signed with a key of the ring."""
    key_id, secret = key
    signer = UnsubscribeHeaders(KeyRing([ReturnPathKey(id=key_id, secret=secret, created=0.0)]))
    return signer.token(Subject(tenant="acme", campaign="december", message_id=message_id,
                                recipient=recipient))


def run_bounce(aws: Aws) -> None:
    """The bounce Lambda on what the bounce intake queue holds."""
    batch = receive_all(aws, aws.names.bounce_queue)
    assert batch
    assert bounce_handler.handler({"Records": batch}, Context()) == {"batchItemFailures": []}


def test_a_mailed_unsubscribe_request_suppresses_and_records_an_event(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    events(aws)
    fay = f"Fay-{uuid.uuid4().hex[:6]}@example.org"
    token = unsubscribe_token(message_id="m-mailto", recipient=fay)
    key = f"bounce/{uuid.uuid4().hex}"
    put_inbound(aws, key, unsubscribe_request(subject=f"Re: unsubscribe-{token}",
                                              sender=fay.lower()))
    capsys.readouterr()
    run_bounce(aws)

    (row,) = suppressed(aws, fay)
    assert (row["pk"]["S"], row["reason"]["S"]) == ("tenant:acme", "unsubscribe")
    uri = f"s3://{aws.deployment.inbound_bucket}/{key}"
    assert row["source"]["S"] == f"mailto (RFC 2369), message m-mailto, {uri}"
    records, _ = events(aws)
    (event,) = records
    assert (event["event"], event["id"], event["rcpt"], event["tenant"], event["campaign"],
            event["reason"], event["inbound_object"]) == (
        "unsubscribed", "m-mailto", fay, "acme", "december", "mailto (RFC 2369)", uri)
    assert emf_counts(capsys.readouterr().out) == {
        ("inbound_accepted", "unsubscribe", "unsubscribed"): 1}


def test_the_same_request_object_twice_unsubscribes_once(aws: Aws, lambda_env: None) -> None:
    events(aws)
    gus = f"gus-{uuid.uuid4().hex[:6]}@example.org"
    token = unsubscribe_token(message_id="m-mailto-twice", recipient=gus)
    put_inbound(aws, f"bounce/{uuid.uuid4().hex}",
                unsubscribe_request(subject=f"unsubscribe-{token}", sender=gus))
    batch = receive_all(aws, aws.names.bounce_queue)
    # S3 may notify twice and SQS may deliver twice: the handler sees the object again.
    for _ in range(2):
        assert bounce_handler.handler({"Records": batch}, Context()) == {
            "batchItemFailures": []}
    assert len(suppressed(aws, gus)) == 1
    records, messages = events(aws)
    assert len(records) == 2 and records[0] == records[1]
    assert len({unpack_batch(m["body"])[0] for m in messages}) == 1
    # Through the export, as in AWS: one object, one record.
    s3 = aws.client("s3")
    exporter = Exporter(s3=s3, bucket=aws.deployment.events_bucket, finals=None)
    (key,) = {k for m in messages for k in exporter.export_record(_Body(m["body"]))}
    exported = read_object(s3.get_object(Bucket=aws.deployment.events_bucket, Key=key)[
        "Body"].read())
    assert [(r["event"], r["id"], r["rcpt"]) for r in exported] == [
        ("unsubscribed", "m-mailto-twice", gus)]


def test_forged_expired_and_auto_reply_requests_are_counted_and_change_nothing(
        aws: Aws, lambda_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    events(aws)
    victims = [f"w{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(3)]
    good = unsubscribe_token(message_id="m-forged", recipient=victims[0])
    forged_token = good[:-2] + ("AA" if good[-2:] != "AA" else "BA")
    expired = unsubscribe_token(message_id="m-expired", recipient=victims[1], key=(1, OLD))
    auto = unsubscribe_token(message_id="m-auto", recipient=victims[2])
    for raw in (unsubscribe_request(subject=f"unsubscribe-{forged_token}"),
                unsubscribe_request(subject=f"unsubscribe-{expired}"),
                unsubscribe_request(subject=f"Re: unsubscribe-{auto}",
                                    extra="Auto-Submitted: auto-replied\n")):
        put_inbound(aws, f"bounce/{uuid.uuid4().hex}", raw)
    capsys.readouterr()
    run_bounce(aws)
    assert emf_counts(capsys.readouterr().out) == {
        ("inbound_refused", "unsubscribe", "bad_hmac"): 1,
        ("inbound_refused", "unsubscribe", "expired_key"): 1,
        ("inbound_ignored", "unsubscribe", "auto_reply"): 1,
    }
    assert events(aws)[0] == []
    assert all(suppressed(aws, v) == [] for v in victims)
