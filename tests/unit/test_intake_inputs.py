"""What the intakes read before any report: the S3 notifications on their queues, the
envelope SES recorded, the deterministic batch ids, the FBL addresses in policy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from inbound_mail import T0, Clock, ring

from quiver.devstack.export_pump import Tally
from quiver.events import pack_batches, unpack_batch
from quiver.intake.build import verifier_from_policy
from quiver.intake.mail import InboundMail
from quiver.intake.s3_event import InboundEventError, ObjectRef, object_refs
from quiver.policy import PolicyError, parse_policy
from quiver.returnpath import KeyRingError, Refusal
from quiver.returnpath.refresh import CachedRing
from quiver.storage.memory import MemoryReturnPaths


def notification(*records: dict[str, object]) -> str:
    return json.dumps({"Records": list(records)})


def s3_record(bucket: str = "inbound", key: str = "bounce/abc",
              name: str = "ObjectCreated:Put") -> dict[str, object]:
    return {"eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}}}


def test_a_notification_names_its_objects_with_keys_decoded() -> None:
    body = notification(s3_record(key="bounce/a+b%2Bc%40d"), s3_record(key="fbl/x"))
    assert object_refs(body) == [ObjectRef("inbound", "bounce/a b+c@d"),
                                 ObjectRef("inbound", "fbl/x")]


def test_the_test_event_s3_sends_names_nothing() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                       "Bucket": "inbound", "RequestId": "r", "HostId": "h"})
    assert object_refs(body) == []


@pytest.mark.parametrize(("body", "says"), [
    ("not json", "not JSON"),
    ("[]", "notification object"),
    ("{}", "Records"),
    (notification(), "Records"),
    (notification({"eventSource": "aws:sqs"}), "not an aws:s3"),
    (notification(s3_record(name="ObjectRemoved:Delete")), "ObjectCreated"),
    (notification({"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}),
     "missing"),
])
def test_anything_else_is_refused_saying_what_is_wrong(body: str, says: str) -> None:
    with pytest.raises(InboundEventError, match=says):
        object_refs(body)


@given(st.text(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["Records", "eventSource", "eventName", "s3", "bucket", "object",
                         "name", "key", "Event"]), inner, max_size=4),
    max_leaves=20).map(json.dumps))
def test_hostile_queue_bodies_give_objects_or_the_one_error(body: str) -> None:
    try:
        refs = object_refs(body)
    except InboundEventError:
        return
    assert all(isinstance(r, ObjectRef) and r.bucket and r.key for r in refs)


def mail(raw: bytes) -> InboundMail:
    return InboundMail(bucket="inbound", key="bounce/1", raw=raw, stored_at=0.0)


def test_the_envelope_is_read_from_ses_s_own_fields_on_top() -> None:
    raw = (b"Return-Path: <MAILER-DAEMON@mx.example.org>\r\n"
           b"Received: from mx.example.org by inbound-smtp.us-east-1.amazonaws.com\r\n"
           b" with SMTP id x for b-abc@bounces.example.com;\r\n Fri, 04 Dec 2026\r\n"
           b"Received: from attacker for <victim@bounces.example.com>; now\r\n\r\nbody")
    assert mail(raw).envelope() == ("b-abc@bounces.example.com", "MAILER-DAEMON@mx.example.org")
    assert mail(b"Return-Path: <>\r\n\r\n").envelope() == (None, None)
    assert mail(b"").envelope() == (None, None)


@given(st.binary(max_size=3000))
def test_the_envelope_of_any_bytes_is_read_without_raising(raw: bytes) -> None:
    recipient, sender = mail(raw).envelope()
    assert recipient is None or "@" in recipient
    assert sender is None or isinstance(sender, str)


def test_an_object_s_identity_is_its_bucket_key_and_bytes() -> None:
    one = InboundMail(bucket="b", key="k", raw=b"x", stored_at=1.0)
    assert one.identity == InboundMail(bucket="b", key="k", raw=b"x", stored_at=2.0).identity
    assert one.identity.isalnum() and len(one.identity) == 32
    others = {InboundMail(bucket=b, key=k, raw=r, stored_at=1.0).identity
              for b, k, r in (("c", "k", b"x"), ("b", "j", b"x"), ("b", "k", b"y"))}
    assert one.identity not in others and len(others) == 3


def record(i: int) -> dict[str, object]:
    return {"v": 1, "event": "async_bounce", "at": "2026-12-04T10:00:00.000Z", "id": f"m-{i}",
            "rcpt": "a@example.org", "from": None, "tenant": None, "campaign": None,
            "pool": None, "meta": {"pad": "x" * 2000 + str(i)}, "attempt": 0}


def test_a_chosen_batch_id_packs_the_same_records_to_the_same_batches() -> None:
    records = [record(i) for i in range(400)]  # several batches
    first = list(pack_batches(records, batch_id="abc123"))  # type: ignore[arg-type]
    again = list(pack_batches(records, batch_id="abc123"))  # type: ignore[arg-type]
    assert len(first) > 1
    assert [i for i, _ in first] == [i for i, _ in again]
    assert len({i for i, _ in first}) == len(first)
    assert [r for _, body in first for r in unpack_batch(body)[1]] == records
    other = list(pack_batches(records, batch_id="abc124"))  # type: ignore[arg-type]
    assert not {i for i, _ in first} & {i for i, _ in other}
    with pytest.raises(ValueError, match="letters and digits"):
        list(pack_batches(records, batch_id="a/b"))  # type: ignore[arg-type]


MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def test_policy_names_the_fbl_addresses() -> None:
    policy = parse_policy(MINIMAL + '[feedback]\naddresses = ["FBL@Fbl.Example.com."]\n')
    assert policy.feedback.addresses == ("fbl@fbl.example.com",)
    assert parse_policy(MINIMAL).feedback.addresses == ()


@pytest.mark.parametrize("value", ['"fbl@x.com"', '["nobody"]', '["a@b"]', '["a b@x.com"]',
                                   '["fbl@x.com", "FBL@x.com"]'])
def test_bad_fbl_addresses_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(MINIMAL + f"[feedback]\naddresses = {value}\n")
    assert any("feedback.addresses" in p for p in caught.value.problems)


def test_the_key_ring_is_read_again_after_its_ttl_and_a_failed_read_keeps_it() -> None:
    clock = Clock(0.0)
    first, second = ring(), ring(retired=T0)
    reads: list[object] = [first, second, KeyRingError("secret unreadable")]

    def load() -> object:
        got = reads.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    cached = CachedRing(load, interval=300.0, clock=clock)  # type: ignore[arg-type]
    assert cached() is first
    clock.now = 299.0
    assert cached() is first
    clock.now = 300.0
    assert cached() is second  # a rotation reaches a warm Lambda within the ttl
    clock.now = 600.0
    assert cached() is second  # the unreadable secret leaves the ring in hand
    assert reads == []


def test_the_local_tally_counts_post_delivery_events_apart_from_first_attempts() -> None:
    tally = Tally()
    tally.add([dict(record(1), event="delivered", attempt=1),  # type: ignore[list-item]
               *(dict(record(i), event=e) for i, e in enumerate(  # type: ignore[misc]
                   ("async_bounce", "complaint", "unsubscribed")))])
    assert (tally.records, tally.finals, tally.first_attempts) == (4, 1, 1)


def test_without_bounce_domains_every_address_is_refused_before_any_key_is_read() -> None:
    def no_secret(name: str) -> bytes:
        raise AssertionError(f"read {name}")

    verifier = verifier_from_policy(parse_policy(MINIMAL), store=MemoryReturnPaths(),
                                    read_secret=no_secret)
    refusal = verifier.verify("b-" + "a" * 40 + "@bounces.example.com")
    assert isinstance(refusal, Refusal) and refusal.reason == "wrong_domain"
