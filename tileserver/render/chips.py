"""Image chips (the JRC CbM chip services, SEMANTICS.md section 3): grids, reads, LUTs, files.

A chip is a window of one file's pixel grid, in the image's own CRS, centred on a point:
the gallery's grid is the first band's file, a raw chip's grid is its band's file. Other
bands are read onto that grid. Everything here is free of HTTP so that chips by location
and chips by parcel (a centre and an outline) share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.io import MemoryFile
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from tileserver.catalog.models import Band, Image
from tileserver.deadline import check
from tileserver.render.errors import ImageNotReadable, RenderError
from tileserver.render.pipeline import ImageFormat, encode
from tileserver.render.reader import FileRead, Grid, file_header, file_number, read_bands

WGS84 = CRS.from_epsg(4326)
OUTLINE_COLOR = (255, 255, 0)  # yellow: stands out on false-colour and true-colour chips


@dataclass(frozen=True)
class Lut:
    """How gallery chips are stretched to bytes: percentiles of each chip, or fixed ranges.

    `percentiles` is (p_low, p_high), applied per band to the chip's valid pixels;
    `ranges` is one absolute (low, high) per band.
    """

    percentiles: tuple[float, float] | None = None
    ranges: tuple[tuple[float, float], ...] | None = None

    @property
    def text(self) -> str:
        """The canonical `lo_hi` / `lo_hi_lo_hi_lo_hi` form (part of cache keys)."""
        values = self.percentiles or tuple(v for pair in self.ranges or () for v in pair)
        return "_".join(f"{v:g}" for v in values)


def parse_lut(text: str, bands: int = 3) -> Lut:
    """`5_95` (percentiles) or six numbers (absolute low/high per band); RenderError if bad."""
    try:
        values = tuple(float(v) for v in text.split("_"))
    except ValueError:
        raise RenderError(
            f"lut '{text}' is not numbers joined by '_': give two percentiles like 5_95 "
            f"or {2 * bands} absolute values low_high per band like 0_3000_0_3000_0_3000"
        ) from None
    if any(not math.isfinite(v) for v in values):
        raise RenderError(f"lut '{text}' has a value that is not a finite number")
    if len(values) == 2:
        low, high = values
        if not (0 <= low <= 100 and 0 <= high <= 100):
            raise RenderError(f"lut '{text}': percentiles must be within 0..100")
        if low >= high:
            raise RenderError(f"lut '{text}': the low percentile must be smaller than the high")
        return Lut(percentiles=(low, high))
    if len(values) == 2 * bands:
        pairs = tuple(zip(values[::2], values[1::2], strict=True))
        for i, (low, high) in enumerate(pairs, start=1):
            if low >= high:
                raise RenderError(
                    f"lut '{text}': band {i} low {low:g} must be smaller than its high {high:g}"
                )
        return Lut(ranges=pairs)
    raise RenderError(
        f"lut '{text}' has {len(values)} values: give 2 (percentiles, e.g. 5_95) "
        f"or {2 * bands} (low_high for each of the {bands} bands)"
    )


def file_grid(image: Image, href: str) -> tuple[CRS, Affine]:
    """The CRS and geotransform of one file: the grid chips of its bands snap to."""
    crs, transform, _, _ = file_header(image, href)
    if transform.b or transform.d:
        raise ImageNotReadable(
            f"file {file_number(image, href)} of image '{image.id}' has a rotated grid: "
            "chips need north-up files"
        )
    return crs, transform


def band_grid(image: Image, band: Band) -> tuple[CRS, Affine]:
    """The grid of the file holding `band` in `image`."""
    if image.storage_state == "remote" or band.file_index >= len(image.files):
        raise ImageNotReadable(f"image '{image.id}' has no file holding band '{band.name}'")
    return file_grid(image, image.files[band.file_index].href)


def chip_grid(crs: CRS, transform: Affine, lon: float, lat: float, width: int, height: int) -> Grid:
    """The width x height window of the grid (crs, transform) centred on lon/lat (WGS84).

    The window is snapped to whole pixels: its centre is the grid line (even sizes) or
    pixel centre (odd sizes) nearest to the point, so the point falls in the middle pixel.
    """
    xs, ys = transform_points(WGS84, crs, [lon], [lat])
    col, row = ~transform * (xs[0], ys[0])
    window = Window(
        math.floor(col - width / 2 + 0.5), math.floor(row - height / 2 + 0.5), width, height
    )
    return Grid(crs, window_transform(window, transform), width, height)


def chip_pixels(size_m: float, transform: Affine) -> tuple[int, int]:
    """Columns and rows of a chip of `size_m` metres on a grid (rounded half up, at least 1)."""
    return (
        max(1, math.floor(size_m / abs(transform.a) + 0.5)),
        max(1, math.floor(size_m / abs(transform.e) + 0.5)),
    )


def chip_area(lon: float, lat: float, half_m: float) -> BaseGeometry:
    """A square of half-side `half_m` metres around lon/lat, in WGS84 (the point when 0).

    Used to pick, of several images of one date, the one covering the chip best.
    """
    if half_m <= 0:
        return shapely.Point(lon, lat)
    local = ProjCRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    to_wgs84 = Transformer.from_crs(local, "EPSG:4326", always_xy=True)
    square = shapely.segmentize(box(-half_m, -half_m, half_m, half_m), half_m / 4)
    return shapely.transform(square, lambda xy: numpy.column_stack(to_wgs84.transform(*xy.T)))


def part_reader(grid: Grid):
    """A `read` for read_bands: the grid's bounds, on the grid, nearest neighbour."""

    def read(reader: Reader, file_read: FileRead) -> ImageData:
        return reader.part(
            grid.bounds,
            dst_crs=grid.crs,
            bounds_crs=grid.crs,
            indexes=file_read.indexes,
            width=grid.width,
            height=grid.height,
            resampling_method="nearest",
            reproject_method="nearest",
        )

    return read


def read_chip(
    image: Image,
    bands: Sequence[Band],
    grid: Grid,
    threads: int = 4,
    alpha: Band | None = None,
) -> numpy.ma.MaskedArray:
    """(bands, rows, cols) pixels of `image` on `grid`, masked where each band is nodata
    (and where the `alpha` band, if given, is 0)."""
    check()  # per chip
    return read_bands(image, bands, part_reader(grid), threads=threads, alpha=alpha).array


def lut_ranges(data: numpy.ma.MaskedArray, lut: Lut) -> list[tuple[float, float]]:
    """(low, high) per band: the LUT's own, or the percentiles of the chip's valid pixels.

    Valid pixels are those valid in every band (the opaque ones); numpy.percentile's
    default linear method, as the JRC service uses. A chip with no valid pixel gets (0, 0).
    """
    if lut.ranges is not None:
        if len(lut.ranges) != data.shape[0]:
            raise RenderError(f"lut has {len(lut.ranges)} ranges for {data.shape[0]} bands")
        return list(lut.ranges)
    valid = valid_pixels(data)
    ranges = []
    for band in numpy.asarray(data.data, dtype="float64"):
        values = band[valid]
        if values.size == 0:
            ranges.append((0.0, 0.0))
            continue
        low, high = numpy.percentile(values, lut.percentiles)
        ranges.append((float(low), float(high)))
    return ranges


def valid_pixels(data: numpy.ma.MaskedArray) -> numpy.ndarray:
    """True where every band has a valid pixel."""
    return ~numpy.ma.getmaskarray(data).any(axis=0)


def stretch(values: numpy.ndarray, low: float, high: float) -> numpy.ndarray:
    """The JRC stretch to bytes: 255 (x - lo) / (hi - lo) clipped, truncated to uint8.

    A degenerate range (lo >= hi, e.g. a flat chip) gives clip(255 (x - lo), 0, 255).
    """
    values = numpy.asarray(values, dtype="float64")
    scaled = 255 * (values - low) / (high - low) if low < high else 255 * (values - low)
    return numpy.clip(scaled, 0, 255).astype(numpy.uint8)


def outline_pixels(outline: dict, grid: Grid) -> numpy.ndarray:
    """True on the pixels the outline's boundary (WGS84 GeoJSON) crosses on the chip."""
    geometry = shape(transform_geom(WGS84, grid.crs, outline))
    boundary = geometry.boundary if geometry.geom_type.endswith("Polygon") else geometry
    if boundary.is_empty:
        return numpy.zeros((grid.height, grid.width), dtype=bool)
    burned = rasterize(
        [boundary],
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        all_touched=True,
        fill=0,
        default_value=1,
        dtype="uint8",
    )
    return burned.astype(bool)


def gallery_chip(
    data: numpy.ma.MaskedArray, lut: Lut, outline: numpy.ndarray | None = None
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Bytes (bands, rows, cols) and alpha (0/255) of a gallery chip; nodata is transparent.

    Where `outline` is True the pixel is painted OUTLINE_COLOR and made opaque.
    """
    valid = valid_pixels(data)
    raw = numpy.asarray(data.data, dtype="float64")
    out = numpy.stack(
        [stretch(band, lo, hi) for band, (lo, hi) in zip(raw, lut_ranges(data, lut), strict=True)]
    )
    out[:, ~valid] = 0
    alpha = numpy.where(valid, 255, 0).astype(numpy.uint8)
    if outline is not None and outline.any():
        for i in range(out.shape[0]):
            out[i][outline] = OUTLINE_COLOR[i % len(OUTLINE_COLOR)]
        alpha[outline] = 255
    return out, alpha


def gallery_png(
    data: numpy.ma.MaskedArray, lut: Lut, outline: numpy.ndarray | None = None
) -> bytes:
    """A gallery chip as RGBA PNG bytes."""
    out, alpha = gallery_chip(data, lut, outline)
    return encode(out, alpha, ImageFormat.png)


def fits(value: float, dtype: numpy.dtype) -> bool:
    """Whether `value` is exactly representable in `dtype` (a usable nodata)."""
    with numpy.errstate(all="ignore"):
        return bool(numpy.array(value).astype(dtype) == value)


def raw_geotiff(
    data: numpy.ma.MaskedArray,
    grid: Grid,
    description: str,
    nodata: float | None,
    tags: dict | None = None,
) -> bytes:
    """A georeferenced single-band GeoTIFF of a raw chip, source values unchanged.

    Masked pixels become `nodata` when the type can hold it; otherwise, when any pixel is
    masked, the file gets an internal mask instead.
    """
    array = numpy.ma.asarray(data)
    dtype = array.dtype
    mask = numpy.ma.getmaskarray(array)
    use_nodata = nodata is not None and fits(nodata, dtype)
    profile = {
        "driver": "GTiff",
        "count": array.shape[0],
        "height": grid.height,
        "width": grid.width,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "compress": "deflate",
        **({"nodata": nodata} if use_nodata else {}),
    }
    filled = array.filled(nodata if use_nodata else 0)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(filled)
            for i in range(1, array.shape[0] + 1):
                dst.set_band_description(i, description)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            if not use_nodata and mask.any():
                dst.write_mask(numpy.where(mask.any(axis=0), 0, 255).astype("uint8"))
        return memfile.read()
