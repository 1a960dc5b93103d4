"""The typed request-parameter values, driven directly: each parser's accepted forms, its
refusals (the 4xx-mapped error naming the parameter) and its limits at the boundary."""

from __future__ import annotations

import asyncio
import json
import typing
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy
import pytest
from fastapi import APIRouter, HTTPException
from pydantic import TypeAdapter, ValidationError
from rasterio.crs import CRS
from starlette.requests import Request

from tileserver.api.deps import (
    PictureSizeDep,
    RenderParamsDep,
    check_presets,
    coord_crs_query,
    mosaic_params,
    parse_render,
    picture_size,
    preset_of,
    refuse_unknown_query,
    route_query_names,
    statistics_options,
    with_preset,
)
from tileserver.api.factory import tile_at
from tileserver.catalog.geojson import check_geometry, loads_bounded
from tileserver.catalog.models import Band, Product, RenderPreset
from tileserver.catalog.search import (
    SearchQuery,
    SortBy,
    datetime_interval,
    parse_instant,
    parse_sortby,
)
from tileserver.layers import MosaicParams
from tileserver.render.colors import (
    ColorError,
    apply_color_formula,
    check_color_formula,
    parse_colormap,
)
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import CloudMask, RenderParams, Scaling, parse_cloud_mask
from tileserver.render.statistics import StatisticsOptions
from tileserver.scaling_rules import ScalingError
from tileserver.values import PictureSize


@contextmanager
def bad_request(*words: str):
    """The block raises the API's 400 whose detail holds every one of `words`."""
    with pytest.raises(HTTPException) as caught:
        yield
    assert caught.value.status_code == 400, caught.value.detail
    for word in words:
        assert word in caught.value.detail, caught.value.detail


@contextmanager
def invalid(field: str, *words: str):
    """The block raises pydantic's ValidationError on `field`, its message holding `words`."""
    with pytest.raises(ValidationError) as caught:
        yield
    errors = caught.value.errors()
    assert [e["loc"][0] for e in errors] == [field], errors
    for word in words:
        assert word in errors[0]["msg"], errors


# ----------------------------------------------------------------------------- scaling


@pytest.mark.parametrize(
    ("values", "form"),
    [
        ([" Display "], "display"),
        (["NONE"], None),
        ([""], None),
        ([], None),
        (["[0,3000]"], (0, 3000)),
        (["(0, 3000)"], (0, 3000)),
        (["0,1e3"], (0, 1000)),
        (["-0.5,2.5,0,255"], (-0.5, 2.5, 0, 255)),
        (["2%,98.5%"], ("2%", "98.5%")),
        (["2.0%, 98%"], ("2.0%", "98%")),
        (["raw", "0,255", "auto"], ["raw", (0, 255), "auto"]),
        (['  {"B08": ["2%", "98%"], "B04": null}'], {"B08": ("2%", "98%"), "B04": None}),
    ],
)
def test_scaling_forms_parse_into_their_values(values, form):
    assert Scaling.parse(values) == Scaling(form)
    assert Scaling.parse(values).form == form


def test_scaling_numbers_keep_integers_apart_from_floats():
    assert [type(v) for v in Scaling.parse(["0,3000"]).form] == [int, int]
    assert [type(v) for v in Scaling.parse(["0.0,3000.5"]).form] == [float, float]


def test_equal_scalings_are_equal_hashable_keys():
    one, same, spaced = (Scaling.parse([t]) for t in ("0,4000", "0,4000", " 0 , 4000 "))
    assert one == same == spaced == Scaling((0, 4000))
    assert len({one, same, spaced, Scaling.parse(["display"]), Scaling.parse(["DISPLAY"])}) == 2
    assert one != Scaling.parse(["0,4001"])
    assert Scaling.parse(["raw", "0,1"]) == Scaling.parse(["raw", "0,1"])
    assert Scaling.parse(['{"B04": [0, 1]}']) == Scaling.parse(['{ "B04" : [0,1] }'])


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (["0,abc"], "scaling entry '0,abc': 'abc' is neither a finite number nor a percent"),
        (["0,%"], "is neither a finite number nor a percent"),
        (["0,,1"], "is neither a finite number nor a percent"),
        (['{"B04": '], "scaling JSON is not valid JSON"),
        (["{1: 2}"], "scaling JSON is not valid JSON"),
        # entries no band could take, refused when parsed (a preset too), not at a tile
        (["5"], "Invalid scaling tuple (5,) for band '#1': must have 0, 2 or 4 items"),
        (["raw", "1,2,3"], "Invalid scaling tuple (1, 2, 3) for band '#2'"),
        (['{"B04": [1, 2, 3, 4, 5]}'], "Invalid scaling tuple (1, 2, 3, 4, 5) for band 'B04'"),
        (['{"B04": "bogus"}'], "Invalid scaling mode 'bogus' for band 'B04'"),
        (['{"B04": {"a": 1}}'], "Invalid scaling {'a': 1} for band 'B04'"),
        (['{"B04": [0, true]}'], "Invalid scaling value True for band 'B04'"),
    ],
)
def test_bad_scaling_is_a_scaling_error(values, words):
    with pytest.raises(ScalingError, match="scaling") as caught:
        Scaling.parse(values)
    assert words in str(caught.value)


def test_scaling_limits_hold_at_the_boundary():
    assert Scaling.parse(["1,2,3,4"]) == Scaling((1, 2, 3, 4))
    with pytest.raises(ScalingError, match="scaling entry has 5 values, more than 4"):
        Scaling.parse(["1,2,3,4,5"])
    assert Scaling.parse(["raw"] * 64) == Scaling(["raw"] * 64)
    with pytest.raises(ScalingError, match="scaling has 65 entries, more than 64"):
        Scaling.parse(["raw"] * 65)
    mapping = {f"B{i}": "raw" for i in range(64)} | {"default_": "auto"}
    assert Scaling.parse([json.dumps(mapping)]) == Scaling(mapping)
    with pytest.raises(ScalingError, match="scaling JSON has 66 entries, more than 64 bands"):
        Scaling.parse([json.dumps(mapping | {"B64": "raw"})])
    assert Scaling.parse(['{"B04": [0, 1]}']) == Scaling({"B04": (0, 1)})  # depth 2
    with pytest.raises(ScalingError, match="scaling JSON nests deeper than 2 levels"):
        Scaling.parse(['{"B04": [[0, 1]]}'])


@pytest.mark.parametrize("text", ["nan,1", "0,inf", "0,1e400"])
def test_non_finite_scaling_numbers_are_refused(text):
    with pytest.raises(ScalingError, match="scaling"):
        Scaling.parse([text])


# ----------------------------------------------------------------------------- cloud_mask


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (None, None),
        ("", None),
        (" None ", None),
        ("default", "default"),
        (" DEFAULT ", "default"),
        ("SCL:3,8,9,10", CloudMask("SCL", frozenset({3, 8, 9, 10}))),
        (" SCL : 10, 3 ,,3 ", CloudMask("SCL", frozenset({3, 10}))),
        ("QA:-1", CloudMask("QA", frozenset({-1}), "request")),
    ],
)
def test_cloud_mask_forms_parse_into_their_values(text, value):
    assert parse_cloud_mask(text) == value


def test_equal_cloud_masks_are_equal_hashable_keys():
    masks = {
        parse_cloud_mask("SCL:3,8"),
        parse_cloud_mask("SCL:8,3"),
        parse_cloud_mask("SCL:8,3,8"),
    }
    assert masks == {CloudMask("SCL", frozenset({3, 8}))}
    assert parse_cloud_mask("SCL:3,8") != parse_cloud_mask("SCL:3,9")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("SCL", "is not BAND:classes"),
        ("SCL:", "is not BAND:classes"),
        (":3,8", "is not BAND:classes"),
        ("SCL:,", "cloud_mask names no class"),
        ("SCL:3,cloud", "cloud_mask classes must be integers"),
        ("SCL:1.5", "cloud_mask classes must be integers"),
        ("SCL:" + "9" * 5000, "cloud_mask classes must be integers"),
    ],
)
def test_bad_cloud_mask_is_a_render_error_naming_it(text, words):
    with pytest.raises(RenderError, match="cloud_mask") as caught:
        parse_cloud_mask(text)
    assert words in str(caught.value)


def test_cloud_mask_classes_are_bounded_at_256():
    assert parse_cloud_mask("SCL:" + ",".join(str(c) for c in range(256))) == CloudMask(
        "SCL", frozenset(range(256))
    )
    with pytest.raises(RenderError, match="cloud_mask names more than 256 classes"):
        parse_cloud_mask("SCL:" + ",".join(str(c) for c in range(257)))


# ----------------------------------------------------------------------------- parse_render


def test_render_defaults():
    assert parse_render() == RenderParams(
        bands=None, scaling=Scaling(None), resampling="nearest", cloud_mask=None
    )
    assert parse_render().colormap is None


def test_render_parameters_become_typed_values():
    params = parse_render(
        bands=" B04, B03 ,B02,",
        scaling=["0,3000"],
        data_type="Byte",
        processing_level="toa",
        nodata=0.0,
        resampling="bilinear",
        colormap='{"1": "#ff0000"}',
        color_formula="gamma rgb 1.5",
        cloud_mask="SCL:3,8",
    )
    assert params == RenderParams(
        bands=("B04", "B03", "B02"),
        scaling=Scaling((0, 3000)),
        data_type="Byte",
        processing_level="toa",
        nodata=0.0,
        resampling="bilinear",
        color_formula="gamma rgb 1.5",
        cloud_mask=CloudMask("SCL", frozenset({3, 8})),
    )
    assert params.colormap == {1: (255, 0, 0, 255)}  # not part of equality: checked apart
    again = parse_render(
        bands="B04,B03,B02",
        scaling=["0, 3000"],
        data_type="Byte",
        processing_level="toa",
        nodata=0.0,
        resampling="bilinear",
        color_formula="gamma rgb 1.5",
        cloud_mask="SCL:8,3",
    )
    assert hash(again) == hash(params) and again == params


def test_render_expression_and_named_colormap():
    params = parse_render(expression="(B08-B04)/(B08+B04)", colormap_name="Viridis")
    assert params == RenderParams(expression="(B08-B04)/(B08+B04)")
    assert len(params.colormap) == 256
    assert tuple(int(v) for v in params.colormap[0]) == (68, 1, 84, 255)
    assert tuple(int(v) for v in params.colormap[255]) == (253, 231, 36, 255)
    assert parse_render(color_formula="").color_formula is None


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"bands": " , "}, ("bands is empty",)),
        ({"resampling": "gauss"}, ("unknown resampling 'gauss'", "nearest, bilinear")),
        ({"resampling": "Nearest"}, ("unknown resampling 'Nearest'",)),
        ({"colormap_name": "nope"}, ("unknown colormap_name 'nope'",)),
        ({"colormap_name": "viridis", "colormap": '{"1": [0, 0, 0]}'}, ("colormap_name or",)),
        ({"colormap": "[]"}, ("colormap is a JSON object",)),
        ({"color_formula": "gamma"}, ("color_formula 'gamma' is not valid",)),
        ({"scaling": ["0,x"]}, ("scaling entry '0,x'",)),
        ({"cloud_mask": "SCL"}, ("cloud_mask 'SCL' is not BAND:classes",)),
        ({"expression": "(" * 33 + "B04" + ")" * 33}, ("expression nests parentheses",)),
    ],
)
def test_bad_render_parameters_are_400s_naming_them(given, words):
    with bad_request(*words):
        parse_render(**given)


def test_bands_are_bounded_at_64_names_repeats_counted():
    assert parse_render(bands=",".join(["B04"] * 64)).bands == ("B04",) * 64
    with bad_request("bands names 65 bands, more than 64"):
        parse_render(bands=",".join(["B04"] * 65))


@pytest.mark.parametrize(
    ("at_limit", "over", "words"),
    [
        ("B" * 1024, "B" * 1025, "expression has 1025 characters, more than 1024"),
        (";".join(["B04"] * 16), ";".join(["B04"] * 17), "expression has 17 outputs"),
        ("-B04" + "+B04" * 127, "--B04" + "+B04" * 127, "expression has 257 terms"),
        ("(" * 32 + "B04" + ")" * 32, "(" * 33 + "B04" + ")" * 33, "deeper than 32"),
    ],
)
def test_expression_limits_hold_at_the_boundary(at_limit, over, words):
    assert parse_render(expression=at_limit).expression == at_limit
    with bad_request(words):
        parse_render(expression=over)


# ----------------------------------------------------------------------------- colours


def test_colormap_forms_parse_into_rgba():
    assert parse_colormap('{"1": "#ff000080", "2": [0, 0, 255], "-3": "00FF00"}') == {
        1: (255, 0, 0, 128),
        2: (0, 0, 255, 255),
        -3: (0, 255, 0, 255),
    }
    assert parse_colormap('[[[0, 1], [1, 2, 3, 4]], [[1, 2.5], "#010203"]]') == [
        ((0.0, 1.0), (1, 2, 3, 4)),
        ((1.0, 2.5), (1, 2, 3, 255)),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "colormap is not valid JSON"),
        ("{}", "colormap is a JSON object"),
        ('"x"', "colormap is a JSON object"),
        ('{"one": [0, 0, 0]}', "colormap key 'one' is not an integer"),
        ('{"1.5": [0, 0, 0]}', "colormap key '1.5' is not an integer"),
        ('{"1": [0, 0, 0], "01": [9, 9, 9]}', "colormap key '01' names the value 1 twice"),
        ('{"1": [256, 0, 0]}', "colormap entry '1': a colour is"),
        ('{"1": [0, 0]}', "colormap entry '1': a colour is"),
        ('{"1": [true, 0, 0]}', "colormap entry '1': a colour is"),
        ('{"1": [0.5, 0, 0]}', "colormap entry '1': a colour is"),
        ('{"1": "#ff00"}', "colormap entry '1': '#ff00' is not a #rrggbb colour"),
        ("[[0, [0, 0, 0]]]", "a colormap interval is [[lo, hi], colour]"),
        ("[[[0, 1, 2], [0, 0, 0]]]", "a colormap interval's bounds are two numbers"),
        ('[[[0, "1"], [0, 0, 0]]]', "a colormap interval's bounds are two numbers"),
        ("[[[1, 1], [0, 0, 0]]]", "a colormap interval needs lo < hi"),
        ("[[[NaN, 1], [0, 0, 0]]]", "a colormap interval needs lo < hi"),
    ],
)
def test_bad_colormap_is_a_color_error_naming_it(text, words):
    with pytest.raises(ColorError, match="colormap") as caught:
        parse_colormap(text)
    assert words in str(caught.value)


def test_bad_interval_colour_names_the_colormap():
    with pytest.raises(ColorError, match="colormap"):
        parse_colormap('[[[0, 1], "red"]]')


def test_colormap_limits_hold_at_the_boundary():
    entries = {str(v): [v, 0, 0] for v in range(256)}
    assert parse_colormap(json.dumps(entries))[255] == (255, 0, 0, 255)
    with pytest.raises(ColorError, match=r"colormap is a JSON object .* 1\.\.256 entries"):
        parse_colormap(json.dumps(entries | {"256": [0, 0, 0]}))
    padded = '{"1": [0, 0, 0]}'.ljust(20_000)
    assert parse_colormap(padded) == {1: (0, 0, 0, 255)}
    with pytest.raises(ColorError, match="colormap has more than 20000 characters"):
        parse_colormap(padded + " ")
    assert parse_colormap('{"9007199254740992": [0, 0, 0]}') == {2**53: (0, 0, 0, 255)}
    assert parse_colormap('{"-9007199254740992": [0, 0, 0]}') == {-(2**53): (0, 0, 0, 255)}
    with pytest.raises(ColorError, match="colormap key '9007199254740993' is not an integer"):
        parse_colormap('{"9007199254740993": [0, 0, 0]}')
    with pytest.raises(ColorError, match="colormap nests deeper than 4 levels"):
        parse_colormap("[[[[[0]]]]]")


def test_color_formula_is_checked_within_its_limits():
    check_color_formula("gamma rgb 1.5, sigmoidal rgb 10 0.15, saturation 1.2")
    at_length = "gamma r 1." + "1" * 246
    assert len(at_length) == 256
    check_color_formula(at_length)
    with pytest.raises(ColorError, match="color_formula has more than 256 characters"):
        check_color_formula(at_length + "1")
    check_color_formula(", ".join(["gamma r 1.1"] * 16))
    with pytest.raises(ColorError, match="color_formula has more than 16 operations"):
        check_color_formula(", ".join(["gamma r 1.1"] * 17))


@pytest.mark.parametrize("formula", ["gamma", "gamma q 1", "frobnicate 3", "   ", "gamma r x"])
def test_bad_color_formula_is_a_color_error_naming_it(formula):
    with pytest.raises(ColorError, match=f"color_formula '{formula}'"):
        check_color_formula(formula)


@pytest.mark.parametrize("formula", ["saturation 1e300", "saturation nan"])
def test_unappliable_color_formula_is_a_color_error(formula):
    with pytest.raises(ColorError, match=f"color_formula '{formula}'"):
        check_color_formula(formula)  # when a request or preset is parsed, not at its tile
    pixels = numpy.arange(48, dtype="uint8").reshape(3, 4, 4)
    with pytest.raises(ColorError, match="color_formula"):
        apply_color_formula(pixels, formula)


# ----------------------------------------------------------------------------- presets

PRODUCT = Product(
    id="p",
    bands=[Band(name=n) for n in ("B02", "B03", "B04", "B08")],
    presets={
        "ndvi": RenderPreset(
            title="NDVI",
            expression="(B08-B04)/(B08+B04)",
            colormap_name="rdylgn",
            scaling=["-1,1"],
        ),
        "rgb": RenderPreset(bands=["B04", "B03", "B02"], scaling=["display"], resampling="cubic"),
    },
)
NOTHING_GIVEN = {
    "bands": None,
    "scaling": None,
    "expression": None,
    "colormap_name": None,
    "colormap": None,
    "resampling": None,
}


def test_preset_of_is_its_query_parameters():
    assert preset_of(PRODUCT, "ndvi") == {
        "expression": "(B08-B04)/(B08+B04)",
        "colormap_name": "rdylgn",
        "scaling": ["-1,1"],
    }
    assert preset_of(PRODUCT, "rgb") == {
        "bands": "B04,B03,B02",
        "scaling": ["display"],
        "resampling": "cubic",
    }


def test_unknown_preset_is_a_400_naming_the_known_ones():
    with bad_request("unknown preset 'nope'", "product 'p' has: ndvi, rgb"):
        preset_of(PRODUCT, "nope")
    with bad_request("unknown preset 'x'", "has: none"):
        preset_of(Product(id="q"), "x")


def test_a_preset_fills_only_what_the_request_leaves_out():
    rgb = preset_of(PRODUCT, "rgb")
    assert with_preset(NOTHING_GIVEN, rgb) == NOTHING_GIVEN | rgb
    assert with_preset(NOTHING_GIVEN | {"scaling": ["0,3000"]}, rgb) == NOTHING_GIVEN | {
        "bands": "B04,B03,B02",
        "scaling": ["0,3000"],
        "resampling": "cubic",
    }
    # a request's expression replaces the preset's bands (and a colormap its colormap_name)
    assert with_preset(NOTHING_GIVEN | {"expression": "B08"}, rgb) == NOTHING_GIVEN | {
        "expression": "B08",
        "scaling": ["display"],
        "resampling": "cubic",
    }
    ndvi = preset_of(PRODUCT, "ndvi")
    assert with_preset(NOTHING_GIVEN | {"colormap": '{"1": [0, 0, 0]}'}, ndvi) == (
        NOTHING_GIVEN
        | {"colormap": '{"1": [0, 0, 0]}', "expression": ndvi["expression"], "scaling": ["-1,1"]}
    )
    assert with_preset(NOTHING_GIVEN, {"scaling": "display"})["scaling"] == ["display"]


def test_a_preset_renders_as_its_parameters_given_explicitly():
    merged = with_preset(NOTHING_GIVEN | {"resampling": "bilinear"}, preset_of(PRODUCT, "rgb"))
    assert parse_render(**merged) == RenderParams(
        bands=("B04", "B03", "B02"), scaling=Scaling("display"), resampling="bilinear"
    )


def test_check_presets_names_the_preset_a_tile_would_refuse():
    check_presets(PRODUCT)
    bad = PRODUCT.model_copy(
        update={"presets": {**PRODUCT.presets, "odd": RenderPreset(scaling=["1,2,3,4,5"])}}
    )
    with bad_request("preset 'odd': scaling entry has 5 values"):
        check_presets(bad)


# ----------------------------------------------------------------------------- statistics


def stats(**given) -> StatisticsOptions:
    return asyncio.run(statistics_options(**given))


def test_statistics_options_become_typed_values():
    assert stats() == StatisticsOptions(
        percentiles=(2, 98), bins=10, edges=None, histogram_range=None, coverage=False
    )
    assert stats(
        percentiles="2, 50,98", histogram_bins="20", histogram_range="0,1", coverage=True
    ) == StatisticsOptions(
        percentiles=(2, 50, 98), bins=20, histogram_range=(0.0, 1.0), coverage=True
    )
    assert stats(histogram_bins="0,100,300,1000") == StatisticsOptions(
        edges=(0.0, 100.0, 300.0, 1000.0)
    )
    assert stats(percentiles="2.0", histogram_bins="1e3") == StatisticsOptions(
        percentiles=(2,), bins=1000
    )


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"percentiles": "abc"}, "percentiles 'abc' is not comma-separated finite numbers"),
        ({"percentiles": "2.5"}, "percentiles are whole numbers 0..100"),
        ({"percentiles": "nan"}, "percentiles 'nan' is not comma-separated finite numbers"),
        ({"percentiles": "101"}, "percentiles must be between 0 and 100"),
        ({"percentiles": "-1"}, "percentiles must be between 0 and 100"),
        ({"histogram_bins": "0"}, "histogram_bins must be 1..1000"),
        ({"histogram_bins": "ten"}, "histogram_bins 'ten' is not comma-separated finite numbers"),
        ({"histogram_bins": "1.5"}, "histogram_bins as edges needs 2..1001 numbers"),
        ({"histogram_bins": "3,2"}, "histogram_bins edges must increase"),
        ({"histogram_bins": "1,1"}, "histogram_bins edges must increase"),
        ({"histogram_range": "1"}, "histogram_range is two numbers"),
        ({"histogram_range": "0,1,2"}, "histogram_range is two numbers"),
        ({"histogram_range": "1,0"}, "histogram_range needs lo < hi"),
        ({"histogram_range": "a,b"}, "histogram_range 'a,b' is not comma-separated finite numbers"),
    ],
)
def test_bad_statistics_options_are_400s_naming_them(given, words):
    with bad_request(words):
        stats(**given)


def test_statistics_limits_hold_at_the_boundary():
    assert stats(percentiles=",".join(str(p) for p in range(20))).percentiles == tuple(range(20))
    with bad_request("percentiles names more than 20 values"):
        stats(percentiles=",".join(str(p) for p in range(21)))
    assert stats(histogram_bins="1000").bins == 1000
    assert stats(histogram_bins="1").bins == 1
    with bad_request("histogram_bins must be 1..1000"):
        stats(histogram_bins="1001")
    assert len(stats(histogram_bins=",".join(str(e) for e in range(1001))).edges) == 1001
    with bad_request("histogram_bins as edges needs 2..1001 numbers"):
        stats(histogram_bins=",".join(str(e) for e in range(1002)))


@pytest.mark.parametrize("edges", ["0,nan", "5,nan,1"])
def test_nan_histogram_edges_are_refused(edges):
    with bad_request("histogram_bins"):
        stats(histogram_bins=edges)


# ----------------------------------------------------------------------------- pictures, CRS


def test_picture_size_and_coord_crs_become_typed_values():
    assert asyncio.run(picture_size(1024, None, None, None)) == PictureSize(1024)
    assert asyncio.run(picture_size(512, 300, None, "EPSG:3857")) == PictureSize(
        512, 300, None, CRS.from_epsg(3857)
    )
    assert asyncio.run(coord_crs_query()) == CRS.from_epsg(4326)
    assert asyncio.run(coord_crs_query("3857")) == CRS.from_epsg(3857)


def test_bad_crs_is_a_400_naming_the_parameter():
    with bad_request("dst_crs 'bogus' is not a coordinate system"):
        asyncio.run(picture_size(1024, None, None, "bogus"))
    with bad_request("coord_crs 'EPSG:0' is not a coordinate system"):
        asyncio.run(coord_crs_query("EPSG:0"))


@pytest.mark.parametrize("name", ["max_size", "width", "height"])
def test_picture_sides_are_bounded_1_to_4096(name):
    """The bounds FastAPI applies to the query, read off picture_size's own annotations."""
    side = TypeAdapter(typing.get_type_hints(picture_size, include_extras=True)[name])
    assert side.validate_python(4096) == 4096
    assert side.validate_python(1) == 1
    for bad in (4097, 0):
        with pytest.raises(ValidationError):
            side.validate_python(bad)


# ----------------------------------------------------------------------------- unknown names


async def _render_route(params: RenderParamsDep, size: PictureSizeDep, page: int = 1) -> None:
    return None


async def _bare_route() -> None:
    return None


def routes():
    router = APIRouter()
    router.add_api_route("/render", _render_route)
    router.add_api_route("/page", _bare_route)
    return router.routes


def query(text: str, route=None) -> Request:
    scope = {"type": "http", "query_string": text.encode(), "headers": []}
    if route is not None:
        scope["route"] = route
    return Request(scope)


def test_route_query_names_include_its_dependencies():
    render, page = routes()
    assert route_query_names(render) == frozenset(
        {
            *("bands", "scaling", "data_type", "processing_level", "expression"),
            *("colormap_name", "nodata", "resampling", "colormap", "color_formula"),
            *("cloud_mask", "preset", "max_size", "width", "height", "dst_crs", "page"),
        }
    )
    assert route_query_names(page) == frozenset()


def test_known_query_names_pass():
    render, page = routes()
    asyncio.run(refuse_unknown_query(query("bands=B04&scaling=0,1&page=2&api_key=k&_=1", render)))
    asyncio.run(refuse_unknown_query(query("anything=1")))  # no route: nothing to hold it to
    page.passes_query_to = render  # a page handing its query on to another route
    asyncio.run(refuse_unknown_query(query("bands=B04&_=3", page)))


def test_unknown_query_names_are_a_400_naming_them():
    render, page = routes()
    with bad_request(
        "unknown query parameter(s) 'rescale', 'zz'",
        "for 'rescale' use scaling (lo,hi once or per band",
    ):
        asyncio.run(refuse_unknown_query(query("zz=1&rescale=0,1&bands=B04", render)))
    with bad_request("unknown query parameter(s) 'bands' (known here: _, api_key)"):
        asyncio.run(refuse_unknown_query(query("bands=B04", page)))


# ----------------------------------------------------------------------------- tiles


def at(tms: str, z: int, x: int, y: int, scale: str | None = None, limit: int = 1024):
    path = {} if scale is None else {"scale": scale}
    request = Request({"type": "http", "path_params": path, "headers": []})
    found = asyncio.run(tile_at(request, tms, z, x, y, SimpleNamespace(max_tile_size=limit)))
    return found.tms.id, found.z, found.x, found.y, found.scale, found.size


def test_tile_places_become_typed_values():
    assert at("WebMercatorQuad", 0, 0, 0) == ("WebMercatorQuad", 0, 0, 0, 1, 256)
    assert at("WebMercatorQuad", 3, 7, 7, "2") == ("WebMercatorQuad", 3, 7, 7, 2, 512)
    assert at("WGS1984Quad", 0, 1, 0) == ("WGS1984Quad", 0, 1, 0, 1, 256)
    assert at("WebMercatorQuad", 24, 0, 2**24 - 1) == ("WebMercatorQuad", 24, 0, 2**24 - 1, 1, 256)


def test_tile_limits_hold_at_the_boundary():
    assert at("WebMercatorQuad", 3, 0, 0, "4", limit=1024)[5] == 1024
    with pytest.raises(HTTPException, match="tile size 1024 exceeds 1023") as caught:
        at("WebMercatorQuad", 3, 0, 0, "4", limit=1023)
    assert caught.value.status_code == 400
    with bad_request("tile scale @5x must be @1x..@4x"):
        at("WebMercatorQuad", 3, 0, 0, "5")
    with bad_request("tile scale @0x must be @1x..@4x"):
        at("WebMercatorQuad", 3, 0, 0, "0")
    with bad_request("zoom 25 out of range for WebMercatorQuad: 0..24"):
        at("WebMercatorQuad", 25, 0, 0)
    with bad_request("zoom -1 out of range"):
        at("WebMercatorQuad", -1, 0, 0)


@pytest.mark.parametrize(
    ("tms", "z", "x", "y", "words"),
    [
        ("WebMercatorQuad", 3, 8, 0, "tile 3/8/0 is outside WebMercatorQuad"),
        ("WebMercatorQuad", 3, 0, -1, "tile 3/0/-1 is outside WebMercatorQuad"),
        ("WGS1984Quad", 0, 2, 0, "tile 0/2/0 is outside WGS1984Quad"),
        ("Nope", 0, 0, 0, "unknown tile matrix set 'Nope'"),
    ],
)
def test_tiles_outside_the_matrix_set_are_404s(tms, z, x, y, words):
    with pytest.raises(HTTPException, match=words) as caught:
        at(tms, z, x, y)
    assert caught.value.status_code == 404


def test_a_scale_of_digit_like_characters_is_a_400():
    with bad_request("tile scale"):
        at("WebMercatorQuad", 3, 0, 0, "²")


# ----------------------------------------------------------------------------- mosaics


def test_mosaic_parameters_become_typed_values():
    found = asyncio.run(mosaic_params("highest", " -datetime, +eo:cloud_cover,id", True, False))
    assert found == MosaicParams(
        "highest",
        [
            SortBy(field="datetime", direction="desc"),
            SortBy(field="eo:cloud_cover", direction="asc"),
            SortBy(field="id", direction="asc"),
        ],
        True,
        False,
    )
    assert asyncio.run(mosaic_params()) == MosaicParams("first", None, False, False)


@pytest.mark.parametrize(
    ("text", "words"), [("-", "sortby '-' has an empty field name"), (" , ", "sortby is empty")]
)
def test_bad_mosaic_sortby_is_a_400_naming_it(text, words):
    with pytest.raises(ValueError, match=words):
        parse_sortby(text)
    with bad_request(words):
        asyncio.run(mosaic_params(sortby=text))


# ----------------------------------------------------------------------------- JSON, GeoJSON


def test_bounded_json_holds_its_depth():
    assert loads_bounded('{"a": [1]}', "x", 2) == {"a": [1]}
    assert loads_bounded("[]", "x", 1) == []
    assert loads_bounded("3", "x", 0) == 3
    for deep in ('{"a": [[1]]}', "[[[]]]", '{"a": {"b": {}}}'):
        with pytest.raises(ValueError, match="^x nests deeper than 2 levels$"):
            loads_bounded(deep, "x", 2)
    deepest = "[" * 100_000 + "]" * 100_000  # past the interpreter's recursion limit
    with pytest.raises(ValueError, match="^x nests deeper than 2 levels$"):
        loads_bounded(deepest, "x", 2)
    with pytest.raises(ValueError, match="^x is not valid JSON"):
        loads_bounded('{"a": ', "x", 2)


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
POINT = {"type": "Point", "coordinates": [1.0, 2.0]}
LINE = {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 1.0]]}


def collected(geometry: dict, times: int) -> dict:
    for _ in range(times):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    return geometry


def test_a_checked_geometry_is_the_geometry_sent():
    assert check_geometry(SQUARE, "area", polygonal=True, wgs84=True) is SQUARE
    assert check_geometry(POINT, "g") is POINT
    edge = {"type": "Point", "coordinates": [180, -90]}
    assert check_geometry(edge, "g", wgs84=True) is edge


@pytest.mark.parametrize(
    ("value", "options", "words"),
    [
        (POINT, {"polygonal": True}, "area must be a GeoJSON Polygon or MultiPolygon, not Point"),
        ({"type": "Foo", "coordinates": [1, 2]}, {}, "area is not a valid GeoJSON Foo"),
        (None, {}, "area is not a valid GeoJSON geometry"),
        ([1, 2], {}, "area is not a valid GeoJSON geometry"),
        ({"type": "Point"}, {}, "area is not a valid GeoJSON Point"),
        ({"type": "Point", "coordinates": ["a", "b"]}, {}, "area is not a valid GeoJSON Point"),
        ({"type": "Polygon", "coordinates": []}, {}, "area is empty"),
        ({"type": "GeometryCollection", "geometries": []}, {}, "area is empty"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
            {"polygonal": True},
            "area is not a valid polygon: Self-intersection",
        ),
        (
            {"type": "Point", "coordinates": [float("nan"), 0]},
            {},
            "area is not a valid GeoJSON Point: a position's coordinates are finite numbers",
        ),
        (
            {"type": "Point", "coordinates": [10**400, 0]},  # JSON's integers have no bound
            {},
            "area is not a valid GeoJSON Point: a position's coordinates are finite numbers",
        ),
        ({"type": "Point", "coordinates": [180.5, 0]}, {"wgs84": True}, "must be WGS84"),
        ({"type": "Point", "coordinates": [0, -90.5]}, {"wgs84": True}, "must be WGS84"),
        ({"type": "Point", "coordinates": [1, 2, 3, 4, 5]}, {}, "a position of 5 numbers"),
    ],
)
def test_bad_geometries_are_value_errors_naming_them(value, options, words):
    with pytest.raises(ValueError, match="^area ") as caught:
        check_geometry(value, "area", **options)
    assert words in str(caught.value)


def test_geometry_size_and_depth_hold_at_the_boundary():
    assert check_geometry(collected(POINT, 7), "g")  # its coordinates at depth 16
    with pytest.raises(ValueError, match="g nests deeper than 16 levels"):
        check_geometry(collected(LINE, 7), "g")  # a position at depth 17
    # size first: too deep is said before the unknown type is
    with pytest.raises(ValueError, match="g nests deeper than 16 levels"):
        check_geometry({"type": "Foo", "coordinates": collected(POINT, 8)}, "g")

    def line(count: int) -> dict:
        return {"type": "LineString", "coordinates": [[i / 1000, i % 2] for i in range(count)]}

    assert check_geometry(line(100_000), "g")
    with pytest.raises(ValueError, match="g has more than 100000 positions"):
        check_geometry(line(100_001), "g")

    def lines(count: int) -> dict:  # parts: the object, its array and each line
        return {"type": "MultiLineString", "coordinates": [[[i, 0], [i, 1]] for i in range(count)]}

    assert check_geometry(lines(9_998), "g")
    with pytest.raises(ValueError, match="g has more than 10000 parts"):
        check_geometry(lines(9_999), "g")


@pytest.mark.parametrize(
    "value",
    [
        {"type": "Feature", "properties": {}, "geometry": POINT},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},  # two corners
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0]]]},
        {"type": "LinearRing", "coordinates": [[0, 0], [1, 0], [1, 1], [0, 0]]},
    ],
    ids=["feature", "two-corner-ring", "open-two-corners", "not-a-geojson-type"],
)
def test_what_is_not_a_geojson_geometry_is_refused(value):
    with pytest.raises(ValueError, match="^g is not a valid GeoJSON"):
        check_geometry(value, "g")


def test_an_open_ring_comes_back_closed():
    # RFC 7946 rings end where they start; PostGIS refuses them open, shapely closes them
    opened = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}
    assert check_geometry(opened, "g") == {
        "type": "Polygon",
        "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]],
    }
    two = {
        "type": "MultiPolygon",
        "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[2, 2], [3, 2], [3, 3]]]],
    }
    assert check_geometry(two, "g")["coordinates"][1] == [[[2, 2], [3, 2], [3, 3], [2, 2]]]


# ----------------------------------------------------------------------------- STAC search


@pytest.mark.parametrize(
    ("bbox", "kept"),
    [
        ([-10, 40, 20, 60], [-10.0, 40.0, 20.0, 60.0]),
        ([1, 2, 0, 3, 4, 10], [1.0, 2.0, 3.0, 4.0]),  # heights dropped
        ([170, -10, -170, 10], [170.0, -10.0, -170.0, 10.0]),  # across the antimeridian
        ([-180, -90, 180, 90], [-180.0, -90.0, 180.0, 90.0]),
        ([5, 5, 5, 5], [5.0, 5.0, 5.0, 5.0]),
    ],
)
def test_search_bbox_is_west_south_east_north(bbox, kept):
    assert SearchQuery(bbox=bbox).bbox == kept


@pytest.mark.parametrize(
    ("bbox", "words"),
    [
        ([1, 2, 3], "bbox has 4 numbers"),
        ([1, 2, 3, 4, 5], "bbox has 4 numbers"),
        ([0, 0, float("nan"), 1], "bbox numbers must be finite"),
        ([0, 0, float("inf"), 1], "bbox numbers must be finite"),
        ([0, 10, 1, 5], "-90 <= south <= north <= 90"),
        ([0, -90.5, 1, 0], "-90 <= south <= north <= 90"),
        ([0, 0, 1, 90.5], "-90 <= south <= north <= 90"),
        ([-180.5, 0, 0, 1], "bbox longitudes must be within -180..180"),
        ([0, 0, 180.5, 1], "bbox longitudes must be within -180..180"),
    ],
)
def test_bad_search_bbox_is_a_validation_error_naming_it(bbox, words):
    with invalid("bbox", words):
        SearchQuery(bbox=bbox)


def test_search_intersects_is_checked_and_exclusive_with_bbox():
    assert SearchQuery(intersects=SQUARE).intersects == SQUARE
    with invalid("intersects", "intersects is empty"):
        SearchQuery(intersects={"type": "Polygon", "coordinates": []})
    with pytest.raises(ValidationError, match="give bbox or intersects, not both"):
        SearchQuery(bbox=[0, 0, 1, 1], intersects=SQUARE)


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("2024-05-03", ("2024-05-03T00:00:00Z", "2024-05-03T23:59:59.999999Z")),
        ("2024-05-03T10:20:31Z", ("2024-05-03T10:20:31Z", "2024-05-03T10:20:31Z")),
        ("2024-05-01/2024-05-03", ("2024-05-01T00:00:00Z", "2024-05-03T23:59:59.999999Z")),
        ("2024-05-01T12:00:00+02:00/..", ("2024-05-01T10:00:00Z", "..")),
        ("../2024-05-03", ("..", "2024-05-03T23:59:59.999999Z")),
        ("/2024-05-03", ("..", "2024-05-03T23:59:59.999999Z")),
        ("2024-05-03/2024-05-03", ("2024-05-03T00:00:00Z", "2024-05-03T23:59:59.999999Z")),
    ],
)
def test_search_datetime_is_kept_and_read_as_an_interval(text, interval):
    assert SearchQuery(datetime=text).datetime == text
    assert datetime_interval(text) == interval


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2024-13-01", "'2024-13-01' is not an RFC 3339 time"),
        ("2024-05-03T10:20:31", "is not an RFC 3339 time"),
        ("yesterday", "is not an RFC 3339 time"),
        ("../..", "datetime interval needs at least one end"),
        ("/", "datetime interval needs at least one end"),
        ("2024-05-03/2024-05-01", "datetime interval '2024-05-03/2024-05-01' ends before"),
    ],
)
def test_bad_search_datetime_is_a_validation_error_naming_it(text, words):
    with invalid("datetime", words):
        SearchQuery(datetime=text)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_datetime_beyond_the_calendar_in_utc_is_a_validation_error(text):
    with invalid("datetime", "years 1 to 9999 in UTC"):
        SearchQuery(datetime=text)


@pytest.mark.parametrize(
    ("text", "end", "instant"),
    [
        ("2024-05-03", False, datetime(2024, 5, 3, tzinfo=UTC)),
        ("2024-05-03", True, datetime(2024, 5, 3, 23, 59, 59, 999999, tzinfo=UTC)),
        (" 2024-05-03T12:20:31+02:00 ", False, datetime(2024, 5, 3, 10, 20, 31, tzinfo=UTC)),
        ("2024-05-03t10:20:31.25z", False, datetime(2024, 5, 3, 10, 20, 31, 250000, tzinfo=UTC)),
        ("2024-05-03 10:20:31Z", True, datetime(2024, 5, 3, 10, 20, 31, tzinfo=UTC)),
        ("9999-12-31", True, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_instants_are_utc_datetimes(text, end, instant):
    parsed = parse_instant(text, end=end)
    assert parsed == instant
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20240503",
        "2024-02-30",
        "2024-05-03T10:20Z",
        "2024-05-03T24:00:00Z",
        "2024-05-03T10:20:31",
        "2024-05-03T10:20:31.Z",
        "２０２４-05-03",
    ],
)
def test_bad_instants_are_value_errors(text):
    with pytest.raises(ValueError, match="is not an RFC 3339 time such as"):
        parse_instant(text)


def test_search_sortby_is_sort_keys():
    assert SearchQuery(sortby=[{"field": "eo:cloud_cover"}]).sortby == [
        SortBy(field="eo:cloud_cover", direction="asc")
    ]
    assert SearchQuery(sortby=[{"field": "datetime", "direction": "desc"}]).sortby == [
        SortBy(field="datetime", direction="desc")
    ]
    assert parse_sortby("--datetime") == [SortBy(field="datetime", direction="desc")]


@pytest.mark.parametrize(
    ("sortby", "words"),
    [
        ([{"field": ""}], "at least 1 character"),
        ([{"field": "id", "direction": "up"}], "'asc' or 'desc'"),
        ("-datetime", "valid list"),
    ],
)
def test_bad_search_sortby_is_a_validation_error_naming_it(sortby, words):
    with invalid("sortby", words):
        SearchQuery(sortby=sortby)
