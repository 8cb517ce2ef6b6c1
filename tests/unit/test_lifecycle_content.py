"""What the sender does with a message's content before delivery: the size limit (also for
a 300 MB body in S3, which is never read), RFC 5322 checks, long lines re-encoded before
signing or refused, 8-bit data declared or downgraded; each refusal a `rejected` event
per recipient with the original in the DLQ, never a retry."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dkim import Zone, wire
from test_lifecycle import POLICY, Rig

from quiver.dkim import DkimSigner, SignerSet, generate_private_key
from quiver.policy import parse_policy
from quiver.storage.aws import S3BodyStore

HEAD = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n"
LONG = HEAD + b"\r\nshort line\r\n" + b"a long line " * 150 + b"\r\nend\r\n"
EIGHT_BIT = (HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\n"
             b"Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e\r\n")


def policy(content: str):
    return parse_policy(POLICY_TEXT + "\n[content]\n" + content)


POLICY_TEXT = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[retry]
first = "5m"
max_age = "1h"
"""


def queued(raw: bytes, to: list[str], **extra: Any) -> str:
    return json.dumps({"v": 1, "id": "m-1", "from": "bounce@example.com", "to": to,
                       "raw": base64.b64encode(raw).decode(), **extra})


@pytest.fixture(scope="module")
def signing() -> tuple[SignerSet, Zone]:
    pem = generate_private_key("rsa-sha256")
    signer = DkimSigner.from_pem(domain="example.com", selector="s", algorithm="rsa-sha256",
                                 pem=pem)
    zone = Zone()
    zone.add(signer, pem)
    return SignerSet([signer]), zone


def assert_rejected(rig: Rig, original: str, recipients: list[str], reason: str) -> None:
    """One `rejected` event per recipient, the original in the DLQ, nothing sent or retried."""
    assert sorted(r["rcpt"] for r in rig.sink.records) == sorted(recipients)
    for record in rig.sink.records:
        assert record["event"] == "rejected", record
        assert record["reason"].startswith(reason), record["reason"]
    assert rig.dlq.bodies() == [original]
    assert len(rig.queue) == 0  # no retry
    assert rig.transport.calls == []


class _Body:
    def close(self) -> None:
        self.closed = True

    def read(self) -> bytes:
        raise AssertionError("a body over the limit must not be read")


class _S3:
    """An S3 client whose object claims 300 MB (nothing of it exists)."""

    def __init__(self) -> None:
        self.body = _Body()

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        return {"ContentLength": 300 * 1024 * 1024, "Body": self.body}


async def test_a_300_mb_body_in_s3_is_rejected_unread_not_retried() -> None:
    rig = Rig()
    s3 = _S3()
    rig.handler._bodies = S3BodyStore(s3, "spill")
    original = json.dumps({"v": 1, "id": "huge", "from": "b@example.com",
                           "to": ["ok@a.example", "ok2@b.example"],
                           "raw_s3": "s3://spill/spill/huge.eml"})
    assert await rig.run_one(original)
    assert_rejected(rig, original, ["ok@a.example", "ok2@b.example"],
                    "raw_s3: s3://spill/spill/huge.eml: message is 314,572,800 bytes, over the "
                    "limit of 41,943,040 (max_message_size)")
    assert s3.body.closed


async def test_the_policy_limit_applies_to_inline_and_s3_bodies() -> None:
    rig = Rig()
    rig.handler.apply_policy(policy('max_message_size = "1KiB"'))
    uri = await rig.bodies.put("k/big.eml", LONG + b"x" * 1024)
    original = json.dumps({"v": 1, "id": "s3", "from": "b@example.com", "to": ["ok@a.example"],
                           "raw_s3": uri})
    await rig.run_one(original)
    assert_rejected(rig, original, ["ok@a.example"],
                    "raw_s3: s3://spill/k/big.eml: message is 2,908 bytes")

    rig = Rig()
    rig.handler.apply_policy(policy('max_message_size = "1KiB"'))
    inline = queued(LONG, ["ok@a.example"])
    await rig.run_one(inline)
    assert_rejected(rig, inline, ["ok@a.example"],
                    f"raw: message is {len(LONG):,} bytes, over the limit of 1,024")


BAD_MESSAGES = st.one_of(
    st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" in b or b":" not in b),
    st.builds(lambda h, b: h + b"\r\n\r\n" + b, st.sampled_from(
        [b"Subject: x", b"To: a@b.example\r\nSubject: x", b"Bad Name: x\r\nFrom: a@b.example",
         b"From: a@b.example\r\nFrom: c@d.example", b"From: a@b.example\r\nX\x01: y",
         b" continued: x\r\nFrom: a@b.example", b"From: caf\xc3\xa9@b.example"]),
        st.binary(max_size=50)),
    st.builds(lambda b: HEAD + b"\r\n" + b + b"\0", st.binary(max_size=50)),
)


@given(raw=BAD_MESSAGES, recipients=st.integers(1, 3))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bad_content_is_rejected_per_recipient_and_kept_in_the_dlq(raw: bytes,
                                                                    recipients: int) -> None:
    to = [f"ok{n}@a.example" for n in range(recipients)]
    original = queued(raw, to)
    rig = Rig()
    assert asyncio.run(rig.run_one(original))
    assert_rejected(rig, original, to, "raw: ")
    reason = rig.sink.records[0]["reason"]
    assert any(word in reason for word in ("line ", "From header", "NUL", "empty")), reason


async def test_a_long_line_is_reencoded_before_signing(signing) -> None:
    signers, zone = signing
    rig = Rig(signers)
    await rig.run_one(queued(LONG, ["ok@a.example"]))
    ((_, _, sent),) = rig.transport.calls
    assert max(map(len, sent.split(b"\r\n"))) <= 998
    assert b"Content-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n" in sent
    assert zone.verifies(wire(sent))
    assert rig.sink.records[0]["event"] == "delivered"
    assert rig.transport.seven_bit == [None]


async def test_a_retry_starts_from_the_body_as_it_came(signing) -> None:
    signers, _ = signing
    rig = Rig(signers)
    await rig.run_one(queued(LONG, ["temp@a.example"]))
    (retry,) = rig.queue.bodies()
    assert base64.b64decode(json.loads(retry)["raw"]) == LONG


async def test_long_lines_refused_by_policy_name_the_line() -> None:
    rig = Rig()
    rig.handler.apply_policy(policy('long_lines = "refuse"'))
    original = queued(LONG, ["ok@a.example", "ok@b.example"])
    await rig.run_one(original)
    assert_rejected(rig, original, ["ok@a.example", "ok@b.example"],
                    "raw: line 6: 1800 octets long; lines may be at most 998")


async def test_eight_bit_is_signed_as_it_is_with_a_seven_bit_form_on_demand(signing) -> None:
    signers, zone = signing
    rig = Rig(signers)
    await rig.run_one(queued(EIGHT_BIT, ["ok@a.example", "ok@b.example"]))
    assert len(rig.transport.calls) == 2  # two domains, one conversion between them
    sent = rig.transport.calls[0][2]
    assert sent.endswith(EIGHT_BIT) and zone.verifies(wire(sent))
    convert = rig.transport.seven_bit[0]
    assert convert is not None and rig.transport.seven_bit[1] is convert
    first, second = await asyncio.gather(convert(), convert())
    assert first is second  # converted and signed once
    assert first.isascii() and zone.verifies(wire(first))
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 cr=C3=A8me" in first
    assert await convert() is first


async def test_eight_bit_downgraded_by_policy_is_signed_in_seven_bits(signing) -> None:
    signers, zone = signing
    rig = Rig(signers)
    rig.handler.apply_policy(policy('eight_bit = "downgrade"'))
    await rig.run_one(queued(EIGHT_BIT, ["ok@a.example"]))
    ((_, _, sent),) = rig.transport.calls
    assert sent.isascii() and zone.verifies(wire(sent))
    assert rig.transport.seven_bit == [None]


async def test_a_non_ascii_address_is_refused_as_smtputf8() -> None:
    rig = Rig()
    original = queued(HEAD + b"\r\nbody\r\n", ["jos\u00e9@a.example"])
    await rig.run_one(original)
    (record,) = rig.sink.records
    assert record["event"] == "rejected"
    assert record["reason"] == "to[0]: invalid address: non-ASCII local part (SMTPUTF8) is " \
        "not supported"


def test_the_default_policy_content_rules() -> None:
    assert (POLICY.content.max_message_size, POLICY.content.long_lines,
            POLICY.content.eight_bit) == (40 * 1024 * 1024, "reencode", "declare")
