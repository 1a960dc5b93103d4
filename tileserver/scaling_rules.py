"""The Descartes Labs Catalog's `scaling` / `data_type` rules (SEMANTICS.md section 1), pure.

`scaling_parameters` turns a `scaling` and `data_type` into one GDAL-style scale per band plus
the output data type; `multiproduct_scaling_parameters` does the same over several products;
`level_steps` resolves a band's processing level (aliases followed). Shared by the server
(`render/pipeline.py` parses requests and applies the scales to pixels) and the Python client
(`tileserver.client` computes `scaling_parameters` without asking the server), so it imports
nothing beyond the standard library. The rules agree case for case with the Catalog's
reference client, except where that client slips (tests/render/test_scaling.py names each).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Ordered smallest first (unsigned before signed, integer before float): the first type that
# fits wins wherever a "smallest type" is chosen.
DATA_TYPES = ("Byte", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")

# Types each type can be upcast to without loss (as in the Catalog; Int32 -> Float32 included).
UPCASTS: dict[str, tuple[str, ...]] = {
    "Byte": ("UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64"),
    "UInt16": ("UInt32", "Int32", "Float32", "Float64"),
    "Int16": ("Int32", "Float32", "Float64"),
    "UInt32": ("Float64",),
    "Int32": ("Float32", "Float64"),
    "Float32": ("Float64",),
    "Float64": (),
}

# Integer types: their limits. Float types: the default output range, not their limits.
TYPE_RANGES: dict[str, tuple[int | float, int | float]] = {
    "Byte": (0, 255),
    "UInt16": (0, 65535),
    "Int16": (-32768, 32767),
    "UInt32": (0, 4294967295),
    "Int32": (-2147483648, 2147483647),
    "Float32": (0.0, 1.0),
    "Float64": (0.0, 1.0),
}

MODES = ("raw", "auto", "display", "physical")
UNSCALED_BAND_TYPES = ("mask", "class")
DEFAULT_KEY = "default_"
MAX_ALIAS_HOPS = 10  # the 10th hop through processing-level aliases is a loop
# Levels a band without processing levels may be asked for (they mean "as stored").
LEGACY_LEVELS = ("default", "toa", "surface")
# GDAL's upper display output: float outputs then truncate to 255 at most.
DISPLAY_OUTPUT = (0.0, 255.99)
AUTO_OUTPUT = (0, 255)


Scale = tuple[()] | tuple[float, float, float, float] | None
# A `scaling` as the Catalog's client takes it: an entry is a mode, None, or a tuple of 0, 2
# or 4 numbers or percents ("2%"); the whole is one entry for every band, a list of one entry
# per band, or a mapping of band name (or `default_`) to entry. Its validation against the
# bands is scaling_parameters'.
ScalingEntry = str | tuple[float | str, ...] | None
ScalingForm = ScalingEntry | list[ScalingEntry] | Mapping[str, ScalingEntry]


class ScalingError(ValueError):
    """An invalid `scaling`, `data_type` or mix of modes; the message names the band."""


@dataclass(frozen=True)
class _Band:
    label: str
    name: str | None
    type: str
    data_type: str
    data_range: tuple
    display_range: tuple
    physical_range: tuple


@dataclass(frozen=True)
class _Spec:
    """One band's parsed entry; `implied` modes are guesses that may conflict without error."""

    band: _Band
    kind: str  # "none", "mode" or "tuple"
    mode: str | None = None
    implied: bool = True
    items: tuple = ()
    is_pct: tuple = ()


def _field(obj: Any, key: str) -> Any:
    """Read `key` from a dict or a model, None when missing."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def canonical_type(value: Any, what: str) -> str:
    """The canonical spelling of a data type name, accepting any case."""
    if isinstance(value, str):
        for name in DATA_TYPES:
            if value.strip().lower() == name.lower():
                return name
    raise ScalingError(f"Invalid {what} {value!r}: must be one of {', '.join(DATA_TYPES)}")


def is_float_type(data_type: str) -> bool:
    """Float types scale to float outputs (no rounding, no integer limits)."""
    return data_type.startswith("Float")


def _range(value: Any, data_type: str | None, label: str, what: str) -> tuple | None:
    """A [lo, hi] range as a tuple of Python numbers.

    Ranges in data units (`data_type` given) get ints for integer types and floats for float
    types: models store every range as floats, which would otherwise imply a float output.
    """
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    try:
        lo, hi = value
        pair = tuple(int(v) if isinstance(v, numbers.Integral) else float(v) for v in (lo, hi))
    except (TypeError, ValueError):
        raise ScalingError(f"Invalid {what} {value!r} for band '{label}'") from None
    if data_type is None:
        return pair
    if is_float_type(data_type):
        return tuple(float(v) for v in pair)
    return tuple(int(v) if float(v).is_integer() else v for v in pair)


def level_steps(levels: Mapping | None, level: str | None) -> Sequence | None:
    """The steps of `level` (the `default` level when None), following aliases.

    A level's value may be another level's name; the 10th hop is a loop and an alias naming
    no level is dangling, both ScalingErrors (the band's definition is broken). A level the
    band does not have is None: the band stays as stored.
    """
    name = level or "default"
    value = (levels or {}).get(name)
    hops = 0
    while isinstance(value, str):
        hops += 1
        if hops >= MAX_ALIAS_HOPS:
            raise ScalingError(f"Processing levels contain an alias loop at '{name}'")
        name = value
        value = levels.get(name)
        if value is None:
            raise ScalingError(f"Processing levels contain a dangling alias '{name}'")
    return value


def _floats(value: Any, label: str, what: str) -> tuple | None:
    """A processing step's range: floats whatever the step's data type (as the Catalog)."""
    pair = _range(value, None, label, what)
    return None if pair is None else tuple(float(v) for v in pair)


def _band_properties(band: Any, index: int, processing_level: str | None) -> _Band:
    """A band's type, data type and ranges, with defaults and the processing level applied."""
    name = _field(band, "name")
    label = name if name is not None else f"#{index}"
    kind = _field(band, "type")
    band_type = str(getattr(kind, "value", kind) or "spectral").lower()
    raw_type = _field(band, "data_type")
    data_type = "UInt16" if raw_type is None else canonical_type(raw_type, f"band '{label}' type")
    data_range = _range(_field(band, "data_range"), data_type, label, "data_range") or (0, 10000)
    display_range = _range(_field(band, "display_range"), data_type, label, "display_range")
    physical_range = _range(_field(band, "physical_range"), None, label, "physical_range")

    levels = _field(band, "processing_levels")
    if not levels:
        if (
            processing_level
            and processing_level not in LEGACY_LEVELS
            and band_type not in UNSCALED_BAND_TYPES
        ):
            raise ScalingError(f"Unknown processing_level '{processing_level}' for band '{label}'")
    else:
        steps = level_steps(levels, processing_level)
        if steps:
            # The last step gives the band's final form; "dlsr" keeps the stored definitions.
            step = steps[-1]
            if _field(step, "function") != "dlsr":
                step_type = _field(step, "data_type")
                data_type = (
                    "Float64"
                    if step_type is None
                    else canonical_type(step_type, f"band '{label}' type")
                )
                data_range = _floats(_field(step, "data_range"), label, "data_range") or _range(
                    TYPE_RANGES[data_type], data_type, label, "data_range"
                )
                display_range = _floats(_field(step, "display_range"), label, "display_range")
                physical_range = _floats(_field(step, "physical_range"), label, "physical_range")
    return _Band(
        label=label,
        name=name,
        type=band_type,
        data_type=data_type,
        data_range=data_range,
        display_range=display_range or data_range,
        physical_range=physical_range or data_range,
    )


def _item(value: Any, label: str) -> tuple[int | float, bool]:
    """A tuple item as (number, is_percent); numeric strings are accepted as they come from URLs."""
    bad = ScalingError(
        f"Invalid scaling value {value!r} for band '{label}': not a number or a "
        "percentage string like '2%'"
    )
    if isinstance(value, bool):
        raise bad
    if isinstance(value, numbers.Integral):
        return int(value), False
    if isinstance(value, numbers.Real):
        number = float(value)
        pct = False
    elif isinstance(value, str):
        text = value.strip()
        pct = text.endswith("%")
        if pct:
            text = text[:-1].strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise bad from None
        if pct:
            number = float(number)
    else:
        raise bad
    if not math.isfinite(number):
        raise bad
    return number, pct


def check_entry(entry: Any, label: str) -> None:
    """ScalingError when `entry` could scale no band (a bad mode, a tuple of 3 items, a
    value that is not a number): what a request or a preset says is refused when it is
    parsed, not on the first tile of a band that uses it."""
    _parse_entry(_Band(label, label, "spectral", "UInt16", (), (), ()), entry)


def _parse_entry(band: _Band, entry: Any) -> _Spec:
    """Parse one band's scaling entry; the mode of a mask or class band is only a weak hint."""
    if entry is None:
        return _Spec(band, "none")
    if isinstance(entry, str):
        mode = entry.strip().lower()
        if mode not in MODES:
            raise ScalingError(
                f"Invalid scaling mode {entry!r} for band '{band.label}': "
                f"must be one of {', '.join(MODES)}"
            )
        if band.type in UNSCALED_BAND_TYPES:
            return _Spec(band, "none", mode=mode, implied=True)
        return _Spec(band, "mode", mode=mode, implied=False)
    if isinstance(entry, (list, tuple)):
        if len(entry) not in (0, 2, 4):
            raise ScalingError(
                f"Invalid scaling tuple {entry!r} for band '{band.label}': "
                "must have 0, 2 or 4 items"
            )
        parsed = [_item(v, band.label) for v in entry]
        items = tuple(v for v, _ in parsed)
        is_pct = tuple(p for _, p in parsed)
        if not items:
            mode = "auto"
        elif len(items) == 2:
            mode = "display"
        elif not (is_pct[2] and is_pct[3]):
            mode = "physical"
        else:
            mode = None  # percent outputs say nothing about the mode
        return _Spec(band, "tuple", mode=mode, implied=True, items=items, is_pct=is_pct)
    raise ScalingError(
        f"Invalid scaling {entry!r} for band '{band.label}': "
        "must be None, a mode string or a tuple of 0, 2 or 4 items"
    )


def _entries(props: list[_Band], scaling: ScalingForm) -> list[Any]:
    """One raw scaling entry per band, from a mode string, a sequence or a mapping."""
    if isinstance(scaling, str):
        return [scaling] * len(props)
    if isinstance(scaling, Mapping):
        # keys naming bands not requested are ignored: clients keep one mapping for many lists
        entries = []
        for p in props:
            if p.name in scaling:
                entries.append(scaling[p.name])
            elif p.type in UNSCALED_BAND_TYPES:
                entries.append(None)
            else:
                entries.append(scaling.get(DEFAULT_KEY))
        return entries
    if isinstance(scaling, (list, tuple)):
        if len(scaling) != len(props):
            raise ScalingError(f"Invalid scaling: {len(scaling)} entries for {len(props)} bands")
        return list(scaling)
    raise ScalingError(f"Invalid scaling {scaling!r}: unsupported type {type(scaling).__name__}")


def _combined_mode(specs: list[_Spec], implied: bool) -> str | None:
    """The mode all explicit (or all implied) specs agree on; auto and display mix as display.

    Explicit conflicts are the caller's error; implied conflicts just leave no mode.
    """
    mode = None
    for spec in specs:
        if spec.mode is None or spec.implied != implied:
            continue
        if mode is None or spec.mode == mode:
            mode = spec.mode
        elif {mode, spec.mode} <= {"auto", "display"}:
            mode = "display"
        elif implied:
            return None
        else:
            raise ScalingError(
                f"Conflicting scaling modes '{mode}' and '{spec.mode}' (band '{spec.band.label}')"
            )
    return mode


def _output_range(spec: _Spec) -> tuple:
    """What a spec would output before a mode is known, for choosing a type that holds it."""
    if spec.kind == "none":
        return spec.band.data_range
    if len(spec.items) == 4:
        return tuple(None if p else v for v, p in zip(spec.items[2:], spec.is_pct[2:], strict=True))
    return AUTO_OUTPUT


def _type_for_range(lo: float | None, hi: float | None, is_float: bool) -> str:
    """The smallest type whose range holds [lo, hi]; floats or beyond Int32 need Float64."""
    int32_lo, int32_hi = TYPE_RANGES["Int32"]
    if is_float or (lo is not None and lo < int32_lo) or (hi is not None and hi > int32_hi):
        return "Float64"
    for name in DATA_TYPES:
        type_lo, type_hi = TYPE_RANGES[name]
        if (lo is None or lo >= type_lo) and hi is not None and hi <= type_hi:
            return name
    return "Float64"


def _implied_data_type(specs: list[_Spec]) -> str | None:
    """The type holding every spec's output range; None when no output bound is known."""
    ranges = [_output_range(spec) for spec in specs]
    los = [lo for lo, _ in ranges if lo is not None]
    his = [hi for _, hi in ranges if hi is not None]
    if not los and not his:
        return None
    is_float = any(isinstance(v, float) for v in los + his)
    return _type_for_range(min(los) if los else None, max(his) if his else None, is_float)


def common_data_type(data_types: Sequence[str]) -> str:
    """The smallest type every one of `data_types` upcasts to (Int16 + UInt16 -> Int32)."""
    for candidate in DATA_TYPES:
        if all(t == candidate or candidate in UPCASTS[t] for t in data_types):
            return candidate
    return "Float64"


def _pct(value: float, is_pct: bool, bounds: tuple, is_float: bool) -> int | float:
    """Resolve a percent item against `bounds`; an integer side truncates (as the Catalog)."""
    if is_pct:  # multiply first: 29% of 0..100 is 29, where 29 / 100 * 100 is 28.999...
        value = value * (bounds[1] - bounds[0]) / 100.0 + bounds[0]
    return value if is_float else int(value)


def _resolve(spec: _Spec, mode: str, data_type: str) -> Scale:
    """The final scale of one band once the mode and the output type are known."""
    band = spec.band
    out_float = is_float_type(data_type)
    if spec.kind == "none":
        return None
    if spec.kind == "mode":
        if spec.mode == "raw":
            return None
        if spec.mode == "auto":
            return ()
        if spec.mode == "display":
            return (*band.display_range, 0, DISPLAY_OUTPUT[1] if out_float else 255)
        if tuple(band.data_range) == tuple(band.physical_range):
            return None  # physical == data: scaling would be a no-op
        return (*band.data_range, *band.physical_range)
    if not spec.items:
        return ()
    if mode == "raw":
        in_range, out_range = TYPE_RANGES[band.data_type], TYPE_RANGES[data_type]
    elif mode == "physical":
        in_range, out_range = band.data_range, band.physical_range
    else:
        in_range, out_range = band.display_range, DISPLAY_OUTPUT
    items, is_pct = spec.items, spec.is_pct
    if len(items) == 2:
        items, is_pct = (*items, *out_range), (*is_pct, False, False)
    in_float = is_float_type(band.data_type)
    return tuple(
        _pct(v, p, r, f)
        for v, p, r, f in zip(
            items,
            is_pct,
            (in_range, in_range, out_range, out_range),
            (in_float, in_float, out_float, out_float),
            strict=True,
        )
    )


def scaling_parameters(
    bands: Sequence[Any],
    scaling: ScalingForm = None,
    data_type: str | None = None,
    processing_level: str | None = None,
) -> tuple[list[Scale], str]:
    """Resolve a request's `scaling` and `data_type` into per-band scales and an output type.

    Returns (scales, data_type): one scale per band, each None (no scaling), () (auto: stretch
    min..max to 0..255) or (in_lo, in_hi, out_lo, out_hi); and the canonical output type name.
    Raises ScalingError for anything invalid, so an API can answer 400 with its message.
    """
    if not bands:
        raise ScalingError("No bands to scale")
    return _scaling([("", list(bands))], scaling, data_type, processing_level)


def multiproduct_scaling_parameters(
    products: Mapping[str, Sequence[Any]],
    names: Sequence[str],
    scaling: ScalingForm = None,
    data_type: str | None = None,
    processing_level: str | None = None,
) -> tuple[list[Scale], str]:
    """`scaling_parameters` for one request over several products (a mosaic, a stack).

    `products` maps a product id to its bands; each of `names` is looked up in every product.
    The output type holds every product's band of that name (Int16 and UInt16 give Int32);
    a name missing from a product, or scales that differ between products, are ScalingErrors.
    """
    if not names:
        raise ScalingError("No bands to scale")
    groups = []
    for product_id, bands in products.items():
        by_name = {_field(b, "name"): b for b in bands}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ScalingError(
                f"Invalid bands: band '{missing[0]}' is not available in product '{product_id}'"
            )
        groups.append((product_id, [by_name[n] for n in names]))
    if not groups:
        raise ScalingError("No products to scale")
    return _scaling(groups, scaling, data_type, processing_level)


def _scaling(
    groups: list[tuple[str, list[Any]]],
    scaling: Any,
    data_type: str | None,
    processing_level: str | None,
) -> tuple[list[Scale], str]:
    """The rules over (product id, bands) groups of the same band names: one answer for all."""
    props = [[_band_properties(b, i, processing_level) for i, b in enumerate(g)] for _, g in groups]
    every = [p for group in props for p in group]
    if data_type is not None:
        data_type = canonical_type(data_type, "data_type")

    if scaling is None:
        return [None] * len(props[0]), data_type or common_data_type([p.data_type for p in every])

    specs = [
        [_parse_entry(p, e) for p, e in zip(group, _entries(group, scaling), strict=True)]
        for group in props
    ]
    all_specs = [spec for group in specs for spec in group]

    mode = _combined_mode(all_specs, implied=False)
    if mode is None and data_type is None:
        mode = _combined_mode(all_specs, implied=True)
        if mode is None:
            data_type = _implied_data_type(all_specs)
            if data_type is None:
                raise ScalingError(
                    "Invalid scaling: cannot determine the output data type or mode; "
                    "give data_type or a scaling mode"
                )

    if mode is None:
        if data_type == "Byte":
            mode = "display"
        elif is_float_type(data_type):
            mode = "physical"
        else:
            mode = "raw"
    elif data_type is None:
        if mode == "raw":
            data_type = common_data_type([p.data_type for p in every])
        elif mode == "physical":
            data_type = "Float64"
        else:
            data_type = "Byte"

    scales = [[_resolve(s, mode, data_type) for s in group] for group in specs]
    for (product_id, _), other in zip(groups[1:], scales[1:], strict=True):
        for spec, first, scale in zip(specs[0], scales[0], other, strict=True):
            if scale != first:
                raise ScalingError(
                    f"Invalid scaling: incompatible scales for band '{spec.band.label}' in "
                    f"products '{groups[0][0]}' ({first}) and '{product_id}' ({scale})"
                )
    return scales[0], data_type
