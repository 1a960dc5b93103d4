"""Registered searches and their mosaics: tiles, TileJSON, WMTS, map, summaries."""

from __future__ import annotations

import threading
from typing import Annotated

from cachetools import LRUCache
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from morecantile import TileMatrixSet
from rasterio.errors import RasterioIOError

from tileserver.api.deps import (
    MosaicParams,
    MosaicParamsDep,
    RenderParamsDep,
    SettingsDep,
    StoreDep,
    get_tms,
    tms_query,
)
from tileserver.api.templates import render_template, root_path
from tileserver.api.tiles import (
    WMTS_XYZ,
    check_tile,
    render_query,
    tile_response,
    tile_route,
    tile_scale,
    tile_size,
    tile_url_template,
    tilejson,
    wmts_capabilities,
)
from tileserver.catalog.access import scope_of
from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import Interval, SearchLimits, SearchQuery, Summary
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.render.encode import ImageFormat
from tileserver.render.mosaic import TileGrid, mosaic_bands, render_mosaic_tile
from tileserver.render.tile import zoom_range
from tileserver.settings import Settings

router = APIRouter(tags=["searches"])

IMAGES_HEADER = "X-Mosaic-Images"
CAP_HEADER = "X-Mosaic-Cap-Reached"
MOSAIC_HEADERS = (IMAGES_HEADER, CAP_HEADER)


def limit_searches(store: CatalogStore, settings: Settings) -> None:
    """Give the store the settings' TTL and cap of registered searches (at app start)."""
    store.search_limits = SearchLimits(settings.search_ttl_days, settings.max_searches)


def mosaic_generation(store: CatalogStore, query: SearchQuery) -> int:
    """The generation of what a search can paint: its collections, else every product.

    A ScopedStore counts only what the caller reads, so a write to a product outside the
    search (or hidden from the caller) keeps their cached mosaics; a write inside moves it.
    """
    return store.generation(query.collections or None)


def search_links(request: Request, search_id: str) -> list[dict]:
    """Where a registered search's layer lives."""
    tiles = tile_url_template(
        request, "search_tile", {"search_id": search_id}, get_tms("WebMercatorQuad"), "png"
    )
    url = request.url_for
    return [
        {"rel": "self", "href": str(url("get_search", search_id=search_id))},
        {
            "rel": "tilejson",
            "type": "application/json",
            "href": str(url("search_tilejson", search_id=search_id)),
        },
        {
            "rel": "wmts",
            "type": "application/xml",
            "href": str(url("search_wmts", search_id=search_id)),
        },
        {"rel": "map", "type": "text/html", "href": str(url("search_map", search_id=search_id))},
        {"rel": "tiles", "type": "image/png", "href": tiles, "templated": True},
        {
            "rel": "summary",
            "type": "application/json",
            "href": str(url("search_summary", search_id=search_id)),
        },
    ]


@router.post("/searches")
def register_search(request: Request, body: SearchQuery, store: StoreDep) -> dict:
    """Register a STAC search as a mosaic; the same search always gets the same id."""
    registered = store.register_search(body)
    return {
        "id": registered.id,
        "search": registered.search.identity(),
        "links": search_links(request, registered.id),
    }


@router.get("/searches/{search_id}")
def get_search(request: Request, search_id: str, store: StoreDep) -> dict:
    """A registered search and its links."""
    registered = store.get_search(search_id)
    return {
        "id": registered.id,
        "search": registered.search.identity(),
        "created": registered.created,
        "links": search_links(request, registered.id),
    }


@router.post("/summary")
def summary(
    body: SearchQuery,
    store: StoreDep,
    interval: Annotated[Interval | None, Query(description="bucket by acquisition time")] = None,
) -> Summary:
    """Count, bytes and products of any search; with `interval`, per year ... hour."""
    return store.summary(body, interval)


@router.get("/searches/{search_id}/summary")
def search_summary(
    search_id: str,
    store: StoreDep,
    interval: Annotated[Interval | None, Query(description="bucket by acquisition time")] = None,
) -> Summary:
    """The summary of a registered search."""
    return store.summary(store.get_search(search_id).search, interval)


def mosaic_query(store: CatalogStore, search_id: str, mosaic: MosaicParams) -> SearchQuery:
    """The registered search, with the request's sortby in place of its own."""
    query = store.get_search(search_id).search
    if mosaic.sortby is not None:
        query = query.model_copy(update={"sortby": mosaic.sortby})
    return query


class LayerCache:
    """What a mosaic needs from its first image, per (search, order, scope, generation).

    Looking it up on every tile would run a search (and open a file) per tile.
    """

    def __init__(self, maxsize: int = 1024):
        self._cache: LRUCache = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()

    def get(self, store: CatalogStore, search_id: str, query: SearchQuery, what: str, compute):
        """The cached value, or compute() remembered."""
        generation = mosaic_generation(store, query)
        key = (search_id, query.model_dump_json(), scope_of(store), generation, what)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value


async def get_layers(request: Request) -> LayerCache:
    """The app's mosaic layer cache."""
    return request.app.state.layers


LayersDep = Annotated[LayerCache, Depends(get_layers)]


def cached_first_image(
    store: CatalogStore, layers: LayerCache, search_id: str, query: SearchQuery
) -> Image:
    """The search's first image, looked up once per search, order, scope and generation.

    "No image" is remembered too: every tile of an empty mosaic would repeat the search.
    """

    def compute() -> Image | None:
        page = store.search(query.model_copy(update={"limit": 1, "token": None}), count=False)
        return page.images[0] if page.images else None

    image = layers.get(store, search_id, query, "first", compute)
    if image is None:
        raise NotFound("the search matches no image")
    return image


def mosaic_product(
    store: CatalogStore, layers: LayerCache, search_id: str, query: SearchQuery
) -> Product:
    """The product whose bands a mosaic renders: the first collection, else the first match's.

    Images of other products read the bands of the same names from their own product.
    """
    if query.collections:
        return store.get_product(query.collections[0])
    return store.get_product(cached_first_image(store, layers, search_id, query).product_id)


def search_products(
    store: CatalogStore, query: SearchQuery, found: dict[str, Product]
) -> list[Product]:
    """The products a mosaic's scaling holds for: those the search names (so every tile of
    the layer gets the same output type), else those of the images found."""
    products = dict(found)
    for product_id in query.collections or []:
        if product_id not in products:
            try:
                products[product_id] = store.get_product(product_id)
            except NotFound:
                continue  # a search may name a product since deleted
    return list(products.values())


def mosaic_zooms(
    store: CatalogStore,
    layers: LayerCache,
    search_id: str,
    query: SearchQuery,
    tms: TileMatrixSet,
    settings: Settings,
) -> tuple[int, int]:
    """Zooms of a mosaic, from its first image's resolution and overviews.

    Below the minzoom one tile would read many images at their coarsest overview or
    worse, so tiles there are refused (TILESERVER_MOSAIC_MINZOOM moves the limit).
    """

    def compute() -> tuple[int, int]:
        image = cached_first_image(store, layers, search_id, query)
        return zoom_range(image, tms) if image.files else (tms.minzoom, tms.maxzoom)

    try:
        minzoom, maxzoom = layers.get(store, search_id, query, f"zooms:{tms.id}", compute)
    except RasterioIOError:  # one unreadable file must not take the layer down; not remembered
        minzoom, maxzoom = tms.minzoom, tms.maxzoom
    if settings.mosaic_minzoom is not None:
        minzoom = settings.mosaic_minzoom
    return minzoom, max(minzoom, maxzoom)


@tile_route(
    router,
    [
        "/searches/{search_id}/tiles/{tms_id}/{z}/{x}/{y}@{scale}x.{fmt}",
        "/searches/{search_id}/tiles/{tms_id}/{z}/{x}/{y}.{fmt}",
    ],
)
async def search_tile(
    request: Request,
    search_id: str,
    tms_id: str,
    z: int,
    x: int,
    y: int,
    fmt: ImageFormat,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    store: StoreDep,
    layers: LayersDep,
    settings: SettingsDep,
    scale: Annotated[int, Depends(tile_scale)],
) -> Response:
    """One mosaic tile of a registered search, images composited in the search's order.

    `X-Mosaic-Images` says how many images were read (skipped ones, hidden under
    painted pixels, are not counted); `X-Mosaic-Cap-Reached` appears
    when more images meet the tile than TILESERVER_MOSAIC_MAX_IMAGES allows.
    """
    tms = get_tms(tms_id)
    check_tile(tms, z, x, y)
    tilesize = tile_size(tms, z, scale, settings.max_tile_size)
    query = mosaic_query(store, search_id, mosaic)
    minzoom, _ = mosaic_zooms(store, layers, search_id, query, tms, settings)
    if z < minzoom:
        raise HTTPException(
            400,
            f"zoom {z} is below this mosaic's minzoom {minzoom}: a tile there would read "
            "too many images; zoom in (TILESERVER_MOSAIC_MINZOOM sets the limit)",
        )
    key = "|".join(
        [
            "search",
            search_id,
            scope_of(store),
            f"g{mosaic_generation(store, query)}",  # "g": unlike keys of the old global one
            tms.id,
            f"{z}/{x}/{y}@{scale}.{fmt.value}",
            render_query(request),
        ]
    )
    cap = settings.mosaic_max_images

    def render() -> tuple[bytes, dict]:
        product = mosaic_product(store, layers, search_id, query)
        lookup = mosaic.lookup(settings, cap + 1)
        images = store.tile_images(query, tuple(tms.bounds(x, y, z)), lookup)
        reached = len(images) > cap
        products = {product.id: product}
        sources = []
        for image in images[:cap]:
            if image.product_id not in products:
                products[image.product_id] = store.get_product(image.product_id)
            sources.append((image, products[image.product_id]))
        tile = render_mosaic_tile(
            sources,
            product,
            TileGrid(tms, x, y, z, tilesize),
            params,
            fmt,
            mosaic.pixel_selection,
            settings.reader_threads,
            search_products(store, query, products),
        )
        headers = {IMAGES_HEADER: str(tile.read)}
        if reached:
            headers[CAP_HEADER] = str(cap)
        return tile.content, headers

    return await tile_response(request, key, render, fmt, settings.cache_control)


@router.get("/searches/{search_id}/tiles/{tms_id}/{z}/{x}/{y}/assets")
def search_tile_assets(
    request: Request,
    search_id: str,
    tms_id: str,
    z: int,
    x: int,
    y: int,
    mosaic: MosaicParamsDep,
    store: StoreDep,
    settings: SettingsDep,
) -> list[dict]:
    """The images a mosaic tile composites, in paint order (at most the cap)."""
    tms = get_tms(tms_id)
    check_tile(tms, z, x, y)
    query = mosaic_query(store, search_id, mosaic)
    lookup = mosaic.lookup(settings, settings.mosaic_max_images)
    images = store.tile_images(query, tuple(tms.bounds(x, y, z)), lookup)
    return [
        {
            "id": image.id,
            "collection": image.product_id,
            "datetime": image.acquired,
            "eo:cloud_cover": image.cloud_cover,
            "bbox": image.bbox,
            "href": str(request.url_for("get_image", image_id=image.id)),
        }
        for image in images
    ]


def mosaic_layer(
    store: CatalogStore,
    layers: LayerCache,
    search_id: str,
    params,
    mosaic: MosaicParams,
    tms: TileMatrixSet,
    settings: Settings,
) -> tuple[tuple, int, int]:
    """Bounds and zooms of a mosaic; bad bands are one 400, here."""
    query = mosaic_query(store, search_id, mosaic)
    mosaic_bands(mosaic_product(store, layers, search_id, query), params, mosaic.pixel_selection)
    bbox = layers.get(store, search_id, query, "bounds", lambda: store.summary(query).bbox)
    minzoom, maxzoom = mosaic_zooms(store, layers, search_id, query, tms, settings)
    return bbox, minzoom, maxzoom


@router.get("/searches/{search_id}/tilejson.json")
def search_tilejson(
    request: Request,
    search_id: str,
    store: StoreDep,
    layers: LayersDep,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    settings: SettingsDep,
    tms: Annotated[TileMatrixSet, Depends(tms_query)],
    tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
) -> dict:
    """TileJSON 3.0 of the mosaic: bounds are the search's extent."""
    bbox, minzoom, maxzoom = mosaic_layer(store, layers, search_id, params, mosaic, tms, settings)
    url = tile_url_template(
        request, "search_tile", {"search_id": search_id}, tms, tile_format.value
    )
    return tilejson(search_id, url, bbox, minzoom, maxzoom)


@router.get("/searches/{search_id}/WMTSCapabilities.xml", response_class=Response)
def search_wmts(
    request: Request,
    search_id: str,
    store: StoreDep,
    layers: LayersDep,
    params: RenderParamsDep,
    mosaic: MosaicParamsDep,
    settings: SettingsDep,
    tms: Annotated[TileMatrixSet, Depends(tms_query)],
    tile_format: Annotated[ImageFormat, Query()] = ImageFormat.png,
) -> Response:
    """OGC WMTS 1.0 capabilities of the mosaic."""
    bbox, minzoom, maxzoom = mosaic_layer(store, layers, search_id, params, mosaic, tms, settings)
    url = tile_url_template(
        request, "search_tile", {"search_id": search_id}, tms, tile_format.value, WMTS_XYZ
    )
    return wmts_capabilities(
        request, f"search_{search_id}", bbox, minzoom, maxzoom, tms, tile_format, url
    )


@router.get("/searches/{search_id}/map", response_class=HTMLResponse)
def search_map(request: Request, search_id: str, store: StoreDep) -> HTMLResponse:
    """The web viewer opened on a registered search's mosaic."""
    store.get_search(search_id)
    return HTMLResponse(
        render_template("viewer.html", image_id="", search_id=search_id, root=root_path(request))
    )
