"""Tests of the Descartes Labs Catalog scaling rules (SEMANTICS.md section 1).

Every expected value is a literal worked out by hand from the rules, never computed by the
code under test.
"""

import numpy as np
import pytest

from tileserver.catalog.models import Band, ProcessingStep
from tileserver.render.pipeline import scale_array
from tileserver.scaling_rules import (
    ScalingError,
    multiproduct_scaling_parameters,
    scaling_parameters,
)


def spectral(name, data_type="UInt16", **kw):
    return {"name": name, "type": "spectral", "data_type": data_type, **kw}


def rgb_band(name):
    return spectral(name, data_range=[0, 10000], display_range=[0, 4000], physical_range=[0, 1])


ALPHA = {"name": "alpha", "type": "mask", "data_type": "UInt16", "data_range": [0, 1]}
RGBA = [rgb_band("red"), rgb_band("green"), rgb_band("blue"), ALPHA]
RGBA_MODELS = [
    Band(
        name=n,
        data_type="UInt16",
        data_range=(0, 10000),
        display_range=(0, 4000),
        physical_range=(0, 1),
    )
    for n in ("red", "green", "blue")
] + [Band(name="alpha", type="mask", data_type="UInt16", data_range=(0, 1), is_alpha=True)]

D = (0, 4000, 0, 255)


# --- the SEMANTICS.md example table ------------------------------------------------------


@pytest.mark.parametrize("bands", [RGBA, RGBA_MODELS], ids=["dicts", "models"])
@pytest.mark.parametrize(
    "scaling, data_type, scales, out",
    [
        ("display", None, [D, D, D, None], "Byte"),
        ("display", "UInt16", [D, D, D, None], "UInt16"),
        ("auto", None, [(), (), (), None], "Byte"),
        ("raw", None, [None, None, None, None], "UInt16"),
    ],
)
def test_semantics_example_table(bands, scaling, data_type, scales, out):
    assert scaling_parameters(bands, scaling, data_type) == (scales, out)


def test_no_scaling_uses_common_type_and_no_scales():
    assert scaling_parameters(RGBA) == ([None] * 4, "UInt16")
    assert scaling_parameters(RGBA, None, "UInt32") == ([None] * 4, "UInt32")


def test_physical_mode():
    p = (0, 10000, 0, 1)
    assert scaling_parameters(RGBA, "physical") == ([p, p, p, None], "Float64")
    assert scaling_parameters(RGBA_MODELS, "physical") == ([p, p, p, None], "Float64")
    # an explicit data_type is kept even when it cannot hold the physical range
    assert scaling_parameters(RGBA, "physical", "Int32") == ([p, p, p, None], "Int32")


def test_physical_is_none_where_data_range_equals_physical_range():
    bands = [
        spectral("a", data_range=[0, 10000], physical_range=[0, 10000]),
        spectral("b", data_range=[0, 10000]),  # physical_range defaults to data_range
        spectral("c", data_range=[0, 10000], physical_range=[-1, 1]),
    ]
    assert scaling_parameters(bands, "physical") == ([None, None, (0, 10000, -1, 1)], "Float64")


# --- band types --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["raw", "auto", "display", "physical"])
@pytest.mark.parametrize("band_type", ["mask", "class"])
def test_mask_and_class_bands_are_never_scaled_by_a_mode(mode, band_type):
    band = {
        "name": "m",
        "type": band_type,
        "data_type": "Byte",
        "data_range": [0, 10],
        "display_range": [0, 5],
        "physical_range": [0, 1],
    }
    scales, _ = scaling_parameters([rgb_band("red"), band], mode)
    assert scales[1] is None


@pytest.mark.parametrize("band_type", ["spectral", "generic", "microwave", None])
@pytest.mark.parametrize(
    "mode, scale, out",
    [
        ("raw", None, "UInt16"),
        ("auto", (), "Byte"),
        ("display", (0, 4000, 0, 255), "Byte"),
        ("physical", (0, 10000, 0, 1), "Float64"),
    ],
)
def test_other_band_types_are_scaled_by_each_mode(band_type, mode, scale, out):
    band = rgb_band("x") | {"type": band_type}
    assert scaling_parameters([band], mode) == ([scale], out)


def test_mask_band_mode_is_only_a_hint_and_does_not_conflict():
    # "raw" on the mask band would conflict with display if it were an explicit mode
    scales, out = scaling_parameters(RGBA, ["display", "display", "display", "raw"])
    assert (scales, out) == ([D, D, D, None], "Byte")
    scales, out = scaling_parameters(RGBA, [(0, 4000), (0, 4000), (0, 4000), "raw"])
    assert (scales, out) == ([D, D, D, None], "Byte")


def test_a_tuple_given_for_a_mask_band_is_applied():
    scales, out = scaling_parameters(RGBA, {"alpha": (0, 1, 0, 255), "default_": "display"})
    assert (scales, out) == ([D, D, D, (0, 1, 0, 255)], "Byte")


# --- defaults for missing attributes -----------------------------------------------------


@pytest.mark.parametrize(
    "band",
    [
        {"name": "x"},
        {
            "name": "x",
            "type": None,
            "data_type": None,
            "data_range": None,
            "display_range": None,
            "physical_range": None,
        },
        Band(name="x"),
    ],
    ids=["missing", "none", "model"],
)
def test_missing_attributes_default(band):
    # UInt16, data_range [0, 10000], display_range = physical_range = data_range
    assert scaling_parameters([band]) == ([None], "UInt16")
    assert scaling_parameters([band], "display") == ([(0, 10000, 0, 255)], "Byte")
    assert scaling_parameters([band], "physical") == ([None], "Float64")
    assert scaling_parameters([band], "raw") == ([None], "UInt16")
    assert scaling_parameters([band], [("10%", "50%")]) == ([(1000, 5000, 0, 255)], "Byte")


def test_display_and_physical_ranges_default_to_the_given_data_range():
    band = spectral("x", data_type="Int16", data_range=[-100, 100])
    assert scaling_parameters([band], "display") == ([(-100, 100, 0, 255)], "Byte")
    assert scaling_parameters([band], "physical") == ([None], "Float64")


def test_missing_name_is_reported_by_position():
    with pytest.raises(ScalingError, match="#1"):
        scaling_parameters([rgb_band("red"), {}], ["display", "bogus"])


# --- scaling forms: single mode, list, dict ----------------------------------------------


def test_list_with_one_entry_per_band():
    scales, out = scaling_parameters(RGBA, [(0, 10000), "display", (), None])
    assert (scales, out) == ([(0, 10000, 0, 255), D, (), None], "Byte")


@pytest.mark.parametrize("scaling", [["display"] * 3, ["display"] * 5, [], ()])
def test_list_length_must_match_the_bands(scaling):
    with pytest.raises(ScalingError, match="4 bands"):
        scaling_parameters(RGBA, scaling)


def test_dict_with_default():
    scaling = {"red": "display", "green": (0, 10000), "default_": "auto"}
    assert scaling_parameters(RGBA, scaling) == ([D, (0, 10000, 0, 255), (), None], "Byte")


def test_dict_default_is_never_applied_to_unnamed_mask_or_class_bands():
    bands = [rgb_band("red"), ALPHA, {"name": "cls", "type": "class", "data_type": "Byte"}]
    assert scaling_parameters(bands, {"default_": (0, 1000)}) == (
        [(0, 1000, 0, 255), None, None],
        "Byte",
    )
    assert scaling_parameters(bands, {"default_": (0, 1000, 0, 10)}) == (
        [(0, 1000, 0, 10), None, None],
        "Float64",
    )


def test_dict_default_raw_with_one_tuple():
    # red implies physical, the rest are explicit raw: raw wins, output the bands' common type
    scaling = {"red": (0, 4000, 0, 255), "default_": "raw"}
    assert scaling_parameters(RGBA, scaling) == ([D, None, None, None], "UInt16")


def test_dict_without_default_leaves_unnamed_bands_unscaled():
    scaling = {"red": "display", "green": "display"}
    assert scaling_parameters(RGBA, scaling) == ([D, D, None, None], "Byte")


def test_dict_keys_naming_bands_not_requested_are_ignored():
    # clients keep one mapping for all their band lists
    scaling = {"red": "display", "nir": (0, 1, 2, 3), "default_": "auto"}
    assert scaling_parameters(RGBA, scaling) == ([D, (), (), None], "Byte")
    assert scaling_parameters(RGBA[:1], {"nir": "physical"}) == ([None], "UInt16")


@pytest.mark.parametrize("entry", [(1,), (1, 2, 3), (1, 2, 3, 4, 5), [0]])
def test_tuple_lengths_other_than_0_2_4_are_errors(entry):
    with pytest.raises(ScalingError, match="red"):
        scaling_parameters(RGBA, [entry, None, None, None])
    with pytest.raises(ScalingError, match="red"):
        scaling_parameters(RGBA, {"red": entry})


@pytest.mark.parametrize("mode", ["mode", "", "linear", "default_", "stretch"])
def test_invalid_mode_names_are_errors(mode):
    with pytest.raises(ScalingError, match="mode"):
        scaling_parameters(RGBA, mode)
    with pytest.raises(ScalingError, match="green"):
        scaling_parameters(RGBA, [(0, 10000), mode, (), None])


@pytest.mark.parametrize("item", ["abc", "x%", "%", None, True, float("nan"), [1], "inf"])
def test_invalid_tuple_items_are_errors(item):
    with pytest.raises(ScalingError, match="red"):
        scaling_parameters(RGBA, [(item, 4000), None, None, None])


@pytest.mark.parametrize("scaling", [5, 2.5, object(), {"red"}])
def test_unsupported_scaling_values_are_errors(scaling):
    with pytest.raises(ScalingError):
        scaling_parameters(RGBA, scaling)


@pytest.mark.parametrize("entry", [5, {"a": 1}, object()])
def test_unsupported_entries_are_errors(entry):
    with pytest.raises(ScalingError, match="blue"):
        scaling_parameters(RGBA, [None, None, entry, None])


def test_scaling_error_is_a_value_error():
    assert issubclass(ScalingError, ValueError)


def test_mode_names_are_case_insensitive():
    assert scaling_parameters(RGBA, "Display") == ([D, D, D, None], "Byte")


def test_numeric_strings_in_tuples_are_numbers():
    bands = [rgb_band("r"), rgb_band("g")]
    # display and physical implied: no mode; outputs [0, 255] -> Byte -> display
    scales, out = scaling_parameters(bands, [("0", "4000"), ("100", "3000.0", "0", "255")])
    assert (scales, out) == ([D, (100, 3000, 0, 255)], "Byte")
    # "255.0" is a float output item: float output, exactly as the number 255.0
    assert scaling_parameters([rgb_band("r")], [("0", "4000", "0", "255.0")])[1] == "Float64"


# --- percent items -----------------------------------------------------------------------


def test_percent_display_mode_resolves_against_display_range_and_0_255_99():
    scaling = [("0%", "100%", "0%", "100%"), ("2%", "98%", "2%", "98%"), "display", None]
    # 2% of 4000 = 80, 98% = 3920; 2% of 255.99 = 5.1198 -> 5, 98% = 250.8702 -> 250
    assert scaling_parameters(RGBA, scaling) == (
        [D, (80, 3920, 5, 250), D, None],
        "Byte",
    )


def test_percent_physical_mode_resolves_against_data_and_physical_range():
    scaling = [("0%", "100%", "0%", "100%"), ("2%", "98%", "2%", "98%"), "physical", None]
    scales, out = scaling_parameters(RGBA, scaling)
    assert out == "Float64"
    assert scales[0] == (0, 10000, 0, 1)
    # input side (UInt16 band) truncated to int, output side (Float64) kept as float
    assert scales[1][:2] == (200, 9800)
    assert all(isinstance(v, int) for v in scales[1][:2])
    assert scales[1][2:] == pytest.approx((0.02, 0.98))
    assert scales[2:] == [(0, 10000, 0, 1), None]


def test_percent_raw_mode_resolves_against_the_type_ranges():
    scaling = ["raw", ("10%", "50%", "0%", "50%"), ("10%", "50%"), None]
    # input: UInt16 [0, 65535]: 10% = 6553.5 -> 6553, 50% = 32767.5 -> 32767
    # output: the common type UInt16 [0, 65535]: 50% -> 32767
    assert scaling_parameters(RGBA, scaling) == (
        [None, (6553, 32767, 0, 32767), (6553, 32767, 0, 65535), None],
        "UInt16",
    )


def test_percent_of_a_signed_range():
    band = spectral("s", data_type="Int16", data_range=[-1000, 1000])
    # display_range [-1000, 1000]: 25% -> -500, 75% -> 500
    assert scaling_parameters([band], "display") == ([(-1000, 1000, 0, 255)], "Byte")
    assert scaling_parameters([band], [("25%", "75%")]) == ([(-500, 500, 0, 255)], "Byte")
    # raw Int16 input range [-32768, 32767]: 25% = -16384.25 -> -16384 (truncated toward 0)
    assert scaling_parameters([band], [("25%", "100%")], "Int16") == (
        [(-16384, 32767, -32768, 32767)],
        "Int16",
    )


def test_percent_input_side_of_a_float_band_is_not_truncated():
    band = spectral("f", data_type="Float32", data_range=[0.0, 2.0])
    scales, out = scaling_parameters([band], [("10%", "90%")])
    # display_range = data_range [0, 2]: 10% -> 0.2, 90% -> 1.8; Byte output: 0, 255
    assert out == "Byte"
    assert scales[0][:2] == pytest.approx((0.2, 1.8))
    assert scales[0][2:] == (0, 255)


def test_percent_output_side_of_a_float_type_is_not_truncated():
    scaling = ["display", ("0%", "100%", "0%", "100%"), ("2%", "98%", "2%", "98%"), None]
    scales, out = scaling_parameters(RGBA, scaling, "Float64")
    assert out == "Float64"
    assert scales[0] == (0, 4000, 0, 255.99)
    assert scales[1] == (0, 4000, 0, 255.99)
    assert scales[2][:2] == (80, 3920)
    assert scales[2][2:] == pytest.approx((5.1198, 250.8702))


def test_numeric_items_of_an_integer_side_are_truncated_too():
    # as the original: every item of an integer side goes through int()
    assert scaling_parameters([rgb_band("r")], [(100.7, 3000.2)]) == (
        [(100, 3000, 0, 255)],
        "Byte",
    )


def test_only_percent_outputs_and_no_mode_cannot_be_resolved():
    with pytest.raises(ScalingError, match="cannot determine"):
        scaling_parameters([rgb_band("r")], [("0%", "100%", "0%", "100%")])
    # with a data_type it is fine: Byte -> display
    assert scaling_parameters([rgb_band("r")], [("0%", "100%", "0%", "100%")], "Byte") == (
        [(0, 4000, 0, 255)],
        "Byte",
    )


# --- the 255.99 rule ---------------------------------------------------------------------


@pytest.mark.parametrize("data_type", ["Float32", "Float64", "float32"])
def test_display_upper_output_is_255_99_for_float_types(data_type):
    f = (0, 4000, 0, 255.99)
    scales, out = scaling_parameters(RGBA, "display", data_type)
    assert scales == [f, f, f, None]
    assert out == data_type[0].upper() + data_type[1:]
    assert scaling_parameters(RGBA, {"red": (0, 4000), "default_": "display"}, data_type)[0] == [
        f,
        f,
        f,
        None,
    ]


@pytest.mark.parametrize("data_type", ["Byte", "UInt16", "Int16", "UInt32", "Int32"])
def test_display_upper_output_is_255_for_integer_types(data_type):
    assert scaling_parameters(RGBA, "display", data_type) == ([D, D, D, None], data_type)
    assert scaling_parameters(RGBA, {"red": (0, 4000), "default_": "display"}, data_type) == (
        [D, D, D, None],
        data_type,
    )


# --- modes implied by tuples and mixes of modes ------------------------------------------


def test_tuple_implied_modes_alone():
    band = [rgb_band("r")]
    assert scaling_parameters(band, [()]) == ([()], "Byte")  # auto
    assert scaling_parameters(band, [(0, 4000)]) == ([D], "Byte")  # display
    # any numeric output item: physical, so Float64
    assert scaling_parameters(band, [(0, 4000, 0, 255)]) == ([D], "Float64")
    assert scaling_parameters(band, [(0, 4000, "0%", 200)]) == ([(0, 4000, 0.0, 200)], "Float64")
    bands = [rgb_band("r"), rgb_band("g")]
    assert scaling_parameters(bands, [(0, 10000, 0, 1), (0, 10000, 0, 2)]) == (
        [(0, 10000, 0, 1), (0, 10000, 0, 2)],
        "Float64",
    )
    # a 2-tuple under physical gets the physical output range
    assert scaling_parameters(bands, ["physical", (0, 5000)]) == (
        [(0, 10000, 0, 1), (0, 5000, 0, 1)],
        "Float64",
    )
    # physical (outputs [0, 1]) and display (outputs [0, 255]) conflict: Byte, display
    assert scaling_parameters(bands, [(0, 10000, 0, 1), (0, 5000)]) == (
        [(0, 10000, 0, 1), (0, 5000, 0, 255)],
        "Byte",
    )


def test_auto_and_display_mix_as_display():
    assert scaling_parameters(RGBA, ["auto", "display", "auto", None]) == (
        [(), D, (), None],
        "Byte",
    )
    assert scaling_parameters(RGBA, ["auto", "display", "auto", None], "Float32") == (
        [(), (0, 4000, 0, 255.99), (), None],
        "Float32",
    )


@pytest.mark.parametrize(
    "modes",
    [
        ["display", "raw", None, None],
        ["auto", "raw", None, None],
        ["physical", "display", None, None],
        ["raw", "physical", None, None],
        ["auto", "physical", None, None],
    ],
)
def test_conflicting_explicit_modes_are_errors(modes):
    with pytest.raises(ScalingError, match="Conflicting"):
        scaling_parameters(RGBA, modes)
    with pytest.raises(ScalingError, match="Conflicting"):
        scaling_parameters(RGBA, modes, "Byte")


def test_explicit_mode_wins_over_tuple_implied_modes():
    # (0, 10000, 0, 1) implies physical, but the explicit display decides: Byte, truncated
    assert scaling_parameters(RGBA, ["display", (0, 10000, 0, 1.5), (0, 100), None]) == (
        [D, (0, 10000, 0, 1), (0, 100, 0, 255), None],
        "Byte",
    )


@pytest.mark.parametrize(
    "first, out, second",
    [
        ((0, 10000, 0, 255), "Byte", (0, 4000, 0, 255)),
        ((0, 10000, 0, 1000), "UInt16", (0, 4000, 0, 65535)),
        ((0, 10000, -100, 100), "Int16", (0, 4000, -32768, 32767)),
        ((0, 10000, 0, 70000), "UInt32", (0, 4000, 0, 4294967295)),
        ((0, 10000, -1, 70000), "Int32", (0, 4000, -2147483648, 2147483647)),
        ((0, 10000, 0, 2147483648), "Float64", (0, 4000, 0, 1)),
        ((0, 10000, -2147483649, 0), "Float64", (0, 4000, 0, 1)),
        ((0, 10000, 0, 0.5), "Float64", (0, 4000, 0, 1)),
    ],
)
def test_conflicting_tuple_modes_pick_the_smallest_type_holding_all_outputs(first, out, second):
    # first implies physical, (0, 4000) implies display, () auto: no mode; the output ranges
    # [first[2], first[3]] and [0, 255] decide the type, which then decides the mode
    # (Byte display, Float physical, else raw)
    scales, data_type = scaling_parameters(RGBA, [first, (0, 4000), (), None])
    assert data_type == out
    assert scales == [first, second, (), None]


def test_unscaled_bands_data_range_counts_in_the_union():
    # blue has no entry: its data_range [0, 10000] needs UInt16, so the mode becomes raw
    scales, out = scaling_parameters(RGBA, [(0, 10000, 0, 255), (0, 4000), None, None])
    assert (scales, out) == ([(0, 10000, 0, 255), (0, 4000, 0, 65535), None, None], "UInt16")


@pytest.mark.parametrize(
    "data_type, scale",
    [
        ("Byte", (0, 4000, 0, 255)),  # display
        ("Float32", (0, 4000, 0, 1)),  # physical: the physical_range
        ("Float64", (0, 4000, 0, 1)),
        ("UInt16", (0, 4000, 0, 65535)),  # raw: the output type's range
        ("Int16", (0, 4000, -32768, 32767)),
        ("UInt32", (0, 4000, 0, 4294967295)),
        ("Int32", (0, 4000, -2147483648, 2147483647)),
    ],
)
def test_no_explicit_mode_with_a_data_type_derives_the_mode_from_it(data_type, scale):
    # tuple-implied modes are not consulted when the caller gives a data_type
    assert scaling_parameters(RGBA, [(0, 4000), (), None, None], data_type) == (
        [scale, (), None, None],
        data_type,
    )


# --- output type when a mode is given but no data_type -----------------------------------


@pytest.mark.parametrize(
    "types, common",
    [
        (["Int16", "UInt16"], "Int32"),
        (["Int16", "Byte"], "Int16"),
        (["UInt16", "Byte"], "UInt16"),
        (["Byte", "Byte"], "Byte"),
        (["UInt16", "UInt32"], "UInt32"),
        (["UInt32", "Int16"], "Float64"),
        (["UInt32", "Float32"], "Float64"),
        (["Int32", "Float32"], "Float32"),
        (["Int32", "UInt16", "Byte"], "Int32"),
        (["Float32", "Float64"], "Float64"),
        (["Float32"], "Float32"),
    ],
)
def test_raw_outputs_the_common_type(types, common):
    bands = [spectral(f"b{i}", t) for i, t in enumerate(types)]
    assert scaling_parameters(bands, "raw") == ([None] * len(types), common)
    assert scaling_parameters(bands) == ([None] * len(types), common)


def test_mask_bands_take_part_in_the_common_type():
    bands = [spectral("a", "Byte"), {"name": "m", "type": "mask", "data_type": "UInt16"}]
    assert scaling_parameters(bands, "raw") == ([None, None], "UInt16")


@pytest.mark.parametrize(
    "mode, out", [("physical", "Float64"), ("display", "Byte"), ("auto", "Byte")]
)
def test_other_modes_output_types(mode, out):
    bands = [
        spectral("a", "Int16", data_range=[-5, 5], physical_range=[0, 2]),
        spectral("b", "UInt32", data_range=[0, 10]),
    ]
    assert scaling_parameters(bands, mode)[1] == out


# --- data_type ---------------------------------------------------------------------------


@pytest.mark.parametrize("data_type", ["data_type", "uint8", "Float16", "", 5, "Int8"])
def test_invalid_data_type_is_an_error(data_type):
    with pytest.raises(ScalingError, match="data_type"):
        scaling_parameters(RGBA, "display", data_type)
    with pytest.raises(ScalingError, match="data_type"):
        scaling_parameters(RGBA, None, data_type)


@pytest.mark.parametrize(
    "given, canonical",
    [("uint16", "UInt16"), ("FLOAT32", "Float32"), ("byte", "Byte"), ("Int32", "Int32")],
)
def test_data_type_is_case_insensitive_and_returned_canonical(given, canonical):
    assert scaling_parameters(RGBA, "raw", given)[1] == canonical


def test_invalid_band_data_type_is_an_error():
    with pytest.raises(ScalingError, match="red"):
        scaling_parameters([spectral("red", "Complex64")], "display")


def test_no_bands_is_an_error():
    with pytest.raises(ScalingError):
        scaling_parameters([], "display")


# --- processing levels -------------------------------------------------------------------


def levels_band(name="red", **levels):
    return spectral(name, data_range=[0, 65535], display_range=[0, 30000], processing_levels=levels)


RADIANCE = [
    {"function": "gain_bias", "data_type": "Float32", "data_range": [-1, 1]},
    {
        "function": "scale",
        "data_type": "Float64",
        "data_range": [0.0, 100.0],
        "display_range": [0, 50],
        "physical_range": [0, 1],
    },
]


def test_processing_level_takes_the_last_steps_attributes():
    band = levels_band(toa_radiance=RADIANCE)
    assert scaling_parameters([band], None, None, "toa_radiance") == ([None], "Float64")
    assert scaling_parameters([band], "display", None, "toa_radiance") == (
        [(0.0, 50.0, 0, 255)],
        "Byte",
    )
    assert scaling_parameters([band], "physical", None, "toa_radiance") == (
        [(0.0, 100.0, 0, 1)],
        "Float64",
    )


def test_processing_step_without_data_type_is_float64_with_data_range_0_1():
    band = levels_band(toa_reflectance=[{"function": "gain_bias"}])
    assert scaling_parameters([band], None, None, "toa_reflectance") == ([None], "Float64")
    # data_range, display_range and physical_range all default to [0, 1]
    assert scaling_parameters([band], "display", None, "toa_reflectance") == (
        [(0.0, 1.0, 0, 255)],
        "Byte",
    )
    assert scaling_parameters([band], "physical", None, "toa_reflectance") == (
        [None],
        "Float64",
    )


def test_processing_step_integer_type_and_common_type():
    band = levels_band(toa_radiance=[{"data_type": "UInt16", "data_range": [0, 100]}])
    other = spectral("b", "Int16", processing_levels={"toa_radiance": [{"data_type": "Byte"}]})
    assert scaling_parameters([band, other], "raw", None, "toa_radiance") == (
        [None, None],
        "UInt16",
    )
    assert scaling_parameters([band], "display", None, "toa_radiance") == (
        [(0, 100, 0, 255)],
        "Byte",
    )


def test_band_without_the_level_keeps_its_own_attributes():
    band = levels_band(toa_radiance=RADIANCE)
    assert scaling_parameters([band], "display", None, "surface") == (
        [(0, 30000, 0, 255)],
        "Byte",
    )


def test_empty_level_keeps_the_band_attributes():
    band = levels_band(DN=[], toa_radiance=RADIANCE)
    assert scaling_parameters([band], "display", None, "DN") == ([(0, 30000, 0, 255)], "Byte")


def test_default_level_applies_when_no_level_is_given():
    band = levels_band(default=[{"data_type": "Float32", "data_range": [0, 2]}])
    assert scaling_parameters([band]) == ([None], "Float32")
    assert scaling_parameters([band], "display") == ([(0.0, 2.0, 0, 255)], "Byte")


def test_level_aliases_are_followed():
    band = levels_band(toa="toa_radiance", toa_radiance=RADIANCE)
    assert scaling_parameters([band], "display", None, "toa") == ([(0.0, 50.0, 0, 255)], "Byte")


def test_dlsr_step_keeps_the_stored_definitions():
    band = levels_band(surface=[{"function": "dlsr", "data_type": "Float64"}])
    assert scaling_parameters([band], None, None, "surface") == ([None], "UInt16")


def test_unknown_level_on_a_band_without_levels_is_an_error():
    with pytest.raises(ScalingError, match="radiance.*red"):
        scaling_parameters([rgb_band("red")], "display", None, "radiance")


@pytest.mark.parametrize("level", ["default", "toa", "surface"])
def test_legacy_levels_on_a_band_without_levels_are_fine(level):
    assert scaling_parameters([rgb_band("red")], "display", None, level) == ([D], "Byte")


def test_unknown_level_is_fine_for_mask_bands():
    scales, out = scaling_parameters([ALPHA], None, None, "radiance")
    assert (scales, out) == ([None], "UInt16")


def test_processing_levels_on_models():
    band = Band(
        name="red",
        data_type="UInt16",
        data_range=(0, 65535),
        processing_levels={
            "toa_radiance": [
                ProcessingStep(function="gain_bias", data_type="Float32"),
                ProcessingStep(
                    function="x", data_type="Float64", data_range=(0, 100), physical_range=(0, 1)
                ),
            ]
        },
    )
    assert scaling_parameters([band], "physical", None, "toa_radiance") == (
        [(0.0, 100.0, 0.0, 1.0)],
        "Float64",
    )
    assert scaling_parameters([band], "raw") == ([None], "UInt16")


# --- scale_array -------------------------------------------------------------------------


def one_band(values, dtype="uint16"):
    return np.array([[values]], dtype=dtype)


def test_display_to_byte_rounds_half_up_and_clips():
    data = one_band([0, 16, 1000, 2000, 4000, 5000])
    # 16 * 255 / 4000 = 1.02 -> 1; 1000 -> 63.75 -> 64; 2000 -> 127.5 -> 128; 5000 clipped
    out = scale_array(data, [(0, 4000, 0, 255)], "Byte")
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 1, 64, 128, 255, 255]]]


def test_rounding_is_half_up_not_half_to_even():
    # (0, 510) -> (0, 255): 1 -> 0.5 -> 1, 5 -> 2.5 -> 3 (half to even would give 0 and 2)
    out = scale_array(one_band([1, 5]), [(0, 510, 0, 255)], "Byte")
    assert out.tolist() == [[[1, 3]]]
    # (0, 200) -> (-100, 100): 98.5 -> -1.5 -> -1 (half to even: -2)
    out = scale_array(one_band([98.5], "float64"), [(0, 200, -100, 100)], "Int16")
    assert out.tolist() == [[[-1]]]
    assert scale_array(one_band([0.5, 2.5], "float32"), [None], "Byte").tolist() == [[[1, 3]]]


def test_raw_uint16_to_byte_clips_without_scaling():
    out = scale_array(one_band([0, 100, 255, 300, 65535]), [None], "Byte")
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 100, 255, 255, 255]]]


def test_none_scale_clips_negative_values_and_rounds_floats_for_integer_types():
    assert scale_array(one_band([-5, 0, 7], "int16"), [None], "Byte").tolist() == [[[0, 0, 7]]]
    out = scale_array(one_band([1.5, 2.49, -0.4, 70000.0], "float32"), [None], "UInt16")
    assert out.tolist() == [[[2, 2, 0, 65535]]]


def test_none_scale_to_float_keeps_values():
    out = scale_array(one_band([-3.25, 0.5, 12345.0], "float64"), [None], "Float32")
    assert out.dtype == np.float32
    assert out.tolist() == [[[-3.25, 0.5, 12345.0]]]


def test_scales_none_means_no_scaling_for_every_band():
    data = np.array([[[1, 300]], [[2, 400]]], dtype="uint16")
    assert scale_array(data, None, "Byte").tolist() == [[[1, 255]], [[2, 255]]]


def test_physical_to_float():
    out = scale_array(one_band([0, 2500, 10000, 12000]), [(0, 10000, 0.0, 1.0)], "Float64")
    assert out.dtype == np.float64
    assert out.tolist() == [[[0.0, 0.25, 1.0, 1.0]]]


def test_display_to_float_goes_up_to_255_99():
    out = scale_array(one_band([0, 2000, 4000]), [(0, 4000, 0, 255.99)], "Float32")
    assert out.dtype == np.float32
    assert out[0, 0].tolist() == pytest.approx([0.0, 127.995, 255.99], rel=1e-6)


def test_auto_from_the_data():
    data = one_band([10, 20, 30, 25])
    # 10..30 -> 0..255: 20 -> 127.5 -> 128, 25 -> 191.25 -> 191
    assert scale_array(data, [()], "Byte").tolist() == [[[0, 128, 255, 191]]]


def test_auto_from_given_ranges():
    data = one_band([10, 20, 30, 50])
    # 0..40 -> 0..255: 10 -> 63.75 -> 64, 20 -> 127.5 -> 128, 30 -> 191.25 -> 191, 50 clipped
    out = scale_array(data, [()], "Byte", auto_ranges=[(0, 40)])
    assert out.tolist() == [[[64, 128, 191, 255]]]


def test_auto_range_none_falls_back_to_the_data():
    data = np.array([[[0, 10]], [[10, 20]]], dtype="uint16")
    out = scale_array(data, [(), ()], "Byte", auto_ranges=[(0, 20), None])
    # band 0: 0..20 -> 0, 127.5 -> 128; band 1: its own 10..20 -> 0, 255
    assert out.tolist() == [[[0, 128]], [[0, 255]]]


def test_auto_to_a_float_type_stretches_to_0_255():
    out = scale_array(one_band([0, 5, 10]), [()], "Float32")
    assert out.tolist() == [[[0.0, 127.5, 255.0]]]


def test_masked_pixels_are_ignored_for_auto_and_become_0():
    data = np.ma.MaskedArray(one_band([10, 20, 30, 1000]), mask=[[[False, False, False, True]]])
    out = scale_array(data, [()], "Byte")
    assert type(out) is np.ndarray
    assert out.tolist() == [[[0, 128, 255, 0]]]


def test_masked_pixels_become_0_for_every_scale():
    data = np.ma.MaskedArray(
        np.array([[[4000, 4000]], [[200, 200]], [[9, 9]]], dtype="uint16"),
        mask=[[[True, False]], [[False, True]], [[True, False]]],
    )
    out = scale_array(data, [(0, 4000, 0, 255), None, (0, 10, 100, 200)], "Byte")
    # (0, 10, 100, 200): 9 -> 190
    assert out.tolist() == [[[0, 255]], [[200, 0]], [[0, 190]]]


def test_nan_pixels_are_ignored_for_auto_and_become_0():
    out = scale_array(one_band([np.nan, 2.0, 4.0], "float32"), [()], "Byte")
    assert out.tolist() == [[[0, 0, 255]]]


def test_all_masked_band_with_auto_is_all_0():
    data = np.ma.MaskedArray(one_band([1, 2]), mask=True)
    assert scale_array(data, [()], "Byte").tolist() == [[[0, 0]]]


def test_constant_band_maps_to_the_lower_output():
    assert scale_array(one_band([7, 7, 7]), [()], "Byte").tolist() == [[[0, 0, 0]]]
    assert scale_array(one_band([5, 9]), [(5, 5, 10, 20)], "Byte").tolist() == [[[10, 10]]]


def test_inverted_output_range():
    # 25 -> 255 - 63.75 = 191.25 -> 191
    out = scale_array(one_band([0, 25, 100]), [(0, 100, 255, 0)], "Byte")
    assert out.tolist() == [[[255, 191, 0]]]


def test_signed_output_rounds_half_up():
    data = one_band([97.5, 50.0, 0.0, 300.0], "float64")
    # (0, 200) -> (-100, 100): 97.5 -> -2.5 -> -2; 50 -> -50; 0 -> -100; 300 clipped to 100
    out = scale_array(data, [(0, 200, -100, 100)], "Int16")
    assert out.dtype == np.int16
    assert out.tolist() == [[[-2, -50, -100, 100]]]


def test_output_type_limits_clip_after_the_output_range():
    out = scale_array(one_band([0, 1]), [(0, 1, 0, 1000)], "Byte")
    assert out.tolist() == [[[0, 255]]]


def test_scale_array_returns_a_new_array():
    data = one_band([0, 4000])
    out = scale_array(data, [(0, 4000, 0, 255)], "uint16")
    assert out.dtype == np.uint16
    assert data.tolist() == [[[0, 4000]]]
    assert out.tolist() == [[[0, 255]]]


def test_scale_array_round_trip_with_scaling_parameters():
    scales, data_type = scaling_parameters(RGBA, "display")
    data = np.array([[[2000]], [[4000]], [[0]], [[1]]], dtype="uint16")
    assert scale_array(data, scales, data_type).tolist() == [[[128]], [[255]], [[0]], [[1]]]


def test_scale_array_errors():
    with pytest.raises(ScalingError):
        scale_array(one_band([1]), [None, None], "Byte")
    with pytest.raises(ScalingError):
        scale_array(one_band([1]), [()], "Byte", auto_ranges=[(0, 1), (0, 1)])
    with pytest.raises(ScalingError, match="data_type"):
        scale_array(one_band([1]), [None], "uint9")
    with pytest.raises(ValueError):
        scale_array(np.zeros((2, 2)), [None, None], "Byte")
    with pytest.raises(ScalingError):
        scale_array(one_band([1]), [(0, 1, 2)], "Byte")


# --- rules set by the Catalog's reference client (issue 18) --------------------------------


def test_percent_multiplies_before_it_divides():
    # 29 / 100 * 100 is 28.999...; 29 * 100 / 100 is 29 (the Catalog's order)
    band = spectral("b", data_range=[0, 10000], display_range=[0, 100])
    assert scaling_parameters([band], [("29%", "100%")]) == ([(29, 100, 0, 255)], "Byte")
    # a float output type means physical mode: input percents of the data range 0..10000
    assert scaling_parameters([band], [("57%", "100%", 0, 1)], "Float32") == (
        [(5700, 10000, 0, 1)],
        "Float32",
    )


def test_step_ranges_are_floats_whatever_the_step_type():
    # An integer band's own [0, 100] holds in a Byte; an integer step's [0, 100] is floats,
    # so the same request wants a Float64 output.
    band = spectral("b", data_range=[0, 100])
    stepped = levels_band("b", toa=[{"data_type": "UInt16", "data_range": [0, 100]}])
    assert scaling_parameters([band], [None]) == ([None], "Byte")
    assert scaling_parameters([stepped], [None], None, "toa") == ([None], "Float64")


def chain(hops):
    """Levels l0 -> l1 -> ... -> l{hops} by alias, the last one real."""
    levels = {f"l{i}": f"l{i + 1}" for i in range(hops)}
    levels[f"l{hops}"] = [{"data_type": "Float32", "data_range": [0, 2]}]
    return levels


def test_nine_alias_hops_are_followed_and_the_tenth_is_a_loop():
    assert scaling_parameters([levels_band(**chain(9))], None, None, "l0") == ([None], "Float32")
    with pytest.raises(ScalingError, match="loop"):
        scaling_parameters([levels_band(**chain(10))], None, None, "l0")
    with pytest.raises(ScalingError, match="loop"):
        scaling_parameters([levels_band(a="b", b="a")], None, None, "a")


def test_alias_to_a_missing_level_is_an_error_only_when_followed():
    band = levels_band(default=[], toa="gone")
    with pytest.raises(ScalingError, match="dangling alias 'gone'"):
        scaling_parameters([band], None, None, "toa")
    assert scaling_parameters([band]) == ([None], "UInt16")


def test_alias_levels_are_accepted_by_the_band_model():
    band = Band(
        name="red",
        processing_levels={
            "default": "toa_reflectance",
            "toa_reflectance": [ProcessingStep(data_type="Float32", data_range=(0, 1))],
        },
    )
    assert band.processing_levels["default"] == "toa_reflectance"
    assert scaling_parameters([band], "display") == ([(0.0, 1.0, 0, 255)], "Byte")
    with pytest.raises(ValueError):
        Band(name="red", processing_levels={"default": ""})


# The reference client's slips: tileserver does what it evidently intends.


@pytest.mark.parametrize(
    "types", [["UInt32", "Float32"], ["Float32", "UInt32"], ["Int16", "UInt32"]]
)
def test_reference_slip_upcast_table_uint32_and_float32_meet_in_float64(types):
    # the client's table spells ("Float64") as a string for UInt32 and Float32: it finds 'F'
    # by letters, or nothing, or crashes; both types upcast to Float64 alone
    bands = [spectral(f"b{i}", t) for i, t in enumerate(types)]
    assert scaling_parameters(bands) == ([None, None], "Float64")
    assert scaling_parameters(bands, "raw") == ([None, None], "Float64")


def test_reference_slip_physical_range_without_data_range():
    # the client joins the default data_range (a list) to the physical_range (a tuple): a
    # TypeError; the intent is the default data range mapped onto the physical range
    band = {"name": "b", "physical_range": (0.0, 1.0)}
    assert scaling_parameters([band], "physical") == ([(0, 10000, 0.0, 1.0)], "Float64")
    step = levels_band("s", toa=[{"physical_range": [0.0, 100.0]}])
    assert scaling_parameters([step], "physical", None, "toa") == (
        [(0.0, 1.0, 0.0, 100.0)],
        "Float64",
    )


@pytest.mark.parametrize(
    "scaling, match",
    [
        ([], "0 entries for 4 bands"),  # the client: UnboundLocalError
        ([7, None, None, None], "Invalid scaling 7"),  # the client: AttributeError
    ],
)
def test_reference_slip_crashes_are_clear_errors(scaling, match):
    with pytest.raises(ScalingError, match=match):
        scaling_parameters(RGBA, scaling)


def test_reference_slip_incompatible_products_beyond_the_band_count_are_clear_errors():
    # the client names the band by the product's index: with more products than bands its
    # message raises IndexError; the intent is the incompatibility error
    products = {
        "a": [rgb_band("red")],
        "b": [rgb_band("red")],
        "c": [spectral("red", data_range=[0, 10000], physical_range=[0, 2])],
    }
    with pytest.raises(ScalingError, match="incompatible scales for band 'red'.*'a'.*'c'"):
        multiproduct_scaling_parameters(products, ["red"], "physical")
