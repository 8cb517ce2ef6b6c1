"""PROXY protocol headers, versions 1 and 2 (haproxy.org proxy-protocol.txt): encoding.

A sender opens TCP to the egress proxy that owns the chosen source address and
writes one of these headers first: its *destination* is the receiving MX that
the proxy connects onward to. Encoding is strict so a header never names
something the caller did not mean (no hostnames, no zone ids, no out-of-range
ports, no mixed families). The strict decoder (the SMTP ingress reads the NLB's
headers with it, a test MX the sender's) is quiver.smtp.proxy_decode.

Limits are named constants below, where each bound's reason is given.
"""

from __future__ import annotations

import ipaddress
import struct

# Version 1: "PROXY TCP6 <39> <39> <5> <5>\r\n" is the longest legal line, and the
# receiver must declare the header invalid if no CRLF appears within this many bytes.
V1_MAX_LINE = 107
V1_PREFIX = b"PROXY "
# Version 2: a fixed 12-byte signature, then version/command, family/transport and
# a big-endian payload length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
V2_VERSION = 0x2
V2_CMD_LOCAL = 0x0
V2_CMD_PROXY = 0x1
V2_FAM_UNSPEC = 0x00
V2_FAM_TCP4 = 0x11
V2_FAM_TCP6 = 0x21
V2_ADDR_LEN_TCP4 = 12  # 4 + 4 address bytes, 2 + 2 port bytes
V2_ADDR_LEN_TCP6 = 36  # 16 + 16 address bytes, 2 + 2 port bytes
# The spec allows a 64 KiB payload, but a header must fit in the first segment
# (it is "always smaller than an MSS"); refusing more bounds what a peer can make
# a receiver buffer before any protocol data.
V2_MAX_PAYLOAD = 1024
V2_TLV_HEADER = 3
MAX_PORT = 65535


class ProxyProtocolError(ValueError):
    """A header that must not be sent or must be refused; the message says why."""



Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoint(what: str, endpoint: tuple[str, int]) -> tuple[Address, int]:
    if not isinstance(endpoint, tuple) or len(endpoint) != 2:
        raise ProxyProtocolError(f"{what}: expected (address, port), got {endpoint!r}")
    host, port = endpoint
    if not isinstance(host, str):
        raise ProxyProtocolError(f"{what}: address must be a string, got {host!r}")
    try:
        # A zone id ("fe80::1%eth0") is local to this host and has no wire form.
        if "%" in host:
            raise ValueError
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ProxyProtocolError(f"{what}: not an IP address: {host!r}") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ProxyProtocolError(f"{what}: port must be an integer 0-{MAX_PORT}, got {port!r}")
    return address, port


def _pair(
    src: tuple[str, int], dst: tuple[str, int]
) -> tuple[tuple[Address, int], tuple[Address, int]]:
    s, d = _endpoint("src", src), _endpoint("dst", dst)
    if s[0].version != d[0].version:
        raise ProxyProtocolError(
            f"src and dst must be the same address family (IPv{s[0].version} vs "
            f"IPv{d[0].version}); map one of them first"
        )
    return s, d


def ipv6_text(address: ipaddress.IPv6Address) -> str:
    """RFC 5952 text in hex groups only: the v1 grammar has no dotted-quad IPv6 form."""
    groups = [int.from_bytes(address.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best_start, best_len, start = -1, 0, -1
    for i, group in enumerate([*groups, 1]):
        if group == 0 and start < 0:
            start = i
        elif group != 0 and start >= 0:
            if i - start > best_len and i - start > 1:
                best_start, best_len = start, i - start
            start = -1
    text = [f"{g:x}" for g in groups]
    if best_start < 0:
        return ":".join(text)
    head = ":".join(text[:best_start])
    tail = ":".join(text[best_start + best_len :])
    return f"{head}::{tail}"


def address_text(address: Address) -> str:
    return ipv6_text(address) if isinstance(address, ipaddress.IPv6Address) else str(address)


def encode_v1(*, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A version 1 (text) header for a TCP connection from `src` to `dst`."""
    (saddr, sport), (daddr, dport) = _pair(src, dst)
    proto = "TCP4" if saddr.version == 4 else "TCP6"
    text = f"PROXY {proto} {address_text(saddr)} {address_text(daddr)} {sport} {dport}\r\n"
    line = text.encode("ascii")
    assert len(line) <= V1_MAX_LINE  # guaranteed by the address and port checks
    return line


def encode_v2(*, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A version 2 (binary) header, command PROXY, for TCP from `src` to `dst`."""
    (saddr, sport), (daddr, dport) = _pair(src, dst)
    family = V2_FAM_TCP4 if saddr.version == 4 else V2_FAM_TCP6
    payload = saddr.packed + daddr.packed + struct.pack("!HH", sport, dport)
    return (
        V2_SIGNATURE
        + bytes([(V2_VERSION << 4) | V2_CMD_PROXY, family])
        + struct.pack("!H", len(payload))
        + payload
    )


def encode(version: int, *, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A header of the given version (1 or 2), as `policy.proxy.protocol` names it."""
    if version == 1 and not isinstance(version, bool):
        return encode_v1(src=src, dst=dst)
    if version == 2:
        return encode_v2(src=src, dst=dst)
    raise ProxyProtocolError(f"unsupported PROXY protocol version {version!r} (1 or 2)")
