"""Reading the load balancer's PROXY header (v1 or v2) off a stream before the greeting."""

from __future__ import annotations

import asyncio
import struct

from quiver.smtp.proxy_decode import ProxyHeader, decode
from quiver.smtp.proxy_header import V2_FIXED_LENGTH, V2_SIGNATURE, ProxyProtocolError

# The shortest v1 header ("PROXY UNKNOWN\r\n") is longer than this, and v2's signature
# is exactly this long: reading it never waits for bytes a client would not send.
_FIRST_READ = len(V2_SIGNATURE)


async def read_proxy_header(reader: asyncio.StreamReader) -> ProxyHeader:
    """The header at the start of `reader`, consuming exactly its bytes.

    Raises ProxyProtocolError (not a valid header) or asyncio.IncompleteReadError
    (the connection ended first)."""
    data = await reader.readexactly(_FIRST_READ)
    while True:
        header, used = decode(data)
        if header is not None:
            if used != len(data):  # cannot happen: every read below stops at the end
                raise ProxyProtocolError("PROXY header decoded short of the bytes read")
            return header
        if data.startswith(V2_SIGNATURE):
            if len(data) < V2_FIXED_LENGTH:
                data += await reader.readexactly(V2_FIXED_LENGTH - len(data))
            else:
                (length,) = struct.unpack("!H", data[14:16])
                data += await reader.readexactly(V2_FIXED_LENGTH + length - len(data))
        else:
            # v1: one line of at most 107 bytes; the decoder refuses anything longer.
            data += await reader.readexactly(1)
