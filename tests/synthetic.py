"""Small rasters with known pixels, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import morecantile
import numpy
import rasterio
from rasterio.transform import from_bounds

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
TILE = morecantile.Tile(550, 335, 10)  # the tile the synthetic rasters cover exactly


def tile_aligned_profile(count: int, dtype: str, size: int = 256, **extra) -> dict:
    """A GTiff profile whose grid is exactly TILE's pixel grid (no resampling on read)."""
    bounds = WEB_MERCATOR.xy_bounds(TILE)
    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": dtype,
        "crs": "EPSG:3857",
        "transform": from_bounds(*bounds, size, size),
        **extra,
    }


def write(path: Path, data: numpy.ndarray, descriptions=None, tags=None, **extra) -> Path:
    """Write (bands, rows, cols) data on TILE's grid."""
    profile = tile_aligned_profile(data.shape[0], str(data.dtype), data.shape[1], **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, description in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, description)
        if tags:
            dst.update_tags(**tags)
    return path


def gradient(dtype: str = "uint16", count: int = 3, step: int = 10) -> numpy.ndarray:
    """Band b at (row, col) holds (row + col) * step + b * 1000: every pixel known."""
    rows, cols = numpy.mgrid[0:256, 0:256]
    return numpy.stack([(rows + cols) * step + b * 1000 for b in range(count)]).astype(dtype)
