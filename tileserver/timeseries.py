"""Time series of anything: per acquisition date, statistics of bands or band math over a
parcel, a polygon or a point, with an optional cloud mask from a class band; no FastAPI.

Rules, so that numbers can be checked by hand (those of render/zonal.py and
render/statistics.py):

- Dates: catalog/acquisitions.py, one image per acquisition date meeting the area, oldest
  first; at most `max_images` of them (a 400 naming the count above).
- Grid: each image's own, in its CRS: the finest file holding a value band (the bands, or
  those the expression uses), cut to whole pixels around the area (pixels past the raster
  edge included, as masked). Other bands (a 20 m SCL under 10 m reflectances) are read
  onto it with nearest resampling. A pixel is in a polygon when its centre is inside it;
  a point is the one pixel holding it.
- Masks: a pixel is `nodata` when any band read (value bands, the cloud band, the
  product's alpha band) has no value there; `cloud` when it has values and the cloud
  band's class is one of the cloud classes; `valid` otherwise. `masked_count` is nodata +
  cloud; `cloud_fraction` is cloud / (valid + cloud), the share of the observed pixels
  that are cloud (None without a cloud mask or without an observed pixel).
- Values: at the processing level (the bands' default unless asked), band math applied,
  never scaled; statistics of the valid pixels (render/statistics.py band_statistics:
  mean, std ddof=0, min, max, median, percentiles with numpy's linear rule, classes of a
  class band); a band-math result that is infinite (x/0) is left out (rio-tiler's band
  math gives 0 for 0/0).
- `max_cloud_fraction`: dates whose cloud fraction is above it are dropped (listed in
  `dropped`) or, with `cloudy="flag"`, kept with `flagged: true`.
- The cloud mask: `BAND:c1,c2,...` (a class band of the product and its cloud classes),
  or the product's own: a class band tagged `cloud_mask:c1,c2,...`, else a Sentinel-2
  class band named SCL with the cloudy classes of SEMANTICS.md (3, 8, 9, 10).

The first form of /timeseries (`band`, one band, stored values) is this series with that
one band at its stored values, answered in its own rows (api/parcels.py).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy
from affine import Affine
from rasterio.features import bounds as geometry_bounds
from rasterio.warp import transform_geom
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.models import Band, Image, Product
from tileserver.catalog.store import CatalogStore
from tileserver.deadline import check
from tileserver.opener import ContextPool
from tileserver.render.download import grid_reader, image_grid, inside_pixels
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import (
    CloudMask,
    RenderParams,
    apply_processing_level,
    check_expression,
    expression_bands,
    expression_blocks,
    product_cloud_mask,  # noqa: F401 (the time series' name for it, tests import it here)
    resolve_cloud_mask,
)
from tileserver.render.reader import WGS84, Grid, read_bands, resolve_bands
from tileserver.render.statistics import StatisticsOptions, band_statistics
from tileserver.render.zonal import MAX_ZONE_PIXELS, grid_window
from tileserver.values import evaluate_expression

SERIES_PERCENTILES = (25, 50, 75)
MAX_SERIES_BANDS = 16  # bands of one series: each is read for every date
CLOUDY_MODES = ("drop", "flag")


class SeriesError(RenderError):
    """A time series request that cannot be honoured as asked (a 400)."""


# ----------------------------------------------------------------------------- cloud masks


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class SeriesRequest:
    """What a time series asks for, parsed once (api/parcels.py)."""

    product: str
    start: date
    end: date
    bands: tuple[str, ...] | None = None
    expression: str | None = None
    cloud_mask: str | None = None  # None / 'none', 'default', or BAND:classes
    max_cloud_fraction: float | None = None
    cloudy: str = "drop"  # or "flag"
    processing_level: str | None = None
    percentiles: tuple[int, ...] = SERIES_PERCENTILES
    stored: bool = False  # values as stored, no processing level (the first form)

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise SeriesError(f"start_date {self.start} is after end_date {self.end}")
        if bool(self.bands) == bool(self.expression):
            raise SeriesError("name bands (one or more) or an expression, one of the two")
        if self.bands and len(self.bands) > MAX_SERIES_BANDS:
            raise SeriesError(f"bands names more than {MAX_SERIES_BANDS} bands")
        if self.expression:
            check_expression(self.expression)
        if self.cloudy not in CLOUDY_MODES:
            raise SeriesError(f"cloudy must be one of {', '.join(CLOUDY_MODES)}")
        fraction = self.max_cloud_fraction
        if fraction is not None and not (math.isfinite(fraction) and 0 <= fraction <= 1):
            raise SeriesError("max_cloud_fraction must be between 0 and 1")
        StatisticsOptions(percentiles=self.percentiles)  # their own limits


FIRST_FORM_ONLY = "band (one band, its stored values) is the first form of a time series"


def series_request(
    product: str,
    start: date,
    end: date,
    band: str | None = None,
    bands: Sequence[str] | None = None,
    expression: str | None = None,
    cloud_mask: str | None = None,
    max_cloud_fraction: float | None = None,
    cloudy: str = "drop",
    processing_level: str | None = None,
    percentiles: Sequence[int] | None = None,
) -> tuple[SeriesRequest, str | None]:
    """The request, and the band of the first form (`band`: stored values, rows of count,
    nodata, mean, ...) when it is that; SeriesError for a mix of the two forms."""
    if band is not None:
        extra = {
            "bands": bands,
            "expression": expression,
            "cloud_mask": cloud_mask,
            "max_cloud_fraction": max_cloud_fraction,
            "processing_level": processing_level,
            "percentiles": percentiles,
        }
        given = [k for k, v in extra.items() if v is not None] + (
            ["cloudy"] if cloudy != "drop" else []
        )
        if given:
            raise SeriesError(
                f"{FIRST_FORM_ONLY}; {', '.join(given)} belong to the new form: name "
                "bands=NAME,... or expression=... instead of band (e.g. bands=B04 or "
                "expression=(B08-B04)/(B08+B04), cloud_mask=SCL:3,8,9,10)"
            )
        if not band.strip():
            raise SeriesError("band is empty: name one band of the product")
        request = SeriesRequest(product, start, end, bands=(band,), stored=True)
        return request, band
    names = None
    if bands is not None:
        names = tuple(b.strip() for b in bands if b.strip())
        if not names:
            raise SeriesError("bands is empty: name one or more bands")
    request = SeriesRequest(
        product,
        start,
        end,
        bands=names,
        expression=expression or None,
        cloud_mask=cloud_mask,
        max_cloud_fraction=max_cloud_fraction,
        cloudy=cloudy,
        processing_level=processing_level,
        percentiles=tuple(percentiles) if percentiles is not None else SERIES_PERCENTILES,
    )
    return request, None


@dataclass(frozen=True)
class Area:
    """A WGS84 polygon or point; a point is the one pixel holding it."""

    shape: BaseGeometry

    @property
    def point(self) -> bool:
        """Whether the area is a point (one pixel per image)."""
        return self.shape.geom_type == "Point"


@dataclass
class Series:
    """The answer: one row per date kept, oldest first, and the dates dropped."""

    product: str
    start: date
    end: date
    names: list[str]
    processing_level: str
    cloud_mask: CloudMask | None
    max_cloud_fraction: float | None
    cloudy: str
    percentiles: tuple[int, ...]
    rows: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    def document(self) -> dict:
        """The JSON answer."""
        mask = None
        if self.cloud_mask is not None:
            mask = {
                "band": self.cloud_mask.band,
                "classes": sorted(self.cloud_mask.classes),
                "source": self.cloud_mask.source,
            }
        return {
            "product": self.product,
            "start_date": str(self.start),
            "end_date": str(self.end),
            "names": self.names,
            "processing_level": self.processing_level,
            "cloud_mask": mask,
            "max_cloud_fraction": self.max_cloud_fraction,
            "cloudy": self.cloudy,
            "rows": self.rows,
            "dropped": self.dropped,
        }


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Plan:
    """The bands one request reads, and what comes out."""

    product: Product
    value_bands: list[Band]  # the bands the statistics (or the expression) are of
    mask_band: Band | None
    alpha: Band | None
    names: list[str]  # output names: the bands, or the expression's outputs


def plan_series(product: Product, request: SeriesRequest, mask: CloudMask | None) -> Plan:
    """The bands to read; UnknownBand / SeriesError for a bad request."""
    if request.expression:
        values = resolve_bands(product, expression_bands(product, request.expression))
        names = expression_blocks(request.expression)
    else:
        values = resolve_bands(product, list(request.bands or ()))
        names = [b.name for b in values]
    if any(b.is_alpha for b in values):
        raise SeriesError("a time series is of value or class bands, not of the alpha band")
    mask_band = product.band(mask.band) if mask is not None else None
    alpha = product.alpha_band()
    return Plan(product, values, mask_band, alpha, names)


def image_pixels(
    image: Image, plan: Plan, area: Area, request: SeriesRequest, max_pixels: int
) -> tuple[numpy.ma.MaskedArray, numpy.ndarray | None, numpy.ndarray, numpy.ndarray]:
    """One image's values around `area` on its own grid: (value bands masked where any
    band read is, cloud-band classes or None, the pixels inside the area, nodata pixels)."""
    check()  # per image of a series
    anchor = image_grid(image, plan.value_bands)
    geometry = transform_geom(WGS84, anchor.crs, mapping(area.shape))
    window = grid_window(geometry_bounds(geometry), anchor.transform)
    width, height = int(window.width), int(window.height)
    reads = [*plan.value_bands]
    if plan.mask_band is not None and plan.mask_band not in reads:
        reads.append(plan.mask_band)
    if width * height * len(reads) > max_pixels:
        raise RenderError(
            f"the polygon covers {width} x {height} pixels x {len(reads)} bands in image "
            f"'{image.id}', more than {max_pixels}: use a smaller polygon or fewer bands"
        )
    transform = anchor.transform * Affine.translation(window.col_off, window.row_off)
    grid = Grid(anchor.crs, transform, width, height)
    alpha = plan.alpha if plan.alpha is not None and plan.alpha not in reads else None
    img = read_bands(image, reads, grid_reader(grid, "nearest"), None, None, 1, alpha)
    array = img.array
    nodata = numpy.logical_or.reduce(numpy.ma.getmaskarray(array), axis=0)
    count = len(plan.value_bands)
    shape = (count, height, width)
    values = numpy.ma.MaskedArray(array.data[:count], mask=numpy.broadcast_to(nodata, shape).copy())
    if not request.stored:
        values = apply_processing_level(values, plan.value_bands, request.processing_level)
    classes = None
    if plan.mask_band is not None:
        classes = array.data[reads.index(plan.mask_band)]
    if area.point:
        inside = numpy.ones((height, width), dtype=bool)
    else:
        inside = inside_pixels(grid, mapping(area.shape))
    return values, classes, inside, nodata & inside


def evaluate(values: numpy.ma.MaskedArray, plan: Plan, request: SeriesRequest):
    """The request's band math over the value bands, or the bands (rio-tiler's band math:
    0/0 is 0, x/0 the largest float, which render/statistics.py leaves out)."""
    params = RenderParams(expression=request.expression)
    return evaluate_expression(values, [b.name for b in plan.value_bands], params)


def image_row(
    image: Image,
    plan: Plan,
    area: Area,
    request: SeriesRequest,
    mask: CloudMask | None,
    max_pixels: int,
) -> dict:
    """One date: counts, cloud fraction and statistics of each output."""
    values, classes, inside, nodata = image_pixels(image, plan, area, request, max_pixels)
    observed = inside & ~nodata
    if classes is not None and mask is not None:
        cloud = observed & numpy.isin(classes, list(mask.classes))
    else:
        cloud = numpy.zeros_like(observed)
    valid = observed & ~cloud
    counts = {
        "count": int(inside.sum()),
        "valid_count": int(valid.sum()),
        "nodata_count": int(nodata.sum()),
        "cloud_count": int(cloud.sum()),
    }
    counts["masked_count"] = counts["nodata_count"] + counts["cloud_count"]
    seen = counts["valid_count"] + counts["cloud_count"]
    fraction = None
    if mask is not None and seen:
        fraction = counts["cloud_count"] / seen
    outputs = evaluate(values, plan, request)
    # no histogram in a series: a fixed range keeps numpy from sizing one
    options = StatisticsOptions(request.percentiles, bins=1, histogram_range=(0.0, 1.0))
    described = plan.value_bands if not request.expression else [None] * len(plan.names)
    statistics = {}
    for i, name in enumerate(plan.names):
        data = numpy.ma.MaskedArray(
            numpy.ma.getdata(outputs[i]), mask=numpy.ma.getmaskarray(outputs[i]) | ~valid
        )
        found = band_statistics(data, inside, options, described[i])
        found.pop("histogram", None)
        statistics[name] = found
    return {
        "date": str(image.acquired.date()),
        "datetime": image.acquired.isoformat(),
        "image_id": image.id,
        **counts,
        "cloud_fraction": fraction,
        "statistics": statistics,
    }


def series(
    store: CatalogStore,
    area: Area,
    request: SeriesRequest,
    max_images: int,
    threads: int = 4,
    max_pixels: int = MAX_ZONE_PIXELS,
) -> Series:
    """The time series of `request` over `area` (see the module's docstring)."""
    product = store.get_product(request.product)
    mask = resolve_cloud_mask(product, request.cloud_mask)
    if request.max_cloud_fraction is not None and mask is None:
        raise SeriesError("max_cloud_fraction needs a cloud_mask (e.g. cloud_mask=SCL:3,8,9,10)")
    plan = plan_series(product, request, mask)
    images = acquisitions(store, request.product, area.shape, request.start, request.end)
    if len(images) > max_images:
        where = "point" if area.point else "polygon"
        raise SeriesError(
            f"{request.start}..{request.end} holds {len(images)} acquisitions of "
            f"'{request.product}' over the {where}, more than the limit of {max_images}: "
            "shorten the date window"
        )
    check()  # the lookup took its time; each image checks again

    def one(image: Image) -> dict:
        return image_row(image, plan, area, request, mask, max_pixels)

    with ContextPool(max_workers=max(1, min(threads, len(images) or 1))) as pool:
        rows = list(pool.map(one, images))
    level = "stored" if request.stored else (request.processing_level or "default")
    result = Series(
        request.product,
        request.start,
        request.end,
        plan.names,
        level,
        mask,
        request.max_cloud_fraction,
        request.cloudy,
        request.percentiles,
    )
    limit = request.max_cloud_fraction
    for row in rows:
        above = (
            limit is not None
            and row["cloud_fraction"] is not None
            and row["cloud_fraction"] > limit
        )
        if above and request.cloudy == "drop":
            result.dropped.append({k: row[k] for k in ("date", "image_id", "cloud_fraction")})
            continue
        if limit is not None:
            row["flagged"] = above
        result.rows.append(row)
    return result


# ----------------------------------------------------------------------------- CSV


COUNT_COLUMNS = ("count", "valid_count", "nodata_count", "cloud_count", "masked_count")
STAT_COLUMNS = ("mean", "std", "min", "max", "median")


def _cell(value) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(found: Series, percentiles: Sequence[int]) -> str:
    """One line per date kept: date, datetime, image_id, the counts, cloud_fraction,
    flagged (with max_cloud_fraction), then per output `<name>_<statistic>` and, for a
    class band, `<name>_class_<value>` pixel counts."""
    stats = [*STAT_COLUMNS, *(f"percentile_{p}" for p in percentiles)]
    classes: dict[str, list[int]] = {}
    for name in found.names:
        seen = {
            int(c["value"])
            for row in found.rows
            for c in row["statistics"][name].get("classes", [])
            if c["value"] is not None
        }
        if seen or any("classes" in row["statistics"][name] for row in found.rows):
            classes[name] = sorted(seen)
    head = ["date", "datetime", "image_id", *COUNT_COLUMNS, "cloud_fraction"]
    flagged = found.max_cloud_fraction is not None and found.cloudy == "flag"
    if flagged:
        head.append("flagged")
    for name in found.names:
        head += [f"{name}_{s}" for s in stats]
        head += [f"{name}_class_{v}" for v in classes.get(name, [])]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for row in found.rows:
        cells = [row["date"], row["datetime"], row["image_id"]]
        cells += [row[c] for c in COUNT_COLUMNS] + [row["cloud_fraction"]]
        if flagged:
            cells.append(row["flagged"])
        for name in found.names:
            entry = row["statistics"][name]
            cells += [entry.get(s) for s in stats]
            counted = {int(c["value"]): c["count"] for c in entry.get("classes", [])}
            cells += [counted.get(v, 0) for v in classes.get(name, [])]
        writer.writerow([_cell(c) for c in cells])
    return out.getvalue()
