"""Shared request dependencies: each query parameter is parsed here and nowhere else.

They are `async def` although they do not await: FastAPI runs a plain `def` dependency in
its thread pool, and two thread hand-offs per dependency cost more than a cached tile.
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlencode

import anyio.to_thread
import morecantile
from fastapi import Depends, HTTPException, Query, Request
from morecantile import TileMatrixSet
from rio_tiler.colormap import InvalidColorMapName, cmap
from rio_tiler.types import RIOResampling, WarpResampling

from tileserver.api.auth import QUERY_KEY
from tileserver.catalog.access import OPEN, Principal, ScopedStore
from tileserver.catalog.models import Product
from tileserver.catalog.search import parse_sortby
from tileserver.catalog.store import CatalogStore
from tileserver.layers import ImageLayer, MosaicParams, SearchLayer
from tileserver.render.colors import ColorError, check_color_formula, parse_colormap
from tileserver.render.download import DownloadError, parse_crs
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import PIXEL_SELECTIONS
from tileserver.render.pipeline import (
    MAX_SCALING_ENTRIES,
    RenderParams,
    Scaling,
    check_expression,
    parse_cloud_mask,
)
from tileserver.render.statistics import StatisticsError, StatisticsOptions
from tileserver.scaling_rules import ScalingError
from tileserver.settings import Settings
from tileserver.timeseries import SeriesRequest, series_request
from tileserver.values import PictureSize

# Request size limits: a product has a few dozen bands at most, and each band named is one
# more read (3,000 names took 20 s); `scaling` (render/pipeline.py `Scaling`) is one entry per band.
MAX_BANDS = MAX_SCALING_ENTRIES  # names in `bands` (repeats count)
PixelSelection = Literal[PIXEL_SELECTIONS]  # rio-tiler's methods, as an enum in the API docs
# one name serves reads and reprojection: rio-tiler's names valid for both (no gauss warp)
Resampling = Literal[tuple(n for n in get_args(RIOResampling) if n in get_args(WarpResampling))]


# Query parameters every route takes besides its own: the API key, and `_`, a cache buster a
# client may add to force a fresh answer from caches between it and the server.
CACHE_BUSTER = "_"
ALWAYS_ALLOWED = frozenset({QUERY_KEY, CACHE_BUSTER})
# titiler's (and rio-tiler's) names a copied URL may carry, and what tileserver takes instead
TITILER_NAMES = {
    "rescale": "scaling (lo,hi once or per band, e.g. scaling=0,3000)",
    "algorithm": "expression (band math over band names)",
    "algorithm_params": "expression (band math over band names)",
    "expression": "expression, on the image and search tile, download and map routes",
    "assets": "bands (band names of the product, e.g. bands=B04,B03,B02)",
    "asset_bidx": "bands (band names of the product)",
    "asset_as_band": "bands (band names of the product)",
    "bidx": "bands (band names, not indexes, e.g. bands=B04,B03,B02)",
    "url": "an image id or a registered search in the path (/images/{image_id}/...)",
    "unscale": "scaling=physical",
    "return_mask": "the format (png, webp, tif and npy carry the mask; jpeg does not)",
    "tilesize": "an @2x tile path ({y}@2x.png)",
    "minzoom": "nothing: a layer's zooms come from its images (see its TileJSON)",
    "maxzoom": "nothing: a layer's zooms come from its images (see its TileJSON)",
    "reproject": "resampling",
}


_ROUTE_QUERIES: dict[int, tuple[Any, frozenset[str]]] = {}  # id -> (route kept alive, names)


def route_query_names(route: Any) -> frozenset[str]:
    """The query parameters a route (an APIRoute) declares, its dependencies' included."""
    known = _ROUTE_QUERIES.get(id(route))
    if known is not None and known[0] is route:
        return known[1]
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    _ROUTE_QUERIES[id(route)] = (route, frozenset(names))
    return frozenset(names)


async def refuse_unknown_query(request: Request) -> None:
    """400 naming the query parameters the route does not know (a titiler name says what
    to use instead): an unknown parameter would otherwise be ignored and a copied URL
    render something else without a word."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    known = route_query_names(route) | ALWAYS_ALLOWED
    passed_to = getattr(route, "passes_query_to", None)  # a page handing its query on
    if passed_to is not None:
        known |= route_query_names(passed_to)
    unknown = sorted({k for k in request.query_params if k not in known})
    if not unknown:
        return
    hints = [f"for '{n}' use {TITILER_NAMES[n]}" for n in unknown if n in TITILER_NAMES]
    listed = ", ".join(f"'{n}'" for n in unknown)
    message = f"unknown query parameter(s) {listed} (known here: {', '.join(sorted(known))})"
    raise bad_request(f"{message}; {'; '.join(hints)}" if hints else message)


KnownQuery = Depends(refuse_unknown_query)


async def get_principal(request: Request) -> Principal:
    """The caller, as api.auth identified them (OPEN when the app runs without keys)."""
    return getattr(request.state, "principal", OPEN)


async def get_store(request: Request) -> CatalogStore:
    """The catalog as the caller sees it: every route reads and writes through this."""
    principal = await get_principal(request)
    if principal.admin:
        return request.app.state.store
    return ScopedStore(request.app.state.store, principal, request.app.state.confinement)


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def bad_request(message: str) -> HTTPException:
    """A 400 whose detail names the problem."""
    return HTTPException(status_code=400, detail=message)


async def receive_body(request: Request, write, idle_seconds: float) -> None:
    """Hand a streamed body (uploads, blobs) to `write` chunk by chunk, in a worker thread.

    TimeoutError when no chunk comes for `idle_seconds`; ClientDisconnect when the client
    goes; `write`'s own errors pass through. The caller decides what each costs its receiver.
    """
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_seconds)
        except StopAsyncIteration:
            return
        await anyio.to_thread.run_sync(write, chunk)


async def render_params(
    request: Request,
    store: Annotated[CatalogStore, Depends(get_store)],
    bands: Annotated[
        str | None,
        Query(description="comma-separated band names (default: the product's RGB)"),
    ] = None,
    scaling: Annotated[
        list[str] | None,
        Query(
            description="raw, auto, display, physical, lo,hi or lo,hi,outlo,outhi (percents "
            "allowed); once for all bands, once per band, or a JSON object with default_"
        ),
    ] = None,
    data_type: Annotated[
        str | None, Query(description="output type: Byte, UInt16, Int16, ... Float64")
    ] = None,
    processing_level: Annotated[str | None, Query()] = None,
    expression: Annotated[
        str | None, Query(description="band math over band names, e.g. (B08-B04)/(B08+B04)")
    ] = None,
    colormap_name: Annotated[str | None, Query(description="a rio-tiler colormap")] = None,
    nodata: Annotated[float | None, Query(description="override the bands' nodata")] = None,
    resampling: Annotated[Resampling, Query()] = "nearest",
    colormap: Annotated[
        str | None,
        Query(
            description='a custom colormap as JSON, as titiler\'s: {"1": [r, g, b, a] or '
            '"#rrggbb", ...} or intervals [[[lo, hi], [r, g, b, a]], ...]'
        ),
    ] = None,
    color_formula: Annotated[
        str | None,
        Query(
            description="rio-color operations on Byte output, e.g. "
            "'gamma rgb 1.3, sigmoidal rgb 10 0.15, saturation 1.2'"
        ),
    ] = None,
    cloud_mask: Annotated[
        str | None,
        Query(
            description="make a class band's classes transparent: BAND:classes (e.g. "
            "SCL:3,8,9,10), 'default' (the product's cloud classes) or 'none'"
        ),
    ] = None,
    preset: Annotated[
        str | None,
        Query(
            description="a render preset of the product (GET /products/{id}/presets): its "
            "parameters are the defaults, those given here override them"
        ),
    ] = None,
) -> RenderParams:
    """Every pixel-changing parameter, parsed once (a preset's filling those not given)."""
    given = {
        "bands": bands,
        "scaling": scaling,
        "data_type": data_type,
        "processing_level": processing_level,
        "expression": expression,
        "colormap_name": colormap_name,
        "nodata": nodata,
        "resampling": resampling if "resampling" in request.query_params else None,
        "colormap": colormap,
        "color_formula": color_formula,
        "cloud_mask": cloud_mask,
    }
    if preset is not None:
        given = with_preset(given, preset_of(layer_product(request, store), preset))
    return parse_render(**given)


# a preset's parameters that go together: one given in the request replaces the preset's others
PRESET_GROUPS = ({"bands", "expression"}, {"colormap_name", "colormap"})


def with_preset(given: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, with the preset's where the request gives none."""
    merged = dict(given)
    for name, value in preset.items():
        if merged.get(name) is not None:
            continue
        group = next((g for g in PRESET_GROUPS if name in g), {name})
        if any(given.get(other) is not None for other in group):
            continue
        merged[name] = [value] if name == "scaling" and isinstance(value, str) else value
    return merged


def preset_of(product: Product, name: str) -> dict[str, Any]:
    """The preset's parameters; 400 naming the product's presets when it has none so called."""
    found = product.presets.get(name)
    if found is None:
        known = ", ".join(sorted(product.presets)) or "none"
        raise bad_request(f"unknown preset '{name[:100]}' (product '{product.id}' has: {known})")
    return found.query()


def layer_product(request: Request, store: CatalogStore) -> Product:
    """The product whose presets a layer's route uses: the image's, or the search's (its
    first collection, else its first image's, as SearchLayer.product). A hidden image or
    search is the same 404 as its layer's."""
    image_id = request.path_params.get("image_id")
    if image_id:
        return store.get_product(store.get_image(image_id).product_id)
    search_id = request.path_params.get("search_id")
    if search_id:
        query = store.get_search(search_id).search
        if query.collections:
            return store.get_product(query.collections[0])
        first = store.search(query.model_copy(update={"limit": 1, "token": None}), count=False)
        if first.images:
            return store.get_product(first.images[0].product_id)
    raise bad_request("preset: this route has no product to take presets from")


def check_presets(product: Product) -> None:
    """400 naming the first preset whose parameters a tile request would refuse."""
    for name, preset in product.presets.items():
        query = preset.query()
        if isinstance(query.get("scaling"), str):
            query["scaling"] = [query["scaling"]]
        try:
            parse_render(**query)
        except HTTPException as exc:
            raise bad_request(f"preset '{name}': {exc.detail}") from None


def parse_render(
    bands: str | None = None,
    scaling: list[str] | None = None,
    data_type: str | None = None,
    processing_level: str | None = None,
    expression: str | None = None,
    colormap_name: str | None = None,
    nodata: float | None = None,
    resampling: str | None = None,
    colormap: str | None = None,
    color_formula: str | None = None,
    cloud_mask: str | None = None,
) -> RenderParams:
    """The rendering parameters as typed values; 400 names the bad one."""
    if resampling is None:
        resampling = "nearest"
    elif resampling not in get_args(Resampling):
        known = ", ".join(get_args(Resampling))
        raise bad_request(f"unknown resampling '{resampling[:50]}' (known: {known})")
    names = None
    if bands is not None:
        names = tuple(b.strip() for b in bands.split(",") if b.strip())
        if not names:
            raise bad_request("bands is empty: name one or more bands, comma-separated")
        if len(names) > MAX_BANDS:
            raise bad_request(f"bands names {len(names)} bands, more than {MAX_BANDS}")
    if expression is not None:
        try:
            check_expression(expression)
        except RenderError as exc:
            raise bad_request(str(exc)) from None
    chosen = None
    if colormap_name and colormap:
        raise bad_request("give colormap_name or colormap, not both")
    if colormap_name:
        chosen = named_colormap(colormap_name)
    try:
        if colormap:
            chosen = parse_colormap(colormap)
        if color_formula:
            check_color_formula(color_formula)
    except ColorError as exc:
        raise bad_request(str(exc)) from None
    try:
        parsed = Scaling.parse(scaling)
        cloud = parse_cloud_mask(cloud_mask)
    except (ScalingError, RenderError) as exc:
        raise bad_request(str(exc)) from None
    return RenderParams(
        bands=names,
        scaling=parsed,
        data_type=data_type,
        processing_level=processing_level,
        expression=expression,
        colormap=chosen,
        nodata=nodata,
        resampling=resampling,
        color_formula=color_formula or None,
        cloud_mask=cloud,
    )


def named_colormap(name: str) -> dict:
    """A rio-tiler colormap by name; 400 (naming examples) when unknown."""
    try:
        return cmap.get(name.lower())
    except InvalidColorMapName:
        raise bad_request(f"unknown colormap_name '{name}' (e.g. viridis, rdylgn, greys)") from None


async def mosaic_params(
    pixel_selection: Annotated[
        PixelSelection,
        Query(
            description="first (the first valid pixel in paint order), highest, lowest, "
            "mean, median, stdev, count, lastbandhigh, lastbandlow"
        ),
    ] = "first",
    sortby: Annotated[
        str | None,
        Query(description="paint order instead of the search's: e.g. -datetime,eo:cloud_cover"),
    ] = None,
    exitwhenfull: Annotated[
        bool,
        Query(
            description="stop looking for images once their footprints cover the tile "
            "(faster on deep stacks; trusts footprints to hold valid pixels only)"
        ),
    ] = False,
    skipcovered: Annotated[
        bool,
        Query(description="leave out images whose footprint is hidden by those above"),
    ] = False,
) -> MosaicParams:
    """The mosaic parameters, parsed once."""
    try:
        keys = parse_sortby(sortby) if sortby is not None else None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return MosaicParams(pixel_selection, keys, exitwhenfull, skipcovered)


@functools.cache
def _tms(tms_id: str) -> TileMatrixSet:
    return morecantile.tms.get(tms_id)  # a deep copy each call: kept, never changed


def get_tms(tms_id: str) -> TileMatrixSet:
    """A morecantile tile matrix set by id; 404 names the known ones."""
    try:
        return _tms(tms_id)
    except Exception:
        known = ", ".join(morecantile.tms.list())
        raise HTTPException(
            status_code=404, detail=f"unknown tile matrix set '{tms_id}' (known: {known})"
        ) from None


async def tms_query(
    tms: Annotated[str, Query(description="tile matrix set id")] = "WebMercatorQuad",
) -> TileMatrixSet:
    """A tile matrix set named by the `tms` query parameter."""
    return get_tms(tms)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
RenderParamsDep = Annotated[RenderParams, Depends(render_params)]
StoreDep = Annotated[CatalogStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MosaicParamsDep = Annotated[MosaicParams, Depends(mosaic_params)]


# query parameters that do not change a tile's bytes, and so stay out of its cache key
NON_RENDER_PARAMS = {"tms", "tile_format", *ALWAYS_ALLOWED}


def render_query(request: Request) -> str:
    """The request's rendering query string for cache keys and templated URLs.

    Sorted by name only: repeated parameters (one `scaling` per band) keep their order.
    """
    items = sorted(
        ((k, v) for k, v in request.query_params.multi_items() if k not in NON_RENDER_PARAMS),
        key=lambda item: item[0],
    )
    return urlencode(items)


async def image_layer(image_id: str, store: StoreDep, settings: SettingsDep) -> ImageLayer:
    """The image as the caller sees it (the layer of `/images/{image_id}`)."""
    return ImageLayer.from_store(store, image_id, settings.reader_threads)


async def search_layer(
    request: Request,
    search_id: str,
    mosaic: MosaicParamsDep,
    store: StoreDep,
    settings: SettingsDep,
) -> SearchLayer:
    """The registered search as the caller sees it, in the request's order (the layer of
    `/searches/{search_id}`)."""
    pyramids = getattr(request.app.state, "pyramids", None)
    return SearchLayer(store, request.app.state.layers, search_id, mosaic, settings, pyramids)


SearchLayerDep = Annotated[SearchLayer, Depends(search_layer)]


# ----------------------------------------------------------------------------- values

MAX_PICTURE_SIZE = 4096  # pixels of a preview's or crop's longer side
DEFAULT_PICTURE_SIZE = 1024


async def coord_crs_query(
    coord_crs: Annotated[
        str, Query(description="CRS of the point or bbox in the path: EPSG:xxxx, code or WKT")
    ] = "EPSG:4326",
) -> Any:
    """The CRS a point's or a bbox's coordinates are in (a rasterio CRS)."""
    try:
        return parse_crs(coord_crs, "coord_crs")
    except DownloadError as exc:
        raise bad_request(str(exc)) from None


def _numbers(text: str, what: str) -> list[float]:
    try:
        numbers = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        numbers = [math.nan]
    if not all(math.isfinite(n) for n in numbers):  # nan defeats every order check after
        raise bad_request(f"{what} '{text[:100]}' is not comma-separated finite numbers")
    return numbers


async def statistics_options(
    percentiles: Annotated[
        str | None, Query(description="comma-separated whole percentiles, e.g. 2,50,98")
    ] = None,
    histogram_bins: Annotated[
        str | None,
        Query(description="histogram bins: a count (default 10) or comma-separated edges"),
    ] = None,
    histogram_range: Annotated[
        str | None, Query(description="lo,hi of the histogram (default: min,max)")
    ] = None,
    coverage: Annotated[
        bool,
        Query(
            description="weigh each pixel meeting the geometry by the share of it covered "
            "(default: a pixel counts when its centre is inside)"
        ),
    ] = False,
) -> StatisticsOptions:
    """What a statistics request asks for, parsed once; 400 names what is wrong."""
    options: dict[str, Any] = {"coverage": coverage}
    if percentiles is not None:
        numbers = _numbers(percentiles, "percentiles")
        if not all(n.is_integer() for n in numbers):
            raise bad_request("percentiles are whole numbers 0..100, e.g. 2,50,98")
        options["percentiles"] = tuple(int(n) for n in numbers)
    if histogram_bins is not None:
        numbers = _numbers(histogram_bins, "histogram_bins")
        if len(numbers) == 1 and numbers[0].is_integer():
            options["bins"] = int(numbers[0])
        else:
            options["edges"] = tuple(numbers)
    if histogram_range is not None:
        numbers = _numbers(histogram_range, "histogram_range")
        if len(numbers) != 2:
            raise bad_request("histogram_range is two numbers: lo,hi")
        options["histogram_range"] = (numbers[0], numbers[1])
    try:
        return StatisticsOptions(**options)
    except StatisticsError as exc:
        raise bad_request(str(exc)) from None


async def picture_size(
    max_size: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_PICTURE_SIZE,
            description="most pixels of the picture's longer side (the source's pixels when fewer)",
        ),
    ] = DEFAULT_PICTURE_SIZE,
    width: Annotated[
        int | None, Query(ge=1, le=MAX_PICTURE_SIZE, description="picture width in pixels")
    ] = None,
    height: Annotated[
        int | None, Query(ge=1, le=MAX_PICTURE_SIZE, description="picture height in pixels")
    ] = None,
    dst_crs: Annotated[
        str | None, Query(description="the picture's CRS (default: the (first) image's own)")
    ] = None,
) -> PictureSize:
    """The size and CRS of a preview or crop: `max_size`, or `width`/`height`."""
    try:
        crs = parse_crs(dst_crs, "dst_crs") if dst_crs is not None else None
    except DownloadError as exc:
        raise bad_request(str(exc)) from None
    return PictureSize(max_size, width, height, crs)


CoordCrsDep = Annotated[Any, Depends(coord_crs_query)]
StatisticsOptionsDep = Annotated[StatisticsOptions, Depends(statistics_options)]
PictureSizeDep = Annotated[PictureSize, Depends(picture_size)]


@dataclass(frozen=True)
class SeriesQuery:
    """A time series' parameters from the query: the request, and the band of the first
    form (`band`) when it is that."""

    request: SeriesRequest
    first_form: str | None


async def series_query(
    product: Annotated[str, Query(description="product id")],
    start_date: Annotated[date, Query(description="first day, YYYY-MM-DD")],
    end_date: Annotated[date, Query(description="last day, YYYY-MM-DD (inclusive)")],
    band: Annotated[
        str | None,
        Query(
            description="the first form: one band, stored values (rows of count, nodata, mean...)"
        ),
    ] = None,
    bands: Annotated[
        str | None, Query(description="comma-separated band names, e.g. B04,B08")
    ] = None,
    expression: Annotated[
        str | None, Query(description="band math, e.g. (B08-B04)/(B08+B04); ';' separates outputs")
    ] = None,
    cloud_mask: Annotated[
        str | None,
        Query(description="BAND:classes (e.g. SCL:3,8,9,10), 'default' (the product's) or 'none'"),
    ] = None,
    max_cloud_fraction: Annotated[
        float | None,
        Query(ge=0, le=1, allow_inf_nan=False, description="drop (or flag) dates above it"),
    ] = None,
    cloudy: Annotated[
        Literal["drop", "flag"], Query(description="dates above max_cloud_fraction: drop or flag")
    ] = "drop",
    processing_level: Annotated[str | None, Query()] = None,
    percentiles: Annotated[
        str | None, Query(description="comma-separated, default 25,50,75")
    ] = None,
) -> SeriesQuery:
    """A time series' parameters (tileserver/timeseries.py series_request), parsed once."""
    names = bands.split(",") if bands is not None else None
    if names is not None and len(names) > MAX_BANDS:
        raise bad_request(f"bands names {len(names)} bands, more than {MAX_BANDS}")
    try:
        numbers = None
        if percentiles is not None:
            numbers = [int(p) for p in percentiles.split(",") if p.strip()]
        request, first = series_request(
            product,
            start_date,
            end_date,
            band,
            names,
            expression,
            cloud_mask,
            max_cloud_fraction,
            cloudy,
            processing_level,
            numbers,
        )
    except ValueError as exc:
        detail = str(exc) if isinstance(exc, RenderError) else "percentiles must be integers"
        raise bad_request(detail) from None
    return SeriesQuery(request, first)


SeriesQueryDep = Annotated[SeriesQuery, Depends(series_query)]
