"""An authoritative DNS responder in this process, over UDP and TCP on one port.

The fallback that always works: no binary needed, and it can serve every
record a `Zone` holds. It answers authoritatively for every name (it is the
only server the local sender asks): NXDOMAIN for a name that does not exist,
NODATA (NOERROR, empty answer) for a name that exists without the asked type,
and over UDP a truncated reply (TC) when the answer does not fit, so the
resolver retries over TCP as it would against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.rrset
from dns.rdatatype import RdataType

from quiver.devstack.loop_thread import LoopThread
from quiver.devstack.servers.dns_zone import Mx, Zone

# RFC 1035 4.2.1: a UDP answer without EDNS is at most 512 bytes.
CLASSIC_UDP_SIZE = 512
# DNS flag day 2020: servers cap EDNS UDP answers at 1232 bytes to avoid IP
# fragmentation; capping here makes large answers take the TCP path they take
# against real servers.
MAX_UDP_SIZE = 1232
MAX_TCP_SIZE = 65535
TCP_IDLE_SECONDS = 10.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
BIND_ATTEMPTS = 20


class Answers:
    """A zone indexed for lookups: RRsets by (name, type) and the set of existing names."""

    def __init__(self, zone: Zone) -> None:
        self.names = zone.names()
        self.rrsets: dict[tuple[str, RdataType], tuple[int, list[dns.rdata.Rdata]]] = {}
        for record in zone.records():
            rdtype = dns.rdatatype.from_text(record.type)
            rdata: dns.rdata.Rdata
            if isinstance(record.value, Mx):
                exchange = dns.name.from_text(record.value.exchange or ".")
                rdata = dns.rdtypes.ANY.MX.MX(  # type: ignore[no-untyped-call]
                    dns.rdataclass.IN, dns.rdatatype.MX, record.value.preference, exchange
                )
            elif isinstance(record.value, str):
                rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, record.text())
            else:
                rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, record.value)
            _, rdatas = self.rrsets.setdefault((record.name, rdtype), (record.ttl, []))
            rdatas.append(rdata)

    def lookup(self, qname: dns.name.Name, rdtype: RdataType) -> list[dns.rrset.RRset] | None:
        """RRsets answering the question; [] for NODATA, None for NXDOMAIN."""
        key = qname.to_text(omit_final_dot=True).lower()
        if key not in self.names:
            return None
        types = [t for (n, t) in self.rrsets if n == key] if rdtype == dns.rdatatype.ANY else [
            rdtype
        ]
        out = []
        for t in types:
            found = self.rrsets.get((key, t))
            if found is not None:
                ttl, rdatas = found
                # The owner keeps the query's spelling (0x20 case randomisation).
                rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, t)
                for rdata in rdatas:
                    rrset.add(rdata, ttl)
                out.append(rrset)
        return out


def _formerr(wire: bytes) -> bytes | None:
    """A bare FORMERR for a query too broken to parse; nothing if there is no header."""
    if len(wire) < 12:
        return None
    query_id, flags = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None  # never answer a response
    reply_flags = dns.flags.QR | (flags & dns.flags.RD) | dns.rcode.FORMERR
    return struct.pack("!HHHHHH", query_id, reply_flags, 0, 0, 0, 0)


def respond(answers: Answers, wire: bytes, *, transport: Literal["udp", "tcp"]) -> bytes | None:
    """The wire reply to one query, or None when nothing should be sent."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return _formerr(wire)
    if query.flags & dns.flags.QR:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
    elif len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
    elif query.question[0].rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY):
        response.set_rcode(dns.rcode.REFUSED)
    else:
        question = query.question[0]
        found = answers.lookup(question.name, question.rdtype)
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.extend(found)
    if transport == "tcp":
        limit = MAX_TCP_SIZE
    elif query.edns >= 0:
        limit = max(CLASSIC_UDP_SIZE, min(query.payload, MAX_UDP_SIZE))
    else:
        limit = CLASSIC_UDP_SIZE
    try:
        reply: bytes = response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        reply = response.to_wire(max_size=limit)
    return reply


# A name under .invalid (RFC 6761) so the probe can never collide with a zone's records.
PROBE_NAME = "quiver-ready-probe.invalid."


def wait_until_answering(
    address: tuple[str, int], *, timeout: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll with a real query until the server answers (any rcode); False on timeout or death."""
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(PROBE_NAME, "A")
    while time.monotonic() < deadline and alive():
        try:
            dns.query.udp(query, address[0], port=address[1], timeout=0.2)
            return True
        except (dns.exception.DNSException, OSError):
            time.sleep(0.05)
    return False


class _UdpResponder(asyncio.DatagramProtocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = respond(self.answers, data, transport="udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound to the same port (a free one when port is 0)."""
    for _ in range(BIND_ATTEMPTS if port == 0 else 1):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
            chosen = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((host, chosen))
            except OSError as error:
                tcp.close()
                if error.errno != errno.EADDRINUSE or port != 0:
                    raise
                udp.close()
                continue  # the TCP side of this port is taken; try another port
            tcp.listen(128)
            return udp, tcp
        except BaseException:
            udp.close()
            raise
    raise OSError(errno.EADDRINUSE, f"no port on {host} free for both UDP and TCP")


class BuiltinDnsServer:
    """The builtin responder, on an asyncio loop in a daemon thread."""

    def __init__(self, zone: Zone, *, host: str = "127.0.0.1", port: int = 0,
                 fallback_reason: str | None = None) -> None:
        self.kind: Literal["dnsmasq", "builtin"] = "builtin"
        # Why dnsmasq was not used when it was preferred; None if builtin was asked for.
        self.fallback_reason = fallback_reason
        self.answers = Answers(zone)
        udp, tcp = _bind_pair(host, port)
        self.address: tuple[str, int] = (host, udp.getsockname()[1])
        self._thread = LoopThread("quiver-local-dns")
        self._loop = self._thread.loop
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._stopped = False
        try:
            self._thread.run(self._start(udp, tcp), timeout=START_TIMEOUT)
        except BaseException:
            udp.close()
            tcp.close()
            self._halt()
            raise

    async def _start(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpResponder(self.answers), sock=udp
        )
        self._udp_transport = transport
        self._tcp_server = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        try:
            while True:
                # RFC 7766: several queries may share one connection, each with a length prefix.
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                wire = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", header)[0]), TCP_IDLE_SECONDS
                )
                reply = respond(self.answers, wire, transport="tcp")
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _shutdown(self) -> None:
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            for writer in list(self._tcp_writers):
                writer.close()  # their handlers see EOF and finish
            await self._tcp_server.wait_closed()
            for _ in range(100):  # bounded: let the handlers run their finally blocks
                if not self._tcp_writers:
                    break
                await asyncio.sleep(0.01)

    def _halt(self) -> None:
        self._thread.halt(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(TimeoutError):
            self._thread.run(self._shutdown(), timeout=STOP_TIMEOUT)
        self._halt()

    def __enter__(self) -> BuiltinDnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
