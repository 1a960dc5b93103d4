"""Mosaic tiles of registered searches: order, hole filling, alpha, pixel selections.

Three overlapping synthetic images with known pixels and holes; every expected tile is
worked out here with numpy from the source arrays, image by image.
"""

from __future__ import annotations

import io

import numpy
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver.app import create_app

Z, X, Y = TILE.z, TILE.x, TILE.y
PRODUCT = {
    "id": "mos",
    "bands": [
        {"name": "v1", "data_type": "UInt16", "data_range": [0, 1000], "nodata": 0},
        {
            "name": "v2",
            "data_type": "UInt16",
            "data_range": [0, 2000],
            "nodata": 0,
            "band_index": 1,
        },
        {
            "name": "alpha",
            "type": "mask",
            "is_alpha": True,
            "data_type": "Byte",
            "data_range": [0, 255],
            "band_index": 2,
        },
    ],
}
rows, cols = numpy.mgrid[0:256, 0:256]


def box(west: float, east: float) -> dict:
    """A footprint over part of the test tile, by fractions of its width."""
    b = WEB_MERCATOR.bounds(TILE)
    w = b.left + (b.right - b.left) * west
    e = b.left + (b.right - b.left) * east
    ring = [[w, b.bottom], [e, b.bottom], [e, b.top], [w, b.top], [w, b.bottom]]
    return {"type": "Polygon", "coordinates": [ring]}


def images() -> dict[str, dict]:
    """Name -> (acquired, v1, v2, alpha) of three overlapping images with holes."""
    a_v1, a_v2 = 1 + 2 * cols, 1000 + rows
    a_v2 = numpy.where((rows < 8) & (cols < 8), 0, a_v2)  # A: v2 nodata in the corner
    b_v1, b_v2 = numpy.full_like(rows, 300), numpy.full_like(rows, 1128)
    b_alpha = numpy.where(rows < 64, 0, 255)  # B: transparent top rows
    c_v1, c_v2 = 511 - 2 * cols, 1255 - rows
    c_v1 = numpy.where((rows < 128) & (cols < 128), 0, c_v1)  # C: nodata quadrant
    full = numpy.full_like(rows, 255)
    return {
        "A": ("2024-01-01T10:00:00Z", a_v1, a_v2, full),
        "B": ("2024-01-02T10:00:00Z", b_v1, b_v2, b_alpha),
        "C": ("2024-01-03T10:00:00Z", c_v1, c_v2, full),
    }


def valid(v1, v2, alpha):
    """Where an image has a pixel: no band at nodata and alpha not 0."""
    return (v1 != 0) & (v2 != 0) & (alpha != 0)


def register_images(client, tmp_path, names, product=PRODUCT, geometry=None) -> None:
    """Create the product (once) and register the named images of `images()`."""
    if client.get(f"/products/{product['id']}").status_code == 404:
        assert client.post("/products", json=product).status_code == 201
    for name in names:
        acquired, v1, v2, alpha = images()[name]
        path = write(tmp_path / f"{name}.tif", numpy.stack([v1, v2, alpha]).astype("uint16"))
        body = {
            "name": name,
            "product_id": product["id"],
            "acquired": acquired,
            "geometry": geometry or box(0, 1),
            "files": [{"href": str(path)}],
        }
        response = client.put(f"/images/{product['id']}:{name}", json=body)
        assert response.status_code == 200, response.text


def make_client(store, tmp_path, **settings) -> TestClient:
    """A client of an app over `store` (an empty catalog of each kind, from conftest)."""
    return TestClient(create_app(make_settings(tmp_path, **settings), store=store))


@pytest.fixture()
def mosaic(store, tmp_path):
    """A client with A, B, C registered (out of date order) and a search over them."""
    with make_client(store, tmp_path, reader_threads=1) as client:
        register_images(client, tmp_path, ["B", "A", "C"])
        response = client.post("/searches", json={"collections": ["mos"]})
        assert response.status_code == 200, response.text
        yield client, response.json()["id"]


def mosaic_tile(client, search_id, fmt="npy", **params):
    return client.get(
        f"/searches/{search_id}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.{fmt}", params=params
    )


def npy(response) -> numpy.ndarray:
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def paint_first(order: list[str]) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """v1, v2 and validity of the first valid pixel in `order`, computed image by image."""
    out_v1 = numpy.zeros((256, 256), dtype="int64")
    out_v2 = numpy.zeros((256, 256), dtype="int64")
    done = numpy.zeros((256, 256), dtype=bool)
    for name in order:
        _, v1, v2, alpha = images()[name]
        take = valid(v1, v2, alpha) & ~done
        out_v1[take], out_v2[take] = v1[take], v2[take]
        done |= take
    return out_v1, out_v2, done


def test_newest_on_top_and_holes_filled_from_the_next_image(mosaic):
    client, search_id = mosaic
    pixels = npy(mosaic_tile(client, search_id, bands="v1,v2"))
    v1, v2, done = paint_first(["C", "B", "A"])
    assert numpy.array_equal(pixels[0][done], v1[done])
    assert numpy.array_equal(pixels[1][done], v2[done])
    assert numpy.array_equal(pixels[2] == 255, done)  # the mask band
    # by hand: C's nodata quadrant shows B below row 64 and A above it
    assert pixels[0, 200, 200] == 511 - 400  # C
    assert pixels[0, 100, 10] == 300  # B under C's hole
    assert pixels[0, 30, 10] == 21  # A where B is transparent: 1 + 2 * 10
    assert pixels[2, 3, 3] == 0  # invalid in every image: no data


def test_sortby_override_puts_the_oldest_on_top(mosaic):
    client, search_id = mosaic
    pixels = npy(mosaic_tile(client, search_id, bands="v1,v2", sortby="datetime"))
    v1, _, done = paint_first(["A", "B", "C"])
    assert numpy.array_equal(pixels[0][done], v1[done])
    assert pixels[0, 200, 200] == 401  # A: 1 + 2 * 200


def stack(names=("C", "B", "A")) -> numpy.ma.MaskedArray:
    """(image, band, y, x) of v1, v2 with each image's invalid pixels masked."""
    arrays = []
    for name in names:
        _, v1, v2, alpha = images()[name]
        ok = valid(v1, v2, alpha)
        arrays.append(numpy.ma.MaskedArray(numpy.stack([v1, v2]), mask=~numpy.stack([ok, ok])))
    return numpy.ma.stack(arrays)


@pytest.mark.parametrize(
    "selection,reduce",
    [
        ("highest", lambda s: s.max(axis=0)),
        ("lowest", lambda s: s.min(axis=0)),
        ("mean", lambda s: s.mean(axis=0).astype("int64")),  # truncated to the input type
        ("median", lambda s: numpy.ma.median(s, axis=0).astype("int64")),
    ],
)
def test_value_selections(mosaic, selection, reduce):
    client, search_id = mosaic
    pixels = npy(mosaic_tile(client, search_id, bands="v1,v2", pixel_selection=selection))
    expected = reduce(stack())
    ok = ~numpy.ma.getmaskarray(expected)[0]
    assert 0 < ok.sum() < 256 * 256
    # rio-tiler decides band by band, so highest/lowest are per-band extremes
    assert numpy.array_equal(pixels[:2, ok], numpy.ma.getdata(expected)[:, ok])
    assert numpy.array_equal(pixels[2] == 255, ok)


def test_highest_picks_the_brighter_image_per_pixel(mosaic):
    client, search_id = mosaic
    pixels = npy(mosaic_tile(client, search_id, bands="v1,v2", pixel_selection="highest"))
    # at row 200: A has 1 + 2c, B 300, C 511 - 2c -> C left of c=105, A right of c=155
    assert pixels[0, 200, 50] == 411
    assert pixels[0, 200, 130] == 300
    assert pixels[0, 200, 200] == 401


def test_stdev_and_count(mosaic):
    client, search_id = mosaic
    stdev = npy(
        mosaic_tile(client, search_id, bands="v1,v2", pixel_selection="stdev", scaling="raw")
    )
    expected = stack().std(axis=0)
    ok = ~numpy.ma.getmaskarray(expected)[0]
    assert numpy.allclose(stdev[0][ok], expected[0][ok])
    count = npy(mosaic_tile(client, search_id, bands="v1,v2", pixel_selection="count"))
    by_hand = sum(valid(*images()[n][1:]).astype(int) for n in "ABC")
    assert numpy.array_equal(count[0], by_hand)
    # all three; C's hole; C's hole and B transparent; nothing
    assert [int(count[0][at]) for at in ((200, 200), (100, 10), (30, 10), (3, 3))] == [3, 2, 1, 0]


def test_lastband_selections_decide_by_the_last_band(mosaic):
    client, search_id = mosaic
    high = npy(mosaic_tile(client, search_id, bands="v1,v2", pixel_selection="lastbandhigh"))
    low = npy(mosaic_tile(client, search_id, bands="v1,v2", pixel_selection="lastbandlow"))
    assert high.shape[0] == 2  # v1 and the mask: the deciding band is dropped
    s = stack()
    winner_high, winner_low = s[:, 1].argmax(axis=0), s[:, 1].argmin(axis=0)
    ok = ~numpy.ma.getmaskarray(s[:, 0]).all(axis=0)
    expected_high = numpy.take_along_axis(s[:, 0].data, winner_high[None], 0)[0]
    expected_low = numpy.take_along_axis(s[:, 0].data, winner_low[None], 0)[0]
    assert numpy.array_equal(high[0][ok], expected_high[ok])
    assert numpy.array_equal(low[0][ok], expected_low[ok])
    # by hand at (150, 200), every image valid: v2 is C 1105, B 1128, A 1150
    assert high[0, 150, 200] == 401  # A's v1: 1 + 2 * 200
    assert low[0, 150, 200] == 111  # C's v1: 511 - 2 * 200


def test_png_display_with_alpha(mosaic):
    client, _ = mosaic
    search_id = client.post("/searches", json={"ids": ["B", "C"]}).json()["id"]
    response = mosaic_tile(client, search_id, fmt="png", bands="v1", scaling="display")
    from rasterio.io import MemoryFile

    with MemoryFile(response.content) as mem, mem.open() as src:
        pixels = src.read()
    # valid where B or C has v1 and alpha (v2 is not read, so its nodata does not count)
    done = numpy.logical_or.reduce(
        [(v1 != 0) & (a != 0) for n, (_, v1, _, a) in images().items() if n != "A"]
    )
    assert 0 < done.sum() < done.size
    assert numpy.array_equal(pixels[1] == 255, done)  # transparent where nothing is valid
    # v1 display range 0..1000 -> 0..255: B's 300 -> 76.5 -> 77 (half up)
    assert pixels[0, 100, 10] == 77


def test_first_stops_when_full_and_skips_hidden_images(store, tmp_path):
    with make_client(store, tmp_path, reader_threads=1) as client:
        register_images(client, tmp_path, ["A", "B", "C"])
        # D, newest, covers the left half with valid pixels; E under it is hidden there
        product = {**PRODUCT, "id": "half"}
        left = numpy.where(cols < 128, 1, 0)
        assert client.post("/products", json=product).status_code == 201
        for name, when, value, geometry, cover in (
            ("D", "2024-02-03T00:00:00Z", 7, box(0, 0.5), left),
            ("E", "2024-02-02T00:00:00Z", 8, box(0, 0.49), left),
            ("F", "2024-02-01T00:00:00Z", 9, box(0.5, 1), 1 - left),
        ):
            data = numpy.stack([value * cover, value * cover, 255 * cover]).astype("uint16")
            path = write(tmp_path / f"{name}.tif", data)
            body = {
                "name": name,
                "product_id": "half",
                "acquired": when,
                "geometry": geometry,
                "files": [{"href": str(path)}],
            }
            assert client.put(f"/images/half:{name}", json=body).status_code == 200
        search_id = client.post("/searches", json={"collections": ["half"]}).json()["id"]
        response = mosaic_tile(client, search_id, bands="v1")
        pixels = npy(response)
        assert (pixels[0][:, :128] == 7).all() and (pixels[0][:, 128:] == 9).all()
        assert response.headers["X-Mosaic-Images"] == "2"  # D and F read, E skipped
        assets = client.get(
            f"/searches/{search_id}/tiles/WebMercatorQuad/{Z}/{X}/{Y}/assets"
        ).json()
        assert [a["id"] for a in assets] == ["half:D", "half:E", "half:F"]
        # a full first image ends the tile: nothing else is read
        both = client.post("/searches", json={"collections": ["mos"], "ids": ["A", "B"]})
        response = mosaic_tile(client, both.json()["id"], bands="v1", sortby="datetime")
        assert response.headers["X-Mosaic-Images"] == "1"  # A's v1 is valid everywhere
        response = mosaic_tile(client, both.json()["id"], bands="v1,v2", sortby="datetime")
        assert response.headers["X-Mosaic-Images"] == "2"  # A's v2 has a corner hole
        # footprint shortcuts: B's footprint covers the tile, so A is never looked up and
        # B's transparent top rows stay empty (why the shortcuts are off by default)
        newest = mosaic_tile(client, both.json()["id"], bands="v1")
        shortcut = mosaic_tile(client, both.json()["id"], bands="v1", exitwhenfull="true")
        assert newest.headers["X-Mosaic-Images"] == "2"
        assert shortcut.headers["X-Mosaic-Images"] == "1"
        filled, holed = npy(newest), npy(shortcut)
        assert (filled[0][8:64] == images()["A"][1][8:64]).all()
        assert (holed[0][:64] == 0).all() and (holed[0][64:] == 300).all()
        skipped = mosaic_tile(client, search_id, bands="v1", skipcovered="true")
        assert numpy.array_equal(npy(skipped), pixels)  # E adds no footprint: left out
        only_b = client.post("/searches", json={"collections": ["mos"], "ids": ["B", "C"]})
        response = mosaic_tile(client, only_b.json()["id"], bands="v1", sortby="-v1")
        assert response.status_code == 400 and "v1" in response.json()["detail"]


def test_image_cap_header(store, tmp_path):
    with make_client(store, tmp_path, reader_threads=1, mosaic_max_images=2) as client:
        register_images(client, tmp_path, ["A", "B", "C"])
        search_id = client.post("/searches", json={"collections": ["mos"]}).json()["id"]
        response = mosaic_tile(client, search_id, bands="v1,v2")
        assert response.headers["X-Mosaic-Cap-Reached"] == "2"
        v1, _, done = paint_first(["C", "B"])  # A is beyond the cap
        pixels = npy(response)
        assert numpy.array_equal(pixels[0][done], v1[done])
        assert numpy.array_equal(pixels[2] == 255, done)
        assets = client.get(f"/searches/{search_id}/tiles/WebMercatorQuad/{Z}/{X}/{Y}/assets")
        assert len(assets.json()) == 2


def test_registration_is_stable_and_tilejson_covers_the_extent(mosaic):
    client, search_id = mosaic
    again = client.post("/searches", json={"collections": ["mos"]}).json()["id"]
    assert again == search_id
    body = {
        "filter": "eo:cloud_cover < 50",
        "collections": ["mos"],
        "sortby": [{"field": "datetime", "direction": "desc"}],
    }
    reordered = dict(reversed(list(body.items())))
    first = client.post("/searches", json=body).json()
    assert client.post("/searches", json=reordered).json()["id"] == first["id"]
    as_json = {**body, "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]}}
    assert client.post("/searches", json=as_json).json()["id"] == first["id"]
    assert client.post("/searches", json={"collections": ["other"]}).json()["id"] != search_id
    shown = client.get(f"/searches/{search_id}").json()
    assert shown["search"] == {"collections": ["mos"]}
    rels = {link["rel"] for link in shown["links"]}
    assert {"tilejson", "wmts", "map", "tiles"} <= rels
    tj = client.get(f"/searches/{search_id}/tilejson.json", params={"bands": "v1"}).json()
    b = WEB_MERCATOR.bounds(TILE)
    assert tj["bounds"] == pytest.approx([b.left, b.bottom, b.right, b.top])
    assert "/searches/" in tj["tiles"][0] and "bands=v1" in tj["tiles"][0]
    assert tj["maxzoom"] >= Z >= tj["minzoom"]
    wmts = client.get(f"/searches/{search_id}/WMTSCapabilities.xml")
    assert wmts.status_code == 200 and "TileMatrixSet" in wmts.text
    assert client.get(f"/searches/{search_id}/map").status_code == 200


def test_mosaic_errors_are_clear(mosaic):
    client, search_id = mosaic
    assert client.get("/searches/nope/tiles/WebMercatorQuad/10/550/335.png").status_code == 404
    # below the minzoom: WebMercatorQuad tiles come from the search's pyramid (503 while
    # it builds); a TMS without pyramid refuses them
    client.app.state.pyramids.wait()
    low = client.get(f"/searches/{search_id}/tiles/WebMercatorQuad/3/4/2.png")
    assert low.status_code in (200, 404), low.text
    if low.status_code == 200:
        assert low.headers["x-mosaic-pyramid"].startswith("g")
    low = client.get(f"/searches/{search_id}/tiles/WorldCRS84Quad/0/0/0.png")
    assert low.status_code == 400 and "minzoom" in low.json()["detail"]
    empty = client.get(f"/searches/{search_id}/tiles/WebMercatorQuad/{Z}/{X + 3}/{Y}.png")
    assert empty.status_code == 404
    bad = mosaic_tile(client, search_id, fmt="png", pixel_selection="best")
    assert bad.status_code == 422 and "pixel_selection" in bad.json()["detail"]
    one_band = client.get(
        f"/searches/{search_id}/tilejson.json",
        params={"bands": "v1", "pixel_selection": "lastbandlow"},
    )
    assert one_band.status_code == 400 and "two bands" in one_band.json()["detail"]
    bad = mosaic_tile(client, search_id, fmt="png", bands="nope")
    assert bad.status_code == 400 and "nope" in bad.json()["detail"]
    nothing = client.post("/searches", json={"ids": ["nope"]}).json()["id"]
    for path in ("tilejson.json", f"tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"):
        response = client.get(f"/searches/{nothing}/{path}")
        assert response.status_code == 404 and "no image" in response.json()["detail"]
    unknown = client.post("/searches", json={"filter": "foo = 1"})
    assert unknown.status_code == 400 and "foo" in unknown.json()["detail"]


# --- several products in one mosaic (SEMANTICS.md section 1) --------------------------------


def variant(product_id: str, **changes) -> dict:
    """PRODUCT under another id, with some bands' fields changed (a band set to None is gone)."""
    bands = []
    for band in PRODUCT["bands"]:
        change = changes.get(band["name"], {})
        if change is not None:
            bands.append({**band, **change})
    return {"id": product_id, "bands": bands}


@pytest.fixture()
def two_products(store, tmp_path):
    """A (product mos) and C (product `other`, v1 a signed Int16) under one search."""
    with make_client(store, tmp_path, reader_threads=1) as client:

        def search(other: dict) -> str:
            register_images(client, tmp_path, ["A"])
            register_images(client, tmp_path, ["C"], product=other)
            response = client.post("/searches", json={"collections": ["mos", other["id"]]})
            assert response.status_code == 200, response.text
            return response.json()["id"]

        yield client, search


def test_output_type_holds_every_products_band(two_products):
    client, search = two_products
    search_id = search(variant("other", v1={"data_type": "Int16"}))
    pixels = npy(mosaic_tile(client, search_id, bands="v1,v2"))
    # v1 is UInt16 in one product and Int16 in the other: Int32 holds both
    assert pixels.dtype == "int32"
    v1, v2, done = paint_first(["C", "A"])
    assert numpy.array_equal(pixels[0][done], v1[done])
    assert numpy.array_equal(pixels[1][done], v2[done])


def test_a_band_missing_from_one_product_is_a_clear_error(two_products):
    client, search = two_products
    search_id = search(variant("other", v2=None))
    response = mosaic_tile(client, search_id, bands="v1,v2")
    assert response.status_code == 400
    assert "'v2' is not available in product 'other'" in response.json()["detail"]
    assert mosaic_tile(client, search_id, bands="v1").status_code == 200


def test_scales_that_differ_between_products_are_a_clear_error(two_products):
    client, search = two_products
    search_id = search(variant("other", v1={"data_range": [0, 500]}))
    response = mosaic_tile(client, search_id, fmt="png", bands="v1", scaling="display")
    assert response.status_code == 400
    assert "incompatible scales for band 'v1'" in response.json()["detail"]
    # an explicit range is the same in both: fine, and each image is stretched by it
    pixels = npy(mosaic_tile(client, search_id, bands="v1", scaling="0,1000"))
    v1, _, done = paint_first(["C", "A"])
    expected = numpy.clip(numpy.floor(v1 / 1000 * 255 + 0.5), 0, 255)
    assert pixels.dtype == "uint8"
    assert numpy.array_equal(pixels[0][done], expected[done])
