"""What ingest learns from a raster file: footprint, grid, time, cloud cover, band statistics."""

from __future__ import annotations

import math
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.affinity
from affine import Affine
from rio_tiler.errors import NoOverviewWarning
from rio_tiler.io import Reader
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from tileserver.catalog.models import NUMPY_TO_DATA_TYPE, BandStatistics
from tileserver.opener import open_raster

PERCENTILES = list(range(1, 100))
FOOTPRINT_SIZE = 512  # longest edge of the overview the footprint is traced on


class IngestError(ValueError):
    """A file that cannot become a catalog image; the message says why."""


def footprint(src: rasterio.DatasetReader, nodata: float | None = None) -> dict:
    """WGS84 GeoJSON of the valid-data extent, traced on an overview.

    Holes are dropped (the footprint is where the image is, not where its data is
    valid), edges are densified before reprojection so they follow the projection's
    curvature, and geometries crossing the antimeridian are cut into a MultiPolygon.
    """
    if src.crs is None:
        raise IngestError(f"{src.name} has no CRS: it cannot be placed on a map")
    factor = max(1.0, max(src.width, src.height) / FOOTPRINT_SIZE)
    rows, cols = max(1, round(src.height / factor)), max(1, round(src.width / factor))
    if src.nodata is None and nodata is not None:
        valid = src.read(1, out_shape=(rows, cols)) != nodata
    else:
        valid = src.dataset_mask(out_shape=(rows, cols)) > 0
    if not valid.any():
        raise IngestError(f"{src.name} has no valid pixel")
    transform = src.transform @ Affine.scale(src.width / cols, src.height / rows)
    pieces = [
        shape(geom)
        for geom, value in rasterio.features.shapes(
            valid.astype("uint8"), mask=valid, transform=transform
        )
        if value
    ]
    geom = unary_union(pieces)
    polygons = list(getattr(geom, "geoms", [geom]))
    geom = unary_union([shapely.Polygon(p.exterior) for p in polygons])
    cell = max(abs(transform.a), abs(transform.e))
    geom = geom.simplify(cell, preserve_topology=True)
    span = max(geom.bounds[2] - geom.bounds[0], geom.bounds[3] - geom.bounds[1])
    geom = shapely.segmentize(geom, max_segment_length=max(span / 16, cell))
    wgs84 = rasterio.warp.transform_geom(src.crs, "EPSG:4326", mapping(geom), precision=7)
    return dict(wgs84)


def grid_outline(crs, transform: Affine, width: int, height: int, segments: int = 16) -> dict:
    """WGS84 GeoJSON of a grid's outline (pixel corners), each edge cut into `segments`
    pieces so the outline follows the projection's curvature."""
    step = max(width, height) / segments
    outline = shapely.segmentize(shapely.box(0, 0, width, height), step)
    t = transform
    model = shapely.affinity.affine_transform(outline, [t.a, t.b, t.d, t.e, t.c, t.f])
    return dict(rasterio.warp.transform_geom(crs, "EPSG:4326", mapping(model), precision=7))


def grid(src: rasterio.DatasetReader) -> dict:
    """The CRS (EPSG code when there is one, else WKT), geotransform and size."""
    epsg = src.crs.to_epsg() if src.crs else None
    return {
        "crs": f"EPSG:{epsg}" if epsg else (src.crs.to_wkt() if src.crs else None),
        "geotrans": tuple(src.transform.to_gdal()),
        "width": src.width,
        "height": src.height,
    }


DATE_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "DATETIME", "TIFFTAG_DATETIME")
CLOUD_TAGS = ("CLOUD_COVERAGE", "CLOUDY_PIXEL_PERCENTAGE", "CLOUD_COVER", "EO_CLOUD_COVER")
NAME_DATE = re.compile(
    r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_-]?(\d{2}):?(\d{2}):?(\d{2}))?(?!\d)"
)


def parse_time(value: str) -> datetime | None:
    """Parse the time formats found in GeoTIFF tags (TIFF's 'YYYY:MM:DD HH:MM:SS', ISO)."""
    text = value.strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y%m%dT%H%M%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def time_from_name(path: str) -> datetime | None:
    """A date (and time) embedded in a file name, like S2A_20240612T101031 or 2024-06-12."""
    for match in NAME_DATE.finditer(Path(path).name):
        year, month, day, hh, mm, ss = match.groups()
        try:
            return datetime(
                int(year),
                int(month),
                int(day),
                int(hh or 0),
                int(mm or 0),
                int(ss or 0),
                tzinfo=UTC,
            )
        except ValueError:
            continue
    return None


def acquisition_time(src: rasterio.DatasetReader) -> datetime | None:
    """Acquisition time from the file's metadata tags, if it has one."""
    tags = {k.upper(): v for k, v in src.tags().items()}
    for key in DATE_TAGS:
        if key in tags and (parsed := parse_time(tags[key])):
            return parsed
    return None


def cloud_cover(src: rasterio.DatasetReader) -> float | None:
    """Cloud cover in percent from the file's tags, when it says."""
    tags = {k.upper(): v for k, v in src.tags().items()}
    for key in CLOUD_TAGS:
        if key in tags:
            try:
                value = float(tags[key])
            except ValueError:
                continue
            if 0 <= value <= 100:
                return value
    return None


def band_statistics(
    href: str, indexes: list[int], nodata: float | None = None, categorical: bool = False
) -> list[BandStatistics]:
    """Min, max, mean, std and percentiles 1..99 of bands, read from an overview."""
    options = {"nodata": nodata} if nodata is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoOverviewWarning)  # small files: read whole, on purpose
        with open_raster(href) as src, Reader(href, dataset=src, options=options) as reader:
            stats = reader.statistics(indexes=indexes, percentiles=PERCENTILES, max_size=1024)
    result = []
    for value in stats.values():
        extra = value.model_extra or {}
        if value.count == 0 or not math.isfinite(value.min):
            result.append(BandStatistics(min=0, max=0, valid_percent=0))
            continue
        result.append(
            BandStatistics(
                min=value.min,
                max=value.max,
                mean=value.mean,
                std=value.std,
                valid_percent=value.valid_percent,
                percentiles={p: extra[f"percentile_{p}"] for p in PERCENTILES},
            )
        )
    return result


# numpy type -> VRT dataType (GDAL's names: int8 is Int8 there, Int16 in the catalog)
VRT_DATA_TYPES = {**NUMPY_TO_DATA_TYPE, "int8": "Int8"}


def display_range(
    stats: BandStatistics | None, fallback: tuple[float, float]
) -> tuple[float, float]:
    """The 2..98 percentile stretch when statistics have it, so a product looks right."""
    if stats is not None and stats.percentiles:
        lo, hi = stats.percentiles.get(2), stats.percentiles.get(98)
        if lo is not None and hi is not None and hi > lo:
            return (lo, hi)
    return fallback


MAX_STATISTICS_PIXELS = 4096 * 4096  # beyond this, statistics need overviews


def image_statistics(
    href: str, indexes: list[int], nodata: float | None = None
) -> list[BandStatistics] | None:
    """Band statistics when they are cheap: the file has overviews or is small.

    A large remote file without overviews would be read whole (gigabytes from a
    bucket) to decimate it; such images get no stored statistics, and `auto`
    scaling stretches from the returned pixels instead.
    """
    with open_raster(href) as src:
        if not src.overviews(1) and src.width * src.height > MAX_STATISTICS_PIXELS:
            return None
    return band_statistics(href, indexes, nodata)


def numeric_or_none(value) -> float | None:
    """A finite float, or None for missing/NaN nodata."""
    if value is None:
        return None
    value = float(value)
    return None if numpy.isnan(value) else value


def file_size(href: str) -> int | None:
    """Bytes of a local file (summaries add them up); None for remote hrefs."""
    path = Path(href)
    return path.stat().st_size if not href.startswith("/vsi") and path.is_file() else None
