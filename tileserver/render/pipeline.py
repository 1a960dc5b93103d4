"""From read pixels to the array a client asked for: processing level, band math, scaling.

Pure functions over numpy arrays; the API parses parameters into `RenderParams` once.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy
from rio_tiler.errors import InvalidExpression
from rio_tiler.expression import apply_expression, validate_expression

from tileserver.catalog.cql2sql import parenthesis_depth
from tileserver.catalog.models import Band, BandStatistics, Product
from tileserver.render.errors import RenderError, UnknownBand
from tileserver.render.scaling import ScalingError, scale_array, scaling_parameters

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
    scaling: Any = None  # as scaling_parameters takes it; a bare tuple applies to every band
    data_type: str | None = None
    processing_level: str | None = None
    expression: str | None = None
    colormap: dict | None = field(default=None, compare=False)
    nodata: float | None = None
    resampling: str = "nearest"


@dataclass
class Rendered:
    """The output of the pipeline: data of the output type, and 0/255 validity."""

    data: numpy.ndarray
    mask: numpy.ndarray
    colormap: dict | None


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


def apply_processing_level(
    data: numpy.ma.MaskedArray, bands: Sequence[Band], level: str | None
) -> numpy.ma.MaskedArray:
    """Convert stored values to `level` with each band's steps, in order.

    Steps: `linear` (parameter [gain, offset]: x * gain + offset) and `pow10` (10 ** x,
    for values stored as logarithms, like SNAP's LOG10_SCALED bands); None or `identity`
    leave values as they are.
    """
    if not level:
        return data
    if not any(level in (b.processing_levels or {}) for b in bands):
        raise RenderError(f"no requested band has processing level '{level}'")
    out = data.astype("float64")
    for i, band in enumerate(bands):
        for step in (band.processing_levels or {}).get(level, []):
            if step.function in (None, "identity"):
                continue
            if step.function == "pow10":
                with numpy.errstate(over="ignore"):  # beyond float64: inf, as 10 ** x is
                    out[i] = numpy.power(10.0, out[i])
                continue
            if step.function != "linear" or not isinstance(step.parameter, list | tuple):
                raise RenderError(
                    f"band '{band.name}' level '{level}': unsupported step '{step.function}'"
                )
            gain, offset = step.parameter
            out[i] = out[i] * gain + offset
    return out


def render_array(
    data: numpy.ma.MaskedArray,
    bands: Sequence[Band],
    params: RenderParams,
    stats: dict[str, BandStatistics] | None = None,
    alpha: numpy.ndarray | None = None,
) -> Rendered:
    """Processing level, band math and scaling of read pixels.

    `stats` (the image's stored statistics) fix `auto` ranges so neighbouring tiles
    match; without them `auto` stretches each band from the returned pixels.
    `alpha` (0 = transparent) masks pixels in every band.
    """
    if alpha is not None:
        data = numpy.ma.MaskedArray(data.data, mask=numpy.ma.getmaskarray(data) | (alpha == 0))
    data = apply_processing_level(data, bands, params.processing_level)
    names = [b.name for b in bands]
    scaling = params.scaling
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
        scale_bands = [
            dict(EXPRESSION_BAND, name=f"expression{i + 1}") for i in range(data.shape[0])
        ]
        if scaling is None and params.colormap is not None:
            scaling = "display"
        processing_level = None
    else:
        scale_bands = list(bands)
        processing_level = params.processing_level
    if isinstance(scaling, tuple):
        scaling = [scaling] * len(scale_bands)
    try:
        scales, data_type = scaling_parameters(
            scale_bands, scaling, params.data_type, processing_level
        )
    except ScalingError as exc:
        raise RenderError(str(exc)) from exc
    auto_ranges = None
    if stats and not params.expression:
        auto_ranges = [(stats[n].min, stats[n].max) if n in stats else None for n in names]
    with numpy.errstate(all="ignore"):  # overflowing band math saturates, as clipping says
        out = scale_array(data, scales, data_type, auto_ranges=auto_ranges)
    valid = numpy.logical_and.reduce(~numpy.ma.getmaskarray(data), axis=0)
    mask = numpy.where(valid, 255, 0).astype("uint8")
    colormap = params.colormap
    if colormap is None and len(bands) == 1 and bands[0].colormap and not params.expression:
        colormap = {i: tuple(c) for i, c in enumerate(bands[0].colormap)}
    return Rendered(out, mask, colormap)
