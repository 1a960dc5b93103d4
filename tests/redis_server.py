"""A real redis-server on loopback for the shared-cache tests.

Started as a process (no persistence) and spoken to over TCP by redis-py, exactly as the
workers of a deployment would. Without /usr/bin/redis-server the tests fail saying so,
unless TILESERVER_TEST_SKIP_REDIS=1.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

REDIS_BINARY = Path("/usr/bin/redis-server")


class RedisServer:
    """redis-server on 127.0.0.1:port, logging to a file in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.log = folder / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> RedisServer:
        command = [
            str(REDIS_BINARY),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self._log_tail()}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on {self.url}: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def _log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else "(no log)"


def require_redis() -> None:
    """Fail (or skip, when told to) without the redis-server binary."""
    if REDIS_BINARY.exists():
        return
    if os.environ.get("TILESERVER_TEST_SKIP_REDIS") == "1":
        pytest.skip(f"{REDIS_BINARY} missing and TILESERVER_TEST_SKIP_REDIS=1")
    pytest.fail(
        f"{REDIS_BINARY} is missing: install the Debian package redis-server "
        "(or set TILESERVER_TEST_SKIP_REDIS=1 to skip the Redis cache tests)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One redis-server for the session."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server) -> str:
    """The session server's URL, emptied first (it is ours alone, so FLUSHDB is fine here)."""
    with redis_server.client() as client:
        client.flushdb()
    return redis_server.url


@pytest.fixture()
def private_redis(tmp_path) -> RedisServer:
    """A redis-server of one test's own, which the test may stop."""
    require_redis()
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
