"""The records a local DNS server answers with: a small, validated zone.

Pure data, no network. The builtin responder and the dnsmasq runner both serve
a `Zone`; the checks live here so both refuse the same mistakes (an RRset with
two TTLs, a null MX beside a real one, an IPv6 address in an A record).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

RecordType = Literal["MX", "A", "AAAA", "TXT", "PTR"]

DEFAULT_TTL = 300
# RFC 1035 3.3: a <character-string> carries at most 255 bytes; longer TXT data
# (a DKIM RSA-2048 key is about 400 bytes) is split over several of them, and
# verifiers concatenate them (RFC 6376 3.6.2.2, RFC 7208 3.3).
MAX_CHARACTER_STRING = 255
MAX_TTL = 2**31 - 1  # RFC 2181 8
MAX_LABEL = 63
MAX_NAME = 253
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_*")


def normalise_name(name: str) -> str:
    """Lower-case, no trailing dot; "" is the root. Raises ValueError on a malformed name."""
    text = name.strip().rstrip(".").lower() if name.strip() != "." else ""
    if not text:
        return ""
    if len(text) > MAX_NAME:
        raise ValueError(f"DNS name {name!r} is longer than {MAX_NAME} characters")
    for label in text.split("."):
        if not label or len(label) > MAX_LABEL:
            raise ValueError(f"DNS name {name!r} has an empty label or one over {MAX_LABEL}")
        if not set(label) <= _NAME_CHARS:
            raise ValueError(
                f"DNS name {name!r} has characters outside letters, digits, '-' and '_' "
                "(write internationalised names in their xn-- form)"
            )
    return text


@dataclass(frozen=True)
class Mx:
    preference: int
    exchange: str  # normalised; "" is the root, i.e. RFC 7505's null MX

    @property
    def is_null(self) -> bool:
        return self.exchange == ""


@dataclass(frozen=True)
class Record:
    name: str
    type: RecordType
    ttl: int
    value: Mx | str | tuple[bytes, ...]  # MX | address text or PTR target | TXT strings

    def text(self) -> str:
        """Presentation format of the data, as in a zone file."""
        if isinstance(self.value, Mx):
            return f"{self.value.preference} {self.value.exchange}."
        if isinstance(self.value, str):
            return f"{self.value}." if self.type == "PTR" else self.value
        return " ".join(
            '"' + s.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"') + '"'
            for s in self.value
        )


def split_txt(text: str | bytes) -> tuple[bytes, ...]:
    """TXT data as character-strings of at most 255 bytes (UTF-8 for str)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if not data:
        return (b"",)
    return tuple(
        data[i : i + MAX_CHARACTER_STRING] for i in range(0, len(data), MAX_CHARACTER_STRING)
    )


def reverse_name(ip: str) -> str:
    """The PTR owner name of an IPv4 or IPv6 address, without the final dot."""
    return ipaddress.ip_address(ip).reverse_pointer


def _check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"TTL must be an integer from 0 to {MAX_TTL}, got {ttl!r}")
    return ttl


class Zone:
    """Records by (name, type). Adding an identical record twice keeps one."""

    def __init__(self) -> None:
        self._rrsets: dict[tuple[str, RecordType], list[Record]] = {}

    def _add(self, name: str, rtype: RecordType, value: Mx | str | tuple[bytes, ...],
             ttl: int) -> Record:
        record = Record(normalise_name(name), rtype, _check_ttl(ttl), value)
        if not record.name:
            raise ValueError("records at the root name are not supported")
        rrset = self._rrsets.setdefault((record.name, rtype), [])
        # RFC 2181 5.2: all records of an RRset share one TTL.
        if rrset and rrset[0].ttl != record.ttl:
            raise ValueError(
                f"{record.name} {rtype} already has TTL {rrset[0].ttl}; "
                f"an RRset cannot also have TTL {record.ttl}"
            )
        if record not in rrset:
            rrset.append(record)
        return record

    def add_mx(self, domain: str, host: str, preference: int = 10, *,
               ttl: int = DEFAULT_TTL) -> Record:
        if isinstance(preference, bool) or not 0 <= preference <= 65535:
            raise ValueError(f"MX preference must be 0..65535, got {preference!r}")
        exchange = normalise_name(host)
        if not exchange:
            raise ValueError(f"MX host for {domain} is the root; use add_null_mx for a null MX")
        if any(r.value == Mx(0, "") for r in self.rrset(domain, "MX")):
            raise ValueError(f"{domain} has a null MX; RFC 7505 allows no other MX beside it")
        return self._add(domain, "MX", Mx(preference, exchange), ttl)

    def add_null_mx(self, domain: str, *, ttl: int = DEFAULT_TTL) -> Record:
        """RFC 7505 `MX 0 .`: the domain accepts no mail."""
        if any(r.value != Mx(0, "") for r in self.rrset(domain, "MX")):
            raise ValueError(f"{domain} already has MX records; a null MX must be the only one")
        return self._add(domain, "MX", Mx(0, ""), ttl)

    def add_a(self, name: str, ip: str, *, ttl: int = DEFAULT_TTL) -> Record:
        address = ipaddress.ip_address(ip)
        if not isinstance(address, ipaddress.IPv4Address):
            raise ValueError(f"A record needs an IPv4 address, got {ip!r} (use add_aaaa)")
        return self._add(name, "A", str(address), ttl)

    def add_aaaa(self, name: str, ip: str, *, ttl: int = DEFAULT_TTL) -> Record:
        address = ipaddress.ip_address(ip)
        if not isinstance(address, ipaddress.IPv6Address):
            raise ValueError(f"AAAA record needs an IPv6 address, got {ip!r} (use add_a)")
        return self._add(name, "AAAA", str(address), ttl)

    def add_txt(self, name: str, text: str | bytes, *, ttl: int = DEFAULT_TTL) -> Record:
        """One TXT record; text over 255 bytes is split into several character-strings."""
        return self._add(name, "TXT", split_txt(text), ttl)

    def add_ptr(self, ip: str, host: str, *, ttl: int = DEFAULT_TTL) -> Record:
        """The reverse record of `ip` (its in-addr.arpa or ip6.arpa name) naming `host`."""
        target = normalise_name(host)
        if not target:
            raise ValueError(f"PTR target for {ip} is the root")
        return self._add(reverse_name(ip), "PTR", target, ttl)

    def rrset(self, name: str, rtype: RecordType) -> list[Record]:
        return list(self._rrsets.get((normalise_name(name), rtype), ()))

    def records(self) -> list[Record]:
        return [r for rrset in self._rrsets.values() for r in rrset]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __len__(self) -> int:
        return sum(len(rrset) for rrset in self._rrsets.values())

    def names(self) -> set[str]:
        """Every name that exists, including empty non-terminals such as
        `_domainkey.example.test` above `sel._domainkey.example.test` (RFC 8020:
        those answer NODATA, not NXDOMAIN)."""
        existing: set[str] = set()
        for name, _ in self._rrsets:
            labels = name.split(".")
            existing.update(".".join(labels[i:]) for i in range(len(labels)))
        return existing

    def name_exists(self, name: str) -> bool:
        return normalise_name(name) in self.names()

    def zone_file(self) -> str:
        """The zone in master-file form, for logs and for reading it at a glance."""
        return "".join(f"{r.name}. {r.ttl} IN {r.type} {r.text()}\n" for r in self.records())
