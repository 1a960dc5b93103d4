"""Small rasters with known pixels, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import morecantile
import numpy
import rasterio
from rasterio.transform import from_bounds

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
TILE = morecantile.Tile(550, 335, 10)  # the tile the synthetic rasters cover exactly


def write_raster(
    path: Path,
    data: numpy.ndarray,
    crs: str,
    transform,
    descriptions=None,
    tags=None,
    overviews=None,
    **profile,
) -> Path:
    """Write (bands, rows, cols) data as a GeoTIFF with optional descriptions, tags, overviews."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": transform,
        **profile,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, description in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, description)
        if tags:
            dst.update_tags(**tags)
        if overviews:
            dst.build_overviews(overviews)
    return path


def write(path: Path, data: numpy.ndarray, **extra) -> Path:
    """Write (bands, rows, cols) data on TILE's grid, so tiles read it without resampling."""
    size = data.shape[1]
    transform = from_bounds(*WEB_MERCATOR.xy_bounds(TILE), size, size)
    return write_raster(path, data, "EPSG:3857", transform, **extra)


def gradient(dtype: str = "uint16", count: int = 3, step: int = 10) -> numpy.ndarray:
    """Band b at (row, col) holds (row + col) * step + b * 1000: every pixel known."""
    rows, cols = numpy.mgrid[0:256, 0:256]
    return numpy.stack([(rows + cols) * step + b * 1000 for b in range(count)]).astype(dtype)
