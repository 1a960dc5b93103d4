"""Ingest of GeoTIFF folders and STAC items, through the CLI a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import rasterio
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import shape

from tests.synthetic import write_raster
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.cli import cli


def write_tif(
    path: Path, data: numpy.ndarray, crs: str, transform, overviews=False, tiled=False, **extra
) -> Path:
    """A GeoTIFF in any CRS; `overviews` builds internal 2x and 4x ones."""
    if tiled:
        extra.update(tiled=True, blockxsize=128, blockysize=128)
    return write_raster(
        path, data, crs, transform, overviews=[2, 4] if overviews else None, **extra
    )


def run_ingest(catalog: Path, *args: str):
    result = CliRunner().invoke(
        cli, ["ingest", *args, "--catalog", f"sqlite:///{catalog}", "--quiet"]
    )
    return result


@pytest.fixture()
def folder(tmp_path) -> Path:
    """GeoTIFFs in several CRSs and types, with and without overviews, in subfolders."""
    root = tmp_path / "in"
    rng = numpy.random.default_rng(7)
    utm = rng.integers(100, 5000, size=(2, 300, 400)).astype("uint16")
    utm[:, :, :200] = 0  # left half is nodata: the footprint must start in the middle
    write_tif(
        root / "utm" / "scene_20240105.tif",
        utm,
        "EPSG:32633",
        from_origin(500000, 5800000, 10, 10),
        nodata=0,
        descriptions=["red", "nir"],
        overviews=True,
        tiled=True,
    )
    geo = rng.normal(0, 1, size=(1, 100, 120)).astype("float32")
    write_tif(
        root / "geo" / "sub" / "anomaly.tif",
        geo,
        "EPSG:4326",
        from_origin(10.0, 50.0, 0.01, 0.01),
        tags={"TIFFTAG_DATETIME": "2023:07:01 12:30:00"},
    )
    byte = rng.integers(0, 255, size=(3, 64, 64)).astype("uint8")
    path = write_tif(
        root / "rgb_2022-03-04.tif", byte, "EPSG:3857", from_origin(1000000, 6000000, 30, 30)
    )
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(path, "r+") as src:  # external .ovr
        src.build_overviews([2])
    assert path.with_suffix(".tif.ovr").exists()
    return root


def test_ingest_folder_of_geotiffs(tmp_path, folder):
    catalog = tmp_path / "catalog.db"
    # the three files have different band layouts: one product each
    result = run_ingest(catalog, str(folder / "utm"), "--product", "utm")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report == {"registered": 1, "failed": []}
    result = run_ingest(catalog, str(folder / "geo"), "--product", "geo")
    assert result.exit_code == 0, result.output
    result = run_ingest(catalog, str(folder / "rgb_2022-03-04.tif"), "--product", "rgb")
    assert result.exit_code == 0, result.output

    store = SQLiteStore(catalog)
    product = store.get_product("utm")
    assert [b.name for b in product.bands] == ["red", "nir"]
    red = product.bands[0]
    assert (red.data_type, red.nodata, red.band_index, red.file_index) == ("UInt16", 0, 0, 0)
    assert red.data_range == (0, 65535)
    assert red.resolution.value == 10 and red.resolution.unit == "meters"

    image = store.list_images("utm").images[0]
    assert image.id == "utm:scene_20240105"
    assert image.acquired.isoformat() == "2024-01-05T00:00:00+00:00"  # from the file name
    assert image.crs == "EPSG:32633" and (image.width, image.height) == (400, 300)
    assert image.geotrans == (500000, 10, 0, 5800000, 0, -10)
    # footprint: valid data starts at x = 502000 (column 200), computed independently
    to_wgs84 = Transformer.from_crs(32633, 4326, always_xy=True)
    west, _ = to_wgs84.transform(502000, 5798500)
    east, _ = to_wgs84.transform(504000, 5798500)
    bounds = shape(image.geometry).bounds
    assert bounds[0] == pytest.approx(west, abs=0.002)
    assert bounds[2] == pytest.approx(east, abs=0.002)
    # statistics of valid pixels, read from an overview: close to the full-resolution ones
    with rasterio.open(folder / "utm" / "scene_20240105.tif") as src:
        valid = src.read(1)[:, 200:]
    stats = image.band_stats["red"]
    assert 100 <= stats.min < 200 and 4900 < stats.max <= 4999
    assert stats.percentiles[50] == pytest.approx(numpy.percentile(valid, 50), rel=0.05)
    assert len(stats.percentiles) == 99

    geo = store.list_images("geo").images[0]
    assert geo.id == "geo:sub_anomaly"
    assert geo.acquired.isoformat() == "2023-07-01T12:30:00+00:00"  # from TIFFTAG_DATETIME
    assert store.get_product("geo").bands[0].data_type == "Float32"
    assert shape(geo.geometry).bounds == pytest.approx((10.0, 49.0, 11.2, 50.0))

    rgb = store.get_image("rgb:rgb_2022-03-04")
    assert rgb.acquired.date().isoformat() == "2022-03-04"
    assert [b.data_range for b in store.get_product("rgb").bands] == [(0, 255)] * 3
    store.close()


def test_reingest_updates_in_place(tmp_path, folder):
    catalog = tmp_path / "catalog.db"
    for _ in range(2):
        assert run_ingest(catalog, str(folder / "utm"), "--product", "utm").exit_code == 0
    store = SQLiteStore(catalog)
    assert store.count_images("utm") == 1
    store.close()


def test_mismatched_file_is_reported_and_others_land(tmp_path, folder):
    catalog = tmp_path / "catalog.db"
    assert run_ingest(catalog, str(folder / "utm"), "--product", "mixed").exit_code == 0
    result = run_ingest(catalog, str(folder), "--product", "mixed")
    report = json.loads(result.output[result.output.index("{") :])
    # the 2-band UTM file fits again, the 1-band float file does not; the RGB file has
    # 3 bands so it holds the 2 bands the product expects and is registered
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"anomaly.tif"}
    assert "expects band 'nir'" in reasons["anomaly.tif"]
    assert report["registered"] == 2


def test_no_time_needs_datetime_option(tmp_path):
    data = numpy.ones((1, 10, 10), dtype="uint8")
    write_tif(tmp_path / "in" / "plain.tif", data, "EPSG:4326", from_origin(0, 1, 0.1, 0.1))
    catalog = tmp_path / "catalog.db"
    result = run_ingest(catalog, str(tmp_path / "in"), "--product", "p")
    assert result.exit_code == 1
    assert "--datetime" in result.output
    result = run_ingest(
        catalog, str(tmp_path / "in"), "--product", "p", "--datetime", "2020-02-02T02:02:02+02:00"
    )
    assert result.exit_code == 0, result.output
    store = SQLiteStore(catalog)
    assert store.get_image("p:plain").acquired.isoformat() == "2020-02-02T00:02:02+00:00"
    store.close()


def test_band_overrides_from_yaml(tmp_path, folder):
    overrides = tmp_path / "bands.yaml"
    overrides.write_text(
        "red:\n  display_range: [0, 3000]\n  wavelength_nm_center: 665\n"
        "nir:\n  data_range: [0, 10000]\n"
    )
    catalog = tmp_path / "catalog.db"
    result = run_ingest(catalog, str(folder / "utm"), "--product", "utm", "--bands", str(overrides))
    assert result.exit_code == 0, result.output
    store = SQLiteStore(catalog)
    red, nir = store.get_product("utm").bands
    assert red.display_range == (0, 3000) and red.wavelength_nm_center == 665
    assert nir.data_range == (0, 10000) and nir.physical_range == (0, 10000)
    store.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("swir:\n  display_range: [0, 1]\n")
    result = run_ingest(
        tmp_path / "other.db", str(folder / "utm"), "--product", "utm", "--bands", str(bad)
    )
    assert "swir" in result.output


def test_antimeridian_footprint_is_split(tmp_path):
    # UTM zone 60S, extending east across 180 degrees
    data = numpy.ones((1, 100, 100), dtype="uint8")
    write_tif(
        tmp_path / "in" / "fiji_20200101.tif",
        data,
        "EPSG:32760",
        from_origin(780000, 8000000, 1000, 1000),
    )
    catalog = tmp_path / "catalog.db"
    assert run_ingest(catalog, str(tmp_path / "in"), "--product", "p").exit_code == 0
    store = SQLiteStore(catalog)
    geometry = store.get_image("p:fiji_20200101").geometry
    store.close()
    assert geometry["type"] == "MultiPolygon"
    lons = [x for polygon in geometry["coordinates"] for ring in polygon for x, _ in ring]
    assert min(lons) >= -180 and max(lons) <= 180
    assert any(x > 179 for x in lons) and any(x < -179 for x in lons)


def stac_item(folder: Path) -> Path:
    rng = numpy.random.default_rng(3)
    vis = rng.integers(1, 10000, size=(2, 50, 50)).astype("uint16")
    swir = rng.integers(1, 10000, size=(1, 25, 25)).astype("uint16")
    write_tif(folder / "vis.tif", vis, "EPSG:32631", from_origin(600000, 5000000, 10, 10), nodata=0)
    write_tif(
        folder / "swir.tif", swir, "EPSG:32631", from_origin(600000, 5000000, 20, 20), nodata=0
    )
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "item-1",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[3, 45], [3.01, 45], [3.01, 45.01], [3, 45.01], [3, 45]]],
        },
        "bbox": [3, 45, 3.01, 45.01],
        "properties": {
            "datetime": "2021-05-06T07:08:09Z",
            "eo:cloud_cover": 12.5,
            "platform": "sat-1",
        },
        "links": [],
        "assets": {
            "visual": {
                "href": "vis.tif",
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
                "eo:bands": [
                    {"name": "red", "center_wavelength": 0.665},
                    {"name": "nir", "center_wavelength": 0.842},
                ],
                "raster:bands": [
                    {"data_type": "uint16", "nodata": 0, "scale": 0.0001},
                    {"data_type": "uint16", "nodata": 0, "scale": 0.0001},
                ],
            },
            "swir": {
                "href": "swir.tif",
                "type": "image/tiff",
                "roles": ["data"],
                "raster:bands": [{"data_type": "uint16", "nodata": 0, "spatial_resolution": 20}],
            },
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
        },
    }
    path = folder / "item-1.json"
    path.write_text(json.dumps(item))
    return path


def test_stac_item_ingest(tmp_path):
    folder = tmp_path / "stac"
    folder.mkdir()
    stac_item(folder)
    catalog = tmp_path / "catalog.db"
    result = run_ingest(catalog, str(folder), "--product", "s")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    # the item's assets are not ingested again as lone GeoTIFFs
    assert report == {"registered": 1, "failed": []}
    store = SQLiteStore(catalog)
    bands = store.get_product("s").bands
    assert [(b.name, b.file_index, b.band_index) for b in bands] == [
        ("red", 0, 0),
        ("nir", 0, 1),
        ("swir", 1, 0),
    ]
    assert bands[0].physical_range == (0, 1) and bands[0].wavelength_nm_center == 665
    assert bands[2].resolution.value == 20
    image = store.get_image("s:item-1")
    assert image.cloud_cover == 12.5 and image.properties["platform"] == "sat-1"
    assert [Path(f.href).name for f in image.files] == ["vis.tif", "swir.tif"]
    assert image.geotrans[1] == 10  # the finest asset's grid
    with rasterio.open(folder / "swir.tif") as src:
        swir = src.read(1)
    assert image.band_stats["swir"].max == swir.max()
    store.close()


def test_ingested_geotiff_serves_expected_tile(tmp_path):
    """The user's path: `tileserver ingest`, then tiles of the new image over HTTP."""
    from fastapi.testclient import TestClient

    from tests.conftest import make_settings
    from tests.synthetic import TILE, gradient, write
    from tests.test_tiles import decode, display
    from tileserver.app import create_app

    (tmp_path / "in").mkdir()
    data = gradient("uint16", 3)
    write(tmp_path / "in" / "field_20230810.tif", data, descriptions=["red", "green", "blue"])
    overrides = tmp_path / "bands.json"
    overrides.write_text(
        json.dumps({b: {"display_range": [0, 4000]} for b in ("red", "green", "blue")})
    )
    catalog = tmp_path / "catalog.db"
    result = run_ingest(catalog, str(tmp_path / "in"), "--product", "f", "--bands", str(overrides))
    assert result.exit_code == 0, result.output
    settings = make_settings(tmp_path, catalog_url=f"sqlite:///{catalog}")
    with TestClient(create_app(settings)) as client:
        product = client.get("/products/f").json()
        assert product["bands"][0]["name"] == "red"
        url = f"/images/f:field_20230810/tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}.png"
        pixels = decode(
            client.get(url, params={"bands": "red,green,blue", "scaling": "display"}).content
        )
    for band in range(3):
        assert numpy.array_equal(pixels[band], display(data[band]))
