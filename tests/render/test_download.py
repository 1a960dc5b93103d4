"""render/download.py driven directly (no HTTP client, no catalog store): requests, grids,
nodata, budget, files and one small end-to-end render; expected values worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from tests.synthetic import write_raster
from tileserver.catalog.models import Band, Image, ProcessingStep, Product
from tileserver.render.download import (
    DownloadError,
    GridRequest,
    OutputBand,
    OutsideError,
    Plan,
    TooLarge,
    _holds,
    aligned_window,
    area_wgs84,
    check_budget,
    default_resolution,
    flatten_key,
    group_layers,
    image_extent,
    image_grid,
    inside_pixels,
    output_grid,
    output_nodata,
    parse_bbox,
    parse_crs,
    plan_download,
    raster_info,
    render_layers,
    write_geotiff,
    write_npy,
)
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import RenderParams, Scaling
from tileserver.render.reader import Grid, check_nodata

WGS84 = CRS.from_epsg(4326)
WEB = CRS.from_epsg(3857)
R = 6378137.0  # the WebMercator sphere
NAN = float("nan")


def merc_y(lat: float) -> float:
    """WebMercator northing of a latitude: R ln tan(pi/4 + lat/2)."""
    return R * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def merc_x(lon: float) -> float:
    """WebMercator easting of a longitude: R lon (radians)."""
    return R * math.radians(lon)


# 10 x 10 one-degree pixels over lon 0..10, lat 0..10
DEGREES = Grid(WGS84, Affine(1, 0, 0, 0, -1, 10), 10, 10)


def polygon(*points: tuple[float, float]) -> dict:
    return {"type": "Polygon", "coordinates": [[list(p) for p in (*points, points[0])]]}


def a_plan(names=("b1",), data_type="UInt16", nodata=0.0, keys=()) -> Plan:
    outputs = [OutputBand(n, n, data_type) for n in names]
    return Plan([], None, outputs, data_type, nodata, layer_keys=list(keys))


# ----------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2,3,4", (1.0, 2.0, 3.0, 4.0)),
        (" -10.5 , -20 , 1e1 , 20 ", (-10.5, -20.0, 10.0, 20.0)),
    ],
)
def test_parse_bbox_reads_four_numbers(text, expected):
    assert parse_bbox(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a,b,c,d",  # not numbers
        "",  # nothing
        "1,2,3",  # three
        "1,2,3,4,5",  # five
        "1,2,3,nan",  # not finite
        "1,2,inf,4",
        "1e400,0,2,1",  # overflows to inf
        "3,2,1,4",  # minx > maxx
        "1,4,3,2",  # miny > maxy
        "1,2,1,4",  # empty: minx == maxx
    ],
)
def test_parse_bbox_refuses_what_is_not_a_box(text):
    with pytest.raises(DownloadError, match="bbox"):
        parse_bbox(text)


@pytest.mark.parametrize(
    "text, epsg",
    [
        ("EPSG:3857", 3857),
        ("epsg:32633", 32633),
        ("4326", 4326),  # a bare code
        (" 4326 ", 4326),
        ("+proj=longlat +datum=WGS84 +no_defs", 4326),
    ],
)
def test_parse_crs_reads_codes_and_proj_strings(text, epsg):
    assert parse_crs(text).to_epsg() == epsg


def test_parse_crs_reads_wkt():
    assert parse_crs(WEB.to_wkt()) == WEB


@pytest.mark.parametrize(
    "text", ["EPSG:999999", "999999", "0", "EPSG:0", "not a crs", "", "99999999999999999999"]
)
def test_parse_crs_refuses_unknown_systems_naming_the_parameter(text):
    with pytest.raises(DownloadError, match="bbox_crs"):
        parse_crs(text, "bbox_crs")


def test_a_grid_request_takes_resolution_or_size_and_bbox_or_geometry():
    with pytest.raises(DownloadError):
        GridRequest(resolution=10, width=5)
    with pytest.raises(DownloadError):
        GridRequest(resolution=10, height=5)
    with pytest.raises(DownloadError):
        GridRequest(bbox=(0, 0, 1, 1), geometry=polygon((0, 0), (1, 0), (1, 1)))
    assert GridRequest().native and GridRequest(crs=WEB).native
    assert not GridRequest(width=3).native and not GridRequest(resolution=1).native


def test_area_wgs84_is_the_request_clipped_to_the_world():
    assert area_wgs84(GridRequest()) is None
    # 170..190 E, 80..95 N: cut at the antimeridian and the pole
    assert area_wgs84(GridRequest(bbox=(170, 80, 190, 95))) == (170, 80, 180, 90)
    with pytest.raises(DownloadError, match="outside"):
        area_wgs84(GridRequest(bbox=(200, 0, 210, 10)))


# ----------------------------------------------------------------------------- grids


def test_native_grid_without_an_area_is_the_anchor():
    grid = output_grid(DEGREES, [DEGREES], GridRequest())
    assert grid == DEGREES


def test_native_grid_cuts_whole_source_pixels_outward():
    # bbox 2.3..5.2 E, 4.6..7.1 N on 1-degree pixels from (0, 10):
    # cols floor(2.3)=2 .. ceil(5.2)=6 -> 4 wide; rows floor(10-7.1=2.9)=2 .. ceil(10-4.6=5.4)=6
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(2.3, 4.6, 5.2, 7.1)))
    assert grid.crs == WGS84
    assert grid.transform == Affine(1, 0, 2, 0, -1, 8)
    assert (grid.width, grid.height) == (4, 4)


def test_native_grid_forgives_float_noise_on_pixel_edges():
    # edges 1e-10 outside whole pixels 2..5 and 3..6 must not add a pixel on each side
    noisy = (2 - 1e-10, 4 - 1e-10, 5 + 1e-10, 7 + 1e-10)
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=noisy))
    assert grid.transform == Affine(1, 0, 2, 0, -1, 7)
    assert (grid.width, grid.height) == (3, 3)


def test_native_grid_clips_the_bbox_to_the_images():
    # -5..3 E, 8..20 N meets lon 0..10, lat 0..10 on 0..3 E, 8..10 N: 3 x 2 pixels
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(-5, 8, 3, 20)))
    assert grid.transform == Affine(1, 0, 0, 0, -1, 10)
    assert (grid.width, grid.height) == (3, 2)


def test_native_grid_of_a_bbox_in_another_crs():
    # a WebMercator box over 0..1.5 E, 0..2.5 N: cols 0..ceil(1.5)=2, rows floor(7.5)=7..10
    box = (0.0, 0.0, merc_x(1.5), merc_y(2.5))
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=box, bbox_crs=WEB))
    assert grid.crs == WGS84
    assert grid.transform.almost_equals(Affine(1, 0, 0, 0, -1, 3))
    assert (grid.width, grid.height) == (2, 3)


def test_native_grid_takes_in_every_extent():
    east = Grid(WGS84, Affine(1, 0, 10, 0, -1, 10), 10, 10)  # lon 10..20
    south = Grid(WGS84, Affine(1, 0, 0, 0, -1, 0), 5, 5)  # lat -5..0
    grid = output_grid(DEGREES, [DEGREES, east, south], GridRequest())
    # union: lon 0..20, lat -5..10 on the anchor's pixels
    assert grid.transform == Affine(1, 0, 0, 0, -1, 10)
    assert (grid.width, grid.height) == (20, 15)


@pytest.mark.parametrize(
    "bbox",
    [
        (20, 20, 30, 30),  # far away
        (10, 0, 20, 10),  # shares only the east edge
    ],
)
def test_an_area_off_the_images_is_outside(bbox):
    with pytest.raises(OutsideError, match="does not overlap"):
        output_grid(DEGREES, [DEGREES], GridRequest(bbox=bbox))


def test_no_extent_at_all_is_outside():
    with pytest.raises(OutsideError):
        output_grid(DEGREES, [], GridRequest())


def test_width_alone_keeps_the_aspect_of_the_area():
    # 0..2 E x 0..1 N, 4 wide -> round(4 * 1 / 2) = 2 high, 0.5-degree pixels
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(0, 0, 2, 1), width=4))
    assert grid.crs == WGS84
    assert grid.transform == Affine(0.5, 0, 0, 0, -0.5, 1)
    assert (grid.width, grid.height) == (4, 2)


def test_width_alone_rounds_the_height_to_the_nearest_pixel():
    # 0..3 E x 0..1 N, 4 wide -> round(4 * 1 / 3 = 1.33) = 1 high: 0.75 by 1 degree
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(0, 0, 3, 1), width=4))
    assert grid.transform == Affine(0.75, 0, 0, 0, -1, 1)
    assert (grid.width, grid.height) == (4, 1)


def test_height_alone_keeps_the_aspect_of_the_area():
    # 0..2 E x 0..1 N, 3 high -> round(3 * 2 / 1) = 6 wide, 1/3-degree pixels
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(0, 0, 2, 1), height=3))
    assert grid.transform.almost_equals(Affine(1 / 3, 0, 0, 0, -1 / 3, 1))
    assert (grid.width, grid.height) == (6, 3)


def test_width_and_height_give_non_square_pixels():
    # 0..2 E x 0..1 N on 5 x 2: 2/5 = 0.4 by 1/2 = 0.5
    grid = output_grid(DEGREES, [DEGREES], GridRequest(bbox=(0, 0, 2, 1), width=5, height=2))
    assert grid.transform.almost_equals(Affine(0.4, 0, 0, 0, -0.5, 1))
    assert (grid.width, grid.height) == (5, 2)


def test_resolution_in_the_same_crs_rounds_the_size_up():
    # 0..10 x 0..10 at 3 degrees: ceil(10 / 3) = 4 pixels each way, from (0, 10)
    grid = output_grid(DEGREES, [DEGREES], GridRequest(resolution=3))
    assert grid.transform == Affine(3, 0, 0, 0, -3, 10)
    assert (grid.width, grid.height) == (4, 4)


def test_crs_and_resolution_warp_the_area():
    # 0..1 E, 0..1 N in WebMercator: x 0..R*pi/180 = 111319.49, y 0..R ln tan(45.5 deg) =
    # 111325.14; at 10 km: ceil(11.13) = 12 by ceil(11.13) = 12
    request = GridRequest(bbox=(0, 0, 1, 1), crs=WEB, resolution=10000)
    grid = output_grid(DEGREES, [DEGREES], request)
    assert grid.crs == WEB
    assert grid.transform.almost_equals(Affine(10000, 0, 0, 0, -10000, merc_y(1)), precision=1e-3)
    assert (grid.width, grid.height) == (12, 12)


def test_a_crs_without_resolution_takes_gdals_default_resolution():
    # lon 0..1, lat 0..1 on 10 x 10 pixels in WebMercator: GDAL's diagonal rule gives
    # hypot(111319.49, 111325.14) / hypot(10, 10) = 11132.23 m; the extent is then
    # 111319.49 / 11132.23 = 9.9997 -> 10 wide and 111325.14 / 11132.23 = 10.0003 -> 11 high
    tenth = Grid(WGS84, Affine(0.1, 0, 0, 0, -0.1, 1), 10, 10)
    grid = output_grid(tenth, [tenth], GridRequest(crs=WEB))
    res = math.hypot(merc_x(1), merc_y(1)) / math.hypot(10, 10)
    assert grid.crs == WEB
    assert grid.transform.a == pytest.approx(res, rel=1e-9)
    assert grid.transform.e == pytest.approx(-res, rel=1e-9)
    assert (grid.width, grid.height) == (10, 11)


def test_default_resolution():
    # same CRS, square pixels: the pixels' own size
    assert default_resolution(DEGREES, WGS84) == pytest.approx(1.0)
    tenth = Grid(WGS84, Affine(0.1, 0, 0, 0, -0.1, 1), 10, 10)
    expected = math.hypot(111319.49079327358, 111325.14286638486) / math.hypot(10, 10)
    assert default_resolution(tenth, WEB) == pytest.approx(expected, rel=1e-9)  # 11132.2317


def test_a_resolution_of_more_than_2_to_31_pixels_is_too_large():
    # 10 degrees at 1e-9: 1e10 pixels wide, above 2^31 = 2.1e9
    with pytest.raises(TooLarge, match="2\\^31"):
        output_grid(DEGREES, [DEGREES], GridRequest(resolution=1e-9))


def test_image_extent_is_the_recorded_grid_without_opening_files():
    image = Image(
        name="recorded",
        product_id="p",
        acquired=datetime(2024, 6, 1, tzinfo=UTC),
        geometry=polygon((15, 45), (15.1, 45), (15.1, 45.1)),
        files=[{"href": "/nonexistent/recorded.tif"}],
        crs="EPSG:32633",
        geotrans=(500000, 10, 0, 5000090, 0, -10),
        width=9,
        height=8,
    )
    grid = image_extent(image, [])
    assert grid == Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5000090), 9, 8)


def test_aligned_window_is_the_file_window_of_a_grid_on_its_pixels():
    file_crs, file_transform = WGS84, Affine(1, 0, 0, 0, -1, 10)
    on = Grid(WGS84, Affine(1, 0, 2, 0, -1, 8), 4, 3)  # col 2, row 10 - 8 = 2
    assert aligned_window(on, file_crs, file_transform) == Window(2, 2, 4, 3)
    half = Grid(WGS84, Affine(1, 0, 2.5, 0, -1, 8), 4, 3)  # half a pixel off
    assert aligned_window(half, file_crs, file_transform) is None
    coarser = Grid(WGS84, Affine(2, 0, 2, 0, -2, 8), 4, 3)
    assert aligned_window(coarser, file_crs, file_transform) is None
    other_crs = Grid(WEB, Affine(1, 0, 2, 0, -1, 8), 4, 3)
    assert aligned_window(other_crs, file_crs, file_transform) is None


# ----------------------------------------------------------------------------- geometry


def test_inside_pixels_of_a_rectangle_are_those_whose_centres_it_holds():
    # centres at (c + 0.5, 9.5 - r): 2.2 < c + 0.5 < 5.7 -> cols 2..5;
    # 3.1 < 9.5 - r < 7.9 -> rows 2..6; 4 x 5 = 20 pixels
    rect = polygon((2.2, 3.1), (5.7, 3.1), (5.7, 7.9), (2.2, 7.9))
    inside = inside_pixels(DEGREES, rect)
    expected = numpy.zeros((10, 10), dtype=bool)
    expected[2:7, 2:6] = True
    assert inside.shape == (10, 10) and inside.sum() == 20
    numpy.testing.assert_array_equal(inside, expected)


def test_inside_pixels_of_a_triangle():
    # hypotenuse x + y = 10.4; centre (c + 0.5) + (9.5 - r) = 10 + c - r < 10.4 iff c <= r:
    # the lower-left triangle with its diagonal, 10 * 11 / 2 = 55 pixels
    triangle = polygon((0, 0), (10.4, 0), (0, 10.4))
    inside = inside_pixels(DEGREES, triangle)
    rows, cols = numpy.mgrid[0:10, 0:10]
    numpy.testing.assert_array_equal(inside, cols <= rows)
    assert inside.sum() == 55


def test_inside_pixels_on_a_projected_grid():
    # 10 km WebMercator pixels from (0, 100 km); lon 0.2..0.65 -> x 22264..72358 m:
    # centres 5000 + 10000 c inside for c = 2..6; lat 0.1..0.5 -> y 11132..55660 m:
    # centres 95000 - 10000 r inside for r = 4..8 (95000 - 40000 = 55000 < 55660)
    grid = Grid(WEB, Affine(10000, 0, 0, 0, -10000, 100000), 10, 10)
    inside = inside_pixels(grid, polygon((0.2, 0.1), (0.65, 0.1), (0.65, 0.5), (0.2, 0.5)))
    expected = numpy.zeros((10, 10), dtype=bool)
    expected[4:9, 2:7] = True
    numpy.testing.assert_array_equal(inside, expected)


# ----------------------------------------------------------------------------- budget


def test_check_budget_counts_width_height_bands_and_layers():
    grid = Grid(WGS84, Affine(1, 0, 0, 0, -1, 2), 3, 2)
    two_bands = a_plan(("b1", "b2"))
    assert check_budget(grid, two_bands, 12) == 12  # 3 x 2 x 2, at the limit
    with pytest.raises(TooLarge, match="3 x 2 pixels x 2 bands = 12 pixels, above the limit of 11"):
        check_budget(grid, two_bands, 11)
    stack = a_plan(("b1", "b2"), keys=("2024-06-01", "2024-06-02", "2024-06-03"))
    assert check_budget(grid, stack, 36) == 36  # 3 x 2 x 2 x 3
    with pytest.raises(TooLarge, match="x 3 images = 36 pixels"):
        check_budget(grid, stack, 35)


# ----------------------------------------------------------------------------- nodata


@pytest.mark.parametrize(
    "data_type, value, fits",
    [
        ("Byte", 0, True),
        ("Byte", 255, True),
        ("Byte", 256, False),
        ("Byte", -1, False),
        ("Int16", -32768, True),
        ("Int16", -32769, False),
        ("Int16", 1.5, False),  # not a whole number
        ("UInt16", 65535, True),
        ("UInt32", 4294967295, True),
        ("UInt32", 4294967296, False),
        ("Int32", -2147483648, True),
        ("Float32", -9999.5, True),
        ("Float64", -1e300, True),
        ("Float64", None, False),
        ("Float64", NAN, False),  # NaN is the float fallback anyway
        ("Float32", -1e300, False),  # beyond Float32's +-3.4e38: GDAL refuses it as nodata
        ("Float32", 3.4e38, True),
    ],
)
def test_holds_says_whether_a_type_holds_a_value(data_type, value, fits):
    assert _holds(data_type, value) is fits


def u16(nodata, name="a") -> Band:
    return Band(name=name, data_type="UInt16", nodata=nodata)


LINEAR = {"default": [ProcessingStep(function="linear", parameter=[0.0001, 0])]}
SCALED = (0, 10000, 0, 255)


@pytest.mark.parametrize(
    "bands, scales, data_type, params, selection, expected",
    [
        # unscaled: the bands' common nodata when the output type holds it
        ([u16(0)], [None], "UInt16", RenderParams(), "first", 0.0),
        ([u16(65535)], [None], "UInt16", RenderParams(), "first", 65535.0),
        ([u16(7), u16(7, "b")], [None, None], "UInt16", RenderParams(), "highest", 7.0),
        ([Band(name="a", data_type="Int16", nodata=-9999)], [None], "Int16", RenderParams(),
         "first", -9999.0),
        ([Band(name="a", data_type="Float32", nodata=-9999.5)], [None], "Float32",
         RenderParams(), "mean", -9999.5),
        ([u16(7)], [None], "Float32", RenderParams(), "first", 7.0),
        # the request's nodata wins over the bands'
        ([u16(0)], [None], "UInt16", RenderParams(nodata=3), "first", 3.0),
        # a type that cannot hold it: 0 for integers
        ([Band(name="a", data_type="Int16", nodata=-9999)], [None], "UInt16", RenderParams(),
         "first", 0.0),
        ([Band(name="a", data_type="Float32", nodata=-9999.5)], [None], "Int32",
         RenderParams(), "first", 0.0),
        ([u16(300)], [None], "Byte", RenderParams(), "first", 0.0),
        # no common nodata: NaN for floats, 0 for integers
        ([u16(None)], [None], "Float32", RenderParams(), "first", NAN),
        ([u16(1), u16(2, "b")], [None, None], "Float64", RenderParams(), "first", NAN),
        ([u16(1), u16(2, "b")], [None, None], "UInt16", RenderParams(), "first", 0.0),
        # scaled, counted, computed or converted values never keep the bands' nodata
        ([u16(7)], [SCALED], "Byte", RenderParams(), "first", 0.0),
        ([u16(7)], [SCALED], "Float32", RenderParams(), "first", NAN),
        ([u16(7)], [None], "Byte", RenderParams(), "count", 0.0),
        ([u16(7)], [None], "Float64", RenderParams(expression="a * 2"), "first", NAN),
        ([Band(name="a", nodata=7, processing_levels=LINEAR)], [None], "Float64",
         RenderParams(), "first", NAN),
    ],
)  # fmt: skip
def test_output_nodata(bands, scales, data_type, params, selection, expected):
    nodata = output_nodata(bands, scales, data_type, params, selection)
    assert isinstance(nodata, float)
    if math.isnan(expected):
        assert math.isnan(nodata)
    else:
        assert nodata == expected


# ----------------------------------------------------------------------------- plans


PRODUCT = Product(
    id="p",
    bands=[
        Band(name="b1", data_type="UInt16", nodata=7, band_index=0),
        Band(name="b2", data_type="UInt16", nodata=7, band_index=1),
    ],
)


def test_plan_of_raw_uint16_bands_stays_uint16_with_their_nodata():
    plan = plan_download(PRODUCT, RenderParams(bands=("b1", "b2")))
    assert [b.name for b in plan.bands] == ["b1", "b2"] and plan.alpha is None
    assert plan.outputs == [OutputBand("b1", "b1", "UInt16"), OutputBand("b2", "b2", "UInt16")]
    assert (plan.data_type, plan.nodata) == ("UInt16", 7.0)
    assert plan.descriptions == ["b1", "b2"] and plan.layers == 1


def test_plan_with_display_scaling_is_byte_with_nodata_0():
    plan = plan_download(PRODUCT, RenderParams(bands=("b2",), scaling=Scaling("display")))
    assert plan.outputs == [OutputBand("b2", "b2", "Byte")]
    assert (plan.data_type, plan.nodata) == ("Byte", 0.0)


def test_plan_of_an_expression_is_float64_with_nan_nodata():
    plan = plan_download(PRODUCT, RenderParams(expression="b1 - b2;b1 + b2"))
    assert [o.name for o in plan.outputs] == ["b1 - b2", "b1 + b2"]
    assert plan.data_type == "Float64" and math.isnan(plan.nodata)


def test_plan_of_a_count_is_one_byte_band():
    plan = plan_download(PRODUCT, RenderParams(bands=("b1",)), "count", images=3)
    assert plan.outputs == [OutputBand("count", "count", "Byte")]
    assert (plan.data_type, plan.nodata) == ("Byte", 0.0)


def test_plan_refuses_an_expression_with_a_selection_that_changes_its_bands():
    with pytest.raises(RenderError, match="pixel_selection count"):
        plan_download(PRODUCT, RenderParams(expression="b1 * 2"), "count", images=2)


def test_plan_of_a_stack_names_each_layer_and_band():
    keys = ["2024-06-01", "2024-06-02"]
    plan = plan_download(PRODUCT, RenderParams(bands=("b1", "b2")), layer_keys=keys)
    assert plan.layers == 2
    assert plan.descriptions == [
        "2024-06-01 b1",
        "2024-06-01 b2",
        "2024-06-02 b1",
        "2024-06-02 b2",
    ]


def test_a_nodata_float32_cannot_hold_falls_back_to_nan_and_the_file_writes(tmp_path):
    lowest = -1.7976931348623157e308  # a common Float64 nodata
    product = Product(id="f", bands=[Band(name="v", data_type="Float64", nodata=lowest)])
    plan = plan_download(product, RenderParams(bands=("v",), data_type="Float32"))
    assert plan.data_type == "Float32"
    assert math.isnan(plan.nodata)  # not representable in Float32: the float fallback
    grid = Grid(WGS84, Affine(1, 0, 0, 0, -1, 2), 2, 2)
    write_geotiff(str(tmp_path / "f.tif"), numpy.zeros((1, 2, 2), "float32"), grid, plan)


# ----------------------------------------------------------------------------- stacks


def record(name: str, acquired: datetime, **properties) -> Image:
    return Image(
        name=name,
        product_id="p",
        acquired=acquired,
        geometry=polygon((0, 0), (1, 0), (1, 1)),
        files=[{"href": f"/nonexistent/{name}.tif"}],
        properties=properties,
    )


def test_flatten_key_is_the_utc_day_month_year_or_a_property():
    # 23:30 at UTC-2 on May 31st is 01:30 UTC on June 1st
    image = record("a", datetime.fromisoformat("2024-05-31T23:30:00-02:00"), orbit=12)
    assert flatten_key(image, "day") == "2024-06-01"
    assert flatten_key(image, "month") == "2024-06"
    assert flatten_key(image, "year") == "2024"
    assert flatten_key(image, "orbit") == 12
    assert flatten_key(image, "missing") is None


def stack_layers() -> list[tuple[Image, Product]]:
    return [
        (record("a", datetime(2024, 6, 12, 10, tzinfo=UTC), orbit=10, tile="T33"), PRODUCT),
        (record("b", datetime(2024, 5, 31, 23, tzinfo=UTC), orbit=2, tile="T32"), PRODUCT),
        (record("c", datetime(2024, 6, 1, 0, tzinfo=UTC), orbit=10, tile="T33"), PRODUCT),
        (record("d", datetime(2024, 6, 12, 23, 59, tzinfo=UTC), orbit=2, tile="T33"), PRODUCT),
    ]


def names(groups) -> list[tuple[str, list[str]]]:
    return [(label, [layer[0].name for layer in layers]) for label, layers in groups]


def test_group_layers_none_is_one_group_per_image_in_search_order():
    assert names(group_layers(stack_layers(), "none")) == [
        ("2024-06-12", ["a"]),
        ("2024-05-31", ["b"]),
        ("2024-06-01", ["c"]),
        ("2024-06-12", ["d"]),
    ]


@pytest.mark.parametrize(
    "flatten, expected",
    [
        ("day", [("2024-05-31", ["b"]), ("2024-06-01", ["c"]), ("2024-06-12", ["a", "d"])]),
        ("month", [("2024-05", ["b"]), ("2024-06", ["a", "c", "d"])]),
        ("year", [("2024", ["a", "b", "c", "d"])]),
        ("orbit", [("2", ["b", "d"]), ("10", ["a", "c"])]),  # numbers sort as numbers
        ("tile", [("T32", ["b"]), ("T33", ["a", "c", "d"])]),
    ],
)
def test_group_layers_by_key_in_sorted_key_order_keeping_paint_order(flatten, expected):
    assert names(group_layers(stack_layers(), flatten)) == expected


def test_group_layers_puts_numbers_before_text():
    layers = [
        (record("a", datetime(2024, 1, 1, tzinfo=UTC), zone="x"), PRODUCT),
        (record("b", datetime(2024, 1, 1, tzinfo=UTC), zone=5), PRODUCT),
    ]
    assert names(group_layers(layers, "zone")) == [("5", ["b"]), ("x", ["a"])]


@pytest.mark.parametrize("value", [None, {"nested": 1}, [1, 2]])
def test_group_layers_refuses_a_key_without_a_plain_value(value):
    layers = [
        (record("a", datetime(2024, 1, 1, tzinfo=UTC), zone=1), PRODUCT),
        (record("b", datetime(2024, 1, 2, tzinfo=UTC), zone=value), PRODUCT),
    ]
    with pytest.raises(DownloadError, match="image 'p:b'"):
        group_layers(layers, "zone")


# ----------------------------------------------------------------------------- files

# 4 x 3 pixels of 0.5 degrees from (10 E, 50 N): lon 10..12, lat 48.5..50
SMALL = Grid(WGS84, Affine(0.5, 0, 10, 0, -0.5, 50), 4, 3)


def test_write_geotiff_round_trips_values_type_nodata_and_grid(tmp_path):
    data = numpy.arange(2 * 3 * 4, dtype="uint16").reshape(2, 3, 4) * 1000  # 0..23000
    path = tmp_path / "out.tif"
    write_geotiff(str(path), data, SMALL, a_plan(("b1", "b2"), "UInt16", 0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no staging file left
    with rasterio.open(path) as src:
        assert src.count == 2 and src.dtypes == ("uint16", "uint16")
        assert (src.width, src.height) == (4, 3)
        assert src.crs == WGS84
        assert src.transform == Affine(0.5, 0, 10, 0, -0.5, 50)
        assert src.nodata == 0
        assert src.descriptions == ("b1", "b2")
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1) == []  # smaller than one 512-pixel block
        back = src.read()
    assert back[1, 2, 3] == 23000 and back[0, 0, 1] == 1000
    numpy.testing.assert_array_equal(back, data)


def test_write_geotiff_float_with_nan_nodata(tmp_path):
    data = numpy.full((1, 3, 4), 0.25, dtype="float32")
    data[0, 1, 2] = numpy.nan
    path = tmp_path / "out.tif"
    write_geotiff(str(path), data, SMALL, a_plan(("ndvi",), "Float32", NAN))
    with rasterio.open(path) as src:
        assert src.dtypes == ("float32",) and math.isnan(src.nodata)
        back = src.read(1, masked=True)
    assert back.mask.sum() == 1 and back.mask[1, 2]
    assert (back.compressed() == 0.25).all()


def test_write_geotiff_of_a_stack_is_one_band_per_layer_and_band(tmp_path):
    data = numpy.zeros((2, 2, 3, 4), dtype="int16")  # (layer, band, y, x)
    for layer in range(2):
        for band in range(2):
            data[layer, band] = 10 * layer + band - 5  # -5, -4, 5, 6
    plan = a_plan(("b1", "b2"), "Int16", -9999.0, keys=("2024-06-01", "2024-06-02"))
    path = tmp_path / "stack.tif"
    write_geotiff(str(path), data, SMALL, plan)
    with rasterio.open(path) as src:
        assert src.count == 4 and src.nodata == -9999
        assert src.descriptions == (
            "2024-06-01 b1",
            "2024-06-01 b2",
            "2024-06-02 b1",
            "2024-06-02 b2",
        )
        assert [int(src.read(i)[0, 0]) for i in range(1, 5)] == [-5, -4, 5, 6]


def test_write_geotiff_adds_overviews_above_one_block(tmp_path):
    # 600 > 512 pixels: one overview level, 300 x 300, below a block
    grid = Grid(WGS84, Affine(0.001, 0, 0, 0, -0.001, 0.6), 600, 600)
    data = numpy.ones((1, 600, 600), dtype="uint8")
    path = tmp_path / "big.tif"
    write_geotiff(str(path), data, grid, a_plan(("b1",), "Byte", 0.0))
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]
        assert src.block_shapes == [(512, 512)]


def test_write_npy_is_numpy_save(tmp_path):
    data = numpy.arange(24, dtype="float32").reshape(2, 3, 4) / 4
    path = tmp_path / "out.npy"
    write_npy(str(path), data)
    back = numpy.load(path)
    assert back.dtype == numpy.float32 and back.shape == (2, 3, 4)
    assert back[1, 2, 3] == 23 / 4
    numpy.testing.assert_array_equal(back, data)


def test_raster_info_describes_the_file():
    outputs = [OutputBand("b1", "red", "UInt16"), OutputBand("b2", "nir", "UInt16")]
    info = raster_info(SMALL, Plan([], None, outputs, "UInt16", 0.0))
    assert info["geoTransform"] == [10, 0.5, 0, 50, 0, -0.5]
    assert info["coordinateSystem"]["epsg"] == 4326
    assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == WGS84
    assert info["size"] == {"width": 4, "height": 3}
    # corners (0, 0), (0, 3), (4, 3), (4, 0): lon 10 + 0.5 col, lat 50 - 0.5 row
    corners = info["wgs84Extent"]["coordinates"][0]
    expected = [[10, 50], [10, 48.5], [12, 48.5], [12, 50], [10, 50]]
    assert info["wgs84Extent"]["type"] == "Polygon"
    assert numpy.allclose(corners, expected)
    assert info["bands"] == [
        {"name": "b1", "data_type": "UInt16", "nodata": 0.0, "description": "red"},
        {"name": "b2", "data_type": "UInt16", "nodata": 0.0, "description": "nir"},
    ]


def test_raster_info_of_a_float_stack():
    plan = a_plan(("v",), "Float32", NAN, keys=("2024", "2025"))
    bands = raster_info(SMALL, plan)["bands"]
    assert bands == [
        {"name": "v", "data_type": "Float32", "nodata": "nan", "description": "2024 v"},
        {"name": "v", "data_type": "Float32", "nodata": "nan", "description": "2025 v"},
    ]


# ----------------------------------------------------------------------------- end to end

# A 9 x 9 file of 0.125-degree pixels from (10 E, 51.125 N): b1 = 100 + 10 row + col,
# b2 = b1 + 1000, with b1's nodata (9, not 0: the fill must be written) at row 4, col 4.
STEP = 0.125
SOURCE = Affine(STEP, 0, 10, 0, -STEP, 51.125)
RAMP_PRODUCT = Product(
    id="ramp",
    bands=[
        Band(name="b1", data_type="UInt16", nodata=9, band_index=0),
        Band(name="b2", data_type="UInt16", nodata=9, band_index=1),
    ],
)
RAW = RenderParams(bands=("b1", "b2"))


def ramp(rows, cols) -> numpy.ndarray:
    """(b1, b2) at these source rows and columns, nodata not applied."""
    b1 = 100 + 10 * rows + cols
    return numpy.stack([b1, b1 + 1000])


@pytest.fixture()
def ramp_image(tmp_path) -> Image:
    rows, cols = numpy.mgrid[0:9, 0:9]
    data = ramp(rows, cols).astype("uint16")
    data[0, 4, 4] = 9
    path = write_raster(tmp_path / "ramp.tif", data, "EPSG:4326", SOURCE, nodata=9)
    return Image(
        name="ramp",
        product_id="ramp",
        acquired=datetime(2024, 6, 1, tzinfo=UTC),
        geometry=polygon((10, 50), (11.125, 50), (11.125, 51.125), (10, 51.125)),
        files=[{"href": str(path)}],
    )


def test_render_on_the_native_grid_is_the_source_pixels_cut(ramp_image):
    plan = plan_download(RAMP_PRODUCT, RAW)
    assert (plan.data_type, plan.nodata) == ("UInt16", 9.0)
    anchor = image_grid(ramp_image, plan.bands)
    assert anchor == Grid(WGS84, SOURCE, 9, 9)
    # bbox 10.3..10.8 E: cols floor(0.3 / 0.125 = 2.4) = 2 .. ceil(6.4) = 7;
    # 50.4..50.95 N: rows floor((51.125 - 50.95) / 0.125 = 1.4) = 1 .. ceil(5.8) = 6
    grid = output_grid(anchor, [anchor], GridRequest(bbox=(10.3, 50.4, 10.8, 50.95)))
    assert grid == Grid(WGS84, Affine(STEP, 0, 10.25, 0, -STEP, 51.0), 5, 5)
    data = render_layers([(ramp_image, RAMP_PRODUCT)], plan, grid, RAW, threads=1)
    assert data.dtype == numpy.uint16 and data.shape == (2, 5, 5)
    rows, cols = numpy.mgrid[1:6, 2:7]
    expected = ramp(rows, cols)
    expected[:, 3, 2] = 9  # source (4, 4): b1 is nodata, so the whole pixel is
    assert data[0, 0, 0] == 112 and data[1, 4, 4] == 1156  # 100 + 10 + 2, 1100 + 50 + 6
    numpy.testing.assert_array_equal(data, expected)


def test_render_on_a_coarser_grid_takes_the_nearest_source_pixel(ramp_image):
    plan = plan_download(RAMP_PRODUCT, RAW)
    anchor = image_grid(ramp_image, plan.bands)
    # 3 x 0.125 = 0.375-degree pixels over 1.125 degrees: 3 x 3; output (i, j)'s centre
    # falls in the middle of source pixel (3 i + 1, 3 j + 1)
    grid = output_grid(anchor, [anchor], GridRequest(resolution=0.375))
    assert grid == Grid(WGS84, Affine(0.375, 0, 10, 0, -0.375, 51.125), 3, 3)
    data = render_layers([(ramp_image, RAMP_PRODUCT)], plan, grid, RAW, threads=1)
    rows, cols = numpy.mgrid[0:3, 0:3]
    expected = ramp(3 * rows + 1, 3 * cols + 1)  # b1 = 111 + 30 i + 3 j
    expected[:, 1, 1] = 9  # source (4, 4)
    assert data[0, 2, 2] == 177
    numpy.testing.assert_array_equal(data, expected)


def test_render_with_a_geometry_makes_pixels_outside_it_nodata(ramp_image):
    plan = plan_download(RAMP_PRODUCT, RAW)
    anchor = image_grid(ramp_image, plan.bands)
    # hypotenuse x + y = 61.2; centre (10.0625 + c / 8) + (51.0625 - r / 8) < 61.2
    # iff (c - r) / 8 < 0.075 iff c <= r; the triangle's bounds reach past the file: 9 x 9
    triangle = polygon((10, 50), (11.2, 50), (10, 51.2))
    grid = output_grid(anchor, [anchor], GridRequest(geometry=triangle))
    assert grid == anchor
    valid = numpy.zeros((9, 9), dtype=bool)
    data = render_layers([(ramp_image, RAMP_PRODUCT)], plan, grid, RAW, triangle, 1, valid=valid)
    rows, cols = numpy.mgrid[0:9, 0:9]
    inside = (cols <= rows) & ~((rows == 4) & (cols == 4))  # 45 pixels less the nodata one
    expected = numpy.where(inside, ramp(rows, cols), 9)
    numpy.testing.assert_array_equal(valid, inside)
    assert valid.sum() == 44
    numpy.testing.assert_array_equal(data, expected)


def test_a_request_nodata_a_float32_band_cannot_hold_is_a_render_error():
    bands = [Band(name="v", data_type="Float32")]
    check_nodata(-9999.0, bands)  # held: no error
    with pytest.raises(RenderError, match="nodata 1e\\+40 is not a value of band 'v'"):
        check_nodata(1e40, bands)
