"""Registered searches and their mosaics: registration, summaries, a tile's images, and
the layer endpoints (api/factory.py) mounted on `/searches/{search_id}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tileserver.api.deps import (
    KnownQuery,
    SearchLayerDep,
    SettingsDep,
    StoreDep,
    get_tms,
    search_layer,
)
from tileserver.api.documents import tile_url_template
from tileserver.api.factory import LayerEndpoints, TileAt, tile_at
from tileserver.catalog.search import Interval, SearchLimits, SearchQuery, Summary
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.layers import MosaicParams, SearchLayer
from tileserver.settings import Settings

router = APIRouter(tags=["searches"], dependencies=[KnownQuery])


def limit_searches(store: CatalogStore, settings: Settings) -> None:
    """Give the store the settings' TTL and cap of registered searches (at app start)."""
    store.search_limits = SearchLimits(settings.search_ttl_days, settings.max_searches)


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
def register_search(
    request: Request, body: SearchQuery, store: StoreDep, settings: SettingsDep
) -> dict:
    """Register a STAC search as a mosaic; the same search always gets the same id. Its
    low-zoom pyramid (when kept) starts building in the background."""
    registered = store.register_search(body)
    pyramid_state(request, store, settings, registered.id)
    return {
        "id": registered.id,
        "search": registered.search.identity(),
        "links": search_links(request, registered.id),
    }


@router.get("/searches/{search_id}")
def get_search(request: Request, search_id: str, store: StoreDep, settings: SettingsDep) -> dict:
    """A registered search, its links, and what serves its low zooms."""
    registered = store.get_search(search_id)
    return {
        "id": registered.id,
        "search": registered.search.identity(),
        "created": registered.created,
        "links": search_links(request, registered.id),
        "low_zooms": pyramid_state(request, store, settings, registered.id) or low_zooms(settings),
    }


def pyramid_state(
    request: Request, store: CatalogStore, settings: Settings, search_id: str
) -> dict | None:
    """The search's pyramid (search_pyramid.py), a build started when it is behind the
    catalog; None when pyramids are off or the search matches nothing yet."""
    pyramids = getattr(request.app.state, "pyramids", None)
    if pyramids is None or not pyramids.enabled:
        return None
    layer = SearchLayer(
        store, request.app.state.layers, search_id, MosaicParams(), settings, pyramids
    )
    try:
        return pyramids.state(layer)
    except NotFound:
        return None


def low_zooms(settings: Settings) -> dict:
    """What answers a mosaic tile below its first image's minzoom (README "Zooming out")."""
    if settings.mosaic_minzoom is None:
        return {"minzoom": None, "served_by": None}  # refused: 400 below the image's minzoom
    return {
        "minzoom": settings.mosaic_minzoom,
        "served_by": "dynamic",  # composited per request, no pyramid kept for the search
        "sources": "each image's coarsest overview or reduced copy",
        "max_images": max(settings.mosaic_max_images, settings.mosaic_low_zoom_max_images),
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


@router.get("/searches/{search_id}/tiles/{tms_id}/{z}/{x}/{y}/assets")
def search_tile_assets(
    request: Request,
    at: Annotated[TileAt, Depends(tile_at)],
    layer: SearchLayerDep,
    settings: SettingsDep,
) -> list[dict]:
    """The images a mosaic tile composites, in paint order (at most the cap)."""
    images = layer.tile_images(at.tms, at.x, at.y, at.z, layer.image_cap(at.tms, at.z))
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


LayerEndpoints(
    router,
    "/searches/{search_id}",
    "search",
    search_layer,
    {"mosaic": False, "stack": True},
    ["searches"],
)
