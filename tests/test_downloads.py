"""Downloads (GeoTIFF / npy) of an image, a search mosaic and a search stack.

Synthetic rasters with known pixels; every expected array, window and grid is worked out
here from the source arrays with numpy, the affine transform, pyproj and shapely, or
(for warps) with rasterio.warp.reproject of the source onto the same grid.
"""

from __future__ import annotations

import io
import math

import numpy
import pytest
import rasterio
import shapely
from affine import Affine
from fastapi.testclient import TestClient
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from shapely.geometry import box, mapping

from tests.conftest import DEMO_IMAGE, make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write, write_raster
from tests.test_mosaic import images, paint_first, register_images, valid, variant
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore

UTM = "EPSG:32633"
ORIGIN = (400000.0, 5800000.0)
RES = 10.0
H, W = 700, 600  # larger than one 512 block: the COG has overviews
TRANSFORM = from_origin(*ORIGIN, RES, RES)
TO_WGS84 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
TO_UTM = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
PRODUCT = {
    "id": "s2",
    "bands": [
        {
            "name": "B04",
            "data_range": [0, 10000],
            "display_range": [0, 4000],
            "physical_range": [0, 1],
            "nodata": 0,
        },
        {"name": "B08", "data_range": [0, 10000], "nodata": 0, "band_index": 1},
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


def utm_arrays() -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """B04, B08 and alpha of the UTM image: gradients, nodata patches, transparent columns."""
    rows, cols = numpy.mgrid[0:H, 0:W]
    b04 = 1 + rows * 5 + cols * 2
    b08 = 5000 + rows - cols
    b04[:10, :] = 0  # nodata rows at the top
    b08[100:150, 500:] = 0  # a nodata patch
    alpha = numpy.where(cols < 15, 0, 255)  # transparent left columns
    return b04, b08, alpha


def utm_valid() -> numpy.ndarray:
    b04, b08, alpha = utm_arrays()
    return (b04 != 0) & (b08 != 0) & (alpha != 0)


def shapely_transform(transformer: Transformer, geometry):
    """A shapely geometry in another CRS, vertex by vertex."""
    return shapely.transform(
        geometry, lambda xy: numpy.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


def wgs84(geometry):
    """A UTM shapely geometry as WGS84 GeoJSON (vertex by vertex)."""
    return mapping(shapely_transform(TO_WGS84, geometry))


def decode(content: bytes):
    """(pixels, profile, descriptions, overviews, layout) of a GeoTIFF."""
    with MemoryFile(content) as memfile, memfile.open() as src:
        return (
            src.read(),
            src.profile,
            src.descriptions,
            src.overviews(1),
            src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
        )


def npy(response) -> numpy.ndarray:
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def tif(response):
    assert response.status_code == 200, response.text
    return decode(response.content)


def display(values, lo, hi):
    """The display stretch of SEMANTICS.md: lo..hi -> 0..255, clipped, rounded half up."""
    scaled = (numpy.asarray(values, dtype="float64") - lo) / (hi - lo) * 255
    return numpy.clip(numpy.floor(scaled + 0.5), 0, 255).astype("uint8")


def window_of(transform: Affine, bounds, width=W, height=H):
    """(col0, row0, col1, row1) of the source pixels covering `bounds`, clipped to the image.

    Edges within 1e-6 pixel of a pixel edge are on it (reprojection noise adds no pixel).
    """
    west, south, east, north = bounds
    inverse = ~transform
    c0, r0 = inverse * (west, north)
    c1, r1 = inverse * (east, south)
    return (
        max(0, math.floor(c0 + 1e-6)),
        max(0, math.floor(r0 + 1e-6)),
        min(width, math.ceil(c1 - 1e-6)),
        min(height, math.ceil(r1 - 1e-6)),
    )


@pytest.fixture()
def utm(tmp_path, empty_client):
    """One UTM image (B04, B08, alpha) registered over the REST API."""
    b04, b08, alpha = utm_arrays()
    path = write_raster(
        tmp_path / "utm.tif", numpy.stack([b04, b08, alpha]).astype("uint16"), UTM, TRANSFORM
    )
    assert empty_client.post("/products", json=PRODUCT).status_code == 201
    footprint = box(ORIGIN[0], ORIGIN[1] - H * RES, ORIGIN[0] + W * RES, ORIGIN[1])
    body = {
        "name": "a",
        "product_id": "s2",
        "acquired": "2024-05-03T10:00:00Z",
        "geometry": wgs84(footprint),
        "files": [{"href": str(path)}],
    }
    assert empty_client.put("/images/s2:a", json=body).status_code == 200
    return empty_client


URL = "/images/s2:a/download"


def test_default_download_is_the_source_grid_and_pixels(utm):
    response = utm.get(f"{URL}.tif", params={"bands": "B04,B08"})
    pixels, profile, descriptions, overviews, layout = tif(response)
    assert response.headers["content-disposition"] == 'attachment; filename="s2_a.tif"'
    assert response.headers["content-type"].startswith("image/tiff")
    assert profile["crs"] == CRS.from_string(UTM)
    assert profile["transform"] == TRANSFORM
    assert (profile["width"], profile["height"]) == (W, H)
    assert profile["dtype"] == "uint16" and profile["nodata"] == 0
    assert descriptions == ("B04", "B08")
    b04, b08, _ = utm_arrays()
    ok = utm_valid()
    for band, source in zip(pixels, (b04, b08), strict=True):
        assert numpy.array_equal(band, numpy.where(ok, source, 0))
    assert pixels[0, 200, 300] == 1 + 200 * 5 + 300 * 2  # by hand
    assert pixels[1, 120, 550] == 0  # B08's nodata patch masks B04 too
    # cloud-optimized: tiled 512 blocks, GDAL's COG layout, overviews above one block
    assert layout == "COG" and profile["tiled"]
    assert (profile["blockxsize"], profile["blockysize"]) == (512, 512)
    assert overviews == [2]


def test_default_bands_and_uint16_default_is_raw(utm):
    pixels, profile, descriptions, *_ = tif(utm.get(f"{URL}.tif"))
    # no RGB and no default_bands: the first spectral band, raw UInt16
    assert descriptions == ("B04",) and profile["dtype"] == "uint16"
    b04, _, alpha = utm_arrays()
    # B08 is not read, so its nodata patch does not count
    assert numpy.array_equal(pixels[0], numpy.where((b04 != 0) & (alpha != 0), b04, 0))


def test_bbox_in_the_image_crs_cuts_whole_source_pixels(utm):
    bbox = (400123.4, 5795555.5, 404321.0, 5799876.5)
    response = utm.get(
        f"{URL}.tif", params={"bands": "B04,B08", "bbox": ",".join(map(str, bbox)), "bbox_crs": UTM}
    )
    pixels, profile, _, overviews, _ = tif(response)
    c0, r0, c1, r1 = window_of(TRANSFORM, bbox)
    assert (c0, r0, c1, r1) == (12, 12, 433, 445)  # by hand: floor(12.34), ceil(432.1)...
    assert profile["transform"] == TRANSFORM * Affine.translation(c0, r0)
    assert (profile["width"], profile["height"]) == (c1 - c0, r1 - r0)
    b04, b08, _ = utm_arrays()
    ok = utm_valid()[r0:r1, c0:c1]
    assert numpy.array_equal(pixels[0], numpy.where(ok, b04[r0:r1, c0:c1], 0))
    assert numpy.array_equal(pixels[1], numpy.where(ok, b08[r0:r1, c0:c1], 0))
    assert overviews == []  # 421 x 433 fits one 512 block


def test_bbox_in_wgs84_and_clipped_to_the_image(utm):
    west, south = TO_WGS84.transform(400050.0, 5797000.0)
    east, north = TO_WGS84.transform(403000.0, 5801000.0)  # beyond the top edge
    bbox = (west, south, east, north)
    response = utm.get(f"{URL}.npy", params={"bands": "B08", "bbox": ",".join(map(str, bbox))})
    pixels = npy(response)
    utm_bounds = TO_UTM.transform_bounds(*bbox, densify_pts=21)
    c0, r0, c1, r1 = window_of(TRANSFORM, utm_bounds)
    assert r0 == 0  # clipped at the image's top
    _, b08, alpha = utm_arrays()
    assert pixels.shape == (1, r1 - r0, c1 - c0)
    ok = (b08 != 0) & (alpha != 0)  # B04 is not read: its nodata does not count
    assert numpy.array_equal(pixels[0], numpy.where(ok, b08, 0)[r0:r1, c0:c1])
    info = utm.get(
        "/images/s2:a/raster_info", params={"bands": "B08", "bbox": ",".join(map(str, bbox))}
    )
    assert info.json()["geoTransform"] == list((TRANSFORM * Affine.translation(c0, r0)).to_gdal())


def test_posted_geometry_masks_pixels_whose_centres_are_outside(utm):
    triangle = shapely.Polygon(
        [(400333.3, 5799444.4), (403777.7, 5798111.1), (401234.5, 5795555.5)]
    )
    geometry = wgs84(triangle)
    response = utm.post(f"{URL}.tif", params={"bands": "B04"}, json={"geometry": geometry})
    pixels, profile, *_ = tif(response)
    # independently: the posted polygon back in UTM, its bounds in whole pixels, centres inside
    back = shapely_transform(TO_UTM, shapely.geometry.shape(geometry))
    c0, r0, c1, r1 = window_of(TRANSFORM, back.bounds)
    assert profile["transform"] == TRANSFORM * Affine.translation(c0, r0)
    rows, cols = numpy.mgrid[r0:r1, c0:c1]
    xs, ys = TRANSFORM * (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(back, xs, ys)
    assert 0 < inside.sum() < inside.size
    b04, _, _ = utm_arrays()
    expected = numpy.where(inside & utm_valid()[r0:r1, c0:c1], b04[r0:r1, c0:c1], 0)
    assert numpy.array_equal(pixels[0], expected)


def warp_expected(dst_crs, dst_transform, width, height):
    """The source warped with rasterio.warp.reproject (nearest), invalid pixels 0."""
    out = []
    for source in utm_arrays():
        dst = numpy.zeros((height, width), dtype="uint16")
        reproject(
            source.astype("uint16"),
            dst,
            src_transform=TRANSFORM,
            src_crs=UTM,
            dst_transform=dst_transform,
            dst_crs=dst_crs,
            resampling=Resampling.nearest,
        )
        out.append(dst)
    b04, b08, alpha = out
    ok = (b04 != 0) & (b08 != 0) & (alpha != 0)
    return numpy.stack([numpy.where(ok, b04, 0), numpy.where(ok, b08, 0)])


def test_crs_and_resolution_warp_like_reproject(utm):
    response = utm.get(
        f"{URL}.tif", params={"bands": "B04,B08", "crs": "EPSG:3857", "resolution": 20}
    )
    pixels, profile, *_ = tif(response)
    to_3857 = Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    west, south, east, north = to_3857.transform_bounds(
        ORIGIN[0], ORIGIN[1] - H * RES, ORIGIN[0] + W * RES, ORIGIN[1], densify_pts=21
    )
    width, height = math.ceil((east - west) / 20), math.ceil((north - south) / 20)
    transform = Affine(20, 0, west, 0, -20, north)
    assert profile["crs"] == CRS.from_epsg(3857)
    assert (profile["width"], profile["height"]) == (width, height)
    assert profile["transform"].almost_equals(transform, precision=1e-6)
    expected = warp_expected("EPSG:3857", transform, width, height)
    assert numpy.array_equal(pixels, expected)


def test_width_alone_keeps_the_aspect_and_resolution_in_the_same_crs(utm):
    info = utm.get("/images/s2:a/raster_info", params={"width": 300}).json()
    assert info["size"] == {"width": 300, "height": 350}
    assert info["geoTransform"] == [ORIGIN[0], 20.0, 0.0, ORIGIN[1], 0.0, -20.0]
    response = utm.get(f"{URL}.tif", params={"bands": "B04,B08", "resolution": 25})
    pixels, profile, *_ = tif(response)
    transform = Affine(25, 0, ORIGIN[0], 0, -25, ORIGIN[1])
    assert profile["transform"] == transform
    assert (profile["width"], profile["height"]) == (240, 280)
    assert numpy.array_equal(pixels, warp_expected(UTM, transform, 240, 280))


def test_display_scaling_gives_byte_with_the_display_formula(utm):
    pixels, profile, *_ = tif(
        utm.get(f"{URL}.tif", params={"bands": "B04,B08", "scaling": "display"})
    )
    assert profile["dtype"] == "uint8" and profile["nodata"] == 0
    b04, b08, _ = utm_arrays()
    ok = utm_valid()
    assert numpy.array_equal(pixels[0][ok], display(b04, 0, 4000)[ok])
    assert numpy.array_equal(pixels[1][ok], display(b08, 0, 10000)[ok])
    assert (pixels[:, ~ok] == 0).all()
    assert pixels[0, 200, 300] == 102  # 1601 of 0..4000 -> 102.06 -> 102


def test_physical_and_expression_are_float_with_nan_nodata(utm):
    params = {"bands": "B04", "scaling": "physical", "bbox": "400000,5798000,401000,5799000"}
    params["bbox_crs"] = UTM
    pixels, profile, *_ = tif(utm.get(f"{URL}.tif", params=params))
    assert profile["dtype"] == "float64" and math.isnan(profile["nodata"])
    b04, _, _ = utm_arrays()
    ok = utm_valid()[100:200, 0:100]
    assert numpy.allclose(pixels[0][ok], b04[100:200, 0:100][ok] / 10000)
    assert numpy.isnan(pixels[0][~ok]).all()
    expression = "(B08-B04)/(B08+B04)"
    params = {"expression": expression, "bbox": params["bbox"], "bbox_crs": UTM}
    pixels, profile, descriptions, *_ = tif(utm.get(f"{URL}.tif", params=params))
    assert descriptions == (expression,) and profile["dtype"] == "float64"
    _, b08, _ = utm_arrays()
    window = (slice(100, 200), slice(0, 100))
    expected = (b08[window] - b04[window]) / (b08[window] + b04[window])
    assert numpy.allclose(pixels[0][ok], expected[ok])


def info_matches(info: dict, profile: dict, descriptions) -> None:
    """raster_info against the downloaded file's own profile."""
    assert Affine.from_gdal(*info["geoTransform"]) == profile["transform"]
    assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == profile["crs"]
    assert info["coordinateSystem"]["epsg"] == profile["crs"].to_epsg()
    assert info["size"] == {"width": profile["width"], "height": profile["height"]}
    assert [b["description"] for b in info["bands"]] == list(descriptions)
    assert len(info["bands"]) == profile["count"]
    types = {
        "uint8": "Byte",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }
    for band in info["bands"]:
        assert band["data_type"] == types[profile["dtype"]]
        if band["nodata"] == "nan":
            assert math.isnan(profile["nodata"])
        else:
            assert band["nodata"] == profile["nodata"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"bands": "B08,B04", "scaling": "display"},
        {"bbox": "13.55,52.29,13.6,52.33", "crs": "EPSG:3857", "resolution": "15"},
        {"crs": "4326", "width": "100"},
        {"bands": "B04", "scaling": "physical", "height": "70"},
    ],
)
def test_raster_info_describes_the_downloaded_file(utm, params):
    info = utm.get("/images/s2:a/raster_info", params=params)
    assert info.status_code == 200, info.text
    _, profile, descriptions, *_ = tif(utm.get(f"{URL}.tif", params=params))
    info_matches(info.json(), profile, descriptions)
    ring = info.json()["wgs84Extent"]["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
    assert all(13 < lon < 14 and 52 < lat < 53 for lon, lat in ring)


def test_npy_equals_the_geotiff_pixels(utm):
    params = {"bands": "B04,B08", "bbox": "400000,5797000,402000,5800000", "bbox_crs": UTM}
    array = npy(utm.get(f"{URL}.npy", params=params))
    pixels, *_ = tif(utm.get(f"{URL}.tif", params=params))
    assert array.shape == (2, 300, 200) and array.dtype == "uint16"
    assert numpy.array_equal(array, pixels)


def test_bands_in_files_of_different_resolutions(tmp_path, empty_client):
    rows, cols = numpy.mgrid[0:40, 0:60]
    fine = (1 + rows * 60 + cols).astype("uint16")
    coarse = (7 + rows[:20, :30] * 30 + cols[:20, :30]).astype("uint16")
    fine_path = write_raster(tmp_path / "f.tif", fine[None], UTM, TRANSFORM)
    coarse_path = write_raster(
        tmp_path / "c.tif", coarse[None], UTM, from_origin(*ORIGIN, 2 * RES, 2 * RES)
    )
    product = {
        "id": "two",
        "bands": [{"name": "hi"}, {"name": "lo", "file_index": 1}],
    }
    assert empty_client.post("/products", json=product).status_code == 201
    body = {
        "name": "x",
        "product_id": "two",
        "acquired": "2024-05-03T10:00:00Z",
        "geometry": wgs84(box(ORIGIN[0], ORIGIN[1] - 400, ORIGIN[0] + 600, ORIGIN[1])),
        "files": [{"href": str(fine_path)}, {"href": str(coarse_path)}],
    }
    assert empty_client.put("/images/two:x", json=body).status_code == 200
    pixels, profile, *_ = tif(
        empty_client.get("/images/two:x/download.tif", params={"bands": "hi,lo"})
    )
    assert profile["transform"] == TRANSFORM  # the finest requested band's grid
    assert numpy.array_equal(pixels[0], fine)
    assert numpy.array_equal(pixels[1], coarse[rows // 2, cols // 2])  # nearest: 2x2 copies
    pixels, profile, *_ = tif(
        empty_client.get("/images/two:x/download.tif", params={"bands": "lo"})
    )
    assert profile["transform"] == from_origin(*ORIGIN, 2 * RES, 2 * RES)
    assert numpy.array_equal(pixels[0], coarse)


def test_above_the_pixel_budget_is_a_413(tmp_path):
    b04, b08, alpha = utm_arrays()
    path = write_raster(
        tmp_path / "utm.tif", numpy.stack([b04, b08, alpha]).astype("uint16"), UTM, TRANSFORM
    )
    store = SQLiteStore(tmp_path / "catalog.db")
    app = create_app(make_settings(tmp_path, download_max_pixels=W * H), store=store)
    with TestClient(app) as client:
        assert client.post("/products", json=PRODUCT).status_code == 201
        body = {
            "name": "a",
            "product_id": "s2",
            "acquired": "2024-05-03T10:00:00Z",
            "geometry": wgs84(box(ORIGIN[0], ORIGIN[1] - H * RES, ORIGIN[0] + W * RES, ORIGIN[1])),
            "files": [{"href": str(path)}],
        }
        assert client.put("/images/s2:a", json=body).status_code == 200
        assert client.get(f"{URL}.tif", params={"bands": "B04"}).status_code == 200
        response = client.get(f"{URL}.tif", params={"bands": "B04,B08"})
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert "600 x 700" in detail and str(2 * W * H) in detail and str(W * H) in detail
        info = client.get("/images/s2:a/raster_info", params={"bands": "B04,B08"}).json()
        assert info["pixels"] == 2 * W * H and info["max_pixels"] == W * H
    store.close()


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "words"),
    [
        ("get", f"{URL}.tif", {"bbox": "1,2,3"}, None, 400, "bbox"),
        ("get", f"{URL}.tif", {"bbox": "a,b,c,d"}, None, 400, "bbox"),
        ("get", f"{URL}.tif", {"bbox": "14,53,13,52"}, None, 400, "minx < maxx"),
        ("get", f"{URL}.tif", {"bbox": "1,1,2,2"}, None, 404, "does not overlap"),
        (
            "get",
            f"{URL}.tif",
            {"bbox": "13.5,52.3,13.6,52.31", "bbox_crs": "EPSG:nope"},
            None,
            400,
            "bbox_crs",
        ),
        ("get", f"{URL}.tif", {"crs": "EPSG:99999"}, None, 400, "crs"),
        ("get", f"{URL}.tif", {"crs": "nonsense"}, None, 400, "crs"),
        ("get", f"{URL}.tif", {"resolution": "10", "width": "5"}, None, 400, "not both"),
        ("get", f"{URL}.tif", {"resolution": "-1"}, None, 422, "resolution"),
        ("get", f"{URL}.tif", {"resolution": "inf"}, None, 422, "resolution"),
        ("get", f"{URL}.tif", {"width": "0"}, None, 422, "width"),
        ("get", f"{URL}.tif", {"resolution": "1e-9"}, None, 413, "pixels"),
        ("get", f"{URL}.tif", {"bands": "nir"}, None, 400, "nir"),
        ("get", f"{URL}.tif", {"nodata": "-5"}, None, 400, "nodata -5"),
        ("get", f"{URL}.tif", {"nodata": "nan"}, None, 400, "UInt16"),
        ("get", "/searches/nope/raster_info", {}, None, 404, "nope"),
        ("get", f"{URL}.tif", {"scaling": "bright"}, None, 400, "bright"),
        ("get", f"{URL}.png", {}, None, 422, "fmt"),
        ("get", "/images/s2:nope/download.tif", {}, None, 404, "nope"),
        (
            "post",
            f"{URL}.tif",
            {},
            {"geometry": {"type": "Point", "coordinates": [13.5, 52.3]}},
            422,
            "Polygon",
        ),
        ("post", f"{URL}.tif", {}, {"geometry": {"type": "Polygon"}}, 422, "geometry"),
        ("post", f"{URL}.tif", {}, {}, 422, "geometry"),
        (
            "post",
            f"{URL}.tif",
            {"bbox": "13.5,52.3,13.6,52.31"},
            {"geometry": mapping(box(13.5, 52.3, 13.6, 52.31))},
            400,
            "not both",
        ),
        ("post", f"{URL}.tif", {}, {"geometry": mapping(box(1, 1, 2, 2))}, 404, "does not overlap"),
    ],
)
def test_bad_requests_are_clear_4xx(utm, method, path, params, body, status, words):
    kwargs = {"params": params} if body is None else {"params": params, "json": body}
    response = getattr(utm, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert words.lower() in response.json()["detail"].lower()


# ----------------------------------------------------------------------------- searches


def make_client(tmp_path, **settings) -> TestClient:
    store = SQLiteStore(tmp_path / "catalog.db")
    return TestClient(
        create_app(make_settings(tmp_path, reader_threads=1, **settings), store=store)
    )


TILE_TRANSFORM = rasterio.transform.from_bounds(*WEB_MERCATOR.xy_bounds(TILE), 256, 256)


@pytest.fixture()
def mosaic(tmp_path):
    """A, B, C of tests/test_mosaic.py (three overlapping images with holes) and a search."""
    with make_client(tmp_path) as client:
        register_images(client, tmp_path, ["B", "A", "C"])
        response = client.post("/searches", json={"collections": ["mos"]})
        assert response.status_code == 200, response.text
        yield client, response.json()["id"]


def test_mosaic_is_newest_on_top_with_holes_filled(mosaic):
    client, search_id = mosaic
    response = client.get(f"/searches/{search_id}/mosaic.tif", params={"bands": "v1,v2"})
    pixels, profile, descriptions, *_ = tif(response)
    assert response.headers["content-disposition"] == (
        f'attachment; filename="mosaic_{search_id}.tif"'
    )
    assert profile["transform"] == TILE_TRANSFORM and profile["crs"] == CRS.from_epsg(3857)
    assert descriptions == ("v1", "v2") and profile["nodata"] == 0
    v1, v2, done = paint_first(["C", "B", "A"])
    assert numpy.array_equal(pixels[0], numpy.where(done, v1, 0))
    assert numpy.array_equal(pixels[1], numpy.where(done, v2, 0))
    assert pixels[0, 100, 10] == 300  # B under C's hole
    assert pixels[0, 30, 10] == 21  # A where B is transparent
    array = npy(client.get(f"/searches/{search_id}/mosaic.npy", params={"bands": "v1,v2"}))
    assert numpy.array_equal(array, pixels)
    oldest = npy(
        client.get(
            f"/searches/{search_id}/mosaic.npy", params={"bands": "v1,v2", "sortby": "datetime"}
        )
    )
    v1, _, done = paint_first(["A", "B", "C"])
    assert numpy.array_equal(oldest[0], numpy.where(done, v1, 0))


def test_mosaic_grid_takes_in_every_image(tmp_path, mosaic):
    client, _ = mosaic
    # E, the oldest, on the same pixel grid but 64 columns right and 32 rows down
    shifted = TILE_TRANSFORM * Affine.translation(64, 32)
    value = numpy.full((256, 256), 77)
    data = numpy.stack([value, value, numpy.full_like(value, 255)]).astype("uint16")
    path = write_raster(tmp_path / "E.tif", data, "EPSG:3857", shifted)
    west, north = shifted * (0, 0)
    east, south = shifted * (256, 256)
    to_wgs84 = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    footprint = shapely_transform(to_wgs84, box(west, south, east, north))
    body = {
        "name": "E",
        "product_id": "mos",
        "acquired": "2023-12-01T00:00:00Z",
        "geometry": mapping(footprint),
        "files": [{"href": str(path)}],
    }
    assert client.put("/images/mos:E", json=body).status_code == 200
    search_id = client.post("/searches", json={"collections": ["mos"]}).json()["id"]
    response = client.get(f"/searches/{search_id}/mosaic.tif", params={"bands": "v1,v2"})
    pixels, profile, descriptions, *_ = tif(response)
    assert profile["transform"] == TILE_TRANSFORM  # the first image's grid, widened
    assert (profile["width"], profile["height"]) == (256 + 64, 256 + 32)
    v1, _, done = paint_first(["C", "B", "A"])
    expected = numpy.zeros((288, 320), dtype="int64")
    expected[32:, 64:] = 77  # E below everything
    expected[:256, :256][done] = v1[done]
    assert numpy.array_equal(pixels[0], expected)
    info = client.get(f"/searches/{search_id}/raster_info", params={"bands": "v1,v2"}).json()
    info_matches(info, profile, descriptions)


def register(client, tmp_path, name, acquired, v1, v2, alpha) -> None:
    """One image of product `mos` on the test tile's grid."""
    path = write(tmp_path / f"{name}.tif", numpy.stack([v1, v2, alpha]).astype("uint16"))
    b = WEB_MERCATOR.bounds(TILE)
    body = {
        "name": name,
        "product_id": "mos",
        "acquired": acquired,
        "geometry": mapping(box(b.left, b.bottom, b.right, b.top)),
        "files": [{"href": str(path)}],
    }
    assert client.put(f"/images/mos:{name}", json=body).status_code == 200, name


def masked(name_or_arrays):
    """(v1, v2) of one image with its invalid pixels 0."""
    v1, v2, alpha = name_or_arrays
    ok = valid(v1, v2, alpha)
    return numpy.stack([numpy.where(ok, v1, 0), numpy.where(ok, v2, 0)])


def test_stack_without_flatten_is_one_layer_per_image_in_search_order(mosaic):
    client, search_id = mosaic
    url = f"/searches/{search_id}/stack"
    response = client.get(f"{url}.tif", params={"bands": "v1,v2"})
    pixels, profile, descriptions, *_ = tif(response)
    assert response.headers["content-disposition"] == (
        f'attachment; filename="stack_{search_id}.tif"'
    )
    assert descriptions == (
        "2024-01-03 v1",
        "2024-01-03 v2",
        "2024-01-02 v1",
        "2024-01-02 v2",
        "2024-01-01 v1",
        "2024-01-01 v2",
    )
    expected = numpy.stack([masked(images()[n][1:]) for n in "CBA"])  # newest first
    assert numpy.array_equal(pixels, expected.reshape((6, 256, 256)))
    array = npy(client.get(f"{url}.npy", params={"bands": "v1,v2"}))
    assert array.shape == (3, 2, 256, 256)  # (image, band, y, x)
    assert numpy.array_equal(array, expected)
    info = client.get(
        f"/searches/{search_id}/raster_info", params={"bands": "v1,v2", "stack": "true"}
    ).json()
    info_matches(info, profile, descriptions)
    assert [b["name"] for b in info["bands"]] == ["v1", "v2"] * 3


def test_stack_flatten_by_day_and_month(tmp_path, mosaic):
    client, _ = mosaic
    rows, cols = numpy.mgrid[0:256, 0:256]
    # A2: same day as A, later: on top of A where valid (its left half)
    a2 = (numpy.full_like(rows, 900), numpy.full_like(rows, 1900), numpy.where(cols < 128, 255, 0))
    f = (numpy.full_like(rows, 5), numpy.full_like(rows, 6), numpy.full_like(rows, 255))
    register(client, tmp_path, "A2", "2024-01-01T15:00:00Z", *a2)
    register(client, tmp_path, "F", "2024-02-05T10:00:00Z", *f)
    search_id = client.post("/searches", json={"collections": ["mos"]}).json()["id"]
    url = f"/searches/{search_id}/stack"

    def mosaic_of(layers):
        out = numpy.zeros((2, 256, 256), dtype="int64")
        done = numpy.zeros((256, 256), dtype=bool)
        for v1, v2, alpha in layers:  # paint order: newest first
            take = valid(v1, v2, alpha) & ~done
            out[0][take], out[1][take] = v1[take], v2[take]
            done |= take
        return out

    by_day = npy(client.get(f"{url}.npy", params={"bands": "v1,v2", "flatten": "day"}))
    a, b, c = (images()[n][1:] for n in "ABC")
    expected = numpy.stack([mosaic_of([a2, a]), mosaic_of([b]), mosaic_of([c]), mosaic_of([f])])
    assert numpy.array_equal(by_day, expected)  # sorted by day, oldest first
    assert by_day[0, 0, 10, 10] == 900 and by_day[0, 0, 200, 200] == 1 + 2 * 200
    _, _, descriptions, *_ = tif(client.get(f"{url}.tif", params={"bands": "v1", "flatten": "day"}))
    assert descriptions == ("2024-01-01 v1", "2024-01-02 v1", "2024-01-03 v1", "2024-02-05 v1")

    by_month = npy(client.get(f"{url}.npy", params={"bands": "v1,v2", "flatten": "month"}))
    assert by_month.shape == (2, 2, 256, 256)
    assert numpy.array_equal(by_month[0], mosaic_of([c, b, a2, a]))
    assert numpy.array_equal(by_month[1], mosaic_of([f]))
    pixels, profile, descriptions, *_ = tif(
        client.get(f"{url}.tif", params={"bands": "v1,v2", "flatten": "month"})
    )
    assert descriptions == ("2024-01 v1", "2024-01 v2", "2024-02 v1", "2024-02 v2")
    assert numpy.array_equal(pixels, by_month.reshape((4, 256, 256)))
    info = client.get(
        f"/searches/{search_id}/raster_info",
        params={"bands": "v1,v2", "stack": "true", "flatten": "month"},
    ).json()
    info_matches(info, profile, descriptions)

    bad = client.get(f"{url}.tif", params={"flatten": "week"})
    assert bad.status_code == 400 and "flatten" in bad.json()["detail"]


def test_search_downloads_in_an_area_and_their_errors(mosaic):
    client, search_id = mosaic
    b = WEB_MERCATOR.xy_bounds(TILE)
    # the left half of the tile, in the mosaic's own CRS: columns 0..127
    bbox = f"{b.left},{b.bottom},{(b.left + b.right) / 2},{b.top}"
    array = npy(
        client.get(
            f"/searches/{search_id}/mosaic.npy",
            params={"bands": "v1,v2", "bbox": bbox, "bbox_crs": "EPSG:3857"},
        )
    )
    v1, v2, done = paint_first(["C", "B", "A"])
    assert array.shape == (2, 256, 128)
    assert numpy.array_equal(array[0], numpy.where(done, v1, 0)[:, :128])
    far = client.get(f"/searches/{search_id}/mosaic.tif", params={"bbox": "1,1,2,2"})
    assert far.status_code == 404 and "no image" in far.json()["detail"]
    assert client.get("/searches/nope/mosaic.tif").status_code == 404
    nothing = client.post("/searches", json={"ids": ["nope"]}).json()["id"]
    response = client.get(f"/searches/{nothing}/stack.tif")
    assert response.status_code == 404 and "no image" in response.json()["detail"]
    one_band = client.get(
        f"/searches/{search_id}/mosaic.tif",
        params={"bands": "v1", "pixel_selection": "lastbandlow"},
    )
    assert one_band.status_code == 400 and "two bands" in one_band.json()["detail"]


def test_stack_budget_counts_images(tmp_path):
    with make_client(tmp_path, download_max_pixels=2 * 256 * 256 * 2) as client:
        register_images(client, tmp_path, ["A", "B", "C"])
        search_id = client.post("/searches", json={"collections": ["mos"]}).json()["id"]
        url = f"/searches/{search_id}"
        assert client.get(f"{url}/mosaic.tif", params={"bands": "v1,v2"}).status_code == 200
        response = client.get(f"{url}/stack.tif", params={"bands": "v1,v2"})
        assert response.status_code == 413
        assert "3 images" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"bands": "B04,B11"},
        {"bands": "SCL", "scaling": "display"},
        {"bands": "B04,B03,B02,SCL", "scaling": "2%,98%"},
        {"expression": "(B08-B04)/(B08+B04)", "pixel_selection": "median"},
        {"expression": "B08;B04", "pixel_selection": "count"},
        {"bands": "B08,B04", "pixel_selection": "lastbandhigh", "data_type": "Float32"},
        {"bands": "B04", "pixel_selection": "stdev", "crs": "EPSG:4326"},
        {"bands": "B04", "crs": "EPSG:3035", "resolution": "40", "resampling": "average"},
        {"bands": "B04", "scaling": "auto", "flatten": "month", "sortby": "eo:cloud_cover"},
        {"bands": "B04", "flatten": "platform"},
        {"bands": "B99"},
        {"bands": ",", "scaling": "1,2,3"},
    ],
)
def test_demo_downloads_never_500(client, params):
    """The demo (UTM, 10 m and 20 m bands, a class band, several dates): 2xx or a clear 4xx."""
    image = client.get(f"/images/{DEMO_IMAGE}").json()
    west, south = image["bbox"][:2]
    area = {"bbox": f"{west + 0.01},{south + 0.01},{west + 0.03},{south + 0.02}", **params}
    search_id = client.post("/searches", json={"collections": ["sentinel-2-l2a"]}).json()["id"]
    for path in (
        f"/images/{DEMO_IMAGE}/download.tif",
        f"/searches/{search_id}/mosaic.npy",
        f"/searches/{search_id}/stack.tif",
    ):
        response = client.get(path, params=area)
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], path
    info = client.get(f"/searches/{search_id}/raster_info", params={**area, "stack": "true"})
    assert info.status_code == response.status_code, info.text
    if response.status_code == 200:
        _, profile, descriptions, *_ = tif(response)
        info_matches(info.json(), profile, descriptions)


def test_mosaic_and_stack_across_products_hold_every_products_band(tmp_path):
    # A in product mos (v1 UInt16), C in product `other` (v1 Int16): Int32 holds both
    with make_client(tmp_path) as client:
        register_images(client, tmp_path, ["A"])
        register_images(
            client, tmp_path, ["C"], product=variant("other", v1={"data_type": "Int16"})
        )
        search_id = client.post("/searches", json={"collections": ["mos", "other"]}).json()["id"]
        mosaic = npy(client.get(f"/searches/{search_id}/mosaic.npy", params={"bands": "v1,v2"}))
        v1, v2, done = paint_first(["C", "A"])
        assert mosaic.dtype == "int32"
        assert numpy.array_equal(mosaic[0], numpy.where(done, v1, 0))
        assert numpy.array_equal(mosaic[1], numpy.where(done, v2, 0))
        stack = npy(client.get(f"/searches/{search_id}/stack.npy", params={"bands": "v1,v2"}))
        assert stack.dtype == "int32"
        assert numpy.array_equal(stack, numpy.stack([masked(images()[n][1:]) for n in "CA"]))
        # a band one product lacks is a clear 400
        register_images(client, tmp_path, ["B"], product=variant("short", v2=None))
        search_id = client.post("/searches", json={"collections": ["mos", "short"]}).json()["id"]
        response = client.get(f"/searches/{search_id}/mosaic.tif", params={"bands": "v1,v2"})
        assert response.status_code == 400
        assert "'v2' is not available in product 'short'" in response.json()["detail"]
