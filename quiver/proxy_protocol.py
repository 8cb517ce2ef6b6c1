"""PROXY protocol headers, versions 1 and 2 (haproxy.org proxy-protocol.txt).

A sender opens TCP to the egress proxy that owns the chosen source address and
writes one of these headers first: its *destination* is the receiving MX that
the proxy connects onward to. Encoding is strict so a header never names
something the caller did not mean (no hostnames, no zone ids, no out-of-range
ports, no mixed families); decoding is strict so a test MX or a rig sees
exactly what a real receiver would accept, and refuses the rest with a reason.

Limits are named constants below, where each bound's reason is given.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Literal

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

Family = Literal["TCP4", "TCP6", "UNKNOWN"]
Command = Literal["PROXY", "LOCAL"]

_V1_PORT = re.compile(rb"^(0|[1-9][0-9]{0,4})$")
_V1_IPV4 = re.compile(rb"^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$")
_V1_IPV6 = re.compile(rb"^[0-9A-Fa-f:]{2,39}$")


class ProxyProtocolError(ValueError):
    """A header that must not be sent or must be refused; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A decoded header. `src`/`dst` are None for LOCAL, v1 UNKNOWN and v2 UNSPEC."""

    version: Literal[1, 2]
    command: Command
    family: Family
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    # v2 type-length-value extensions, in wire order; always empty for v1.
    tlvs: tuple[tuple[int, bytes], ...] = ()


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


def _ipv6_text(address: ipaddress.IPv6Address) -> str:
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


def _text(address: Address) -> str:
    return _ipv6_text(address) if isinstance(address, ipaddress.IPv6Address) else str(address)


def encode_v1(*, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A version 1 (text) header for a TCP connection from `src` to `dst`."""
    (saddr, sport), (daddr, dport) = _pair(src, dst)
    proto = "TCP4" if saddr.version == 4 else "TCP6"
    line = f"PROXY {proto} {_text(saddr)} {_text(daddr)} {sport} {dport}\r\n".encode("ascii")
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


def decode(data: bytes) -> tuple[ProxyHeader | None, int]:
    """Decode the header at the start of `data`.

    Returns (header, bytes consumed); (None, 0) when `data` is a valid but
    incomplete beginning of a header (read more and call again). Raises
    ProxyProtocolError when `data` does not start with a valid header.
    """
    data = bytes(data)
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _decode_v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _decode_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header (neither the v1 nor the v2 signature)")


def _decode_v1(data: bytes) -> tuple[ProxyHeader | None, int]:
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise ProxyProtocolError(f"v1 header without CRLF in the first {V1_MAX_LINE} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header line must end with CRLF (bare CR or LF found)")
        return None, 0
    line, consumed = data[:end], end + 2
    if b"\r" in line or b"\n" in line or not line.isascii():
        raise ProxyProtocolError("v1 header contains a bare CR/LF or a non-ASCII byte")
    fields = line.split(b" ")
    proto = fields[1] if len(fields) > 1 else b""
    if proto == b"UNKNOWN":
        # The spec says a receiver ignores whatever follows UNKNOWN up to the CRLF.
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None), consumed
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto!r}")
    if len(fields) != 6:
        raise ProxyProtocolError(
            "v1 header must be 'PROXY <proto> <src> <dst> <sport> <dport>' "
            "with single spaces"
        )
    family: Family = "TCP4" if proto == b"TCP4" else "TCP6"
    src = _v1_address(fields[2], family, "source"), _v1_port(fields[4], "source")
    dst = _v1_address(fields[3], family, "destination"), _v1_port(fields[5], "destination")
    return ProxyHeader(1, "PROXY", family, src, dst), consumed


def _v1_address(raw: bytes, family: Family, what: str) -> str:
    try:
        if family == "TCP4":
            # Leading zeros are refused: some parsers read them as octal.
            if not _V1_IPV4.fullmatch(raw):
                raise ValueError
            return str(ipaddress.IPv4Address(raw.decode("ascii")))
        # Hex groups only: no zone id, no embedded dotted quad.
        if not _V1_IPV6.fullmatch(raw):
            raise ValueError
        return _ipv6_text(ipaddress.IPv6Address(raw.decode("ascii")))
    except ValueError:
        raise ProxyProtocolError(f"v1 {what} address {raw!r} is not a {family} address") from None


def _v1_port(raw: bytes, what: str) -> int:
    if not _V1_PORT.fullmatch(raw) or int(raw) > MAX_PORT:
        raise ProxyProtocolError(
            f"v1 {what} port {raw!r} must be 0-{MAX_PORT} without leading zeros"
        )
    return int(raw)


def _decode_v2(data: bytes) -> tuple[ProxyHeader | None, int]:
    if len(data) < V2_FIXED_LENGTH:
        if len(data) > len(V2_SIGNATURE) and data[12] >> 4 != V2_VERSION:
            raise ProxyProtocolError(f"v2 version nibble must be 2, got {data[12] >> 4}")
        return None, 0
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != V2_VERSION:
        raise ProxyProtocolError(f"v2 version nibble must be 2, got {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (V2_CMD_LOCAL, V2_CMD_PROXY):
        raise ProxyProtocolError(f"v2 command must be LOCAL (0) or PROXY (1), got {command}")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"v2 payload of {length} bytes exceeds {V2_MAX_PAYLOAD}")
    if len(data) < V2_FIXED_LENGTH + length:
        return None, 0
    payload = data[V2_FIXED_LENGTH : V2_FIXED_LENGTH + length]
    consumed = V2_FIXED_LENGTH + length
    if command == V2_CMD_LOCAL:
        # The proxy's own connection (a health check): addresses are to be ignored.
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, _tlvs(payload)), consumed
    if fam == V2_FAM_UNSPEC:
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, _tlvs(payload)), consumed
    family: Family
    addr: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    if fam == V2_FAM_TCP4:
        size, family, addr, width = V2_ADDR_LEN_TCP4, "TCP4", ipaddress.IPv4Address, 4
    elif fam == V2_FAM_TCP6:
        size, family, addr, width = V2_ADDR_LEN_TCP6, "TCP6", ipaddress.IPv6Address, 16
    else:
        raise ProxyProtocolError(
            f"v2 family/transport 0x{fam:02x} is not TCP over IPv4 (0x11) or IPv6 (0x21)"
        )
    if length < size:
        raise ProxyProtocolError(f"v2 {family} payload needs {size} bytes, length says {length}")
    sport, dport = struct.unpack("!HH", payload[2 * width : size])
    src = _text(addr(payload[:width])), sport
    dst = _text(addr(payload[width : 2 * width])), dport
    tlvs = _tlvs(payload[size:])
    return ProxyHeader(2, "PROXY", family, src, dst, tlvs), consumed


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if len(data) - at < V2_TLV_HEADER:
            raise ProxyProtocolError("v2 TLV area ends inside a TLV header")
        kind, size = data[at], struct.unpack("!H", data[at + 1 : at + 3])[0]
        at += V2_TLV_HEADER
        if at + size > len(data):
            raise ProxyProtocolError(f"v2 TLV 0x{kind:02x} of {size} bytes overruns the header")
        out.append((kind, data[at : at + size]))
        at += size
    return tuple(out)
