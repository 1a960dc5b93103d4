"""One map tile composited from several images (SEMANTICS.md section 2).

Images come in paint order (the search's sort, newest first by default). A pixel is
taken whole from one image: it is invalid where any requested band is nodata or the
image's alpha band is 0. rio-tiler's pixel-selection methods do the compositing; this
module adds what they lack: `first` skips images whose footprint falls only on pixels
already painted, and stops as soon as the tile is full.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy
from morecantile import TileMatrixSet
from rasterio.features import rasterize
from rasterio.transform import from_bounds
from rasterio.warp import transform_geom
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.models import ImageData
from rio_tiler.mosaic.methods import PixelSelectionMethod

from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, BandStatistics, Image, Product
from tileserver.render.encode import ImageFormat, encode
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import RenderParams, render_array
from tileserver.render.reader import read_bands, resolve_bands, tile_reader
from tileserver.render.scaling import common_data_type
from tileserver.render.tile import request_bands

PIXEL_SELECTIONS = tuple(m.name for m in PixelSelectionMethod)
# selections whose output values are input values, so stored statistics still apply
VALUE_PRESERVING = {"first", "highest", "lowest", "mean", "median", "lastbandhigh", "lastbandlow"}


class EmptyTile(Exception):
    """No image of the mosaic has a valid pixel in this tile."""


@dataclass
class MosaicTile:
    """Encoded bytes, how many images were read, and those that gave pixels (paint order)."""

    content: bytes
    read: int
    used: list[str]


@dataclass(frozen=True)
class TileGrid:
    """Where a tile lies: its TMS, index and pixel size."""

    tms: TileMatrixSet
    x: int
    y: int
    z: int
    size: int

    def footprint_pixels(self, geometry: dict) -> numpy.ndarray:
        """True on the tile pixels an image footprint (WGS84 GeoJSON) touches."""
        bounds = self.tms.xy_bounds(self.x, self.y, self.z)
        transform = from_bounds(*bounds, self.size, self.size)
        projected = transform_geom("EPSG:4326", self.tms.rasterio_crs, geometry)
        return rasterize(
            [(projected, 1)],
            out_shape=(self.size, self.size),
            transform=transform,
            all_touched=True,
            dtype="uint8",
        ).astype(bool)


def read_image(
    image: Image,
    product: Product,
    names: Sequence[str],
    alpha_name: str | None,
    grid: TileGrid,
    params: RenderParams,
    dtype: str,
) -> numpy.ma.MaskedArray | None:
    """The image's pixels for `names` with one mask for all bands; None if outside it.

    A pixel is invalid where any band is masked or the alpha band (`alpha_name`, else
    the product's own alpha band) is 0.
    """
    bands = resolve_bands(product, names)
    alpha = resolve_bands(product, [alpha_name])[0] if alpha_name else product.alpha_band()
    to_read = bands + ([alpha] if alpha is not None and alpha not in bands else [])
    try:
        img: ImageData = read_bands(
            image,
            to_read,
            tile_reader(grid.x, grid.y, grid.z, grid.size, params.resampling),
            grid.tms,
            params.nodata,
            threads=1,
        )
    except TileOutsideBounds:
        return None
    array = img.array
    invalid = numpy.logical_or.reduce(numpy.ma.getmaskarray(array), axis=0)
    if len(to_read) > len(bands):
        invalid |= array.data[-1] == 0
        array = array[:-1]
    return numpy.ma.MaskedArray(
        array.data.astype(dtype), mask=numpy.broadcast_to(invalid, array.shape).copy()
    )


def mosaic_bands(
    product: Product, params: RenderParams, pixel_selection: str
) -> tuple[list[Band], Band | None]:
    """The bands a mosaic reads and its alpha band; RenderError when the selection cannot work.

    Layer descriptions (TileJSON, WMTS) call it too, so a bad request fails once, up front.
    """
    if pixel_selection not in PIXEL_SELECTIONS:
        raise RenderError(
            f"unknown pixel_selection '{pixel_selection}' (one of {', '.join(PIXEL_SELECTIONS)})"
        )
    bands, alpha_band = request_bands(product, params)
    if pixel_selection.startswith("lastband") and len(bands) < 2:
        raise RenderError(
            f"pixel_selection {pixel_selection} decides by the last band and drops it: "
            "request at least two bands"
        )
    return bands, alpha_band


def merged_stats(images: Sequence[Image], names: Sequence[str]) -> dict[str, BandStatistics]:
    """Per band, the widest stored min..max over the images (for `auto` scaling)."""
    merged: dict[str, BandStatistics] = {}
    for name in names:
        found = [i.band_stats[name] for i in images if name in i.band_stats]
        if found:
            merged[name] = BandStatistics(
                min=min(s.min for s in found), max=max(s.max for s in found)
            )
    return merged


def render_mosaic_tile(
    layers: Sequence[tuple[Image, Product]],
    product: Product,
    grid: TileGrid,
    params: RenderParams,
    fmt: ImageFormat,
    pixel_selection: str = "first",
    threads: int = 4,
) -> MosaicTile:
    """Composite `layers` (image, its product) in paint order into one encoded tile.

    `product` defines the bands, their ranges and colormaps (the mosaic's product);
    every image reads the bands of the same names from its own product.
    """
    bands, alpha_band = mosaic_bands(product, params, pixel_selection)
    names = [b.name for b in bands]
    dtype = DATA_TYPE_TO_NUMPY[common_data_type([b.data_type for b in bands])]
    method = PixelSelectionMethod[pixel_selection].value()
    first = pixel_selection == "first"
    used: list[Image] = []
    pending = list(layers)
    read_count = 0
    # more threads than cores only make the reads of one tile compete
    workers = max(1, min(threads, os.cpu_count() or 1))
    alpha_name = alpha_band.name if alpha_band is not None else None

    def read(layer: tuple[Image, Product]) -> numpy.ma.MaskedArray | None:
        return read_image(layer[0], layer[1], names, alpha_name, grid, params, dtype)

    def next_batch() -> list[tuple[Image, Product]]:
        """`first`: the top image alone, then images not hidden under painted pixels."""
        if not first:
            return [pending.pop(0) for _ in range(min(workers, len(pending)))]
        if method.mosaic is None:
            return [pending.pop(0)]
        painted = ~numpy.ma.getmaskarray(method.mosaic)[0]
        batch = []
        while pending and len(batch) < workers:
            layer = pending.pop(0)
            if not painted[grid.footprint_pixels(layer[0].geometry)].all():
                batch.append(layer)
        return batch

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending and not method.is_done:
            batch = next_batch()
            read_count += len(batch)
            for layer, array in zip(batch, pool.map(read, batch), strict=True):
                if array is None or numpy.ma.getmaskarray(array).all():
                    continue
                method.feed(array)
                used.append(layer[0])
    data = method.data
    if data is None:
        raise EmptyTile(
            f"no image of this mosaic has valid pixels in tile {grid.z}/{grid.x}/{grid.y}"
        )
    scale_bands: list[Band] = list(bands)
    stats = merged_stats(used, names) if pixel_selection in VALUE_PRESERVING else None
    if pixel_selection == "count":
        data = data.reshape((1, *data.shape[-2:]))
        scale_bands = [
            Band(name="count", type="generic", data_type="Byte", data_range=(0, len(used)))
        ]
    elif pixel_selection.startswith("lastband"):
        scale_bands = scale_bands[:-1]
    elif pixel_selection == "stdev":
        scale_bands = [b.model_copy(update={"data_type": "Float64"}) for b in scale_bands]
    rendered = render_array(data, scale_bands, params, stats=stats)
    content = encode(
        rendered.data,
        rendered.mask,
        fmt,
        rendered.colormap,
        crs=grid.tms.rasterio_crs,
        transform=from_bounds(*grid.tms.xy_bounds(grid.x, grid.y, grid.z), grid.size, grid.size),
    )
    return MosaicTile(content, read_count, [i.id for i in used])
