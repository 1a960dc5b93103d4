"""The foreign samples (../shared/fixtures) ingest and render real XYZ tiles over HTTP.

Each check picks a source pixel, finds where it lies on the ground without the reader (the
tile's own geotransform, GDAL's RPC transformer on the JP2, a bilinear interpolation of
SNAP's tie-point grids read with numpy), requests the WebMercator tile holding that point
at a zoom whose pixels are a quarter of the source pixel or smaller, and compares the tile
pixel there with the source value read directly (scaling=raw).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import morecantile
import numpy
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pyproj import Transformer
from rasterio.transform import RPCTransformer
from shapely.geometry import box

from tests.conftest import make_settings
from tests.fixtures import fixture_path
from tests.test_tiles import decode, display
from tileserver.app import create_app
from tileserver.cli import cli

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The three samples ingested with `tileserver ingest` (from a copy) and served."""
    tmp = tmp_path_factory.mktemp("foreign")
    samples = tmp / "samples"
    for parts in (("dimap2", "vhr2020_ms_fs"), ("dimap2", "jpeg2000_ple"), ("beam-dimap",)):
        shutil.copytree(fixture_path(*parts), samples / parts[-1])
    catalog = tmp / "catalog.db"
    result = CliRunner().invoke(
        cli,
        ["ingest", str(samples), "--catalog", f"sqlite:///{catalog}", "--quiet"],
        env={"TILESERVER_DATA_DIR": str(tmp / "data")},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["failed"] == []
    settings = make_settings(tmp, catalog_url=f"sqlite:///{catalog}")
    with TestClient(create_app(settings)) as client:
        yield client, samples


def tile_at(client: TestClient, image_id: str, lon: float, lat: float, zoom: int, **params):
    """(pixels, (row, col) of lon/lat in them, the tile) of the tile holding lon/lat."""
    tile = TMS.tile(lon, lat, zoom)
    url = f"/images/{image_id}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}.png"
    response = client.get(url, params={"scaling": "raw", **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    bounds = TMS.xy_bounds(tile)
    x, y = TMS.xy(lon, lat)
    col = int((x - bounds.left) / (bounds.right - bounds.left) * 256)
    row = int((bounds.top - y) / (bounds.top - bounds.bottom) * 256)
    return decode(response.content), (row, col), tile


def pixel_centres(tile: morecantile.Tile) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Lon/lat of the centres of a tile's 256x256 pixels."""
    bounds = TMS.xy_bounds(tile)
    size = (bounds.right - bounds.left) / 256
    xs = bounds.left + (numpy.arange(256) + 0.5) * size
    ys = bounds.top - (numpy.arange(256) + 0.5) * size
    x, y = numpy.meshgrid(xs, ys)
    return Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(x, y)


def assert_coverage(client, image_id: str, outline, zoom: int, margin: float, **params):
    """The tile at the outline's centre is opaque inside it and transparent outside it
    (`margin` degrees either side of the edge are not judged)."""
    pixels, _, tile = tile_at(client, image_id, *outline.centroid.coords[0], zoom, **params)
    lons, lats = pixel_centres(tile)
    points = shapely.points(lons, lats)
    inside = shapely.contains(outline.buffer(-margin), points)
    outside = ~shapely.intersects(outline.buffer(margin), points)
    assert inside.sum() > 100 and outside.sum() > 100  # the tile shows both
    assert (pixels[-1][inside] > 0).all()
    assert (pixels[-1][outside] == 0).all()


def test_pleiades_neo_sample_renders(served):
    """GDAL's sample bands are constant (1..6 in file order): the values say which file band
    each catalog band reads."""
    client, samples = served
    folder = samples / "vhr2020_ms_fs" / "MS-FS"
    with (
        rasterio.open(folder / "IMG_RGB_R1C1.TIF") as rgb,
        rasterio.open(folder / "IMG_NED_R1C1.TIF") as ned,
    ):
        col, row = 800, 600
        lon, lat = rgb.transform * (col + 0.5, row + 0.5)
        window = ((row, row + 1), (col, col + 1))
        expected = [*rgb.read(window=window)[:, 0, 0], *ned.read(window=window)[:, 0, 0]]
        outline = box(*rgb.bounds)
        step = rgb.transform.a
    image = "pneo_ms-fs:DS_PNEO4_201704121106009_PS1_FR1_FR1_E005N46_004192"
    zoom = 19
    assert 360 / (256 * 2**zoom) <= step / 3
    for names, values in (("red,green,blue", expected[:3]), ("nir,rededge,deepblue", expected[3:])):
        pixels, (r, c), _ = tile_at(client, image, lon, lat, zoom, bands=names)
        assert pixels.dtype == "uint16" and pixels.shape == (4, 256, 256)
        assert list(pixels[:3, r, c]) == list(values)
        assert pixels[3, r, c] > 0
    assert_coverage(client, image, outline, 14, 2 * 360 / (256 * 2**14), bands="red")


def test_pleiades_jpeg2000_sample_renders(served):
    """A sensor chip placed by its RPC model: GDAL's RPC transformer says where a pixel is."""
    client, samples = served
    with rasterio.open(samples / "jpeg2000_ple" / "IMG_md_ple_R1C1.jp2") as jp2:
        rpcs, data = jp2.rpcs, jp2.read()
    zoom = 18  # pixels 5.4e-6 degrees; the chip's are 2.2e-5
    with RPCTransformer(rpcs) as transformer:
        for col, row in ((100, 150), (20, 30), (180, 290)):
            lon, lat = transformer.xy(row, col, zs=rpcs.height_off)  # the pixel centre
            pixels, (r, c), _ = tile_at(client, "phr:DIM_md_ple", lon, lat, zoom, bands="b1,b2,b3")
            assert pixels[3, r, c] > 0
            assert list(pixels[:3, r, c]) == list(data[:3, row, col])
        rows, cols = [0, 0, 308, 308], [0, 202, 202, 0]
        corners = transformer.xy(rows, cols, zs=[rpcs.height_off] * 4, offset="ul")
    outline = shapely.Polygon(list(zip(*corners, strict=True)))
    assert_coverage(client, "phr:DIM_md_ple", outline, 15, 3 * 2.2e-5, bands="b1")


def bilinear(grid: numpy.ndarray, x: float, y: float, offset: float, step: float) -> float:
    gx, gy = (x - offset) / step, (y - offset) / step
    i, j = int(gx), int(gy)
    u, v = gx - i, gy - j
    top = grid[j, i] * (1 - u) + grid[j, i + 1] * u
    bottom = grid[j + 1, i] * (1 - u) + grid[j + 1, i + 1] * u
    return float(top * (1 - v) + bottom * v)


def merge_test1(samples: Path) -> dict[str, numpy.ndarray]:
    """mergeTest1's bands and tie-point grids, read with numpy (big-endian ENVI)."""
    data = samples / "beam-dimap" / "mergeTest1.data"
    grids = data / "tie_point_grids"
    return {
        "l2_flags": numpy.fromfile(data / "l2_flags.img", dtype=">u4").reshape(11, 11),
        "reflec_1": numpy.fromfile(data / "reflec_1.img", dtype=">u2").reshape(11, 11),
        "lat": numpy.fromfile(grids / "latitude.img", dtype=">f4").reshape(3, 3),
        "lon": numpy.fromfile(grids / "longitude.img", dtype=">f4").reshape(3, 3),
    }


def ground(arrays: dict, x: float, y: float) -> tuple[float, float]:
    """Lon/lat of image pixel coordinates (x, y): tie points every 16 pixels from 0.5."""
    return bilinear(arrays["lon"], x, y, 0.5, 16.0), bilinear(arrays["lat"], x, y, 0.5, 16.0)


MERGE_POINTS = ((5, 5), (2, 8), (9, 1))  # (col, row) of source pixels
FLAGS_STRETCH = {"bands": "l2_flags", "scaling": "0,4194304", "data_type": "Byte"}


def test_merge_test1_sample_renders(served):
    """MERIS RR in satellite geometry, geocoded by 3x3 tie points every 16 pixels from 0.5.

    SNAP's sample holds a reflec_1 that is all 0 (its nodata value) and a constant l2_flags.
    """
    client, samples = served
    arrays = merge_test1(samples)
    image = "mer_rr__2p:mergeTest1"
    zoom = 10  # pixels of 0.0014 degrees; MERIS RR's are about 0.013
    for col, row in MERGE_POINTS:
        point = ground(arrays, col + 0.5, row + 0.5)
        pixels, (r, c), _ = tile_at(client, image, *point, zoom, bands="reflec_1")
        assert pixels.shape == (2, 256, 256) and pixels.dtype == "uint16"
        assert pixels[0, r, c] == arrays["reflec_1"][row, col]


def test_merge_test1_flags_render_within_the_footprint(served):
    client, samples = served
    arrays = merge_test1(samples)
    image = "mer_rr__2p:mergeTest1"
    for col, row in MERGE_POINTS:
        point = ground(arrays, col + 0.5, row + 0.5)
        pixels, (r, c), _ = tile_at(client, image, *point, 10, **FLAGS_STRETCH)
        assert pixels[0, r, c] == display(arrays["l2_flags"][row, col], 0, 4194304)  # 127
    # opaque inside the outline through the corner pixels' outer corners, clear outside it
    corners = [(0, 0), (11, 0), (11, 11), (0, 11)]
    outline = shapely.Polygon([ground(arrays, x, y) for x, y in corners])
    assert_coverage(client, image, outline, 9, 0.015, **FLAGS_STRETCH)


def test_foreign_samples_say_where_their_values_came_from(served):
    client, _ = served
    expected = {
        "pneo_ms-fs": {"geometry": "Dataset_Extent", "datetime": "IMAGING_DATE"},
        "phr": {"geometry": "Dataset_Extent", "datetime": "IMAGING_DATE"},
        "mer_rr__2p": {
            "geometry": "tie_point_grids",
            "datetime": "PRODUCT_SCENE_RASTER_START_TIME",
        },
    }
    for product, provenance in expected.items():
        response = client.get(f"/products/{product}/images")
        assert response.status_code == 200, response.text
        images = response.json()["images"]
        assert len(images) == 1
        assert images[0]["properties"]["tileserver:provenance"] == provenance
