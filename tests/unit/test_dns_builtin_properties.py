"""The builtin DNS responder's decoder on any bytes: it answers or drops, never crashes."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.servers.dns_builtin import (
    CLASSIC_UDP_SIZE,
    MAX_TCP_SIZE,
    MAX_UDP_SIZE,
    Answers,
    respond,
)
from quiver.devstack.servers.dns_zone import Zone


def zone() -> Zone:
    z = Zone()
    z.add_mx("alpha.test", "mx1.quiver.local.test", 10)
    z.add_null_mx("nullmx.test")
    z.add_a("mx1.quiver.local.test", "127.0.0.1")
    z.add_aaaa("mx1.quiver.local.test", "::1")
    for i in range(60):  # an answer too big for UDP
        z.add_a("many.quiver.local.test", f"127.0.2.{i}")
    z.add_txt("sel._domainkey.alpha.test", "v=DKIM1; p=" + "x" * 400)
    return z


ANSWERS = Answers(zone())
TRANSPORT = st.sampled_from(["udp", "tcp"])
NAMES = st.sampled_from(["alpha.test", "ALPHA.test", "nullmx.test", "mx1.quiver.local.test",
                         "many.quiver.local.test", "sel._domainkey.alpha.test",
                         "_domainkey.alpha.test", "nope.test", "."])
LABEL = st.binary(min_size=1, max_size=20)
TYPES = st.sampled_from(["A", "AAAA", "MX", "TXT", "ANY", "NS", "SOA", "CNAME", "PTR", "SRV"])


def check_reply(wire: bytes, reply: bytes | None, transport: str) -> dns.message.Message | None:
    """A reply is a well-formed DNS response to that query's id, within its size limit."""
    if reply is None:
        return None
    limit = MAX_TCP_SIZE if transport == "tcp" else MAX_UDP_SIZE
    assert len(reply) <= limit
    message = dns.message.from_wire(reply)
    assert message.flags & dns.flags.QR
    assert reply[:2] == wire[:2]  # the query's id
    return message


@given(st.binary(max_size=700), TRANSPORT)
def test_any_bytes_are_answered_or_dropped(wire: bytes, transport: str) -> None:
    reply = respond(ANSWERS, wire, transport=transport)  # type: ignore[arg-type]
    check_reply(wire, reply, transport)
    if len(wire) < 12:
        assert reply is None  # no header to answer to


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """A real query for one of the zone's names or any labels, with or without EDNS."""
    if draw(st.booleans()):
        name = dns.name.from_text(draw(NAMES))
    else:
        name = dns.name.Name([*draw(st.lists(LABEL, min_size=1, max_size=4)), b""])
    edns = draw(st.sampled_from([-1, 0]))
    query = dns.message.make_query(name, draw(TYPES), use_edns=edns,
                                   payload=draw(st.integers(0, 65535)))
    query.id = draw(st.integers(0, 65535))
    return query.to_wire()


@given(queries(), TRANSPORT)
def test_every_well_formed_query_gets_an_authoritative_answer_that_fits(
        wire: bytes, transport: str) -> None:
    reply = respond(ANSWERS, wire, transport=transport)  # type: ignore[arg-type]
    message = check_reply(wire, reply, transport)
    assert message is not None
    query = dns.message.from_wire(wire)
    assert message.flags & dns.flags.AA
    assert message.question == query.question
    assert message.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    if transport == "udp":
        limit = max(CLASSIC_UDP_SIZE, min(query.payload, MAX_UDP_SIZE)) if query.edns >= 0 \
            else CLASSIC_UDP_SIZE
        assert len(reply or b"") <= limit
        if message.flags & dns.flags.TC:
            assert not message.answer  # truncated: the resolver asks again over TCP


@st.composite
def damaged_queries(draw: st.DrawFn) -> bytes:
    """A real query with bytes changed, cut short or extended."""
    wire = bytearray(draw(queries()))
    for _ in range(draw(st.integers(0, 4))):
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(wire)))
    return bytes(wire[:cut]) + draw(st.binary(max_size=30))


@given(damaged_queries(), TRANSPORT)
def test_damaged_queries_are_answered_or_dropped(wire: bytes, transport: str) -> None:
    reply = respond(ANSWERS, wire, transport=transport)  # type: ignore[arg-type]
    message = check_reply(wire, reply, transport)
    if message is not None and wire[2] & 0x80:
        pytest.fail("answered a response")  # QR set: never answered, or a loop starts


@given(st.integers(0, 65535), st.integers(0, 65535), TRANSPORT)
def test_a_header_alone_gets_an_error_not_an_answer(query_id: int, flags: int,
                                                    transport: str) -> None:
    wire = query_id.to_bytes(2, "big") + flags.to_bytes(2, "big") + bytes(8)
    reply = respond(ANSWERS, wire, transport=transport)  # type: ignore[arg-type]
    message = check_reply(wire, reply, transport)
    if flags & dns.flags.QR:
        assert message is None
    else:
        assert message is not None and not message.answer
        assert message.rcode() != dns.rcode.NOERROR or message.opcode() != dns.opcode.QUERY
