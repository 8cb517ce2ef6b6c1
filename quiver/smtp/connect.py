"""Opening the TCP connection for a session: bound to the egress IP, or through an
HAProxy egress node with the PROXY header written before any byte of SMTP."""

from __future__ import annotations

import asyncio
import socket

from quiver.smtp import proxy_header
from quiver.smtp.reply import Reply, local_reply


class ConnectFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


async def open_socket(
    *, ip: str, port: int, local_ip: str | None, frontend: tuple[str, int] | None,
    proxy_version: int, timeout: float,
) -> socket.socket:
    """A connected non-blocking socket to ip:port, or to `frontend` with the PROXY
    header naming ip:port already sent. ConnectFailed (a 421 to defer with) otherwise."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    peer = frontend if frontend is not None else (ip, port)
    try:
        if frontend is None and local_ip:
            sock.bind((local_ip, 0))
        await asyncio.wait_for(loop.sock_connect(sock, peer), timeout)
        if frontend is not None:
            # The header names the destination; the proxy connects onward from its
            # source IP. It must precede any byte of SMTP.
            local = sock.getsockname()
            header = proxy_header.encode(
                proxy_version, src=(local[0], local[1]), dst=(ip, port))
            await asyncio.wait_for(loop.sock_sendall(sock, header), timeout)
    except (OSError, TimeoutError) as exc:
        sock.close()
        where = f"proxy {peer[0]}:{peer[1]}" if frontend is not None else f"{ip}:{port}"
        text = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConnectFailed(local_reply(421, "4.4.1", f"connect to {where}: {text}")) from None
    return sock
