"""Synchronous DNS lookups for preflight checks, with one bounded lifetime per query.

The system's nameservers by default, or one HOST:PORT (the local DNS server in tests,
or an authoritative server to check records before they propagate). "Does not
exist" (NXDOMAIN, NODATA) is an empty answer; a server that cannot answer raises
LookupFailed, which a check reports as unknown rather than missing.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

DEFAULT_TIMEOUT = 5.0
# Bytes of TXT data kept per name: SPF and DKIM records are far below this, and a
# hostile zone cannot make one lookup hand the checker megabytes.
MAX_TXT_BYTES = 16384


class LookupFailed(Exception):
    """The resolver gave no answer (timeout, SERVFAIL, refused): not "no record"."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or a bare address (port 53); raises ValueError."""
    host, port = spec, "53"
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"nameserver {spec!r}: unclosed '['")
        host, rest = spec[1:end], spec[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {spec!r}: expected [ADDRESS]:PORT")
            port = rest[1:]
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"nameserver {spec!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"nameserver {spec!r}: port {port!r} is not 1-65535")
    return address, int(port)


class Lookup:
    def __init__(
        self, *, nameserver: tuple[str, int] | None = None, timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 2.0)

    def _answer(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        try:
            answer = self._resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                            search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong):
            return []  # not a DNS name, so nothing can be published there
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{rdtype} {name}: {exc}") from None
        except OSError as exc:
            raise LookupFailed(f"{rdtype} {name}: {exc}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[str]:
        """Each TXT record at `name`, its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        out: list[str] = []
        total = 0
        for record in self._answer(name, "TXT"):
            data = b"".join(record.strings)  # type: ignore[attr-defined]
            total += len(data)
            if total > MAX_TXT_BYTES:
                raise LookupFailed(f"TXT {name}: more than {MAX_TXT_BYTES} bytes")
            out.append(data.decode("utf-8", errors="replace"))
        return out

    def addresses(self, name: str, *, family: int = 0) -> list[str]:
        """A (family 4), AAAA (6) or both (0) addresses of `name`."""
        types = {4: ("A",), 6: ("AAAA",)}.get(family, ("A", "AAAA"))
        return [r.to_text() for rdtype in types for r in self._answer(name, rdtype)]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs; exchange "" is a null MX (RFC 7505)."""
        out: list[tuple[int, str]] = []
        for record in self._answer(name, "MX"):
            exchange: dns.name.Name = record.exchange  # type: ignore[attr-defined]
            host = "" if exchange == dns.name.root else exchange.to_text(omit_final_dot=True)
            out.append((int(record.preference), host.lower()))  # type: ignore[attr-defined]
        return sorted(out)

    def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(ip).to_text()
        return [r.target.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
                for r in self._answer(name, "PTR")]
