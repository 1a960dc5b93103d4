"""Band scaling on the server: a request's `scaling` parsed once (`Scaling.parse`, bounded),
and `scale_array`, which applies the scales that `tileserver.scaling_rules` (the Catalog's
rules, shared with the Python client) computed to pixels. Both are pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tileserver.catalog.geojson import loads_bounded
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY
from tileserver.scaling_rules import (
    AUTO_OUTPUT,
    MODES,
    TYPE_RANGES,
    Scale,
    ScalingEntry,
    ScalingError,
    ScalingForm,
    canonical_type,
    is_float_type,
)

# What one request may say: a product has a few dozen bands at most, each band named is one
# more read, and `scaling` is one entry per band.
MAX_SCALING_ENTRIES = 64
MAX_SCALING_VALUES = 4  # lo,hi or lo,hi,outlo,outhi
MAX_SCALING_DEPTH = 2  # a JSON scaling is an object of band name -> list of numbers


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


@dataclass(frozen=True)
class Scaling:
    """A request's `scaling`, parsed and checked once (`parse`); `form` is what
    scaling_parameters takes, whose rules then hold it against the bands.

    Equal scalings compare equal, so they serve as (part of) cache keys.
    """

    form: ScalingForm = None

    @classmethod
    def parse(cls, values: Sequence[str] | None) -> Scaling:
        """The `scaling` query parameter: once for all bands, once per band, or a JSON object.

        One mode applies to every band; one tuple is repeated for every band; several values
        give one entry per band; `{"B04": [0, 3000], "default_": "display"}` maps band names
        to entries. ScalingError names what is wrong.
        """
        if not values:
            return cls()
        if len(values) > MAX_SCALING_ENTRIES:
            raise ScalingError(
                f"scaling has {len(values)} entries, more than {MAX_SCALING_ENTRIES} (one per band)"
            )
        if len(values) == 1 and values[0].lstrip().startswith("{"):
            return cls(_parse_mapping(values[0]))
        entries = [parse_scaling_entry(v) for v in values]
        return cls(entries[0] if len(entries) == 1 else entries)


def _parse_mapping(text: str) -> dict[str, ScalingEntry]:
    """A JSON scaling: an object of band name (or `default_`) -> entry."""
    try:
        mapping = loads_bounded(text, "scaling JSON", MAX_SCALING_DEPTH)
    except ValueError as exc:
        raise ScalingError(
            f"{exc}: it is an object of band name -> entry, e.g. "
            '{"B04": [0, 3000], "default_": "display"}'
        ) from None
    if not isinstance(mapping, dict):
        raise ScalingError("scaling JSON must be an object of band name -> entry")
    if len(mapping) > MAX_SCALING_ENTRIES + 1:
        raise ScalingError(
            f"scaling JSON has {len(mapping)} entries, more than {MAX_SCALING_ENTRIES} bands "
            "and default_"
        )
    return {key: tuple(v) if isinstance(v, list) else v for key, v in mapping.items()}


def parse_scaling_entry(text: str) -> ScalingEntry:
    """One scaling entry: a mode, `none`, or comma-separated numbers / percents."""
    text = text.strip()
    if text.lower() in ("", "none", "null"):
        return None
    if text.lower() in MODES:
        return text.lower()
    parts = text.strip("()[]").split(",")
    if len(parts) > MAX_SCALING_VALUES:
        raise ScalingError(
            f"scaling entry has {len(parts)} values, more than {MAX_SCALING_VALUES}: "
            "an entry is lo,hi or lo,hi,outlo,outhi"
        )
    items = []
    for item in parts:
        item = item.strip()
        try:
            items.append(f"{_number(item[:-1])}%" if item.endswith("%") else _number(item))
        except ValueError:
            raise ScalingError(
                f"scaling entry '{text}': '{item}' is neither a number nor a percent like 2%; "
                f"an entry is one of {', '.join(MODES)} or lo,hi or lo,hi,outlo,outhi"
            ) from None
    return tuple(items)


def _stretch(values: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Map in_lo..in_hi linearly onto out_lo..out_hi; a flat input range maps to out_lo."""
    in_lo, in_hi, out_lo, out_hi = (float(v) for v in scale)
    if in_hi == in_lo:
        return np.full_like(values, out_lo)
    return (values - in_lo) / (in_hi - in_lo) * (out_hi - out_lo) + out_lo


def scale_array(
    data: np.ndarray,
    scales: Sequence[Scale] | None,
    data_type: str,
    auto_ranges: Sequence[Sequence[float] | None] | None = None,
) -> np.ndarray:
    """Apply `scales` to a (bands, rows, cols) array and return a new array of `data_type`.

    Computes in float64, clips to the scale's output range and to the integer type's limits,
    rounds half up for integer outputs (as GDAL does). Masked (and NaN) pixels are left out of
    auto ranges and come out as 0. `auto_ranges[i]` (lo, hi) replaces band i's own min..max for
    `()` scales, so that neighbouring tiles of one image get the same stretch.
    """
    data_type = canonical_type(data_type, "data_type")
    values = np.ma.getdata(data)
    if values.ndim != 3:
        raise ValueError(f"scale_array needs a (bands, rows, cols) array, got {values.shape}")
    count = values.shape[0]
    invalid = np.ma.getmaskarray(data)
    if np.issubdtype(values.dtype, np.floating):
        invalid = invalid | np.isnan(values)
    if scales is None:
        scales = [None] * count
    if len(scales) != count:
        raise ScalingError(f"{len(scales)} scales for {count} bands")
    if auto_ranges is not None and len(auto_ranges) != count:
        raise ScalingError(f"{len(auto_ranges)} auto ranges for {count} bands")

    is_int = not is_float_type(data_type)
    out = np.zeros(values.shape, dtype=DATA_TYPE_TO_NUMPY[data_type])
    for i, scale in enumerate(scales):
        valid = ~invalid[i]
        band = values[i].astype(np.float64)
        if scale is None:
            result, bounds = band, None
        else:
            if len(scale) == 0:
                given = auto_ranges[i] if auto_ranges is not None else None
                if given is not None:
                    in_lo, in_hi = given
                elif valid.any():
                    in_lo, in_hi = band[valid].min(), band[valid].max()
                else:
                    continue  # nothing valid to stretch: all 0
                scale = (in_lo, in_hi, *AUTO_OUTPUT)
            elif len(scale) != 4:
                raise ScalingError(f"Invalid scale {scale!r} for band {i}")
            result = _stretch(band, scale)
            bounds = sorted((float(scale[2]), float(scale[3])))
        with np.errstate(invalid="ignore", over="ignore"):
            if bounds is not None:
                result = np.clip(result, *bounds)
            if is_int:
                result = np.clip(np.floor(result + 0.5), *TYPE_RANGES[data_type])
            out[i][valid] = result[valid].astype(out.dtype)
    return out
