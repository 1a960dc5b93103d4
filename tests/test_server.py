"""`tileserver serve`'s HTTP protocol turns Nagle's algorithm off, whatever the socket."""

from __future__ import annotations

import asyncio
import socket

from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.server import ServerState

from tileserver.server import NoDelayProtocol


async def app(scope, receive, send):  # pragma: no cover - no request is made
    raise AssertionError("not called")


def accepted_nodelay(protocol_class) -> int:
    """TCP_NODELAY of a connection accepted the way `uvicorn --workers N` listens."""

    async def main() -> int:
        config = Config(app=app, http=protocol_class, log_level="warning")
        config.load()
        state, made = ServerState(), []

        def factory():
            made.append(protocol_class(config=config, server_state=state, app_state={}))
            return made[-1]

        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as uvicorn's
        listening.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(factory, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname())
        for _ in range(100):
            if made and made[0].transport is not None:
                break
            await asyncio.sleep(0.01)
        accepted = made[0].transport.get_extra_info("socket")
        value = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        server.close()
        return value

    return asyncio.run(main())


def test_connections_have_nodelay_where_uvicorn_alone_leaves_it_off():
    assert accepted_nodelay(AutoHTTPProtocol) == 0  # the ~40 ms wait per small response
    assert accepted_nodelay(NoDelayProtocol) != 0
