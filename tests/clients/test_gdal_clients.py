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
import morecantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject, transform_bounds
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
    caplog.set_level(logging.DEBUG, logger="rasterio._err")
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


def nearest_sources(src, dst_transform: Affine, shape: tuple[int, int]):
    """Warp B04, and the (row, col) of each source pixel, onto a Web Mercator grid (nearest).

    Returns the warped values (0 = nodata / outside) and the flat source index (-1 outside).
    """
    values = np.zeros(shape, "uint16")
    reproject(
        rasterio.band(src, B04_INDEX), values, dst_transform=dst_transform,
        dst_crs="EPSG:3857", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0,
    )
    index = np.arange(1, src.width * src.height + 1, dtype="uint32").reshape(src.shape)
    picked = np.zeros(shape, "uint32")
    reproject(
        index, picked, src_transform=src.transform, src_crs=src.crs,
        dst_transform=dst_transform, dst_crs="EPSG:3857", resampling=Resampling.nearest,
        src_nodata=0, dst_nodata=0,
    )
    return values, picked.astype("int64") - 1


def neighbourhood(band: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """(9, rows, cols): the source values around each picked source pixel (3 x 3)."""
    rows, cols = np.divmod(np.maximum(flat, 0), band.shape[1])
    out = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r = np.clip(rows + dr, 0, band.shape[0] - 1)
            c = np.clip(cols + dc, 0, band.shape[1] - 1)
            out.append(band[r, c])
    return np.stack(out)


def tms_xml(server, z: int, query: str) -> str:
    """A GDAL_WMS service description with the TMS minidriver, as for an XYZ layer."""
    url = tile_url(server, "${z}", "${x}", "${y}", query).replace("&", "&amp;")
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
# z14 is finer than the 10 m source: the server warps straight onto the tile grid, exactly
# what rasterio.warp.reproject does, so pixels must be identical. z13 (the image's maxzoom)
# is coarser: rio-tiler warps onto a grid at the source resolution, then takes nearest
# pixels of that, so a pixel may come from a source neighbour of the direct nearest one.
WINDOWS = {
    14: Window(8874 * 256 + 64, 5388 * 256 + 100, 600, 500),
    13: Window(4437 * 256 + 32, 2693 * 256 + 80, 560, 480),
}
# Pixels allowed to disagree: 0.1 %, i.e. at most a few hundred of ~280 000. The two warps
# use the same GDAL kernel and grid, so only ties at exactly half a pixel could land on
# another source pixel; a wrong band, scaling or axis order gets most pixels wrong.
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

    # what the server sends for one 1-band request: gray + alpha (the mask) PNG
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
        values, picked = nearest_sources(src, dst_transform, shape)
        band = src.read(B04_INDEX)
    valid = values != 0
    expected = np.where(valid, display(values, *B04_RANGE), 0)
    assert 0.2 < valid.mean() < 0.95, "the window should hold the image's edge"
    assert set(np.unique(alpha)) == {0, 255}

    if zoom == 14:
        assert (np.asarray(alpha == 255) != valid).mean() <= TOLERANCE
        both = valid & (alpha == 255)
        assert (gray[both] != expected[both]).mean() <= TOLERANCE
        assert (gray[~valid] == 0).all()
        return

    # z13: each pixel must be the display value of one of the 3 x 3 source pixels around
    # the direct nearest one, and transparent where they all are (opaque where none is).
    around = neighbourhood(band, picked)
    around_valid = (around != 0) & (picked >= 0)
    candidates = np.where(around_valid, display(around, *B04_RANGE), -1)
    inner = around_valid.all(axis=0)
    outer = ~around_valid.any(axis=0)
    assert (alpha[inner] != 255).mean() <= TOLERANCE
    assert (alpha[outer] != 0).mean() <= TOLERANCE

    def misses(pixels: np.ndarray, cands: np.ndarray) -> float:
        opaque = inner & (alpha == 255)
        return float((~(cands == pixels).any(axis=0))[opaque].mean())

    assert misses(gray, candidates) <= TOLERANCE
    assert (gray == expected)[inner].mean() > 0.5  # most pixels are the direct nearest one
    # the neighbourhood check is strict enough to catch flipped axes and a wrong stretch
    assert misses(gray[::-1], candidates) > 0.2
    assert misses(gray[:, ::-1], candidates) > 0.2
    assert misses(gray, np.where(around_valid, display(around, 0, 5000), -1)) > 0.2


def capabilities_url(server, query: str) -> str:
    return f"{server.url}/images/{DEMO_IMAGE}/WMTSCapabilities.xml?{query}"


def test_wmts_driver_reads_the_tiles_the_server_serves(live_server, demo_store, gdal, tilejson):
    query = "bands=B04,B03,B02&scaling=display"
    # GDAL splits `WMTS:url,layer=...,...` at commas unless the URL is double-quoted: an
    # unquoted `bands=B04,B03,B02` silently becomes `bands=B04` (a one-band UInt16 layer)
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
            assert ds.overviews(1) == [2**i for i in range(1, maxzoom - minzoom + 1)]
            # GDAL rounds the layer's extent to whole pixels of the finest matrix
            assert ds.bounds.left <= bbox[0] + res and ds.bounds.right >= bbox[2] - res
            assert ds.bounds.bottom <= bbox[1] + res and ds.bounds.top >= bbox[3] - res
            assert ds.bounds.left >= bbox[0] - res and ds.bounds.right <= bbox[2] + res
            assert ds.bounds.bottom >= bbox[1] - res and ds.bounds.top <= bbox[3] + res

            col0 = (ds.bounds.left + WORLD) / res  # the dataset's origin in zoom pixels
            row0 = (WORLD - ds.bounds.top) / res
            assert col0 == pytest.approx(round(col0), abs=1e-6)
            assert row0 == pytest.approx(round(row0), abs=1e-6)
            col0, row0 = round(col0), round(row0)

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
            mosaic = np.concatenate([
                np.concatenate([server_tile(z, tx, ty) for tx in (x - 1, x)], axis=2)
                for ty in (y - 1, y, y + 1)
            ], axis=1)
            np.testing.assert_array_equal(got, mosaic[:, 50:450, 100:400])

        # the first overview is the next zoom out: DEMO_TILE itself
        with rasterio.open(connection, overview_level=0) as ds:
            assert ds.res == pytest.approx((2 * res, 2 * res))
            col0 = round((ds.bounds.left + WORLD) / (2 * res))
            row0 = round((WORLD - ds.bounds.top) / (2 * res))
            z, x, y = DEMO_TILE
            got = ds.read(window=Window(x * 256 - col0, y * 256 - row0, 256, 256))
            np.testing.assert_array_equal(got, server_tile(z, x, y))

    urls = gdal.assert_hermetic(live_server)
    assert capabilities_url(live_server, query) in urls
    tiles = [u for u in urls if "/tiles/" in u]
    assert tiles and all(u.endswith(".png?" + tile_query) for u in tiles)


def wmts_document(server, params: list[tuple[str, str]]) -> tuple[ET.Element, str]:
    response = httpx.get(
        f"{server.url}/images/{DEMO_IMAGE}/WMTSCapabilities.xml", params=params, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.content), str(response.url)


RENDER_PARAMS = [
    [("bands", "B04,B03,B02"), ("scaling", "display")],
    # characters that must be escaped in a URL (+ / , ( ) ;) and then in XML (&)
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
        params=render, timeout=30,
    )
    assert via_template.status_code == direct.status_code == 200
    assert via_template.content == direct.content

    # operations point back at this very request
    hrefs = [e.get(XLINK_HREF) for e in root.iter() if e.get(XLINK_HREF) is not None]
    assert len(hrefs) == 3
    for href in hrefs:
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
        assert scale == pytest.approx(morecantile.tms.get("WebMercatorQuad").matrix(z)
                                      .scaleDenominator, rel=1e-9)

    # the limits: the tiles the image's bbox touches at each zoom
    limits = link.findall("wmts:TileMatrixSetLimits/wmts:TileMatrixLimits", NS)
    assert [lim.findtext("wmts:TileMatrix", namespaces=NS) for lim in limits] == ids
    west, south, east, north = bbox
    for z, lim in zip(zooms, limits, strict=True):
        min_col, min_row = lonlat_to_tile(west, north, z)
        max_col, max_row = lonlat_to_tile(east, south, z)
        got = {k: int(lim.findtext(f"wmts:{k}", namespaces=NS))
               for k in ("MinTileRow", "MaxTileRow", "MinTileCol", "MaxTileCol")}
        assert got == {"MinTileRow": min_row, "MaxTileRow": max_row,
                       "MinTileCol": min_col, "MaxTileCol": max_col}
