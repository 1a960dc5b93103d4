"""Time series of anything (issue 22 part 3): bands and band math per date over a polygon,
a parcel or a point, cloud masks from the SCL band, dropped and flagged dates, CSV and the
PNG plot, each checked against values computed here from the synthetic rasters."""

from __future__ import annotations

import csv
import io

import numpy
import pytest
import shapely
from affine import Affine
from PIL import Image as PILImage
from shapely.geometry import mapping

from tests.synthetic import write_raster
from tests.test_parcels import (
    ORIGIN,
    POLYGON_UTM,
    SCL_LABELS,
    SIZE,
    centres_inside,
    feature,
    register,
    to_wgs84,
    write_geojson,
)
from tileserver.catalog.models import Band, Product
from tileserver.render import plot
from tileserver.timeseries import CloudMask, product_cloud_mask

CLOUDY = [3, 8, 9, 10]
GAIN, OFFSET = 0.0001, -0.1  # the reflectance level of B04 and B08
DATES = ["2024-06-01T10:00:00Z", "2024-06-11T10:00:00Z", "2024-06-21T10:00:00Z"]
PERCENTILES = (25, 50, 75)


def product() -> dict:
    level = {"default": [{"function": "linear", "parameter": [GAIN, OFFSET]}]}
    return {
        "id": "ts",
        "bands": [
            {"name": "B04", "nodata": 0, "band_index": 0, "processing_levels": level},
            {"name": "B08", "nodata": 0, "band_index": 1, "processing_levels": level},
            {
                "name": "SCL",
                "type": "class",
                "data_type": "Byte",
                "nodata": 0,
                "data_range": [0, 11],
                "file_index": 1,
                "class_labels": SCL_LABELS,
            },
        ],
    }


@pytest.fixture()
def scenes(empty_client, tmp_path):
    """Three dates of B04 and B08 (10 m, one file, reflectance level) and SCL (20 m): date
    0 cloudy over the polygon, date 1 clear, date 2 with a small cloud."""
    assert empty_client.post("/products", json=product()).status_code == 201
    rng = numpy.random.default_rng(11)
    t10 = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    t20 = Affine(20, 0, ORIGIN[0], 0, -20, ORIGIN[1])
    bounds = (ORIGIN[0], ORIGIN[1] - SIZE * 10, ORIGIN[0] + SIZE * 10, ORIGIN[1])
    arrays = []
    for day, when in enumerate(DATES):
        b04 = rng.integers(300, 3000, (SIZE, SIZE)).astype("uint16")
        b08 = rng.integers(1500, 6000, (SIZE, SIZE)).astype("uint16")
        b04[25:, :12] = 0  # nodata in B04, partly inside the polygon
        b08[:6, 14:18] = 0  # nodata in B08 only
        scl = rng.choice([4, 5, 6], (SIZE // 2, SIZE // 2)).astype("uint8")
        scl[10:15, 2:6] = 0  # SCL nodata, partly inside
        if day == 0:
            scl[2:12, 3:14] = rng.choice(CLOUDY, (10, 11))  # most of the polygon
        elif day == 2:
            scl[6:8, 8:10] = 9  # four 20 m pixels of cloud
        name = f"d{day}"
        p10 = write_raster(
            tmp_path / name / "b.tif", numpy.stack([b04, b08]), "EPSG:32633", t10, nodata=0
        )
        p20 = write_raster(tmp_path / name / "scl.tif", scl[None], "EPSG:32633", t20, nodata=0)
        register(empty_client, "ts", name, when, [p10, p20], 32633, bounds)
        arrays.append((b04, b08, scl))
    inside = centres_inside(POLYGON_UTM, t10, SIZE, SIZE)
    return arrays, inside


def expected_date(arrays, inside, classes=CLOUDY) -> dict:
    """Counts, cloud fraction and NDVI statistics of one date, from the arrays."""
    b04, b08, scl = arrays
    scl10 = numpy.repeat(numpy.repeat(scl, 2, axis=0), 2, axis=1)  # nearest onto 10 m
    nodata = inside & ((b04 == 0) | (b08 == 0) | (scl10 == 0))
    cloud = inside & ~nodata & numpy.isin(scl10, classes)
    valid = inside & ~nodata & ~cloud
    red = b04[valid] * GAIN + OFFSET
    nir = b08[valid] * GAIN + OFFSET
    ndvi = (nir - red) / (nir + red)
    found = {
        "count": int(inside.sum()),
        "valid_count": int(valid.sum()),
        "nodata_count": int(nodata.sum()),
        "cloud_count": int(cloud.sum()),
        "masked_count": int(nodata.sum() + cloud.sum()),
        "cloud_fraction": cloud.sum() / (valid.sum() + cloud.sum()),
    }
    stats = {}
    if ndvi.size:
        stats = {
            "mean": ndvi.mean(),
            "std": ndvi.std(),
            "min": ndvi.min(),
            "max": ndvi.max(),
            "median": numpy.median(ndvi),
            **{f"percentile_{p}": numpy.percentile(ndvi, p) for p in PERCENTILES},
        }
    return found, stats, (red, nir, scl10[valid])


NDVI = "(B08-B04)/(B08+B04)"


def polygon_body(**extra) -> dict:
    return {
        "geometry": mapping(to_wgs84(POLYGON_UTM, 32633)),
        "product": "ts",
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        **extra,
    }


def check_rows(rows, expectations, names=(NDVI,)):
    for row, (counts, stats, _) in zip(rows, expectations, strict=True):
        for key, value in counts.items():
            assert row[key] == pytest.approx(value), (row["date"], key)
        for name in names:
            entry = row["statistics"][name]
            assert entry["valid_count"] == counts["valid_count"]
            for key, value in stats.items():
                assert entry[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (row["date"], key)


def test_ndvi_series_with_scl_mask_drops_the_cloudy_date(empty_client, scenes):
    arrays, inside = scenes
    expectations = [expected_date(a, inside) for a in arrays]
    fractions = [e[0]["cloud_fraction"] for e in expectations]
    # the premise: date 0 mostly cloud, date 1 none, date 2 a little; nodata of every band
    assert fractions[0] > 0.5 and fractions[1] == 0 and 0 < fractions[2] < 0.2
    assert all(e[0]["nodata_count"] > 0 for e in expectations)

    body = polygon_body(expression=NDVI, cloud_mask="SCL:3,8,9,10")
    response = empty_client.post("/timeseries", json=body)
    assert response.status_code == 200, response.text
    series = response.json()
    assert series["names"] == [NDVI] and series["processing_level"] == "default"
    assert series["cloud_mask"] == {"band": "SCL", "classes": CLOUDY, "source": "request"}
    assert [r["date"] for r in series["rows"]] == ["2024-06-01", "2024-06-11", "2024-06-21"]
    assert [r["image_id"] for r in series["rows"]] == ["ts:d0", "ts:d1", "ts:d2"]
    check_rows(series["rows"], expectations)
    assert series["dropped"] == []

    # the product's default mask is SCL's cloudy classes
    default = empty_client.post("/timeseries", json={**body, "cloud_mask": "default"}).json()
    assert default["cloud_mask"]["source"] == "product"
    assert default["rows"] == series["rows"]

    # max_cloud_fraction drops the cloudy date, and lists it
    dropped = empty_client.post("/timeseries", json={**body, "max_cloud_fraction": 0.2}).json()
    assert [r["date"] for r in dropped["rows"]] == ["2024-06-11", "2024-06-21"]
    assert dropped["dropped"] == [
        {"date": "2024-06-01", "image_id": "ts:d0", "cloud_fraction": pytest.approx(fractions[0])}
    ]
    check_rows(dropped["rows"], expectations[1:])
    assert all(r["flagged"] is False for r in dropped["rows"])
    # ... below the small cloud of date 2 too
    tight = empty_client.post("/timeseries", json={**body, "max_cloud_fraction": 0.0}).json()
    assert [r["date"] for r in tight["rows"]] == ["2024-06-11"]
    # flag mode keeps every date and flags those above
    flagged = empty_client.post(
        "/timeseries", json={**body, "max_cloud_fraction": 0.2, "cloudy": "flag"}
    ).json()
    assert [r["flagged"] for r in flagged["rows"]] == [True, False, False]
    assert flagged["dropped"] == []

    # other classes: only 9 is cloud, so date 0 keeps its 3, 8, 10 pixels
    only9 = empty_client.post("/timeseries", json={**body, "cloud_mask": "SCL:9"}).json()
    check_rows(only9["rows"], [expected_date(a, inside, [9]) for a in arrays])
    # without a mask SCL is not read: nothing is cloud, the fraction is unknown
    bare = empty_client.post("/timeseries", json=polygon_body(expression=NDVI)).json()
    for row, (b04, b08, _) in zip(bare["rows"], arrays, strict=True):
        assert row["cloud_count"] == 0 and row["cloud_fraction"] is None
        assert row["valid_count"] == int((inside & (b04 != 0) & (b08 != 0)).sum())


def test_band_list_with_class_band_and_percentiles(empty_client, scenes):
    arrays, inside = scenes
    body = polygon_body(bands=["B04", "B08", "SCL"], cloud_mask="SCL:3,8,9,10")
    series = empty_client.post("/timeseries", json={**body, "percentiles": [10, 90]}).json()
    assert series["names"] == ["B04", "B08", "SCL"]
    for row, a in zip(series["rows"], arrays, strict=True):
        counts, _, (red, nir, classes) = expected_date(a, inside)
        assert row["valid_count"] == counts["valid_count"]
        for name, values in (("B04", red), ("B08", nir)):
            entry = row["statistics"][name]
            assert entry["mean"] == pytest.approx(values.mean())
            assert entry["percentile_10"] == pytest.approx(numpy.percentile(values, 10))
            assert entry["percentile_90"] == pytest.approx(numpy.percentile(values, 90))
            assert "percentile_25" not in entry and "histogram" not in entry
        found, n = numpy.unique(classes, return_counts=True)
        assert [
            (c["value"], c["label"], c["count"]) for c in row["statistics"]["SCL"]["classes"]
        ] == [(float(v), SCL_LABELS[v], int(k)) for v, k in zip(found, n, strict=True)]
    # processing_level with no steps for it: the stored values
    stored = empty_client.post(
        "/timeseries", json={**body, "bands": ["B04"], "processing_level": "dn"}
    ).json()
    b04, _, scl = arrays[1]
    scl10 = numpy.repeat(numpy.repeat(scl, 2, axis=0), 2, axis=1)
    valid = inside & (b04 != 0) & (scl10 != 0)  # B08 is not read: its nodata does not count
    entry = stored["rows"][1]["statistics"]["B04"]
    assert entry["valid_count"] == int(valid.sum())
    assert entry["mean"] == pytest.approx(b04[valid].mean())


def test_csv_and_accept(empty_client, scenes):
    body = polygon_body(
        expression=NDVI, cloud_mask="SCL:3,8,9,10", max_cloud_fraction=0.2, cloudy="flag"
    )
    series = empty_client.post("/timeseries", json=body).json()
    response = empty_client.post("/timeseries", json=body, params={"format": "csv"})
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="timeseries_ts_'
    )
    by_accept = empty_client.post("/timeseries", json=body, headers={"Accept": "text/csv"})
    assert by_accept.text == response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[:10] == [
        "date", "datetime", "image_id", "count", "valid_count", "nodata_count", "cloud_count",
        "masked_count", "cloud_fraction", "flagged",
    ]  # fmt: skip
    assert f"{NDVI}_percentile_75" in rows[0]
    assert len(rows) == len(series["rows"]) == 3
    for row, json_row in zip(rows, series["rows"], strict=True):
        assert row["date"] == json_row["date"] and row["image_id"] == json_row["image_id"]
        assert row["flagged"] == str(json_row["flagged"]).lower()
        assert float(row["cloud_fraction"]) == pytest.approx(json_row["cloud_fraction"])
        for key in ("count", "valid_count", "nodata_count", "cloud_count", "masked_count"):
            assert int(row[key]) == json_row[key]
        for key in ("mean", "std", "min", "max", "median", "percentile_25"):
            assert float(row[f"{NDVI}_{key}"]) == pytest.approx(json_row["statistics"][NDVI][key])
    # a class band's counts per class
    classes = empty_client.post(
        "/timeseries", json=polygon_body(bands=["SCL"]), params={"format": "csv"}
    ).text
    first = next(csv.DictReader(io.StringIO(classes)))
    assert {k for k in first if k.startswith("SCL_class_")} >= {"SCL_class_4", "SCL_class_9"}


def marker_rows(pixels: numpy.ndarray, color, x: int) -> numpy.ndarray:
    """Rows of column x holding the colour."""
    return numpy.flatnonzero((pixels[:, x, :3] == color).all(axis=1))


def test_png_plot_puts_each_date_where_its_value_is(empty_client, scenes):
    body = polygon_body(expression=f"{NDVI};B08", cloud_mask="SCL:3,8,9,10")
    series = empty_client.post("/timeseries", json=body).json()
    response = empty_client.post("/timeseries", json=body, params={"format": "png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = PILImage.open(io.BytesIO(response.content))
    assert picture.size == (800, 400)
    pixels = numpy.asarray(picture.convert("RGB"))
    days = [numpy.datetime64(r["date"]).astype(int) for r in series["rows"]]
    means = {n: [r["statistics"][n]["mean"] for r in series["rows"]] for n in series["names"]}
    every = [v for values in means.values() for v in values]
    lo, hi = min(every), max(every)
    x1, y1 = 800 - plot.RIGHT - 1, 400 - plot.BOTTOM - 1
    xs = [plot.LEFT + (x1 - plot.LEFT) * (d - days[0]) / (days[-1] - days[0]) for d in days]
    points = [
        [(x, y1 - (y1 - plot.TOP) * (v - lo) / (hi - lo)) for x, v in zip(xs, values, strict=True)]
        for values in means.values()
    ]
    for index, color in enumerate(plot.PALETTE[: len(points)]):
        ys = [y for _, y in points[index]]
        for x, y in points[index]:
            later = [p for series in points[index + 1 :] for p in series]
            if any(abs(x - a) <= plot.MARKER and abs(y - b) <= plot.MARKER for a, b in later):
                continue  # a later series' marker covers this one
            rows = marker_rows(pixels, color, round(x))
            # the filled marker: MARKER pixels centred on the value's row
            for row in range(round(y) - 2, round(y) + 3):
                assert row in rows, (index, x, y, rows)
        # between two dates the line passes where the values interpolate
        middle = (xs[0] + xs[1]) / 2
        rows = marker_rows(pixels, color, round(middle))
        assert rows.size and abs(rows.mean() - (ys[0] + ys[1]) / 2) <= 2
        # in the plot area the series' colour stays between its lowest and highest point
        where = numpy.argwhere((pixels[plot.TOP :, :, :3] == color).all(axis=2))[:, 0]
        assert min(ys) - 3 <= where.min() + plot.TOP and where.max() + plot.TOP <= max(ys) + 3
    assert len({round(y) for series in points for _, y in series}) > 3  # the test's premise


def test_point_series(empty_client, scenes):
    arrays, _ = scenes
    row, col = 14, 9  # a 10 m pixel under a 20 m cloud on date 0 (scl[7, 4])
    x, y = ORIGIN[0] + 10 * col + 5, ORIGIN[1] - 10 * row - 5
    lon, lat = to_wgs84(shapely.Point(x, y), 32633).coords[0]
    params = {
        "product": "ts",
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        "lon": lon,
        "lat": lat,
        "bands": "B04,B08",
        "cloud_mask": "default",
    }
    response = empty_client.get("/timeseries", params=params)
    assert response.status_code == 200, response.text
    series = response.json()
    assert series["geometry"]["type"] == "Point"
    for found, (b04, b08, scl) in zip(series["rows"], arrays, strict=True):
        assert found["count"] == 1
        cloudy = int(scl[row // 2, col // 2]) in CLOUDY
        assert (found["cloud_count"], found["valid_count"]) == (int(cloudy), int(not cloudy))
        assert found["cloud_fraction"] == float(cloudy)
        if not cloudy:
            assert found["statistics"]["B04"]["mean"] == pytest.approx(
                b04[row, col] * GAIN + OFFSET
            )
            assert found["statistics"]["B08"]["max"] == pytest.approx(b08[row, col] * GAIN + OFFSET)
        else:
            assert found["statistics"]["B04"]["mean"] is None
    assert [r["cloud_count"] for r in series["rows"]][:2] == [1, 0]  # the test's premise
    # a posted GeoJSON Point (a Feature) answers the same
    point = {"type": "Feature", "properties": {}, "geometry": mapping(shapely.Point(lon, lat))}
    posted = empty_client.post(
        "/timeseries",
        json=polygon_body(geometry=point, bands=["B04", "B08"], cloud_mask="default"),
    ).json()
    assert posted["rows"] == series["rows"]


def test_parcel_series_new_form(empty_client, scenes, tmp_path):
    arrays, inside = scenes
    path = write_geojson(
        tmp_path / "p.geojson", [feature({"id": "P1"}, to_wgs84(POLYGON_UTM, 32633))]
    )
    empty_client.app.state.parcels.load("plots", path)
    params = {
        "product": "ts",
        "expression": NDVI,
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        "cloud_mask": "SCL:3,8,9,10",
        "max_cloud_fraction": 0.5,
    }
    response = empty_client.get("/parcels/plots/P1/timeseries", params=params)
    assert response.status_code == 200, response.text
    series = response.json()
    assert series["parcel"]["id"] == "P1"
    check_rows(series["rows"], [expected_date(a, inside) for a in arrays[1:]])
    assert [d["date"] for d in series["dropped"]] == ["2024-06-01"]
    png = empty_client.get(
        "/parcels/plots/P1/timeseries", params=params, headers={"Accept": "image/png"}
    )
    assert png.headers["content-type"] == "image/png"
    assert PILImage.open(io.BytesIO(png.content)).size == (800, 400)


def test_refusals_name_the_parameter(empty_client, scenes):
    base = polygon_body()
    posts = [
        ({**base, "band": "B04", "cloud_mask": "SCL:3"}, 400, "bands=NAME"),
        ({**base, "band": "B04", "bands": ["B04"]}, 400, "belong to the new form"),
        ({**base, "expression": NDVI, "max_cloud_fraction": 0.5}, 400, "needs a cloud_mask"),
        ({**base, "expression": NDVI, "cloud_mask": "B04:1"}, 400, "not a class band"),
        ({**base, "expression": NDVI, "cloud_mask": "SCL"}, 400, "is not BAND:classes"),
        ({**base, "expression": NDVI, "cloud_mask": "SCL:a"}, 400, "must be integers"),
        ({**base, "expression": "B99/B04"}, 400, "unknown band(s) B99"),
        ({**base, "bands": ["B04"], "expression": NDVI}, 400, "one of the two"),
        ({**base, "bands": ["B04"], "percentiles": [101]}, 400, "between 0 and 100"),
        ({**base, "bands": ["B04"], "max_cloud_fraction": 2}, 422, "max_cloud_fraction"),
        ({**base, "bands": ["B04"], "cloudy": "hide"}, 422, "cloudy"),
        ({**base}, 422, "name band"),
        ({**base, "band": "B04", "geometry": {"type": "Point", "coordinates": [15, 52]}}, 422,
         "Polygon or Multi"),
    ]  # fmt: skip
    for body, status, detail in posts:
        response = empty_client.post("/timeseries", json=body)
        assert response.status_code == status, (body, response.text)
        assert detail in response.json()["detail"], (body, response.text)
    query = {"product": "ts", "start_date": "2024-06-01", "end_date": "2024-06-30"}
    gets = [
        ({**query, "lon": 15, "lat": 52, "bands": "B04", "percentiles": "x"}, 400, "percentiles"),
        ({**query, "lon": 15, "lat": 52, "bands": "B04", "fmt": "csv"}, 400, "'fmt'"),
        ({**query, "lon": 15, "lat": 52, "bands": ","}, 400, "bands is empty"),
        ({**query, "lon": 15, "lat": 95, "bands": "B04"}, 422, "lat"),
        ({**query, "lon": 15, "lat": 52, "bands": "B04", "format": "xml"}, 422, "format"),
    ]
    for params, status, detail in gets:
        response = empty_client.get("/timeseries", params=params)
        assert response.status_code == status, (params, response.text)
        assert detail in response.json()["detail"], (params, response.text)
    far = empty_client.get("/timeseries", params={**query, "lon": 15, "lat": 52, "bands": "B04"})
    assert far.status_code == 200 and far.json()["rows"] == []  # no image there


def test_product_declared_cloud_mask():
    tagged = Product(
        id="p",
        bands=[
            Band(name="B1"),
            Band(name="SCL", type="class"),
            Band(name="CLM", type="class", tags=["cloud_mask:1,2"]),
        ],
    )
    assert product_cloud_mask(tagged) == CloudMask("CLM", frozenset({1, 2}), "product")
    scl = Product(id="p", bands=[Band(name="B1"), Band(name="scl", type="class")])
    assert product_cloud_mask(scl) == CloudMask("scl", frozenset(CLOUDY), "product")
    assert product_cloud_mask(Product(id="p", bands=[Band(name="B1")])) is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow on purpose
def test_band_math_infinities_are_no_value_and_wide_ranges_a_clear_error():
    """rio-tiler's band math writes x/0 as the largest float: statistics leave it out, and
    a histogram no float can span is a StatisticsError (a 400), not numpy's ValueError."""
    from tileserver.render.statistics import StatisticsError, StatisticsOptions, band_statistics

    top = numpy.finfo("float64").max
    everywhere = numpy.ones((1, 3), dtype=bool)
    data = numpy.ma.MaskedArray(numpy.array([[top, 5.0, -top]]), mask=False)
    found = band_statistics(data, everywhere, StatisticsOptions(bins=1))
    assert (found["valid_count"], found["masked_count"], found["mean"]) == (1, 2, 5.0)
    wide = numpy.ma.MaskedArray(numpy.array([[-top / 1.01, 0.0, top / 1.01]]), mask=False)
    with pytest.raises(StatisticsError, match="give histogram_range"):
        band_statistics(wide, everywhere, StatisticsOptions(bins=10))
    ranged = band_statistics(wide, everywhere, StatisticsOptions(histogram_range=(0, 1)))
    assert ranged["valid_count"] == 3
