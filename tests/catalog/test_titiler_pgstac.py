"""titiler-pgstac tiles the pgSTAC database tileserver writes: items carry their assets.

titiler-pgstac (its PyPI release) runs in an environment of its own, which `.ci/run` builds
and names in TILESERVER_TEST_TITILER_PGSTAC_PYTHON; it is started as a process on loopback
pointed at the test's database. Without that variable the test is skipped, saying so (in
CI, where CI=true, it fails).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy
import pytest
from click.testing import CliRunner
from rasterio.io import MemoryFile

from tests.conftest import free_port
from tests.synthetic import TILE, write
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.store import open_store
from tileserver.cli import cli

PYTHON = os.environ.get("TILESERVER_TEST_TITILER_PGSTAC_PYTHON")


@pytest.fixture()
def titiler_python() -> str:
    """The python of titiler-pgstac's environment (asked before a database is made)."""
    if not PYTHON:
        reason = "TILESERVER_TEST_TITILER_PGSTAC_PYTHON is unset (.ci/run builds that environment)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PYTHON


@pytest.fixture()
def titiler(titiler_python, pgstac_url) -> Iterator[str]:
    """titiler-pgstac serving the test's database; its base URL."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": pgstac_url,
        "TITILER_PGSTAC_CACHE_DISABLE": "TRUE",  # each answer read from the database now
    }
    process = subprocess.Popen(
        [titiler_python, "-m", "uvicorn", "titiler.pgstac.main:app", "--host", "127.0.0.1"]
        + ["--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"titiler-pgstac did not start: {process.communicate()[1][-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def expected(band: int) -> numpy.ndarray:
    """Band `band` (0-based) of the scene written below, worked out from its formula."""
    rows, cols = numpy.mgrid[0:256, 0:256]
    return (rows * 7 + cols * 3 + 1 + band * 2000).astype("uint16")


def assert_tile(layer: str) -> None:
    """The layer's tile over the scene (the file's own grid) holds every pixel as written."""
    answer = httpx.get(
        f"{layer}/tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}.tif",
        params={"assets": "scene_20240501"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with MemoryFile(answer.content) as memory, memory.open() as dataset:
        pixels = dataset.read()
    for band in range(3):
        assert numpy.array_equal(pixels[band], expected(band)), band


def test_titiler_pgstac_tiles_an_image_tileserver_ingested(tmp_path: Path, titiler, pgstac_url):
    source = numpy.stack([expected(b) for b in range(3)])
    write(tmp_path / "in" / "scene_20240501.tif", source, descriptions=["red", "green", "blue"])
    result = CliRunner().invoke(
        cli,
        ["ingest", str(tmp_path / "in"), "--product", "field"]
        + ["--catalog", pgstac_url, "--quiet"],
    )
    assert result.exit_code == 0, result.output

    assert_tile(f"{titiler}/collections/field/items/scene_20240501")

    # a search tileserver registered, served from pgSTAC's registry by its hash
    store = open_store(pgstac_url)
    try:
        store.register_search(SearchQuery(collections=["field"]))
        with store._conn() as conn:
            ((search_hash,),) = conn.execute(
                "SELECT hash FROM searches WHERE metadata ? 'tileserver:id'"
            ).fetchall()
    finally:
        store.close()
    assert_tile(f"{titiler}/searches/{search_hash}")
