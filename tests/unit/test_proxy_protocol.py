"""PROXY protocol v1/v2: exact encodings, strict decoding, round trips and refusals."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.smtp.proxy_decode import ProxyHeader, decode
from quiver.smtp.proxy_header import (
    V1_MAX_LINE,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyProtocolError,
    encode,
    encode_v1,
    encode_v2,
)

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


def v2(ver_cmd: int, fam: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(payload)) + payload


# --- encoding ----------------------------------------------------------------------------


def test_v1_ipv4_exact_bytes():
    header = encode_v1(src=("192.0.2.7", 40123), dst=("203.0.113.25", 25))
    assert header == b"PROXY TCP4 192.0.2.7 203.0.113.25 40123 25\r\n"


def test_v1_ipv6_exact_bytes_use_rfc5952_text():
    header = encode_v1(src=("2001:DB8:0:0:0:0:0:1", 1), dst=("2001:db8:0:0:1:0:0:1", 25))
    assert header == b"PROXY TCP6 2001:db8::1 2001:db8::1:0:0:1 1 25\r\n"


def test_v1_ipv4_mapped_address_is_written_in_hex_groups():
    # The v1 grammar has hex groups only; "::ffff:10.0.0.1" would be refused by receivers.
    header = encode_v1(src=("::ffff:10.0.0.1", 1), dst=("::ffff:8.8.8.8", 25))
    assert header == b"PROXY TCP6 ::ffff:a00:1 ::ffff:808:808 1 25\r\n"


def test_v1_longest_header_fits_the_line_limit():
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    header = encode_v1(src=(full, 65535), dst=(full, 65535))
    assert len(header) == 104
    assert len(header) <= V1_MAX_LINE


def test_v2_ipv4_exact_bytes():
    header = encode_v2(src=("192.0.2.7", 40123), dst=("203.0.113.25", 25))
    assert header == (
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        b"\x21"  # version 2, command PROXY
        b"\x11"  # TCP over IPv4
        b"\x00\x0c"  # 12 address bytes follow
        b"\xc0\x00\x02\x07" b"\xcb\x00\x71\x19" b"\x9c\xbb" b"\x00\x19"
    )


def test_v2_ipv6_layout():
    header = encode_v2(src=("2001:db8::1", 1), dst=("2001:db8::2", 25))
    assert header[:12] == V2_SIGNATURE
    assert header[12:16] == b"\x21\x21\x00\x24"
    assert len(header) == 16 + 36
    assert header[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert header[32:48] == ipaddress.IPv6Address("2001:db8::2").packed
    assert header[48:] == b"\x00\x01\x00\x19"


def test_encode_dispatches_on_version():
    src, dst = ("192.0.2.1", 5), ("192.0.2.2", 25)
    assert encode(1, src=src, dst=dst) == encode_v1(src=src, dst=dst)
    assert encode(2, src=src, dst=dst) == encode_v2(src=src, dst=dst)


@pytest.mark.parametrize("version", [0, 3, True, "2"])
def test_encode_refuses_unknown_versions(version):
    with pytest.raises(ProxyProtocolError, match="version"):
        encode(version, src=("192.0.2.1", 1), dst=("192.0.2.2", 25))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        (("192.0.2.1", 1), ("2001:db8::1", 25), "same address family"),
        (("192.0.2.1", 1), ("mx.example.com", 25), "not an IP address"),
        (("192.0.2.1", 1), ("fe80::1%eth0", 25), "not an IP address"),
        (("192.0.2.1", 1), ("192.0.2.2\r\n", 25), "not an IP address"),
        (("192.0.2.1", 1), ("192.0.2.2", 65536), "port"),
        (("192.0.2.1", -1), ("192.0.2.2", 25), "port"),
        (("192.0.2.1", 1), ("192.0.2.2", True), "port"),
        (("192.0.2.1", 1), ("192.0.2.2", "25"), "port"),
        (("192.0.2.1", 1), ["192.0.2.2", 25], "expected"),
        (("192.0.2.1", 1), (b"192.0.2.2", 25), "string"),
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_encode_refuses_bad_endpoints(version, src, dst, message):
    with pytest.raises(ProxyProtocolError, match=message):
        encode(version, src=src, dst=dst)


# --- round trips -----------------------------------------------------------------------


@st.composite
def endpoints(draw):
    addresses = draw(st.sampled_from([ipv4, ipv6]))
    return (draw(addresses), draw(ports)), (draw(addresses), draw(ports))


def canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


@given(endpoints(), st.sampled_from([1, 2]), st.binary(max_size=64))
def test_round_trip_and_exact_consumption(pair, version, trailing):
    src, dst = pair
    header = encode(version, src=src, dst=dst)
    decoded, consumed = decode(header + trailing)
    assert consumed == len(header)
    assert decoded is not None
    assert decoded.version == version
    assert decoded.command == "PROXY"
    assert decoded.family == ("TCP4" if "." in src[0] and ":" not in src[0] else "TCP6")
    assert decoded.src is not None and decoded.dst is not None
    assert ipaddress.ip_address(decoded.src[0]) == ipaddress.ip_address(src[0])
    assert ipaddress.ip_address(decoded.dst[0]) == ipaddress.ip_address(dst[0])
    assert (decoded.src[1], decoded.dst[1]) == (src[1], dst[1])


@given(endpoints(), st.sampled_from([1, 2]), st.data())
def test_every_proper_prefix_asks_for_more(pair, version, data):
    src, dst = pair
    header = encode(version, src=src, dst=dst)
    cut = data.draw(st.integers(min_value=0, max_value=len(header) - 1))
    assert decode(header[:cut]) == (None, 0)


@given(st.ip_addresses(v=6))
def test_ipv6_text_is_canonical_hex(address):
    header = encode_v1(src=(str(address), 1), dst=(str(address), 2))
    text = header.split(b" ")[2].decode()
    assert "." not in text
    assert ipaddress.IPv6Address(text) == address
    if address.ipv4_mapped is None:
        assert text == address.compressed


# --- decoding: accepted forms -----------------------------------------------------------


def test_v1_unknown_short_and_long_forms():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"):
        header, consumed = decode(line + b"EHLO x\r\n")
        assert header == ProxyHeader(1, "PROXY", "UNKNOWN", None, None)
        assert consumed == len(line)


def test_v2_local_command_carries_no_addresses():
    raw = v2(0x20, 0x00, b"")
    assert decode(raw + b"220 ") == (ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), 16)


def test_v2_local_with_address_block_is_skipped():
    raw = v2(0x20, 0x11, bytes(12))
    header, consumed = decode(raw)
    assert header is not None and header.command == "LOCAL" and header.src is None
    assert consumed == 28


def test_v2_unspec_family_has_no_addresses():
    header, consumed = decode(v2(0x21, 0x00, b""))
    assert header == ProxyHeader(2, "PROXY", "UNKNOWN", None, None)
    assert consumed == 16


def test_v2_tlvs_are_returned_in_order():
    addresses = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 1000, 25)
    tlvs = b"\x04\x00\x00" + b"\x05\x00\x03abc"  # NOOP (empty), UNIQUE_ID "abc"
    header, consumed = decode(v2(0x21, 0x11, addresses + tlvs))
    assert header is not None
    assert header.dst == ("192.0.2.2", 25)
    assert header.tlvs == ((0x04, b""), (0x05, b"abc"))
    assert consumed == 16 + len(addresses) + len(tlvs)


def test_empty_and_signature_prefixes_ask_for_more():
    for data in (b"", b"P", b"PROXY", b"PROXY TCP4 1.2", b"\r", b"\r\n\r\n\x00", V2_SIGNATURE):
        assert decode(data) == (None, 0)


def test_v2_header_waits_for_its_whole_payload():
    header = encode_v2(src=("192.0.2.1", 1), dst=("192.0.2.2", 25))
    assert decode(header[:-1]) == (None, 0)


# --- decoding: refusals (each a way to make a receiver misread the stream) ---------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"EHLO example.com\r\n", id="plain-smtp"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"PROXZ TCP4", id="bad-prefix"),
        pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="lower-case"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIX\n", id="bad-v2-signature"),
    ],
)
def test_refuses_data_that_is_not_a_proxy_header(data):
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        decode(data)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "CRLF"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2\n1 2\r\n", "CR/LF"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r2\r\n", "CR/LF"),
        (b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1\t2\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n", "single spaces"),
        (b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY UNKNOWNX\r\n", "TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 010.0.0.1 192.0.2.2 1 25\r\n", "not a TCP4 address"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.256 1 25\r\n", "not a TCP4 address"),
        (b"PROXY TCP4 192.0.2.1 192.0.2 1 25\r\n", "not a TCP4 address"),
        (b"PROXY TCP4 192.0.2.1 2001:db8::1 1 25\r\n", "not a TCP4 address"),
        (b"PROXY TCP6 2001:db8::1 192.0.2.2 1 25\r\n", "not a TCP6 address"),
        (b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 25\r\n", "not a TCP6 address"),
        (b"PROXY TCP6 2001:db8::1 fe80::1%eth0 1 25\r\n", "not a TCP6 address"),
        (b"PROXY TCP6 2001:db8::1 2001:db8:::1 1 25\r\n", "not a TCP6 address"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 025\r\n", "leading zeros"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n", "0-65535"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 -25\r\n", "0-65535"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 +25\r\n", "0-65535"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 \xd9\xa2\xd9\xa5\r\n", "non-ASCII"),
    ],
)
def test_v1_refusals(line, message):
    with pytest.raises(ProxyProtocolError, match=message):
        decode(line)


def test_v1_without_crlf_within_the_line_limit_is_refused():
    line = b"PROXY TCP6 " + b"f" * (V1_MAX_LINE - len(b"PROXY TCP6 "))
    assert len(line) == V1_MAX_LINE
    assert decode(line[:-1]) == (None, 0)  # one byte short: may still end in time
    with pytest.raises(ProxyProtocolError, match="without CRLF"):
        decode(line)
    with pytest.raises(ProxyProtocolError, match="without CRLF"):
        decode(line + b"\r\n")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (v2(0x11, 0x11, bytes(12)), "version nibble"),
        (v2(0x31, 0x11, bytes(12)), "version nibble"),
        (V2_SIGNATURE + b"\x11", "version nibble"),
        (v2(0x22, 0x11, bytes(12)), "command"),
        (v2(0x2F, 0x11, bytes(12)), "command"),
        (v2(0x21, 0x12, bytes(12)), "0x12"),  # UDP over IPv4
        (v2(0x21, 0x31, bytes(216)), "0x31"),  # UNIX stream
        (v2(0x21, 0x41, bytes(12)), "0x41"),
        (v2(0x21, 0x11, bytes(8)), "needs 12 bytes"),
        (v2(0x21, 0x21, bytes(12)), "needs 36 bytes"),
        (v2(0x21, 0x11, bytes(12) + b"\x04\x00"), "inside a TLV header"),
        (v2(0x21, 0x11, bytes(12) + b"\x05\x00\x09abc"), "overruns"),
    ],
)
def test_v2_refusals(raw, message):
    with pytest.raises(ProxyProtocolError, match=message):
        decode(raw)


def test_v2_oversized_length_is_refused_before_the_payload_arrives():
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1)
    with pytest.raises(ProxyProtocolError, match="exceeds"):
        decode(fixed)
    at_limit = v2(0x21, 0x11, bytes(12) + b"\x04" + struct.pack("!H", V2_MAX_PAYLOAD - 15)
                  + bytes(V2_MAX_PAYLOAD - 15))
    header, consumed = decode(at_limit)
    assert header is not None and consumed == 16 + V2_MAX_PAYLOAD


def test_smtp_after_the_header_is_left_for_the_caller():
    header = encode_v1(src=("192.0.2.1", 1), dst=("192.0.2.2", 25))
    stream = header + b"220 mx ESMTP\r\n"
    _, consumed = decode(stream)
    assert stream[consumed:] == b"220 mx ESMTP\r\n"


# --- fuzzing: any input gives an answer or ProxyProtocolError, nothing else ---------------


def check_outcome(data: bytes) -> None:
    try:
        header, consumed = decode(data)
    except ProxyProtocolError:
        return
    if header is None:
        assert consumed == 0
    else:
        assert 0 < consumed <= len(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data):
    check_outcome(data)


@settings(max_examples=300)
@given(st.sampled_from([V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 "]),
       st.binary(max_size=120))
def test_fuzz_after_a_valid_signature(prefix, rest):
    check_outcome(prefix + rest)


@settings(max_examples=200)
@given(st.text(alphabet="0123456789abcdef:.ABCDEF", max_size=45), ports)
def test_fuzz_v1_addresses(text, port):
    line = f"PROXY TCP6 {text} ::1 {port} 25\r\n".encode()
    try:
        header, _ = decode(line)
    except ProxyProtocolError:
        return
    assert header is not None and header.src is not None
    assert ipaddress.IPv6Address(header.src[0]) == ipaddress.IPv6Address(text)
