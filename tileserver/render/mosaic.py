"""One map tile composited from several images (SEMANTICS.md section 2).

Images come in paint order (the search's sort, newest first by default). A pixel is
taken whole from one image: it is invalid where any requested band is nodata or the
image's alpha band is 0. rio-tiler's pixel-selection methods do the compositing; this
module adds what they lack: `first` skips images whose footprint falls only on pixels
already painted, and stops as soon as the tile is full.

`composite` and `render_composite` do not care what grid the pixels are on: map tiles
and download grids (render/download.py) share them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic.methods import PixelSelectionMethod

from tileserver import deadline
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, BandStatistics, Image, Product
from tileserver.opener import ContextPool
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import (
    Rendered,
    RenderParams,
    apply_processing_level,
    cloud_read,
    render_array,
    request_bands,
)
from tileserver.render.reader import FileRead, Grid, read_bands, resolve_bands, tile_reader
from tileserver.scaling_rules import ScalingError, common_data_type, level_steps

PIXEL_SELECTIONS = tuple(m.name for m in PixelSelectionMethod)
# selections whose output values are input values, so stored statistics still apply
VALUE_PRESERVING = {"first", "highest", "lowest", "mean", "median", "lastbandhigh", "lastbandlow"}


class EmptyTile(Exception):
    """No image of the mosaic has a valid pixel in this tile."""


ReadFile = Callable[[Reader, FileRead], ImageData]


def read_image(
    image: Image,
    product: Product,
    names: Sequence[str],
    alpha_name: str | None,
    grid: Grid | ReadFile,
    params: RenderParams,
    dtype: str,
    threads: int = 1,
) -> numpy.ma.MaskedArray | None:
    """The image's pixels for `names` with one mask for all bands; None if outside it.

    `grid` is a map tile's grid, or any `read` callback of read_bands (a download grid).
    A pixel is invalid where any band is masked or the alpha band (`alpha_name`, else
    the product's own alpha band) is 0. `threads` read the image's files at once (one
    file per band, as Sentinel-2 in buckets: each file costs round trips, not CPU).
    """
    bands = resolve_bands(product, names)
    alpha = resolve_bands(product, [alpha_name])[0] if alpha_name else product.alpha_band()
    if isinstance(grid, Grid):
        tile = grid.tile
        read, tms = tile_reader(tile.x, tile.y, tile.z, grid.width, params.resampling), tile.tms
    else:
        read, tms = grid, None
    try:
        cloud = cloud_read(product, params)  # each image by its own product's class band
        img = read_bands(
            image, bands, read, tms, params.nodata, threads=threads, alpha=alpha, cloud=cloud
        )
    except TileOutsideBounds:
        return None
    array = img.array
    invalid = numpy.logical_or.reduce(numpy.ma.getmaskarray(array), axis=0)
    masked = numpy.ma.MaskedArray(array.data, mask=numpy.broadcast_to(invalid, array.shape).copy())
    # each image at the processing level by its own product's steps, before compositing
    converted = apply_processing_level(masked, bands, params.processing_level)
    return numpy.ma.MaskedArray(converted.data.astype(dtype), mask=converted.mask)


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


@dataclass(frozen=True)
class ProductBands:
    """A mosaic's bands in each of its products, and the type pixels are composited in."""

    bands: dict[str, list[Band]]  # product id -> its own bands of the mosaic's names
    dtype: str  # numpy dtype: float64 where a product converts to a processing level


def product_bands(
    products: Sequence[Product], bands: Sequence[Band], params: RenderParams
) -> ProductBands:
    """Each product's own definition of the mosaic's bands (SEMANTICS.md section 1: the
    output type holds all of them); a band one product lacks is a RenderError."""
    names = [b.name for b in bands]
    own: dict[str, list[Band]] = {}
    for product in products:
        missing = [n for n in names if product.band(n) is None]
        if missing:
            raise RenderError(
                f"Invalid bands: band '{missing[0]}' is not available in product '{product.id}'"
            )
        own[product.id] = resolve_bands(product, names)
    every = [b for group in own.values() for b in group] or list(bands)
    try:
        converts = any(level_steps(b.processing_levels, params.processing_level) for b in every)
    except ScalingError as exc:
        raise RenderError(str(exc)) from exc
    dtype = (
        "float64"
        if converts
        else DATA_TYPE_TO_NUMPY[common_data_type([b.data_type for b in every])]
    )
    return ProductBands(own, dtype)


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


@dataclass
class Composite:
    """Composited pixels (None when no image had a valid one), images read and used."""

    data: numpy.ma.MaskedArray | None
    read: int
    used: list[Image]


Layer = tuple[Image, Product]


def composite(
    layers: Sequence[Layer],
    read: Callable[[Layer], numpy.ma.MaskedArray | None],
    pixel_selection: str = "first",
    footprint: Callable[[dict], numpy.ndarray] | None = None,
    threads: int = 4,
    cutline: numpy.ndarray | None = None,
) -> Composite:
    """Feed `layers` (in paint order) through rio-tiler's pixel selection.

    `read(layer)` gives the layer's pixels on the output grid (None: nothing there).
    With `first`, layers whose `footprint` (the grid pixels it touches) falls only on
    painted pixels are not read, and reading stops once every pixel is painted;
    `cutline` (True outside the area asked for) counts as painted.
    """
    method = PixelSelectionMethod[pixel_selection].value()
    if cutline is not None:
        method.cutline_mask = cutline
    first = pixel_selection == "first"
    used: list[Image] = []
    pending = list(layers)
    read_count = 0
    # local files: more threads than cores only make the reads of one grid compete; remote
    # files wait on round trips, not cores (deadline.REMOTE_READS bounds them per process)
    remote = any(deadline.is_remote(f.href) for image, _ in layers for f in image.files)
    workers = max(1, threads if remote else min(threads, os.cpu_count() or 1))

    def next_batch() -> list[Layer]:
        """`first`: at the start, the images whose footprints reach pixels the footprints
        above them leave open (a tile inside the top image's footprint reads it alone; one
        on an edge reads the images that fill it at once, not one round trip after
        another); then images not hidden under painted pixels."""
        if not first:
            return [pending.pop(0) for _ in range(min(workers, len(pending)))]
        if footprint is None:
            return [pending.pop(0)]
        if method.mosaic is None:
            covered = cutline.copy() if cutline is not None else None
            batch = []
            while pending and len(batch) < workers:
                touched = footprint(pending[0][0].geometry)
                if covered is None:
                    covered = numpy.zeros_like(touched)
                elif batch and covered[touched].all():
                    break  # under the batch's footprints: read later if their pixels leave holes
                batch.append(pending.pop(0))
                covered |= touched
                if covered.all():
                    break
            return batch
        painted = ~numpy.ma.getmaskarray(method.mosaic)[0]
        if cutline is not None:
            painted |= cutline
        batch = []
        while pending and len(batch) < workers:
            layer = pending.pop(0)
            if not painted[footprint(layer[0].geometry)].all():
                batch.append(layer)
        return batch

    pool: ContextPool | None = None  # started by the first batch of two or more
    try:
        while pending and not method.is_done:
            deadline.check()  # between images: a request out of time or abandoned stops here
            batch = next_batch()
            read_count += len(batch)
            if len(batch) > 1:
                pool = pool or ContextPool(max_workers=workers)
                arrays = list(pool.map(read, batch))
            else:  # `first` reads its top image alone: no thread to start for it
                arrays = [read(layer) for layer in batch]
            for layer, array in zip(batch, arrays, strict=True):
                if array is None or numpy.ma.getmaskarray(array).all():
                    continue
                method.feed(array)
                used.append(layer[0])
    finally:
        if pool is not None:
            pool.shutdown()
    return Composite(method.data, read_count, used)


def selection_bands(bands: Sequence[Band], pixel_selection: str, images: int) -> list[Band]:
    """The bands a selection's output is scaled as: `count` is one band of counts (Byte,
    0..images), `lastband*` drop the deciding band, `stdev` is Float64."""
    if pixel_selection == "count":
        return [Band(name="count", type="generic", data_type="Byte", data_range=(0, images))]
    if pixel_selection.startswith("lastband"):
        return list(bands[:-1])
    if pixel_selection == "stdev":
        return [b.model_copy(update={"data_type": "Float64"}) for b in bands]
    return list(bands)


def render_composite(
    data: numpy.ma.MaskedArray,
    bands: Sequence[Band],
    params: RenderParams,
    pixel_selection: str,
    used: Sequence[Image],
    products: dict[str, list[Band]] | None = None,
    alpha_band: Band | None = None,
) -> Rendered:
    """Scale composited pixels (each image already at the processing level, read_image);
    value-preserving selections keep the images' statistics. `products` (product_bands)
    scales across every product of the mosaic."""
    names = [b.name for b in bands]
    stats = merged_stats(used, names) if pixel_selection in VALUE_PRESERVING else None
    if pixel_selection == "count":
        data = data.reshape((1, *data.shape[-2:]))
    scale_bands = selection_bands(bands, pixel_selection, len(used))
    if products is not None:
        products = {
            pid: selection_bands(own, pixel_selection, len(used)) for pid, own in products.items()
        }
    return render_array(
        data,
        scale_bands,
        params,
        stats=stats,
        alpha_band=alpha_band,
        products=products,
        converted=True,
    )


def mosaic_tile(
    layers: Sequence[Layer],
    product: Product,
    grid: Grid,
    params: RenderParams,
    pixel_selection: str = "first",
    threads: int = 4,
    products: Sequence[Product] = (),
) -> ImageData:
    """Composite `layers` (image, its product) in paint order into one rendered tile
    (`grid` is a tile's: Grid.of_tile).

    `product` defines the bands, their ranges and colormaps (the mosaic's product);
    every image reads the bands of the same names from its own product. The scaling and
    output type hold for `products` (the mosaic's products; `product` and the layers'
    products at least) together.
    """
    bands, alpha_band = mosaic_bands(product, params, pixel_selection)
    names = [b.name for b in bands]
    every = {p.id: p for p in (product, *products, *(p for _, p in layers))}
    own = product_bands(list(every.values()), bands, params)
    alpha_name = alpha_band.name if alpha_band is not None else None

    def read(layer: Layer) -> numpy.ma.MaskedArray | None:
        image = layer[0]
        # an image's remote files at once; local files one after the other (CPU-bound)
        files = threads if any(deadline.is_remote(f.href) for f in image.files) else 1
        return read_image(image, layer[1], names, alpha_name, grid, params, own.dtype, files)

    result = composite(layers, read, pixel_selection, grid.footprint_pixels, threads)
    if result.data is None:
        raise EmptyTile(f"no image of this mosaic has valid pixels in tile {grid.tile}")
    rendered = render_composite(
        result.data, bands, params, pixel_selection, result.used, own.bands, alpha_band
    )
    used = [i.id for i in result.used]
    return rendered.image(grid.crs, grid.bounds, assets=used, read=result.read)
