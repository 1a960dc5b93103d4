"""The properties a search may filter and sort on: the core ones and those images carry.

Both stores name the same queryables with the same types, so a filter is refused (or
accepted) alike whichever store runs it. `Queryable.sql` is the SQLite store's SQL; the
pgSTAC store reads the same values with its own SQL (pgstac.postgres_queryables) and also
registers the names and types in pgSTAC's queryables table, for other pgSTAC clients.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from tileserver.catalog.cql2sql import Queryable
from tileserver.catalog.models import Image

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def property_sql(name: str, kind: str) -> str:
    """SQLite SQL reading a property from an image's document."""
    quoted = name.replace('"', '\\"').replace("'", "''")
    sql = f"json_extract(i.doc, '$.properties.\"{quoted}\"')"
    return f"ts_norm({sql})" if kind == "datetime" else sql


def json_type(value: Any) -> str | None:
    """The queryable type of a property value (None: not filterable)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "datetime" if TIMESTAMP.match(value) else "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


# Queryables every image has, whatever its product.
CORE_QUERYABLES = {
    q.name: q
    for q in (
        Queryable("id", "string", "i.name", "the item id (image name within its collection)"),
        Queryable("collection", "string", "i.product_id", "the collection (product) id"),
        Queryable("datetime", "datetime", "i.acquired", "acquisition time (UTC)"),
        Queryable("geometry", "geometry", "i.geom", "footprint (WGS84)", rtree="images_rtree"),
        Queryable("eo:cloud_cover", "number", "i.cloud_cover", "cloud cover, percent"),
        Queryable(
            "created",
            "datetime",
            "ts_norm(json_extract(i.doc, '$.created'))",
            "when the image was first registered",
        ),
        Queryable(
            "updated",
            "datetime",
            "ts_norm(json_extract(i.doc, '$.modified'))",
            "when the image record last changed",
        ),
        *(
            Queryable(name, kind, property_sql(name, kind), description)
            for name, kind, description in (
                ("platform", "string", "the satellite"),
                ("constellation", "string", "the satellite family"),
                ("instruments", "array", "the sensors"),
                ("gsd", "number", "ground sample distance, metres"),
                ("tags", "array", "free tags"),
            )
        ),
    )
}


def image_properties(image: Image) -> Iterator[tuple[str, str]]:
    """(name, type) of the image's filterable properties that are not core queryables."""
    for name, value in image.properties.items():
        kind = json_type(value)
        if kind is not None and name not in CORE_QUERYABLES:
            yield name, kind


def queryable_set(rows: Iterable[tuple[str, str]]) -> dict[str, Queryable]:
    """The core queryables and the recorded (name, type) rows, sorted by name.

    A name recorded with several types (one per product) is a string if any says string,
    else the core type or the first seen: comparisons then behave the same in both stores.
    """
    found = dict(CORE_QUERYABLES)
    for name, kind in sorted(rows):
        if name in found and found[name].type != kind:
            kind = "string" if "string" in (kind, found[name].type) else found[name].type
        found[name] = Queryable(name, kind, property_sql(name, kind))
    return found
