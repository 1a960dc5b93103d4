"""Parcel layers (load, list, delete, lookup) and parcel time series, checked against
pixels and statistics computed here independently (pyproj, shapely, numpy)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path

import numpy
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import mapping

from tests.conftest import make_settings
from tests.synthetic import write_raster
from tileserver.app import create_app
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.parcels import Dataset, LoadError, read_parcels
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.catalog.store import open_store
from tileserver.cli import cli
from tileserver.demo import PRODUCT_ID, SCL_CLASSES

CLOUDY = {3, 8, 9, 10}
SCL_LABELS = [label for _, label, _ in SCL_CLASSES]


def to_wgs84(geometry, epsg: int):
    """A geometry from EPSG:epsg to WGS84 lon/lat, vertex by vertex."""
    t = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    return shapely.transform(geometry, lambda xy: numpy.column_stack(t.transform(*xy.T)))


def from_wgs84(geometry, epsg: int):
    """A geometry from WGS84 lon/lat to EPSG:epsg, vertex by vertex."""
    t = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
    return shapely.transform(geometry, lambda xy: numpy.column_stack(t.transform(*xy.T)))


def feature(props: dict, geometry) -> dict:
    return {
        "type": "Feature",
        "properties": props,
        "geometry": None if geometry is None else mapping(geometry),
    }


def write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_vector(path: Path, geometries, fields: dict, crs: str, driver: str, layer=None):
    """Write polygons and attribute columns with pyogrio (GPKG / FlatGeobuf)."""
    pyogrio.raw.write(
        path,
        numpy.array([shapely.to_wkb(g) for g in geometries], dtype=object),
        [numpy.asarray(v) for v in fields.values()],
        list(fields),
        driver=driver,
        geometry_type="Polygon",
        crs=crs,
        layer=layer,
        append=layer is not None and path.exists(),
    )
    return path


def centres_inside(polygon, transform: Affine, height: int, width: int) -> numpy.ndarray:
    """Which pixel centres of a grid lie inside `polygon` (same CRS); asserts that none lies
    within 1 cm of its boundary, so the expectation cannot hinge on rounding."""
    rows, cols = numpy.mgrid[0:height, 0:width]
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    distance = shapely.distance(polygon.boundary, shapely.points(xs, ys))
    assert distance.min() > 0.01, "test polygon passes through a pixel centre"
    return shapely.contains_xy(polygon, xs, ys)


def expected_values(values: numpy.ndarray, inside: numpy.ndarray, nodata) -> dict:
    picked = values[inside]
    valid = picked[picked != nodata] if nodata is not None else picked
    data = valid.astype("float64")
    return {
        "count": int(valid.size),
        "nodata": int(picked.size - valid.size),
        "mean": data.mean(),
        "std": data.std(),
        "min": data.min(),
        "max": data.max(),
        "p25": numpy.percentile(data, 25),
        "p50": numpy.percentile(data, 50),
        "p75": numpy.percentile(data, 75),
    }


def expected_classes(classes: numpy.ndarray, inside: numpy.ndarray, nodata=0) -> dict:
    picked = classes[inside]
    valid = picked[picked != nodata]
    found, counts = numpy.unique(valid, return_counts=True)
    return {
        "count": int(valid.size),
        "nodata": int(picked.size - valid.size),
        "classes": {str(int(c)): int(n) for c, n in zip(found, counts, strict=True)},
    }


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


# parcel files: three fields near 52.3 N 15.0 E, one with a hole, plus bad features

FIELD_A = shapely.box(15.000, 52.300, 15.004, 52.302)
FIELD_B = shapely.Polygon(
    shapely.box(15.005, 52.300, 15.010, 52.304).exterior.coords,
    [shapely.box(15.006, 52.301, 15.008, 52.303).exterior.coords],
)
FIELD_C = shapely.Polygon([(15.011, 52.300), (15.015, 52.300), (15.013, 52.303)])
BOWTIE = shapely.Polygon([(15.02, 52.30), (15.03, 52.31), (15.03, 52.30), (15.02, 52.31)])


def good_features() -> list[dict]:
    return [
        feature({"pid": "A", "crop_type": "wheat", "year": 2024, "farm": "north"}, FIELD_A),
        feature({"pid": "B", "crop_type": "maize", "year": 2024, "farm": "south"}, FIELD_B),
        feature({"pid": "C", "crop_type": None, "year": 2023, "farm": None}, FIELD_C),
    ]


def test_cli_loads_geojson_skipping_bad_features(tmp_path, catalog_url):
    features = good_features() + [
        feature({"pid": "D", "crop_type": "rye", "year": 2024, "farm": "x"}, None),
        feature({"pid": "E", "crop_type": "rye", "year": 2024, "farm": "x"}, BOWTIE),
        feature({"pid": "F", "crop_type": "rye", "year": 2024, "farm": "x"}, shapely.Point(15, 52)),
        feature({"pid": None, "crop_type": "rye", "year": 2024, "farm": "x"}, FIELD_A),
    ]
    path = write_geojson(tmp_path / "fields.geojson", features)
    catalog = catalog_url
    result = run("parcels", "load", str(path), "--name", "fields", "--catalog", catalog, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["loaded"] == 3 and report["replaced"] is False
    assert report["skipped"] == {
        "no geometry": 1,
        "invalid geometry (Self-intersection)": 1,
        "not a polygon (Point)": 1,
        "no id": 1,
    }
    assert report["skipped_examples"]["no geometry"] == ["D"]

    listed = json.loads(run("parcels", "list", "--catalog", catalog).stdout)
    assert [(la["name"], la["count"]) for la in listed] == [("fields", 3)]
    assert (listed[0]["id_field"], listed[0]["crop_field"], listed[0]["year_field"]) == (
        "pid",
        "crop_type",
        "year",
    )
    assert listed[0]["bbox"] == pytest.approx([15.0, 52.3, 15.015, 52.304])

    store = open_store(catalog)
    parcels = store.parcels()
    b = parcels.get("fields", "B", geometry=True)
    assert (b.crop_type, b.year, b.properties) == ("maize", 2024, {"farm": "south"})
    assert shapely.geometry.shape(b.geometry).equals(FIELD_B)
    # area on the ellipsoid ~ area in the equal-area ETRS89-LAEA projection
    assert b.area_m2 == pytest.approx(from_wgs84(FIELD_B, 3035).area, rel=1e-5)
    centre = to_wgs84(from_wgs84(FIELD_B, 32633).centroid, 32633)
    assert (b.centroid_lon, b.centroid_lat) == pytest.approx((centre.x, centre.y), abs=1e-9)
    c = parcels.get("fields", "C")
    assert (c.crop_type, c.year, c.geometry) == (None, 2023, None)

    # make_valid repairs the bow tie instead of skipping it
    result = run(
        "parcels", "load", str(path), "--name", "fields", "--catalog", catalog, "--quiet",
        "--make-valid",
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert (report["loaded"], report["replaced"]) == (4, True)
    assert parcels.get("fields", "E").area_m2 > 0
    # --strict refuses, and the layer stays as it was
    result = run(
        "parcels", "load", str(path), "--name", "fields", "--catalog", catalog, "--strict"
    )  # fmt: skip
    assert result.exit_code == 1
    assert "refusing to skip" in result.output and "1 no geometry (e.g. D)" in result.output
    assert parcels.get_layer("fields").count == 4

    result = run("parcels", "delete", "fields", "--catalog", catalog)
    assert result.exit_code == 0 and "4 parcels" in result.output
    assert parcels.layers() == []
    result = run("parcels", "delete", "fields", "--catalog", catalog)
    assert result.exit_code == 1 and "parcel layer 'fields' not found" in result.output
    store.close()


@pytest.mark.parametrize(("driver", "suffix"), [("GPKG", "gpkg"), ("FlatGeobuf", "fgb")])
def test_utm_files_load_in_wgs84_and_reload_replaces(tmp_path, store, driver, suffix):
    utm = [from_wgs84(g, 32633) for g in (FIELD_A, FIELD_B, FIELD_C)]
    path = write_vector(
        tmp_path / f"fields.{suffix}",
        utm,
        {"parcel_id": numpy.array([101, 102, 103]), "CropName": ["oats", "beet", "peas"]},
        "EPSG:32633",
        driver,
    )
    parcels = store.parcels()
    report = parcels.load("utm", path)
    assert (report.layer.count, report.layer.id_field, report.layer.crop_field) == (
        3,
        "parcel_id",
        "CropName",
    )
    assert report.layer.year_field is None and report.layer.source_crs == "EPSG:32633"
    b = parcels.get("utm", "102", geometry=True)
    assert b.crop_type == "beet" and b.year is None
    stored = shapely.geometry.shape(b.geometry)
    assert stored.equals_exact(FIELD_B, tolerance=1e-9)  # back in WGS84
    assert len(stored.interiors) == 1

    # reloading with other parcels replaces the layer: old ids are gone
    write_vector(
        tmp_path / f"other.{suffix}",
        utm[:1],
        {"parcel_id": numpy.array([7]), "CropName": ["flax"]},
        "EPSG:32633",
        driver,
    )
    report = parcels.load("utm", tmp_path / f"other.{suffix}")
    assert report.replaced and report.layer.count == 1
    assert parcels.get("utm", "7").crop_type == "flax"
    with pytest.raises(Exception, match="parcel '102' not found in layer 'utm'"):
        parcels.get("utm", "102")


def test_bad_parcel_files_give_clear_errors(tmp_path, catalog_url):
    no_id = write_geojson(tmp_path / "noid.geojson", [feature({"name": "x"}, FIELD_A)])
    with pytest.raises(LoadError, match="no parcel id field .* fields: name"):
        read_parcels(no_id)
    with pytest.raises(LoadError, match="has no crop field 'culture'"):
        read_parcels(no_id, id_field="name", crop_field="culture")
    assert read_parcels(no_id, id_field="NAME").ids == ["x"]  # any case

    dupes = write_geojson(
        tmp_path / "dupes.geojson",
        [feature({"id": 5}, FIELD_A), feature({"id": 5.0}, FIELD_B), feature({"id": 6}, FIELD_C)],
    )
    result = run("parcels", "load", str(dupes), "--name", "d", "--catalog", catalog_url, "--quiet")
    assert result.exit_code == 1
    assert "1 parcel ids appear more than once in field 'id', e.g. '5' (2x)" in result.output
    # in batches, ids repeating across batches are found too, and nothing is stored
    store = open_store(catalog_url)
    with pytest.raises(LoadError, match=r"1 parcel ids .* e.g. '5' \(2x\)"):
        store.parcels().load("d", dupes, batch=1)
    assert store.parcels().layers() == []
    store.close()

    only_bad = write_geojson(tmp_path / "bad.geojson", [feature({"id": 1}, None)])
    with pytest.raises(LoadError, match=r"no parcel to load \(1 no geometry\)"):
        read_parcels(only_bad)

    two = tmp_path / "two.gpkg"
    for layer in ("a", "b"):
        write_vector(two, [FIELD_A], {"pid": numpy.array([1])}, "EPSG:4326", "GPKG", layer)
    with pytest.raises(LoadError, match=r"2 layers \(a, b\): choose one with --source-layer"):
        read_parcels(two)
    assert read_parcels(two, source_layer="b").source_layer == "b"
    assert read_parcels(two, source_layer="b", id_field="fid").ids == ["1"]

    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{nope")
    with pytest.raises(LoadError, match="cannot read"):
        read_parcels(garbage)

    store = open_store(catalog_url)
    with pytest.raises(LoadError, match="layer name 'bad name'"):
        store.parcels().load("bad name", no_id, id_field="name")
    with pytest.raises(LoadError, match=r"holds no parcel to load \(1 no geometry\)"):
        store.parcels().load("bad", only_bad)
    store.close()


def test_parcel_by_location_and_id(catalog_client, tmp_path):
    empty_client = catalog_client
    path = write_geojson(tmp_path / "fields.geojson", good_features())
    empty_client.app.state.parcels.load("fields", path)

    layers = empty_client.get("/parcels").json()["layers"]
    assert [(la["name"], la["count"]) for la in layers] == [("fields", 3)]
    assert empty_client.get("/parcels/fields").json()["id_field"] == "pid"

    inside = empty_client.get("/parcels/fields/at", params={"lon": 15.0095, "lat": 52.3035})
    assert inside.status_code == 200
    body = inside.json()
    assert (body["id"], body["crop_type"], body["year"], body["geometry"]) == (
        "B",
        "maize",
        2024,
        None,
    )
    assert body["area_m2"] == pytest.approx(from_wgs84(FIELD_B, 3035).area, rel=1e-5)
    with_geometry = empty_client.get(
        "/parcels/fields/at", params={"lon": 15.002, "lat": 52.301, "geometry": True}
    ).json()
    assert with_geometry["id"] == "A"
    assert shapely.geometry.shape(with_geometry["geometry"]).equals(FIELD_A)

    hole = empty_client.get("/parcels/fields/at", params={"lon": 15.007, "lat": 52.302})
    assert hole.status_code == 404
    assert hole.json()["detail"] == "no parcel of layer 'fields' at lon 15.007, lat 52.302"
    outside = empty_client.get("/parcels/fields/at", params={"lon": 16.0, "lat": 52.0})
    assert outside.status_code == 404 and "no parcel" in outside.json()["detail"]

    by_id = empty_client.get("/parcels/fields/C", params={"geometry": "true"}).json()
    assert by_id["id"] == "C" and by_id["geometry"]["type"] == "Polygon"
    assert empty_client.get("/parcels/fields/Z").json()["detail"] == (
        "parcel 'Z' not found in layer 'fields'"
    )
    missing = empty_client.get("/parcels/nope/at", params={"lon": 15, "lat": 52})
    assert missing.status_code == 404
    assert missing.json()["detail"] == "parcel layer 'nope' not found (layers: fields)"
    bad = empty_client.get("/parcels/fields/at", params={"lon": 200, "lat": 52})
    assert bad.status_code == 422 and "lon" in bad.json()["detail"]


# time series over synthetic rasters with known pixels

ORIGIN = (500000.0, 5800000.0)
SIZE = 40  # 10 m pixels: 400 m x 400 m
# a pentagon with a hole, vertices off the pixel centres (which end in 5 at 10 m)
POLYGON_UTM = shapely.Polygon(
    [(500033, 5799967), (500251, 5799941), (500297, 5799777), (500140, 5799703), (500061, 5799812)],
    [[(500153, 5799833), (500187, 5799833), (500187, 5799867), (500153, 5799867)]],
)


def synthetic_product() -> dict:
    return {
        "id": "synth",
        "bands": [
            {
                "name": "B04",
                "data_type": "UInt16",
                "nodata": 0,
                "resolution": {"value": 10},
                "file_index": 0,
            },
            {
                "name": "SCL",
                "type": "class",
                "data_type": "Byte",
                "nodata": 0,
                "data_range": [0, 11],
                "resolution": {"value": 20},
                "file_index": 1,
                "class_labels": SCL_LABELS,
            },
        ],
    }


def register(client: TestClient, product: str, name: str, when: str, hrefs, epsg: int, bounds):
    footprint = to_wgs84(shapely.box(*bounds), epsg)
    body = {
        "name": name,
        "product_id": product,
        "acquired": when,
        "geometry": mapping(footprint),
        "files": [{"href": str(h)} for h in hrefs],
        "crs": f"EPSG:{epsg}",
    }
    response = client.put(f"/images/{product}:{name}", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture()
def synthetic(catalog_client, tmp_path):
    """Two dates of B04 (10 m, nodata in a corner) and SCL (20 m, clouds on date one)."""
    empty_client = catalog_client
    assert empty_client.post("/products", json=synthetic_product()).status_code == 201
    rng = numpy.random.default_rng(7)
    t10 = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    t20 = Affine(20, 0, ORIGIN[0], 0, -20, ORIGIN[1])
    bounds = (ORIGIN[0], ORIGIN[1] - SIZE * 10, ORIGIN[0] + SIZE * 10, ORIGIN[1])
    arrays = {}
    for day, when in enumerate(["2024-06-01T10:00:00Z", "2024-06-11T10:00:00Z"]):
        b04 = rng.integers(1, 10000, (SIZE, SIZE)).astype("uint16")
        b04[25:, :12] = 0  # nodata, partly inside the polygon
        scl = rng.choice([4, 5, 6], (SIZE // 2, SIZE // 2)).astype("uint8")
        scl[10:15, 2:6] = 0  # nodata, partly inside the polygon
        if day == 0:
            scl[3:7, 4:9] = [[8], [9], [3], [10]]  # clouds over the polygon
        else:
            scl[0, 18:] = 9  # a cloud in a corner, outside the polygon
        name = f"d{day}"
        p10 = write_raster(tmp_path / name / "b04.tif", b04[None], "EPSG:32633", t10, nodata=0)
        p20 = write_raster(tmp_path / name / "scl.tif", scl[None], "EPSG:32633", t20, nodata=0)
        register(empty_client, "synth", name, when, [p10, p20], 32633, bounds)
        arrays[name] = (b04, scl)
    inside10 = centres_inside(POLYGON_UTM, t10, SIZE, SIZE)
    inside20 = centres_inside(POLYGON_UTM, t20, SIZE // 2, SIZE // 2)
    return arrays, inside10, inside20


def load_polygon_layer(client: TestClient, tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "p.geojson",
        [feature({"id": "P1", "crop": "wheat", "year": 2024}, to_wgs84(POLYGON_UTM, 32633))],
    )
    client.app.state.parcels.load("plots", path)


def test_value_band_statistics_per_date(catalog_client, synthetic, tmp_path):
    empty_client = catalog_client
    arrays, inside10, _ = synthetic
    load_polygon_layer(empty_client, tmp_path)
    params = {
        "product": "synth",
        "band": "B04",
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
    }
    response = empty_client.get("/parcels/plots/P1/timeseries", params=params)
    assert response.status_code == 200, response.text
    series = response.json()
    assert series["parcel"]["id"] == "P1" and series["band_type"] == "spectral"
    assert [r["date"] for r in series["rows"]] == ["2024-06-01", "2024-06-11"]
    for row, name in zip(series["rows"], ["d0", "d1"], strict=True):
        expected = expected_values(arrays[name][0], inside10, nodata=0)
        assert expected["nodata"] > 0 and expected["count"] > 100
        assert row["image_id"] == f"synth:{name}"
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key

    csv_response = empty_client.get(
        "/parcels/plots/P1/timeseries", params={**params, "format": "csv"}
    )
    assert csv_response.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv_response.headers["content-disposition"] == (
        'attachment; filename="plots_P1_synth_B04_2024-06-01_2024-06-30.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert list(rows[0]) == [
        "date", "acquired", "image_id", "count", "nodata",
        "mean", "std", "min", "max", "p25", "p50", "p75",
    ]  # fmt: skip
    for row, json_row in zip(rows, series["rows"], strict=True):
        assert row["date"] == json_row["date"] and row["image_id"] == json_row["image_id"]
        assert int(row["count"]) == json_row["count"] and int(row["nodata"]) == json_row["nodata"]
        for key in ("mean", "std", "min", "max", "p25", "p50", "p75"):
            assert float(row[key]) == pytest.approx(json_row[key])

    # the same polygon posted answers the same numbers
    posted = empty_client.post(
        "/timeseries", json={**params, "geometry": mapping(to_wgs84(POLYGON_UTM, 32633))}
    ).json()
    assert posted["rows"] == series["rows"] and posted["parcel"] is None


def test_class_band_histograms_and_cloud_free(catalog_client, synthetic):
    empty_client = catalog_client
    arrays, _, inside20 = synthetic
    body = {
        "geometry": mapping(to_wgs84(POLYGON_UTM, 32633)),
        "product": "synth",
        "band": "SCL",
        "start_date": "2024-06-01",
        "end_date": "2024-06-11",
    }
    series = empty_client.post("/timeseries", json=body).json()
    assert series["class_labels"]["4"] == "vegetation" and "0" in series["class_labels"]
    assert series["cloudy_classes"] == [3, 8, 9, 10]
    clouded = []
    for row, name in zip(series["rows"], ["d0", "d1"], strict=True):
        expected = expected_classes(arrays[name][1], inside20)
        assert {k: row[k] for k in expected} == expected
        cloudy = bool(CLOUDY & {int(v) for v in expected["classes"]})
        assert row["cloud_free"] is (not cloudy)
        clouded.append(cloudy)
    assert clouded == [True, False]  # the test's premise: one cloudy date, one clear
    assert expected["nodata"] > 0

    text = empty_client.post("/timeseries", params={"format": "csv"}, json=body).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])[:6] == ["date", "acquired", "image_id", "count", "nodata", "cloud_free"]
    assert [c for c in rows[0] if c.startswith("class_")] == [f"class_{v}" for v in range(12)]
    for row, json_row in zip(rows, series["rows"], strict=True):
        assert row["cloud_free"] == str(json_row["cloud_free"]).lower()
        counts = {c[6:]: int(n) for c, n in row.items() if c.startswith("class_") and int(n)}
        assert counts == json_row["classes"]


def test_parcel_straddling_two_utm_zones(empty_client, tmp_path):
    """One image in zone 32, one in zone 33: each counts pixel centres in its own CRS."""
    parcel = shapely.Polygon(
        [(11.9983, 52.0004), (12.0018, 52.0002), (12.0016, 52.0022), (11.9986, 52.0019)]
    )
    empty_client.post(
        "/products",
        json={"id": "zones", "bands": [{"name": "B08", "nodata": 0, "file_index": 0}]},
    )
    rng = numpy.random.default_rng(3)
    expected = {}
    for epsg, when in ((32632, "2024-06-01T10:00:00Z"), (32633, "2024-06-02T10:00:00Z")):
        local = from_wgs84(parcel, epsg)
        minx, miny, maxx, maxy = local.bounds
        x0, y0 = numpy.floor(minx / 10) * 10 - 50, numpy.ceil(maxy / 10) * 10 + 50
        width = int(numpy.ceil((maxx - x0) / 10)) + 5
        height = int(numpy.ceil((y0 - miny) / 10)) + 5
        transform = Affine(10, 0, x0, 0, -10, y0)
        values = rng.integers(1, 10000, (height, width)).astype("uint16")
        path = write_raster(tmp_path / f"{epsg}.tif", values[None], f"EPSG:{epsg}", transform)
        bounds = (x0, y0 - 10 * height, x0 + 10 * width, y0)
        register(empty_client, "zones", f"z{epsg}", when, [path], epsg, bounds)
        expected[f"zones:z{epsg}"] = expected_values(
            values, centres_inside(local, transform, height, width), nodata=0
        )
    body = {
        "geometry": mapping(parcel),
        "product": "zones",
        "band": "B08",
        "start_date": "2024-06-01",
        "end_date": "2024-06-02",
    }
    series = empty_client.post("/timeseries", json=body).json()
    assert [r["image_id"] for r in series["rows"]] == ["zones:z32632", "zones:z32633"]
    for row in series["rows"]:
        for key, value in expected[row["image_id"]].items():
            assert row[key] == pytest.approx(value), (row["image_id"], key)
    counts = [expected[i]["count"] for i in ("zones:z32632", "zones:z32633")]
    assert counts[0] != counts[1]  # the grids differ, and so do the pixels counted


def test_time_series_refusals(catalog_client, synthetic, tmp_path):
    empty_client = catalog_client
    load_polygon_layer(empty_client, tmp_path)
    params = {
        "product": "synth",
        "band": "B04",
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
    }
    cases = [
        ("/parcels/none/P1/timeseries", params, 404, "parcel layer 'none' not found"),
        ("/parcels/plots/P9/timeseries", params, 404, "parcel 'P9' not found"),
        ("/parcels/plots/P1/timeseries", {**params, "product": "x"}, 404, "product 'x'"),
        ("/parcels/plots/P1/timeseries", {**params, "band": "B99"}, 400, "unknown band 'B99'"),
        (
            "/parcels/plots/P1/timeseries",
            {**params, "start_date": "2024-07-01"},
            400,
            "start_date 2024-07-01 is after end_date 2024-06-30",
        ),
        ("/parcels/plots/P1/timeseries", {**params, "end_date": "June"}, 422, "end_date"),
        ("/parcels/plots/P1/timeseries", {**params, "format": "xml"}, 422, "format"),
    ]
    for url, query, status, detail in cases:
        response = empty_client.get(url, params=query)
        assert response.status_code == status, (query, response.text)
        assert detail in response.json()["detail"], (query, response.text)

    body = {**params, "geometry": mapping(to_wgs84(POLYGON_UTM, 32633))}
    bodies = [
        ({**body, "geometry": {"type": "Point", "coordinates": [15, 52]}}, "Polygon or Multi"),
        ({**body, "geometry": mapping(BOWTIE)}, "not a valid polygon: Self-intersection"),
        ({**body, "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}, "not a valid"),
        ({**body, "geometry": mapping(shapely.box(500000, 0, 500100, 100))}, "WGS84"),
        ({k: v for k, v in body.items() if k != "band"}, "band"),
    ]
    for wrong, detail in bodies:
        response = empty_client.post("/timeseries", json=wrong)
        assert response.status_code == 422, (wrong, response.text)
        assert detail in response.json()["detail"], response.text
    empty = empty_client.post(
        "/timeseries", json={**body, "start_date": "2025-01-01", "end_date": "2025-12-31"}
    )
    assert empty.status_code == 200 and empty.json()["rows"] == []


def test_too_many_acquisitions_is_refused_naming_the_count(tmp_path):
    store = SQLiteStore(tmp_path / "catalog.db")
    app = create_app(make_settings(tmp_path, chip_limit=1), store=store)
    with TestClient(app) as client:
        client.post("/products", json={"id": "p", "bands": [{"name": "b"}]})
        for day in range(1, 13):
            image = {
                "name": f"i{day}",
                "product_id": "p",
                "acquired": f"2024-01-{day:02d}T10:00:00Z",
                "geometry": mapping(shapely.box(14, 51, 16, 53)),
                "storage_state": "remote",
            }
            client.put(f"/images/p:i{day}", json=image)
        body = {
            "geometry": mapping(FIELD_A),
            "product": "p",
            "band": "b",
            "start_date": "2024-01-01",
            "end_date": "2024-01-31",
        }
        response = client.post("/timeseries", json=body)
        assert response.status_code == 400
        assert "holds 12 acquisitions" in response.json()["detail"]
        assert "more than the limit of 10" in response.json()["detail"]
        # within the limit, a remote image has no pixels to count: a clear 409
        response = client.post("/timeseries", json={**body, "end_date": "2024-01-05"})
        assert response.status_code == 409 and "is remote" in response.json()["detail"]
    store.close()


def test_demo_scl_time_series_matches_acquisitions(any_client, any_demo_store, tmp_path):
    """End to end on the demo: dates are acquisitions(), histograms match the SCL files."""
    client, demo_store = any_client, any_demo_store
    polygon_utm = shapely.Polygon(
        [(502013, 5796987), (504991, 5797023), (505017, 5794993), (503511, 5794007),
         (501987, 5795013)]
    )  # fmt: skip
    polygon = to_wgs84(polygon_utm, 32633)
    start, end = date(2024, 5, 1), date(2024, 7, 31)
    images = acquisitions(demo_store, PRODUCT_ID, polygon, start, end)
    assert len(images) >= 6

    parcels = demo_store.parcels()
    path = tmp_path / "demo_parcels.geojson"
    write_geojson(path, [feature({"pid": "demo-1", "crop": "wheat"}, polygon)])
    parcels.load("demo-parcels", path)
    try:
        response = client.get(
            "/parcels/demo-parcels/demo-1/timeseries",
            params={
                "product": PRODUCT_ID,
                "band": "SCL",
                "start_date": str(start),
                "end_date": str(end),
            },
        )
    finally:
        parcels.delete("demo-parcels")
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert [r["date"] for r in rows] == [str(i.acquired.date()) for i in images]
    assert [r["image_id"] for r in rows] == [i.id for i in images]
    scl = demo_store.get_product(PRODUCT_ID).band("SCL")
    for row, image in zip(rows, images, strict=True):
        with rasterio.open(image.files[scl.file_index].href) as src:
            # the polygon's pixels on the file's grid, those past the raster edge included
            x0, y0 = src.transform.c, src.transform.f
            minx, miny, maxx, maxy = polygon_utm.bounds
            col0, row0 = int((minx - x0) // 20), int((y0 - maxy) // 20)
            window = Window(col0, row0, int((maxx - x0) // 20) + 1 - col0,
                            int((y0 - miny) // 20) + 1 - row0)  # fmt: skip
            classes = src.read(1, window=window, boundless=True, fill_value=0)
            transform = src.window_transform(window)
            inside = centres_inside(polygon_utm, transform, *classes.shape)
        assert {k: row[k] for k in ("count", "nodata", "classes")} == expected_classes(
            classes, inside
        )
        assert row["cloud_free"] is (not CLOUDY & {int(v) for v in row["classes"]})
    assert {r["cloud_free"] for r in rows} == {True, False}
    assert any(r["nodata"] for r in rows)  # shifted dates end inside the polygon


def test_odd_parcel_requests_never_500(any_client, any_demo_store, tmp_path):
    client, demo_store = any_client, any_demo_store
    path = write_geojson(tmp_path / "fields.geojson", good_features())
    parcels = demo_store.parcels()
    parcels.load("odd-fields", path)
    base = {"product": PRODUCT_ID, "band": "SCL", "start_date": "2024-05-01"}
    try:
        gets = [
            ("/parcels/odd-fields/at", {"lon": "nan", "lat": "52.3"}),
            ("/parcels/odd-fields/at", {"lon": "15", "lat": "inf"}),
            ("/parcels/odd-fields/at", {"lon": "x"}),
            ("/parcels/odd-fields/at", {"lon": "15.002", "lat": "52.301", "geometry": "maybe"}),
            ("/parcels/odd-fields/%2F", {}),
            ("/parcels/odd-fields/A/timeseries", {**base, "end_date": "2024-02-30"}),
            ("/parcels/odd-fields/A/timeseries", {**base, "end_date": "9999-12-31"}),
            ("/parcels/odd-fields/A/timeseries", {**base, "end_date": "2024-07-31", "band": ""}),
            ("/parcels/odd-fields/A/timeseries", {**base, "end_date": "2024-07-31"}),
            ("/parcels/odd-fields/B/timeseries", {**base, "end_date": "2024-07-31", "band": "B04"}),
        ]
        for url, params in gets:
            response = client.get(url, params=params)
            assert response.status_code < 500, (url, params, response.text)
        posts = [
            {},
            {"geometry": None},
            {"geometry": {"type": "Polygon", "coordinates": "abc"}, **base},
            {"geometry": {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 1]]]]}, **base},
            {"geometry": {"type": "Polygon", "coordinates": []}, **base, "end_date": "2024-07-31"},
            {"geometry": mapping(FIELD_A), **base, "end_date": "2024-07-31", "extra": 1},
            {"geometry": mapping(FIELD_A), **base, "end_date": "2024-07-31", "product": "a b"},
        ]
        for body in posts:
            response = client.post("/timeseries", json=body)
            assert response.status_code < 500, (body, response.text)
            assert response.status_code == 200 or response.json()["detail"]
    finally:
        parcels.delete("odd-fields")


def test_every_catalog_keeps_parcels(catalog_client, catalog_url):
    """The parcel store is made with the catalog store: SQLite tables or PostGIS tables."""
    answer = catalog_client.get("/parcels")
    assert answer.status_code == 200 and answer.json() == {"layers": []}
    missing = catalog_client.get("/parcels/fields/at?lon=1&lat=2")
    assert missing.status_code == 404 and "none loaded" in missing.json()["detail"]


def all_parcels(store, layer: str) -> list[dict]:
    """Every parcel of a layer with its geometry, by id (through the store's own reads)."""
    ids = [pid for chunk in store.parcels().export(layer, batch=2) for pid in chunk.ids]
    return [store.parcels().get(layer, pid, geometry=True).model_dump() for pid in sorted(ids)]


def test_migrate_catalog_copies_parcel_layers(tmp_path, pgstac_url):
    """SQLite -> PostgreSQL -> SQLite: layers arrive with their records and every parcel."""
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    source = open_store(source_url)
    features = good_features() + [feature({"pid": "D", "crop_type": "rye"}, None)]
    path = write_geojson(tmp_path / "fields.geojson", features)
    source.parcels().load(None, path, dataset=Dataset("nl", 2024, "b"))
    utm = [from_wgs84(g, 32633) for g in (FIELD_A, FIELD_B, FIELD_C)]
    gpkg = write_vector(
        tmp_path / "utm.gpkg",
        utm,
        {"parcel_id": numpy.array([101, 102, 103]), "CropName": ["oats", "beet", "oats"]},
        "EPSG:32633",
        "GPKG",
    )
    source.parcels().load("utm", gpkg)
    expected_layers = [layer.model_dump() for layer in source.parcels().layers()]
    expected = {name: all_parcels(source, name) for name in ("nl_2024_b", "utm")}
    source.close()
    assert expected_layers[0]["skipped"] == {"no geometry": 1}

    env = {"TILESERVER_DATA_DIR": str(tmp_path)}
    back_url = f"sqlite:///{tmp_path / 'back.db'}"
    for src, dst in ((source_url, pgstac_url), (pgstac_url, back_url)):
        result = CliRunner(env=env).invoke(
            cli, ["migrate-catalog", src, dst, "--quiet", "--batch", "2"]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert (report["parcel_layers"], report["parcels"]) == (2, 6)
        copy = open_store(dst)
        try:
            assert [layer.model_dump() for layer in copy.parcels().layers()] == expected_layers
            for name, parcels in expected.items():
                assert all_parcels(copy, name) == parcels
            found = copy.parcels().find_layer("nl", 2024, "b")
            assert copy.parcels().at(found.name, 15.0095, 52.3035).id == "B"
        finally:
            copy.close()


def test_query_time_series_of_any_product_all_bands_with_scl(catalog_client, synthetic, tmp_path):
    """/query/parcelTimeSeries on a product that is not the demo's: every value band per
    date in one call, each date's SCL histogram beside it (issue 23 part 4), both stores."""
    arrays, inside10, inside20 = synthetic
    path = write_geojson(
        tmp_path / "plots.geojson",
        [feature({"pid": 7, "crop": "wheat"}, to_wgs84(POLYGON_UTM, 32633))],
    )
    catalog_client.app.state.parcels.load(None, path, dataset=Dataset("xx", 2024))
    params = {"aoi": "xx", "year": 2024, "pid": 7, "product": "synth", "ref": "True",
              "start_date": "2024-06-01", "end_date": "2024-06-30"}  # fmt: skip
    answer = catalog_client.get("/query/parcelTimeSeries", params=params)
    assert answer.status_code == 200, answer.text
    table = answer.json()
    assert list(table) == ["date_part", "band", "count", "mean", "std", "min", "p25", "p50",
                           "p75", "max", "hist", "reference"]  # fmt: skip
    assert table["band"] == ["B04", "B04"] and table["reference"] == ["d0", "d1"]
    assert table["date_part"] == [1717236000, 1718100000]  # 2024-06-01/11 10:00 UTC
    for n, name in enumerate(["d0", "d1"]):
        b04, scl = arrays[name]
        want = expected_values(b04, inside10, nodata=0)
        assert table["count"][n] == want["count"]
        for key in ("mean", "std", "min", "p25", "p50", "p75", "max"):
            assert table[key][n] == pytest.approx(want[key]), key
        assert table["hist"][n] == expected_classes(scl, inside20)["classes"]
    scl_only = catalog_client.get("/query/parcelTimeSeries", params={**params, "tstype": "scl"})
    assert scl_only.json()["hist"] == table["hist"]
    assert list(scl_only.json()) == ["date_part", "hist", "reference"]
    no_hist = catalog_client.get("/query/parcelTimeSeries", params={**params, "scl": "False"})
    assert "hist" not in no_hist.json() and no_hist.json()["mean"] == table["mean"]
