"""Statistics of pixels in an area: pure functions over masked arrays (no files, no HTTP).

Rules, so that numbers can be checked by hand (the parcel rules of render/zonal.py):

- The pixels are those of the layer's own grid (the image's, or a search's first image's),
  in its CRS, at the processing level, band math applied, never scaled.
- A pixel is in the area when its centre is inside it (`inside`); with `coverage` each
  pixel meeting the area weighs the fraction of it the area covers (rio-tiler's
  `get_coverage_array`, a 10 x 10 supersampling), and mean, std, median, percentiles and
  `weight` use those weights. min, max, counts and histograms count whole pixels.
- `count` is the pixels in the area, `valid_count` those with a value, `masked_count`
  those without (nodata, the alpha band, outside the images).
- std is the population standard deviation (ddof=0). Percentiles and the median are
  numpy's (`linear` interpolation, as the parcel statistics); with `coverage` they are
  rio-tiler's weighted quantiles (numpy's `inverted_cdf` rule, weighted).
- A class band (type `class`) also gets `classes`: pixels per class value with its label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
from rio_tiler.utils import get_array_statistics

from tileserver.catalog.models import Band
from tileserver.render.errors import RenderError

DEFAULT_PERCENTILES = (2, 98)
MAX_PERCENTILES = 20
MAX_HISTOGRAM_BINS = 1000
MAX_CLASSES = 1000  # distinct values listed for a class band
FLOAT_MAX = numpy.finfo("float64").max


class StatisticsError(RenderError):
    """Statistics options that cannot be honoured (a 400)."""


@dataclass(frozen=True)
class StatisticsOptions:
    """What a statistics request asks for, parsed once (api/deps.py statistics_options)."""

    percentiles: tuple[int, ...] = DEFAULT_PERCENTILES
    bins: int = 10  # histogram bins, unless `edges`
    edges: tuple[float, ...] | None = None
    histogram_range: tuple[float, float] | None = None
    coverage: bool = False  # weigh pixels by the share of them the area covers

    def __post_init__(self) -> None:
        if len(self.percentiles) > MAX_PERCENTILES:
            raise StatisticsError(f"percentiles names more than {MAX_PERCENTILES} values")
        if any(not 0 <= p <= 100 for p in self.percentiles):
            raise StatisticsError("percentiles must be between 0 and 100")
        if not 1 <= self.bins <= MAX_HISTOGRAM_BINS:
            raise StatisticsError(f"histogram_bins must be 1..{MAX_HISTOGRAM_BINS}")
        if self.edges is not None:
            if not 2 <= len(self.edges) <= MAX_HISTOGRAM_BINS + 1:
                raise StatisticsError(
                    f"histogram_bins as edges needs 2..{MAX_HISTOGRAM_BINS + 1} numbers"
                )
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise StatisticsError("histogram_bins edges must increase")
        if self.histogram_range is not None:
            lo, hi = self.histogram_range
            if not lo < hi:
                raise StatisticsError("histogram_range needs lo < hi")

    def histogram_options(self) -> dict:
        """numpy.histogram's `bins` and `range`."""
        if self.edges is not None:
            return {"bins": list(self.edges)}
        options: dict = {"bins": self.bins}
        if self.histogram_range is not None:
            options["range"] = self.histogram_range
        return options


def _number(value) -> float | None:
    """JSON has no NaN: an undefined statistic is null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def band_statistics(
    data: numpy.ma.MaskedArray,
    area: numpy.ndarray,
    options: StatisticsOptions,
    band: Band | None = None,
    coverage: numpy.ndarray | None = None,
) -> dict:
    """Statistics of one 2-D masked band over the pixels where `area` is true.

    `coverage` (fractions 0..1, same shape) weighs the valid pixels; `band` (a class band)
    adds pixels per class with its label.
    """
    valid = area & ~numpy.ma.getmaskarray(data)
    values = numpy.ma.MaskedArray(numpy.ma.getdata(data).astype("float64"), mask=~valid)
    values = numpy.ma.fix_invalid(values)  # NaN / inf are no value
    # rio-tiler's band math writes inf as the largest float (numpy.nan_to_num): no value too
    values = numpy.ma.masked_where(numpy.abs(values.filled(0)) >= FLOAT_MAX, values)
    valid = ~numpy.ma.getmaskarray(values)
    weights = None
    if coverage is not None:
        weights = numpy.where(area, coverage, 0.0)
    histogram = options.histogram_options()
    if not valid.any() and histogram.get("range") is None and options.edges is None:
        histogram["range"] = (0.0, 1.0)
    try:
        found = get_array_statistics(
            values[numpy.newaxis],
            percentiles=list(options.percentiles),
            coverage=weights,
            **histogram,
        )[0]
    except ValueError as exc:  # numpy's histogram over a span wider than floats hold
        raise StatisticsError(
            f"the values span too wide a range for a histogram ({exc}): give histogram_range"
        ) from None
    count, valid_count = int(area.sum()), int(valid.sum())
    result: dict = {
        "count": count,
        "valid_count": valid_count,
        "masked_count": count - valid_count,
        "valid_percent": round(100 * valid_count / count, 4) if count else 0.0,
        "min": _number(found["min"]) if valid_count else None,
        "max": _number(found["max"]) if valid_count else None,
        "mean": _number(found["mean"]) if valid_count else None,
        "std": _number(found["std"]) if valid_count else None,
        "median": _number(found["median"]) if valid_count else None,
        "sum": _number(found["sum"]) if valid_count else None,
    }
    names = [f"percentile_{p}" for p in options.percentiles]
    if weights is None and valid_count:  # numpy's linear rule, as the parcel statistics
        plain = values.compressed()
        result["median"] = float(numpy.median(plain))
        found.update(zip(names, numpy.percentile(plain, options.percentiles), strict=True))
    for name in names:
        result[name] = _number(found[name]) if valid_count else None
    if weights is not None:
        result["weight"] = float(weights[valid].sum())
    counts, edges = found["histogram"]
    result["histogram"] = {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}
    if band is not None and band.type == "class":
        result["classes"] = class_counts(values.compressed(), band)
    return result


def class_counts(values: numpy.ndarray, band: Band) -> list[dict]:
    """Pixels per class value, by value, with the band's label for it (None when unnamed)."""
    classes, counts = numpy.unique(values, return_counts=True)
    if classes.size > MAX_CLASSES:
        raise StatisticsError(
            f"band '{band.name}' has {classes.size} distinct values here, more than "
            f"{MAX_CLASSES} classes"
        )
    labels = band.class_labels or []
    result = []
    for value, count in zip(classes, counts, strict=True):
        index = int(value)
        label = labels[index] if float(value).is_integer() and 0 <= index < len(labels) else None
        result.append({"value": _number(value), "label": label, "count": int(count)})
    return result


def layer_statistics(
    data: numpy.ma.MaskedArray,
    names: Sequence[str],
    area: numpy.ndarray,
    options: StatisticsOptions,
    bands: Sequence[Band | None] = (),
    coverage: numpy.ndarray | None = None,
) -> dict[str, dict]:
    """Statistics of each band of (bands, y, x) `data`, by output name."""
    described = list(bands) or [None] * len(names)
    return {
        name: band_statistics(data[i], area, options, described[i], coverage)
        for i, (name, _) in enumerate(zip(names, described, strict=True))
    }
