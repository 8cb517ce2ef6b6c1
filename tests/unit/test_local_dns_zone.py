"""The local DNS zone, the builtin responder's wire replies and dnsmasq's arguments; no network."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.servers.dns_builtin import CLASSIC_UDP_SIZE, MAX_UDP_SIZE, Answers, respond
from quiver.devstack.servers.dns_dnsmasq import ZoneNotExpressible, zone_args
from quiver.devstack.servers.dns_zone import (
    MAX_CHARACTER_STRING,
    Mx,
    Zone,
    normalise_name,
    split_txt,
)

DKIM_2048 = (
    "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
    + "x" * 330
    + "IDAQAB"
)


def example_zone() -> Zone:
    zone = Zone()
    zone.add_mx("Alpha.Test.", "MX1.quiver.local.test", 10)
    zone.add_mx("alpha.test", "mx2.quiver.local.test", 20)
    zone.add_null_mx("nullmx.test")
    zone.add_a("mx1.quiver.local.test", "127.0.0.1")
    zone.add_aaaa("mx1.quiver.local.test", "::1")
    zone.add_a("nomx.test", "127.0.0.1")
    zone.add_txt("sel._domainkey.alpha.test", DKIM_2048)
    return zone


def ask(answers: Answers, name: str, rdtype: str, *, transport: str = "udp",
        use_edns: int | bool = 0, payload: int = 1232) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload)
    wire = respond(answers, query.to_wire(), transport=transport)  # type: ignore[arg-type]
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    return reply


# --- Zone -------------------------------------------------------------------------------


def test_names_are_normalised_and_records_kept_in_order() -> None:
    zone = example_zone()
    assert [r.value for r in zone.rrset("ALPHA.test.", "MX")] == [
        Mx(10, "mx1.quiver.local.test"), Mx(20, "mx2.quiver.local.test"),
    ]
    assert zone.rrset("nullmx.test", "MX")[0].value == Mx(0, "")
    assert zone.rrset("nullmx.test", "MX")[0].value.is_null  # type: ignore[union-attr]
    assert len(zone) == 7


def test_identical_record_added_twice_is_kept_once() -> None:
    zone = Zone()
    zone.add_txt("example.test", "v=spf1 -all")
    zone.add_txt("example.test", "v=spf1 -all")
    assert len(zone.rrset("example.test", "TXT")) == 1


def test_ttl_is_per_record_and_an_rrset_has_one_ttl() -> None:
    zone = Zone()
    zone.add_a("a.test", "127.0.0.1", ttl=60)
    zone.add_txt("a.test", "hello", ttl=3600)
    assert zone.rrset("a.test", "A")[0].ttl == 60
    assert zone.rrset("a.test", "TXT")[0].ttl == 3600
    with pytest.raises(ValueError, match="already has TTL 60"):
        zone.add_a("a.test", "127.0.0.2", ttl=61)
    with pytest.raises(ValueError, match="TTL"):
        zone.add_a("b.test", "127.0.0.1", ttl=-1)


def test_null_mx_stands_alone() -> None:
    zone = Zone()
    zone.add_null_mx("none.test")
    with pytest.raises(ValueError, match="null MX"):
        zone.add_mx("none.test", "mx.test")
    zone.add_mx("some.test", "mx.test")
    with pytest.raises(ValueError, match="already has MX"):
        zone.add_null_mx("some.test")
    with pytest.raises(ValueError, match="add_null_mx"):
        zone.add_mx("other.test", ".")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda z: z.add_a("a.test", "::1"), "IPv4"),
        (lambda z: z.add_aaaa("a.test", "127.0.0.1"), "IPv6"),
        (lambda z: z.add_a("a.test", "300.1.1.1"), "does not appear to be"),
        (lambda z: z.add_mx("a.test", "mx.test", 70000), "preference"),
        (lambda z: z.add_a("bad name.test", "127.0.0.1"), "characters"),
        (lambda z: z.add_a("a..test", "127.0.0.1"), "empty label"),
        (lambda z: z.add_a("x" * 64 + ".test", "127.0.0.1"), "empty label or one over 63"),
        (lambda z: z.add_a(".", "127.0.0.1"), "root"),
    ],
)
def test_malformed_records_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(Zone())


def test_long_txt_is_split_into_255_byte_strings() -> None:
    zone = Zone()
    record = zone.add_txt("sel._domainkey.alpha.test", DKIM_2048)
    strings = record.value
    assert isinstance(strings, tuple)
    assert [len(s) for s in strings] == [255, len(DKIM_2048) - 255]
    assert b"".join(strings).decode() == DKIM_2048


@given(st.binary(max_size=2000))
def test_split_txt_round_trips_with_bounded_strings(data: bytes) -> None:
    strings = split_txt(data)
    assert b"".join(strings) == data
    assert all(len(s) <= MAX_CHARACTER_STRING for s in strings)
    assert all(len(s) == MAX_CHARACTER_STRING for s in strings[:-1])


@given(st.from_regex(r"[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,4}\.?", fullmatch=True))
def test_normalise_name_is_idempotent(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once
    assert once == once.lower() and not once.endswith(".")


def test_empty_non_terminals_exist() -> None:
    zone = example_zone()
    assert zone.name_exists("_domainkey.alpha.test")
    assert zone.name_exists("test")
    assert not zone.name_exists("nope.alpha.test")


def test_zone_file_renders_every_record() -> None:
    text = example_zone().zone_file()
    assert "alpha.test. 300 IN MX 10 mx1.quiver.local.test.\n" in text
    assert "nullmx.test. 300 IN MX 0 .\n" in text
    assert 'sel._domainkey.alpha.test. 300 IN TXT "v=DKIM1; k=rsa; p=MIIB' in text


# --- builtin responder, on wire bytes ---------------------------------------------------


def test_answer_is_authoritative_and_keeps_the_query_spelling() -> None:
    reply = ask(Answers(example_zone()), "ALPHA.test.", "MX")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR
    [rrset] = reply.answer
    assert rrset.name.to_text() == "ALPHA.test."
    assert sorted((r.preference, r.exchange.to_text()) for r in rrset) == [
        (10, "mx1.quiver.local.test."), (20, "mx2.quiver.local.test."),
    ]
    assert rrset.ttl == 300


def test_nxdomain_and_nodata_are_told_apart() -> None:
    answers = Answers(example_zone())
    assert ask(answers, "nope.alpha.test", "A").rcode() == dns.rcode.NXDOMAIN
    nodata = ask(answers, "nomx.test", "MX")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    empty_non_terminal = ask(answers, "_domainkey.alpha.test", "TXT")
    assert (empty_non_terminal.rcode(), empty_non_terminal.answer) == (dns.rcode.NOERROR, [])


def test_null_mx_on_the_wire() -> None:
    [rrset] = ask(Answers(example_zone()), "nullmx.test", "MX").answer
    [mx] = list(rrset)
    assert (mx.preference, mx.exchange.to_text()) == (0, ".")


def test_dkim_txt_strings_survive_the_wire() -> None:
    [rrset] = ask(Answers(example_zone()), "sel._domainkey.alpha.test", "TXT").answer
    [txt] = list(rrset)
    assert b"".join(txt.strings).decode() == DKIM_2048
    assert len(txt.strings) == 2


def test_large_udp_answer_is_truncated_and_tcp_carries_it() -> None:
    zone = Zone()
    for i in range(40):
        zone.add_a("many.test", f"127.0.1.{i}")
    zone.add_txt("big.test", "z" * 2000)
    answers = Answers(zone)

    plain = ask(answers, "many.test", "A", use_edns=False)
    assert plain.flags & dns.flags.TC and plain.answer == []
    edns = ask(answers, "many.test", "A", payload=4096)
    assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 40

    truncated = ask(answers, "big.test", "TXT", payload=4096)  # capped at MAX_UDP_SIZE
    assert truncated.flags & dns.flags.TC
    assert len(truncated.to_wire()) <= MAX_UDP_SIZE
    full = ask(answers, "big.test", "TXT", transport="tcp", use_edns=False)
    assert not full.flags & dns.flags.TC
    assert b"".join(next(iter(full.answer[0])).strings) == b"z" * 2000


def test_small_answer_without_edns_fits_512_bytes() -> None:
    reply = ask(Answers(example_zone()), "sel._domainkey.alpha.test", "TXT", use_edns=False)
    assert not reply.flags & dns.flags.TC
    assert len(reply.to_wire()) <= CLASSIC_UDP_SIZE


def test_any_query_returns_every_type_at_the_name() -> None:
    reply = ask(Answers(example_zone()), "mx1.quiver.local.test", "ANY")
    assert {dns.rdatatype.to_text(r.rdtype) for r in reply.answer} == {"A", "AAAA"}


def test_garbage_gets_formerr_and_responses_get_nothing() -> None:
    answers = Answers(example_zone())
    garbage = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff"
    wire = respond(answers, garbage, transport="udp")
    assert wire is not None
    assert wire[:2] == b"\x12\x34"
    assert wire[3] & 0x0F == dns.rcode.FORMERR
    assert respond(answers, b"\x00\x01", transport="udp") is None
    response = dns.message.make_response(dns.message.make_query("alpha.test", "MX"))
    assert respond(answers, response.to_wire(), transport="udp") is None


def test_non_query_opcode_is_not_implemented() -> None:
    query = dns.message.make_query("alpha.test", "MX")
    query.set_opcode(dns.opcode.NOTIFY)
    wire = respond(Answers(example_zone()), query.to_wire(), transport="udp")
    assert wire is not None
    assert dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP


# --- dnsmasq's command line -------------------------------------------------------------


def test_dnsmasq_args_carry_every_record() -> None:
    args = zone_args(example_zone())
    assert args[0] == "--local-ttl=300"
    assert "--mx-host=alpha.test,mx1.quiver.local.test,10" in args
    assert "--mx-host=nullmx.test,.,0" in args
    assert "--host-record=mx1.quiver.local.test,127.0.0.1,300" in args
    assert "--host-record=mx1.quiver.local.test,::1,300" in args
    [txt] = [a for a in args if a.startswith("--txt-record=")]
    name, first, second = txt.removeprefix("--txt-record=").split(",")
    assert name == "sel._domainkey.alpha.test"
    assert first + second == DKIM_2048 and len(first) == 255


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda z: (z.add_mx("a.test", "mx.test", ttl=60), z.add_txt("a.test", "x", ttl=300)),
         "different TTLs"),
        (lambda z: z.add_txt("a.test", "a,b"), "comma"),
        (lambda z: z.add_txt("a.test", ""), "empty"),
        (lambda z: z.add_txt("a.test", "caf\u00e9"), "non-printable"),
    ],
)
def test_dnsmasq_refuses_what_its_command_line_cannot_say(build, reason: str) -> None:
    zone = Zone()
    build(zone)
    with pytest.raises(ZoneNotExpressible, match=reason):
        zone_args(zone)
