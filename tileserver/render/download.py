"""Downloads: the grid a request asks for, its pixels, and the file that holds them.

An image, a search mosaic or a search stack becomes one array on one output grid:

- The grid is the source's own unless the request asks for another: no `crs`,
  `resolution`, `width` or `height` means the pixels of the source grid (of the finest
  requested band), unwarped, cut to the requested area along whole source pixels. A
  mosaic or stack uses its first image's grid and takes in the extent of every image.
- The area (a bbox or a WGS84 GeoJSON geometry) is clipped to the sources' extent; pixels
  whose centres are outside a geometry are nodata.
- Pixels come through the same path as map tiles: read_bands with a `read` callback,
  `composite` (pixel selection, paint order) and `render_composite` (scaling).
- The file is a cloud-optimized GeoTIFF (GDAL's COG driver: tiled, overviews when larger
  than a block) or a plain .npy array, written to disk so nothing is held twice in memory.

Everything a file holds except its pixels (grid, band names and types, nodata) is known
before reading, so `raster_info` describes exactly the file a download writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import geometry_mask
from rasterio.warp import calculate_default_transform, transform_bounds, transform_geom
from rasterio.windows import Window
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from shapely.geometry import shape

from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, Image, Product
from tileserver.deadline import check
from tileserver.opener import open_staged
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import (
    VALUE_PRESERVING,
    Layer,
    composite,
    mosaic_bands,
    product_bands,
    read_image,
    render_composite,
    selection_bands,
)
from tileserver.render.pipeline import RenderParams, expression_blocks, output_scaling
from tileserver.render.reader import (
    WGS84,
    FileRead,
    Grid,
    check_nodata,
    file_header,
    holds,
    plan_reads,
    resolve_bands,
)
from tileserver.scaling_rules import level_steps

# fractions of a pixel that reprojection noise adds to whole-pixel edges
PIXEL_TOLERANCE = 1e-6
FLATTEN_KEYS = ("none", "day", "month", "year")
# GDAL overview resampling names of the request's `resampling`
OVERVIEW_RESAMPLING = {"cubic_spline": "CUBICSPLINE"}
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "BLOCKSIZE": "512",
    "OVERVIEWS": "AUTO",
    "BIGTIFF": "IF_SAFER",
}


class DownloadError(RenderError):
    """A download request that cannot be honoured as asked (a 400)."""


class OutsideError(DownloadError):
    """The requested area does not meet the sources (a 404)."""


class TooLarge(DownloadError):
    """A download above the pixel budget (a 413); the message says the size and the limit."""


@dataclass(frozen=True)
class GridRequest:
    """What a request says about the output grid; every field optional."""

    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: CRS = WGS84
    geometry: dict | None = None  # GeoJSON in WGS84; pixels whose centres are outside: nodata
    crs: CRS | None = None
    resolution: float | None = None  # in units of the output CRS
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.resolution is not None and (self.width is not None or self.height is not None):
            raise DownloadError("give resolution or width/height, not both")
        if self.bbox is not None and self.geometry is not None:
            raise DownloadError("give a bbox or a geometry, not both")

    @property
    def native(self) -> bool:
        """Whether the request keeps the source's resolution (and CRS unless one is given)."""
        return self.resolution is None and self.width is None and self.height is None


@dataclass(frozen=True)
class OutputBand:
    """One band of the file: its name, GeoTIFF description and data type."""

    name: str
    description: str
    data_type: str


@dataclass(frozen=True)
class Plan:
    """What a download holds, known before any pixel is read."""

    bands: list[Band]  # the bands read (the mosaic product's)
    alpha: Band | None
    outputs: list[OutputBand]  # per layer of the file (one image, one mosaic, one stack group)
    data_type: str
    nodata: float
    pixel_selection: str = "first"
    layer_keys: list[str] = field(default_factory=list)  # stack groups; empty: not a stack
    products: dict[str, list[Band]] = field(default_factory=dict)  # each product's own bands
    read_dtype: str = "float64"  # what the images are composited in (mosaic.product_bands)

    @property
    def descriptions(self) -> list[str]:
        """Band descriptions of the whole file: "<key> <band>" per stack group and band."""
        if not self.layer_keys:
            return [b.description for b in self.outputs]
        return [f"{key} {b.description}" for key in self.layer_keys for b in self.outputs]

    @property
    def layers(self) -> int:
        """How many (bands, y, x) blocks the file holds."""
        return max(1, len(self.layer_keys))


# ----------------------------------------------------------------------------- requests


def parse_crs(value: str, what: str = "crs") -> CRS:
    """A CRS from `EPSG:xxxx`, a bare EPSG code, WKT or a PROJ string; DownloadError if not."""
    text = value.strip()
    try:
        crs = CRS.from_epsg(int(text)) if text.isdecimal() else CRS.from_user_input(text)
    except (CRSError, ValueError) as exc:
        raise DownloadError(f"{what} '{value}' is not a coordinate system: {exc}") from None
    return crs


def parse_bbox(value: str) -> tuple[float, float, float, float]:
    """`minx,miny,maxx,maxy` as four finite numbers with min < max."""
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise DownloadError(f"bbox '{value}' is not four comma-separated numbers") from None
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise DownloadError(f"bbox '{value}' needs four finite numbers: minx,miny,maxx,maxy")
    minx, miny, maxx, maxy = numbers
    if not (minx < maxx and miny < maxy):
        raise DownloadError(f"bbox '{value}' needs minx < maxx and miny < maxy")
    return numbers


def _finite(bounds: Sequence[float], what: str) -> tuple[float, float, float, float]:
    if not all(math.isfinite(v) for v in bounds):
        raise DownloadError(f"{what} cannot be expressed in the output coordinate system")
    return tuple(bounds)


def _reproject_bounds(src: CRS, dst: CRS, bounds: Sequence[float], what: str) -> tuple:
    """Bounds in another CRS (edges densified); DownloadError when they do not transform."""
    if src == dst:
        return tuple(bounds)
    try:
        return _finite(transform_bounds(src, dst, *bounds, densify_pts=21), what)
    except DownloadError:
        raise
    except Exception as exc:  # PROJ refuses points outside its domain
        raise DownloadError(f"{what} cannot be expressed in {dst.to_string()}: {exc}") from None


def area_bounds(request: GridRequest, crs: CRS) -> tuple | None:
    """The requested area's bounds in `crs` (None: no area asked for)."""
    if request.bbox is not None:
        return _reproject_bounds(request.bbox_crs, crs, request.bbox, "the bbox")
    if request.geometry is not None:
        try:
            projected = transform_geom(WGS84, crs, request.geometry)
        except Exception as exc:
            raise DownloadError(f"the geometry cannot be expressed in {crs}: {exc}") from None
        return _finite(shape(projected).bounds, "the geometry")
    return None


def area_wgs84(request: GridRequest) -> tuple | None:
    """The requested area as a WGS84 box (to look up the images that meet it)."""
    bounds = area_bounds(request, WGS84)
    if bounds is None:
        return None
    west, south, east, north = bounds
    if west > east:  # across the antimeridian
        west, east = -180.0, 180.0
    world = _intersect((west, south, east, north), (-180.0, -90.0, 180.0, 90.0))
    if world is None:
        raise DownloadError(
            f"the requested area ({', '.join(f'{v:g}' for v in bounds)} in WGS84) is outside "
            "longitudes -180..180 and latitudes -90..90"
        )
    return world


# ----------------------------------------------------------------------------- grids


def image_grid(image: Image, bands: Sequence[Band]) -> Grid:
    """The image's own grid for `bands`: the grid of the finest file holding one of them."""
    hrefs = dict.fromkeys(read.href for read in plan_reads(image, bands))
    grids = [Grid(*file_header(image, href)) for href in hrefs]
    return min(grids, key=lambda g: abs(g.transform.determinant))


def image_extent(image: Image, bands: Sequence[Band]) -> Grid:
    """The image's extent: its recorded finest grid when the catalog has it, else its files."""
    if image.crs and image.geotrans and image.width and image.height:
        try:
            crs = CRS.from_user_input(image.crs)
        except CRSError:
            return image_grid(image, bands)
        return Grid(crs, Affine.from_gdal(*image.geotrans), image.width, image.height)
    return image_grid(image, bands)


def _snap(value: float, up: bool) -> int:
    """A pixel edge as a whole pixel, outward, forgiving float noise."""
    if up:
        return math.ceil(value - PIXEL_TOLERANCE)
    return math.floor(value + PIXEL_TOLERANCE)


def _pixel_box(transform: Affine, bounds: Sequence[float]) -> tuple[int, int, int, int]:
    """(col0, row0, col1, row1) of the pixels of `transform` that cover `bounds`."""
    west, south, east, north = bounds
    inverse = ~transform
    cols, rows = zip(
        *(inverse * xy for xy in ((west, north), (west, south), (east, south), (east, north))),
        strict=True,
    )
    return (
        _snap(min(cols), False),
        _snap(min(rows), False),
        _snap(max(cols), True),
        _snap(max(rows), True),
    )


def _intersect(a: Sequence[float], b: Sequence[float]) -> tuple | None:
    west, south = max(a[0], b[0]), max(a[1], b[1])
    east, north = min(a[2], b[2]), min(a[3], b[3])
    return (west, south, east, north) if west < east and south < north else None


def default_resolution(anchor: Grid, crs: CRS) -> float:
    """The pixel size GDAL picks to warp `anchor` into `crs` (as gdalwarp without -tr)."""
    try:
        transform, _, _ = calculate_default_transform(
            anchor.crs, crs, anchor.width, anchor.height, *anchor.bounds
        )
    except Exception as exc:
        raise DownloadError(f"cannot warp the source grid to {crs.to_string()}: {exc}") from None
    return abs(transform.a)


def _pixels(span: float, resolution: float, what: str) -> int:
    count = span / resolution
    if not math.isfinite(count) or count > 2**31:
        raise TooLarge(f"resolution {resolution} gives an output more than 2^31 pixels {what}")
    return max(1, _snap(count, True))


def output_grid(anchor: Grid, extents: Sequence[Grid], request: GridRequest) -> Grid:
    """The grid a download is written on.

    Without crs/resolution/size: `anchor`'s own pixels (no resampling), cut to the
    requested area and the sources' extent along whole pixels. Otherwise a north-up grid
    in `crs` (default the anchor's) over that area: `resolution` in the CRS's units, or
    `width`/`height` (one alone keeps the area's aspect), or GDAL's default resolution.
    """
    native = request.native and (request.crs is None or request.crs == anchor.crs)
    crs = anchor.crs if native or request.crs is None else request.crs
    extent = None
    for grid in extents:
        bounds = _reproject_bounds(grid.crs, crs, grid.bounds, "an image's extent")
        extent = (
            bounds
            if extent is None
            else (
                min(extent[0], bounds[0]),
                min(extent[1], bounds[1]),
                max(extent[2], bounds[2]),
                max(extent[3], bounds[3]),
            )
        )
    if extent is None:
        raise OutsideError("there is no image to download")
    area = area_bounds(request, crs)
    if area is not None:
        clipped = _intersect(extent, area)
        if clipped is None:
            what = "bbox" if request.bbox is not None else "geometry"
            raise OutsideError(
                f"the {what} ({', '.join(f'{v:g}' for v in area)} in {crs.to_string()}) does "
                f"not overlap the images ({', '.join(f'{v:g}' for v in extent)})"
            )
        extent = clipped
    if native:
        col0, row0, col1, row1 = _pixel_box(anchor.transform, extent)
        return Grid(
            crs, anchor.transform * Affine.translation(col0, row0), col1 - col0, row1 - row0
        )
    west, south, east, north = extent
    if request.width is not None or request.height is not None:
        width, height = request.width, request.height
        if width is None:
            width = max(1, round(height * (east - west) / (north - south)))
        if height is None:
            height = max(1, round(width * (north - south) / (east - west)))
        xres, yres = (east - west) / width, (north - south) / height
    else:
        xres = yres = request.resolution or default_resolution(anchor, crs)
        width = _pixels(east - west, xres, "wide")
        height = _pixels(north - south, yres, "high")
    return Grid(crs, Affine(xres, 0, west, 0, -yres, north), width, height)


def inside_pixels(grid: Grid, geometry: dict) -> numpy.ndarray:
    """True on the grid pixels whose centre is inside a WGS84 GeoJSON geometry."""
    projected = transform_geom(WGS84, grid.crs, geometry)
    return geometry_mask(
        [projected], out_shape=grid.shape, transform=grid.transform, all_touched=False, invert=True
    )


def check_budget(grid: Grid, plan: Plan, limit: int) -> int:
    """The download's pixel count (width x height x bands x layers); TooLarge above `limit`."""
    count = len(plan.outputs)
    pixels = grid.width * grid.height * count * plan.layers
    if pixels > limit:
        layers = f" x {plan.layers} images" if plan.layer_keys else ""
        raise TooLarge(
            f"the download is {grid.width} x {grid.height} pixels x {count} bands{layers} = "
            f"{pixels} pixels, above the limit of {limit} (TILESERVER_DOWNLOAD_MAX_PIXELS): "
            "ask for a smaller bbox, a coarser resolution or fewer bands"
        )
    return pixels


# ----------------------------------------------------------------------------- reading


def aligned_window(grid: Grid, crs: CRS, transform: Affine) -> Window | None:
    """The window of a file that is exactly `grid` (same CRS, pixel size and pixel edges)."""
    if crs != grid.crs:
        return None
    g, s = grid.transform, transform
    if g.b or g.d or s.b or s.d:
        return None
    if not (math.isclose(g.a, s.a, rel_tol=1e-9) and math.isclose(g.e, s.e, rel_tol=1e-9)):
        return None
    col, row = (g.c - s.c) / s.a, (g.f - s.f) / s.e
    if abs(col - round(col)) > PIXEL_TOLERANCE or abs(row - round(row)) > PIXEL_TOLERANCE:
        return None
    return Window(round(col), round(row), grid.width, grid.height)


@dataclass(frozen=True)
class GridRead:
    """A `read` for read_bands that reads a file onto `grid`.

    A file already on the grid is read by window (its pixels unchanged, boundless outside
    it); any other is warped with a WarpedVRT whose transform and size are the grid's.
    `resampling` is a field so read_bands can read a class band with nearest instead.
    """

    grid: Grid
    resampling: str

    def __call__(self, reader: Reader, file_read: FileRead) -> ImageData:
        """The grid's pixels of the file's bands `file_read` names."""
        grid, src = self.grid, reader.dataset
        window = aligned_window(grid, src.crs, src.transform)
        if window is not None:
            return reader.read(indexes=file_read.indexes, window=window)
        vrt = {"crs": grid.crs, "transform": grid.transform, "width": grid.width}
        return reader.read(
            indexes=file_read.indexes,
            vrt_options={**vrt, "height": grid.height},
            resampling_method=self.resampling,
            reproject_method=self.resampling,
        )


def grid_reader(grid: Grid, resampling: str) -> GridRead:
    """A `read` for read_bands that reads a file onto `grid` (see GridRead)."""
    return GridRead(grid, resampling)


# ----------------------------------------------------------------------------- planning


def _shared_nodata(bands: Sequence[Band], params: RenderParams) -> float | None:
    if params.nodata is not None:
        return params.nodata
    values = {b.nodata for b in bands}
    return values.pop() if len(values) == 1 else None


def _holds(data_type: str, value: float | None) -> bool:
    """A nodata worth keeping: a number the output type holds (NaN is the fallback)."""
    return value is not None and not math.isnan(value) and holds(data_type, value)


def output_nodata(
    bands: Sequence[Band], scales: Sequence, data_type: str, params: RenderParams, selection: str
) -> float:
    """The file's nodata value.

    Unscaled values keep the bands' common nodata (or the request's `nodata`); otherwise
    NaN for float types and 0 for integer types (a valid pixel scaled to 0 then reads as
    nodata: ask for a float data_type to tell them apart).
    """
    unscaled = (
        not params.expression
        and not any(level_steps(b.processing_levels, params.processing_level) for b in bands)
        and selection in VALUE_PRESERVING
        and all(s is None for s in scales)
    )
    shared = _shared_nodata(bands, params) if unscaled else None
    if _holds(data_type, shared):
        return float(shared)
    return float("nan") if data_type.startswith("Float") else 0.0


def plan_download(
    product: Product,
    params: RenderParams,
    pixel_selection: str = "first",
    images: int = 1,
    layer_keys: Sequence[str] = (),
    products: Sequence[Product] = (),
) -> Plan:
    """Bands read and written, output type and nodata; RenderError for a bad request.

    The output type is the one render_array gives these bands with these parameters
    (SEMANTICS.md section 1: UInt16 bands without `scaling` stay raw UInt16), over the
    bands of that name in `product` and every one of `products` (a search's mosaic or
    stack spanning products).
    """
    bands, alpha = mosaic_bands(product, params, pixel_selection)
    if params.expression and (pixel_selection == "count" or pixel_selection.startswith("last")):
        raise RenderError(
            f"pixel_selection {pixel_selection} changes the bands an expression reads: "
            "use it without expression, or another pixel_selection"
        )
    check_nodata(params.nodata, bands + ([alpha] if alpha is not None else []))
    own = product_bands([product, *products], bands, params)
    scale_bands = selection_bands(bands, pixel_selection, images)
    if params.expression:
        names = descriptions = expression_blocks(params.expression)
    else:
        names = descriptions = [b.name for b in scale_bands]
    scales, data_type = output_scaling(
        scale_bands,
        params,
        {pid: selection_bands(b, pixel_selection, images) for pid, b in own.bands.items()},
        alpha,
    )
    nodata = output_nodata(bands, scales, data_type, params, pixel_selection)
    outputs = [
        OutputBand(name, description, data_type)
        for name, description in zip(names, descriptions, strict=True)
    ]
    return Plan(
        bands,
        alpha,
        outputs,
        data_type,
        nodata,
        pixel_selection,
        list(layer_keys),
        own.bands,
        own.dtype,
    )


# ----------------------------------------------------------------------------- rendering


def _empty(plan: Plan, grid: Grid) -> numpy.ma.MaskedArray:
    """A composite without any valid pixel, shaped as the selection's output."""
    count = len(plan.bands)
    if plan.pixel_selection == "count":
        count = 1
    elif plan.pixel_selection.startswith("lastband"):
        count -= 1
    return numpy.ma.masked_all((count, *grid.shape), dtype="float64")


def render_layers(
    layers: Sequence[Layer],
    plan: Plan,
    grid: Grid,
    params: RenderParams,
    geometry: dict | None = None,
    threads: int = 4,
    out: numpy.ndarray | None = None,
    valid: numpy.ndarray | None = None,
) -> numpy.ndarray:
    """One (bands, y, x) array of `layers` composited on `grid`, invalid pixels = nodata.

    Written into `out` when given (a stack's slot), so a stack is allocated once; `valid`
    (y, x) receives which pixels have a value (a picture's alpha: a valid pixel may be
    scaled to the nodata value).
    """
    names = [b.name for b in plan.bands]
    alpha_name = plan.alpha.name if plan.alpha is not None else None
    read_file = grid_reader(grid, params.resampling)

    def read(layer: Layer) -> numpy.ma.MaskedArray | None:
        return read_image(layer[0], layer[1], names, alpha_name, read_file, params, plan.read_dtype)

    outside = ~inside_pixels(grid, geometry) if geometry is not None else None
    result = composite(layers, read, plan.pixel_selection, grid.footprint_pixels, threads, outside)
    data = result.data if result.data is not None else _empty(plan, grid)
    if outside is not None:
        data = numpy.ma.MaskedArray(data.data, mask=numpy.ma.getmaskarray(data) | outside)
    rendered = render_composite(
        data, plan.bands, params, plan.pixel_selection, result.used, plan.products, plan.alpha
    )
    expected = numpy.dtype(DATA_TYPE_TO_NUMPY[plan.data_type])
    if rendered.data.dtype != expected or rendered.data.shape[0] != len(plan.outputs):
        raise RuntimeError(  # a bug: plan_download and the pipeline disagree
            f"rendered {rendered.data.shape[0]} {rendered.data.dtype} bands, "
            f"planned {len(plan.outputs)} {expected}"
        )
    if out is None:
        out = rendered.data
    else:
        out[...] = rendered.data
    out[:, rendered.mask == 0] = plan.nodata
    if valid is not None:
        valid[...] = rendered.mask != 0
    return out


def render_stack(
    groups: Sequence[Sequence[Layer]],
    plan: Plan,
    grid: Grid,
    params: RenderParams,
    geometry: dict | None = None,
    threads: int = 4,
) -> numpy.ndarray:
    """(group, bands, y, x): each group mosaicked with the plan's pixel selection."""
    dtype = DATA_TYPE_TO_NUMPY[plan.data_type]
    out = numpy.empty((len(groups), len(plan.outputs), *grid.shape), dtype=dtype)
    for i, group in enumerate(groups):
        check()  # per layer of the stack (and per image and file within it)
        render_layers(group, plan, grid, params, geometry, threads, out=out[i])
    return out


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def flatten_key(image: Image, flatten: str) -> Any:
    """The stack group an image falls in: its UTC day, month or year, or a property value."""
    acquired: datetime = image.acquired
    if flatten == "day":
        return acquired.strftime("%Y-%m-%d")
    if flatten == "month":
        return acquired.strftime("%Y-%m")
    if flatten == "year":
        return acquired.strftime("%Y")
    return image.properties.get(flatten)


def group_layers(layers: Sequence[Layer], flatten: str) -> list[tuple[str, list[Layer]]]:
    """Stack groups as (label, layers in paint order).

    `none`: one group per image, in the search's order, labelled with its date. A key
    (day, month, year or a property every image has): groups in sorted key order.
    """
    if flatten == "none":
        return [(layer[0].acquired.strftime("%Y-%m-%d"), [layer]) for layer in layers]
    groups: dict[Any, list[Layer]] = {}
    for layer in layers:
        key = flatten_key(layer[0], flatten)
        if not _scalar(key):
            raise DownloadError(
                f"flatten '{flatten}' is not one of {', '.join(FLATTEN_KEYS)} nor a property "
                f"with a plain value on every image (image '{layer[0].id}' has "
                f"{'none' if key is None else repr(key)})"
            )
        groups.setdefault(key, []).append(layer)
    ordered = sorted(groups, key=lambda k: (isinstance(k, str), k))
    return [(str(key), groups[key]) for key in ordered]


# ----------------------------------------------------------------------------- files


def _resampling_name(resampling: str) -> str:
    return OVERVIEW_RESAMPLING.get(resampling, resampling.upper())


def write_geotiff(
    path: str, data: numpy.ndarray, grid: Grid, plan: Plan, resampling: str = "nearest"
) -> None:
    """A cloud-optimized GeoTIFF of (bands, y, x) or (layers, bands, y, x) `data`.

    Band descriptions are the plan's, nodata is set; overviews (resampled with the
    request's `resampling`) exist when the image is larger than one 512-pixel block.
    The pixels go to a plain GeoTIFF next to `path`, which GDAL's COG driver copies.
    """
    data = data.reshape((-1, *grid.shape))
    staging = f"{path}.staging.tif"
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": grid.height,
        "width": grid.width,
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": plan.nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.open(staging, "w", **profile) as dst:
            dst.write(data)
            for i, description in enumerate(plan.descriptions, start=1):
                dst.set_band_description(i, description)
        with open_staged(staging) as written:  # the confined opener: GTiff only
            rasterio.shutil.copy(
                written,
                path,
                driver="COG",
                RESAMPLING=_resampling_name(resampling),
                **COG_OPTIONS,
            )
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_npy(path: str, data: numpy.ndarray) -> None:
    """The array as numpy.save writes it: (band, y, x), or (image, band, y, x) for stacks."""
    with open(path, "wb") as f:
        numpy.save(f, data)


def raster_info(grid: Grid, plan: Plan) -> dict:
    """What the file of a download holds, in gdalinfo's terms."""
    nodata: float | str = "nan" if math.isnan(plan.nodata) else plan.nodata
    names = [b.name for b in plan.outputs] * plan.layers
    return {
        "geoTransform": list(grid.transform.to_gdal()),
        "coordinateSystem": {"wkt": grid.crs.to_wkt(), "epsg": grid.crs.to_epsg()},
        "size": {"width": grid.width, "height": grid.height},
        "wgs84Extent": grid.wgs84_extent(),
        "bands": [
            {"name": name, "data_type": plan.data_type, "nodata": nodata, "description": text}
            for name, text in zip(names, plan.descriptions, strict=True)
        ],
    }


def layer_bands(layer: Layer, plan: Plan) -> list[Band]:
    """The plan's bands as the layer's own product defines them (where its files are)."""
    return resolve_bands(layer[1], [b.name for b in plan.bands])
