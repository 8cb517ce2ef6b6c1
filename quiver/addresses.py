"""Mailbox validation for envelope addresses (RFC 5321 path syntax, conservatively).

Addresses go straight into MAIL FROM and RCPT TO, so anything that could break
out of the command line is refused here, at the lowest layer: CR, LF, NUL, other
control characters, spaces, angle brackets. Domains are returned as A-labels so
MX lookups and the wire see ASCII only.
"""

from __future__ import annotations

import functools
import re

MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path limit less the angle brackets
MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_LABEL = 63

# Dot-atom local part (RFC 5322 atext) or a quoted string without controls.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_DOT_ATOM = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_LOCAL_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>]")


class AddressError(ValueError):
    """An address that cannot be used on the wire; the message says which rule."""


# Recipients' domains repeat (a campaign goes to a few thousand domains, most of it
# to a handful): each message checks its sender's and each recipient's.
@functools.lru_cache(maxsize=8192)
def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain; IDNs are converted (IDNA 2003 via the codec).
    Cached: the same answer (or the same AddressError, made again) for the same text."""
    if not domain:
        raise AddressError("empty domain")
    if domain.endswith("."):
        domain = domain[:-1]
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError as exc:
        raise AddressError(f"domain {domain!r} is not a valid IDN: {exc}") from None
    ascii_domain = ascii_domain.lower()
    if len(ascii_domain) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} characters")
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise AddressError(f"domain {domain!r} needs at least two labels")
    for label in labels:
        if len(label) > MAX_LABEL or not _LABEL.match(label):
            raise AddressError(f"domain {domain!r} has an invalid label {label!r}")
    if labels[-1].isdigit():
        raise AddressError(f"domain {domain!r} looks like an IP address (address literals refused)")
    return ascii_domain


def normalize_address(address: str) -> str:
    """Validate a mailbox and return it with an A-label, lower-case domain.

    The local part keeps its case (RFC 5321 2.4: only the receiving host may fold it).
    """
    if not isinstance(address, str):
        raise AddressError(f"expected a string, got {type(address).__name__}")
    if _FORBIDDEN.search(address):
        raise AddressError("contains a control character, space, '<' or '>'")
    if address.count("@") < 1:
        raise AddressError("missing '@'")
    local, _, domain = address.rpartition("@")
    if not local:
        raise AddressError("empty local part")
    if not local.isascii():
        raise AddressError("non-ASCII local part (SMTPUTF8) is not supported")
    if len(local) > MAX_LOCAL:
        raise AddressError(f"local part longer than {MAX_LOCAL} characters")
    if not (_LOCAL_DOT_ATOM.match(local) or _LOCAL_QUOTED.match(local)):
        raise AddressError(f"local part {local!r} is not a dot-atom or quoted string")
    result = f"{local}@{normalize_domain(domain)}"
    if len(result) > MAX_ADDRESS:
        raise AddressError(f"longer than {MAX_ADDRESS} characters")
    return result


def domain_of(address: str) -> str:
    """The domain of an already-normalized address."""
    return address.rpartition("@")[2]
