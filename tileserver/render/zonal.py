"""Zonal statistics: one band's pixels inside a polygon, per image (parcel time series).

Rules, so that numbers can be checked by hand:

- A pixel belongs to the polygon when its centre is inside it (GDAL rasterize with
  all_touched=False), on the band's own native grid in the image's CRS: the WGS84 polygon's
  vertices are reprojected to that CRS (edges are straight there), nothing is resampled.
- Pixels inside the polygon that are masked (the band's nodata, the file's mask, or
  outside the raster) are counted as `nodata` and left out of every statistic.
- Value bands: count, mean, population standard deviation (ddof=0), min, max and the
  PERCENTILES with numpy's linear interpolation, on the stored values (no scaling).
- Class bands: the number of pixels per class value. For a Sentinel-2 SCL band (a class
  band named SCL), `cloud_free` is true when no valid pixel is in CLOUDY_CLASSES
  (3 cloud shadows, 8/9 cloud medium/high probability, 10 thin cirrus) and null when the
  polygon has no valid pixel at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
from rasterio.features import bounds as geometry_bounds
from rasterio.features import geometry_mask
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from tileserver.catalog.models import Band, Image
from tileserver.deadline import check
from tileserver.render.errors import RenderError
from tileserver.render.reader import FileRead, read_bands

CLOUDY_CLASSES = frozenset({3, 8, 9, 10})
PERCENTILES = (25, 50, 75)
MAX_ZONE_PIXELS = 25_000_000  # one band window per image: 50 km x 50 km at 10 m


@dataclass(frozen=True)
class Zone:
    """The pixels of one band of one image inside a polygon."""

    values: numpy.ndarray  # valid values of the pixels whose centre is inside, 1-D
    nodata: int  # pixels whose centre is inside but that have no valid value


def grid_window(bounds: Sequence[float], transform) -> Window:
    """Whole pixels of a grid covering `bounds` (same CRS); may reach past the raster."""
    window = from_bounds(*bounds, transform=transform)
    col0, row0 = math.floor(window.col_off), math.floor(window.row_off)
    col1 = math.ceil(window.col_off + window.width)
    row1 = math.ceil(window.row_off + window.height)
    return Window(col0, row0, max(col1 - col0, 1), max(row1 - row0, 1))


def zone_pixels(data: numpy.ma.MaskedArray, transform, geometry: dict) -> Zone:
    """Split a 2-D masked band into the valid values and the nodata count of the pixels
    whose centre is inside `geometry` (GeoJSON in the band's CRS, `transform` its grid)."""
    inside = geometry_mask(
        [geometry], out_shape=data.shape, transform=transform, all_touched=False, invert=True
    )
    masked = numpy.ma.getmaskarray(data)
    return Zone(
        values=numpy.ma.getdata(data)[inside & ~masked], nodata=int((inside & masked).sum())
    )


def value_statistics(
    values: numpy.ndarray, percentiles: Sequence[int] = PERCENTILES
) -> dict[str, float | None]:
    """mean, std (ddof=0), min, max and p<N> (linear interpolation); None when empty."""
    names = ["mean", "std", "min", "max", *(f"p{p}" for p in percentiles)]
    if values.size == 0:
        return dict.fromkeys(names)
    data = values.astype("float64")
    found = [data.mean(), data.std(), data.min(), data.max()]
    found += list(numpy.percentile(data, percentiles)) if percentiles else []
    return {name: float(value) for name, value in zip(names, found, strict=True)}


def class_histogram(values: numpy.ndarray) -> dict[int, int]:
    """Pixels per class value, by value."""
    classes, counts = numpy.unique(values, return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def is_scl(band: Band) -> bool:
    """Whether the band is a Sentinel-2 scene classification (gets `cloud_free`)."""
    return band.type == "class" and band.name.upper() == "SCL"


def cloud_free(histogram: dict[int, int]) -> bool | None:
    """No valid pixel of a cloudy SCL class; None when there is no valid pixel."""
    if not histogram:
        return None
    return not any(value in CLOUDY_CLASSES for value in histogram)


def read_zone(
    image: Image, band: Band, area: BaseGeometry, max_pixels: int = MAX_ZONE_PIXELS
) -> Zone:
    """Read `band` of `image` at native resolution around `area` (WGS84) and keep the pixels
    whose centre is inside it, in the image's own CRS.

    RenderError when the window is larger than `max_pixels`; ImageNotReadable (from
    read_bands) for remote images and unreadable files.
    """
    check()  # per image of a time series
    shapes: dict[str, dict] = {}

    def in_crs(crs) -> dict:
        key = crs.to_wkt()
        if key not in shapes:
            shapes[key] = transform_geom("EPSG:4326", crs, mapping(area))
        return shapes[key]

    def read(reader: Reader, file_read: FileRead) -> ImageData:
        window = grid_window(geometry_bounds(in_crs(reader.crs)), reader.dataset.transform)
        pixels = int(window.width) * int(window.height)
        if pixels > max_pixels:
            raise RenderError(
                f"the polygon covers {int(window.width)} x {int(window.height)} pixels of band "
                f"'{band.name}' in image '{image.id}', more than {max_pixels}: use a smaller "
                "polygon"
            )
        return reader.read(indexes=file_read.indexes, window=window)

    data = read_bands(image, [band], read, threads=1)
    return zone_pixels(data.array[0], data.transform, in_crs(data.crs))
