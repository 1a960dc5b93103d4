"""Catalog records as STAC 1.1: products are collections, images are items.

Pure conversions; `root` is the server's base URL, used for links.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import morecantile

from tileserver.catalog.cql2sql import Queryable
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, Band, Image, Product
from tileserver.catalog.search import Summary

STAC_VERSION = "1.1.0"
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
]
RENDER_EXTENSION = "https://stac-extensions.github.io/render/v2.0.0/schema.json"
GEOTIFF = "image/tiff; application=geotiff"
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
THUMBNAIL_MAX_ZOOM = 14  # a thumbnail tile of a smaller image shows it smaller


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
    found = assets(image, product, hrefs)
    if image.files and image.bbox:
        z, x, y = thumbnail_tile(image.bbox)
        found["thumbnail"] = {
            "href": f"{image_url}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
            "type": "image/png",
            "title": "the smallest map tile holding the whole image",
            "roles": ["thumbnail"],
        }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": image.name,
        "collection": image.product_id,
        "geometry": image.geometry,
        "bbox": list(image.bbox),
        "properties": properties,
        "assets": found,
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


def thumbnail_tile(bbox: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """The deepest WebMercatorQuad tile (up to THUMBNAIL_MAX_ZOOM) holding the whole bbox:
    the image's tile endpoint renders it as a 256 x 256 preview."""
    west, south, east, north = bbox
    lat = WEB_MERCATOR.bbox.top  # Web Mercator ends short of the poles
    south, north = max(south, -lat), min(north, lat)
    for z in range(THUMBNAIL_MAX_ZOOM, 0, -1):
        first = WEB_MERCATOR.tile(west, north, z)
        if first == WEB_MERCATOR.tile(east, south, z):
            return z, first.x, first.y
    return 0, 0, 0


def _rescale(scaling: list[str]) -> list[list[float]] | None:
    """The render extension's `rescale` of a preset's `lo,hi` scalings (None for others)."""
    ranges = []
    for entry in scaling:
        parts = entry.split(",")
        try:
            ranges.append([float(parts[0]), float(parts[1])])
        except (ValueError, IndexError):
            return None
        if len(parts) != 2:
            return None
    return ranges


def renders(product: Product) -> dict:
    """The product's presets as the STAC render extension's `renders`: band names are its
    `assets`; `tileserver:preset` keeps the parameters as `?preset=` applies them."""
    out = {}
    for name, preset in product.presets.items():
        render: dict = {"title": preset.title or name, "tileserver:preset": preset.query()}
        if preset.bands:
            render["assets"] = list(preset.bands)
        else:
            render["assets"] = product.display_bands() if not preset.expression else []
        rescale = _rescale(preset.scaling) if preset.scaling else None
        if rescale is not None:
            render["rescale"] = rescale
        for field in ("expression", "colormap_name", "color_formula", "resampling", "nodata"):
            value = getattr(preset, field)
            if value is not None:
                render[field] = value
        if preset.colormap is not None:
            try:
                render["colormap"] = json.loads(preset.colormap)
            except ValueError:
                pass  # refused on write; an older record keeps it in tileserver:preset only
        out[name] = render
    return out


def collection(product: Product, summary: Summary, root: str) -> dict:
    """The STAC collection of a product; its extent comes from the images' summary."""
    stac = f"{root}/stac"
    url = f"{stac}/collections/{product.id}"
    bbox = list(summary.bbox) if summary.bbox else [-180.0, -90.0, 180.0, 90.0]
    extra = {"renders": renders(product)} if product.presets else {}
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [*EXTENSIONS, RENDER_EXTENSION] if extra else EXTENSIONS,
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
        **extra,
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


# --------------------------------------------------------------------------- extensions

MAX_BODY_DEPTH = 32  # nested JSON levels of a POSTed item, collection or patch
MAX_ITEM_ASSETS = 100  # assets of a written item: each data asset is a file opened and read
MAX_ASSET_BANDS = 256  # bands one asset of a written item may describe
MAX_FIELDS = 100  # names in `fields` (include and exclude together)
MAX_QUERY_TERMS = 100  # properties x operators in `query`, terms in `q`
MAX_TERM = 200  # characters of one free-text term
# properties the server derives from the files and the record: not taken from a written item
DERIVED = ("created", "updated", "proj:code", "proj:wkt2", "proj:shape", "proj:transform")
FREE_TEXT = ("id", "title", "description")  # what `q` looks in, when items carry them
QUERY_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
LIKE_OPS = {"startsWith": "{}%", "endsWith": "%{}", "contains": "%{}%"}


class ExtensionError(ValueError):
    """A `fields`, `query` or `q` value this server cannot honour; the message says which."""


def merge_patch(target: object, patch: object) -> object:
    """RFC 7396 JSON merge patch: objects merge key by key, `null` removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _like_escaped(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _typed(value: object, kind: str | None, where: str) -> object:
    """A number sent as text (pystac-client sends `eo:cloud_cover<20` as "20") as a number,
    when the property is numeric."""
    if kind not in ("number", "integer") or not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ExtensionError(f"{where}: '{value}' is not a number") from None
    return int(number) if kind == "integer" and number.is_integer() else number


def query_filter(query: object, types: dict[str, str] | None = None) -> dict | None:
    """The Query extension (`{"eo:cloud_cover": {"lt": 10}}`) as CQL2-JSON, ANDed per term,
    so it is compiled (and its properties checked) like any filter; `types` (queryable
    types by name) turns numbers sent as text into numbers."""
    types = types or {}
    if query is None:
        return None
    if not isinstance(query, dict):
        raise ExtensionError("query must be an object of property: {operator: value}")
    args: list[dict] = []
    for name, ops in query.items():
        if not isinstance(ops, dict) or not ops:
            raise ExtensionError(f"query.{name} must be an object of operator: value")
        for op, value in ops.items():
            prop = {"property": name}
            if op in QUERY_OPS:
                if isinstance(value, (dict, list)) or value is None:
                    raise ExtensionError(f"query.{name}.{op} takes a string, number or boolean")
                value = _typed(value, types.get(name), f"query.{name}.{op}")
                args.append({"op": QUERY_OPS[op], "args": [prop, value]})
            elif op in LIKE_OPS:
                if not isinstance(value, str):
                    raise ExtensionError(f"query.{name}.{op} takes a string")
                pattern = LIKE_OPS[op].format(_like_escaped(value))
                args.append({"op": "like", "args": [prop, pattern]})
            elif op == "in":
                if not isinstance(value, list) or not value:
                    raise ExtensionError(f"query.{name}.in takes a non-empty list")
                where = f"query.{name}.in"
                value = [_typed(v, types.get(name), where) for v in value]
                args.append({"op": "in", "args": [prop, value]})
            else:
                known = ", ".join([*QUERY_OPS, *LIKE_OPS, "in"])
                raise ExtensionError(f"query.{name}: operator '{op}' is not supported ({known})")
            if len(args) > MAX_QUERY_TERMS:
                raise ExtensionError(f"query has more than {MAX_QUERY_TERMS} terms")
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def free_text_terms(q: object) -> list[str] | None:
    """The terms of a free-text `q`: a comma-separated string or a list of strings, each a
    word or phrase matched case-insensitively as a substring (any term matches: OR).

    The advanced syntax (AND, parentheses, +/-, quotes) is refused by name, not misread."""
    if q is None:
        return None
    if isinstance(q, str):
        terms = q.split(",")
    elif isinstance(q, list) and all(isinstance(t, str) for t in q):
        terms = list(q)
    else:
        raise ExtensionError("q must be a string of comma-separated terms or a list of strings")
    terms = [t.strip() for t in terms if t.strip()]
    if not terms:
        raise ExtensionError("q holds no term")
    if len(terms) > MAX_QUERY_TERMS:
        raise ExtensionError(f"q has more than {MAX_QUERY_TERMS} terms")
    for term in terms:
        if len(term) > MAX_TERM:
            raise ExtensionError(f"q: a term has more than {MAX_TERM} characters")
        words = term.split()
        if (
            any(c in term for c in '()"')
            or any(w in ("AND", "OR") for w in words)
            or any(w[0] in "+-" for w in words)
        ):
            raise ExtensionError(
                f"q: '{term}': only plain terms separated by commas are supported (any term "
                "matches); AND, OR, parentheses, quotes and +/- are not"
            )
    return terms


def free_text_filter(terms: list[str], searchable: list[str]) -> dict:
    """Any term found (case-insensitively) in any of the `searchable` text properties."""
    args = [
        {
            "op": "like",
            "args": [
                {"op": "casei", "args": [{"property": name}]},
                {"op": "casei", "args": [f"%{_like_escaped(term)}%"]},
            ],
        }
        for term in terms
        for name in searchable
    ]
    return args[0] if len(args) == 1 else {"op": "or", "args": args}


def text_matches(doc: dict, terms: list[str]) -> bool:
    """Whether any term is in a collection's id, title, description or keywords."""
    texts = [doc.get("id"), doc.get("title"), doc.get("description"), *(doc.get("keywords") or [])]
    haystack = "\n".join(t for t in texts if isinstance(t, str)).casefold()
    return any(term.casefold() in haystack for term in terms)


def parse_fields(value: object) -> tuple[list[str], list[str]] | None:
    """The Fields extension as (include, exclude) dotted paths: GET's `a,-b,+c` or POST's
    `{"include": [...], "exclude": [...]}`."""
    if value is None:
        return None
    include: list[str] = []
    exclude: list[str] = []
    if isinstance(value, str):
        for raw in value.split(","):
            name = raw.strip()
            if name.startswith("-"):
                exclude.append(name[1:])
            elif name:
                include.append(name.removeprefix("+"))
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"include", "exclude"})
        if unknown:
            raise ExtensionError(f"fields takes include and exclude, not {', '.join(unknown)}")
        for key, found in (("include", include), ("exclude", exclude)):
            names = value.get(key) or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ExtensionError(f"fields.{key} must be a list of strings")
            found.extend(n for n in names if n)
    else:
        raise ExtensionError("fields must be a string (GET) or {include, exclude} (POST)")
    if len(include) + len(exclude) > MAX_FIELDS:
        raise ExtensionError(f"fields names more than {MAX_FIELDS} fields")
    return include, exclude


ALWAYS_INCLUDED = ("type", "stac_version", "id", "collection", "links")


def _copy_path(source: dict, target: dict, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in source:
        return
    if not rest:
        target[head] = source[head]
    elif isinstance(source[head], dict):
        _copy_path(source[head], target.setdefault(head, {}), rest)


def _drop_path(target: dict, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if not rest:
        target.pop(head, None)
    elif isinstance(target.get(head), dict):
        _drop_path(target[head], rest)


def select_fields(feature: dict, include: list[str], exclude: list[str]) -> dict:
    """A feature with only the included fields (plus what identifies it and its links) and
    without the excluded ones; a field named in both is included (the extension's rule)."""
    if include:
        out: dict = {}
        for name in (*ALWAYS_INCLUDED, *include):
            _copy_path(feature, out, name.split("."))
    else:
        out = json.loads(json.dumps(feature))  # excluding must not change the shared links
    for name in exclude:
        if name not in include and name not in ("type", "id"):
            _drop_path(out, name.split("."))
    return out


def collection_fields(doc: dict) -> dict:
    """A STAC collection's fields tileserver keeps on its product (bands come from items:
    a product's file layout is what its items' data assets say)."""
    keywords = doc.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise ValueError("keywords must be a list of strings")
    for key in ("title", "description"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise ValueError(f"{key} must be a string")
    return {"name": doc.get("title"), "description": doc.get("description"), "tags": keywords}
