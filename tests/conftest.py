"""Shared fixtures: the demo catalog, an app client, and a real server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.catalog.store import open_store
from tileserver.demo import ensure_demo
from tileserver.opener import Confinement, confined, reading
from tileserver.search_pyramid import stop_builders
from tileserver.settings import Settings

# real servers: S3 and GCS for imports, Redis for the shared cache, PostgreSQL for pgSTAC
pytest_plugins = ["tests.buckets", "tests.redis_server", "tests.postgres"]

DEMO_IMAGE = "sentinel-2-l2a:S2A_MSIL2A_20240612T102031_T33UVU"  # a clear date, no orbit edge
DEMO_TILE = (12, 2219, 1347)  # a WebMercatorQuad z/x/y inside every demo footprint
STORES = ["sqlite", "pgstac"]  # catalog, search and mosaic tests run on each


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    """A test's apps have no lifespan to stop their pyramid builders: stop them before the
    test's fixtures close the stores they write to (a SQLite connection closed under a
    running statement crashes the process)."""
    stop_builders()


@pytest.fixture(autouse=True)
def operator_confinement() -> Iterator[None]:
    """Code a test calls outside any request (ingest and render functions) runs as the
    operator's command line does; without a confinement the opener refuses every file.
    Requests run under their app's own confinement whatever this sets."""
    rules = Confinement(data_dir=Path("/nonexistent/tileserver-data"))
    with confined(rules), reading(rules.operator()):
        yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The demo data, generated once per test session."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo_store(demo_dir) -> SQLiteStore:
    """A catalog holding the demo product."""
    store = SQLiteStore(demo_dir / "catalog.db")
    ensure_demo(store, demo_dir / "data", progress=False)
    yield store
    store.close()


@pytest.fixture(scope="session", params=STORES)
def any_demo_store(request, demo_store, tmp_path_factory):
    """The demo catalog in each store (the pgSTAC one copied from SQLite)."""
    if request.param == "sqlite":
        yield demo_store
        return
    from tests.postgres import drop_database, new_database
    from tileserver.catalog.migrate import copy_catalog

    admin = request.getfixturevalue("postgres_admin")
    url = new_database(admin)
    store = open_store(url)
    checkpoint = tmp_path_factory.mktemp("copy") / "checkpoint.json"
    copy_catalog(demo_store, store, checkpoint, progress=False)
    yield store
    store.close()
    drop_database(admin, url)


@pytest.fixture(params=STORES)
def catalog_url(request, tmp_path) -> str:
    """An empty catalog of each store: its URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pgstac_url")


@pytest.fixture()
def store(catalog_url):
    """An empty catalog store of each kind."""
    opened = open_store(catalog_url)
    yield opened
    opened.close()


def make_settings(tmp: Path, **extra) -> Settings:
    """Settings pointing at a test folder."""
    return Settings(**{"catalog_url": f"sqlite:///{tmp / 'catalog.db'}", "data_dir": tmp, **extra})


@pytest.fixture(scope="session")
def demo_app(demo_dir, demo_store):
    """The app over the demo catalog."""
    return create_app(make_settings(demo_dir), store=demo_store)


@pytest.fixture(scope="session")
def any_demo_app(demo_dir, any_demo_store):
    """The app over the demo catalog, in each store."""
    return create_app(make_settings(demo_dir), store=any_demo_store)


@pytest.fixture()
def any_client(any_demo_app) -> TestClient:
    """A client of the demo app, in each store."""
    with TestClient(any_demo_app) as test_client:
        yield test_client


@pytest.fixture()
def catalog_client(tmp_path, store) -> TestClient:
    """A client of an app over an empty catalog, in each store."""
    with TestClient(create_app(make_settings(tmp_path), store=store)) as test_client:
        yield test_client


@pytest.fixture()
def client(demo_app) -> TestClient:
    """An in-process HTTP client of the demo app."""
    with TestClient(demo_app) as test_client:
        yield test_client


@pytest.fixture()
def importer(tmp_path) -> TestClient:
    """A client of an app over an empty catalog; import root tmp_path/imports (created)."""
    (tmp_path / "imports").mkdir()
    store = SQLiteStore(tmp_path / "catalog.db")
    settings = make_settings(tmp_path, import_roots=[tmp_path / "imports"])
    with TestClient(create_app(settings, store=store)) as client:
        client.store = store
        yield client
    store.close()


@contextlib.contextmanager
def stub_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a loopback port, in a thread: its host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture()
def empty_client(tmp_path) -> TestClient:
    """A client of an app over an empty catalog of its own."""
    store = SQLiteStore(tmp_path / "catalog.db")
    with TestClient(create_app(make_settings(tmp_path), store=store)) as test_client:
        yield test_client
    store.close()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("live server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(demo_app) -> LiveServer:
    """A real HTTP server over the demo catalog, for browsers and GDAL clients."""
    with LiveServer(demo_app) as server:
        yield server
