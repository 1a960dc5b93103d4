"""What every format reader gives the import: cheap metadata first, the full record after.

An import reads `meta()` of every scene it finds (metadata files only: XML, JSON, headers)
to apply its filters, and calls `build()` only for the scenes it keeps; `build()` may open
the rasters (tile sizes, statistics) and writes the VRT the image's tiles are read through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tileserver.catalog.models import Band, Image, Product

# The image property naming where each derived value came from: {"geometry": "rpc",
# "datetime": "time_coverage_start"}; README "Where footprints and times come from".
PROVENANCE = "tileserver:provenance"


@dataclass
class SceneMeta:
    """A scene as the import filters see it."""

    id: str  # the scene id users know (e.g. DS_SPOT7_2019..., a SNAP product name)
    acquired: datetime | None  # timezone-aware UTC; None when the metadata has none
    geometry: dict  # WGS84 GeoJSON footprint
    cloud_cover: float | None  # percent
    product_id: str  # the product this kind of scene belongs to unless the user names one
    properties: dict[str, Any] = field(default_factory=dict)  # extra STAC properties


class SceneReader(Protocol):
    """One scene of one format, located by the GDAL path of its entry file."""

    href: str

    def meta(self) -> SceneMeta:
        """The scene's id, time, footprint, cloud cover; reads metadata files only."""
        ...

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """The catalog image (and the bands a new product would get).

        `meta` is what `meta()` gave, with `acquired` filled in (the user's time when the
        metadata has none); `product` is the existing product, whose band layout the scene
        must fit (else IngestError); `vrt_path` is where the reader writes the VRT its
        files point to, when the format needs one.
        """
        ...
