"""STAC Item JSON: each data asset is a file, its eo/raster band metadata become bands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

import rasterio

from tileserver.catalog.models import (
    NUMPY_TO_DATA_TYPE,
    Band,
    Image,
    ImageFile,
    Product,
    Resolution,
    safe_name,
)
from tileserver.ingest import vsi
from tileserver.ingest.raster import IngestError, band_statistics, file_size, grid, parse_time
from tileserver.ingest.scene import SceneMeta
from tileserver.opener import open_raster

RASTER_MEDIA = ("image/tiff", "image/jp2", "application/x-hdf")


def is_stac_item(doc: object) -> bool:
    """A GeoJSON Feature with a stac_version is a STAC Item."""
    return isinstance(doc, dict) and doc.get("type") == "Feature" and "stac_version" in doc


def load_item(href: str, max_bytes: int) -> dict | None:
    """The item in a JSON file, or None when the file is no STAC Item (or too large for one)."""
    if vsi.locate(href).provider == "file" and Path(href).stat().st_size > max_bytes:
        return None
    try:
        doc = json.loads(vsi.read_bytes(href))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # nested past Python
        return None
    return doc if is_stac_item(doc) else None


def resolve_href(href: str, item_href: str) -> str:
    """Asset hrefs relative to the item file become absolute paths; URLs stay, as /vsicurl/."""
    scheme = urlparse(href).scheme
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme == "s3":
        return "/vsis3/" + href[5:]
    if scheme == "gs":
        return "/vsigs/" + href[5:]
    if scheme == "file":
        return urlparse(href).path
    if href.startswith("/"):
        return href
    return vsi.join(item_href, href)


def data_assets(item: dict) -> list[tuple[str, dict]]:
    """Assets holding pixels, in item order: role 'data', or raster media types when unroled."""
    assets = []
    for key, asset in item.get("assets", {}).items():
        roles = asset.get("roles") or []
        media = (asset.get("type") or "").split(";")[0].strip()
        if "data" in roles or (not roles and media in RASTER_MEDIA):
            assets.append((key, asset))
    return assets


def asset_bands(key: str, asset: dict, file_index: int, item: dict) -> list[Band]:
    """Bands of one asset from `eo:bands`, `raster:bands` or STAC 1.1 `bands`."""
    eo = asset.get("eo:bands") or []
    raster = asset.get("raster:bands") or []
    unified = asset.get("bands") or []
    count = max(len(eo), len(raster), len(unified), 1)
    classes = asset.get("classification:classes")
    bands = []
    for i in range(count):
        info: dict = {}
        for source in (raster, eo, unified):
            if i < len(source):
                info.update(source[i])
        if count == 1:
            name = info.get("name") or key
        else:
            name = info.get("name") or f"{key}_{i + 1}"
        raw_type = info.get("data_type") or info.get("raster:data_type")
        data_type = NUMPY_TO_DATA_TYPE.get(raw_type or "uint16", "UInt16")
        scale = info.get("scale", info.get("raster:scale", 1.0))
        offset = info.get("offset", info.get("raster:offset", 0.0))
        center = info.get("center_wavelength", info.get("eo:center_wavelength"))
        fwhm = info.get("full_width_half_max", info.get("eo:full_width_half_max"))
        gsd = info.get("spatial_resolution", info.get("raster:spatial_resolution"))
        gsd = gsd or asset.get("gsd") or item.get("properties", {}).get("gsd")
        fields: dict = {
            "name": safe_name(name),
            "description": info.get("description") or asset.get("title"),
            "data_type": data_type,
            "nodata": info.get("nodata"),
            "file_index": file_index,
            "band_index": i,
            "resolution": Resolution(value=gsd) if gsd else None,
            "wavelength_nm_center": center * 1000 if center else None,
            "wavelength_nm_fwhm": fwhm * 1000 if fwhm else None,
        }
        if data_type == "Byte":
            fields["data_range"] = (0, 255)
        if classes:
            fields["type"] = "class"
            fields["data_type"] = data_type
            size = max(c["value"] for c in classes) + 1
            colormap = [(0, 0, 0, 0)] * size
            labels: list[str | None] = [None] * size
            for c in classes:
                hint = c.get("color_hint")
                if hint:
                    colormap[c["value"]] = (*bytes.fromhex(hint[:6]), 255)
                labels[c["value"]] = c.get("description") or c.get("name")
            fields["colormap"] = colormap
            fields["class_labels"] = labels
            fields["data_range"] = (0, size - 1)
        elif (scale, offset) != (1.0, 0.0):
            lo, hi = fields.get("data_range", (0, 10000))
            fields["physical_range"] = (lo * scale + offset, hi * scale + offset)
        bands.append(Band(**fields))
    return bands


def item_bands(item: dict) -> list[Band]:
    """All bands of an item, file by file."""
    bands = []
    for file_index, (key, asset) in enumerate(data_assets(item)):
        bands.extend(asset_bands(key, asset, file_index, item))
    return bands


def check_layout(product: Product, bands: list[Band], item_id: str) -> None:
    """An item fits a product when each of its bands sits where the product expects it."""
    for band in bands:
        known = product.band(band.name)
        if known is None or (known.file_index, known.band_index) != (
            band.file_index,
            band.band_index,
        ):
            raise IngestError(
                f"item '{item_id}': band '{band.name}' does not match product "
                f"'{product.id}' (asset layout differs)"
            )


def read_item(
    item: dict,
    item_path: str,
    product_id: str,
    product: Product | None,
    when: datetime | None = None,
) -> tuple[Image, list[Band]]:
    """An image record for a STAC Item and the bands it implies for a new product."""
    item_id = item.get("id") or Path(item_path).stem
    props = item.get("properties") or {}
    assets = data_assets(item)
    if not assets:
        raise IngestError(f"item '{item_id}' ({item_path}): no data asset")
    if not item.get("geometry"):
        raise IngestError(f"item '{item_id}' ({item_path}): no geometry")
    bands = item_bands(item)
    if product is not None:
        check_layout(product, bands, item_id)
        bands = [product.band(b.name) for b in bands]
    raw_time = props.get("datetime") or props.get("start_datetime")
    acquired = when or (parse_time(raw_time) if raw_time else None)
    if acquired is None:
        raise IngestError(f"item '{item_id}' ({item_path}): no datetime")
    hrefs = [resolve_href(asset["href"], item_path) for _, asset in assets]
    stats = {}
    finest = None
    for file_index, href in enumerate(hrefs):
        in_file = [b for b in bands if b.file_index == file_index]
        try:
            with open_raster(href) as src:
                if finest is None or abs(src.transform.a) < abs(finest["geotrans"][1]):
                    finest = grid(src)
        except rasterio.errors.RasterioIOError as exc:
            raise IngestError(f"item '{item_id}': cannot open asset {href} ({exc})") from exc
        values = band_statistics(
            href,
            [b.band_index + 1 for b in in_file],
            in_file[0].nodata if in_file else None,
        )
        stats.update({b.name: s for b, s in zip(in_file, values, strict=True)})
    cloud = props.get("eo:cloud_cover")
    image = Image(
        name=safe_name(item_id),
        product_id=product_id,
        acquired=acquired,
        geometry=item["geometry"],
        cloud_cover=cloud,
        files=[ImageFile(href=h, size=file_size(h)) for h in hrefs],
        band_stats=stats,
        properties={
            k: v
            for k, v in props.items()
            if k not in ("datetime", "eo:cloud_cover") and isinstance(k, str)
        },
        **(finest or {}),
    )
    return image, bands


class StacScene:
    """A STAC Item file: its metadata is the item, its pixels are its data assets."""

    def __init__(self, href: str, item: dict, default_product: str):
        self.href = href
        self.item = item
        self.default_product = default_product

    def asset_hrefs(self) -> set[str]:
        """The files this item owns (so they are not imported again as lone GeoTIFFs)."""
        return {resolve_href(asset["href"], self.href) for _, asset in data_assets(self.item)}

    def meta(self) -> SceneMeta:
        """Id, time, footprint and cloud cover straight from the item."""
        props = self.item.get("properties") or {}
        item_id = self.item.get("id") or Path(self.href).stem
        if not self.item.get("geometry"):
            raise IngestError(f"item '{item_id}' ({self.href}): no geometry")
        raw_time = props.get("datetime") or props.get("start_datetime")
        return SceneMeta(
            id=item_id,
            acquired=parse_time(raw_time) if raw_time else None,
            geometry=self.item["geometry"],
            cloud_cover=props.get("eo:cloud_cover"),
            product_id=safe_name(self.item.get("collection") or self.default_product),
        )

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """The image with the item's assets as its files; no VRT needed."""
        del vrt_path
        return read_item(self.item, self.href, product_id, product, meta.acquired)
