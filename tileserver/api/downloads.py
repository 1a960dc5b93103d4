"""Downloads: an image, a search mosaic or a search stack as a GeoTIFF (COG) or .npy file.

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
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.background import BackgroundTask

from tileserver.api.deps import (
    MosaicParams,
    MosaicParamsDep,
    RenderParamsDep,
    SettingsDep,
    StoreDep,
)
from tileserver.api.searches import LayerCache, LayersDep, mosaic_product, mosaic_query
from tileserver.api.tiles import load
from tileserver.catalog.models import Product, safe_name
from tileserver.catalog.search import TileLookup
from tileserver.catalog.store import CatalogStore
from tileserver.render.download import (
    Grid,
    GridRequest,
    Plan,
    area_wgs84,
    check_budget,
    check_geometry,
    group_layers,
    image_extent,
    image_grid,
    layer_bands,
    output_grid,
    parse_bbox,
    parse_crs,
    plan_download,
    raster_info,
    render_layers,
    render_stack,
    write_geotiff,
    write_npy,
)
from tileserver.render.mosaic import Layer
from tileserver.render.pipeline import RenderParams
from tileserver.settings import Settings

router = APIRouter(tags=["downloads"])

# most images one mosaic or stack download composites (a 413 above: narrow the area)
MAX_IMAGES = 1000


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
        return check_geometry(value)


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


@dataclass
class Job:
    """A download resolved: its sources (one group, or one per stack image), plan and grid."""

    groups: list[list[Layer]]
    plan: Plan
    grid: Grid
    geometry: dict | None
    name: str
    stack: bool = False


def image_job(store: CatalogStore, image_id: str, params: RenderParams, area: GridRequest) -> Job:
    """One image on the requested grid."""
    image, product = load(store, image_id)
    plan = plan_download(product, params)
    anchor = image_grid(image, plan.bands)
    grid = output_grid(anchor, [anchor], area)
    return Job([[(image, product)]], plan, grid, area.geometry, safe_name(image.id))


def search_layers(
    store: CatalogStore,
    layers: LayerCache,
    search_id: str,
    mosaic: MosaicParams,
    area: GridRequest,
) -> tuple[Product, list[Layer]]:
    """The mosaic's product and the search's images in paint order (those meeting the area)."""
    query = mosaic_query(store, search_id, mosaic)
    product = mosaic_product(store, layers, search_id, query)
    box = area_wgs84(area)
    if box is not None:
        images = store.tile_images(query, box, TileLookup(limit=MAX_IMAGES + 1))
        more = len(images) > MAX_IMAGES
    else:
        page = store.search(
            query.model_copy(update={"limit": MAX_IMAGES, "token": None}), count=False
        )
        images, more = page.images, page.next_token is not None
    if not images:
        where = " in the requested area" if box is not None else ""
        raise HTTPException(404, f"search '{search_id}' matches no image{where}")
    if more:
        raise HTTPException(
            413,
            f"search '{search_id}' has more than {MAX_IMAGES} images to download here: "
            "narrow the area (bbox, geometry) or the search",
        )
    products = {product.id: product}
    result = []
    for image in images:
        if image.product_id not in products:
            products[image.product_id] = store.get_product(image.product_id)
        result.append((image, products[image.product_id]))
    return product, result


def search_job(
    store: CatalogStore,
    layers: LayerCache,
    search_id: str,
    params: RenderParams,
    mosaic: MosaicParams,
    area: GridRequest,
    flatten: str | None = None,
) -> Job:
    """A search's mosaic (`flatten` None) or stack on the requested grid.

    The default grid is the first image's (finest requested band), widened to every image.
    """
    product, found = search_layers(store, layers, search_id, mosaic, area)
    if flatten is None:
        groups, keys = [found], []
    else:
        labelled = group_layers(found, flatten.strip())
        groups, keys = [g for _, g in labelled], [k for k, _ in labelled]
    products = list({p.id: p for _, p in found}.values())
    plan = plan_download(product, params, mosaic.pixel_selection, len(found), keys, products)
    anchor = image_grid(found[0][0], layer_bands(found[0], plan))
    extents = [anchor] + [image_extent(i, layer_bands((i, p), plan)) for i, p in found[1:]]
    grid = output_grid(anchor, extents, area)
    kind = "mosaic" if flatten is None else "stack"
    return Job(groups, plan, grid, area.geometry, f"{kind}_{search_id}", flatten is not None)


def file_response(
    job: Job, fmt: DownloadFormat, params: RenderParams, settings: Settings
) -> FileResponse:
    """Render the job into a temporary file, streamed and deleted once sent."""
    check_budget(job.grid, job.plan, settings.download_max_pixels)
    threads = settings.reader_threads
    if job.stack:
        data = render_stack(job.groups, job.plan, job.grid, params, job.geometry, threads)
    else:
        data = render_layers(job.groups[0], job.plan, job.grid, params, job.geometry, threads)
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


def info_response(job: Job, settings: Settings) -> dict:
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


# ----------------------------------------------------------------------------- images


def download_area(area: GridDep, body: Annotated[AreaBody | None, Body()] = None) -> GridRequest:
    """The output grid, with the geometry a POST body gives (GET has none)."""
    return with_body(area, body) if body is not None else area


AreaDep = Annotated[GridRequest, Depends(download_area)]


def get_and_post(path: str, **options):
    """GET, and POST with a GeoJSON geometry in its body: two operations, two operation ids."""

    def register(endpoint):
        router.get(path, **options)(endpoint)
        return router.post(path, **options)(endpoint)

    return register


@get_and_post(
    "/images/{image_id}/download.{fmt}",
    response_class=FileResponse,
    responses=FILE_RESPONSES,
)
def image_download(
    image_id: str,
    fmt: DownloadFormat,
    params: RenderParamsDep,
    area: AreaDep,
    store: StoreDep,
    settings: SettingsDep,
) -> FileResponse:
    """The image as a COG or .npy (band, y, x); by default its own grid, pixels unchanged.

    POST a `{"geometry": ...}` body to download within it (pixels outside are nodata).
    """
    return file_response(image_job(store, image_id, params, area), fmt, params, settings)


@get_and_post("/images/{image_id}/raster_info")
def image_raster_info(
    image_id: str, params: RenderParamsDep, area: AreaDep, store: StoreDep, settings: SettingsDep
) -> dict:
    """The file the same query downloads: geoTransform, CRS, size, WGS84 extent, bands."""
    return info_response(image_job(store, image_id, params, area), settings)


# ----------------------------------------------------------------------------- searches


@get_and_post(
    "/searches/{search_id}/mosaic.{fmt}",
    response_class=FileResponse,
    responses=FILE_RESPONSES,
)
def mosaic_download(
    search_id: str,
    fmt: DownloadFormat,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    area: AreaDep,
    store: StoreDep,
    layers: LayersDep,
    settings: SettingsDep,
) -> FileResponse:
    """The search's mosaic as a COG or .npy (band, y, x), newest on top by default."""
    job = search_job(store, layers, search_id, params, mosaic, area)
    return file_response(job, fmt, params, settings)


@get_and_post(
    "/searches/{search_id}/stack.{fmt}",
    response_class=FileResponse,
    responses=FILE_RESPONSES,
)
def stack_download(
    search_id: str,
    fmt: DownloadFormat,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    area: AreaDep,
    store: StoreDep,
    layers: LayersDep,
    settings: SettingsDep,
    flatten: FlattenQuery = "none",
) -> FileResponse:
    """The search's images as a stack: .npy (image, band, y, x); GeoTIFF bands image-major."""
    job = search_job(store, layers, search_id, params, mosaic, area, flatten)
    return file_response(job, fmt, params, settings)


StackQuery = Annotated[bool, Query(description="describe the stack instead of the mosaic")]


@get_and_post("/searches/{search_id}/raster_info")
def search_raster_info(
    search_id: str,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    area: AreaDep,
    store: StoreDep,
    layers: LayersDep,
    settings: SettingsDep,
    stack: StackQuery = False,
    flatten: FlattenQuery = "none",
) -> dict:
    """The file mosaic.tif (or stack.tif with `stack=true`) downloads with the same query."""
    job = search_job(store, layers, search_id, params, mosaic, area, flatten if stack else None)
    return info_response(job, settings)
