"""Answers about values, not pictures: point values, area statistics and pictures of an
area (previews and crops) of a layer (layers.py), without FastAPI.

- `point_values`: at one point, each image's stored value of every band read, the value
  at the processing level, and the request's band math; for a search, one entry per image
  meeting the point in paint order (a pixel's drill through time) and what the mosaic
  shows there (the pixel selection of those values, then the request's scaling).
- `area_statistics`: render/statistics.py over the layer's own grid (a download with
  `scaling=raw`: at the processing level, band math applied, never scaled), for an image,
  a search mosaic or each layer of a search stack.
- `picture`: a rendered preview or crop (every rendering parameter) at most `max_size`
  pixels on its longer side, as `ImageData` for render/pipeline.py `encode_image`.

Every read goes through the layer's download (render/download.py: the store the layer
was given, the opener, the pixel budget) or render/reader.py read_bands.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from rio_tiler.colormap import cmap
from rio_tiler.expression import apply_expression
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from shapely.geometry import shape

from tileserver.catalog.models import Band, Image, Product
from tileserver.layers import BaseLayer, ImageLayer, SearchLayer
from tileserver.render.colors import (
    MAX_LEGEND_CLASSES,
    ColorError,
    class_legend_png,
    colorbar_png,
)
from tileserver.render.download import (
    DownloadError,
    GridRequest,
    check_budget,
    inside_pixels,
    render_layers,
)
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import (
    composite,
    mosaic_bands,
    product_bands,
    render_composite,
    selection_bands,
)
from tileserver.render.pipeline import (
    EXPRESSION_BAND,
    Rendered,
    RenderParams,
    Scaling,
    apply_processing_level,
    cloud_read,
    expression_blocks,
    output_scaling,
    render_array,
)
from tileserver.render.reader import WGS84, FileRead, read_bands, resolve_bands
from tileserver.render.statistics import StatisticsOptions, layer_statistics

POINT_SIZE = 1e-7  # degrees: the box a search looks images up with around a point
RAW = Scaling.parse(["raw"])


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """A point the caller names, in `crs` (default WGS84 lon/lat)."""

    x: float
    y: float
    crs: CRS = WGS84

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise DownloadError("the point's coordinates must be finite numbers")

    def lonlat(self) -> tuple[float, float]:
        """The point in WGS84; DownloadError when it has no place there."""
        if self.crs == WGS84:
            lon, lat = self.x, self.y
        else:
            try:
                (lon,), (lat,) = transform_points(self.crs, WGS84, [self.x], [self.y])
            except Exception as exc:  # PROJ refuses points outside its domain
                raise DownloadError(f"the point cannot be expressed in WGS84: {exc}") from None
        if not (math.isfinite(lon) and math.isfinite(lat) and -90 <= lat <= 90):
            raise DownloadError(f"the point ({self.x:g}, {self.y:g}) is not on the Earth")
        if self.crs == WGS84 and not -180 <= lon <= 180:  # PROJ refuses it in UTM
            raise DownloadError(f"the point ({self.x:g}, {self.y:g}) is not on the Earth")
        return lon, lat


def point_reader(point: Point):
    """A `read` for read_bands: the one file pixel holding `point` (masked outside)."""

    def read(reader: Reader, file_read: FileRead) -> ImageData:
        src = reader.dataset
        (x,), (y,) = transform_points(point.crs, src.crs, [point.x], [point.y])
        col, row = ~src.transform * (x, y)
        if not (math.isfinite(col) and math.isfinite(row)):
            col, row = -1.0, -1.0
        window = Window(math.floor(col), math.floor(row), 1, 1)
        return reader.read(indexes=file_read.indexes, window=window)

    return read


def _values(array: numpy.ma.MaskedArray) -> list[float | None]:
    """Band values of a (bands, 1, 1) array, None where masked or not a number."""
    out = []
    for value, masked in zip(
        numpy.ma.getdata(array)[:, 0, 0], numpy.ma.getmaskarray(array)[:, 0, 0], strict=True
    ):
        number = float(value)
        out.append(None if masked or not math.isfinite(number) else number)
    return out


def evaluate_expression(data: numpy.ma.MaskedArray, names: Sequence[str], params: RenderParams):
    """The request's band math over `data` (bands named `names`), or `data` itself."""
    if not params.expression:
        return data
    try:
        with numpy.errstate(all="ignore"):
            values = apply_expression(
                expression_blocks(params.expression), list(names), data.astype("float64")
            )
    except Exception as exc:  # numexpr's own errors
        raise RenderError(f"cannot evaluate expression '{params.expression}': {exc}") from exc
    invalid = numpy.logical_or.reduce(numpy.ma.getmaskarray(data), axis=0)
    return numpy.ma.MaskedArray(values.data, mask=numpy.broadcast_to(invalid, values.shape))


@dataclass
class Sample:
    """One image's pixel at the point: stored values and values at the processing level."""

    image: Image
    raw: numpy.ma.MaskedArray  # (bands, 1, 1), as stored
    converted: numpy.ma.MaskedArray  # (bands, 1, 1), at the processing level


def sample(
    image: Image,
    product: Product,
    names: Sequence[str],
    alpha_name: str | None,
    point: Point,
    params: RenderParams,
) -> Sample:
    """The pixel of `image` holding `point`, on the image's own grid (nothing resampled).

    As render/mosaic.py read_image: one mask for all bands (any band masked, or the alpha
    band 0), each image converted by its own product's steps.
    """
    bands = resolve_bands(product, names)
    alpha = resolve_bands(product, [alpha_name])[0] if alpha_name else product.alpha_band()
    cloud = cloud_read(product, params)
    img = read_bands(image, bands, point_reader(point), None, params.nodata, 1, alpha, cloud)
    invalid = numpy.logical_or.reduce(numpy.ma.getmaskarray(img.array), axis=0)
    raw = numpy.ma.MaskedArray(
        img.array.data, mask=numpy.broadcast_to(invalid, img.array.shape).copy()
    )
    return Sample(image, raw, apply_processing_level(raw, bands, params.processing_level))


def _bands_entry(names: Sequence[str], found: Sample) -> dict[str, dict]:
    return {
        name: {"raw": raw, "value": value}
        for name, raw, value in zip(
            names, _values(found.raw), _values(found.converted), strict=True
        )
    }


def output_names(bands: Sequence[Band], params: RenderParams) -> list[str]:
    """Names of the values a request gives: its expression's outputs, or its bands."""
    if params.expression:
        return expression_blocks(params.expression)
    return [b.name for b in bands]


def point_values(layer: BaseLayer, point: Point, params: RenderParams) -> dict:
    """What an image or a search holds at `point` (see the module's docstring)."""
    lon, lat = point.lonlat()
    where = {
        "coordinates": [point.x, point.y],
        "coord_crs": point.crs.to_string(),
        "lonlat": [lon, lat],
        "processing_level": params.processing_level or "default",
    }
    if isinstance(layer, ImageLayer):
        return {**where, **image_point(layer, point, params)}
    if isinstance(layer, SearchLayer):
        return {**where, **search_point(layer, point, (lon, lat), params)}
    raise TypeError(f"no point values for {type(layer).__name__}")


def image_point(layer: ImageLayer, point: Point, params: RenderParams) -> dict:
    """One image's values at the point, and the value its tiles draw there."""
    bands, alpha = mosaic_bands(layer.product, params, "first")
    names = [b.name for b in bands]
    alpha_name = alpha.name if alpha is not None else None
    found = sample(layer.image, layer.product, names, alpha_name, point, params)
    rendered = render_array(
        found.raw, bands, params, stats=layer.image.band_stats, alpha_band=alpha
    )
    return {
        "band_names": output_names(bands, params),
        "values": _values(evaluate_expression(found.converted, names, params)),
        "rendered": _rendered(rendered),
        "bands": _bands_entry(names, found),
    }


def _rendered(rendered: Rendered) -> list[float | None]:
    """The values a tile draws (after scaling), None where transparent."""
    if rendered.mask[0, 0] == 0:
        return [None] * rendered.data.shape[0]
    return [float(v) for v in rendered.data[:, 0, 0]]


def search_point(
    layer: SearchLayer, point: Point, lonlat: tuple[float, float], params: RenderParams
) -> dict:
    """Every image meeting the point in paint order, and what the mosaic shows there."""
    selection = layer.mosaic.pixel_selection
    product = layer.product
    bands, alpha = mosaic_bands(product, params, selection)
    names = [b.name for b in bands]
    alpha_name = alpha.name if alpha is not None else None
    lon, lat = lonlat
    box = (lon - POINT_SIZE, lat - POINT_SIZE, lon + POINT_SIZE, lat + POINT_SIZE)
    layers = layer.download_layers(product, GridRequest(bbox=box))
    own = product_bands([product, *(p for _, p in layers)], bands, params)
    samples = {
        image.id: sample(image, own_product, names, alpha_name, point, params)
        for image, own_product in layers
    }
    images = []
    for image, _ in layers:
        found = samples[image.id]
        images.append(
            {
                "id": image.id,
                "collection": image.product_id,
                "datetime": image.acquired.isoformat(),
                "valid": not numpy.ma.getmaskarray(found.converted).all(),
                "values": _values(evaluate_expression(found.converted, names, params)),
                "bands": _bands_entry(names, found),
            }
        )

    def read(source) -> numpy.ma.MaskedArray:
        converted = samples[source[0].id].converted
        return numpy.ma.MaskedArray(converted.data.astype(own.dtype), mask=converted.mask)

    result = composite(layers, read, selection, threads=1)
    mosaic: dict = {"pixel_selection": selection, "images": [i.id for i in result.used]}
    shown = selection_bands(bands, selection, len(result.used))
    if result.data is None:
        mosaic.update(values=[None] * len(output_names(shown, params)), rendered=None)
    else:
        data = result.data
        if selection == "count":
            data = data.reshape((1, 1, 1))
        evaluated = evaluate_expression(data, [b.name for b in shown], params)
        rendered = render_composite(
            result.data, bands, params, selection, result.used, own.bands, alpha
        )
        mosaic.update(values=_values(evaluated), rendered=_rendered(rendered))
    return {"band_names": output_names(shown, params), "images": images, "mosaic": mosaic}


# ----------------------------------------------------------------------------- statistics


def raw_params(params: RenderParams) -> RenderParams:
    """The request without scaling, colours, nor integer output: statistics are of values,
    and in Float64 a band without nodata keeps its 0s apart from "no value" (NaN)."""
    return dataclasses.replace(
        params, scaling=RAW, colormap=None, color_formula=None, data_type="Float64"
    )


def area_statistics(
    layer: BaseLayer,
    params: RenderParams,
    area: GridRequest,
    options: StatisticsOptions,
    max_pixels: int,
    flatten: str | None = None,
) -> dict:
    """Statistics of the layer's pixels in `area` (a bbox or a WGS84 geometry).

    `flatten` (searches): one entry per stack layer (render/download.py group_layers).
    """
    params = raw_params(params)
    geometry = area.geometry
    read_area = area
    if options.coverage and geometry is not None:  # every pixel meeting the area, weighed
        read_area = dataclasses.replace(area, geometry=None, bbox=_bounds(geometry))
    job = layer.download(params, read_area, flatten)
    check_budget(job.grid, job.plan, max_pixels)
    names = [o.name for o in job.plan.outputs]
    described = _described(job.plan.bands, params, len(names))
    data = job.render(params, layer.threads)
    nodata = job.plan.nodata
    if geometry is None:
        inside = numpy.ones(job.grid.shape, dtype=bool)
    else:
        inside = inside_pixels(job.grid, geometry)
    coverage = None
    if options.coverage and geometry is not None:
        west, north = job.grid.transform * (0, 0)
        east, south = job.grid.transform * (job.grid.width, job.grid.height)
        empty = ImageData(
            numpy.ma.zeros((1, *job.grid.shape)),
            crs=job.grid.crs,
            bounds=(west, south, east, north),
        )
        coverage = empty.get_coverage_array(geometry, shape_crs=WGS84)
        inside = coverage > 0

    def stats(block: numpy.ndarray) -> dict[str, dict]:
        masked = numpy.ma.MaskedArray(block, mask=_nodata_mask(block, nodata))
        return layer_statistics(masked, names, inside, options, described, coverage)

    grid = {
        "crs": job.grid.crs.to_string(),
        "transform": list(job.grid.transform)[:6],
        "width": job.grid.width,
        "height": job.grid.height,
    }
    if not job.stack:
        return {"grid": grid, "statistics": stats(data)}
    layers = [
        {"key": key, "statistics": stats(block)}
        for key, block in zip(job.plan.layer_keys, data, strict=True)
    ]
    return {"grid": grid, "layers": layers}


def _bounds(geometry: dict) -> tuple[float, float, float, float]:
    west, south, east, north = shape(geometry).bounds
    pad = 1e-9  # a box of zero width (a vertical edge) is still an area
    return west - pad, south - pad, east + pad, north + pad


def _nodata_mask(block: numpy.ndarray, nodata: float) -> numpy.ndarray:
    if math.isnan(nodata):
        return numpy.isnan(block)
    return block == nodata


def _described(bands: Sequence[Band], params: RenderParams, count: int) -> list[Band | None]:
    """The band record behind each output (None for band math and selections)."""
    if params.expression or len(bands) != count:
        return [None] * count
    return list(bands)


# ----------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class PictureSize:
    """A preview's or crop's size (parsed in api/deps.py picture_size): `max_size` pixels on
    its longer side, or `width` / `height` (one alone keeps the aspect), in `crs`."""

    max_size: int
    width: int | None = None
    height: int | None = None
    crs: CRS | None = None


def fit(width: int, height: int, max_size: int) -> tuple[int, int] | None:
    """The size of a picture of `width` x `height` pixels at most `max_size` on its longer
    side, keeping the aspect; None when it fits already."""
    if max(width, height) <= max_size:
        return None
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def picture(
    layer: BaseLayer,
    params: RenderParams,
    area: GridRequest,
    size: PictureSize,
    max_pixels: int,
) -> ImageData:
    """The layer in `area` (all of it when none) rendered as its tiles are: on its own grid
    (or in `size.crs`) when that fits in `size.max_size`, else the same extent resampled
    (`resampling`) to fit; or exactly `size.width` / `size.height`."""
    area = dataclasses.replace(area, crs=size.crs, width=size.width, height=size.height)
    job = layer.download(params, area)
    if size.width is None and size.height is None:
        smaller = fit(job.grid.width, job.grid.height, size.max_size)
        if smaller is not None:
            width, height = smaller
            sized = dataclasses.replace(area, crs=job.grid.crs, width=width, height=height)
            job = layer.download(params, sized)
    else:
        largest = max(size.max_size, size.width or 0, size.height or 0)
        if max(job.grid.width, job.grid.height) > largest:
            raise DownloadError(
                f"the picture would be {job.grid.width} x {job.grid.height} pixels, more "
                f"than {largest}: give both width and height, or a larger max_size"
            )
    check_budget(job.grid, job.plan, max_pixels)
    valid = numpy.zeros(job.grid.shape, dtype=bool)
    data = render_layers(
        job.groups[0], job.plan, job.grid, params, job.geometry, layer.threads, valid=valid
    )
    bands = job.plan.bands
    colormap = params.colormap
    if colormap is None and len(bands) == 1 and bands[0].colormap and not params.expression:
        colormap = {i: tuple(c) for i, c in enumerate(bands[0].colormap)}
    rendered = Rendered(data, numpy.where(valid, 255, 0).astype("uint8"), colormap)
    return rendered.image(job.grid.crs, job.grid.bounds)


# ----------------------------------------------------------------------------- legends


def layer_legend(layer: BaseLayer, params: RenderParams, width: int, height: int) -> bytes:
    """The legend of a one-band rendering of the layer (render/colors.py pictures).

    A class band without band math: one row per class of its colormap with its label. Else
    the request's colormap (`colormap_name` / `colormap`, or the band's own) as a colour bar
    from the value the darkest colour stands for to the brightest (the scaling's input range).
    """
    product = layer.product
    bands, alpha = mosaic_bands(product, params, "first")
    outputs = output_names(bands, params)
    if len(outputs) != 1:
        raise ColorError(
            f"a legend is of one band, and this request renders {len(outputs)}: name one "
            "band or expression"
        )
    band = bands[0]
    if not params.expression and band.type == "class" and params.colormap is None:
        if not band.colormap:
            raise ColorError(f"band '{band.name}' has no class colours to draw")
        labels = band.class_labels or []
        entries = [
            (value, labels[value] if value < len(labels) else None, tuple(color))
            for value, color in enumerate(band.colormap)
            if (value < len(labels) and labels[value]) or (not labels and color[3] != 0)
        ]
        return class_legend_png(entries[:MAX_LEGEND_CLASSES], max(width, 64))
    colormap = params.colormap
    if colormap is None and band.colormap_name and not params.expression:
        colormap = cmap.get(band.colormap_name.lower())
    if colormap is None:
        raise ColorError("a legend needs a colormap: add colormap_name (e.g. viridis)")
    if not isinstance(colormap, dict):
        raise ColorError("a legend of interval colormaps is not drawn; use a value colormap")
    scales, _ = output_scaling(bands if not params.expression else [], params, None, alpha)
    scale = scales[0] if scales else None
    if scale and len(scale) == 4:
        lo, hi = scale[0], scale[1]
    elif params.expression:
        lo, hi = EXPRESSION_BAND["display_range"]
    else:
        lo, hi = band.display_range
    return colorbar_png(colormap, float(lo), float(hi), width, height)
