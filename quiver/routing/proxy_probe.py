"""Probe an egress node's health endpoint (HAProxy `monitor-uri /health`).

The sender calls this before choosing a node's sources (quiver.scheduler.health): a
node that is down, draining or slow to answer is treated as unhealthy. The proxy
tier's renderer takes HEALTH_URI from here, so both ends name one path. Plain
asyncio streams, one request, one status line read: no HTTP library, and nothing a
broken or hostile endpoint sends can make the probe read more than MAX_STATUS_LINE
bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

# The path HAProxy answers with `monitor-uri` on each node's health port.
HEALTH_URI = "/health"
# An HTTP status line is short; anything longer is not a health answer.
MAX_STATUS_LINE = 1024
_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: |\r?\n)")


async def probe(address: str, port: int, *, timeout: float) -> bool:
    """True when GET /health on (address, port) answers 200 within `timeout` seconds."""
    if not _HOST.fullmatch(address):
        raise ValueError(f"not an address or host name: {address!r}")
    if isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"not a port: {port!r}")
    host = f"[{address}]" if ":" in address else address
    request = (
        f"GET {HEALTH_URI} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: quiver-health\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port, limit=MAX_STATUS_LINE)
            try:
                writer.write(request)
                await writer.drain()
                line = await reader.readuntil(b"\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    match = _STATUS.match(line)
    return match is not None and match.group(1) == b"200"
