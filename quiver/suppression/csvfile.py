"""The suppression list as CSV, so a team can bring its existing list or take it away.

Header: address,scope,reason,created,expires,source (RFC 4180, UTF-8, a BOM
allowed). On import only `address` is required; a column left out, or a cell
left empty, takes the import's default (scope, reason, source; created: now;
expires: never). Every row is validated and a bad one is reported with its line
number and the rule it broke:
- address: an envelope address (quiver.addresses), normalised as the list keys it
  (quiver.suppression.address: A-label lower-case domain, local part lower-cased);
- scope: "global" or "tenant:<name>";
- reason: hard_bounce, complaint, unsubscribe or manual;
- created, expires: RFC 3339 with a time zone ("2026-12-04T13:00:00Z"); expires
  after created;
- source: at most 512 characters, no control characters.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO

from quiver.addresses import AddressError
from quiver.events import rfc3339_ms
from quiver.storage.base import SUPPRESSION_REASONS, Suppression
from quiver.suppression.address import ScopeError, parse_scope, scope_name, suppression_address

HEADER = ("address", "scope", "reason", "created", "expires", "source")
MAX_SOURCE = 512
# 10000-01-01T00:00:00Z: times are written back as RFC 3339, four-digit years.
LAST_TIME = 253_402_300_800
# A cell longer than this is not a suppression field (csv's own default limit).
MAX_FIELD = 128 * 1024


class CsvError(ValueError):
    """A CSV that cannot be read at all (its header, its encoding)."""


@dataclass(frozen=True, slots=True)
class RowError:
    line: int  # 1-based physical line the row ends on
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Defaults:
    """What an absent column or empty cell means."""

    tenant: str  # ALL_TENANTS for global
    reason: str
    source: str
    now: float


def decode(data: bytes) -> str:
    """UTF-8 text (a leading BOM dropped); CsvError naming the line of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CsvError(f"line {line}: not UTF-8 (byte {exc.start}: {exc.reason})") from None


def read(text: str, *, defaults: Defaults) -> Iterator[Suppression | RowError]:
    """Each data row as an entry, or the reason it is not one. CsvError if the
    header is unusable (nothing can be read then)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError("line 1: empty file (expected the header "
                       f"{','.join(HEADER)})") from None
    except csv.Error as exc:
        raise CsvError(f"line {reader.line_num}: {exc}") from None
    columns = [name.strip().lower() for name in header]
    unknown = [c for c in columns if c not in HEADER]
    if unknown or "address" not in columns or len(set(columns)) != len(columns):
        raise CsvError(f"line 1: header {','.join(header)!r}: expected the columns "
                       f"{','.join(HEADER)} (address required, each at most once)")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowError(reader.line_num, f"not valid CSV: {exc}")
            continue
        if not row or row == [""]:
            continue  # blank line
        if len(row) != len(columns):
            yield RowError(reader.line_num,
                           f"{len(row)} cells; the header has {len(columns)}")
            continue
        try:
            yield _entry(dict(zip(columns, row, strict=True)), defaults)
        except ValueError as exc:
            yield RowError(reader.line_num, str(exc))


def _entry(cells: dict[str, str], d: Defaults) -> Suppression:
    for name, value in cells.items():
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name}: longer than {MAX_FIELD} characters")
    raw = cells["address"]
    try:
        address = suppression_address(raw)
    except AddressError as exc:
        raise ValueError(f"address {raw[:80]!r}: {exc}") from None
    scope = cells.get("scope", "").strip()
    try:
        tenant = parse_scope(scope) if scope else d.tenant
    except ScopeError as exc:
        raise ValueError(str(exc)) from None
    reason = cells.get("reason", "").strip() or d.reason
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"reason {reason[:80]!r}: expected one of "
                         f"{', '.join(SUPPRESSION_REASONS)}")
    created = _time(cells, "created")
    if created is None:
        created = d.now
    expires = _time(cells, "expires")
    if expires is not None and expires <= created:
        raise ValueError("expires: must be after created")
    source = cells.get("source", "") or d.source
    if len(source) > MAX_SOURCE:
        raise ValueError(f"source: longer than {MAX_SOURCE} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in source):
        raise ValueError("source: contains a control character (line break, tab, NUL...)")
    return Suppression(address=address, reason=reason, created_at=created, tenant=tenant,
                       source=source, expires_at=int(expires) if expires is not None else None)


def _time(cells: dict[str, str], name: str) -> float | None:
    text = cells.get(name, "").strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or not text[:4].isdigit():
        raise ValueError(f"{name} {text[:40]!r}: expected RFC 3339 with a time zone, "
                         "e.g. 2026-12-04T13:00:00Z")
    seconds = when.timestamp()
    if not 0 <= seconds < LAST_TIME:
        raise ValueError(f"{name} {text[:40]!r}: must be between 1970 and 9999 (UTC)")
    return seconds


def row(entry: Suppression) -> list[str]:
    return [
        entry.address, scope_name(entry.tenant), entry.reason, rfc3339_ms(entry.created_at),
        rfc3339_ms(entry.expires_at) if entry.expires_at is not None else "", entry.source,
    ]


def write(entries: Iterable[Suppression], out: TextIO, *, header: bool = True) -> int:
    """Write entries as CSV rows (the header first); how many were written."""
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(HEADER)
    count = 0
    for entry in entries:
        writer.writerow(row(entry))
        count += 1
    return count
