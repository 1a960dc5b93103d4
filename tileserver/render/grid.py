"""The one grid type: where output pixels lie, for a map tile, a download or a chip.

A grid is a CRS, a north-up affine transform and a size. A map tile's grid also keeps its
tile index, so its pixels are read through the tile matrix set (rio-tiler's tile path,
render/reader.py read_tile) and its bounds are the TMS's own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy
from affine import Affine
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import array_bounds, from_bounds
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_geom

from tileserver.opener import thread_gdal_env

WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class TileIndex:
    """A tile of a tile matrix set."""

    tms: TileMatrixSet
    x: int
    y: int
    z: int

    def __str__(self) -> str:
        return f"{self.z}/{self.x}/{self.y}"


@dataclass(frozen=True)
class Grid:
    """An output raster grid: CRS, affine transform and size (and the tile it is, if one)."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    tile: TileIndex | None = None

    @classmethod
    def of_tile(cls, tms: TileMatrixSet, x: int, y: int, z: int, size: int) -> Grid:
        """The grid of one map tile of `size` x `size` pixels."""
        bounds = tms.xy_bounds(x, y, z)
        transform = from_bounds(*bounds, size, size)
        return cls(tms.rasterio_crs, transform, size, size, TileIndex(tms, x, y, z))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the grid's CRS; a tile's are its TMS's numbers."""
        if self.tile is not None:
            return tuple(self.tile.tms.xy_bounds(self.tile.x, self.tile.y, self.tile.z))
        return tuple(array_bounds(self.height, self.width, self.transform))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.height, self.width

    def wgs84_extent(self) -> dict:
        """The grid's corners in WGS84 as a GeoJSON polygon (as gdalinfo's wgs84Extent)."""
        corners = [(0, 0), (0, self.height), (self.width, self.height), (self.width, 0), (0, 0)]
        xs, ys = zip(*(self.transform * c for c in corners), strict=True)
        lons, lats = transform_points(self.crs, WGS84, xs, ys)
        return {
            "type": "Polygon",
            "coordinates": [[[x, y] for x, y in zip(lons, lats, strict=True)]],
        }

    def footprint_pixels(self, geometry: dict) -> numpy.ndarray:
        """True on the grid pixels a footprint (WGS84 GeoJSON) touches: a `first` mosaic
        skips images whose footprint falls only on painted pixels."""
        thread_gdal_env()
        projected = transform_geom(WGS84, self.crs, geometry)
        return rasterize(
            [(projected, 1)],
            out_shape=self.shape,
            transform=self.transform,
            all_touched=True,
            dtype="uint8",
        ).astype(bool)
