"""Point values and area statistics of images, search mosaics and search stacks.

Synthetic rasters with known pixels: every expected value is worked out here with numpy,
pyproj and shapely from the arrays the test wrote (pixel centres inside the polygon in
each image's own CRS), never by the server's code.
"""

from __future__ import annotations

import io

import numpy
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import box, mapping, shape

from tests.synthetic import TILE, WEB_MERCATOR, write_raster
from tests.test_downloads import make_client
from tests.test_mosaic import images, register_images, valid

RES = 10.0
SIZE = 300
LABELS = [f"class {i}" for i in range(12)]
COLORS = [[i * 20, 255 - i * 20, 100, 255] for i in range(12)]
GAIN, OFFSET = 0.0001, -0.1
PRODUCT = {
    "id": "lv",
    "bands": [
        {
            "name": "B04",
            "data_range": [0, 10000],
            "display_range": [0, 4000],
            "nodata": 0,
            "processing_levels": {"toa": [{"function": "linear", "parameter": [GAIN, OFFSET]}]},
        },
        {
            "name": "B08",
            "data_range": [0, 10000],
            "nodata": 0,
            "band_index": 1,
            "processing_levels": {"toa": [{"function": "linear", "parameter": [GAIN, OFFSET]}]},
        },
        {
            "name": "SCL",
            "type": "class",
            "data_range": [0, 11],
            "band_index": 2,
            "class_labels": LABELS,
            "colormap": COLORS,
        },
    ],
}
# two images either side of 18 E, the border of UTM zones 33 and 34, each in its own zone
BORDER = (18.0, 52.1)
ZONES = {"west": "EPSG:32633", "east": "EPSG:32634"}


def arrays(shift: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """B04, B08, SCL of one image: gradients, a nodata patch, classes in 30-pixel squares."""
    rows, cols = numpy.mgrid[0:SIZE, 0:SIZE]
    b04 = 1 + rows * 5 + cols * 2 + shift
    b08 = 5000 + rows - cols
    b04[:10, :] = 0  # nodata rows
    scl = (rows // 30 + cols // 30) % 12
    return b04, b08, scl


def origin(zone: str) -> tuple[float, float]:
    """The image's upper-left corner: the border point at its centre, snapped to 10 m."""
    x, y = Transformer.from_crs("EPSG:4326", ZONES[zone], always_xy=True).transform(*BORDER)
    return round(x / RES) * RES - SIZE / 2 * RES, round(y / RES) * RES + SIZE / 2 * RES


def wgs84_geometry(geometry, crs: str) -> dict:
    """A shapely geometry in `crs` as WGS84 GeoJSON, vertex by vertex."""
    to = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return mapping(shapely.transform(geometry, lambda xy: numpy.column_stack(to.transform(*xy.T))))


def inside(geometry: dict, zone: str) -> numpy.ndarray:
    """Pixels of the zone's image whose centre is inside a WGS84 GeoJSON polygon."""
    to = Transformer.from_crs("EPSG:4326", ZONES[zone], always_xy=True)
    local = shapely.transform(shape(geometry), lambda xy: numpy.column_stack(to.transform(*xy.T)))
    x0, y0 = origin(zone)
    rows, cols = numpy.mgrid[0:SIZE, 0:SIZE]
    return shapely.contains_xy(local, x0 + (cols + 0.5) * RES, y0 - (rows + 0.5) * RES)


@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    """Images `lv:west` (UTM 33) and `lv:east` (UTM 34) and a search over both."""
    tmp_path = tmp_path_factory.mktemp("values")
    with make_client(tmp_path) as client:
        assert client.post("/products", json=PRODUCT).status_code == 201
        for shift, (zone, crs) in enumerate(ZONES.items()):
            x0, y0 = origin(zone)
            data = numpy.stack(arrays(shift)).astype("uint16")
            path = write_raster(tmp_path / f"{zone}.tif", data, crs, from_origin(x0, y0, RES, RES))
            footprint = box(x0, y0 - SIZE * RES, x0 + SIZE * RES, y0)
            body = {
                "name": zone,
                "product_id": "lv",
                "acquired": f"2024-05-0{shift + 1}T10:00:00Z",
                "geometry": wgs84_geometry(footprint, crs),
                "files": [{"href": str(path)}],
            }
            assert client.put(f"/images/lv:{zone}", json=body).status_code == 200
        search = client.post("/searches", json={"collections": ["lv"]}).json()["id"]
        yield client, search


def pixel_lonlat(zone: str, row: int, col: int) -> tuple[float, float]:
    """WGS84 of the centre of a pixel of the zone's image."""
    x0, y0 = origin(zone)
    to = Transformer.from_crs(ZONES[zone], "EPSG:4326", always_xy=True)
    return to.transform(x0 + (col + 0.5) * RES, y0 - (row + 0.5) * RES)


def display(value: float, lo: float, hi: float) -> int:
    return int(numpy.clip(numpy.floor((value - lo) / (hi - lo) * 255 + 0.5), 0, 255))


# ----------------------------------------------------------------------------- points


def test_image_point_raw_level_expression_and_drawn(zones):
    client, _ = zones
    b04, b08, _ = arrays(0)
    row, col = 40, 70
    lon, lat = pixel_lonlat("west", row, col)
    answer = client.get(f"/images/lv:west/point/{lon},{lat}", params={"bands": "B04,B08"})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["band_names"] == ["B04", "B08"]
    assert found["bands"]["B04"] == {"raw": b04[row, col], "value": b04[row, col]}
    assert found["values"] == [b04[row, col], b08[row, col]]  # no default level: as stored
    assert found["rendered"] == [b04[row, col], b08[row, col]]  # UInt16 tiles stay raw

    toa = client.get(
        f"/images/lv:west/point/{lon},{lat}",
        params={"expression": "(B08-B04)/(B08+B04)", "processing_level": "toa"},
    ).json()
    red, nir = b04[row, col] * GAIN + OFFSET, b08[row, col] * GAIN + OFFSET
    assert toa["bands"]["B04"]["raw"] == b04[row, col]
    assert toa["bands"]["B04"]["value"] == pytest.approx(red)
    assert toa["bands"]["B08"]["value"] == pytest.approx(nir)
    assert toa["band_names"] == ["(B08-B04)/(B08+B04)"]
    assert toa["values"][0] == pytest.approx((nir - red) / (nir + red))

    drawn = client.get(
        f"/images/lv:west/point/{lon},{lat}", params={"bands": "B04", "scaling": "display"}
    ).json()
    assert drawn["rendered"] == [display(b04[row, col], 0, 4000)]

    # the same pixel named in the image's own CRS
    x0, y0 = origin("west")
    x, y = x0 + (col + 0.3) * RES, y0 - (row + 0.8) * RES
    local = client.get(
        f"/images/lv:west/point/{x},{y}", params={"bands": "B04,B08", "coord_crs": "EPSG:32633"}
    ).json()
    assert local["values"] == found["values"] and local["coord_crs"] == "EPSG:32633"


def test_image_point_on_nodata_and_outside_is_null(zones):
    client, _ = zones
    lon, lat = pixel_lonlat("west", 5, 70)  # B04 nodata rows
    found = client.get(f"/images/lv:west/point/{lon},{lat}", params={"bands": "B04"}).json()
    assert found["values"] == [None] and found["bands"]["B04"]["raw"] is None
    lon, lat = pixel_lonlat("west", -50, 70)  # north of the image
    found = client.get(f"/images/lv:west/point/{lon},{lat}", params={"bands": "B04"}).json()
    assert found["values"] == [None]
    assert client.get("/images/lv:west/point/10,95").status_code == 400
    assert client.get("/images/lv:west/point/10,abc").status_code == 422
    assert client.get("/images/lv:west/point/1,2", params={"coord_crs": "nope"}).status_code == 400


def tile_lonlat(row: int, col: int) -> tuple[float, float]:
    """WGS84 of the centre of a pixel of the synthetic tile (tests/test_mosaic images)."""
    b = WEB_MERCATOR.xy_bounds(TILE)
    res = (b.right - b.left) / 256
    to = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    return to.transform(b.left + (col + 0.5) * res, b.top - (row + 0.5) * res)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A, B, C of tests/test_mosaic.py (C newest, B transparent on top, holes) and a search."""
    tmp_path = tmp_path_factory.mktemp("mosaic-values")
    with make_client(tmp_path) as client:
        register_images(client, tmp_path, ["B", "A", "C"])
        yield client, client.post("/searches", json={"collections": ["mos"]}).json()["id"]


@pytest.mark.parametrize(("row", "col"), [(30, 10), (100, 10), (200, 200)])
def test_search_point_drills_through_the_images_in_paint_order(mosaic, row, col):
    client, search_id = mosaic
    lon, lat = tile_lonlat(row, col)
    answer = client.get(f"/searches/{search_id}/point/{lon},{lat}", params={"bands": "v1,v2"})
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert [i["id"] for i in found["images"]] == ["mos:C", "mos:B", "mos:A"]
    assert [i["datetime"][:10] for i in found["images"]] == [
        "2024-01-03",
        "2024-01-02",
        "2024-01-01",
    ]
    first = None
    for entry, name in zip(found["images"], "CBA", strict=True):
        _, v1, v2, alpha = images()[name]
        ok = bool(valid(v1, v2, alpha)[row, col])
        assert entry["valid"] is ok
        expected = [int(v1[row, col]), int(v2[row, col])] if ok else [None, None]
        assert entry["values"] == expected, name
        if ok and first is None:
            first = (f"mos:{name}", expected)
    assert found["mosaic"]["images"][0] == first[0]
    assert found["mosaic"]["values"] == first[1] == found["mosaic"]["rendered"]

    mean = client.get(
        f"/searches/{search_id}/point/{lon},{lat}",
        params={"bands": "v1,v2", "pixel_selection": "mean"},
    ).json()
    ok = [n for n in "CBA" if valid(*images()[n][1:])[row, col]]
    expected = numpy.mean([[images()[n][1][row, col], images()[n][2][row, col]] for n in ok], 0)
    # composited in the images' type, as the tiles are: the tile shows the same value
    assert mean["mosaic"]["values"] == pytest.approx(list(expected), abs=1)
    tile = client.get(
        f"/searches/{search_id}/tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}.npy",
        params={"bands": "v1,v2", "pixel_selection": "mean", "scaling": "raw"},
    )
    drawn = numpy.load(io.BytesIO(tile.content))[:2, row, col]
    assert mean["mosaic"]["rendered"] == list(drawn)


def test_search_point_outside_every_image_is_404(mosaic):
    client, search_id = mosaic
    assert client.get(f"/searches/{search_id}/point/-120,10").status_code == 404


# ----------------------------------------------------------------------------- statistics


def expected_stats(values: numpy.ndarray, area: numpy.ndarray) -> dict:
    data = values[area].astype("float64")
    return {
        "count": int(area.sum()),
        "valid_count": int(data.size),
        "min": data.min(),
        "max": data.max(),
        "mean": data.mean(),
        "std": data.std(),
        "median": numpy.median(data),
    }


def assert_stats(found: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert found[key] == pytest.approx(value), key


def test_image_statistics_over_a_bbox(zones):
    client, _ = zones
    b04, b08, _ = arrays(0)
    x0, y0 = origin("west")
    bbox = f"{x0 + 200},{y0 - 800},{x0 + 1200},{y0}"  # cols 20..119, rows 0..79
    answer = client.get(
        "/images/lv:west/statistics",
        params={
            "bands": "B04,B08",
            "bbox": bbox,
            "bbox_crs": "EPSG:32633",
            "percentiles": "10,50,90",
            "histogram_bins": "0,100,300,1000",
        },
    )
    assert answer.status_code == 200, answer.text
    stats = answer.json()["statistics"]
    window = (slice(0, 80), slice(20, 120))
    valid_pixels = b04[window] != 0
    for name, band in (("B04", b04), ("B08", b08)):
        values = band[window][valid_pixels]
        expected = expected_stats(band[window], valid_pixels)
        expected["count"] = 8000
        assert_stats(stats[name], expected)
        assert stats[name]["masked_count"] == 1000  # the nodata rows mask every band
        for p in (10, 50, 90):
            assert stats[name][f"percentile_{p}"] == pytest.approx(numpy.percentile(values, p))
        counts, _ = numpy.histogram(values, bins=[0, 100, 300, 1000])
        assert stats[name]["histogram"] == {"counts": list(counts), "edges": [0, 100, 300, 1000]}


def straddling() -> dict:
    """A polygon across 18 E (the UTM 33 / 34 border), inside both images."""
    lon, lat = BORDER
    ring = [
        (lon - 0.008, lat - 0.006),
        (lon + 0.009, lat - 0.007),
        (lon + 0.006, lat + 0.008),
        (lon - 0.005, lat + 0.009),
    ]
    return mapping(shapely.Polygon(ring))


@pytest.mark.parametrize("zone", ["west", "east"])
def test_statistics_of_a_polygon_straddling_two_utm_zones(zones, zone):
    client, search_id = zones
    geometry = straddling()
    answer = client.post(
        f"/images/lv:{zone}/statistics",
        params={"expression": "(B08-B04)/(B08+B04)", "processing_level": "toa"},
        json={"type": "Feature", "geometry": geometry, "properties": {"name": "parcel"}},
    )
    assert answer.status_code == 200, answer.text
    feature = answer.json()
    assert feature["type"] == "Feature" and feature["properties"]["name"] == "parcel"
    b04, b08, _ = arrays(0 if zone == "west" else 1)
    area = inside(geometry, zone)
    assert 5000 < area.sum() < 90000  # the polygon is well inside the image
    red, nir = b04 * GAIN + OFFSET, b08 * GAIN + OFFSET
    with numpy.errstate(all="ignore"):
        ndvi = (nir - red) / (nir + red)
    stats = feature["properties"]["statistics"]["(B08-B04)/(B08+B04)"]
    assert_stats(stats, expected_stats(ndvi, area & (b04 != 0)))
    assert stats["count"] == int(area.sum())


def test_class_band_statistics_count_classes_with_labels(zones):
    client, _ = zones
    geometry = straddling()
    feature = client.post(
        "/images/lv:west/statistics", params={"bands": "SCL"}, json={"geometry": geometry}
    ).json()
    classes = feature["properties"]["statistics"]["SCL"]["classes"]
    _, _, scl = arrays(0)
    values, counts = numpy.unique(scl[inside(geometry, "west")], return_counts=True)
    assert classes == [
        {"value": float(v), "label": LABELS[v], "count": int(n)}
        for v, n in zip(values, counts, strict=True)
    ]


def test_coverage_weighs_pixels_by_the_share_covered(zones):
    client, _ = zones
    b04, _, _ = arrays(0)
    x0, y0 = origin("west")
    # rows 20..39 whole, cols 30..49 whole and col 50 covered 30 % (its centre outside)
    local = box(x0 + 300, y0 - 400, x0 + 503, y0 - 200)
    geometry = wgs84_geometry(local, "EPSG:32633")
    plain = client.post("/images/lv:west/statistics", params={"bands": "B04"}, json=geometry).json()
    weighed = client.post(
        "/images/lv:west/statistics", params={"bands": "B04", "coverage": "true"}, json=geometry
    ).json()
    weights = numpy.zeros_like(b04, dtype="float64")
    weights[20:40, 30:50] = 1
    weights[20:40, 50] = 0.3
    stats = weighed["properties"]["statistics"]["B04"]
    assert stats["weight"] == pytest.approx(weights.sum(), abs=0.05)
    mean = (b04 * weights).sum() / weights.sum()
    assert stats["mean"] == pytest.approx(mean, rel=1e-4)
    centres = plain["properties"]["statistics"]["B04"]
    assert centres["count"] == 20 * 20
    assert centres["mean"] == pytest.approx(b04[20:40, 30:50].mean())


def test_feature_collection_gets_one_answer_per_feature(zones):
    client, _ = zones
    x0, y0 = origin("west")
    features = [
        {
            "type": "Feature",
            "properties": {"id": i},
            "geometry": wgs84_geometry(
                box(x0 + 100 * i, y0 - 500, x0 + 100 * i + 300, y0 - 200), "EPSG:32633"
            ),
        }
        for i in range(1, 3)
    ]
    answer = client.post(
        "/images/lv:west/statistics",
        params={"bands": "B08"},
        json={"type": "FeatureCollection", "features": features},
    )
    assert answer.status_code == 200, answer.text
    _, b08, _ = arrays(0)
    for i, feature in enumerate(answer.json()["features"], start=1):
        assert feature["properties"]["id"] == i
        stats = feature["properties"]["statistics"]["B08"]
        window = b08[20:50, 10 * i : 10 * i + 30]
        assert stats["count"] == 900 and stats["mean"] == pytest.approx(window.mean())


def test_search_mosaic_and_stack_statistics(mosaic):
    client, search_id = mosaic
    stack = client.get(f"/searches/{search_id}/stack/statistics", params={"bands": "v1"})
    assert stack.status_code == 200, stack.text
    layers = stack.json()["layers"]
    assert [layer["key"] for layer in layers] == ["2024-01-03", "2024-01-02", "2024-01-01"]
    for layer, name in zip(layers, "CBA", strict=True):
        _, v1, _, alpha = images()[name]  # v1 alone is read: v2's nodata does not count
        expected = expected_stats(v1, (v1 != 0) & (alpha != 0)) | {"count": 65536}
        assert_stats(layer["statistics"]["v1"], expected)
    mosaic_stats = client.get(
        f"/searches/{search_id}/statistics", params={"bands": "v1", "pixel_selection": "highest"}
    ).json()["statistics"]["v1"]
    stacked = numpy.ma.stack(
        [
            numpy.ma.MaskedArray(images()[n][1], mask=(images()[n][1] == 0) | (images()[n][3] == 0))
            for n in "CBA"
        ]
    )
    highest = stacked.max(axis=0)
    assert mosaic_stats["max"] == highest.max() and mosaic_stats["mean"] == pytest.approx(
        highest.mean()
    )
    assert mosaic_stats["valid_count"] == int((~numpy.ma.getmaskarray(highest)).sum())


@pytest.mark.parametrize(
    ("params", "body", "words"),
    [
        ({"percentiles": "2,x"}, None, "percentiles"),
        ({"percentiles": "2.5"}, None, "whole numbers"),
        ({"histogram_bins": "0"}, None, "histogram_bins"),
        ({"histogram_bins": "3,2,1"}, None, "increase"),
        ({"histogram_range": "5"}, None, "histogram_range"),
        ({"percentile": "5"}, None, "unknown query parameter"),
        ({"bbox": "1,2,3,4"}, {"type": "Point", "coordinates": [1, 2]}, "Polygon"),
        ({"bbox": "17.9,52,18.1,52.2"}, {"geometry": straddling()}, "not both"),
        ({}, {"type": "FeatureCollection", "features": []}, "no features"),
    ],
)
def test_bad_statistics_requests_are_clear_400s(zones, params, body, words):
    client, _ = zones
    if body is None:
        answer = client.get("/images/lv:west/statistics", params=params)
    else:
        answer = client.post("/images/lv:west/statistics", params=params, json=body)
    assert answer.status_code == 400, answer.text
    assert words.lower() in answer.json()["detail"].lower()


def test_odd_points_and_colormaps_found_by_fuzzing_are_400s():
    """A longitude past 180 (PROJ refuses it in UTM) and a colormap that is a bare number
    were 500s; they are the errors app.py answers 400 to."""
    from tileserver.render.colors import ColorError, parse_colormap
    from tileserver.render.download import DownloadError
    from tileserver.values import Point

    with pytest.raises(DownloadError, match="is not on the Earth"):
        Point(573.0, 0.0).lonlat()
    assert Point(180.0, 0.0).lonlat() == (180.0, 0.0)
    for text in ("5", '"x"', "true", "null"):
        with pytest.raises(ColorError, match="colormap is a JSON object"):
            parse_colormap(text)
