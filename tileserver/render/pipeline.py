"""From read pixels to the bytes a client asked for: processing level, band math, scaling,
colour, encoding.

Pure functions over `ImageData` and numpy arrays; the API parses parameters into
`RenderParams` (with its `Scaling`) once. As rio-tiler's `ImageData.render`, the last step
encodes: png / jpeg / webp / tif / npy, refusing what a format cannot hold.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from typing import Any, Literal

import numpy
from affine import Affine
from PIL import Image as PILImage
from rasterio.crs import CRS
from rio_tiler.colormap import apply_cmap
from rio_tiler.errors import InvalidExpression
from rio_tiler.expression import apply_expression, validate_expression
from rio_tiler.models import ImageData
from rio_tiler.utils import render

from tileserver.catalog.geojson import loads_bounded
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, BandStatistics, Product
from tileserver.limits import parenthesis_depth
from tileserver.metrics import timed
from tileserver.render.colors import apply_color_formula
from tileserver.render.errors import RenderError, UnknownBand
from tileserver.render.reader import resolve_bands
from tileserver.render.zonal import CLOUDY_CLASSES, is_scl
from tileserver.scaling_rules import (
    AUTO_OUTPUT,
    MODES,
    TYPE_RANGES,
    Scale,
    ScalingEntry,
    ScalingError,
    ScalingForm,
    canonical_type,
    check_entry,
    is_float_type,
    level_steps,
    multiproduct_scaling_parameters,
    scaling_parameters,
)

# Band scaling on the server: a request's `scaling` parsed once (`Scaling.parse`, bounded),
# and `scale_array`, which applies the scales that `tileserver.scaling_rules` (the Catalog's
# rules, shared with the Python client) computed to pixels. Both are pure.

# What one request may say: a product has a few dozen bands at most, each band named is one
# more read, and `scaling` is one entry per band.
MAX_SCALING_ENTRIES = 64
MAX_SCALING_VALUES = 4  # lo,hi or lo,hi,outlo,outhi
MAX_SCALING_DEPTH = 2  # a JSON scaling is an object of band name -> list of numbers


def _number(text: str) -> float | int:
    value = float(text)
    if not math.isfinite(value):  # nan is not equal to itself: no cache key, no preset
        raise ValueError(text)
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
            mapping = _parse_mapping(values[0])
            for name, entry in mapping.items():
                check_entry(entry, name)
            return cls(mapping)
        entries = [parse_scaling_entry(v) for v in values]
        for position, entry in enumerate(entries, start=1):
            check_entry(entry, f"#{position}")
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
                f"scaling entry '{text}': '{item}' is neither a finite number nor a percent "
                f"like 2%; an entry is one of {', '.join(MODES)} or lo,hi or lo,hi,outlo,outhi"
            ) from None
    return tuple(items)


def _stretch(values: numpy.ndarray, scale: Sequence[float]) -> numpy.ndarray:
    """Map in_lo..in_hi linearly onto out_lo..out_hi; a flat input range maps to out_lo."""
    in_lo, in_hi, out_lo, out_hi = (float(v) for v in scale)
    if in_hi == in_lo:
        return numpy.full_like(values, out_lo)
    return (values - in_lo) / (in_hi - in_lo) * (out_hi - out_lo) + out_lo


def scale_array(
    data: numpy.ndarray,
    scales: Sequence[Scale] | None,
    data_type: str,
    auto_ranges: Sequence[Sequence[float] | None] | None = None,
) -> numpy.ndarray:
    """Apply `scales` to a (bands, rows, cols) array and return a new array of `data_type`.

    Computes in float64, clips to the scale's output range and to the integer type's limits,
    rounds half up for integer outputs (as GDAL does). Masked (and NaN) pixels are left out of
    auto ranges and come out as 0. `auto_ranges[i]` (lo, hi) replaces band i's own min..max for
    `()` scales, so that neighbouring tiles of one image get the same stretch.
    """
    data_type = canonical_type(data_type, "data_type")
    values = numpy.ma.getdata(data)
    if values.ndim != 3:
        raise ValueError(f"scale_array needs a (bands, rows, cols) array, got {values.shape}")
    count = values.shape[0]
    invalid = numpy.ma.getmaskarray(data)
    if numpy.issubdtype(values.dtype, numpy.floating):
        invalid = invalid | numpy.isnan(values)
    if scales is None:
        scales = [None] * count
    if len(scales) != count:
        raise ScalingError(f"{len(scales)} scales for {count} bands")
    if auto_ranges is not None and len(auto_ranges) != count:
        raise ScalingError(f"{len(auto_ranges)} auto ranges for {count} bands")

    is_int = not is_float_type(data_type)
    out = numpy.zeros(values.shape, dtype=DATA_TYPE_TO_NUMPY[data_type])
    for i, scale in enumerate(scales):
        valid = ~invalid[i]
        band = values[i].astype(numpy.float64)
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
        with numpy.errstate(invalid="ignore", over="ignore"):
            if bounds is not None:
                result = numpy.clip(result, *bounds)
            if is_int:
                result = numpy.clip(numpy.floor(result + 0.5), *TYPE_RANGES[data_type])
            out[i][valid] = result[valid].astype(out.dtype)
    return out


# The pipeline

# The band an expression produces: a float whose ranges suit normalized differences
# such as NDVI; `scaling=lo,hi` adapts it to anything else.
EXPRESSION_BAND = {
    "type": "generic",
    "data_type": "Float64",
    "data_range": (-1.0, 1.0),
    "display_range": (-1.0, 1.0),
    "physical_range": (-1.0, 1.0),
}


# Band math limits, checked before Python's parser or numexpr see an expression: both recurse
# once per operator (3,000 chained terms overflow the stack), and each `;` output is one more
# full evaluation and output band.
MAX_EXPRESSION_LENGTH = 1024  # characters
MAX_EXPRESSION_OUTPUTS = 16  # `;`-separated outputs
MAX_EXPRESSION_TERMS = 256  # band names, numbers and operators, all outputs together
MAX_EXPRESSION_DEPTH = 32  # nested parentheses
_OPERAND = r"[A-Za-z_]\w*|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_EXPRESSION_TOKEN = re.compile(rf"{_OPERAND}|\*\*|//|[<>=!]=|<<|>>|[-+*/%<>&|~^]")


def check_expression(expression: str) -> None:
    """RenderError naming the limit when an expression is too long, deep or large to evaluate."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise RenderError(
            f"expression has {len(expression)} characters, more than {MAX_EXPRESSION_LENGTH}"
        )
    outputs = len(expression_blocks(expression))
    if outputs > MAX_EXPRESSION_OUTPUTS:
        raise RenderError(
            f"expression has {outputs} outputs (separated by ';'), more than "
            f"{MAX_EXPRESSION_OUTPUTS}"
        )
    terms = len(_EXPRESSION_TOKEN.findall(expression))
    if terms > MAX_EXPRESSION_TERMS:
        raise RenderError(
            f"expression has {terms} terms (band names, numbers, operators), more than "
            f"{MAX_EXPRESSION_TERMS}"
        )
    if parenthesis_depth(expression) > MAX_EXPRESSION_DEPTH:
        raise RenderError(f"expression nests parentheses deeper than {MAX_EXPRESSION_DEPTH}")


@dataclass(frozen=True)
class RenderParams:
    """Every parameter that changes pixels, parsed and validated once."""

    bands: tuple[str, ...] | None = None
    scaling: Scaling = Scaling()  # a bare tuple applies to every band
    data_type: str | None = None
    processing_level: str | None = None
    expression: str | None = None
    colormap: dict | list | None = field(default=None, compare=False)
    nodata: float | None = None
    resampling: str = "nearest"
    color_formula: str | None = None  # rio-color operations on Byte output (render/colors.py)
    # classes of a class band made transparent: BAND:classes, or the product's ("default")
    cloud_mask: CloudMask | Literal["default"] | None = None


@dataclass
class Rendered:
    """The output of the pipeline: data of the output type, and 0/255 validity."""

    data: numpy.ndarray
    mask: numpy.ndarray
    colormap: dict | None

    def image(self, crs: CRS, bounds, assets: list[str] | None = None, **extra: Any) -> ImageData:
        """The rendered pixels as rio-tiler's ImageData, ready for render.pipeline.encode_image.

        The 0/255 validity travels as `alpha_mask` (the encoders' alpha band, 0/255 in the
        output type) and as the array's mask; the colormap in `metadata["colormap"]`;
        `assets` and `extra` (added to the metadata) say what a mosaic read.
        """
        invalid = numpy.broadcast_to(self.mask == 0, self.data.shape)
        return ImageData(
            numpy.ma.MaskedArray(self.data, mask=invalid),
            crs=crs,
            bounds=tuple(bounds),
            alpha_mask=self.mask.astype(self.data.dtype),  # rio-tiler's rule: the data's type
            assets=assets,
            metadata={"colormap": self.colormap, **extra},
        )


# ----------------------------------------------------------------------------- cloud masks

MAX_CLOUD_CLASSES = 256
CLOUD_TAG = "cloud_mask:"  # a class band's tag declaring the product's cloud classes


@dataclass(frozen=True)
class CloudMask:
    """A class band and the classes of it that are cloud."""

    band: str
    classes: frozenset[int]
    source: str = "request"  # or "product": the product's declared default

    @classmethod
    def parse(cls, text: str) -> CloudMask:
        """`BAND:c1,c2,...`; RenderError naming `cloud_mask` when it is not that."""
        name, sep, listed = text.partition(":")
        if not sep or not name.strip() or not listed.strip():
            raise RenderError(
                f"cloud_mask '{text[:80]}' is not BAND:classes (e.g. SCL:3,8,9,10) nor 'default'"
            )
        return cls(name.strip(), _classes(listed, "cloud_mask"))


def _classes(listed: str, what: str) -> frozenset[int]:
    parts = [p.strip() for p in listed.split(",") if p.strip()]
    if len(parts) > MAX_CLOUD_CLASSES:
        raise RenderError(f"{what} names more than {MAX_CLOUD_CLASSES} classes")
    try:
        classes = frozenset(int(p) for p in parts)
    except ValueError:
        raise RenderError(f"{what} classes must be integers, e.g. SCL:3,8,9,10") from None
    if not classes:
        raise RenderError(f"{what} names no class")
    return classes


def product_cloud_mask(product: Product) -> CloudMask | None:
    """The cloud mask a product declares: a class band tagged `cloud_mask:c1,c2,...`, else a
    Sentinel-2 SCL class band with its cloudy classes (SEMANTICS.md section 3)."""
    for band in product.bands:
        for tag in band.tags:
            if band.type == "class" and tag.startswith(CLOUD_TAG):
                return CloudMask(band.name, _classes(tag[len(CLOUD_TAG) :], tag), "product")
    for band in product.bands:
        if is_scl(band):
            return CloudMask(band.name, CLOUDY_CLASSES, "product")
    return None


def parse_cloud_mask(text: str | None) -> CloudMask | Literal["default"] | None:
    """A request's `cloud_mask`: None / 'none' (no mask), 'default' (the product's, resolved
    per product) or BAND:classes. The one parser of it (render_params, the time series)."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    if text.strip().lower() == "default":
        return "default"
    return CloudMask.parse(text)


def resolve_cloud_mask(
    product: Product, mask: str | CloudMask | Literal["default"] | None
) -> CloudMask | None:
    """The request's cloud mask (as text or parsed) for `product`; RenderError naming the
    band when the product has no such class band (a mosaic checks each image's product)."""
    if isinstance(mask, str):
        mask = parse_cloud_mask(mask)
    if mask is None:
        return None
    if mask == "default":
        mask = product_cloud_mask(product)
        if mask is None:
            raise RenderError(
                f"product '{product.id}' declares no cloud mask (no class band tagged "
                f"'{CLOUD_TAG}...' nor an SCL band): give cloud_mask=BAND:classes"
            )
        return mask
    band = product.band(mask.band)
    if band is None or band.type != "class":
        classes = ", ".join(b.name for b in product.bands if b.type == "class") or "none"
        raise RenderError(
            f"cloud_mask band '{mask.band}' is not a class band of product '{product.id}' "
            f"(class bands: {classes})"
        )
    return mask


def cloud_read(product: Product, params: RenderParams) -> tuple[Band, frozenset[int]] | None:
    """The class band and classes `params.cloud_mask` masks in `product`'s images (for
    render/reader.py read_bands), or None without a mask."""
    mask = resolve_cloud_mask(product, params.cloud_mask)
    if mask is None:
        return None
    return resolve_bands(product, [mask.band])[0], mask.classes


def expression_blocks(expression: str) -> list[str]:
    """The `;`-separated outputs of an expression (rio-tiler's own split lowercases names)."""
    return [block.strip() for block in expression.split(";") if block.strip()]


def expression_bands(product: Product, expression: str) -> list[str]:
    """Band names an expression uses, in product order; unknown names are a RenderError."""
    check_expression(expression)
    try:
        validate_expression(expression)
    except InvalidExpression as exc:
        raise RenderError(f"invalid expression '{expression}': {exc}") from exc
    names: set[str] = set()
    for block in expression_blocks(expression):
        tree = ast.parse(block, mode="eval")
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}
    unknown = sorted(n for n in names if product.band(n) is None)
    if unknown:
        known = ", ".join(b.name for b in product.bands)
        raise UnknownBand(f"expression uses unknown band(s) {', '.join(unknown)} (bands: {known})")
    if not names:
        raise RenderError(f"expression '{expression}' uses no band")
    return [b.name for b in product.bands if b.name in names]


def requested_bands(product: Product, params: RenderParams) -> list[str]:
    """The bands to read: the expression's, the request's, or the product's default."""
    if params.expression:
        return expression_bands(product, params.expression)
    if params.bands:
        return list(params.bands)
    names = product.display_bands()
    if not names:
        raise RenderError(f"product '{product.id}' has no bands")
    return names


def request_bands(product: Product, params: RenderParams) -> tuple[list[Band], Band | None]:
    """The bands a request renders and the mask band that makes their pixels transparent.

    Unknown bands raise here, so endpoints that only describe a layer can check them.
    A requested band list ending in a mask band uses it as the alpha channel (0 is
    transparent); otherwise the product's alpha band, if any, masks every request.
    """
    bands = resolve_bands(product, requested_bands(product, params))
    if len(bands) > 1 and bands[-1].type == "mask":
        return bands[:-1], bands[-1]
    alpha = product.alpha_band()
    if alpha is not None and alpha in bands:
        alpha = None
    return bands, alpha


def apply_processing_level(
    data: numpy.ma.MaskedArray, bands: Sequence[Band], level: str | None
) -> numpy.ma.MaskedArray:
    """Convert stored values to `level` with each band's steps, in order.

    With no `level` a band's `default` level applies, as it does to the ranges scaling uses
    (tileserver.scaling_rules.level_steps: aliases followed, a band without the level kept
    as stored). Steps: `linear` (parameter [gain, offset]: x * gain + offset) and `pow10`
    (10 ** x, for values stored as logarithms, like SNAP's LOG10_SCALED bands); None,
    `identity` and `dlsr` leave values as they are.
    """
    try:
        per_band = [level_steps(b.processing_levels, level) or [] for b in bands]
    except ScalingError as exc:
        raise RenderError(str(exc)) from exc
    if not any(per_band):
        return data
    out = data.astype("float64")
    for i, (band, steps) in enumerate(zip(bands, per_band, strict=True)):
        for step in steps:
            if step.function in (None, "identity", "dlsr"):
                continue
            if step.function == "pow10":
                with numpy.errstate(over="ignore"):  # beyond float64: inf, as 10 ** x is
                    out[i] = numpy.power(10.0, out[i])
                continue
            if step.function != "linear" or not isinstance(step.parameter, list | tuple):
                raise RenderError(
                    f"band '{band.name}' level '{level or 'default'}': "
                    f"unsupported step '{step.function}'"
                )
            gain, offset = step.parameter
            out[i] = out[i] * gain + offset
    return out


def output_scaling(
    bands: Sequence[Band],
    params: RenderParams,
    products: Mapping[str, Sequence[Band]] | None = None,
    alpha: Band | None = None,
) -> tuple[list[Scale], str]:
    """Scales and output type of a request over `bands` (or its expression's outputs).

    `products` (product id -> its bands of the same names, `bands` among them) scales a
    mosaic or stack across every product (scaling.multiproduct_scaling_parameters). A
    per-band list may carry one more entry, for the `alpha` band that masks the output: it
    takes part in choosing the mode and type (as the Catalog's client counts every requested
    band) and its scale is dropped. RenderError for anything invalid.
    """
    scaling = params.scaling.form
    level = params.processing_level
    if params.expression:
        count = len(expression_blocks(params.expression))
        bands = [dict(EXPRESSION_BAND, name=f"expression{i + 1}") for i in range(count)]
        products, alpha, level = None, None, None
        if scaling is None and params.colormap is not None:
            scaling = "display"
    if isinstance(scaling, tuple):
        scaling = [scaling] * len(bands)
    with_alpha = alpha is not None and isinstance(scaling, list) and len(scaling) == len(bands) + 1
    names = [_name(b) for b in bands] + ([alpha.name] if with_alpha else [])
    try:
        if products is not None and len(products) > 1:
            groups = {
                pid: list(own) + ([alpha] if with_alpha else []) for pid, own in products.items()
            }
            scales, data_type = multiproduct_scaling_parameters(
                groups, names, scaling, params.data_type, level
            )
        else:
            every = list(bands) + ([alpha] if with_alpha else [])
            scales, data_type = scaling_parameters(every, scaling, params.data_type, level)
    except ScalingError as exc:
        raise RenderError(str(exc)) from exc
    return scales[: len(bands)], data_type


def _name(band: Band | dict) -> str:
    return band["name"] if isinstance(band, dict) else band.name


@timed("render")
def render_array(
    data: numpy.ma.MaskedArray,
    bands: Sequence[Band],
    params: RenderParams,
    stats: dict[str, BandStatistics] | None = None,
    alpha_band: Band | None = None,
    products: Mapping[str, Sequence[Band]] | None = None,
    converted: bool = False,
) -> Rendered:
    """Processing level, band math and scaling of read pixels.

    `stats` (the image's stored statistics) fix `auto` ranges so neighbouring tiles
    match; without them (or for bands converted to a processing level, whose stored
    statistics are of other units) `auto` stretches each band from the returned pixels.
    `alpha_band` is the band whose 0 made pixels transparent (folded into the mask when
    read, render/reader.py read_bands), for a scaling list that has an entry for it.
    `products` scales across a mosaic's products (output_scaling); `converted`: `data` is
    already at the processing level (a mosaic converts each image with its own product's
    steps).
    """
    try:
        steps = [level_steps(b.processing_levels, params.processing_level) for b in bands]
    except ScalingError as exc:
        raise RenderError(str(exc)) from exc
    if not converted:
        data = apply_processing_level(data, bands, params.processing_level)
    names = [b.name for b in bands]
    if params.expression:
        blocks = expression_blocks(params.expression)
        try:
            with numpy.errstate(all="ignore"):
                values = apply_expression(blocks, names, data.astype("float64"))
        except Exception as exc:  # numexpr's own errors: bad syntax, wrong types
            raise RenderError(f"cannot evaluate expression '{params.expression}': {exc}") from exc
        values.mask = numpy.broadcast_to(
            numpy.logical_or.reduce(numpy.ma.getmaskarray(data)), values.shape
        ).copy()
        data = values
    scales, data_type = output_scaling(bands, params, products, alpha_band)
    auto_ranges = None
    if stats and not params.expression:
        auto_ranges = [
            (stats[n].min, stats[n].max) if n in stats and not s else None
            for n, s in zip(names, steps, strict=True)
        ]
    with numpy.errstate(all="ignore"):  # overflowing band math saturates, as clipping says
        out = scale_array(data, scales, data_type, auto_ranges=auto_ranges)
    if params.color_formula:
        out = apply_color_formula(out, params.color_formula)
    valid = numpy.logical_and.reduce(~numpy.ma.getmaskarray(data), axis=0)
    mask = numpy.where(valid, 255, 0).astype("uint8")
    colormap = params.colormap
    if colormap is None and len(bands) == 1 and bands[0].colormap and not params.expression:
        colormap = {i: tuple(c) for i, c in enumerate(bands[0].colormap)}
    return Rendered(out, mask, colormap)


def render_image(
    img: ImageData,
    bands: Sequence[Band],
    params: RenderParams,
    stats: dict[str, BandStatistics] | None = None,
    alpha_band: Band | None = None,
) -> ImageData:
    """Read pixels (`img`, with its CRS and bounds) rendered as the request asks: the
    ImageData render.pipeline.encode_image takes (render_array's rules)."""
    rendered = render_array(img.array, bands, params, stats=stats, alpha_band=alpha_band)
    return rendered.image(img.crs, img.bounds)


# Encoding: png / jpeg / webp / tif / npy, refusing what a format can't hold


class ImageFormat(StrEnum):
    """Output formats of tiles; the value is the URL extension."""

    png = "png"
    jpeg = "jpeg"
    jpg = "jpg"
    webp = "webp"
    tif = "tif"
    npy = "npy"

    @property
    def media_type(self) -> str:
        """The Content-Type of the encoded bytes."""
        return MEDIA_TYPES[self]


MEDIA_TYPES = {
    ImageFormat.png: "image/png",
    ImageFormat.jpeg: "image/jpeg",
    ImageFormat.jpg: "image/jpeg",
    ImageFormat.webp: "image/webp",
    ImageFormat.tif: "image/tiff; application=geotiff",
    ImageFormat.npy: "application/x-binary",
}
DRIVERS = {
    ImageFormat.png: "PNG",
    ImageFormat.jpeg: "JPEG",
    ImageFormat.jpg: "JPEG",
    ImageFormat.webp: "WEBP",
    ImageFormat.tif: "GTiff",
    ImageFormat.npy: "NPY",
}
# What each picture format can hold: numpy dtypes and band counts (before the alpha band).
PICTURE_DTYPES = {
    ImageFormat.png: ("uint8", "uint16"),
    ImageFormat.jpeg: ("uint8",),
    ImageFormat.jpg: ("uint8",),
    ImageFormat.webp: ("uint8",),
}
PICTURE_BANDS = {
    ImageFormat.png: (1, 2, 3),
    ImageFormat.jpeg: (1, 3),
    ImageFormat.jpg: (1, 3),
    ImageFormat.webp: (1, 3),
}
CREATION_OPTIONS = {
    ImageFormat.png: {"zlevel": 6},
    ImageFormat.jpeg: {"quality": 85},
    ImageFormat.jpg: {"quality": 85},
    ImageFormat.webp: {"quality": 85},
    ImageFormat.tif: {"compress": "deflate"},
    ImageFormat.npy: {},
}
# Byte pictures go through Pillow: the same libpng/libjpeg/libwebp without a GDAL dataset
# per tile, and PNG at zlib level 1, which costs a third of level 6 for 15-20 % more
# bytes on imagery (bench/README.md). Everything else goes through GDAL (rio-tiler's render).
PILLOW_FORMATS = {
    ImageFormat.png: ("PNG", {"compress_level": 1}),
    ImageFormat.jpeg: ("JPEG", {"quality": 85}),
    ImageFormat.jpg: ("JPEG", {"quality": 85}),
    ImageFormat.webp: ("WEBP", {"quality": 85}),
}
DATA_TYPE_NAMES = {v: k for k, v in DATA_TYPE_TO_NUMPY.items()}  # numpy -> catalog names


def check_format(fmt: ImageFormat, dtype: str, count: int, colormap: bool = False) -> None:
    """Raise RenderError when `fmt` cannot hold `count` bands of `dtype`."""
    if colormap and count != 1:
        raise RenderError(f"a colormap applies to one band, not {count}")
    if fmt not in PICTURE_DTYPES:
        return
    if str(dtype) not in PICTURE_DTYPES[fmt]:
        allowed = " or ".join(DATA_TYPE_NAMES[d] for d in PICTURE_DTYPES[fmt])
        raise RenderError(
            f"{fmt.value} cannot hold {DATA_TYPE_NAMES.get(str(dtype), dtype)} data "
            f"(only {allowed}): ask for tif or npy, or scale to Byte "
            "(e.g. scaling=display or data_type=Byte)"
        )
    if not colormap and count not in PICTURE_BANDS[fmt]:
        raise RenderError(
            f"{fmt.value} holds {' or '.join(map(str, PICTURE_BANDS[fmt]))} bands, "
            f"not {count}: ask for fewer bands or for tif/npy"
        )


def encode(
    data: numpy.ndarray,
    mask: numpy.ndarray | None,
    fmt: ImageFormat,
    colormap: dict | None = None,
    crs: CRS | None = None,
    transform: Affine | None = None,
) -> bytes:
    """Encode (bands, rows, cols) `data`; `mask` (0 invalid, 255 valid) becomes alpha.

    JPEG has no alpha; TIFF and NPY carry the mask as a last band, as rio-tiler does.
    """
    check_format(fmt, data.dtype, data.shape[0], colormap is not None)
    if fmt in PILLOW_FORMATS and data.dtype == numpy.uint8:
        return encode_picture(data, mask, fmt, colormap)
    options = dict(CREATION_OPTIONS[fmt])
    if fmt is ImageFormat.tif and crs is not None and transform is not None:
        options.update(crs=crs, transform=transform)
    if mask is not None:
        mask = mask.astype(data.dtype)
    return render(data, mask, img_format=DRIVERS[fmt], colormap=colormap, **options)


def encode_image(image: ImageData, fmt: ImageFormat) -> bytes:
    """Encode rendered ImageData (render.pipeline.Rendered.image): its pixels, its 0/255
    alpha mask, its colormap, and for GeoTIFF its CRS and transform."""
    mask = image.alpha_mask
    return encode(
        image.array.data,
        mask.astype("uint8") if mask is not None else None,
        fmt,
        image.metadata.get("colormap"),
        crs=image.crs,
        transform=image.transform,
    )


def encode_picture(
    data: numpy.ndarray, mask: numpy.ndarray | None, fmt: ImageFormat, colormap: dict | None
) -> bytes:
    """Byte png / jpeg / webp with Pillow, with the pixels rio-tiler's render would write.

    As there: a colormap's alpha applies where `mask` is valid, JPEG drops the mask, and
    WebP repeats a single band as RGB.
    """
    if colormap:
        data, alpha = apply_cmap(data, colormap)
        if mask is not None:
            mask = numpy.where(mask != 0, alpha, 0).astype("uint8")
    driver, options = PILLOW_FORMATS[fmt]
    if driver == "JPEG":
        mask = None
    elif driver == "WEBP" and data.shape[0] == 1:
        data = numpy.repeat(data, 3, axis=0)
    layers = [data] if mask is None else [data, mask[numpy.newaxis].astype("uint8")]
    pixels = numpy.ascontiguousarray(numpy.concatenate(layers).transpose(1, 2, 0))
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    out = BytesIO()  # Pillow reads the mode off the shape: L, LA, RGB or RGBA
    PILImage.fromarray(pixels).save(out, driver, **options)
    return out.getvalue()
