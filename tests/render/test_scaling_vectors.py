"""The Descartes Labs client's own scaling examples, restated on tileserver's band model.

The client (PyPI `descarteslabs`) ships worked examples of `scaling_parameters` and
`multiproduct_scaling_parameters`; these are the same situations and answers, written
here as tables. The client answers None where no band is scaled; tileserver answers one
None per band.
"""

from __future__ import annotations

import pytest

from tileserver.catalog.models import Band
from tileserver.scaling_rules import (
    ScalingError,
    multiproduct_scaling_parameters,
    scaling_parameters,
)


def rgb(data_type: str = "UInt16", physical=(0, 1), **extra) -> dict:
    return {
        "data_type": data_type,
        "data_range": [0, 10000],
        "display_range": [0, 4000],
        "physical_range": list(physical),
        **extra,
    }


MASK = {"type": "mask", "data_type": "UInt16", "data_range": [0, 1]}


def product(**bands: dict) -> dict[str, Band]:
    return {name: Band(name=name, **fields) for name, fields in bands.items()}


# Four bands: red, green, blue (UInt16, data 0..10000, display 0..4000, physical 0..1), alpha.
RGBA = product(red=rgb(), green=rgb(), blue=rgb(), alpha=MASK)
# A second product: red is signed, green's physical range starts at -1, and no blue.
RGA = product(red=rgb("Int16"), green=rgb(physical=(-1, 1)), alpha=MASK)


def gain(**step) -> dict:
    return {"function": "gain_bias", **step}


def levels(own: dict, default: str) -> dict:
    """A Landsat-like band: UInt16 DN 0..65535 whose `default` and `toa` are aliases."""
    return {
        "data_type": "UInt16",
        "data_range": [0, 65535],
        "processing_levels": {"DN": [], "default": default, "toa": default, **own},
    }


def reflective(radiance_type: str = "Float64") -> dict:
    return levels(
        {
            "toa_reflectance": [gain()],  # no type or range: Float64 over 0..1
            "toa_radiance": [gain(data_type=radiance_type, data_range=[0.0, 100.0])],
        },
        "toa_reflectance",
    )


THERMAL = levels(
    {
        "toa_brightness_temperature": [
            gain(),
            gain(data_type="Float64", data_range=[0.0, 333.0], physical_range=[0.0, 1.0]),
        ],
        "toa_radiance": [gain(data_type="Float64", data_range=[0.0, 100.0], physical_range=[0, 1])],
    },
    "toa_brightness_temperature",
)
# blue's radiance is (unrealistically) an integer type, to see the type follow the step
LEVELS = product(
    red=reflective(), green=reflective(), blue=reflective("UInt16"), tirs1=THERMAL, alpha=MASK
)

RGBA_NAMES = ["red", "green", "blue", "alpha"]
D = (0, 4000, 0, 255)
P = (0, 10000, 0, 1)


def single(bands: dict[str, Band], names, level=None, scaling=None, data_type=None):
    return scaling_parameters([bands[n] for n in names], scaling, data_type, level)


def types_product() -> dict[str, Band]:
    return product(
        one={"data_type": "UInt16"},
        two={"data_type": "UInt16"},
        its_a_byte={"type": "class", "data_type": "Byte"},
        signed={"data_type": "Int16"},
        alpha={"type": "mask", "data_type": "Byte", "data_range": [0, 1]},
    )


@pytest.mark.parametrize(
    "names, common",
    [
        (["its_a_byte"], "Byte"),
        (["one", "two"], "UInt16"),
        (["its_a_byte", "alpha"], "Byte"),
        (["one", "alpha"], "UInt16"),
        (["alpha"], "Byte"),
        (["one", "its_a_byte"], "UInt16"),
        (["signed", "its_a_byte"], "Int16"),
        (["one", "signed"], "Int32"),
    ],
)
def test_unscaled_output_is_the_common_type(names, common):
    assert single(types_product(), names) == ([None] * len(names), common)


@pytest.mark.parametrize(
    "scaling, data_type, scales, out",
    [
        (None, None, [None] * 4, "UInt16"),
        (None, "UInt32", [None] * 4, "UInt32"),
        ("raw", None, [None] * 4, "UInt16"),
        ("display", None, [D, D, D, None], "Byte"),
        ("display", "UInt16", [D, D, D, None], "UInt16"),
        ("auto", None, [(), (), (), None], "Byte"),
        ("physical", None, [P, P, P, None], "Float64"),
        ("physical", "Int32", [P, P, P, None], "Int32"),
        ([(0, 10000), "display", (), None], None, [(0, 10000, 0, 255), D, (), None], "Byte"),
        ([(0, 4000), (0, 4000), (0, 4000), "raw"], None, [D, D, D, None], "Byte"),
        (
            {"red": "display", "green": (0, 10000), "default_": "auto"},
            None,
            [D, (0, 10000, 0, 255), (), None],
            "Byte",
        ),
        ({"red": (0, 4000, 0, 255), "default_": "raw"}, None, [D, None, None, None], "UInt16"),
        ({"red": "display", "green": "display"}, None, [D, D, None, None], "Byte"),
        (
            [(0, 10000, 0, 255), (0, 4000), (), None],
            None,
            [(0, 10000, 0, 255), D, (), None],
            "Byte",
        ),
        (
            [(0, 10000, 0, 10000), (0, 4000), (), None],
            None,
            [(0, 10000, 0, 10000), (0, 4000, 0, 65535), (), None],
            "UInt16",
        ),
        (
            [(0, 10000, 0, 1.0), (0, 4000), (0, 4000), None],
            None,
            [(0, 10000, 0, 1), (0, 4000, 0, 1), (0, 4000, 0, 1), None],
            "Float64",
        ),
        (
            [("0%", "100%", "0%", "100%"), ("2%", "98%", "2%", "98%"), "display", None],
            None,
            [D, (80, 3920, 5, 250), D, None],
            "Byte",
        ),
        (
            [("0%", "100%", "0%", "100%"), ("2%", "98%", "2%", "98%"), "physical", None],
            None,
            [P, (200, 9800, 0.02, 0.98), P, None],
            "Float64",
        ),
    ],
)
def test_four_band_requests(scaling, data_type, scales, out):
    assert single(RGBA, RGBA_NAMES, None, scaling, data_type) == (scales, out)


@pytest.mark.parametrize(
    "scaling, data_type",
    [
        ("mode", None),  # no such mode
        ([(0, 10000), "display", ()], None),  # three entries for four bands
        ([(0, 10000), "mode", (), None], None),
        (None, "data_type"),  # no such type
    ],
)
def test_four_band_refusals(scaling, data_type):
    with pytest.raises(ScalingError):
        single(RGBA, RGBA_NAMES, None, scaling, data_type)


THERMAL_RADIANCE = (0.0, 100.0, 0.0, 1.0)
BRIGHTNESS = (0.0, 333.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "names, level, scaling, scales, out",
    [
        # no level: `default` (an alias of toa_reflectance, a Float64 level)
        (RGBA_NAMES, None, None, [None] * 4, "Float64"),
        (RGBA_NAMES, "toa_reflectance", None, [None] * 4, "Float64"),
        (["red", "green", "blue", "tirs1", "alpha"], "toa_radiance", None, [None] * 5, "Float64"),
        (["blue", "alpha"], "toa_radiance", None, [None] * 2, "UInt16"),
        (
            ["red", "green", "blue", "tirs1", "alpha"],
            "toa_radiance",
            "physical",
            [None, None, None, THERMAL_RADIANCE, None],
            "Float64",
        ),
        (["tirs1"], "toa_brightness_temperature", None, [None], "Float64"),
        (["tirs1"], "toa_brightness_temperature", "physical", [BRIGHTNESS], "Float64"),
    ],
)
def test_processing_levels(names, level, scaling, scales, out):
    assert single(LEVELS, names, level, scaling) == (scales, out)
    # the same over two products with these bands
    twice = {"product1": list(LEVELS.values()), "product2": list(LEVELS.values())}
    assert multiproduct_scaling_parameters(twice, names, scaling, None, level) == (scales, out)


def products(*which: dict[str, Band]) -> dict[str, list[Band]]:
    return {f"product{i + 1}": list(bands.values()) for i, bands in enumerate(which)}


@pytest.mark.parametrize(
    "which, names, scaling, scales, out",
    [
        ((RGBA,), RGBA_NAMES, None, [None] * 4, "UInt16"),
        ((RGBA, RGBA), RGBA_NAMES, None, [None] * 4, "UInt16"),
        ((RGBA, RGBA), RGBA_NAMES, "display", [D, D, D, None], "Byte"),
        # red is UInt16 in one and Int16 in the other: Int32 holds both
        ((RGBA, RGA), ["red", "alpha"], None, [None, None], "Int32"),
        ((RGBA, RGA), ["red", "alpha"], "display", [D, None], "Byte"),
        ((RGBA, RGA), ["red", "alpha"], "raw", [None, None], "Int32"),
    ],
)
def test_several_products(which, names, scaling, scales, out):
    assert multiproduct_scaling_parameters(products(*which), names, scaling) == (scales, out)


def test_several_products_refuse_a_band_one_of_them_lacks():
    with pytest.raises(ScalingError, match="'blue' is not available in product 'product2'"):
        multiproduct_scaling_parameters(products(RGBA, RGA), RGBA_NAMES)


def test_several_products_refuse_scales_that_differ():
    # green's physical range is 0..1 in one product and -1..1 in the other
    with pytest.raises(ScalingError, match="incompatible"):
        multiproduct_scaling_parameters(products(RGBA, RGA), ["green", "alpha"], "physical")
