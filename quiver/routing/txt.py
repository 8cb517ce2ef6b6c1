"""TXT lookups over the DNS protocol (dnspython), for DKIM public keys.

Same resolver shape as `routing.mx.MxResolver`: the system's nameservers in
production, an explicit (ip, port) list for the local stack and tests, so a key
published in the local DNS server is found exactly as a real one would be.
Synchronous, because dkimpy calls its `dnsfunc` synchronously (from a Lambda
handler, or a worker thread).
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

# A TXT record set larger than this is not a DKIM key (an RSA-4096 key is ~800 bytes);
# refusing it bounds what one lookup may hand the verifier.
MAX_TXT_BYTES = 8192


class TxtLookupError(Exception):
    """The resolver could not answer (timeout, SERVFAIL): not the same as "no record"."""


class TxtResolver:
    def __init__(
        self,
        *,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [ip for ip, _ in nameservers]
            self._resolver.port = nameservers[0][1]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 3.0)

    def lookup(self, name: str) -> bytes | None:
        """The first TXT record at `name`, its strings joined (RFC 6376 3.6.2.2);
        None when the name or the record does not exist. Raises TxtLookupError."""
        try:
            answer = self._resolver.resolve(name, dns.rdatatype.TXT, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError) as exc:
            raise TxtLookupError(f"TXT {name}: {exc}") from None
        except dns.exception.DNSException as exc:
            # A name that is not a DNS name (too long, empty label) has no record.
            if isinstance(exc, dns.name.NameTooLong | dns.name.EmptyLabel | dns.name.LabelTooLong):
                return None
            raise TxtLookupError(f"TXT {name}: {exc}") from None
        if answer.rrset is None:
            return None
        for record in answer.rrset:
            data = b"".join(record.strings)
            if len(data) > MAX_TXT_BYTES:
                raise TxtLookupError(f"TXT {name}: a record of {len(data)} bytes")
            return data
        return None

    def dkimpy_dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        """`lookup` in the form dkimpy's `dnsfunc=` takes (name as bytes; its timeout
        is ignored: this resolver's own lifetime bounds the lookup)."""
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        return self.lookup(text)
