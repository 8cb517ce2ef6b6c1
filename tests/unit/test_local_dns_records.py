"""`quiver local --dns FILE`: extra records read, checked field by field, added to the zone."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.devstack.servers.dns import Zone
from quiver.devstack.servers.dns_records import (
    ExtraRecord,
    RecordsError,
    add_records,
    host_names,
    load_records,
    parse_records,
)
from quiver.devstack.servers.dns_zone import Mx
from quiver.devstack.stack import LocalStack

GOOD = """
[[record]]
name = "Partner.Test."
type = "MX"
value = "mx.partner.test"
preference = 5

[[record]]
name = "mx.partner.test"
type = "A"
value = "127.0.0.1"
ttl = 60

[[record]]
name = "v6.partner.test"
type = "AAAA"
value = "::1"

[[record]]
name = "partner.test"
type = "TXT"
value = "v=spf1 -all"

[[record]]
name = "nothing.test"
type = "MX"
value = "."
"""


def test_a_good_file_gives_every_record_normalised() -> None:
    records = parse_records(GOOD)
    assert [(r.name, r.type, r.value, r.preference, r.ttl) for r in records] == [
        ("partner.test", "MX", "mx.partner.test", 5, 300),
        ("mx.partner.test", "A", "127.0.0.1", 10, 60),
        ("v6.partner.test", "AAAA", "::1", 10, 300),
        ("partner.test", "TXT", "v=spf1 -all", 10, 300),
        ("nothing.test", "MX", "", 10, 300),
    ]
    zone = Zone()
    add_records(zone, records)
    assert [r.value for r in zone.rrset("partner.test", "MX")] == [Mx(5, "mx.partner.test")]
    assert [r.value for r in zone.rrset("nothing.test", "MX")] == [Mx(0, "")]
    assert zone.rrset("mx.partner.test", "A")[0].ttl == 60
    assert zone.rrset("v6.partner.test", "AAAA")[0].value == "::1"
    assert zone.rrset("partner.test", "TXT")[0].value == (b"v=spf1 -all",)


def test_host_names_are_mx_exchanges_and_address_owners() -> None:
    assert host_names(parse_records(GOOD)) == ["mx.partner.test", "v6.partner.test"]


@pytest.mark.parametrize(("record", "problem"), [
    ('name = "a.test"\ntype = "CNAME"\nvalue = "b.test"',
     "record[0] (a.test): type: expected one of MX, A, AAAA, TXT, got 'CNAME'"),
    ('name = "a.test"\nvalue = "127.0.0.1"',
     "record[0] (a.test): type: expected one of MX, A, AAAA, TXT, got None"),
    ('type = "A"\nvalue = "127.0.0.1"',
     "record[0] (?): name: required: the owner name, like 'partner.test'"),
    ('name = "a..test"\ntype = "A"\nvalue = "127.0.0.1"',
     "record[0] (a..test): name: DNS name 'a..test' has an empty label"),
    ('name = "a.test"\ntype = "A"\nvalue = "::1"',
     "record[0] (a.test): value: expected an IPv4 address, got '::1'"),
    ('name = "a.test"\ntype = "AAAA"\nvalue = "127.0.0.1"',
     "record[0] (a.test): value: expected an IPv6 address, got '127.0.0.1'"),
    ('name = "a.test"\ntype = "A"',
     "record[0] (a.test): value: required"),
    ('name = "a.test"\ntype = "MX"\nvalue = 10',
     "record[0] (a.test): value: expected a string, got 10"),
    ('name = "a.test"\ntype = "MX"\nvalue = "mx.a.test"\npreference = 70000',
     "record[0] (a.test): preference: expected a whole number 0-65535, got 70000"),
    ('name = "a.test"\ntype = "MX"\nvalue = "mx.a.test"\npreference = true',
     "record[0] (a.test): preference: expected a whole number 0-65535, got True"),
    ('name = "a.test"\ntype = "A"\nvalue = "127.0.0.1"\npreference = 10',
     "record[0] (a.test): preference: only MX records have a preference"),
    ('name = "a.test"\ntype = "TXT"\nvalue = "x"\nttl = -1',
     "record[0] (a.test): ttl: expected whole seconds 0-2147483647, got -1"),
    ('name = "a.test"\ntype = "TXT"\nvalue = "x"\nweight = 1',
     "record[0] (a.test): weight: unknown field (allowed: name, type, value, preference, ttl)"),
])
def test_each_problem_names_the_record_and_the_field(record: str, problem: str) -> None:
    with pytest.raises(RecordsError) as refused:
        parse_records(f"[[record]]\n{record}\n", origin="extra.toml")
    assert refused.value.problems == [problem] or refused.value.problems[0].startswith(problem)
    assert str(refused.value).startswith("extra.toml: ")


def test_every_problem_is_listed_at_once() -> None:
    # A top-level key goes before the first [[record]] (after it, it is the record's).
    text = 'zone = "a"\n' + GOOD + '[[record]]\nname = "x.test"\ntype = "A"\nvalue = "nope"\n' \
        + '[[record]]\nname = "y.test"\ntype = "SRV"\nvalue = "z"\n'
    with pytest.raises(RecordsError) as refused:
        parse_records(text)
    assert refused.value.problems == [
        "zone: unknown key (write each record as a [[record]] table)",
        "record[5] (x.test): value: expected an IPv4 address, got 'nope'",
        "record[6] (y.test): type: expected one of MX, A, AAAA, TXT, got 'SRV'",
    ]


def test_record_must_be_an_array_of_tables() -> None:
    with pytest.raises(RecordsError, match=r"record: expected an array of tables"):
        parse_records('record = "a"\n')
    with pytest.raises(RecordsError, match=r"record\[0\]: expected a table"):
        parse_records('record = ["a"]\n')


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match=r"(?s)absent\.toml: 1 problem.*cannot read"):
        load_records(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[record]\n")
    with pytest.raises(RecordsError, match=r"(?s)broken\.toml: 1 problem.*not valid TOML"):
        load_records(broken)


def test_clashes_with_the_zone_name_the_record() -> None:
    zone = Zone()
    zone.add_null_mx("nullmx.test")
    zone.add_a("mx1.test", "127.0.0.1", ttl=300)
    records = parse_records(
        '[[record]]\nname = "nullmx.test"\ntype = "MX"\nvalue = "mx1.test"\n'
        '[[record]]\nname = "mx1.test"\ntype = "A"\nvalue = "127.0.0.2"\nttl = 60\n'
    )
    with pytest.raises(RecordsError) as refused:
        add_records(zone, records, origin="extra.toml")
    assert refused.value.problems == [
        "record[0] (nullmx.test): nullmx.test has a null MX; RFC 7505 allows no other MX "
        "beside it",
        "record[1] (mx1.test): mx1.test A already has TTL 300; an RRset cannot also have "
        "TTL 60",
    ]


def test_the_local_stack_refuses_a_clash_with_the_demo_zone_before_starting(
        tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "never", dns_records=(
        ExtraRecord(index=3, name="nullmx.test", type="MX", value="mx.other.test"),
    ), dns_origin="extra.toml")
    with pytest.raises(RecordsError, match=r"record\[3\] \(nullmx.test\): nullmx.test has a null"):
        stack.start()
    assert not (tmp_path / "never").exists()


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_records_error_or_records(text: str) -> None:
    try:
        records = parse_records(text)
    except RecordsError as exc:
        assert exc.problems
    else:
        add_records(Zone(), [r for r in records if r.type != "MX"])
