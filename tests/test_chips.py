"""Chips by location (JRC chipsByLocation / rawChipByLocation): pixels worked out by hand.

Synthetic scenes in EPSG:32633 place the point at a known fractional pixel (col 150.3,
row 140.7 of every full scene), so each chip window is written out here as numbers and
every expected pixel comes from the numpy arrays the scenes were written from.
"""

from __future__ import annotations

import re
from datetime import date
from html.parser import HTMLParser

import numpy
import pytest
import shapely
from affine import Affine
from fastapi.testclient import TestClient
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from tests.conftest import make_settings
from tests.synthetic import write_raster
from tileserver.api.chips import GalleryParams, chip_images, gallery_chips
from tileserver.app import create_app
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.render.chips import Lut, gallery_chip, outline_pixels, parse_lut
from tileserver.render.errors import RenderError
from tileserver.render.reader import Grid

LON, LAT = 15.1, 52.3
UTM = "EPSG:32633"
PX, PY = Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(LON, LAT)
POINT_COL, POINT_ROW = 150.3, 140.7  # where the point falls in a full scene's 10 m grid
# a 128-pixel chip: the grid lines nearest the point are col 150 and row 141
COL_OFF, ROW_OFF = 150 - 64, 141 - 64
PRODUCT = {
    "id": "synth2",
    "bands": [
        *(
            {"name": n, "band_index": i, "nodata": 0, "resolution": {"value": 10}}
            for i, n in enumerate(["r", "g", "b"])
        ),
        {
            "name": "swir",
            "file_index": 1,
            "band_index": 0,
            "nodata": 0,
            "resolution": {"value": 20},
        },
    ],
}


def ten_m(base: int, width: int = 300, height: int = 300) -> numpy.ndarray:
    """Three bands; band b at (row, col) = base + 7 row + 3 col + 500 b (never 0)."""
    rows, cols = numpy.mgrid[0:height, 0:width]
    return numpy.stack([base + 7 * rows + 3 * cols + 500 * b for b in range(3)]).astype("uint16")


def twenty_m(base: int, width: int = 150, height: int = 150) -> numpy.ndarray:
    """One band at 20 m: base + 11 row + 5 col."""
    rows, cols = numpy.mgrid[0:height, 0:width]
    return (base + 11 * rows + 5 * cols)[None].astype("uint16")


def origin(point_col: float = POINT_COL, point_row: float = POINT_ROW) -> tuple[float, float]:
    """Upper-left corner of a scene in which the point is at (point_col, point_row)."""
    return PX - point_col * 10, PY + point_row * 10


def add_scene(client, tmp_path, name, acquired, data10, data20, version=None, corner=None):
    """Write a scene's two files and register it; returns its arrays."""
    x0, y0 = corner or origin()
    t10, t20 = Affine(10, 0, x0, 0, -10, y0), Affine(20, 0, x0, 0, -20, y0)
    f10 = write_raster(tmp_path / name / "b10.tif", data10, UTM, t10)
    f20 = write_raster(tmp_path / name / "b20.tif", data20, UTM, t20)
    bounds = (x0, y0 - 10 * data10.shape[1], x0 + 10 * data10.shape[2], y0)
    footprint = transform_geom(UTM, "EPSG:4326", mapping(box(*bounds)))
    image = {
        "name": name,
        "product_id": PRODUCT["id"],
        "acquired": acquired,
        "geometry": footprint,
        "files": [{"href": str(f10)}, {"href": str(f20)}],
        "crs": UTM,
        "properties": {"processing:version": version} if version else {},
    }
    response = client.put(f"/images/{PRODUCT['id']}:{name}", json=image)
    assert response.status_code == 200, response.text
    return data10, data20


@pytest.fixture()
def scenes(tmp_path):
    """A client (chip limit 3) over seven scenes on four dates, and their arrays.

    2024-05-03: A (covers the chip) and B (higher version, covers the point but only part
    of the chip): A wins. 2024-05-13: C and D cover it alike: D, the higher version, wins.
    2024-06-01: E with nodata pixels. 2024-06-11: F, the chip runs past its east edge.
    2024-06-20: G, far away, does not cover the point.
    """
    store = SQLiteStore(tmp_path / "catalog.db")
    app = create_app(make_settings(tmp_path, chip_limit=3), store=store)
    with TestClient(app) as client:
        assert client.post("/products", json=PRODUCT).status_code == 201
        arrays = {}
        arrays["A"] = add_scene(
            client, tmp_path, "A", "2024-05-03T10:20:31Z", ten_m(100), twenty_m(60), "01.00"
        )
        arrays["B"] = add_scene(
            client,
            tmp_path,
            "B",
            "2024-05-03T10:20:35Z",
            ten_m(5000, width=170),
            twenty_m(5000, width=85),
            "09.00",
        )
        arrays["C"] = add_scene(
            client, tmp_path, "C", "2024-05-13T10:20:31Z", ten_m(200), twenty_m(70), "01.00"
        )
        arrays["D"] = add_scene(
            client, tmp_path, "D", "2024-05-13T10:20:31Z", ten_m(300), twenty_m(80), "02.00"
        )
        e10 = ten_m(400)
        e10[:, 100:120, :] = 0  # a nodata strip across the chip
        e10[1, 150:160, 100:110] = 0  # nodata in one band only: transparent too
        arrays["E"] = add_scene(
            client, tmp_path, "E", "2024-06-01T10:20:31Z", e10, twenty_m(90), "01.00"
        )
        arrays["F"] = add_scene(
            client,
            tmp_path,
            "F",
            "2024-06-11T10:20:31Z",
            ten_m(600, width=180),
            twenty_m(100, width=90),
        )
        add_scene(
            client,
            tmp_path,
            "G",
            "2024-06-20T10:20:31Z",
            ten_m(700),
            twenty_m(110),
            corner=origin(-500, 140.7),
        )
        yield client, arrays, store, app.state.settings
    store.close()


def decode(content: bytes) -> tuple[numpy.ndarray, dict]:
    """Pixels and profile of an encoded PNG / GeoTIFF."""
    with MemoryFile(content) as memfile, memfile.open() as src:
        return src.read(), {
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "descriptions": src.descriptions,
            "width": src.width,
            "height": src.height,
            "dtype": src.dtypes[0],
        }


def lut_stretch(values, lo, hi) -> numpy.ndarray:
    """SEMANTICS.md 3 written out: clip(255 (x-lo)/(hi-lo)) as uint8, or clip(255 (x-lo))."""
    x = numpy.asarray(values, dtype="float64")
    scaled = 255 * (x - lo) / (hi - lo) if lo < hi else 255 * (x - lo)
    return numpy.clip(scaled, 0, 255).astype("uint8")


class GalleryPage(HTMLParser):
    """Rows of (img src, label) cells of a gallery page."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[dict]] = []
        self.in_label = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag == "img":
            self.rows[-1].append({"src": attrs["src"], "label": ""})
        elif tag == "div" and attrs.get("class") == "date":
            self.in_label = True

    def handle_endtag(self, tag):
        if tag == "div":
            self.in_label = False

    def handle_data(self, data):
        if self.in_label:
            self.rows[-1][-1]["label"] += data.strip()


def parse_gallery(html: str) -> list[list[dict]]:
    page = GalleryPage()
    page.feed(html)
    return page.rows


def gallery(client, **params):
    query = {
        "lon": LON,
        "lat": LAT,
        "start_date": "2024-05-01",
        "end_date": "2024-06-30",
        "product": PRODUCT["id"],
        "bands": "r_g_b",
        **params,
    }
    return client.get("/chips/gallery", params=query)


def raw(client, **params):
    query = {
        "lon": LON,
        "lat": LAT,
        "start_date": "2024-05-01",
        "end_date": "2024-06-30",
        "product": PRODUCT["id"],
        "band": "swir",
        "chipsize": 1000,
        **params,
    }
    return client.get("/chips/raw", params=query)


def gallery_pngs(client, response) -> list[tuple[str, numpy.ndarray]]:
    """(label, RGBA pixels) of every chip of a gallery page, fetched from its img URL."""
    assert response.status_code == 200, response.text
    chips = []
    for row in parse_gallery(response.text):
        for cell in row:
            fetched = client.get(cell["src"])
            assert fetched.status_code == 200
            assert fetched.headers["content-type"] == "image/png"
            chips.append((cell["label"], decode(fetched.content)[0]))
    return chips


# --- gallery pixels -------------------------------------------------------------------


def test_gallery_absolute_lut_and_dedup(scenes):
    """Absolute LUT, bands in request order, a 20 m band on the 10 m grid; A and D win."""
    client, arrays, _, _ = scenes
    lut = (0, 3000, 0, 4000, 500, 2500)
    response = gallery(client, end_date="2024-05-31", bands="b_swir_r", lut="_".join(map(str, lut)))
    chips = gallery_pngs(client, response)
    assert [label for label, _ in chips] == ["2024-05-03", "2024-05-13"]
    rows = slice(ROW_OFF, ROW_OFF + 128)
    cols = slice(COL_OFF, COL_OFF + 128)
    r20, c20 = numpy.mgrid[ROW_OFF : ROW_OFF + 128, COL_OFF : COL_OFF + 128] // 2
    for (_, pixels), name in zip(chips, ["A", "D"], strict=True):
        d10, d20 = arrays[name]
        sources = [d10[2, rows, cols], d20[0][r20, c20], d10[0, rows, cols]]
        expected = numpy.stack(
            [lut_stretch(s, lo, hi) for s, lo, hi in zip(sources, lut[::2], lut[1::2], strict=True)]
        )
        assert pixels.shape == (4, 128, 128)
        numpy.testing.assert_array_equal(pixels[:3], expected)
        assert (pixels[3] == 255).all()


def test_gallery_percentile_lut_over_valid_pixels(scenes):
    """5_95 (the default): numpy's linear percentiles of the opaque pixels, per band."""
    client, arrays, _, _ = scenes
    response = gallery(client, start_date="2024-06-01", end_date="2024-06-01", bands="r_g_b")
    ((label, pixels),) = gallery_pngs(client, response)
    assert label == "2024-06-01"
    window = arrays["E"][0][:, ROW_OFF : ROW_OFF + 128, COL_OFF : COL_OFF + 128]
    valid = (window != 0).all(axis=0)
    assert 0 < valid.sum() < 128 * 128
    expected = numpy.zeros((3, 128, 128), dtype="uint8")
    for b in range(3):
        lo, hi = numpy.percentile(window[b][valid], [5, 95])
        expected[b] = lut_stretch(window[b], lo, hi)
    expected[:, ~valid] = 0
    numpy.testing.assert_array_equal(pixels[:3], expected)
    numpy.testing.assert_array_equal(pixels[3], numpy.where(valid, 255, 0))


def test_gallery_chip_past_the_image_edge_is_transparent(scenes):
    client, arrays, _, _ = scenes
    response = gallery(
        client, start_date="2024-06-11", end_date="2024-06-11", bands="r_g_b", lut="0_100"
    )
    ((_, pixels),) = gallery_pngs(client, response)
    inside = 180 - COL_OFF  # F is 180 columns wide
    assert (pixels[3][:, :inside] == 255).all() and (pixels[3][:, inside:] == 0).all()
    window = arrays["F"][0][:, ROW_OFF : ROW_OFF + 128, COL_OFF:180]
    for b in range(3):
        lo, hi = window[b].min(), window[b].max()  # percentiles 0 and 100 of the valid pixels
        numpy.testing.assert_array_equal(pixels[b][:, :inside], lut_stretch(window[b], lo, hi))


def test_gallery_page_layout_and_headers(scenes):
    client, _, _, _ = scenes
    response = gallery(client, end_date="2024-06-05", size=32)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["X-Chips-Rendered"] == "3"
    assert response.headers["X-Chips-Cached"] == "0"
    rows = parse_gallery(response.text)
    labels = [cell["label"] for row in rows for cell in row]
    assert labels == ["2024-05-03", "2024-05-13", "2024-06-01"]
    for row in rows:
        for cell in row:
            assert re.fullmatch(r"/chips/files/synth2\.\d{8}T\d{6}_[0-9a-f]{32}\.png", cell["src"])
            pixels = decode(client.get(cell["src"]).content)[0]
            assert pixels.shape == (4, 32, 32)
    again = gallery(client, end_date="2024-06-05", size=32)
    assert again.headers["X-Chips-Rendered"] == "0"
    assert again.headers["X-Chips-Cached"] == "3"
    assert again.text == response.text


def test_gallery_rows_hold_at_most_eight(tmp_path, empty_client):
    """Ten dates: rows of 8 and 2, in date order."""
    client = empty_client
    assert client.post("/products", json=PRODUCT).status_code == 201
    for day in range(1, 11):
        add_scene(
            client, tmp_path, f"D{day:02d}", f"2024-07-{day:02d}T10:00:00Z", ten_m(day), twenty_m(1)
        )
    response = gallery(client, start_date="2024-07-01", end_date="2024-07-31", size=16)
    rows = parse_gallery(response.text)
    assert [len(row) for row in rows] == [8, 2]
    assert [c["label"] for row in rows for c in row] == [f"2024-07-{d:02d}" for d in range(1, 11)]
    for row in rows:
        for cell in row:
            assert client.get(cell["src"]).headers["content-type"] == "image/png"


def test_gallery_under_a_root_path(tmp_path):
    """Image URLs carry the proxy prefix the app is served under."""
    store = SQLiteStore(tmp_path / "catalog.db")
    app = create_app(make_settings(tmp_path), store=store)
    with TestClient(app, root_path="/prefix") as client:
        assert client.post("/products", json=PRODUCT).status_code == 201
        add_scene(client, tmp_path, "A", "2024-05-03T10:20:31Z", ten_m(100), twenty_m(60))
        rows = parse_gallery(gallery(client, size=8).text)
        assert rows[0][0]["src"].startswith("/prefix/chips/files/")
    store.close()


def test_no_image_covering_the_point(scenes):
    client, _, _, _ = scenes
    page = gallery(client, lon=16.5, lat=48.0)
    assert page.status_code == 200
    assert "No acquisition covers" in page.text
    assert parse_gallery(page.text) == []
    response = raw(client, lon=16.5, lat=48.0)
    assert response.status_code == 200
    assert response.json() == {"dates": [], "chips": []}


# --- raw chips ------------------------------------------------------------------------


def test_raw_chip_geotiff(scenes):
    """A 1000 m chip of the 20 m band: 50 x 50 pixels on the band's own grid."""
    client, arrays, _, _ = scenes
    response = raw(client, start_date="2024-05-01", end_date="2024-05-31")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dates"] == ["20240503T102031", "20240513T102031"]
    # the point is at col 75.15, row 70.35 of the 20 m grid: nearest lines 75 and 70
    col_off, row_off = 75 - 25, 70 - 25
    for url, name in zip(body["chips"], ["A", "D"], strict=True):
        assert re.fullmatch(r"chips/files/synth2\.\d{8}T\d{6}_[0-9a-f]{32}\.tif", url)
        fetched = client.get("/" + url)
        assert fetched.status_code == 200
        assert fetched.headers["content-type"].startswith("image/tiff")
        pixels, profile = decode(fetched.content)
        x0, y0 = origin()
        assert profile["crs"] == CRS.from_string(UTM)
        assert profile["transform"].almost_equals(
            Affine(20, 0, x0 + 20 * col_off, 0, -20, y0 - 20 * row_off)
        )
        assert (profile["width"], profile["height"]) == (50, 50)
        assert profile["descriptions"] == ("swir",)
        assert profile["nodata"] == 0
        assert profile["dtype"] == "uint16"
        source = arrays[name][1][0, row_off : row_off + 50, col_off : col_off + 50]
        numpy.testing.assert_array_equal(pixels[0], source)


def test_raw_chip_odd_size_and_10m_band(scenes):
    """1020 m at 20 m is 51 pixels centred on the point's pixel; 700 m at 10 m is 70."""
    client, arrays, _, _ = scenes
    body = raw(client, end_date="2024-05-03", chipsize=1020).json()
    pixels, profile = decode(client.get("/" + body["chips"][0]).content)
    assert (profile["width"], profile["height"]) == (51, 51)
    numpy.testing.assert_array_equal(pixels[0], arrays["A"][1][0, 70 - 25 : 70 + 26, 75 - 25 : 101])
    body = raw(client, end_date="2024-05-03", band="g", chipsize=700).json()
    pixels, profile = decode(client.get("/" + body["chips"][0]).content)
    assert (profile["width"], profile["height"]) == (70, 70)
    assert profile["transform"].a == 10
    assert profile["descriptions"] == ("g",)
    numpy.testing.assert_array_equal(pixels[0], arrays["A"][0][1, 141 - 35 : 141 + 35, 115:185])


def test_raw_chip_past_the_edge_is_nodata(scenes):
    client, arrays, _, _ = scenes
    body = raw(client, start_date="2024-06-11", end_date="2024-06-11").json()
    pixels, profile = decode(client.get("/" + body["chips"][0]).content)
    inside = 90 - 50  # F's 20 m file is 90 columns wide; the chip starts at column 50
    numpy.testing.assert_array_equal(pixels[0][:, :inside], arrays["F"][1][0, 45:95, 50:90])
    assert (pixels[0][:, inside:] == profile["nodata"]).all()


def test_cache_renders_only_new_dates(scenes):
    client, _, _, settings = scenes
    first = raw(client, end_date="2024-05-31")
    assert (first.headers["X-Chips-Rendered"], first.headers["X-Chips-Cached"]) == ("2", "0")
    files = sorted((settings.data_dir / "chips").glob("*.tif"))
    assert [f.name for f in files] == sorted(u.rsplit("/", 1)[1] for u in first.json()["chips"])
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    longer = raw(client, end_date="2024-06-05")
    assert (longer.headers["X-Chips-Rendered"], longer.headers["X-Chips-Cached"]) == ("1", "2")
    assert longer.json()["chips"][:2] == first.json()["chips"]
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    assert len(list((settings.data_dir / "chips").glob("*.tif"))) == 3
    other_size = raw(client, end_date="2024-05-31", chipsize=1200)
    assert other_size.headers["X-Chips-Rendered"] == "2"


def test_chip_limit_names_the_count(scenes):
    client, _, _, _ = scenes
    for response in (raw(client), gallery(client)):
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert "4 chips" in detail and "limit of 3" in detail and "shorten" in detail


def test_selection_is_acquisitions_one_per_date(scenes):
    client, _, store, _ = scenes
    product = store.get_product(PRODUCT["id"])
    images = chip_images(
        store, product, LON, LAT, date(2024, 5, 1), date(2024, 6, 30), 640, limit=10
    )
    assert [i.name for i in images] == ["A", "D", "E", "F"]
    by_point = acquisitions(
        store, PRODUCT["id"], shapely.Point(LON, LAT), date(2024, 5, 1), date(2024, 6, 30)
    )
    assert [i.name for i in by_point] == ["B", "D", "E", "F"]  # version alone would pick B


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "params", "status", "words"),
    [
        ("gallery", {"product": "nope"}, 404, "nope"),
        ("raw", {"product": "nope"}, 404, "nope"),
        ("gallery", {"bands": "r_g_B99"}, 400, "B99"),
        ("gallery", {"bands": "r_g"}, 400, "three band names"),
        ("raw", {"band": "B99"}, 400, "B99"),
        ("gallery", {"start_date": "2024-13-01"}, 400, "start_date"),
        ("raw", {"end_date": "tomorrow"}, 400, "end_date"),
        ("gallery", {"start_date": "2024-06-01", "end_date": "2024-05-01"}, 400, "before"),
        ("raw", {"start_date": "2024-06-01", "end_date": "2024-05-01"}, 400, "before"),
        ("gallery", {"lon": 200}, 422, "lon"),
        ("raw", {"lat": -91}, 422, "lat"),
        ("gallery", {"lut": "95_5"}, 400, "smaller"),
        ("gallery", {"lut": "0_100_300_200_0_1"}, 400, "band 2"),
        ("gallery", {"lut": "1_2_3"}, 400, "3 values"),
        ("gallery", {"lut": "a_b"}, 400, "lut"),
        ("gallery", {"size": 0}, 400, "size"),
        ("raw", {"chipsize": 5120}, 400, "5120"),
        ("raw", {"chipsize": 0}, 400, "chipsize"),
        ("gallery", {"level": "LEVEL3"}, 422, "level"),
        ("gallery", {"product": None}, 404, "sentinel-2-l2a"),
    ],
)
def test_bad_requests_are_clear_4xx(scenes, endpoint, params, status, words):
    client, _, _, _ = scenes
    query = {
        "lon": LON,
        "lat": LAT,
        "start_date": "2024-05-01",
        "end_date": "2024-05-31",
        "product": PRODUCT["id"],
        **params,
    }
    query = {k: v for k, v in query.items() if v is not None}
    response = client.get(f"/chips/{endpoint}", params=query)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize(
    "name",
    [
        "catalog.db",
        "..%2Fcatalog.db",
        "20240503T102031_" + "0" * 32 + ".png",
        "20240503T102031_" + "0" * 32 + ".png.part",
    ],
)
def test_chip_files_refuse_other_names(scenes, name):
    client, _, _, _ = scenes
    response = client.get(f"/chips/files/{name}")
    assert response.status_code == 404
    assert "detail" in response.json()


# --- render functions (shared with chips by parcel) -----------------------------------


def test_parse_lut():
    assert parse_lut("5_95") == Lut(percentiles=(5.0, 95.0))
    assert parse_lut("0_1_2_3_4_5").ranges == ((0, 1), (2, 3), (4, 5))
    assert parse_lut("2.5_97.5").text == "2.5_97.5"
    for bad in ("5_5", "-1_50", "0_101", "1_2_3_4", "x_1", "0_1_2_3_5_4", "nan_5"):
        with pytest.raises(RenderError):
            parse_lut(bad)


def test_degenerate_range_uses_the_flat_formula():
    data = numpy.ma.MaskedArray(numpy.full((3, 2, 2), 7, dtype="uint16"))
    out, alpha = gallery_chip(data, Lut(percentiles=(5, 95)))
    assert (out == 0).all() and (alpha == 255).all()  # lo == hi == 7: clip(255 (7 - 7))
    out, _ = gallery_chip(data + 1, Lut(ranges=((7, 9), (7, 9), (7, 9))))
    assert (out == 127).all()  # 255 * 1 / 2 = 127.5 truncated


def test_outline_is_drawn_on_its_pixels():
    """A square whose edges run through pixel centres marks exactly those pixels."""
    x0, y0 = 500000.0, 5800000.0
    grid = Grid(CRS.from_string(UTM), Affine(10, 0, x0, 0, -10, y0), 20, 20)
    square = box(x0 + 45, y0 - 155, x0 + 155, y0 - 45)  # pixel centres of cols/rows 4..15
    outline = transform_geom(UTM, "EPSG:4326", mapping(square))
    drawn = outline_pixels(outline, grid)
    expected = numpy.zeros((20, 20), dtype=bool)
    expected[4:16, [4, 15]] = True
    expected[[4, 15], 4:16] = True
    numpy.testing.assert_array_equal(drawn, expected)
    data = numpy.ma.MaskedArray(numpy.full((3, 20, 20), 5, "uint16"), mask=False)
    data[:, 0, 0] = numpy.ma.masked
    out, alpha = gallery_chip(data, Lut(ranges=((0, 10),) * 3), drawn)
    assert (out[:, drawn] == numpy.array([[255], [255], [0]])).all()
    assert (out[:, ~drawn & (alpha == 255)] == 127).all()
    assert alpha[0, 0] == 0 and (alpha[drawn] == 255).all()


def test_gallery_chips_with_an_outline(scenes):
    """The function chips by parcel will call: the outline is burnt into the cached PNG."""
    _, _, store, settings = scenes
    product = store.get_product(PRODUCT["id"])
    images = chip_images(store, product, LON, LAT, date(2024, 5, 3), date(2024, 5, 3), 0, 5)
    x0, y0 = origin()
    # edges through the centres of columns 100 and 119, rows 100 and 119 (chip cols 14..33)
    square = box(x0 + 1005, y0 - 1195, x0 + 1195, y0 - 1005)
    outline = transform_geom(UTM, "EPSG:4326", mapping(square))
    params = GalleryParams(("r", "g", "b"), parse_lut("0_5000_0_5000_0_5000"), 128)
    (chip,) = gallery_chips(settings, product, images, LON, LAT, params, outline=outline)
    assert chip.rendered
    pixels = decode((settings.data_dir / "chips" / chip.name).read_bytes())[0]
    r0, c0 = 100 - ROW_OFF, 100 - COL_OFF
    assert (pixels[:3, r0 : r0 + 20, c0] == numpy.array([[255], [255], [0]])).all()
    assert not (pixels[:3, r0 + 5, c0 + 5] == [255, 255, 0]).all()
    (plain,) = gallery_chips(settings, product, images, LON, LAT, params)
    assert plain.name != chip.name and plain.rendered


# --- the demo product -----------------------------------------------------------------


def test_demo_gallery_end_to_end(client, demo_store):
    lon, lat = 15.1, 52.3
    response = client.get(
        "/chips/gallery",
        params={
            "lon": lon,
            "lat": lat,
            "start_date": "2024-05-01",
            "end_date": "2024-07-31",
            "product": "sentinel-2-l2a",
        },
    )
    assert response.status_code == 200, response.text
    expected = acquisitions(
        demo_store, "sentinel-2-l2a", shapely.Point(lon, lat), date(2024, 5, 1), date(2024, 7, 31)
    )
    rows = parse_gallery(response.text)
    assert all(len(row) <= 8 for row in rows)
    labels = [cell["label"] for row in rows for cell in row]
    assert labels == [f"{image.acquired:%Y-%m-%d}" for image in expected]
    assert len(labels) == 8
    for row in rows:
        for cell in row:
            fetched = client.get(cell["src"])
            assert fetched.headers["content-type"] == "image/png"
            pixels = decode(fetched.content)[0]
            assert pixels.shape == (4, 128, 128)
            assert pixels[3].any()
    raw_body = client.get(
        "/chips/raw",
        params={
            "lon": lon,
            "lat": lat,
            "start_date": "2024-05-01",
            "end_date": "2024-07-31",
            "band": "B11",
        },
    ).json()
    assert raw_body["dates"] == [f"{image.acquired:%Y%m%dT%H%M%S}" for image in expected]
    _, profile = decode(client.get("/" + raw_body["chips"][0]).content)
    assert (profile["width"], profile["height"], profile["transform"].a) == (64, 64, 20)
    assert profile["crs"] == CRS.from_epsg(32633)


def test_chips_by_parcel_centre_on_the_centroid_and_draw_the_outline(client, tmp_path):
    """rawChipByParcelID / gallery by parcel: the chips of the centroid's location, and the
    gallery's chips differ from the plain ones exactly where the outline is drawn."""
    import json

    to_wgs84 = Transformer.from_crs(32633, 4326, always_xy=True)
    ring = [(502000, 5797000), (504000, 5797000), (504000, 5795400), (502000, 5795400)]
    polygon = shapely.Polygon([to_wgs84.transform(x, y) for x, y in ring])
    path = tmp_path / "plots.geojson"
    feature = {"type": "Feature", "properties": {"id": "P1"}, "geometry": mapping(polygon)}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    parcels = client.app.state.parcels
    parcels.load("chip-plots", path)
    try:
        parcel = client.get("/parcels/chip-plots/P1").json()
        window = {"start_date": "2024-06-01", "end_date": "2024-06-30"}
        by_parcel = client.get("/parcels/chip-plots/P1/chips/raw", params={**window, "band": "B04"})
        assert by_parcel.status_code == 200, by_parcel.text
        at = {"lon": parcel["centroid_lon"], "lat": parcel["centroid_lat"]}
        by_point = client.get("/chips/raw", params={**window, **at, "band": "B04"})
        assert by_parcel.json() == by_point.json() and by_parcel.json()["chips"]
        assert by_point.headers["X-Chips-Rendered"] == "0"  # the same chips, from the cache

        params = {**window, "bands": "B04_B03_B02", "lut": "0_3000_0_3000_0_3000", "size": 200}
        outlined = client.get("/parcels/chip-plots/P1/chips/gallery", params=params)
        plain = client.get("/chips/gallery", params={**params, **at})
        assert outlined.status_code == 200, outlined.text
        first_outlined = gallery_pngs(client, outlined)[0][1]
        first_plain = gallery_pngs(client, plain)[0][1]
        changed = (first_outlined != first_plain).any(axis=0)
        # the 2 km x 1.6 km parcel at 10 m is a 200 x 160 px frame around the chip centre
        assert 0 < changed.mean() < 0.1
        rows, cols = numpy.nonzero(changed)
        assert cols.max() - cols.min() >= 190 and 150 <= rows.max() - rows.min() <= 170
        missing = client.get("/parcels/chip-plots/nope/chips/gallery", params=params)
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    finally:
        parcels.delete("chip-plots")
