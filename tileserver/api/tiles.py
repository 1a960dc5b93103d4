"""What tile endpoints share (api/factory.py): tile checks, the tile cache, URL templates,
TileJSON and WMTS documents."""

from __future__ import annotations

import math
from urllib.parse import urlencode

from fastapi import HTTPException, Request, Response
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from starlette.concurrency import run_in_threadpool
from titiler.core.utils import tms_limits, tms_limits_to_xml, tms_to_xml

from tileserver.api.auth import key_query
from tileserver.api.deps import ALWAYS_ALLOWED
from tileserver.api.templates import render_template
from tileserver.cache import Cache, CachedTile, make_etag
from tileserver.render.encode import ImageFormat

WGS84 = CRS.from_epsg(4326)

# query parameters that do not change a tile's bytes, and so stay out of its cache key
NON_RENDER_PARAMS = {"tms", "tile_format", *ALWAYS_ALLOWED}


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


TILE_RESPONSES: dict = {
    200: {
        "content": {
            "image/png": {},
            "image/jpeg": {},
            "image/webp": {},
            "image/tiff": {},
            "application/x-binary": {},
        }
    }
}


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
