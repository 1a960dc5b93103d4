"""Downloads: an image, a search mosaic or a search stack as a GeoTIFF (COG) or .npy file.
The endpoints are api/factory.py's; this module parses their area and writes their file.

- `GET|POST /images/{image_id}/download.{tif|npy}`: one image, axes (band, y, x).
- `GET|POST /searches/{search_id}/mosaic.{tif|npy}`: the search's mosaic (the rules of
  its map tiles: paint order `sortby`, `pixel_selection`), axes (band, y, x).
- `GET|POST /searches/{search_id}/stack.{tif|npy}`: one mosaic per `flatten` group (day,
  month, year, a property, or none: every image), axes (image, band, y, x); GeoTIFF bands
  are image-major and described "<date or key> <band>", e.g. "2024-05-03 B04".
- `GET|POST /images/{image_id}/raster_info`, `GET|POST /searches/{search_id}/raster_info`
  (`stack=true` for the stack): the file the same query downloads, without its pixels.

Parameters: the rendering ones (`bands`, `scaling`, `data_type`, `expression`, ...);
`bbox` with `bbox_crs` (default EPSG:4326), or POST `{"geometry": <WGS84 GeoJSON
polygon>}` (pixels whose centres are outside it are nodata); `crs`, `resolution` (in the
CRS's units) or `width`/`height`; `resampling` (warping and overviews). Without `crs`,
`resolution`, `width` and `height` the file is on the source's own grid (of the finest
requested band; for a search: its first image's grid, covering every image), pixels
unchanged. The area is clipped to the images' extent; an area that misses them is a 404.
Above TILESERVER_DOWNLOAD_MAX_PIXELS (width x height x bands x stack images) is a 413.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Body, Depends, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.background import BackgroundTask

from tileserver.catalog.geojson import check_geometry
from tileserver.layers import Download
from tileserver.render.download import (
    GridRequest,
    check_budget,
    parse_bbox,
    parse_crs,
    raster_info,
    write_geotiff,
    write_npy,
)
from tileserver.render.pipeline import RenderParams
from tileserver.settings import Settings


class DownloadFormat(StrEnum):
    """File formats of downloads; the value is the URL extension."""

    tif = "tif"
    npy = "npy"

    @property
    def media_type(self) -> str:
        """The Content-Type of the file."""
        if self is DownloadFormat.tif:
            return "image/tiff; application=geotiff; profile=cloud-optimized"
        return "application/x-npy"


class AreaBody(BaseModel):
    """The body of POST downloads: the area to download, as a WGS84 GeoJSON geometry."""

    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(
        description="GeoJSON Polygon or MultiPolygon in WGS84; pixels outside are nodata"
    )

    @field_validator("geometry")
    @classmethod
    def _polygon(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_geometry(value, "the geometry", polygonal=True)


def grid_request(
    bbox: Annotated[
        str | None, Query(description="minx,miny,maxx,maxy in bbox_crs (clipped to the images)")
    ] = None,
    bbox_crs: Annotated[str, Query(description="CRS of bbox: EPSG:xxxx, code or WKT")] = (
        "EPSG:4326"
    ),
    crs: Annotated[
        str | None, Query(description="output CRS (default: the (first) image's own)")
    ] = None,
    resolution: Annotated[
        float | None,
        Query(gt=0, allow_inf_nan=False, description="output pixel size in units of crs"),
    ] = None,
    width: Annotated[int | None, Query(ge=1, description="output width in pixels")] = None,
    height: Annotated[int | None, Query(ge=1, description="output height in pixels")] = None,
) -> GridRequest:
    """The output grid parameters, parsed once; 400 names what is wrong."""
    return GridRequest(
        bbox=parse_bbox(bbox) if bbox is not None else None,
        bbox_crs=parse_crs(bbox_crs, "bbox_crs"),
        crs=parse_crs(crs) if crs is not None else None,
        resolution=resolution,
        width=width,
        height=height,
    )


GridDep = Annotated[GridRequest, Depends(grid_request)]
FlattenQuery = Annotated[
    str,
    Query(
        description="stack groups: none (one per image), day, month, year (UTC) or a "
        "property; each group is mosaicked, groups in sorted key order"
    ),
]


def with_body(area: GridRequest, body: AreaBody) -> GridRequest:
    """The grid request with a posted geometry (refused together with a bbox)."""
    return dataclasses.replace(area, geometry=body.geometry)


def file_response(
    job: Download, fmt: DownloadFormat, params: RenderParams, settings: Settings
) -> FileResponse:
    """Render the download into a temporary file, streamed and deleted once sent."""
    check_budget(job.grid, job.plan, settings.download_max_pixels)
    data = job.render(params, settings.reader_threads)
    fd, path = tempfile.mkstemp(prefix="tileserver-download-", suffix=f".{fmt.value}")
    os.close(fd)
    try:
        if fmt is DownloadFormat.tif:
            write_geotiff(path, data, job.grid, job.plan, params.resampling)
        else:
            write_npy(path, data)
    except BaseException:
        os.remove(path)
        raise
    del data
    return FileResponse(
        path,
        media_type=fmt.media_type,
        filename=f"{job.name}.{fmt.value}",
        background=BackgroundTask(os.remove, path),
    )


def info_response(job: Download, settings: Settings) -> dict:
    """raster_info of the job, with its pixel count and the budget."""
    info = raster_info(job.grid, job.plan)
    info["pixels"] = job.grid.width * job.grid.height * len(job.plan.outputs) * job.plan.layers
    info["max_pixels"] = settings.download_max_pixels
    return info


FILE_RESPONSES: dict = {
    200: {"content": {"image/tiff": {}, "application/x-npy": {}}},
    404: {"description": "unknown image/search, or the area misses the images"},
    413: {"description": "above TILESERVER_DOWNLOAD_MAX_PIXELS"},
}


def download_area(area: GridDep, body: Annotated[AreaBody | None, Body()] = None) -> GridRequest:
    """The output grid, with the geometry a POST body gives (GET has none)."""
    return with_body(area, body) if body is not None else area


AreaDep = Annotated[GridRequest, Depends(download_area)]


StackQuery = Annotated[bool, Query(description="describe the stack instead of the mosaic")]
