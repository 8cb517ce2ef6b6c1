"""Suppression CSV files and addresses: every row validated with its line number,
nothing written when a row is bad (unless --skip-invalid), normalised addresses, and
hostile input (hypothesis) that only ever yields entries, row errors or a CsvError."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.addresses import AddressError
from quiver.storage.base import ALL_TENANTS, SUPPRESSION_REASONS, StorageError, Suppression
from quiver.storage.memory import MemorySuppression
from quiver.suppression import admin
from quiver.suppression.address import (
    ScopeError,
    parse_scope,
    scope_name,
    suppression_address,
)
from quiver.suppression.csvfile import (
    HEADER,
    CsvError,
    Defaults,
    RowError,
    decode,
    read,
    write,
)

T0 = 1_790_000_000.0
DEFAULTS = Defaults(tenant=ALL_TENANTS, reason="manual", source="import list.csv", now=T0)


def rows(text: str) -> list[Suppression | RowError]:
    return list(read(text, defaults=DEFAULTS))


# --- addresses and scopes ---------------------------------------------------------------

def test_addresses_are_lower_cased_whole_and_idns_become_a_labels() -> None:
    assert suppression_address("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert suppression_address("bob@Bücher.example") == "bob@xn--bcher-kva.example"
    for bad in ("no-at-sign", "a b@x.test", "a@localhost", "<a@x.test>", "a\r\nb@x.test"):
        with pytest.raises(AddressError):
            suppression_address(bad)


def test_scopes() -> None:
    assert parse_scope("global") == ALL_TENANTS and scope_name(ALL_TENANTS) == "global"
    assert parse_scope("tenant:acme:eu") == "acme:eu" and scope_name("acme") == "tenant:acme"
    for bad in ("", "tenant:", "acme", "tenant:a b", "tenant:*", "Global"):
        with pytest.raises(ScopeError):
            parse_scope(bad)


ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
local_parts = st.lists(st.text(ATEXT, min_size=1, max_size=10), min_size=1,
                       max_size=3).map(".".join)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "test"]))
addresses = st.builds(lambda lp, d: f"{lp}@{d}", local_parts, domains)


@given(addresses)
def test_normalisation_is_idempotent_and_case_blind(address: str) -> None:
    key = suppression_address(address)
    assert key == key.lower() == suppression_address(key)
    assert suppression_address(address.upper()) == key
    assert suppression_address(f" {address.swapcase()}\t") == key


@given(st.text(max_size=80))
def test_any_text_is_an_address_or_an_address_error(text: str) -> None:
    try:
        key = suppression_address(text)
    except AddressError:
        return
    assert key == key.lower() and "@" in key and key == suppression_address(key)


# --- reading ----------------------------------------------------------------------------

def test_a_full_file_reads_every_column() -> None:
    text = ("address,scope,reason,created,expires,source\r\n"
            "Ann@X.test,tenant:acme,unsubscribe,2026-12-01T10:00:00Z,2027-01-01T00:00:00+01:00,"
            "\"form, page 2\"\r\n"
            "\r\n"
            "bob@x.test,,,,,\r\n")
    ann, bob = rows(text)
    assert ann == Suppression(address="ann@x.test", reason="unsubscribe",
                              created_at=1_796_119_200.0, tenant="acme",
                              source="form, page 2", expires_at=1_798_758_000)
    assert bob == Suppression(address="bob@x.test", reason="manual", created_at=T0,
                              tenant=ALL_TENANTS, source="import list.csv")


def test_an_address_only_file_takes_the_defaults() -> None:
    (entry,) = rows("\ufeffAddress\nCAROL@x.test\n")
    assert (entry.address, entry.tenant, entry.reason) == ("carol@x.test", "*", "manual")  # type: ignore[union-attr]


@pytest.mark.parametrize("line, problem", [
    ("nobody,global,manual,,,", "address 'nobody': missing '@'"),
    ("a@x.test,tenant:,manual,,,", "scope 'tenant:'"),
    ("a@x.test,global,spam,,,", "reason 'spam': expected one of hard_bounce, complaint"),
    ("a@x.test,global,manual,yesterday,,", "created 'yesterday': expected RFC 3339"),
    ("a@x.test,global,manual,2026-12-01T10:00:00,,", "created '2026-12-01T10:00:00': "
                                                      "expected RFC 3339 with a time zone"),
    ("a@x.test,global,manual,2026-12-01T10:00:00Z,2026-12-01T09:00:00Z,",
     "expires: must be after created"),
    ("a@x.test,global,manual,1969-12-31T23:59:59Z,,", "created '1969-12-31T23:59:59Z': must "
                                                       "be between 1970 and 9999"),
    ("a@x.test,global,manual,,,\"two\nlines\"", "source: contains a control character"),
    ("a@x.test,global,manual,,", "5 cells; the header has 6"),
    ("a@x.test,global,manual,,,\"unterminated", "not valid CSV"),
])
def test_a_bad_row_is_reported_with_its_line(line: str, problem: str) -> None:
    text = ",".join(HEADER) + "\nok@x.test,global,manual,,,\n" + line + "\n"
    results = rows(text)
    assert isinstance(results[0], Suppression)
    errors = [r for r in results if isinstance(r, RowError)]
    assert errors and errors[0].line >= 3, results
    assert problem in errors[0].message, errors[0]


@pytest.mark.parametrize("text, problem", [
    ("", "line 1: empty file"),
    ("email,scope\n", "expected the columns"),
    ("address,address\n", "expected the columns"),
    ("address,colour\n", "expected the columns"),
])
def test_an_unusable_header_is_an_error_for_the_whole_file(text: str, problem: str) -> None:
    with pytest.raises(CsvError, match=problem):
        rows(text)


def test_undecodable_bytes_name_their_line() -> None:
    with pytest.raises(CsvError, match="line 3: not UTF-8"):
        decode(b"address\na@x.test\n\xff@x.test\n")


cells = st.text(st.characters(codec="utf-8"), max_size=30)


@given(st.lists(st.lists(cells, min_size=1, max_size=7), max_size=8))
def test_hostile_rows_only_yield_entries_or_row_errors(table: list[list[str]]) -> None:
    out = io.StringIO()
    import csv

    csv.writer(out).writerows([list(HEADER), *table])
    for result in rows(out.getvalue()):
        assert isinstance(result, Suppression | RowError)
        if isinstance(result, Suppression):
            assert result.address == suppression_address(result.address)
            assert result.reason in SUPPRESSION_REASONS


@given(st.text(max_size=300))
def test_hostile_text_yields_entries_row_errors_or_a_csv_error(text: str) -> None:
    try:
        results = rows(text)
    except CsvError:
        return
    assert all(isinstance(r, Suppression | RowError) for r in results)


entries = st.builds(
    Suppression,
    address=addresses.map(suppression_address),
    reason=st.sampled_from(SUPPRESSION_REASONS),
    created_at=st.integers(0, 4_000_000_000).map(float),  # written to the millisecond
    tenant=st.sampled_from([ALL_TENANTS, "acme", "a.b:c/d+e@f-g"]),
    source=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    expires_at=st.one_of(st.none(), st.integers(4_000_000_001, 5_000_000_000)),
)


@given(st.lists(entries, max_size=10))
def test_export_then_import_gives_the_same_entries(listed: list[Suppression]) -> None:
    out = io.StringIO()
    assert write(listed, out) == len(listed)
    back = rows(out.getvalue())
    expected = [e if e.source else Suppression(
        address=e.address, reason=e.reason, created_at=e.created_at, tenant=e.tenant,
        source=DEFAULTS.source, expires_at=e.expires_at) for e in listed]
    assert back == expected


# --- the commands' operations -----------------------------------------------------------

async def test_import_writes_nothing_when_a_row_is_bad() -> None:
    store = MemorySuppression(clock=lambda: T0)
    text = "address,reason\na@x.test,manual\nbad,manual\nc@x.test,nope\n"
    out, err = io.StringIO(), io.StringIO()
    assert await admin.import_csv(store, text, defaults=DEFAULTS, skip_invalid=False,
                                  out=out, err=err) == 1
    assert store.entries == {}
    assert err.getvalue().splitlines() == [
        "error: line 3: address 'bad': missing '@'",
        "error: line 4: reason 'nope': expected one of hard_bounce, complaint, unsubscribe, "
        "manual",
        "nothing written: 2 invalid rows, 1 valid; fix them, or pass --skip-invalid to "
        "import the valid ones",
    ]


async def test_import_skip_invalid_writes_the_valid_rows_in_batches() -> None:
    store = MemorySuppression(clock=lambda: T0)
    text = "address\n" + "".join(f"u{i}@x.test\n" for i in range(1200)) + "broken\n"
    out, err = io.StringIO(), io.StringIO()
    assert await admin.import_csv(store, text, defaults=DEFAULTS, skip_invalid=True,
                                  out=out, err=err) == 0
    assert len(store.entries) == 1200 and store.writes == 3  # 500, 500, 200
    assert out.getvalue() == "imported 1200 entries, 1 invalid rows skipped (listed above)\n"
    assert "line 1202: address 'broken'" in err.getvalue()


async def test_import_reports_a_failed_write_and_can_be_run_again() -> None:
    store = MemorySuppression(clock=lambda: T0)
    store.fail = StorageError("throttled")
    err = io.StringIO()
    assert await admin.import_csv(store, "address\na@x.test\n", defaults=DEFAULTS,
                                  skip_invalid=False, out=io.StringIO(), err=err) == 1
    assert "write failed after 0 of 1 entries: throttled; the import can be run again" in \
        err.getvalue()


async def test_check_exit_status_and_output() -> None:
    store = MemorySuppression(clock=lambda: T0)
    await store.put(Suppression(address="a@x.test", reason="complaint", created_at=T0,
                                tenant="acme", source="fbl"))
    out = io.StringIO()
    assert await admin.check(store, "a@x.test", tenant="acme", out=out) == 0
    assert out.getvalue() == ("a@x.test: suppressed: complaint in scope tenant:acme since "
                              "2026-09-21T14:13:20.000Z; source: fbl\n")
    out = io.StringIO()
    assert await admin.check(store, "a@x.test", tenant=None, out=out) == 1
    assert out.getvalue() == "a@x.test: not suppressed (scopes checked: global)\n"


async def test_export_and_list_leave_lapsed_entries_out_unless_asked() -> None:
    store = MemorySuppression(clock=lambda: T0)
    await store.put(Suppression(address="old@x.test", reason="manual", created_at=T0 - 10,
                                expires_at=int(T0) - 1))
    await store.put(Suppression(address="new@x.test", reason="manual", created_at=T0))
    out, err = io.StringIO(), io.StringIO()
    await admin.export(store, tenant=None, now=T0, lapsed=False, out=out, err=err)
    assert out.getvalue() == ("address,scope,reason,created,expires,source\n"
                              "new@x.test,global,manual,2026-09-21T14:13:20.000Z,,\n")
    out = io.StringIO()
    await admin.list_entries(store, tenant=None, now=T0, lapsed=True, out=out)
    assert out.getvalue().splitlines()[-1] == "2 entries"
    empty = io.StringIO()
    await admin.export(MemorySuppression(), tenant="x", now=T0, lapsed=False, out=empty,
                       err=err)
    assert empty.getvalue() == "address,scope,reason,created,expires,source\n"


async def test_a_long_export_shows_progress() -> None:
    store = MemorySuppression(clock=lambda: T0)
    await store.put_many([Suppression(address=f"u{i}@x.test", reason="manual", created_at=T0)
                          for i in range(10_050)])
    out, err = io.StringIO(), io.StringIO()
    await admin.export(store, tenant=None, now=T0, lapsed=False, out=out, err=err)
    assert err.getvalue() == "exported 10000 so far\nexported 10050 entries\n"
    assert len(out.getvalue().splitlines()) == 10_051
