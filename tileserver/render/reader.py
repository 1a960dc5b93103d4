"""Read the pixels of named bands of one catalog image, whatever files they live in, onto
the one grid type (`Grid`: a map tile, a download or a chip)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy
import rio_tiler.reader
from affine import Affine
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.features import rasterize
from rasterio.io import DatasetReader
from rasterio.transform import array_bounds, from_bounds, from_gcps
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.utils import get_vrt_transform

from tileserver import deadline, opener, pyramids
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, Image, Product
from tileserver.metrics import timed
from tileserver.opener import DATASETS, ContextPool, thread_gdal_env
from tileserver.render.errors import ImageNotReadable, RenderError, UnknownBand, gdal_reason

# The one grid type: where output pixels lie, for a map tile, a download or a chip.
#
# A grid is a CRS, a north-up affine transform and a size. A map tile's grid also keeps its
# tile index, so its pixels are read through the tile matrix set (rio-tiler's tile path,
# render/reader.py read_tile) and its bounds are the TMS's own numbers.

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


# Reading bands

# a file without overviews is read at coarse zooms through its reduced copy (pyramids.py),
# and its own reads stay under twice its resolution: rio-tiler's warning on every open is noise
warnings.filterwarnings("ignore", category=NoOverviewWarning)


@dataclass(frozen=True)
class FileRead:
    """The bands read from one file in one call (same nodata for all of them)."""

    href: str
    indexes: tuple[int, ...]  # 1-based, as GDAL counts
    positions: tuple[int, ...]  # where each band goes in the output stack
    nodata: float | None


def resolve_bands(product: Product, names: Sequence[str]) -> list[Band]:
    """The product's Band records for `names`, in that order; UnknownBand names the culprit."""
    bands = []
    for name in names:
        band = product.band(name)
        if band is None:
            known = ", ".join(b.name for b in product.bands)
            raise UnknownBand(f"unknown band '{name}' for product '{product.id}' (bands: {known})")
        bands.append(band)
    return bands


def holds(data_type: str, value: float) -> bool:
    """Whether a band of `data_type` can hold `value` (a nodata GDAL compares pixels with):
    integers in range for integer types, anything in range (or infinite) for floats."""
    dtype = numpy.dtype(DATA_TYPE_TO_NUMPY[data_type])
    if dtype.kind == "f":
        info = numpy.finfo(dtype)
        return math.isnan(value) or math.isinf(value) or float(info.min) <= value <= float(info.max)
    info = numpy.iinfo(dtype)
    return (
        math.isfinite(value)
        and float(value).is_integer()
        and int(info.min) <= value <= int(info.max)
    )


def check_nodata(nodata: float | None, bands: Sequence[Band]) -> None:
    """Refuse a request `nodata` that a band's type cannot hold (GDAL cannot compare it)."""
    if nodata is None:
        return
    for band in bands:
        if not holds(band.data_type, nodata):
            dtype = numpy.dtype(DATA_TYPE_TO_NUMPY[band.data_type])
            info = numpy.finfo(dtype) if dtype.kind == "f" else numpy.iinfo(dtype)
            raise RenderError(
                f"nodata {nodata:g} is not a value of band '{band.name}' ({band.data_type}: "
                f"{info.min:g}..{info.max:g})"
            )


def plan_reads(image: Image, bands: Sequence[Band], nodata: float | None = None) -> list[FileRead]:
    """Group the bands by file so each file is opened once per request."""
    check_nodata(nodata, bands)
    if image.storage_state == "remote" or not image.files:
        raise ImageNotReadable(
            f"image '{image.id}' is remote: it is in the catalog but has no files to read"
        )
    groups: dict[tuple[str, float | None], tuple[list[int], list[int]]] = {}
    for position, band in enumerate(bands):
        if band.file_index >= len(image.files):
            raise ImageNotReadable(
                f"band '{band.name}' is in file {band.file_index} but image '{image.id}' "
                f"has {len(image.files)} file(s)"
            )
        band_nodata = nodata if nodata is not None else band.nodata
        key = (image.files[band.file_index].href, band_nodata)
        indexes, positions = groups.setdefault(key, ([], []))
        indexes.append(band.band_index + 1)
        positions.append(position)
    return [
        FileRead(href, tuple(indexes), tuple(positions), band_nodata)
        for (href, band_nodata), (indexes, positions) in groups.items()
    ]


@contextmanager
def image_reader(image: Image, href: str, **kwargs) -> Iterator[Reader]:
    """A rio-tiler Reader of one of `image`'s files, on a dataset lent by the pool, opened
    only where the image's product may read (opener.py).

    A checkpoint first (a request out of time or abandoned reads no more files); a remote
    file is read holding one of the process's remote-read slots (RemoteBusy if none frees).
    """
    deadline.check()
    try:
        allowed = opener.for_product(image.product_id)
        allowed.check(href)  # before anything looks at the file, the slot's VRT peek too
        with (
            deadline.REMOTE_READS.slot(href),
            DATASETS.dataset(href, allowed, str(image.modified)) as dataset,
        ):
            if dataset.crs is None and dataset.gcps[0]:
                with placed_by_gcps(dataset) as placed:
                    yield Reader(href, dataset=placed, **kwargs)
            else:
                yield Reader(href, dataset=dataset, **kwargs)
    except opener.Refused as exc:
        raise ImageNotReadable(
            f"file {file_number(image, href)} of image '{image.id}' cannot be read: {exc}"
        ) from None


def placed_by_gcps(dataset) -> WarpedVRT:
    """A GCP-placed dataset on the grid its GCPs fit, Float64 with NaN where it has no pixels.

    rio-tiler warps such datasets itself with an alpha band of 255 in the working type GDAL
    picks (Int64 for a BEAM-DIMAP's UInt32 flags beside UInt16 radiances), then reads that
    alpha against the type's maximum: every pixel of every band but Byte and UInt16 ones came
    out transparent. NaN marks outside without an alpha band or the source bands' nodata
    (each band's own nodata still masks it in read_bands); Float64 holds every source type.
    """
    points, crs = dataset.gcps
    return WarpedVRT(
        dataset,
        src_crs=crs,
        src_transform=from_gcps(points),
        dtype="float64",
        nodata=math.nan,
    )


def file_header(image: Image, href: str) -> tuple[CRS, Affine, int, int]:
    """The CRS, geotransform and size of one of the image's files, from a pooled dataset."""
    try:
        with image_reader(image, href) as reader:
            src = reader.dataset
            crs, transform, width, height = src.crs, src.transform, src.width, src.height
    except RasterioIOError as exc:
        raise ImageNotReadable(
            f"cannot read file {file_number(image, href)} of image '{image.id}': {gdal_reason(exc)}"
        ) from exc
    if crs is None:
        raise ImageNotReadable(f"file {file_number(image, href)} of image '{image.id}' has no CRS")
    return crs, transform, width, height


def file_number(image: Image, href: str) -> int:
    """Which of the image's files `href` is: errors name files by number, never by path."""
    return next((i for i, f in enumerate(image.files) if f.href == href), 0)


def _stack(reads: Sequence[FileRead], results: Sequence[ImageData], count: int) -> ImageData:
    """Put each file's bands back in request order."""
    first = results[0]
    if len(reads) == 1 and reads[0].positions == tuple(range(count)):
        return first  # one file in request order: nothing to move
    data = numpy.ma.masked_all((count, first.height, first.width), dtype="float64")
    dtypes = []
    for read, result in zip(reads, results, strict=True):
        dtypes.append(result.array.dtype)
        for i, position in enumerate(read.positions):
            data[position] = result.array[i]
    dtype = numpy.result_type(*dtypes)
    array = numpy.ma.MaskedArray(data.data.astype(dtype), mask=numpy.ma.getmaskarray(data))
    return ImageData(array, bounds=first.bounds, crs=first.crs)


def read_mixed(
    reader: Reader, file_read: FileRead, read: Callable[[Reader, FileRead], ImageData]
) -> ImageData:
    """`read`, band by band when the file's bands differ in type (GDAL reads one type per call).

    A VRT over a BEAM-DIMAP product holds Int8, UInt16 and Int32 bands side by side.
    """
    dtypes = [reader.dataset.dtypes[i - 1] for i in file_read.indexes]
    if len(set(dtypes)) == 1:
        return read(reader, file_read)
    parts = [
        read(reader, replace(file_read, indexes=(index,), positions=(position,)))
        for index, position in zip(file_read.indexes, file_read.positions, strict=True)
    ]
    dtype = numpy.result_type(*dtypes)
    array = numpy.ma.concatenate([part.array.astype(dtype) for part in parts])
    return ImageData(array, bounds=parts[0].bounds, crs=parts[0].crs)


def read_bands(
    image: Image,
    bands: Sequence[Band],
    read: Callable[[Reader, FileRead], ImageData],
    tms: TileMatrixSet | None = None,
    nodata: float | None = None,
    threads: int = 4,
    alpha: Band | None = None,
    cloud: tuple[Band, frozenset[int]] | None = None,
) -> ImageData:
    """Read `bands` of `image` with `read(reader, file_read)` per file; one masked stack.

    Each band's `nodata` (or the request's `nodata`) masks its pixels; the file's own
    mask (internal nodata, alpha, mask band) applies too. `alpha`, a mask band of the
    product (0 is transparent), is read with them and folded into every band's mask: the
    one place a product's alpha band applies. A requested band is never also the alpha.
    `cloud`, a class band and classes (a request's `cloud_mask`), is read on the same grid
    with nearest resampling (classes are not averaged) and folded in the same way.
    """
    if cloud is not None:
        img = read_bands(image, bands, read, tms, nodata, threads, alpha)
        # tile and grid reads carry their resampling; point and chip reads are nearest already
        nearest = replace(read, resampling="nearest") if hasattr(read, "resampling") else read
        classes = read_bands(image, [cloud[0]], nearest, tms, None, 1).array
        return fold_classes(img, classes, cloud[1])
    to_read = [*bands, alpha] if alpha is not None and alpha not in bands else list(bands)
    reads = plan_reads(image, to_read, nodata)

    def one(file_read: FileRead) -> ImageData:
        options = {"nodata": file_read.nodata} if file_read.nodata is not None else {}
        try:
            kwargs = {"tms": tms} if tms is not None else {}
            with (
                timed("read"),
                image_reader(image, file_read.href, options=options, **kwargs) as reader,
            ):
                reduced = reduced_copy(image, file_read.href, reader, read)
                if reduced is None:
                    result = read_mixed(reader, file_read, read)
            if reduced is not None:
                with (
                    timed("read"),
                    image_reader(image, reduced, options=options, **kwargs) as small,
                ):
                    result = read_mixed(small, file_read, read)
        except RasterioIOError as exc:
            number = file_number(image, file_read.href)
            raise ImageNotReadable(
                f"cannot read file {number} of image '{image.id}': {gdal_reason(exc)}"
            ) from exc
        if result.array.dtype.kind == "f":  # NaN is no value (outside a GCP-placed file)
            result.array.mask = numpy.ma.getmaskarray(result.array) | numpy.isnan(result.array.data)
        return result

    if len(reads) == 1 or threads <= 1:
        results = [one(r) for r in reads]
    else:
        with ContextPool(max_workers=min(threads, len(reads))) as pool:
            results = list(pool.map(one, reads))
    stacked = _stack(reads, results, len(to_read))
    return fold_alpha(stacked) if len(to_read) > len(bands) else stacked


def fold_alpha(img: ImageData) -> ImageData:
    """The stack without its last band (an alpha band), masked where the alpha is 0 or has no
    value. The bands keep the stack's data type."""
    array = img.array
    opaque = ~numpy.ma.getmaskarray(array[-1]) & (array.data[-1] != 0)
    bands = array[:-1]
    mask = numpy.ma.getmaskarray(bands) | ~opaque
    return ImageData(numpy.ma.MaskedArray(bands.data, mask=mask), bounds=img.bounds, crs=img.crs)


def fold_classes(
    img: ImageData, classes: numpy.ma.MaskedArray, masked: frozenset[int]
) -> ImageData:
    """`img` also masked where the (1, h, w) class band holds one of the `masked` classes
    (a class pixel without a value masks nothing)."""
    hit = ~numpy.ma.getmaskarray(classes[0]) & numpy.isin(classes.data[0], list(masked))
    mask = numpy.ma.getmaskarray(img.array) | hit
    array = numpy.ma.MaskedArray(img.array.data, mask=mask)
    return ImageData(array, bounds=img.bounds, crs=img.crs)


@dataclass(frozen=True)
class TileRead:
    """A `read` for read_bands that reads one tile of the reader's TMS."""

    x: int
    y: int
    z: int
    tilesize: int
    resampling: str

    def __call__(self, reader: Reader, file_read: FileRead) -> ImageData:
        """The tile's pixels of the file's bands `file_read` names."""
        return read_tile(
            reader, self.x, self.y, self.z, self.tilesize, file_read.indexes, self.resampling
        )

    def coarseness(self, reader: Reader) -> float:
        """File pixels per tile pixel, along x in the TMS's CRS (0 when unknown)."""
        tms = reader.tms
        left, _, right, _ = tms.xy_bounds(self.x, self.y, self.z)
        try:
            west, _, east, _ = transform_bounds(
                reader.crs, tms.rasterio_crs, *reader.bounds, densify_pts=21
            )
        except Exception:  # a CRS pair GDAL cannot transform: read the file as it is
            return 0.0
        if not (math.isfinite(west) and math.isfinite(east)) or east <= west:
            return 0.0
        return ((right - left) / self.tilesize) / ((east - west) / reader.dataset.width)


def tile_reader(x: int, y: int, z: int, tilesize: int, resampling: str) -> TileRead:
    """A `read` for read_bands that reads one tile of the reader's TMS."""
    return TileRead(x, y, z, tilesize, resampling)


def reduced_copy(image: Image, href: str, reader: Reader, read: Callable) -> str | None:
    """The reduced copy (tileserver/pyramids.py) a tile read takes instead of `href`: when
    the tile is coarser than twice the file's pixels, the file has no overviews and the
    server made a copy. None: read the file."""
    if not isinstance(read, TileRead) or not isinstance(reader.dataset, DatasetReader):
        return None
    if reader.dataset.overviews(1) or read.coarseness(reader) < pyramids.REDUCED_FACTOR:
        return None
    folder = pyramids.reduced_folder(opener.current_confinement().data_dir, image.product_id)
    path = folder / pyramids.reduced_name(href, pyramids.source_version(href))
    return str(path) if path.exists() else None  # none yet, or the file changed since


# below this share of a tile's pixels, a tile reads only the part of it the image covers
PARTIAL_TILE_SHARE = 0.25


def covered_window(
    reader: Reader, x: int, y: int, z: int, tilesize: int
) -> tuple[int, int, int, int] | None:
    """The tile pixels (col0, row0, col1, row1) the image's bounds cover, when they are a
    small part of the tile; None otherwise (or when the bounds cannot be projected)."""
    tms = reader.tms
    left, bottom, right, top = tms.xy_bounds(x, y, z)
    try:
        west, south, east, north = transform_bounds(
            reader.crs, tms.rasterio_crs, *reader.bounds, densify_pts=21
        )
    except Exception:  # a CRS pair GDAL cannot transform: rio-tiler's own path decides
        return None
    if not all(map(math.isfinite, (west, south, east, north))) or west >= east or south >= north:
        return None
    size_x, size_y = (right - left) / tilesize, (top - bottom) / tilesize
    col0 = max(0, math.floor((west - left) / size_x))
    col1 = min(tilesize, math.ceil((east - left) / size_x))
    row0 = max(0, math.floor((top - north) / size_y))
    row1 = min(tilesize, math.ceil((top - south) / size_y))
    if col1 <= col0 or row1 <= row0:
        return None
    if (col1 - col0) * (row1 - row0) > PARTIAL_TILE_SHARE * tilesize * tilesize:
        return None
    return col0, row0, col1, row1


def read_tile(
    reader: Reader,
    x: int,
    y: int,
    z: int,
    tilesize: int,
    indexes: Sequence[int],
    resampling: str,
    partial: bool | None = None,
) -> ImageData:
    """One tile of the reader's TMS, at a cost bounded by the image's size in the tile.

    rio-tiler warps the whole tile at the image's own resolution: a tile far below the
    image's zooms (QGIS starts at zoom 0) warps millions of empty pixels and reads the whole
    image for it (minutes). When the image covers a small part of the tile, only the tile
    pixels over the image are read, at the tile's resolution (from overviews), and placed
    in a masked tile. `partial` forces one way or the other (tests).
    """
    window = None
    if partial is not False:
        if not reader.tile_exists(x, y, z):
            raise TileOutsideBounds(f"Tile(x={x}, y={y}, z={z}) is outside bounds")
        window = covered_window(reader, x, y, z, tilesize)
        if window is None and partial:
            window = (0, 0, tilesize, tilesize)
    options = {"resampling_method": resampling, "reproject_method": resampling}
    if window is None:
        return reader.tile(x, y, z, tilesize=tilesize, indexes=indexes, **options)
    col0, row0, col1, row1 = window
    tms = reader.tms
    bounds = tms.xy_bounds(x, y, z)
    # the warped grid rio-tiler reads the whole tile from, of which only the window is read
    transform, width, height = get_vrt_transform(
        reader.dataset, bounds, tilesize, tilesize, dst_crs=tms.rasterio_crs
    )
    span_x, span_y = width / tilesize, height / tilesize
    part = rio_tiler.reader.read(
        reader.dataset,
        indexes=indexes,
        width=col1 - col0,
        height=row1 - row0,
        window=Window(col0 * span_x, row0 * span_y, (col1 - col0) * span_x, (row1 - row0) * span_y),
        vrt_options={
            "crs": tms.rasterio_crs,
            "transform": transform,
            "width": width,
            "height": height,
            "dtype": reader.dataset.dtypes[0],
        },
        **{**reader.options, **options},
    )
    fill = part.nodata if part.nodata is not None else 0
    data = numpy.full((part.count, tilesize, tilesize), fill, dtype=part.array.dtype)
    mask = numpy.ones(data.shape, dtype=bool)
    data[:, row0:row1, col0:col1] = part.array.data
    mask[:, row0:row1, col0:col1] = numpy.ma.getmaskarray(part.array)
    return ImageData(
        numpy.ma.MaskedArray(data, mask=mask),
        bounds=bounds,
        crs=tms.rasterio_crs,
        assets=part.assets,
        metadata=part.metadata,
        nodata=part.nodata,
        scales=part.scales,
        offsets=part.offsets,
        band_names=part.band_names,
        band_descriptions=part.band_descriptions,
        dataset_statistics=part.dataset_statistics,
    )


def zoom_range(image: Image, tms: TileMatrixSet) -> tuple[int, int]:
    """The zooms a client should ask for, from the image's first file (rio-tiler's rule)."""
    with image_reader(image, image.files[0].href, tms=tms) as reader:
        return reader.minzoom, reader.maxzoom
