"""A script written for the Catalog's client (tests/client/catalog_script.py) runs against
tileserver after changing only its import lines, with the credentials in the environment;
what it computed is checked against values computed here from the same synthetic pixels."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import rasterio

from tests.conftest import LiveServer, make_settings
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.client import CatalogClient, Image, Product

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("catalog_script.py")
PRODUCT = "port-demo"
SIZE, STEP_PX = 64, 48  # the script's scenes: 64 px, each 48 px east of the one before


def scene_pixels(index: int) -> numpy.ndarray:
    """The script's recipe for scene `index` (red, nir)."""
    data = numpy.random.default_rng(index).integers(1, 10000, (2, SIZE, SIZE), dtype="uint16")
    if index == 0:
        data[:, :8, :] = 0
    return data


def ported(text: str) -> str:
    """The script with its import lines changed, and nothing else."""
    out = text.replace("from descarteslabs.catalog import", "from tileserver.client import")
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert changed and all(a.startswith("from descarteslabs.catalog import") for a, _ in changed)
    modules = [n.module for n in ast.parse(out).body if isinstance(n, ast.ImportFrom)]
    assert "tileserver.client" in modules and not any("descarteslabs" in m for m in modules)
    return out


def stretch(values: numpy.ndarray, lo: float, hi: float, out_hi: float = 255) -> numpy.ndarray:
    return numpy.clip(numpy.floor((values.astype(float) - lo) * out_hi / (hi - lo) + 0.5), 0, 255)


def newest_on_top(layers: list[numpy.ndarray]) -> numpy.ndarray:
    out = numpy.zeros_like(layers[0])
    for layer in layers:
        out = numpy.where(layer != 0, layer, out)
    return out


def canvas_layers(indices: list[int], band: int = 0) -> list[numpy.ndarray]:
    """Band `band` of the scenes, each placed on the grid covering all four scenes."""
    width = SIZE + STEP_PX * 3
    layers = []
    for index in indices:
        layer = numpy.zeros((SIZE, width), "uint16")
        layer[:, index * STEP_PX : index * STEP_PX + SIZE] = scene_pixels(index)[band]
        layers.append(layer)
    return layers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("port")
    store = SQLiteStore(folder / "catalog.db")
    tokens = {}
    for user, org in (("alice", "acme"), ("carol", "globex")):
        key, token = new_key(user, org)
        store.put_key(key)
        tokens[user] = token
    with LiveServer(create_app(make_settings(folder, key_cache_seconds=0), store=store)) as live:
        yield live, tokens
    store.close()


def test_the_imports_are_the_reference_clients(reference_python):
    """Every name the script imports exists in the Catalog's client under that name."""
    tree = ast.parse(SCRIPT.read_text())
    imports = [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module.startswith("descarteslabs")
    ]
    assert len(imports) == 2
    subprocess.run([reference_python, "-c", "\n".join(imports)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def reference_python() -> str:
    python = os.environ.get("TILESERVER_TEST_DL_PYTHON")
    if not python and os.environ.get("CI") == "true":
        pytest.fail("TILESERVER_TEST_DL_PYTHON is unset in CI: .ci/run should set it")
    if not python:
        pytest.skip("TILESERVER_TEST_DL_PYTHON is unset: no reference client to compare with")
    return python


@pytest.mark.slow  # ~15 s: five uploads, searches, a stack and a mosaic in a subprocess
def test_a_catalog_script_runs_after_changing_its_imports(server, tmp_path):
    live, tokens = server
    carol = CatalogClient(live.url, api_key=tokens["carol"])
    assert Product.get(PRODUCT, client=carol) is None
    script = tmp_path / "script.py"
    script.write_text(ported(SCRIPT.read_text()))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TILESERVER_URL": live.url,
        "TILESERVER_API_KEY": tokens["alice"],
    }
    run = subprocess.run(
        [sys.executable, str(script), PRODUCT, "org:globex"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    arrays = numpy.load(tmp_path / "arrays.npz")

    assert results["product_ids"] == [PRODUCT]
    # the area meets scenes 1 to 3; scene 1 is too cloudy
    assert results["found"] == ["s2", "s3"] and results["count"] == 2
    assert results["monthly"] == {"2024-05": 2, "2024-06": 2}

    s2 = scene_pixels(2)
    assert numpy.array_equal(arrays["raw"], s2)
    assert numpy.array_equal(arrays["display"], stretch(s2, 0, 4000))
    assert numpy.array_equal(arrays["ranged"][0], stretch(s2[0], 0, 8000))
    assert numpy.array_equal(arrays["by_band"][0], stretch(s2[0], 0, 8000))
    assert numpy.array_equal(arrays["by_band"][1], stretch(s2[1], 0, 4000))

    layers = canvas_layers([0, 1, 2, 3])
    assert results["stack_shape"] == [2, 1, SIZE, SIZE + 3 * STEP_PX]
    assert numpy.array_equal(arrays["stack"][0, 0], newest_on_top(layers[:2]))
    assert numpy.array_equal(arrays["stack"][1, 0], newest_on_top(layers[2:]))
    assert numpy.array_equal(arrays["mosaic"][0], newest_on_top(layers))

    with rasterio.open(tmp_path / results["downloaded"]) as written:
        assert written.crs == "EPSG:32631"
        assert written.transform == rasterio.Affine(10, 0, 500_000 + 3 * 480, 0, -10, 5_000_000)
        assert numpy.array_equal(written.read(), scene_pixels(3))

    assert results["derived_upload"] == "success"
    assert numpy.array_equal(arrays["back"], s2 // 2 + 1)
    assert results["uploads"] == ["success"] * 5

    # shared with carol's organisation at the end: she reads the pixels now
    assert results["readers"] == ["org:globex"]
    assert Product.get(PRODUCT, client=carol) is not None
    seen = Image.get(f"{PRODUCT}:s3", client=carol).ndarray("red", scaling="raw")
    assert numpy.array_equal(seen.data[0], scene_pixels(3)[0])
    carol.close()
