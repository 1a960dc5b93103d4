"""Colours: custom colormaps from a request, colour formulas, and legend pictures.

- A custom colormap is titiler's `colormap` JSON: `{"<value>": [r, g, b(, a)] or "#rrggbb"}`
  (discrete values), or `[[[lo, hi], [r, g, b, a]], ...]` (intervals, lo included, hi not).
- A colour formula is rio-color's syntax (`gamma rgb 1.5, sigmoidal rgb 10 0.15,
  saturation 1.2`), applied by the color-operations package as rio-tiler does, to Byte
  output only (its operations work on 0..1 reflectance-like values).
- Legends are PNG pictures drawn with Pillow: a colour bar with the value range under it,
  or one swatch and label per class of a class band.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from io import BytesIO

import numpy
from color_operations import parse_operations
from color_operations.utils import scale_dtype, to_math_type
from PIL import Image as PILImage
from PIL import ImageDraw
from rio_tiler.colormap import cmap

from tileserver.catalog.geojson import loads_bounded
from tileserver.render.errors import RenderError

MAX_COLORMAP_ENTRIES = 256  # discrete values or intervals in a request's colormap
MAX_COLORMAP_LENGTH = 20_000  # characters of colormap JSON
MAX_COLORMAP_KEY = 2**53  # beyond it a float band's value and the key no longer compare exactly
MAX_COLOR_FORMULA_LENGTH = 256
MAX_COLOR_OPERATIONS = 16
MAX_LEGEND_SIZE = 2048  # pixels of a legend's longer side
MAX_LEGEND_CLASSES = 64
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$")
_OPERATION = re.compile(r"\b(gamma|sigmoidal|saturation)\b", re.IGNORECASE)


# colours from black to white in every mix: what check_color_formula tries a formula on
PROBE = (numpy.arange(48, dtype=numpy.uint16) * 5).astype(numpy.uint8).reshape(3, 4, 4)


class ColorError(RenderError):
    """A colormap, formula or legend request that cannot be honoured (a 400)."""


def colormap_names() -> list[str]:
    """The names `colormap_name` takes: rio-tiler's colormaps."""
    return sorted(cmap.list())


def _color(value, what: str) -> tuple[int, int, int, int]:
    """[r, g, b], [r, g, b, a] (0..255) or "#rrggbb[aa]" as an RGBA tuple."""
    if isinstance(value, str):
        found = _HEX.match(value.strip())
        if not found:
            raise ColorError(f"{what}: '{value}' is not a #rrggbb colour")
        text = found.group(1) + (found.group(2) or "ff")
        return tuple(int(text[i : i + 2], 16) for i in range(0, 8, 2))
    if (
        isinstance(value, list)
        and len(value) in (3, 4)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return tuple(value) + ((255,) if len(value) == 3 else ())
    raise ColorError(f"{what}: a colour is [r, g, b], [r, g, b, a] (0..255) or '#rrggbb'")


def parse_colormap(text: str) -> dict | list:
    """titiler's `colormap` JSON as rio-tiler's colormap (dict) or intervals (list)."""
    if len(text) > MAX_COLORMAP_LENGTH:
        raise ColorError(f"colormap has more than {MAX_COLORMAP_LENGTH} characters")
    try:
        value = loads_bounded(text, "colormap", 4)
    except ValueError as exc:
        raise ColorError(str(exc)) from None
    if not isinstance(value, dict | list) or not value or len(value) > MAX_COLORMAP_ENTRIES:
        raise ColorError(
            f"colormap is a JSON object of value -> colour or a list of [[lo, hi], colour] "
            f"intervals, 1..{MAX_COLORMAP_ENTRIES} entries"
        )
    if isinstance(value, dict):
        result = {}
        for key, color in value.items():
            try:
                number = int(key)
            except ValueError:
                raise ColorError(f"colormap key '{key}' is not an integer value") from None
            if abs(number) > MAX_COLORMAP_KEY:
                raise ColorError(f"colormap key '{key}' is not an integer within +-2**53")
            if number in result:  # "1" and "01": one would silently win
                raise ColorError(f"colormap key '{key}' names the value {number} twice")
            result[number] = _color(color, f"colormap entry '{key}'")
        return result
    intervals = []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            raise ColorError("a colormap interval is [[lo, hi], colour]")
        bounds = entry[0]
        if len(bounds) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bounds
        ):
            raise ColorError("a colormap interval's bounds are two numbers [lo, hi]")
        if not bounds[0] < bounds[1]:
            raise ColorError("a colormap interval needs lo < hi")
        color = _color(entry[1], "colormap interval")
        intervals.append(((float(bounds[0]), float(bounds[1])), color))
    return intervals


def check_color_formula(formula: str) -> None:
    """ColorError when a formula is too long or not rio-color's syntax."""
    if len(formula) > MAX_COLOR_FORMULA_LENGTH:
        raise ColorError(f"color_formula has more than {MAX_COLOR_FORMULA_LENGTH} characters")
    if len(_OPERATION.findall(formula)) > MAX_COLOR_OPERATIONS:
        raise ColorError(f"color_formula has more than {MAX_COLOR_OPERATIONS} operations")
    try:
        operations = parse_operations(formula)
    except Exception as exc:  # color-operations raises ValueError / AttributeError
        raise ColorError(
            f"color_formula '{formula}' is not valid (e.g. 'gamma rgb 1.5, sigmoidal rgb 10 "
            f"0.15, saturation 1.2'): {exc}"
        ) from None
    if not operations:
        raise ColorError(f"color_formula '{formula}' has no operation")
    for token in re.split(r"[\s,]+", formula):
        try:
            number = float(token)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise ColorError(f"color_formula '{formula}': '{token}' is not a finite number")
    # a probe: parameters color-operations cannot compute with (saturation 1e300) fail here,
    # when a request or a preset is parsed, rather than on its first tile
    try:
        with numpy.errstate(all="ignore"):
            _operate(PROBE, formula)
    except OPERATION_ERRORS as exc:
        raise ColorError(f"color_formula '{formula}' cannot be computed: {exc}") from None


def apply_color_formula(data: numpy.ndarray, formula: str) -> numpy.ndarray:
    """Byte (bands, y, x) through the formula's operations (as rio-tiler's ImageData does).

    Saturation needs three bands (RGB); gamma and sigmoidal name the bands they change
    (r, g, b: bands 1..3).
    """
    if data.dtype != numpy.uint8:
        raise ColorError(
            "color_formula applies to Byte output: add scaling (e.g. scaling=display) or "
            "data_type=Byte"
        )
    try:
        return _operate(data, formula)
    except OPERATION_ERRORS as exc:
        raise ColorError(
            f"color_formula '{formula}' cannot apply to {data.shape[0]} band(s): {exc}"
        ) from None


# what color-operations raises when a formula's parameters do not suit the pixels
OPERATION_ERRORS = (ValueError, IndexError, TypeError, ArithmeticError)


def _operate(data: numpy.ndarray, formula: str) -> numpy.ndarray:
    """Byte pixels through the formula's operations; color-operations' own exceptions."""
    out = data
    for operation in parse_operations(formula):
        out = scale_dtype(operation(to_math_type(out)), numpy.uint8)
    return numpy.asarray(out, dtype=numpy.uint8)


# ----------------------------------------------------------------------------- legends


def _png(image: PILImage.Image) -> bytes:
    out = BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _label(value: float) -> str:
    return f"{value:.6g}"


def colorbar_png(colormap: dict, lo: float, hi: float, width: int = 256, height: int = 40) -> bytes:
    """A horizontal colour bar of a 256-entry colormap, `lo` at the left edge and `hi` at the
    right one written under it. The bar is the top 60 % of the picture, at least 1 pixel."""
    if not (16 <= width <= MAX_LEGEND_SIZE and 16 <= height <= MAX_LEGEND_SIZE):
        raise ColorError(f"legend width and height must be 16..{MAX_LEGEND_SIZE} pixels")
    table = numpy.zeros((256, 4), dtype="uint8")
    for value, color in colormap.items():
        if 0 <= int(value) <= 255:
            table[int(value)] = tuple(color) + (255,) * (4 - len(color))
    columns = numpy.floor(numpy.linspace(0, 255, width)).astype(int)
    bar = max(1, int(height * 0.6))
    pixels = numpy.zeros((height, width, 4), dtype="uint8")
    pixels[:bar] = table[columns][numpy.newaxis]
    pixels[bar:] = (255, 255, 255, 255)
    image = PILImage.fromarray(pixels, "RGBA")
    draw = ImageDraw.Draw(image)
    low, high = _label(lo), _label(hi)
    draw.text((1, bar + 1), low, fill=(0, 0, 0, 255))
    right = draw.textlength(high)
    draw.text((max(0, width - right - 1), bar + 1), high, fill=(0, 0, 0, 255))
    return _png(image)


def class_legend_png(
    entries: Sequence[tuple[float, str | None, tuple[int, ...]]], width: int = 240
) -> bytes:
    """One row per class: a swatch of its colour, its value and label."""
    if not entries:
        raise ColorError("the band has no classes to draw")
    if len(entries) > MAX_LEGEND_CLASSES:
        raise ColorError(f"more than {MAX_LEGEND_CLASSES} classes to draw")
    if not 64 <= width <= MAX_LEGEND_SIZE:
        raise ColorError(f"legend width must be 64..{MAX_LEGEND_SIZE} pixels")
    row = 18
    image = PILImage.new("RGBA", (width, row * len(entries) + 2), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, (value, label, color) in enumerate(entries):
        top = 1 + i * row
        draw.rectangle((2, top + 1, 17, top + row - 2), fill=tuple(color), outline=(0, 0, 0))
        text = _label(value) + (f" {label}" if label else "")
        draw.text((22, top + 3), text, fill=(0, 0, 0, 255))
    return _png(image)
