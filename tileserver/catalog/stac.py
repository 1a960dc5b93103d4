"""Catalog records as STAC 1.1: products are collections, images are items.

Pure conversions; `root` is the server's base URL, used for links.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tileserver.catalog.cql2sql import Queryable
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, Image, Product
from tileserver.catalog.search import Summary

STAC_VERSION = "1.1.0"
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
]
GEOTIFF = "image/tiff; application=geotiff"


def rfc3339(value) -> str | None:
    """A UTC datetime as RFC 3339 with Z."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def stac_band(band: Band) -> dict:
    """A STAC 1.1 band object (with eo: and classification fields where they apply)."""
    out: dict = {"name": band.name, "data_type": DATA_TYPE_TO_NUMPY[band.data_type]}
    if band.description:
        out["description"] = band.description
    if band.nodata is not None:
        out["nodata"] = band.nodata
    if band.wavelength_nm_center is not None:
        out["eo:center_wavelength"] = band.wavelength_nm_center / 1000
    if band.wavelength_nm_fwhm is not None:
        out["eo:full_width_half_max"] = band.wavelength_nm_fwhm / 1000
    if band.resolution is not None and band.resolution.unit == "meters":
        out["gsd"] = band.resolution.value
    if band.class_labels:
        out["classification:classes"] = [
            {"value": i, "name": label} for i, label in enumerate(band.class_labels) if label
        ]
    return out


def asset_keys(image: Image) -> list[str]:
    """One key per file: its stem when the stems are unique, else file0, file1, ..."""
    stems = [
        PurePosixPath(f.href).name.split(".")[0] or f"file{i}" for i, f in enumerate(image.files)
    ]
    if len(set(stems)) == len(stems):
        return stems
    return [f"file{i}" for i in range(len(image.files))]


def file_link(image: Image, product: Product, index: int, root: str) -> str:
    """The server's download of one of an image's files (its bands, on the image's grid,
    pixels unchanged): what a reader who may not see server paths gets as the href."""
    names = [
        b.name for b in sorted(product.bands, key=lambda b: b.band_index) if b.file_index == index
    ]
    query = f"?bands={','.join(names)}" if names else ""
    return f"{root}/images/{image.id}/download.tif{query}"


def shown_files(image: Image, product: Product, root: str) -> Image:
    """The image with each file's href replaced by file_link (for readers)."""
    files = [
        file.model_copy(update={"href": file_link(image, product, i, root)})
        for i, file in enumerate(image.files)
    ]
    return image.model_copy(update={"files": files})


def assets(image: Image, product: Product, hrefs: list[str]) -> dict[str, dict]:
    """The STAC assets of an image: one per file (at `hrefs`), with the bands it holds."""
    found = {}
    for index, (key, file) in enumerate(zip(asset_keys(image), image.files, strict=True)):
        in_file = sorted(
            (b for b in product.bands if b.file_index == index), key=lambda b: b.band_index
        )
        asset = {"href": hrefs[index], "type": GEOTIFF, "roles": ["data"]}
        if in_file:
            asset["bands"] = [stac_band(b) for b in in_file]
        if file.size:
            asset["file:size"] = file.size
        found[key] = asset
    return found


def item(image: Image, product: Product, root: str, links_only: bool = False) -> dict:
    """The STAC item of an image, with links to its tiles; `links_only`: asset hrefs are
    the server's download links, not the files' locations."""
    stac = f"{root}/stac"
    collection = f"{stac}/collections/{image.product_id}"
    properties = {
        **image.properties,
        "datetime": rfc3339(image.acquired),
        "created": rfc3339(image.created),
        "updated": rfc3339(image.modified),
    }
    if image.cloud_cover is not None:
        properties["eo:cloud_cover"] = image.cloud_cover
    if image.crs:
        key = "proj:code" if image.crs.upper().startswith("EPSG:") else "proj:wkt2"
        properties[key] = image.crs
    if image.width and image.height:
        properties["proj:shape"] = [image.height, image.width]
    if image.geotrans:
        x0, a, b, y0, d, e = image.geotrans
        properties["proj:transform"] = [a, b, x0, d, e, y0]
    if links_only:
        hrefs = [file_link(image, product, i, root) for i in range(len(image.files))]
    else:
        hrefs = [file.href for file in image.files]
    image_url = f"{root}/images/{image.id}"
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": image.name,
        "collection": image.product_id,
        "geometry": image.geometry,
        "bbox": list(image.bbox),
        "properties": properties,
        "assets": assets(image, product, hrefs),
        "links": [
            {
                "rel": "self",
                "type": "application/geo+json",
                "href": f"{collection}/items/{image.name}",
            },
            {"rel": "parent", "type": "application/json", "href": collection},
            {"rel": "collection", "type": "application/json", "href": collection},
            {"rel": "root", "type": "application/json", "href": stac},
            {"rel": "alternate", "type": "application/json", "href": image_url},
            {"rel": "tilejson", "type": "application/json", "href": f"{image_url}/tilejson.json"},
            {
                "rel": "xyz",
                "type": "image/png",
                "href": f"{image_url}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png",
                "templated": True,
            },
            {"rel": "preview", "type": "text/html", "href": f"{image_url}/map"},
        ],
    }


def collection(product: Product, summary: Summary, root: str) -> dict:
    """The STAC collection of a product; its extent comes from the images' summary."""
    stac = f"{root}/stac"
    url = f"{stac}/collections/{product.id}"
    bbox = list(summary.bbox) if summary.bbox else [-180.0, -90.0, 180.0, 90.0]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": product.id,
        "title": product.name or product.id,
        "description": product.description or product.name or product.id,
        "keywords": product.tags,
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[rfc3339(summary.start), rfc3339(summary.end)]]},
        },
        "summaries": {"bands": [stac_band(b) for b in product.bands]},
        "links": [
            {"rel": "self", "type": "application/json", "href": url},
            {"rel": "parent", "type": "application/json", "href": stac},
            {"rel": "root", "type": "application/json", "href": stac},
            {"rel": "items", "type": "application/geo+json", "href": f"{url}/items"},
            {
                "rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                "type": "application/schema+json",
                "href": f"{url}/queryables",
            },
            {
                "rel": "alternate",
                "type": "application/json",
                "href": f"{root}/products/{product.id}",
            },
        ],
        "tileserver:images": summary.count,
    }


JSON_SCHEMA_TYPES = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "array": {"type": "array"},
    "object": {"type": "object"},
    "geometry": {"$ref": "https://geojson.org/schema/Geometry.json"},
}


def queryables(found: dict[str, Queryable], url: str) -> dict:
    """A JSON Schema of the queryables (OGC API Features part 3)."""
    properties = {}
    for name, queryable in sorted(found.items()):
        schema = dict(JSON_SCHEMA_TYPES[queryable.type])
        if queryable.description:
            schema["description"] = queryable.description
        if name == "eo:cloud_cover":
            schema.update(minimum=0, maximum=100)
        properties[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": url,
        "type": "object",
        "title": "Queryables",
        "properties": properties,
        "additionalProperties": False,
    }
