"""The JRC CbM services under /query/, driven as the JRC's own client programs drive them.

`wiki_client` is the CbM wiki's example client told in our own words (find a parcel by
location with its geometry, take its centroid, list the SCL raw chips of a date window,
download them, count the SCL classes inside the parcel per date with rasterio); it speaks
plain HTTP with `requests` and HTTP Basic credentials to a live server over the synthetic
S2-like demo product. Its per-date histograms are compared with ones computed here from
the demo's own SCL files (pixel centres inside the parcel on the file grid).
`timeseries_client` does the same through parcelTimeSeries.

Every test runs on each catalog store: SQLite, and PostgreSQL (the demo catalog copied with
`copy_catalog`, the parcels in PostGIS).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import numpy
import pytest
import rasterio
import rasterio.features
import requests
import shapely
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from tests.conftest import STORES, LiveServer, make_settings
from tests.postgres import drop_database, new_database
from tests.test_parcels import (
    centres_inside,
    expected_classes,
    expected_values,
    feature,
    from_wgs84,
    to_wgs84,
    write_geojson,
)
from tileserver.app import create_app
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.keys import new_key
from tileserver.catalog.migrate import copy_catalog
from tileserver.catalog.parcels import Dataset
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.catalog.store import open_store
from tileserver.demo import PRODUCT_ID

START, END = date(2024, 5, 1), date(2024, 7, 31)
# the demo's fields: a five-sided parcel (UTM 33N) and smaller neighbours around it
FIELD_UTM = shapely.Polygon(
    [(502014, 5796986), (504989, 5797020), (505014, 5794991), (503510, 5794005), (501985, 5795012)]
)  # fmt: skip  (no 10 m or 20 m pixel centre within 1.6 cm of its edges)
NEAR_UTM = shapely.box(505403, 5795007, 505797, 5795993)  # 386 m east, wheat, 39 ha
FAR_UTM = shapely.box(507013, 5795007, 507497, 5795493)  # 2 km east, wheat
SMALL_UTM = shapely.box(505103, 5796007, 505147, 5796043)  # wheat, below 3000 m2
MAIZE_UTM = shapely.box(501003, 5795007, 501497, 5795993)  # 490 m west, maize


@pytest.fixture(scope="module", params=STORES)
def jrc_store(request, demo_store, tmp_path_factory):
    """A copy of the demo catalog in each store (SQLite file copy, or pgSTAC database)."""
    folder = tmp_path_factory.mktemp("jrc")
    if request.param == "sqlite":
        with sqlite3.connect(folder / "catalog.db") as copy:
            sqlite3.connect(demo_store.path).backup(copy)
        store = SQLiteStore(folder / "catalog.db")
        yield folder, store
        store.close()
        return
    admin = request.getfixturevalue("postgres_admin")
    url = new_database(admin)
    store = open_store(url)
    copy_catalog(demo_store, store, folder / "checkpoint.json", progress=False)
    yield folder, store
    store.close()
    drop_database(admin, url)


@pytest.fixture(scope="module")
def jrc(demo_dir, jrc_store):
    """A live server over a copy of the demo catalog (each store) with two keys (org
    `agency` reads the demo product, org `other` reads nothing) and dataset nl/2024 of five
    fields."""
    folder, store = jrc_store
    product = store.get_product(PRODUCT_ID)
    store.put_product(product.model_copy(update={"readers": ["org:agency"]}))
    fields = [
        ("1001", "wheat", FIELD_UTM),
        ("1002", "wheat", NEAR_UTM),
        ("1003", "wheat", FAR_UTM),
        ("1004", "wheat", SMALL_UTM),
        ("1005", "maize", MAIZE_UTM),
    ]
    path = write_geojson(
        folder / "fields.geojson",
        [
            feature({"pid": pid, "cropname": crop, "cropcode": n}, to_wgs84(g, 32633))
            for n, (pid, crop, g) in enumerate(fields)
        ],
    )
    store.parcels().load(None, path, dataset=Dataset("nl", 2024))
    keys = {}
    for org in ("agency", "other"):
        key, token = new_key(user=f"analyst-{org}", org=org)
        store.put_key(key)
        _, key_id, secret = token.split("_", 2)
        keys[org] = (key_id, secret)
    settings = make_settings(demo_dir, chip_cache_dir=folder / "chips")
    with LiveServer(create_app(settings, store=store)) as server:
        server.keys, server.store = keys, store
        yield server


def independent_scl(store, polygon_utm) -> dict[str, dict]:
    """Per acquisition (YYYYmmddTHHMMSS), the SCL classes of the pixels whose centre lies
    inside the polygon, read from the demo's files directly."""
    polygon = to_wgs84(polygon_utm, 32633)
    scl = store.get_product(PRODUCT_ID).band("SCL")
    found = {}
    for image in acquisitions(store, PRODUCT_ID, polygon, START, END):
        with rasterio.open(image.files[scl.file_index].href) as src:
            x0, y0 = src.transform.c, src.transform.f
            minx, miny, maxx, maxy = polygon_utm.bounds
            col0, row0 = int((minx - x0) // 20), int((y0 - maxy) // 20)
            window = Window(col0, row0, int((maxx - x0) // 20) + 1 - col0,
                            int((y0 - miny) // 20) + 1 - row0)  # fmt: skip
            classes = src.read(scl.band_index + 1, window=window, boundless=True, fill_value=0)
            inside = centres_inside(polygon_utm, src.window_transform(window), *classes.shape)
        found[f"{image.acquired:%Y%m%dT%H%M%S}"] = expected_classes(classes, inside)["classes"]
    return found


# --- the clients, as an analyst would write them ----------------------------------------


def wiki_client(host: str, username: str, password: str, workdir: Path) -> dict[str, dict]:
    """Per chip date, the SCL class counts inside the parcel found at a location."""
    auth = (username, password)
    lon, lat = 15.0457, 52.3053  # a point inside the field
    answer = requests.get(
        f"{host}/query/parcelByLocation",
        params={"aoi": "nl", "year": 2024, "lon": lon, "lat": lat, "withGeometry": "True"},
        auth=auth,
        timeout=60,
    )
    answer.raise_for_status()
    parcel = answer.json()
    if not parcel or not parcel["pid"]:
        raise SystemExit("no parcel there")
    geometry = shape(json.loads(parcel["geom"][0]))  # in parcel["srid"][0]: 4326
    centre = geometry.centroid
    answer = requests.get(
        f"{host}/query/rawChipByLocation",
        params={
            "lon": centre.x,
            "lat": centre.y,
            "start_date": str(START),
            "end_date": str(END),
            "band": "SCL",
            "chipsize": 5000,
        },
        auth=auth,
        timeout=120,
    )
    answer.raise_for_status()
    chips = answer.json()
    histograms = {}
    for when, url in zip(chips["dates"], chips["chips"], strict=True):
        local = workdir / url.split("/")[-1]
        with requests.get(f"{host}{url}", auth=auth, stream=True, timeout=60) as download:
            download.raise_for_status()
            local.write_bytes(download.content)
        with rasterio.open(local) as chip:
            classes = chip.read(1)
            outline = from_wgs84(geometry, chip.crs.to_epsg())
            inside = rasterio.features.geometry_mask(
                [mapping(outline)], classes.shape, chip.transform, invert=True
            )
            values = classes[inside & (classes != chip.nodata)]
        found, counts = numpy.unique(values, return_counts=True)
        histograms[when] = {str(int(c)): int(n) for c, n in zip(found, counts, strict=True)}
    return histograms


def timeseries_client(host: str, username: str, password: str) -> tuple[dict, list]:
    """Per date, the SCL histogram of parcel 1001, through parcelTimeSeries, and its rows."""
    answer = requests.get(
        f"{host}/query/parcelTimeSeries",
        params={
            "aoi": "nl",
            "year": 2024,
            "pid": 1001,
            "tstype": "s2",
            "scl": "True",
            "ref": "True",
            "start_date": str(START),
            "end_date": str(END),
        },
        auth=(username, password),
        timeout=120,
    )
    answer.raise_for_status()
    table = answer.json()
    rows = [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
    histograms = {}
    for row in rows:
        when = f"{datetime.fromtimestamp(row['date_part'], UTC):%Y%m%dT%H%M%S}"
        histograms[when] = row["hist"]
    return histograms, rows


# --- the tests ---------------------------------------------------------------------------


def test_wiki_client_histograms_match_the_scl_files(jrc, tmp_path):
    user, secret = jrc.keys["agency"]
    got = wiki_client(jrc.url, user, secret, tmp_path)
    expected = independent_scl(jrc.store, FIELD_UTM)
    assert len(expected) >= 6
    assert got == expected
    assert any("8" in h or "9" in h for h in got.values())  # clouds on some dates
    assert len({json.dumps(h, sort_keys=True) for h in got.values()}) > 2


def test_timeseries_client_histograms_and_band_statistics(jrc):
    user, secret = jrc.keys["agency"]
    histograms, rows = timeseries_client(jrc.url, user, secret)
    expected = independent_scl(jrc.store, FIELD_UTM)
    assert histograms == expected
    # all value bands per date in one call, oldest first, band by band
    images = acquisitions(jrc.store, PRODUCT_ID, to_wgs84(FIELD_UTM, 32633), START, END)
    assert [r["band"] for r in rows[:5]] == ["B02", "B03", "B04", "B08", "B11"]
    assert [r["date_part"] for r in rows] == sorted(r["date_part"] for r in rows)
    assert {r["reference"] for r in rows} == {i.name for i in images}
    # B04 statistics equal the pixels of the 10 m file
    b04 = jrc.store.get_product(PRODUCT_ID).band("B04")
    for image in images:
        with rasterio.open(image.files[b04.file_index].href) as src:
            minx, miny, maxx, maxy = FIELD_UTM.bounds
            x0, y0 = src.transform.c, src.transform.f
            col0, row0 = int((minx - x0) // 10), int((y0 - maxy) // 10)
            window = Window(col0, row0, int((maxx - x0) // 10) + 1 - col0,
                            int((y0 - miny) // 10) + 1 - row0)  # fmt: skip
            values = src.read(b04.band_index + 1, window=window, boundless=True, fill_value=0)
            inside = centres_inside(FIELD_UTM, src.window_transform(window), *values.shape)
        want = expected_values(values, inside, 0)
        (row,) = [
            r
            for r in rows
            if r["band"] == "B04" and r["date_part"] == int(image.acquired.timestamp())
        ]
        assert row["count"] == want["count"]
        for name in ("mean", "std", "min", "max", "p25", "p50", "p75"):
            assert row[name] == pytest.approx(want[name], rel=1e-9), name


def test_parcel_services_answer_in_columns(jrc):
    auth = jrc.keys["agency"]
    base = {"aoi": "nl", "year": 2024}

    def get(path, **params):
        answer = requests.get(f"{jrc.url}/query/{path}", params=params, auth=auth, timeout=60)
        return answer.status_code, answer.json()

    status, by_id = get("parcelById", **base, pid=1001)
    assert status == 200
    assert by_id["pid"] == [1001] and by_id["ogc_fid"] == [1001]
    assert by_id["cropname"] == ["wheat"] and by_id["cropcode"] == [0]
    assert by_id["srid"] == [4326] and "geom" not in by_id
    assert by_id["area"][0] == pytest.approx(FIELD_UTM.area, rel=2e-3)  # UTM scale ~0.9996
    # nothing there: every column, empty
    status, none = get("parcelByLocation", **base, lon=15.5, lat=52.9)
    assert status == 200 and none == {k: [] for k in by_id}
    status, none = get("parcelById", **base, pid=999)
    assert status == 200 and none["pid"] == []
    # a polygon in the CbM form lon_lat-lon_lat-...: the parcels it meets, ids only
    box = to_wgs84(shapely.box(504500, 5795100, 505600, 5795300), 32633)
    poly = "-".join(f"{x}_{y}" for x, y in box.exterior.coords)
    status, found = get("parcelsByPolygon", **base, poly=poly)
    assert status == 200 and found == {"pid": [1001, 1002]}
    status, found = get("parcelsByPolygon", **base, poly=poly, only_ids="False")
    assert found["cropname"] == ["wheat", "wheat"]
    # peers: same crop, over 3000 m2, within the distance, nearest first
    status, peers = get("parcelPeers", **base, pid=1001, distance=3000)
    assert status == 200 and peers["pid"] == [1002, 1003]
    assert peers["distance"][0] == pytest.approx(NEAR_UTM.distance(FIELD_UTM), abs=2)
    assert peers["distance"][1] == pytest.approx(FAR_UTM.distance(FIELD_UTM), abs=2)
    status, peers = get("parcelPeers", **base, pid=1001, distance=1000, maxPeers=1)
    assert peers["pid"] == [1002]
    # refusals name the parameter; an unknown dataset is a 404
    assert get("parcelById", **base, pid=1001, withGeometry="perhaps")[0] == 400
    assert get("parcelsByPolygon", **base, poly="1_2-3")[0] == 400
    assert get("parcelById", aoi="xx", year=2024, pid=1)[0] == 404
    assert get("parcelById", aoi="nl", pid=1001)[1]["pid"] == [1001]  # the aoi's only year


def test_basic_credentials_follow_the_key_rules(jrc):
    params = {
        "lon": 15.0457,
        "lat": 52.3053,
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        "band": "B04",
    }
    url = f"{jrc.url}/query/rawChipByLocation"
    assert requests.get(url, params=params, timeout=60).status_code == 401
    user, secret = jrc.keys["agency"]
    refused = requests.get(url, params=params, auth=(user, secret + "x"), timeout=60)
    assert refused.status_code == 401 and "Basic" in refused.headers["www-authenticate"]
    # the whole key as password works too; a key of another org does not see the product
    ok = requests.get(url, params=params, auth=("me", f"tsk_{user}_{secret}"), timeout=60)
    assert ok.status_code == 200 and ok.json()["chips"]
    hidden = requests.get(url, params=params, auth=jrc.keys["other"], timeout=60)
    assert hidden.status_code == 404
    chip = requests.get(f"{jrc.url}{ok.json()['chips'][0]}", auth=jrc.keys["other"], timeout=60)
    assert chip.status_code == 404
    # nothing in the window: {} as the originals
    empty = requests.get(
        url, params={**params, "start_date": "2020-01-01", "end_date": "2020-01-31"},
        auth=(user, secret), timeout=60,
    )  # fmt: skip
    assert empty.status_code == 200 and empty.json() == {}


def test_batch_chips_and_band_swapped_urls(jrc):
    auth = jrc.keys["agency"]
    images = acquisitions(jrc.store, PRODUCT_ID, shapely.Point(15.0457, 52.3053), START, END)
    body = {
        "lon": 15.0457,
        "lat": 52.3053,
        "tiles": [images[0].name, images[1].name],
        "bands": ["B08", "B04"],
        "chipsize": 640,
    }
    answer = requests.post(f"{jrc.url}/query/rawChipsBatch", json=body, auth=auth, timeout=60)
    assert answer.status_code == 200, answer.text
    chips = answer.json()["chips"]
    assert len(chips) == 4 and chips[0].endswith("_B08.tif") and chips[1].endswith("_B04.tif")
    # as the CbM batch example: B08's URL with B04 in its place is B04's chip, same grid
    assert chips[0].replace("B08.tif", "B04.tif") == chips[1]
    with rasterio.MemoryFile(requests.get(jrc.url + chips[0], auth=auth).content) as f08:
        with f08.open() as nir:
            swapped = chips[0].replace("B08.tif", "B02.tif")  # never requested before
            with rasterio.MemoryFile(requests.get(jrc.url + swapped, auth=auth).content) as f:
                with f.open() as blue:
                    assert blue.transform == nir.transform and blue.shape == nir.shape == (64, 64)
                    assert blue.descriptions == ("B02",)
    bands = ["B02", "B03", "B04", "B08", "B11", "SCL", "B04"]  # 6 distinct
    too_many = {**body, "tiles": [f"T{n}" for n in range(7)], "bands": bands}  # 42 chips
    answer = requests.post(f"{jrc.url}/query/rawChipsBatch", json=too_many, auth=auth)
    assert answer.status_code == 400 and "more than 36 chips" in answer.json()["detail"]
    unknown = requests.post(f"{jrc.url}/query/rawChipsBatch", json={**body, "tiles": ["nope"]},
                            auth=auth)  # fmt: skip
    assert unknown.status_code == 404


def test_galleries_by_location_and_parcel(jrc):
    auth = jrc.keys["agency"]
    params = {"start_date": "2024-06-01", "end_date": "2024-06-30"}
    page = requests.get(
        f"{jrc.url}/query/chipsByParcelId",
        params={**params, "aoi": "nl", "year": 2024, "pid": 1001},
        auth=auth,
        timeout=120,
    )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("<img") >= 2
    empty = requests.get(
        f"{jrc.url}/query/chipsByLocation",
        params={"lon": 15.0457, "lat": 52.3053, "start_date": "2020-01-01",
                "end_date": "2020-01-02"},
        auth=auth,
    )  # fmt: skip
    assert empty.status_code == 200 and empty.json() == {}
