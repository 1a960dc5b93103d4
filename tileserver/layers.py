"""Layers: what the API serves, an image or a registered search (a mosaic), without FastAPI.

Shaped like rio-tiler's mosaic backend: a layer knows its bands, bounds, zoom range and the
images the caller may read (through the store it is given, a ScopedStore for a caller),
and offers `tile`, `part`, `point`, `statistics` and `info`. Pixels come back as rendered
`ImageData` (render/pipeline.py render_image, Rendered.image); the API encodes them and sends them.
Errors are the catalog's and render's own (NotFound, RenderError, TooLarge): app.py maps
them to HTTP answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy
from cachetools import LRUCache
from morecantile import TileMatrixSet
from rasterio.errors import RasterioIOError
from rio_tiler.models import ImageData

from tileserver.catalog.access import scope_of
from tileserver.catalog.models import Image, Product, safe_name
from tileserver.catalog.search import SearchQuery, SortBy, TileLookup
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.metrics import timed
from tileserver.render.download import (
    GridRequest,
    Plan,
    TooLarge,
    area_wgs84,
    group_layers,
    image_extent,
    image_grid,
    layer_bands,
    output_grid,
    plan_download,
    render_layers,
    render_stack,
)
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import Layer, mosaic_bands, mosaic_tile
from tileserver.render.pipeline import RenderParams, cloud_read, render_image, request_bands
from tileserver.render.reader import Grid, read_bands, tile_reader, zoom_range
from tileserver.settings import Settings

if TYPE_CHECKING:
    from tileserver.search_pyramid import Pyramids

# most images one mosaic or stack download composites (a 413 above: narrow the area)
MAX_DOWNLOAD_IMAGES = 1000
POINT_SIZE = 1e-9  # degrees around a point: the area of the one source pixel it falls in


@dataclass(frozen=True)
class Zooms:
    """A layer's zooms in one TMS, and the zoom whose pixels a WMTS extent snaps to."""

    minzoom: int
    maxzoom: int
    snap: int


@dataclass(frozen=True)
class MosaicParams:
    """How a mosaic composites its images (parsed once in api/deps.py)."""

    pixel_selection: str = "first"
    sortby: list[SortBy] | None = None
    exit_when_full: bool = False
    skip_covered: bool = False

    def lookup(self, settings: Settings, limit: int) -> TileLookup:
        """How the store finds a tile's images, at most `limit` of them."""
        return TileLookup(
            limit=limit,
            scan_limit=settings.mosaic_scan_limit,
            time_limit=settings.mosaic_time_limit,
            exit_when_full=self.exit_when_full,
            skip_covered=self.skip_covered,
        )


@dataclass
class Download:
    """A download resolved: its sources (one group, or one per stack image), plan and grid."""

    groups: list[list[Layer]]
    plan: Plan
    grid: Grid
    geometry: dict | None
    name: str
    stack: bool = False

    def render(self, params: RenderParams, threads: int) -> numpy.ndarray:
        """(band, y, x), or (image, band, y, x) for a stack; invalid pixels are nodata."""
        if self.stack:
            return render_stack(self.groups, self.plan, self.grid, params, self.geometry, threads)
        return render_layers(self.groups[0], self.plan, self.grid, params, self.geometry, threads)

    def image(self, params: RenderParams, threads: int) -> ImageData:
        """The (non-stack) download as ImageData on its grid, nodata masked."""
        data = self.render(params, threads)
        nodata = self.plan.nodata
        empty = numpy.isnan(data) if nodata is not None and numpy.isnan(nodata) else data == nodata
        mask = numpy.broadcast_to(numpy.all(empty, axis=0), data.shape)
        west, north = self.grid.transform * (0, 0)
        east, south = self.grid.transform * (self.grid.width, self.grid.height)
        return ImageData(
            numpy.ma.MaskedArray(data, mask=mask),
            crs=self.grid.crs,
            bounds=(west, south, east, north),
            band_names=[o.name for o in self.plan.outputs],
        )


def point_area(lon: float, lat: float) -> GridRequest:
    """The download area of the one source pixel holding a WGS84 point."""
    box = (lon - POINT_SIZE, lat - POINT_SIZE, lon + POINT_SIZE, lat + POINT_SIZE)
    return GridRequest(bbox=box)


def band_statistics(image: ImageData) -> dict[str, dict]:
    """min, max, mean, std, count and valid_percent of each band's valid pixels."""
    result = {}
    total = image.width * image.height
    for name, band in zip(image.band_names, image.array, strict=True):
        values = band.compressed().astype("float64")
        stats = {"count": int(values.size), "valid_percent": 100 * values.size / total}
        if values.size:
            stats.update(
                min=float(values.min()),
                max=float(values.max()),
                mean=float(values.mean()),
                std=float(values.std()),
            )
        result[name] = stats
    return result


class BaseLayer:
    """What image and search layers share: part, point and statistics through downloads."""

    id: str
    name: str
    threads: int

    def download(
        self, params: RenderParams, area: GridRequest, flatten: str | None = None
    ) -> Download:
        """The download of `area` (render/download.py's grid rules)."""
        raise NotImplementedError

    def check_zoom(self, tms: TileMatrixSet, z: int) -> None:
        """RenderError for a zoom the layer does not serve (an image serves every zoom)."""

    def part(self, params: RenderParams, area: GridRequest) -> ImageData:
        """A bbox or a GeoJSON geometry (`area`) on the layer's own grid, or the one asked."""
        return self.download(params, area).image(params, self.threads)

    def point(self, lon: float, lat: float, params: RenderParams) -> dict[str, float | None]:
        """Each output band's value at a WGS84 point (None where nodata)."""
        image = self.part(params, point_area(lon, lat))
        values = image.array[:, 0, 0]
        return {
            name: None if value is numpy.ma.masked else value.item()
            for name, value in zip(image.band_names, values, strict=True)
        }

    def statistics(self, params: RenderParams, area: GridRequest) -> dict[str, dict]:
        """Statistics of each output band over an area (band_statistics)."""
        return band_statistics(self.part(params, area))


class ImageLayer(BaseLayer):
    """One image of the catalog."""

    kind = "image"

    def __init__(self, image: Image, product: Product, threads: int = 4):
        self.image, self.product = image, product
        self.id = self.name = image.id
        self.threads = threads

    @classmethod
    def from_store(cls, store: CatalogStore, image_id: str, threads: int = 4) -> ImageLayer:
        """The image and its product as `store` (a caller's ScopedStore) shows them."""
        image = store.get_image(image_id)
        return cls(image, store.get_product(image.product_id), threads)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """WGS84 bounds."""
        return tuple(self.image.bbox)

    def check(self, params: RenderParams) -> None:
        """Bad bands (and a cloud mask band it lacks) are one RenderError, before any tile
        is asked for."""
        request_bands(self.product, params)
        cloud_read(self.product, params)

    def zooms(self, tms: TileMatrixSet) -> Zooms:
        """The TMS's own minzoom (a tile far below the image's resolution reads only the few
        pixels the image covers in it, render/reader.py read_tile, so it is cheap), the
        image's maxzoom, and its first zoom (the WMTS extent snaps to its pixels)."""
        native, maxzoom = (
            zoom_range(self.image, tms) if self.image.files else (tms.minzoom, tms.maxzoom)
        )
        return Zooms(tms.minzoom, max(tms.minzoom, maxzoom), max(tms.minzoom, native))

    def cache_key(self, tms: TileMatrixSet | None = None, z: int | None = None) -> list[str]:
        """What a tile's cache key holds of the layer: a write to it moves the key."""
        return ["image", self.image.id, str(self.image.modified), str(self.product.modified)]

    def tile(
        self, tms: TileMatrixSet, x: int, y: int, z: int, size: int, params: RenderParams
    ) -> ImageData:
        """One rendered tile; `auto` scaling uses the image's stored statistics."""
        bands, alpha = request_bands(self.product, params)
        read = tile_reader(x, y, z, size, params.resampling)
        cloud = cloud_read(self.product, params)
        img = read_bands(self.image, bands, read, tms, params.nodata, self.threads, alpha, cloud)
        return render_image(img, bands, params, stats=self.image.band_stats, alpha_band=alpha)

    def download(
        self, params: RenderParams, area: GridRequest, flatten: str | None = None
    ) -> Download:
        """The image on the requested grid (by default its own: pixels unchanged)."""
        plan = plan_download(self.product, params)
        anchor = image_grid(self.image, plan.bands)
        grid = output_grid(anchor, [anchor], area)
        layers = [[(self.image, self.product)]]
        return Download(layers, plan, grid, area.geometry, safe_name(self.image.id))

    def info(self) -> dict:
        """Bounds, bands and the images behind the layer."""
        return {
            "id": self.id,
            "bounds": list(self.bounds),
            "bands": [b.name for b in self.product.bands],
            "images": [self.image.id],
        }


def mosaic_generation(store: CatalogStore, query: SearchQuery) -> int:
    """The generation of what a search can paint: its collections, else every product.

    A ScopedStore counts only what the caller reads, so a write to a product outside the
    search (or hidden from the caller) keeps their cached mosaics; a write inside moves it.
    """
    return store.generation(query.collections or None)


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


@dataclass
class SearchLayer(BaseLayer):
    """A registered search: its images composited in paint order (SEMANTICS.md section 2)."""

    store: CatalogStore
    cache: LayerCache
    id: str
    mosaic: MosaicParams
    settings: Settings
    pyramids: Pyramids | None = None  # the app's low-zoom pyramids (search_pyramid.py)
    query: SearchQuery = field(init=False)

    kind = "search"

    def __post_init__(self) -> None:
        query = self.store.get_search(self.id).search
        if self.mosaic.sortby is not None:  # the request's order in place of the search's
            query = query.model_copy(update={"sortby": self.mosaic.sortby})
        self.query = query
        self.name = f"search_{self.id}"
        self.threads = self.settings.reader_threads

    def _cached(self, what: str, compute):
        return self.cache.get(self.store, self.id, self.query, what, compute)

    def generation(self) -> int:
        """The catalog generation of what the search can paint, as the caller sees it."""
        return mosaic_generation(self.store, self.query)

    def canonical(self) -> SearchLayer:
        """The layer in the search's own order and `first` (what its pyramid holds)."""
        if self.mosaic == MosaicParams():
            return self
        return SearchLayer(
            self.store, self.cache, self.id, MosaicParams(), self.settings, self.pyramids
        )

    def all_images(self, limit: int) -> list[Image]:
        """Every image of the search in its order (at most `limit`), for its pyramid."""
        query = self.query.model_copy(update={"limit": limit, "token": None})
        return self.store.search(query, count=False).images

    def pyramid_serves(self, tms: TileMatrixSet, z: int) -> bool:
        """Whether the tile's zoom is one a pyramid keeps (WebMercatorQuad, below the first
        image's minzoom), with pyramids on."""
        return (
            self.pyramids is not None
            and self.pyramids.enabled
            and tms.id == "WebMercatorQuad"
            and z < self.native_zooms(tms)[0]
        )

    def first_image(self) -> Image:
        """The search's first image, looked up once per search, order, scope and generation.

        "No image" is remembered too: every tile of an empty mosaic would repeat the search.
        """

        def compute() -> Image | None:
            first = self.query.model_copy(update={"limit": 1, "token": None})
            page = self.store.search(first, count=False)
            return page.images[0] if page.images else None

        image = self._cached("first", compute)
        if image is None:
            raise NotFound("the search matches no image")
        return image

    @property
    def product(self) -> Product:
        """The product whose bands the mosaic renders: the first collection, else the first
        match's. Images of other products read the bands of the same names from their own."""
        if self.query.collections:
            return self.store.get_product(self.query.collections[0])
        return self.store.get_product(self.first_image().product_id)

    def products(self, found: dict[str, Product]) -> list[Product]:
        """The products the scaling holds for: those the search names (so every tile of the
        layer gets the same output type), else those of the images found."""
        products = dict(found)
        for product_id in self.query.collections or []:
            if product_id not in products:
                try:
                    products[product_id] = self.store.get_product(product_id)
                except NotFound:
                    continue  # a search may name a product since deleted
        return list(products.values())

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """WGS84 extent of the search's images."""
        return self._cached("bounds", lambda: self.store.summary(self.query).bbox)

    def check(self, params: RenderParams) -> None:
        """Bad bands or selections (or a cloud mask band the search's product lacks) are
        one RenderError, before any tile is asked for."""
        mosaic_bands(self.product, params, self.mosaic.pixel_selection)
        cloud_read(self.product, params)

    def native_zooms(self, tms: TileMatrixSet) -> tuple[int, int]:
        """The first image's zooms, from its resolution and overviews."""

        def compute() -> tuple[int, int]:
            image = self.first_image()
            return zoom_range(image, tms) if image.files else (tms.minzoom, tms.maxzoom)

        try:
            return self._cached(f"zooms:{tms.id}", compute)
        except RasterioIOError:  # one unreadable file must not take the layer down
            return tms.minzoom, tms.maxzoom

    def zooms(self, tms: TileMatrixSet) -> Zooms:
        """Zooms from the first image's resolution and overviews.

        Below the first image's minzoom tiles are refused unless TILESERVER_MOSAIC_MINZOOM
        is lower: there a tile composites up to TILESERVER_MOSAIC_LOW_ZOOM_MAX_IMAGES
        images, each a few pixels of its coarsest overview or reduced copy (pyramids.py).
        """
        minzoom, maxzoom = self.native_zooms(tms)
        snap = minzoom
        if self.pyramids is not None and self.pyramids.enabled and tms.id == "WebMercatorQuad":
            minzoom = tms.minzoom  # the pyramid answers every zoom below the native one
        elif self.settings.mosaic_minzoom is not None:
            minzoom = snap = self.settings.mosaic_minzoom
        return Zooms(minzoom, max(minzoom, maxzoom), snap)

    def image_cap(self, tms: TileMatrixSet, z: int) -> int:
        """Most images a tile at `z` composites: more below the first image's minzoom."""
        if z < self.native_zooms(tms)[0]:
            return max(self.settings.mosaic_max_images, self.settings.mosaic_low_zoom_max_images)
        return self.settings.mosaic_max_images

    def cache_key(self, tms: TileMatrixSet | None = None, z: int | None = None) -> list[str]:
        """What a tile's cache key holds of the layer: the caller's scope and generation,
        and at pyramid zooms the pyramid's version (a tile changes as its update lands)."""
        generation = mosaic_generation(self.store, self.query)
        key = ["search", self.id, scope_of(self.store), f"g{generation}"]
        if tms is not None and z is not None and self.pyramid_serves(tms, z):
            pyramid = self.pyramids.file(self)
            key.append(f"p{pyramid.meta().get('version', 0)}")
        return key

    def check_zoom(self, tms: TileMatrixSet, z: int) -> None:
        """RenderError below the mosaic's minzoom."""
        minzoom = self.zooms(tms).minzoom
        if z < minzoom:
            raise RenderError(
                f"zoom {z} is below this mosaic's minzoom {minzoom}: a tile there would read "
                "too many images; zoom in (TILESERVER_MOSAIC_MINZOOM sets the limit)"
            )

    def tile_images(self, tms: TileMatrixSet, x: int, y: int, z: int, limit: int) -> list[Image]:
        """The images a tile composites, in paint order, at most `limit`."""
        lookup = self.mosaic.lookup(self.settings, limit)
        with timed("catalog"):
            return self.store.tile_images(self.query, tuple(tms.bounds(x, y, z)), lookup)

    def tile(
        self, tms: TileMatrixSet, x: int, y: int, z: int, size: int, params: RenderParams
    ) -> ImageData:
        """One composited tile; `metadata["read"]` counts the images read, and
        `metadata["cap_reached"]` is the cap when more images meet the tile than it.
        Below the first image's minzoom the search's pyramid answers when it can
        (`metadata["pyramid"]` says which pyramid, or why the tile was composited)."""
        fallback = None
        if self.pyramid_serves(tms, z):
            fallback = self.pyramids.refusal(self, params)
            if fallback is None:
                image = self.pyramids.tile(self.canonical(), tms, x, y, z, size, params)
                if image is not None:
                    return image
                fallback = "bands"
        product = self.product
        cap = self.image_cap(tms, z)
        images = self.tile_images(tms, x, y, z, cap + 1)
        products = {product.id: product}
        sources = []
        for image in images[:cap]:
            if image.product_id not in products:
                products[image.product_id] = self.store.get_product(image.product_id)
            sources.append((image, products[image.product_id]))
        rendered = mosaic_tile(
            sources,
            product,
            Grid.of_tile(tms, x, y, z, size),
            params,
            self.mosaic.pixel_selection,
            self.threads,
            self.products(products),
        )
        if len(images) > cap:
            rendered.metadata["cap_reached"] = cap
        if fallback is not None:
            rendered.metadata["pyramid"] = f"dynamic: {fallback}"
        return rendered

    def download_layers(self, product: Product, area: GridRequest) -> list[Layer]:
        """The search's images meeting the area, in paint order, with their products."""
        box = area_wgs84(area)
        if box is not None:
            lookup = TileLookup(limit=MAX_DOWNLOAD_IMAGES + 1)
            images = self.store.tile_images(self.query, box, lookup)
            more = len(images) > MAX_DOWNLOAD_IMAGES
        else:
            page_query = self.query.model_copy(update={"limit": MAX_DOWNLOAD_IMAGES, "token": None})
            page = self.store.search(page_query, count=False)
            images, more = page.images, page.next_token is not None
        if not images:
            where = " in the requested area" if box is not None else ""
            raise NotFound(f"search '{self.id}' matches no image{where}")
        if more:
            raise TooLarge(
                f"search '{self.id}' has more than {MAX_DOWNLOAD_IMAGES} images to download "
                "here: narrow the area (bbox, geometry) or the search"
            )
        products = {product.id: product}
        result = []
        for image in images:
            if image.product_id not in products:
                products[image.product_id] = self.store.get_product(image.product_id)
            result.append((image, products[image.product_id]))
        return result

    def download(
        self, params: RenderParams, area: GridRequest, flatten: str | None = None
    ) -> Download:
        """The mosaic (`flatten` None) or a stack on the requested grid; by default the
        first image's grid (finest requested band), widened to every image."""
        product = self.product
        found = self.download_layers(product, area)
        if flatten is None:
            groups, keys = [found], []
        else:
            labelled = group_layers(found, flatten.strip())
            groups, keys = [g for _, g in labelled], [k for k, _ in labelled]
        products = list({p.id: p for _, p in found}.values())
        plan = plan_download(
            product, params, self.mosaic.pixel_selection, len(found), keys, products
        )
        anchor = image_grid(found[0][0], layer_bands(found[0], plan))
        extents = [anchor] + [image_extent(i, layer_bands((i, p), plan)) for i, p in found[1:]]
        grid = output_grid(anchor, extents, area)
        kind = "mosaic" if flatten is None else "stack"
        return Download(groups, plan, grid, area.geometry, f"{kind}_{self.id}", flatten is not None)

    def info(self) -> dict:
        """Bounds, bands and the search behind the layer."""
        return {
            "id": self.id,
            "bounds": list(self.bounds),
            "bands": [b.name for b in self.product.bands],
            "search": self.query.identity(),
        }
