"""GeoTIFF / COG files: one file is one image; its bands are inferred from the file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import rasterio
import rasterio.warp
from rasterio.enums import ColorInterp
from shapely.geometry import box, mapping

from tileserver.catalog.models import (
    NUMPY_TO_DATA_TYPE,
    Band,
    Image,
    ImageFile,
    Product,
    Resolution,
    safe_name,
)
from tileserver.ingest.raster import (
    IngestError,
    acquisition_time,
    band_statistics,
    cloud_cover,
    display_range,
    file_size,
    footprint,
    grid,
    numeric_or_none,
    time_from_name,
)
from tileserver.ingest.scene import SceneMeta
from tileserver.opener import open_raster

TYPE_RANGES = {
    "Byte": (0, 255),
    "UInt16": (0, 65535),
    "Int16": (-32768, 32767),
    "UInt32": (0, 4294967295),
    "Int32": (-2147483648, 2147483647),
}


def infer_bands(src: rasterio.DatasetReader, stats=None) -> list[Band]:
    """Band records for a file: names from band descriptions, ranges from type and statistics.

    The display range is the 2..98 percentile stretch of this first file, so the
    product looks right by default; integer data ranges are the type's range.
    """
    bands = []
    resolution = None
    if src.crs is not None:
        unit = "degrees" if src.crs.is_geographic else "meters"
        resolution = Resolution(value=abs(src.transform.a), unit=unit)
    for i in range(src.count):
        data_type = NUMPY_TO_DATA_TYPE.get(src.dtypes[i])
        if data_type is None:
            raise IngestError(f"{src.name}: band {i + 1} has unsupported type {src.dtypes[i]}")
        is_alpha = src.colorinterp[i] == ColorInterp.alpha
        name = safe_name(src.descriptions[i]) if src.descriptions[i] else f"b{i + 1}"
        band_stats = stats[i] if stats else None
        if data_type in TYPE_RANGES:
            data_range = TYPE_RANGES[data_type]
        elif band_stats is not None:
            data_range = (band_stats.min, band_stats.max)
        else:
            data_range = (0.0, 1.0)
        stretch = data_range if data_type == "Byte" else display_range(band_stats, data_range)
        scale, offset = src.scales[i], src.offsets[i]
        physical_range = None
        if (scale, offset) != (1.0, 0.0):
            physical_range = (data_range[0] * scale + offset, data_range[1] * scale + offset)
        bands.append(
            Band(
                name=name,
                type="mask" if is_alpha else "spectral",
                is_alpha=is_alpha,
                data_type=data_type,
                nodata=numeric_or_none(src.nodatavals[i]),
                data_range=data_range,
                display_range=stretch,
                physical_range=physical_range,
                resolution=resolution,
                file_index=0,
                band_index=i,
            )
        )
    names = [b.name for b in bands]
    if len(set(names)) != len(names):  # repeated descriptions: fall back to positions
        for i, band in enumerate(bands):
            band.name = f"b{i + 1}"
    return bands


def check_layout(product: Product, src: rasterio.DatasetReader) -> None:
    """A file fits a product when every band of the product is in it."""
    for band in product.bands:
        if band.file_index != 0 or band.band_index >= src.count:
            raise IngestError(
                f"{src.name} has {src.count} band(s) but product '{product.id}' expects band "
                f"'{band.name}' at file {band.file_index}, band {band.band_index}"
            )


def read_geotiff(
    href: str,
    product_id: str,
    name: str,
    product: Product | None,
    when: datetime | None = None,
) -> tuple[Image, list[Band]]:
    """An image record for one GeoTIFF, and the bands it implies for a new product."""
    try:
        src_ctx = open_raster(href)
    except rasterio.errors.RasterioIOError as exc:
        raise IngestError(f"{href}: not a readable raster ({exc})") from exc
    with src_ctx as src:
        if product is not None:
            check_layout(product, src)
        acquired = when or acquisition_time(src) or time_from_name(href)
        if acquired is None:
            raise IngestError(
                f"{href}: no acquisition time in its metadata or name; pass --datetime"
            )
        nodata = None
        if product is not None and product.bands:
            nodata = product.bands[0].nodata
        geometry = footprint(src, nodata)
        stats = band_statistics(href, list(range(1, src.count + 1)), nodata)
        bands = infer_bands(src, stats) if product is None else product.bands
        image = Image(
            name=name,
            product_id=product_id,
            acquired=acquired,
            geometry=geometry,
            cloud_cover=cloud_cover(src),
            files=[ImageFile(href=href, size=file_size(href))],
            band_stats={
                band.name: stats[band.band_index] for band in bands if band.file_index == 0
            },
            **grid(src),
        )
    return image, bands


class GeoTiffScene:
    """A GeoTIFF no STAC Item or DIMAP product claims: one file is one image."""

    def __init__(self, href: str, name: str, default_product: str):
        self.href = href
        self.name = name
        self.default_product = default_product

    def meta(self) -> SceneMeta:
        """Time and cloud cover from the tags, footprint from the header's bounds."""
        try:
            src_ctx = open_raster(self.href)
        except rasterio.errors.RasterioIOError as exc:
            raise IngestError(f"{self.href}: not a readable raster ({exc})") from exc
        with src_ctx as src:
            if src.crs is None:
                raise IngestError(f"{self.href} has no CRS: it cannot be placed on a map")
            bounds = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            return SceneMeta(
                id=self.name,
                acquired=acquisition_time(src) or time_from_name(self.href),
                geometry=dict(mapping(box(*bounds))),
                cloud_cover=cloud_cover(src),
                product_id=self.default_product,
            )

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """The image as the file is; no VRT needed (the footprint is traced on an overview)."""
        del vrt_path
        return read_geotiff(self.href, product_id, self.name, product, meta.acquired)
