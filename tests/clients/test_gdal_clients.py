"""Real GDAL clients against a live server: the WMS driver's TMS minidriver and the WMTS driver.

The TMS minidriver is how QGIS-style XYZ layers are read through GDAL: GDAL fetches
`{z}/{x}/{y}.png` tiles itself and stitches them into one EPSG:3857 raster. The WMTS driver reads
`WMTSCapabilities.xml` and then fetches the tiles its ResourceURL template describes.

Expected pixels never come from the code under test: they are read from the demo COG with
rasterio, warped onto the Web Mercator pixel grid of the zoom level with `rasterio.warp`, and
scaled with the display formula written out here. GDAL runs with its WMS/WMTS disk cache off
and every URL it fetches is checked to be on the loopback server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject, transform, transform_bounds
from rasterio.windows import Window

from tests.conftest import DEMO_IMAGE, DEMO_TILE

WORLD = 20037508.342789244  # half the EPSG:3857 world width, metres
TILE_SIZE = 256
B04_FILE, B04_INDEX, B04_RANGE = 0, 3, (0, 3000)  # bands_10m.tif holds B02 B03 B04 B08
NS = {
    "wmts": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
}
XLINK_HREF = f"{{{NS['xlink']}}}href"
# GDAL's debug lines for the URLs it fetches (multi-fetch of tiles, single fetch of XML)
HTTP_LOG = re.compile(r"HTTP: (?:Requesting \[\d+/\d+\] |Fetch\()(\S+?)\)?$")


def tile_url(server, z: int, x: int, y: int, query: str) -> str:
    return f"{server.url}/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?{query}"


def decode(content: bytes) -> np.ndarray:
    """Pixels of an encoded PNG."""
    with MemoryFile(content) as memfile, memfile.open() as src:
        return src.read()


def display(values, lo: float, hi: float) -> np.ndarray:
    """The `display` stretch: lo..hi -> 0..255, rounded half up, clipped."""
    scaled = (np.asarray(values, dtype="float64") - lo) / (hi - lo) * 255
    return np.clip(np.floor(scaled + 0.5), 0, 255)


def zoom_transform(z: int) -> Affine:
    """The pixel grid of WebMercatorQuad zoom `z` as one raster of 2**z x 2**z tiles."""
    res = 2 * WORLD / (TILE_SIZE * 2**z)
    return Affine(res, 0.0, -WORLD, 0.0, -res, WORLD)


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The spherical-mercator tile holding a point (the slippy-map formula)."""
    n = 2**z
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n
    return math.floor(x), math.floor(y)


class GdalSession:
    """GDAL options for a deterministic, hermetic client, and the URLs GDAL fetched."""

    def __init__(self, cache_dir, caplog):
        self.cache_dir = cache_dir
        self.caplog = caplog

    @contextlib.contextmanager
    def env(self):
        options = {
            "GDAL_ENABLE_WMS_CACHE": "NO",  # WMTS writes a <Cache/> into its WMS XML otherwise
            "GDAL_DEFAULT_WMS_CACHE_PATH": str(self.cache_dir),  # and if it did: a tmp dir
            "GDAL_HTTP_TIMEOUT": "20",
            "GDAL_HTTP_CONNECTTIMEOUT": "5",
            "GDAL_HTTP_MAX_RETRY": "0",
            "GDAL_HTTP_USERAGENT": "tileserver-tests",
            "CPL_DEBUG": "ON",  # GDAL logs each URL it fetches; rasterio forwards the logs
        }
        with rasterio.Env(**options):
            yield

    def fetched(self) -> list[str]:
        urls = []
        for record in self.caplog.records:
            match = HTTP_LOG.search(record.getMessage())
            if match:
                urls.append(match.group(1))
        return urls

    def assert_hermetic(self, server) -> list[str]:
        """Every fetched URL is on the live server and nothing was cached on disk."""
        urls = self.fetched()
        assert urls, "GDAL logged no HTTP fetch: is CPL_DEBUG forwarded?"
        strays = [u for u in urls if not u.startswith(server.url + "/")]
        assert not strays, f"GDAL fetched URLs off the loopback server: {strays}"
        assert not any(self.cache_dir.iterdir()), "GDAL wrote a WMS/WMTS disk cache"
        return urls


@pytest.fixture()
def gdal(tmp_path, monkeypatch, caplog) -> GdalSession:
    # a proxy from the environment must not see (or relay) the loopback requests
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for logger in ("rasterio._env", "rasterio._err"):  # GDAL's messages at open / at read
        caplog.set_level(logging.DEBUG, logger=logger)
    cache_dir = tmp_path / "gdalwmscache"
    cache_dir.mkdir()
    return GdalSession(cache_dir, caplog)


@pytest.fixture(scope="module")
def tilejson(live_server) -> dict:
    response = httpx.get(
        f"{live_server.url}/images/{DEMO_IMAGE}/tilejson.json",
        params={"bands": "B04", "scaling": "display"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def source_b04(demo_store):
    """The demo image's 10 m COG opened on the B04 band (by the file's own band name)."""
    href = demo_store.get_image(DEMO_IMAGE).files[B04_FILE].href
    src = rasterio.open(href)
    assert src.descriptions[B04_INDEX - 1] == "B04"
    return src


def direct_nearest(src, dst_transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """B04 warped onto a Web Mercator pixel grid with nearest resampling (0 = nodata)."""
    values = np.zeros(shape, "uint16")
    reproject(
        rasterio.band(src, B04_INDEX),
        values,
        dst_transform=dst_transform,
        dst_crs="EPSG:3857",
        resampling=Resampling.nearest,
        src_nodata=0,
        dst_nodata=0,
    )
    return values


def source_positions(src, dst_transform: Affine, shape: tuple[int, int]):
    """Exact fractional (col, row) in the source of each destination pixel's centre."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    xs, ys = dst_transform * (cols.ravel(), rows.ravel())
    east, north = transform("EPSG:3857", src.crs, xs, ys)
    col, row = ~src.transform * (np.asarray(east), np.asarray(north))
    return col.reshape(shape), row.reshape(shape)


def candidates(band: np.ndarray, col: np.ndarray, row: np.ndarray, delta: float):
    """(9, rows, cols) source values within `delta` source pixels of each position, and
    whether each is valid (inside the file and not nodata 0). Index 4 is the exact nearest."""
    values, valid = [], []
    for dr in (-delta, 0.0, delta):
        for dc in (-delta, 0.0, delta):
            r, c = np.floor(row + dr).astype(int), np.floor(col + dc).astype(int)
            inside = (r >= 0) & (r < band.shape[0]) & (c >= 0) & (c < band.shape[1])
            v = band[np.clip(r, 0, band.shape[0] - 1), np.clip(c, 0, band.shape[1] - 1)]
            values.append(v)
            valid.append(inside & (v != 0))
    return np.stack(values), np.stack(valid)


def tms_xml(server, z: int, query: str, url: str | None = None) -> str:
    """A GDAL_WMS service description with the TMS minidriver, as for an XYZ layer."""
    url = (url or tile_url(server, "${z}", "${x}", "${y}", query)).replace("&", "&amp;")
    return (
        "<GDAL_WMS>"
        f'<Service name="TMS"><ServerUrl>{url}</ServerUrl></Service>'
        "<DataWindow>"
        f"<UpperLeftX>{-WORLD!r}</UpperLeftX><UpperLeftY>{WORLD!r}</UpperLeftY>"
        f"<LowerRightX>{WORLD!r}</LowerRightX><LowerRightY>{-WORLD!r}</LowerRightY>"
        f"<TileLevel>{z}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
        "<YOrigin>top</YOrigin>"
        "</DataWindow>"
        "<Projection>EPSG:3857</Projection>"
        "<BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>"
        "<BandsCount>2</BandsCount>"  # a 1-band PNG with its mask: gray + alpha
        "</GDAL_WMS>"
    )


# Windows (col, row offsets in zoom-wide pixels) that straddle 3 x 3 tiles and the image's
# west edge (lon 15.0), so GDAL stitches nine tiles and the alpha band has both values.
WINDOWS = {
    14: Window(8874 * 256 + 64, 5388 * 256 + 100, 600, 500),
    13: Window(4437 * 256 + 32, 2693 * 256 + 80, 560, 480),
}
# How far (in 10 m source pixels) from a pixel centre's exact source position the value may
# come from. Nearest-neighbour warps are only exact up to GDAL's approximate transformer
# (0.125 destination pixel, the default error threshold of the server's WarpedVRT and of
# rasterio.warp.reproject, which interpolate it over different chunks), so:
# z14 (9.55 m Web Mercator pixels = 5.8 m on the ground, finer than the source): the server
#   warps straight onto the tile grid; 0.125 px = 0.07 source px, rounded up to 0.1.
# z13 (the image's maxzoom, 11.7 m on the ground, coarser than the source): rio-tiler warps
#   onto a grid at the source resolution (1 source px), then takes the nearest pixel of that
#   (up to 0.5 px away), so 0.5 + 0.125 -> 0.7 source px.
DELTA = {14: 0.1, 13: 0.7}
# Opaque pixels allowed to miss: 0.1 %, i.e. at most ~280 of ~280 000 (positions that sit
# within float noise of a boundary). A wrong band, stretch or axis order misses > 20 %:
# the test checks that too, so the tolerance cannot hide those mistakes.
TOLERANCE = 0.001


@pytest.mark.parametrize("zoom", [14, 13])
def test_wms_tms_minidriver_matches_source_pixels(live_server, demo_store, gdal, zoom):
    query = "bands=B04&scaling=display"
    window = WINDOWS[zoom]
    first = (window.col_off // 256, window.row_off // 256)
    last = ((window.col_off + window.width - 1) // 256, (window.row_off + window.height - 1) // 256)
    expected_tiles = {
        tile_url(live_server, zoom, x, y, query)
        for x in range(first[0], last[0] + 1)
        for y in range(first[1], last[1] + 1)
    }
    assert len(expected_tiles) == 9

    # what the server sends for one 1-band request: a gray + alpha (the mask) PNG
    response = httpx.get(sorted(expected_tiles)[0], timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert decode(response.content).shape == (2, 256, 256)

    with gdal.env(), rasterio.open(tms_xml(live_server, zoom, query)) as ds:
        assert ds.driver == "WMS"
        assert ds.crs.to_epsg() == 3857
        assert (ds.width, ds.height) == (256 * 2**zoom, 256 * 2**zoom)
        assert ds.transform.almost_equals(zoom_transform(zoom))
        assert ds.count == 2 and ds.dtypes == ("uint8", "uint8")
        gray, alpha = ds.read(window=window).astype("int64")
    assert set(gdal.assert_hermetic(live_server)) == expected_tiles

    dst_transform = zoom_transform(zoom) * Affine.translation(window.col_off, window.row_off)
    shape = (window.height, window.width)
    with source_b04(demo_store) as src:
        direct = direct_nearest(src, dst_transform, shape)
        col, row = source_positions(src, dst_transform, shape)
        b04 = src.read(B04_INDEX)
        b03 = src.read(B04_INDEX - 1)

    # alpha: opaque where every candidate source pixel is valid, clear where none is
    _, valid = candidates(b04, col, row, DELTA[zoom])
    inner, outer = valid.all(axis=0), ~valid.any(axis=0)
    assert 0.05 < outer.mean() and 0.5 < inner.mean(), "the window should hold the west edge"
    assert (alpha[inner] != 255).mean() <= TOLERANCE
    assert (alpha[outer] != 0).mean() <= TOLERANCE
    assert (gray[alpha == 0] == 0).all()
    assert set(np.unique(alpha)) == {0, 255}

    opaque = alpha == 255

    def misses(pixels: np.ndarray, stretch=B04_RANGE, band=b04) -> float:
        """The share of opaque pixels whose value is no candidate's display value."""
        vals, ok = candidates(band, col, row, DELTA[zoom])
        allowed = np.where(ok, display(vals, *stretch), -1)
        return float((~(allowed == pixels).any(axis=0))[opaque].mean())

    assert misses(gray) <= TOLERANCE
    # and most are exactly the direct nearest-neighbour warp, display-stretched (z14: ~98 %,
    # the rest are the approximate transformer's ties; z13: ~53 %, the two-step sampling)
    expected = display(direct, *B04_RANGE)
    same = (gray == expected)[opaque & (direct != 0)].mean()
    assert same > (0.95 if zoom == 14 else 0.35)
    # the check is strict enough to catch flipped axes, a wrong stretch and a wrong band
    assert misses(gray[::-1]) > 0.2
    assert misses(gray[:, ::-1]) > 0.2
    assert misses(gray[::-1, ::-1]) > 0.2
    assert misses(gray, stretch=(0, 5000)) > 0.2
    assert misses(gray, band=b03) > 0.2


def grid_origin(ds) -> tuple[int, int]:
    """The (col, row) of a dataset's top-left corner on its zoom's pixel grid: whole numbers
    when GDAL's georeferencing says where its pixels really are."""
    col = (ds.bounds.left + WORLD) / ds.res[0]
    row = (WORLD - ds.bounds.top) / ds.res[1]
    assert (col, row) == pytest.approx((round(col), round(row)), abs=1e-6), (col, row)
    return round(col), round(row)


def capabilities_url(server, query: str) -> str:
    return f"{server.url}/images/{DEMO_IMAGE}/WMTSCapabilities.xml?{query}"


def test_wmts_driver_reads_the_tiles_the_server_serves(live_server, demo_store, gdal, tilejson):
    query = "bands=B04,B03,B02&scaling=display"
    # GDAL splits `WMTS:url,layer=...,...` at commas unless the URL is double-quoted: an
    # unquoted `?bands=B04,B03,B02&scaling=display` is fetched as `?bands=B04` (one band,
    # no scaling) with only an "Unknown parameter" warning
    connection = f'WMTS:"{capabilities_url(live_server, query)}"'
    minzoom, maxzoom = tilejson["minzoom"], tilejson["maxzoom"]
    res = zoom_transform(maxzoom).a
    tile_query = "bands=B04%2CB03%2CB02&scaling=display"
    bbox = transform_bounds("EPSG:4326", "EPSG:3857", *demo_store.get_image(DEMO_IMAGE).bbox)

    def server_tile(z: int, x: int, y: int) -> np.ndarray:
        response = httpx.get(tile_url(live_server, z, x, y, tile_query), timeout=30)
        assert response.status_code == 200, response.text
        return decode(response.content)

    with gdal.env():
        with rasterio.open(connection) as ds:
            assert ds.driver == "WMTS"
            assert ds.crs.to_epsg() == 3857
            assert ds.count == 4 and set(ds.dtypes) == {"uint8"}
            assert [c.name for c in ds.colorinterp] == ["red", "green", "blue", "alpha"]
            assert ds.res == pytest.approx((res, res))
            # one overview per zoom below maxzoom, down to where the whole extent fits in a
            # tile or two (the layer starts at zoom 0: GDAL adds no overviews below that)
            overviews = ds.overviews(1)
            assert overviews == [2**i for i in range(1, len(overviews) + 1)]
            assert len(overviews) <= maxzoom - minzoom
            assert max(ds.width, ds.height) / overviews[-1] <= 2 * 256
            # the extent holds the image's bbox, up to GDAL rounding it to whole pixels of the
            # finest matrix, and exceeds it by less than a pixel of the coarsest one
            outward = (
                bbox[0] - ds.bounds.left,
                ds.bounds.right - bbox[2],
                bbox[1] - ds.bounds.bottom,
                ds.bounds.top - bbox[3],
            )
            coarsest = zoom_transform(minzoom).a
            assert all(-res <= d < coarsest for d in outward), outward

            col0, row0 = grid_origin(ds)

            # one whole tile at maxzoom: a child of DEMO_TILE, inside the image
            z, x, y = DEMO_TILE[0] + 1, DEMO_TILE[1] * 2 + 1, DEMO_TILE[2] * 2 + 1
            assert z == maxzoom
            got = ds.read(window=Window(x * 256 - col0, y * 256 - row0, 256, 256))
            served = server_tile(z, x, y)
            assert (served[3] == 255).all() and served[:3].std(axis=(1, 2)).min() > 1
            np.testing.assert_array_equal(got, served)

            # a window across 2 x 2 tiles, off the tile grid: GDAL stitches them
            left, top = (x - 1) * 256 + 100, (y - 1) * 256 + 50
            got = ds.read(window=Window(left - col0, top - row0, 300, 400))
            mosaic = np.concatenate(
                [
                    np.concatenate([server_tile(z, tx, ty) for tx in (x - 1, x)], axis=2)
                    for ty in (y - 1, y, y + 1)
                ],
                axis=1,
            )
            np.testing.assert_array_equal(got, mosaic[:, 50:450, 100:400])

        # the first overview is the next zoom out: DEMO_TILE itself. With the extent of the
        # finest matrix's tile limits every overview is on its zoom's pixel grid.
        with rasterio.open(
            connection, overview_level=0, EXTENT_METHOD="MOST_PRECISE_TILE_MATRIX"
        ) as ds:
            assert ds.res == pytest.approx((2 * res, 2 * res))
            col0, row0 = grid_origin(ds)
            z, x, y = DEMO_TILE
            got = ds.read(window=Window(x * 256 - col0, y * 256 - row0, 256, 256))
            np.testing.assert_array_equal(got, server_tile(z, x, y))

    urls = gdal.assert_hermetic(live_server)
    assert capabilities_url(live_server, query) in urls
    tiles = [u for u in urls if "/tiles/" in u]
    assert tiles and all(u.endswith(".png?" + tile_query) for u in tiles)


def test_wmts_default_extent_overviews_are_on_the_tile_grid(live_server, gdal, tilejson):
    query = "bands=B04,B03,B02&scaling=display"
    tile_query = "bands=B04%2CB03%2CB02&scaling=display"
    z, x, y = DEMO_TILE
    assert z == tilejson["maxzoom"] - 1
    response = httpx.get(tile_url(live_server, z, x, y, tile_query), timeout=30)
    with (
        gdal.env(),
        rasterio.open(f'WMTS:"{capabilities_url(live_server, query)}"', overview_level=0) as ds,
    ):
        col0, row0 = grid_origin(ds)
        got = ds.read(window=Window(x * 256 - col0, y * 256 - row0, 256, 256))
    np.testing.assert_array_equal(got, decode(response.content))


def wmts_document(server, params: list[tuple[str, str]]) -> tuple[ET.Element, str]:
    response = httpx.get(
        f"{server.url}/images/{DEMO_IMAGE}/WMTSCapabilities.xml", params=params, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.content), str(response.url)


RENDER_PARAMS = [
    [("bands", "B04,B03,B02"), ("scaling", "display")],
    # characters that must be escaped in a URL (+ / , ( )) and then in XML (&)
    [
        ("expression", "(B08-B04)/(B08+B04)"),
        ("scaling", "-1,1"),
        ("colormap_name", "rdylgn"),
        ("tms", "WebMercatorQuad"),
        ("tile_format", "png"),
    ],
]


@pytest.mark.parametrize("params", RENDER_PARAMS, ids=["rgb", "expression"])
def test_wmts_capabilities_structure(live_server, demo_store, tilejson, params):
    root, requested = wmts_document(live_server, params)
    assert root.tag == f"{{{NS['wmts']}}}Capabilities" and root.get("version") == "1.0.0"

    layers = root.findall("wmts:Contents/wmts:Layer", NS)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.findtext("wmts:Format", namespaces=NS) == "image/png"
    link = layer.find("wmts:TileMatrixSetLink", NS)
    assert link.findtext("wmts:TileMatrixSet", namespaces=NS) == "WebMercatorQuad"
    lower = layer.findtext("ows:WGS84BoundingBox/ows:LowerCorner", namespaces=NS).split()
    upper = layer.findtext("ows:WGS84BoundingBox/ows:UpperCorner", namespaces=NS).split()
    bbox = demo_store.get_image(DEMO_IMAGE).bbox
    assert [float(v) for v in lower + upper] == pytest.approx(list(bbox))

    # the ResourceURL: the tile path with WMTS placeholders, the render query round-tripping
    resources = layer.findall("wmts:ResourceURL", NS)
    assert len(resources) == 1
    resource = resources[0]
    assert resource.get("format") == "image/png" and resource.get("resourceType") == "tile"
    template = resource.get("template")
    parts = urlsplit(template)
    assert f"{parts.scheme}://{parts.netloc}" == live_server.url
    assert parts.path == (
        f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
    )
    render = sorted((k, v) for k, v in params if k not in ("tms", "tile_format"))
    assert sorted(parse_qsl(parts.query, keep_blank_values=True)) == render
    assert "+" not in parts.query and "," not in parts.query  # %2B and %2C, never raw

    # the template, filled in, serves the same bytes as the tile URL asked for directly
    z, x, y = DEMO_TILE
    filled = template.replace("{TileMatrix}", str(z)).replace("{TileCol}", str(x))
    filled = filled.replace("{TileRow}", str(y))
    via_template = httpx.get(filled, timeout=30)
    direct = httpx.get(
        f"{live_server.url}/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
        params=render,
        timeout=30,
    )
    assert via_template.status_code == direct.status_code == 200
    assert via_template.content == direct.content

    # operations point back at this very request
    hrefs = [e.get(XLINK_HREF) for e in root.iter() if e.get(XLINK_HREF) is not None]
    assert hrefs
    for href in hrefs:
        assert href.startswith(live_server.url + "/")
        assert urlsplit(href).path == urlsplit(requested).path
        assert parse_qsl(urlsplit(href).query) == params

    # the tile matrix set: 3857, matrices named by zoom, over the image's zoom range
    matrix_sets = root.findall("wmts:Contents/wmts:TileMatrixSet", NS)
    assert len(matrix_sets) == 1
    tms_el = matrix_sets[0]
    assert tms_el.findtext("ows:Identifier", namespaces=NS) == "WebMercatorQuad"
    assert tms_el.findtext("ows:SupportedCRS", namespaces=NS) == "urn:ogc:def:crs:EPSG::3857"
    matrices = tms_el.findall("wmts:TileMatrix", NS)
    ids = [m.findtext("ows:Identifier", namespaces=NS) for m in matrices]
    zooms = list(range(tilejson["minzoom"], tilejson["maxzoom"] + 1))
    assert ids == [str(z) for z in zooms]
    assert DEMO_TILE[0] in zooms
    for z, matrix in zip(zooms, matrices, strict=True):
        corner = [float(v) for v in matrix.findtext("wmts:TopLeftCorner", namespaces=NS).split()]
        assert corner == pytest.approx([-WORLD, WORLD])
        assert int(matrix.findtext("wmts:MatrixWidth", namespaces=NS)) == 2**z
        assert int(matrix.findtext("wmts:MatrixHeight", namespaces=NS)) == 2**z
        assert int(matrix.findtext("wmts:TileWidth", namespaces=NS)) == TILE_SIZE
        assert int(matrix.findtext("wmts:TileHeight", namespaces=NS)) == TILE_SIZE
        # OGC scale denominator: pixel size / 0.28 mm
        scale = float(matrix.findtext("wmts:ScaleDenominator", namespaces=NS))
        assert scale == pytest.approx(zoom_transform(z).a / 0.00028, rel=1e-9)

    # the limits: the tiles the image's bbox touches at each zoom
    limits = link.findall("wmts:TileMatrixSetLimits/wmts:TileMatrixLimits", NS)
    assert [lim.findtext("wmts:TileMatrix", namespaces=NS) for lim in limits] == ids
    west, south, east, north = bbox
    for z, lim in zip(zooms, limits, strict=True):
        min_col, min_row = lonlat_to_tile(west, north, z)
        max_col, max_row = lonlat_to_tile(east, south, z)
        got = {
            k: int(lim.findtext(f"wmts:{k}", namespaces=NS))
            for k in ("MinTileRow", "MaxTileRow", "MinTileCol", "MaxTileCol")
        }
        assert got == {
            "MinTileRow": min_row,
            "MaxTileRow": max_row,
            "MinTileCol": min_col,
            "MaxTileCol": max_col,
        }


def test_wms_tms_minidriver_reads_a_mosaic(live_server, gdal):
    """GDAL stitches mosaic tiles of a registered search; each pixel is the newer image's
    where that one is opaque and the older image's elsewhere (its orbit edge and shift)."""
    newer = "S2A_MSIL2A_20240622T102031_T33UVU"  # orbit edge and shifted east
    older = DEMO_IMAGE.split(":", 1)[1]
    body = {"collections": ["sentinel-2-l2a"], "ids": [older, newer]}
    search = httpx.post(f"{live_server.url}/searches", json=body, timeout=30).json()
    query = "bands=B04&scaling=display"
    base = f"{live_server.url}/searches/{search['id']}"
    template = f"{base}/tiles/WebMercatorQuad/${{z}}/${{x}}/${{y}}.png?{query}"
    z, tiles = 12, [(2219, 1347), (2220, 1347)]
    tj = httpx.get(f"{live_server.url}/searches/{search['id']}/tilejson.json?{query}").json()
    assert tj["minzoom"] <= z <= tj["maxzoom"]
    with gdal.env(), rasterio.open(tms_xml(live_server, z, query, url=template)) as ds:
        window = Window(tiles[0][0] * 256, tiles[0][1] * 256, 512, 256)
        gray, alpha = ds.read(window=window).astype("int64")
    fetched = set(gdal.assert_hermetic(live_server))
    assert fetched == {
        template.replace("${z}", str(z)).replace("${x}", str(x)).replace("${y}", str(y))
        for x, y in tiles
    }

    def image_tiles(name: str) -> np.ndarray:
        """The single-image tiles side by side: (gray + alpha, 256, 512)."""
        parts = []
        for x, y in tiles:
            url = tile_url(live_server, z, x, y, query).replace(
                DEMO_IMAGE, f"sentinel-2-l2a:{name}"
            )
            response = httpx.get(url, timeout=30)
            assert response.status_code == 200, response.text
            parts.append(decode(response.content).astype("int64"))
        return np.concatenate(parts, axis=2)

    top, below = image_tiles(newer), image_tiles(older)
    on_top = top[1] == 255
    assert 0.1 < on_top.mean() < 0.9  # the window shows both images
    expected_gray = np.where(on_top, top[0], below[0])
    expected_alpha = np.where(on_top, 255, below[1])
    assert (alpha == expected_alpha).all()
    opaque = alpha == 255
    assert (gray[opaque] == expected_gray[opaque]).all()
    # and the order matters: older-on-top differs where both are opaque
    both = on_top & (below[1] == 255)
    assert (gray[both] != below[0][both]).mean() > 0.5
