"""PROXY protocol headers, versions 1 and 2: strict decoding, for the SMTP ingress
behind a Network Load Balancer, the dev stack's receiving MX and the tests.

Decoding is strict so the ingress, a test MX or a rig sees exactly what a real
receiver would accept, and refuses the rest with a reason. The sender's encoder, and the limits
both sides share, are in quiver.smtp.proxy_header.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Literal

from quiver.smtp.proxy_header import (
    MAX_PORT,
    V1_MAX_LINE,
    V1_PREFIX,
    V2_ADDR_LEN_TCP4,
    V2_ADDR_LEN_TCP6,
    V2_CMD_LOCAL,
    V2_CMD_PROXY,
    V2_FAM_TCP4,
    V2_FAM_TCP6,
    V2_FAM_UNSPEC,
    V2_FIXED_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    V2_TLV_HEADER,
    V2_VERSION,
    ProxyProtocolError,
    address_text,
    ipv6_text,
)

Family = Literal["TCP4", "TCP6", "UNKNOWN"]
Command = Literal["PROXY", "LOCAL"]

_V1_PORT = re.compile(rb"^(0|[1-9][0-9]{0,4})$")
_V1_IPV4 = re.compile(rb"^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$")
_V1_IPV6 = re.compile(rb"^[0-9A-Fa-f:]{2,39}$")



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
        return ipv6_text(ipaddress.IPv6Address(raw.decode("ascii")))
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
    src = address_text(addr(payload[:width])), sport
    dst = address_text(addr(payload[width : 2 * width])), dport
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
