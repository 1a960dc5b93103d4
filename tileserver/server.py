"""The HTTP protocol `tileserver serve` runs: uvicorn's, with Nagle's algorithm off.

With `--workers N` uvicorn hands its workers a listening socket made without a protocol
number; asyncio only sets TCP_NODELAY on connections whose socket says IPPROTO_TCP, so
every small response (JSON, a 304, an empty tile) waited ~40 ms for the client's delayed
ACK. A single worker's sockets come from getaddrinfo and were never affected.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayProtocol(AutoHTTPProtocol):  # h11's or httptools', whichever uvicorn picks
    """uvicorn's HTTP protocol, setting TCP_NODELAY on each TCP connection it serves."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Nagle off first, then uvicorn's own bookkeeping."""
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
