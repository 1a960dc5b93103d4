"""One endpoint factory for layers (titiler's TilerFactory / MosaicTilerFactory): tiles,
TileJSON, WMTS, map, downloads and raster_info are written once here, point values,
statistics, pictures and legends once in api/values.py, and all are mounted for images
(`/images/{image_id}`) and for searches (`/searches/{search_id}`).

The layer (tileserver/layers.py) does the work; the endpoints parse, cache and answer.
No `from __future__ import annotations` here: FastAPI reads the endpoint signatures, and
the layer dependency is local to each mount.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from morecantile import TileMatrixSet
from starlette.concurrency import run_in_threadpool

from tileserver.api.deps import RenderParamsDep, SettingsDep, get_tms, render_query, tms_query
from tileserver.api.documents import (
    WMTS_XYZ,
    tile_url_template,
    tilejson,
    wmts_capabilities,
)
from tileserver.api.downloads import (
    FILE_RESPONSES,
    AreaDep,
    DownloadFormat,
    FlattenQuery,
    StackQuery,
    file_response,
    info_response,
)
from tileserver.api.templates import render_template, root_path, viewer_context
from tileserver.api.values import register_pictures, register_values
from tileserver.cache import Cache, CachedTile, make_etag
from tileserver.layers import ImageLayer, SearchLayer, Zooms
from tileserver.metrics import MOSAIC_IMAGES, TILE_CACHE, timed
from tileserver.render.pipeline import ImageFormat, encode_image

IMAGES_HEADER = "X-Mosaic-Images"
CAP_HEADER = "X-Mosaic-Cap-Reached"
PYRAMID_HEADER = "X-Mosaic-Pyramid"
MOSAIC_HEADERS = (IMAGES_HEADER, CAP_HEADER, PYRAMID_HEADER)

Layer = ImageLayer | SearchLayer


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
    TILE_CACHE.labels("miss" if entry is None else "hit").inc()
    # a hit says so; a render's stages become its header in metrics.RequestMetrics
    timing = {"Server-Timing": "cache;desc=hit"}
    if entry is None:

        def render_and_keep() -> CachedTile:
            content, extra = render()
            made = CachedTile(content, fmt.media_type, make_etag(content), extra)
            cache.put(key, made)
            return made

        entry = await run_in_threadpool(render_and_keep)
        timing = {}
    headers = {**entry.headers, **timing, "ETag": entry.etag, "Cache-Control": cache_control}
    if entry.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(entry.content, media_type=entry.media_type, headers=headers)


def catalog_timed(layer: Callable[..., Any]) -> Callable[..., Any]:
    """The async layer dependency, its catalog lookups timed as `catalog` (Server-Timing)."""

    @functools.wraps(layer)  # FastAPI reads the wrapped signature
    async def opened(*args, **kwargs):
        with timed("catalog"):
            return await layer(*args, **kwargs)

    return opened


@dataclass(frozen=True)
class TileAt:
    """A tile's place, checked before any layer is looked up: TMS, z/x/y, @Nx and size."""

    tms: TileMatrixSet
    z: int
    x: int
    y: int
    scale: int
    size: int


async def tile_at(
    request: Request, tms_id: str, z: int, x: int, y: int, settings: SettingsDep
) -> TileAt:
    """The tile path's TMS, indices and @Nx scale; 400/404 says what is out of range."""
    tms = get_tms(tms_id)
    check_tile(tms, z, x, y)
    raw = request.path_params.get("scale", "1")
    if raw not in ("1", "2", "3", "4"):  # "²" is a digit int() refuses
        raise HTTPException(400, f"tile scale @{raw}x must be @1x..@4x")
    scale = int(raw)
    return TileAt(tms, z, x, y, scale, tile_size(tms, z, scale, settings.max_tile_size))


def tile_headers(image) -> dict[str, str]:
    """A mosaic tile's headers: images read, and the cap when more met the tile."""
    if "read" not in image.metadata:
        return {}
    headers = {IMAGES_HEADER: str(image.metadata["read"])}
    if "cap_reached" in image.metadata:
        headers[CAP_HEADER] = str(image.metadata["cap_reached"])
    if "pyramid" in image.metadata:  # served from the search's pyramid, or why not
        headers[PYRAMID_HEADER] = str(image.metadata["pyramid"])
    return headers


class LayerEndpoints:
    """The endpoints of one kind of layer, on `router`.

    `prefix` is the layer's path (`/images/{image_id}`), `layer` the dependency that opens
    it from that path, `kind` names the routes (`image_tile`, `search_tile`, ...), and
    `downloads` maps each download file's name to whether it is a stack
    (`{"download": False}` for images, `{"mosaic": False, "stack": True}` for searches).
    """

    def __init__(
        self,
        router: APIRouter,
        prefix: str,
        kind: str,
        layer: Callable[..., Any],
        downloads: dict[str, bool],
        tile_tags: list[str],
    ):
        self.router, self.prefix, self.kind = router, prefix, kind
        self.layer_dep = Annotated[Layer, Depends(catalog_timed(layer))]
        self.path_param = prefix.rsplit("{", 1)[1].rstrip("}")
        self.tile_tags = tile_tags
        self.register_tiles()
        self.register_documents()
        self.register_downloads(downloads)
        register_values(self, stacks=any(downloads.values()))
        register_pictures(self)

    def url_params(self, layer: Layer) -> dict[str, str]:
        """The path parameter naming `layer` in its routes' URLs."""
        return {self.path_param: layer.id}

    def register_tiles(self) -> None:
        """`{prefix}/tiles/{tms}/{z}/{x}/{y}[@Nx].{fmt}` (the @Nx form hidden from the schema)."""
        layer_dep = self.layer_dep

        async def tile(
            request: Request,
            fmt: ImageFormat,
            at: Annotated[TileAt, Depends(tile_at)],
            params: RenderParamsDep,
            layer: layer_dep,
            settings: SettingsDep,
        ) -> Response:
            """One tile in png, jpeg, webp, tif or npy. A mosaic tile composites the search's
            images in its order: `X-Mosaic-Images` says how many were read (those hidden
            under painted pixels are skipped, not counted); `X-Mosaic-Cap-Reached` appears
            when more images meet the tile than TILESERVER_MOSAIC_MAX_IMAGES allows;
            below the first image's minzoom `X-Mosaic-Pyramid` names the pyramid generation
            that served it, or why it was composited per request. A pyramid tile still
            being built answers 503 with Retry-After."""
            layer.check_zoom(at.tms, at.z)
            place = f"{at.z}/{at.x}/{at.y}@{at.scale}.{fmt.value}"
            key = "|".join(
                [*layer.cache_key(at.tms, at.z), at.tms.id, place, render_query(request)]
            )

            def render() -> tuple[bytes, dict]:
                image = layer.tile(at.tms, at.x, at.y, at.z, at.size, params)
                if "read" in image.metadata:
                    MOSAIC_IMAGES.observe(image.metadata["read"])
                with timed("encode"):
                    return encode_image(image, fmt), tile_headers(image)

            return await tile_response(request, key, render, fmt, settings.cache_control)

        for path in (  # the @Nx form first: the plain one would take "12@2x" as y
            f"{self.prefix}/tiles/{{tms_id}}/{{z}}/{{x}}/{{y}}@{{scale}}x.{{fmt}}",
            f"{self.prefix}/tiles/{{tms_id}}/{{z}}/{{x}}/{{y}}.{{fmt}}",
        ):
            self.router.add_api_route(
                path,
                tile,
                name=f"{self.kind}_tile",
                methods=["GET"],
                response_class=Response,
                responses=TILE_RESPONSES,
                include_in_schema="@" not in path,
                tags=self.tile_tags,
            )

    def register_documents(self) -> None:
        """TileJSON, WMTS capabilities and the map page."""
        layer_dep, tile_route = self.layer_dep, f"{self.kind}_tile"
        url_params = self.url_params

        def described(
            layer: layer_dep,
            params: RenderParamsDep,
            tms: Annotated[TileMatrixSet, Depends(tms_query)],
        ) -> tuple[Layer, TileMatrixSet, Zooms]:
            """The layer a document describes, in a TMS; bad bands are one 400, here."""
            layer.check(params)
            return layer, tms, layer.zooms(tms)

        Described = Annotated[tuple[Layer, TileMatrixSet, Zooms], Depends(described)]

        def layer_tilejson(
            request: Request,
            doc: Described,
            tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
        ) -> dict:
            """TileJSON 3.0 of the layer with the request's rendering parameters."""
            layer, tms, zooms = doc
            url = tile_url_template(request, tile_route, url_params(layer), tms, tile_format.value)
            return tilejson(layer.id, url, layer.bounds, zooms.minzoom, zooms.maxzoom)

        def layer_wmts(
            request: Request,
            doc: Described,
            tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
        ) -> Response:
            """OGC WMTS 1.0 capabilities (RESTful) for QGIS, GDAL and OpenLayers."""
            layer, tms, zooms = doc
            url = tile_url_template(
                request, tile_route, url_params(layer), tms, tile_format.value, WMTS_XYZ
            )
            return wmts_capabilities(
                request,
                layer.name,
                layer.bounds,
                zooms.minzoom,
                zooms.maxzoom,
                tms,
                tile_format,
                url,
                zooms.snap,
            )

        def layer_map(request: Request, layer: layer_dep, settings: SettingsDep) -> HTMLResponse:
            """The web viewer opened on the layer. It takes the TileJSON's query parameters
            (the rendering it shows) and hands them on unparsed: a bad one is the page's
            status line, from the TileJSON's 400, not an error page."""
            if layer.kind == "image":
                ids = {"image_id": layer.id}
            else:
                ids = {"image_id": "", "search_id": layer.id}
            page = render_template(
                "viewer.html", **ids, **viewer_context(settings), root=root_path(request)
            )
            return HTMLResponse(page)

        tags = self.tile_tags
        self.router.add_api_route(
            f"{self.prefix}/tilejson.json", layer_tilejson, name=f"{self.kind}_tilejson", tags=tags
        )
        tilejson_route = self.router.routes[-1]
        self.router.add_api_route(
            f"{self.prefix}/WMTSCapabilities.xml",
            layer_wmts,
            name=f"{self.kind}_wmts",
            response_class=Response,
            tags=tags,
        )
        self.router.add_api_route(
            f"{self.prefix}/map",
            layer_map,
            name=f"{self.kind}_map",
            response_class=HTMLResponse,
            tags=tags,
        )
        self.router.routes[-1].passes_query_to = tilejson_route  # see refuse_unknown_query

    def get_and_post(self, path: str, endpoint, name: str, **options) -> None:
        """GET, and POST with a GeoJSON geometry in its body: two operations."""
        for method in ("GET", "POST"):
            self.router.add_api_route(
                path, endpoint, name=name, methods=[method], tags=["downloads"], **options
            )

    def register_downloads(self, downloads: dict[str, bool]) -> None:
        """`{prefix}/{name}.{tif|npy}` per download, and raster_info describing them."""
        layer_dep = self.layer_dep

        def download(stack: bool):
            def layer_download(
                fmt: DownloadFormat,
                params: RenderParamsDep,
                area: AreaDep,
                layer: layer_dep,
                settings: SettingsDep,
            ) -> FileResponse:
                """The layer as a COG or .npy (band, y, x), by default on its own grid; POST a
                `{"geometry": ...}` body to download within it (pixels outside are nodata)."""
                return file_response(layer.download(params, area), fmt, params, settings)

            def layer_stack(
                fmt: DownloadFormat,
                params: RenderParamsDep,
                area: AreaDep,
                layer: layer_dep,
                settings: SettingsDep,
                flatten: FlattenQuery = "none",
            ) -> FileResponse:
                """The search's images as a stack: .npy (image, band, y, x); GeoTIFF bands
                image-major."""
                return file_response(layer.download(params, area, flatten), fmt, params, settings)

            return layer_stack if stack else layer_download

        for name, stack in downloads.items():
            route = f"{name}_download" if self.kind == "search" else f"{self.kind}_{name}"
            self.get_and_post(
                f"{self.prefix}/{name}.{{fmt}}",
                download(stack),
                route,
                response_class=FileResponse,
                responses=FILE_RESPONSES,
            )

        def raster_info(
            params: RenderParamsDep, area: AreaDep, layer: layer_dep, settings: SettingsDep
        ) -> dict:
            """The file the same query downloads: geoTransform, CRS, size, WGS84 extent, bands."""
            return info_response(layer.download(params, area), settings)

        def stack_raster_info(
            params: RenderParamsDep,
            area: AreaDep,
            layer: layer_dep,
            settings: SettingsDep,
            stack: StackQuery = False,
            flatten: FlattenQuery = "none",
        ) -> dict:
            """The file mosaic.tif (or stack.tif with `stack=true`) downloads with the same
            query."""
            job = layer.download(params, area, flatten if stack else None)
            return info_response(job, settings)

        stacks = any(downloads.values())
        self.get_and_post(
            f"{self.prefix}/raster_info",
            stack_raster_info if stacks else raster_info,
            f"{self.kind}_raster_info",
        )
