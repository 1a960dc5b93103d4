"""Tiles of one image: XYZ/TMS tiles, TileJSON, WMTS capabilities and a map page."""

from __future__ import annotations

import math
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from starlette.concurrency import run_in_threadpool
from titiler.core.utils import tms_limits, tms_limits_to_xml, tms_to_xml

from tileserver.api.auth import key_query
from tileserver.api.deps import RenderParamsDep, SettingsDep, StoreDep, get_tms, tms_query
from tileserver.api.templates import render_template, root_path
from tileserver.cache import Cache, CachedTile, make_etag
from tileserver.catalog.models import Image, Product
from tileserver.render.encode import ImageFormat
from tileserver.render.pipeline import RenderParams
from tileserver.render.tile import render_tile, request_bands, zoom_range

router = APIRouter(tags=["tiles"])
WGS84 = CRS.from_epsg(4326)

# query parameters that do not change a tile's bytes, and so stay out of its cache key
NON_RENDER_PARAMS = {"tms", "tile_format", "api_key"}


def load(store, image_id: str) -> tuple[Image, Product]:
    """The image and its product."""
    image = store.get_image(image_id)
    return image, store.get_product(image.product_id)


def layer(
    store, image_id: str, params: RenderParams, tms: TileMatrixSet
) -> tuple[Image, int, int, int]:
    """The image a TileJSON/WMTS describes, its zooms, and the image's own first zoom (the
    WMTS extent snaps to its pixels); bad bands are one 400, here.

    The minzoom is the TMS's own (0): a tile far below the image's resolution reads only
    the few pixels the image covers in it (render/reader.py read_tile), so it is cheap.
    """
    image, product = load(store, image_id)
    request_bands(product, params)
    native, maxzoom = zoom_range(image, tms) if image.files else (tms.minzoom, tms.maxzoom)
    return image, tms.minzoom, max(tms.minzoom, maxzoom), max(tms.minzoom, native)


def check_tile(tms: TileMatrixSet, z: int, x: int, y: int) -> None:
    """Reject zooms and indices outside the tile matrix set with a 400/404 that says why."""
    if not tms.minzoom <= z <= tms.maxzoom:
        raise HTTPException(
            400, f"zoom {z} out of range for {tms.id}: {tms.minzoom}..{tms.maxzoom}"
        )
    matrix = tms.matrix(z)
    if not (0 <= x < matrix.matrixWidth and 0 <= y < matrix.matrixHeight):
        raise HTTPException(
            404,
            f"tile {z}/{x}/{y} is outside {tms.id}: at zoom {z} x is 0..{matrix.matrixWidth - 1}"
            f" and y is 0..{matrix.matrixHeight - 1}",
        )


def tile_size(tms: TileMatrixSet, z: int, scale: int, limit: int) -> int:
    """Pixels per tile edge with @Nx; 400 above the configured limit."""
    size = scale * tms.matrix(z).tileWidth
    if size > limit:
        raise HTTPException(400, f"tile size {size} exceeds {limit}")
    return size


def render_query(request: Request) -> str:
    """The request's rendering query string for cache keys and templated URLs.

    Sorted by name only: repeated parameters (one `scaling` per band) keep their order.
    """
    items = sorted(
        ((k, v) for k, v in request.query_params.multi_items() if k not in NON_RENDER_PARAMS),
        key=lambda item: item[0],
    )
    return urlencode(items)


async def tile_response(
    request: Request,
    key: str,
    render,
    fmt: ImageFormat,
    cache_control: str,
) -> Response:
    """Serve from the cache or render; answer 304 when the client's ETag matches.

    `render()` returns the bytes and headers that describe them (kept with the cache entry).
    A remote cache (Redis) is read off the event loop; the in-process one is not worth a thread.
    """
    cache: Cache = request.app.state.cache
    entry = await run_in_threadpool(cache.get, key) if cache.remote else cache.get(key)
    if entry is None:

        def render_and_keep() -> CachedTile:
            content, extra = render()
            made = CachedTile(content, fmt.media_type, make_etag(content), extra)
            cache.put(key, made)
            return made

        entry = await run_in_threadpool(render_and_keep)
    headers = {**entry.headers, "ETag": entry.etag, "Cache-Control": cache_control}
    if entry.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(entry.content, media_type=entry.media_type, headers=headers)


async def tile_scale(request: Request) -> int:
    """The @Nx multiplier of a tile path (1 without it)."""
    raw = request.path_params.get("scale", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 4:
        raise HTTPException(400, f"tile scale @{raw}x must be @1x..@4x")
    return int(raw)


def tile_route(router: APIRouter, paths: list[str]):
    """Register a tile endpoint on several paths (the @Nx one hidden from the schema)."""

    def decorator(func):
        for path in paths:
            router.add_api_route(
                path,
                func,
                methods=["GET"],
                response_class=Response,
                responses={
                    200: {
                        "content": {
                            "image/png": {},
                            "image/jpeg": {},
                            "image/webp": {},
                            "image/tiff": {},
                            "application/x-binary": {},
                        }
                    }
                },
                include_in_schema="@" not in path,
            )
        return func

    return decorator


@tile_route(
    router,
    [  # the @Nx form first: the plain one would take "12@2x" as y
        "/images/{image_id}/tiles/{tms_id}/{z}/{x}/{y}@{scale}x.{fmt}",
        "/images/{image_id}/tiles/{tms_id}/{z}/{x}/{y}.{fmt}",
    ],
)
async def image_tile(
    request: Request,
    image_id: str,
    tms_id: str,
    z: int,
    x: int,
    y: int,
    fmt: ImageFormat,
    params: RenderParamsDep,
    store: StoreDep,
    settings: SettingsDep,
    scale: Annotated[int, Depends(tile_scale)],
) -> Response:
    """One tile of one image, in png, jpeg, webp, tif or npy."""
    tms = get_tms(tms_id)
    check_tile(tms, z, x, y)
    image, product = load(store, image_id)
    tilesize = tile_size(tms, z, scale, settings.max_tile_size)
    key = "|".join(
        [
            "image",
            image.id,
            str(image.modified),
            str(product.modified),
            tms.id,
            f"{z}/{x}/{y}@{scale}.{fmt.value}",
            render_query(request),
        ]
    )

    def render() -> tuple[bytes, dict]:
        content = render_tile(
            image, product, tms, x, y, z, tilesize, params, fmt, settings.reader_threads
        )
        return content, {}

    return await tile_response(request, key, render, fmt, settings.cache_control)


def tile_url_template(
    request: Request,
    route: str,
    path_params: dict,
    tms: TileMatrixSet,
    fmt: str,
    xyz=("{z}", "{x}", "{y}"),
) -> str:
    """A tile route's URL with placeholders, carrying the request's rendering parameters."""
    base = str(
        request.url_for(route, tms_id=tms.id, z=xyz[0], x=xyz[1], y=xyz[2], fmt=fmt, **path_params)
    )
    for placeholder in xyz:  # url_for percent-encodes the braces
        encoded = placeholder.replace("{", "%7B").replace("}", "%7D")
        base = base.replace(encoded, placeholder)
    query = "&".join(q for q in (render_query(request), key_query(request)) if q)
    return f"{base}?{query}" if query else base


def tilejson(name: str, tiles: str, bounds, minzoom: int, maxzoom: int) -> dict:
    """A TileJSON 3.0 document."""
    west, south, east, north = bounds
    return {
        "tilejson": "3.0.0",
        "name": name,
        "version": "1.0.0",
        "scheme": "xyz",
        "tiles": [tiles],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, (south + north) / 2, minzoom],
    }


def wmts_capabilities(
    request: Request,
    title: str,
    bounds,
    minzoom: int,
    maxzoom: int,
    tms: TileMatrixSet,
    fmt: ImageFormat,
    tile_url: str,
    snap_zoom: int | None = None,
) -> Response:
    """OGC WMTS 1.0 capabilities (RESTful) of one layer; its extent snaps to the pixels of
    `snap_zoom` (default `minzoom`): the layer's own data, not the whole first matrix."""
    epsg = tms.crs._pyproj_crs.to_epsg()
    xml = render_template(
        "wmts.xml",
        title=title,
        layer=title.replace(":", "_"),
        bounds=bounds,
        native_bounds=snapped_bounds(tms, bounds, minzoom if snap_zoom is None else snap_zoom),
        media_type=fmt.media_type,
        tms_id=tms.id,
        limits=tms_limits_to_xml(
            tms_limits(tms, bounds, zooms=(minzoom, maxzoom), geographic_crs=WGS84)
        ),
        matrices=tms_to_xml(tms, minzoom, maxzoom),
        supported_crs=f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else tms.crs.srs,
        tile_url=tile_url,
        capabilities_url=str(request.url),
    )
    return Response(xml, media_type="application/xml")


WMTS_XYZ = ("{TileMatrix}", "{TileCol}", "{TileRow}")


@router.get("/images/{image_id}/tilejson.json")
def image_tilejson(
    request: Request,
    image_id: str,
    store: StoreDep,
    params: RenderParamsDep,
    tms: Annotated[TileMatrixSet, Depends(tms_query)],
    tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
) -> dict:
    """TileJSON 3.0 for the image with the request's rendering parameters."""
    image, minzoom, maxzoom, _ = layer(store, image_id, params, tms)
    url = tile_url_template(request, "image_tile", {"image_id": image.id}, tms, tile_format.value)
    return tilejson(image.id, url, image.bbox, minzoom, maxzoom)


def snapped_bounds(
    tms: TileMatrixSet, bbox: tuple[float, float, float, float], zoom: int
) -> tuple[float, float, float, float]:
    """The WGS84 bbox in the grid's CRS, snapped outward to whole pixels of `zoom`.

    Without it GDAL's WMTS driver rounds the WGS84 box to the finest zoom and its
    overviews land half a pixel off the tile grid.
    """
    minx, miny, maxx, maxy = transform_bounds(WGS84, tms.rasterio_crs, *bbox, densify_pts=21)
    matrix = tms.matrix(zoom)
    size, (x0, y0) = matrix.cellSize, matrix.pointOfOrigin
    return (
        x0 + math.floor((minx - x0) / size) * size,
        y0 - math.ceil((y0 - miny) / size) * size,
        x0 + math.ceil((maxx - x0) / size) * size,
        y0 - math.floor((y0 - maxy) / size) * size,
    )


@router.get("/images/{image_id}/WMTSCapabilities.xml", response_class=Response)
def image_wmts(
    request: Request,
    image_id: str,
    store: StoreDep,
    params: RenderParamsDep,
    tms: Annotated[TileMatrixSet, Depends(tms_query)],
    tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
) -> Response:
    """OGC WMTS 1.0 capabilities (RESTful) for QGIS, GDAL and OpenLayers."""
    image, minzoom, maxzoom, native = layer(store, image_id, params, tms)
    url = tile_url_template(
        request, "image_tile", {"image_id": image.id}, tms, tile_format.value, WMTS_XYZ
    )
    return wmts_capabilities(
        request, image.id, image.bbox, minzoom, maxzoom, tms, tile_format, url, native
    )


@router.get("/images/{image_id}/map", response_class=HTMLResponse)
def image_map(request: Request, image_id: str, store: StoreDep) -> HTMLResponse:
    """The web viewer opened on one image."""
    image, _ = load(store, image_id)
    return HTMLResponse(render_template("viewer.html", image_id=image.id, root=root_path(request)))
