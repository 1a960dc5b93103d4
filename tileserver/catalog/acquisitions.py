"""One image per acquisition date over an area: what chips and parcel time series use.

Tile overlaps give several images of one date over a place (SEMANTICS.md section 3): the
one covering the area best is kept, then the one of the highest processing version.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from tileserver.catalog.models import Image
from tileserver.catalog.search import SearchQuery, SortBy

# where a processing version may be written: STAC properties, then Sentinel-2 names (N0509)
VERSION_PROPERTIES = ("processing:version", "s2:processing_baseline", "processing_baseline")
BASELINE_IN_NAME = re.compile(r"_N(\d{4})_")
MAX_IMAGES = 10000


def processing_version(image: Image) -> str:
    """The image's processing version as sortable text ('' when unknown)."""
    for key in VERSION_PROPERTIES:
        if image.properties.get(key) is not None:
            return str(image.properties[key]).zfill(8)
    match = BASELINE_IN_NAME.search(image.name)
    return match.group(1).zfill(8) if match else ""


def acquisitions(store, product_id: str, area: BaseGeometry, start: date, end: date) -> list[Image]:
    """Images of `product_id` acquired from `start` to `end` (whole days, UTC) whose
    footprint meets `area` (WGS84), one per date, oldest first."""
    query = SearchQuery(
        collections=[product_id],
        intersects=mapping(area),
        datetime=f"{datetime.combine(start, time.min, UTC).isoformat()}/"
        f"{datetime.combine(end, time.max, UTC).isoformat()}",
        sortby=[SortBy(field="datetime", direction="asc")],
        limit=MAX_IMAGES,
    )
    best: dict[date, tuple[tuple, Image]] = {}
    for image in store.search(query, count=False).images:
        footprint = shape(image.geometry)
        cover = footprint.intersection(area).area if area.area > 0 else 1.0
        rank = (cover, processing_version(image))
        day = image.acquired.date()
        if day not in best or rank > best[day][0]:
            best[day] = (rank, image)
    return [image for _, (_, image) in sorted(best.items())]
