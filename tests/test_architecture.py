"""The layering docs/ARCHITECTURE.md describes, checked on the code.

- `render/`, `catalog/`, `ingest/` and `layers.py` import no web framework; `api/` does no
  pixel work (no numpy, no rasterio reads).
- The project files one uncached tile request runs, traced with a profiler, are exactly the
  ones docs/ARCHITECTURE.md lists for its flow: a file joining a flow fails here until the
  map says why it is there.
"""

from __future__ import annotations

import ast
import re
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tileserver
from tests.conftest import DEMO_IMAGE

PACKAGE = Path(tileserver.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
# Every request passes these (app.py's middleware and the key ring it consults); they are
# not part of any one route's flow. Rendering code marks its stages (`metrics.timed`) in
# the recorder `metrics.RequestMetrics` keeps for each request, as it logs in `logs.py`.
MIDDLEWARE = {
    "api/auth.py",
    "api/confine.py",
    "catalog/keys.py",
    "deadline.py",
    "limits.py",
    "logs.py",
    "metrics.py",
}
# SQLite registers its CQL2 functions once per new connection (one per server thread); a
# request on a thread the pool just made runs that and nothing else of the file.
PER_CONNECTION = {"catalog/cql2sql.py": {"register_functions", "_numeric"}}
WEB = ("fastapi", "starlette")
PIXELS = ("numpy", "rasterio", "rio_tiler")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules a file imports."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "folder", ["render", "catalog", "ingest", "layers.py", "pyramids.py", "opener.py"]
)
def test_the_layers_below_the_api_import_no_web_framework(folder):
    paths = [PACKAGE / folder] if folder.endswith(".py") else (PACKAGE / folder).rglob("*.py")
    offenders = {str(p.relative_to(PACKAGE)): sorted(imported_modules(p) & set(WEB)) for p in paths}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_api_does_no_pixel_work():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(imported_modules(p) & set(PIXELS))
        for p in (PACKAGE / "api").glob("*.py")
    }
    # documents.py projects a layer's WGS84 bounds into a tile matrix set's CRS for WMTS;
    # deps.py takes rio-tiler's colormap and resampling names to parse parameters with
    allowed = {"api/documents.py": ["rasterio"], "api/deps.py": ["rio_tiler"]}
    assert {k: v for k, v in offenders.items() if v and allowed.get(k) != v} == {}


@pytest.fixture()
def fresh_client(demo_app) -> TestClient:
    """A client outside a `with` block: each request runs on a new event loop thread with
    new worker threads, which the profiler set for new threads then sees."""
    return TestClient(demo_app)


def traced_files(client: TestClient, path: str) -> set[str]:
    """The project files whose functions run while `client` gets `path`."""
    seen: dict[str, set[str]] = {}
    root = str(PACKAGE) + "/"

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(root):
            seen.setdefault(code.co_filename[len(root) :], set()).add(code.co_name)

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        response = client.get(path)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert response.status_code == 200, response.text
    setup = {f for f, functions in seen.items() if functions <= PER_CONNECTION.get(f, set())}
    return set(seen) - MIDDLEWARE - setup


def documented_files(heading: str) -> set[str]:
    """The files docs/ARCHITECTURE.md names after `Files:` in the section `heading`."""
    text = ARCHITECTURE.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    listed = section.split("Files (", 1)[1].split("):", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([\w/]+\.py)`", listed))


def test_an_image_tile_runs_the_files_the_map_lists(fresh_client):
    client = fresh_client
    tiles = f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad"
    client.get(f"{tiles}/12/2219/1347.png")  # a first request warms the app's lazy parts
    files = traced_files(client, f"{tiles}/12/2220/1347.png")
    assert files == documented_files("The flow of an image tile request")


def test_a_mosaic_tile_runs_the_files_the_map_lists(fresh_client):
    client = fresh_client
    search = client.post("/searches", json={"collections": ["sentinel-2-l2a"]}).json()["id"]
    tiles = f"/searches/{search}/tiles/WebMercatorQuad"
    client.get(f"{tiles}/12/2219/1347.png")
    files = traced_files(client, f"{tiles}/12/2220/1347.png")
    assert files == documented_files("The flow of a mosaic tile request")
