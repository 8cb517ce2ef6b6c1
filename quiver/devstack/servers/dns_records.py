"""Extra DNS records for the local stack, read from a TOML file (`quiver local --dns`).

    [[record]]
    name = "partner.test"
    type = "MX"            # MX, A, AAAA or TXT
    value = "mx.partner.test"
    preference = 10        # MX only; default 10
    ttl = 300              # optional

An MX whose value is "." is a null MX (RFC 7505). Every problem is reported at
once, naming the record and the field (`record[2] (mx.partner.test): value:
expected an IPv4 address ...`), before any server starts.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

from quiver.devstack.servers.dns_zone import DEFAULT_TTL, MAX_TTL, RecordType, Zone, normalise_name

# PTR records come from `Zone.add_ptr` (rigs that check reverse DNS), not from files.
RECORD_TYPES: tuple[str, ...] = tuple(t for t in get_args(RecordType) if t != "PTR")
_FIELDS = ("name", "type", "value", "preference", "ttl")
DEFAULT_PREFERENCE = 10


class RecordsError(ValueError):
    """A records file that cannot be served; `problems` lists `record[i] (name): field: why`."""

    def __init__(self, problems: list[str], origin: str) -> None:
        self.problems = problems
        super().__init__(f"{origin}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class ExtraRecord:
    index: int
    name: str
    type: RecordType
    value: str  # an address, TXT text, or an MX exchange ("" for a null MX)
    preference: int = DEFAULT_PREFERENCE
    ttl: int = DEFAULT_TTL

    @property
    def label(self) -> str:
        return f"record[{self.index}] ({self.name})"


def load_records(path: str | Path) -> list[ExtraRecord]:
    """Read and validate a records file; raises RecordsError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordsError([f"cannot read: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError:
        raise RecordsError(["not UTF-8 text"], str(path)) from None
    return parse_records(text, origin=str(path))


def parse_records(text: str, *, origin: str = "records") -> list[ExtraRecord]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecordsError([f"not valid TOML: {exc}"], origin) from None
    problems: list[str] = []
    for key in data:
        if key != "record":
            problems.append(f"{key}: unknown key (write each record as a [[record]] table)")
    raw = data.get("record", [])
    if not isinstance(raw, list):
        problems.append("record: expected an array of tables ([[record]])")
        raw = []
    records = []
    for i, item in enumerate(raw):
        record = _record(i, item, problems)
        if record is not None:
            records.append(record)
    if problems:
        raise RecordsError(problems, origin)
    return records


def _record(i: int, item: Any, problems: list[str]) -> ExtraRecord | None:
    if not isinstance(item, dict):
        problems.append(f"record[{i}]: expected a table")
        return None
    shown = item.get("name") if isinstance(item.get("name"), str) else "?"
    label = f"record[{i}] ({shown})"
    before = len(problems)

    def bad(field: str, why: str) -> None:
        problems.append(f"{label}: {field}: {why}")

    for key in item:
        if key not in _FIELDS:
            bad(key, "unknown field (allowed: " + ", ".join(_FIELDS) + ")")
    name = ""
    if "name" not in item:
        bad("name", "required: the owner name, like 'partner.test'")
    else:
        try:
            name = _name(item["name"])
        except ValueError as exc:
            bad("name", str(exc))
    rtype = item.get("type")
    if rtype not in RECORD_TYPES:
        bad("type", f"expected one of {', '.join(RECORD_TYPES)}, got {rtype!r}")
    value = ""
    if "value" not in item:
        bad("value", "required")
    elif rtype in RECORD_TYPES:
        try:
            value = _value(rtype, item["value"])
        except ValueError as exc:
            bad("value", str(exc))
    preference = DEFAULT_PREFERENCE
    if "preference" in item:
        if rtype != "MX":
            bad("preference", "only MX records have a preference")
        else:
            preference = item["preference"]
            if isinstance(preference, bool) or not isinstance(preference, int) or not (
                0 <= preference <= 65535
            ):
                bad("preference", f"expected a whole number 0-65535, got {preference!r}")
    ttl = item.get("ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        bad("ttl", f"expected whole seconds 0-{MAX_TTL}, got {ttl!r}")
    if len(problems) > before:
        return None
    return ExtraRecord(index=i, name=name, type=cast(RecordType, rtype), value=value,
                       preference=preference, ttl=ttl)


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a DNS name, got {value!r}")
    name = normalise_name(value)
    if not name:
        raise ValueError("records at the root name are not supported")
    return name


def _value(rtype: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if rtype == "A":
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"expected an IPv4 address, got {value!r}") from None
    if rtype == "AAAA":
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            raise ValueError(f"expected an IPv6 address, got {value!r}") from None
    if rtype == "MX":
        if value.strip() == ".":
            return ""  # null MX
        exchange = normalise_name(value)
        if not exchange:
            raise ValueError("expected the exchange host name, or '.' for a null MX")
        return exchange
    return value


def host_names(records: Iterable[ExtraRecord]) -> list[str]:
    """Names a sender may connect to an MX by: the exchanges the records point MXes at,
    and the owners of A/AAAA records (a domain without MX is its own MX). The local
    MX's certificate covers them, so TLS verification stays on for them too."""
    names = [
        r.value if r.type == "MX" else r.name
        for r in records
        if (r.type == "MX" and r.value) or r.type in ("A", "AAAA")
    ]
    return list(dict.fromkeys(names))


def add_records(zone: Zone, records: Iterable[ExtraRecord], *, origin: str = "records") -> None:
    """Add the records beside what `zone` holds; RecordsError names each one that clashes
    (a second TTL for an RRset, an MX beside a null MX)."""
    problems: list[str] = []
    for record in records:
        try:
            _add(zone, record)
        except ValueError as exc:
            problems.append(f"{record.label}: {exc}")
    if problems:
        raise RecordsError(problems, origin)


def _add(zone: Zone, record: ExtraRecord) -> None:
    if record.type == "MX":
        if record.value:
            zone.add_mx(record.name, record.value, record.preference, ttl=record.ttl)
        else:
            zone.add_null_mx(record.name, ttl=record.ttl)
    elif record.type == "A":
        zone.add_a(record.name, record.value, ttl=record.ttl)
    elif record.type == "AAAA":
        zone.add_aaaa(record.name, record.value, ttl=record.ttl)
    else:
        zone.add_txt(record.name, record.value, ttl=record.ttl)

