"""Search mosaics below their first image's minzoom (TILESERVER_MOSAIC_MINZOOM=0).

Sixteen overlapping scenes without overviews, imported (so each gets its reduced copy),
each one constant value inside an 8-pixel nodata frame. The reference is the
full-resolution `first` mosaic painted here with numpy on the scenes' common UTM grid,
then warped to the tile by GDAL (nearest): no server code.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy
import pytest
import rasterio
from fastapi.testclient import TestClient
from morecantile import tms as tms_registry
from rasterio.enums import Resampling
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import reproject

from tests.conftest import make_settings
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.opener import Confinement, confined, reading

WEB = tms_registry.get("WebMercatorQuad")
CRS = "EPSG:32633"
PIXEL, SIZE, STEP, GRID = 20.0, 640, 400, 4  # 12.8 km scenes every 8 km, 4 x 4
WEST, NORTH = 400000.0, 5800000.0
FRAME = 8
FULL = STEP * (GRID - 1) + SIZE  # the common grid's size in pixels
DAY = datetime(2024, 5, 1, tzinfo=UTC)


def scenes() -> list[tuple[int, int, int, datetime]]:
    """(row offset, col offset, value, acquired) per scene, on the common grid."""
    out = []
    for i in range(GRID * GRID):
        row, col = divmod(i, GRID)
        out.append((row * STEP, col * STEP, 100 + 37 * i, DAY + timedelta(hours=(7 * i) % 16)))
    return out


def write_scenes(folder: Path) -> None:
    for i, (r, c, value, acquired) in enumerate(scenes()):
        data = numpy.full((1, SIZE, SIZE), value, dtype="uint16")
        data[:, :FRAME], data[:, -FRAME:], data[:, :, :FRAME], data[:, :, -FRAME:] = 0, 0, 0, 0
        folder.mkdir(parents=True, exist_ok=True)
        transform = from_origin(WEST + c * PIXEL, NORTH - r * PIXEL, PIXEL, PIXEL)
        path = folder / f"s{i:02d}_{acquired:%Y%m%dT%H%M%S}.tif"  # the import's time
        profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 1}
        profile.update(dtype="uint16", crs=CRS, transform=transform, nodata=0, tiled=True)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)


def reference_mosaic() -> numpy.ndarray:
    """The full-resolution mosaic, newest scene on top, nodata 0."""
    mosaic = numpy.zeros((FULL, FULL), dtype="uint16")
    order = sorted(scenes(), key=lambda s: s[3], reverse=True)
    for r, c, value, _ in order:
        inner = mosaic[r + FRAME : r + SIZE - FRAME, c + FRAME : c + SIZE - FRAME]
        inner[inner == 0] = value
    return mosaic


def reference_tile(mosaic: numpy.ndarray, z: int, x: int, y: int) -> numpy.ndarray:
    out = numpy.zeros((256, 256), dtype="uint16")
    reproject(
        mosaic,
        out,
        src_transform=from_origin(WEST, NORTH, PIXEL, PIXEL),
        src_crs=CRS,
        src_nodata=0,
        dst_transform=from_bounds(*WEB.xy_bounds(x, y, z), 256, 256),
        dst_crs=WEB.rasterio_crs,
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    return out


@pytest.fixture(scope="module")
def low_mosaic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lowmosaic")
    write_scenes(tmp / "in")
    store = SQLiteStore(tmp / "catalog.db")
    confinement = Confinement(data_dir=tmp)
    request = ImportRequest(cloud_provider="file", bucket_name=str(tmp / "in"), product="lowmos")
    with confined(confinement), reading(confinement.operator()):
        result = run_import(store, request, tmp, confinement=confinement)
    assert not result.failed and len(result.features) == GRID * GRID, result.failed
    assert len(list((tmp / "cogs" / "lowmos" / "reduced").glob("*.tif"))) == GRID * GRID
    app = create_app(
        make_settings(tmp, mosaic_minzoom=0, cache_max_bytes=0, mosaic_pyramid=False), store=store
    )
    with TestClient(app) as client:
        search = client.post("/searches", json={"collections": ["lowmos"]}).json()["id"]
        yield client, search, store
    store.close()


@pytest.mark.parametrize("z", [3, 5, 7, 8, 9, 10])
def test_low_zoom_mosaic_agrees_with_the_full_resolution_mosaic_warped(low_mosaic, z):
    """On at least 99 % of the tile pixels, the tile equals the reference at the pixel or
    at one of its 8 neighbours (nearest picks from an overview, whose pixel may be up to
    one tile pixel off the full-resolution one): scene edges move by at most a pixel,
    everything else is exact, mask included."""
    client, search, _ = low_mosaic
    mosaic = reference_mosaic()
    bbox = client.get(f"/searches/{search}/tilejson.json").json()["bounds"]
    tiles = list(WEB.tiles(*bbox, [z]))
    painted = 0
    for tile in tiles:
        response = client.get(
            f"/searches/{search}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.npy",
            params={"scaling": "raw"},
        )
        if response.status_code == 404:  # tiles() pads the box: a tile with no scene
            assert not reference_tile(mosaic, z, tile.x, tile.y).any()
            continue
        assert response.status_code == 200, response.text
        pixels = numpy.load(io.BytesIO(response.content))
        got = numpy.where(pixels[-1] == 255, pixels[0], 0).astype("int64")
        want = numpy.pad(reference_tile(mosaic, z, tile.x, tile.y).astype("int64"), 1)
        near = numpy.zeros(got.shape, dtype=bool)
        for dr in range(3):
            for dc in range(3):
                near |= want[dr : dr + 256, dc : dc + 256] == got
        assert near.mean() >= 0.99, (tile, near.mean())
        exact = (want[1:-1, 1:-1] == got).mean()
        assert exact >= 0.95, (tile, exact)
        painted += int((got != 0).sum())
    assert painted > 0


def test_tilejson_advertises_zoom_0_and_the_search_says_what_serves_it(low_mosaic):
    client, search, _ = low_mosaic
    assert client.get(f"/searches/{search}/tilejson.json").json()["minzoom"] == 0
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    assert low["served_by"] == "dynamic" and low["minzoom"] == 0
    west, south, east, north = client.get(f"/searches/{search}/tilejson.json").json()["bounds"]
    tile = WEB.tile((west + east) / 2, (south + north) / 2, 3)  # the area is a few pixels
    z3 = client.get(f"/searches/{search}/tiles/WebMercatorQuad/3/{tile.x}/{tile.y}.png")
    assert z3.status_code == 200, z3.text
    assert z3.headers["x-mosaic-images"]
