"""The header fields the sender adds, the check for a message's own, and the ring a
function re-reads (CachedRing)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.policy.unsubscribe import UnsubscribeRule
from quiver.returnpath import KeyRingError, rotated
from quiver.returnpath.keys import KeyRing
from quiver.returnpath.refresh import CachedRing
from quiver.unsubscribe import Subject, TokenError, UnsubscribeVerifier, Verified
from quiver.unsubscribe.headers import MAX_LINE, UnsubscribeHeaders, has_unsubscribe

T0 = 1_790_000_000.0
RING = rotated(None, now=T0 - 60)
RULE = UnsubscribeRule(from_domain="example.com", url="https://u.example.com/u/",
                       mailto="unsubscribe@bounces.example.com")


@given(st.builds(Subject, tenant=st.none() | st.text(max_size=128),
                 campaign=st.none() | st.text(max_size=128),
                 message_id=st.text(min_size=1, max_size=128),
                 recipient=st.emails()))
def test_fields_are_two_well_formed_header_fields_whose_tokens_verify(subject: Subject) -> None:
    try:
        fields = UnsubscribeHeaders(RING, clock=lambda: T0).fields(RULE, subject)
    except TokenError:  # too long for a header line: the sender sends without them
        assert len(subject.recipient.encode()) + len((subject.tenant or "").encode()) + len(
            (subject.campaign or "").encode()) + len(subject.message_id.encode()) > 400
        return
    assert fields.isascii() and fields.endswith(b"\r\n")
    lines = fields[:-2].split(b"\r\n")
    assert all(len(line) <= MAX_LINE for line in lines)
    assert lines[0].startswith(b"List-Unsubscribe: <https://u.example.com/u/")
    assert lines[1].startswith(b" <mailto:unsubscribe@bounces.example.com?subject=unsubscribe-")
    assert lines[2] == b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    url_token = lines[0].split(b"/u/")[1].rstrip(b">,").decode()
    mail_token = lines[1].split(b"unsubscribe-")[1].rstrip(b">").decode()
    assert url_token == mail_token
    assert UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(url_token) == Verified(
        subject=subject, key_id=1)


def test_without_mailto_one_uri() -> None:
    rule = UnsubscribeRule(from_domain="example.com", url="https://u.example.com/u/")
    fields = UnsubscribeHeaders(RING, clock=lambda: T0).fields(
        rule, Subject(tenant=None, campaign=None, message_id="m", recipient="a@b.example"))
    assert fields.count(b"\r\n") == 2 and b"mailto" not in fields


@pytest.mark.parametrize(("message", "present"), [
    (b"From: a@example.com\r\nList-Unsubscribe: <mailto:x@y>\r\n\r\nbody", True),
    (b"From: a@example.com\nLIST-UNSUBSCRIBE-POST: List-Unsubscribe=One-Click\n\nbody", True),
    (b"From: a@example.com\r\nX-List-Unsubscribe: no\r\n\r\nbody", False),
    (b"From: a@example.com\r\nSubject: about\r\n List-Unsubscribe: folded\r\n\r\nbody", False),
    (b"From: a@example.com\r\n\r\nList-Unsubscribe: in the body\r\n", False),
])
def test_a_message_s_own_header_is_found_in_its_header_section_only(
        message: bytes, present: bool) -> None:
    assert has_unsubscribe(message) is present


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cached_ring_rereads_after_the_interval_and_keeps_the_ring_on_failure() -> None:
    clock, rings = Clock(), [RING, rotated(RING, now=T0)]
    reads: list[int] = []

    def load() -> KeyRing:
        reads.append(len(reads))
        if len(reads) == 3:
            raise KeyRingError("secret unreadable")
        return rings[min(len(reads) - 1, 1)]

    cached = CachedRing(load, interval=300, clock=clock)
    assert cached() is RING and cached() is RING and len(reads) == 1
    clock.now = 300
    assert cached() is rings[1] and len(reads) == 2
    clock.now = 600
    assert cached() is rings[1] and len(reads) == 3  # the failed read kept the ring
    clock.now = 700
    assert cached() is rings[1] and len(reads) == 3


def test_cached_ring_first_read_failure_raises() -> None:
    def load() -> KeyRing:
        raise KeyRingError("no secret")

    with pytest.raises(KeyRingError):
        CachedRing(load)()
