"""A loopback HTTP/1.1 proxy that adds latency and caps bandwidth, and counts what passes.

    python bench/proxy.py --upstream 127.0.0.1:9000 [--port 0] [--rtt-ms 20] [--mbps 200]

Put in front of an S3-compatible server (moto) so GDAL's range requests cost what they cost
against a real bucket: each request waits one round trip (`--rtt-ms`) before it is sent
upstream, and each answer's body is paced at `--mbps` (megabits per second, per
connection). Requests are counted per method with the bytes of the answers' bodies;
`GET /__proxy__/stats` on the proxy answers the counts as JSON and `POST /__proxy__/reset`
zeroes them (neither is forwarded). Loopback only: it listens on 127.0.0.1 and forwards to
the one upstream it was given. Each client connection gets its own upstream connection
(keep-alive on both sides), so concurrent requests are not serialized.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading

STATS_PATH = b"/__proxy__/stats"
RESET_PATH = b"/__proxy__/reset"
MAX_HEAD = 64 * 1024


class Stats:
    """Requests and bytes by method, since the last reset."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests: dict[str, int] = {}
            self.bytes_down = 0
            self.connections = 0

    def count(self, method: str, body: int) -> None:
        with self.lock:
            self.requests[method] = self.requests.get(method, 0) + 1
            self.bytes_down += body

    def as_dict(self) -> dict:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "total_requests": sum(self.requests.values()),
                "bytes_down": self.bytes_down,
                "connections": self.connections,
            }


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """An HTTP message head up to the blank line; None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if len(head) > MAX_HEAD:
        raise ValueError("head too large")
    return head


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, pace: float
) -> int:
    """Forward the body the head announces (Content-Length or chunked); its size."""
    length = header(head, b"content-length")
    if length is not None:
        remaining, total = int(length), 0
        while remaining:
            chunk = await reader.read(min(remaining, 65536))
            if not chunk:
                raise ConnectionError("body cut short")
            remaining -= len(chunk)
            total += len(chunk)
            if pace:
                await asyncio.sleep(len(chunk) * pace)
            writer.write(chunk)
        return total
    if (header(head, b"transfer-encoding") or b"").lower() == b"chunked":
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            total += size
            if pace:
                await asyncio.sleep(size * pace)
            writer.write(size_line + data)
            if size == 0:
                trailer = await reader.readuntil(b"\r\n") if data != b"\r\n" else b""
                writer.write(trailer)
                return total
    return 0


class Proxy:
    """The proxy's state: upstream, delays, stats."""

    def __init__(self, upstream: str, rtt_ms: float, mbps: float):
        host, port = upstream.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.delay = rtt_ms / 1000
        self.pace = 8 / (mbps * 1e6) if mbps else 0.0  # seconds per byte
        self.stats = Stats()

    async def local(self, path: bytes, writer: asyncio.StreamWriter) -> None:
        if path.startswith(RESET_PATH):
            self.stats.reset()
        body = json.dumps(self.stats.as_dict()).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()

    async def serve(self, client_r, client_w) -> None:
        upstream = None
        with self.stats.lock:
            self.stats.connections += 1
        try:
            while True:
                head = await read_head(client_r)
                if head is None:
                    return
                method, path = head.split(b" ", 2)[:2]
                if path.startswith((STATS_PATH, RESET_PATH)):
                    await self.local(path, client_w)
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(self.host, self.port)
                up_r, up_w = upstream
                if self.delay:
                    await asyncio.sleep(self.delay)  # the request's round trip
                up_w.write(head)
                await copy_body(client_r, up_w, head, 0)
                await up_w.drain()
                answer = await read_head(up_r)
                if answer is None:
                    return
                client_w.write(answer)
                size = 0
                if method != b"HEAD" and not answer.startswith((b"HTTP/1.1 204", b"HTTP/1.1 304")):
                    size = await copy_body(up_r, client_w, answer, self.pace)
                await client_w.drain()
                self.stats.count(method.decode(), size)
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            return
        finally:
            client_w.close()
            if upstream is not None:
                upstream[1].close()


def start(upstream: str, rtt_ms: float = 20.0, mbps: float = 0.0, port: int = 0):
    """Run a proxy on a thread of this process; (proxy, port)."""
    proxy = Proxy(upstream, rtt_ms, mbps)
    ready = threading.Event()
    found: list[int] = []

    def run() -> None:
        async def main() -> None:
            server = await asyncio.start_server(proxy.serve, "127.0.0.1", port)
            found.append(server.sockets[0].getsockname()[1])
            ready.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True, name="bench-proxy").start()
    ready.wait(10)
    return proxy, found[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT on loopback")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--mbps", type=float, default=0.0, help="0: unlimited")
    args = parser.parse_args(argv)
    if not args.upstream.startswith(("127.", "localhost:")):
        sys.exit("the upstream must be on loopback")

    async def run() -> None:
        proxy = Proxy(args.upstream, args.rtt_ms, args.mbps)
        server = await asyncio.start_server(proxy.serve, "127.0.0.1", args.port)
        print(server.sockets[0].getsockname()[1], flush=True)  # the port, for the caller
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
