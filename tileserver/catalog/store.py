"""The catalog store protocol: what every backend (SQLite, pgSTAC) provides."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from tileserver.catalog.cql2sql import Queryable
from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import (
    RegisteredSearch,
    SearchLimits,
    SearchPage,
    SearchQuery,
    Summary,
    TileLookup,
)

if TYPE_CHECKING:
    from tileserver.catalog.blobs import BlobStore
    from tileserver.catalog.keys import ApiKey
    from tileserver.catalog.parcels import ParcelStore


class CatalogError(Exception):
    """Base class of catalog errors; the API maps each subclass to a 4xx."""


class NotFound(CatalogError):
    """The product or image does not exist."""


class Forbidden(CatalogError):
    """The caller may see the record but not make this change (see catalog.access)."""


class Conflict(CatalogError):
    """The write contradicts what is stored (exists already, still has images, ...)."""


class ImagePage(BaseModel):
    """One page of a product's images, newest first, and the token of the next page."""

    images: list[Image]
    next_token: str | None = None


class CatalogStore(Protocol):
    """Products, bands and images; writes of one scene are atomic."""

    search_limits: SearchLimits  # TTL and cap of registered searches (the app sets its own)

    def list_products(self) -> list[Product]:
        """Every product, by id."""

    def get_product(self, product_id: str) -> Product:
        """The product with its bands; NotFound if absent."""

    def create_product(self, product: Product) -> Product:
        """Insert a new product; Conflict if the id exists."""

    def put_product(self, product: Product, keep_times: bool = False) -> Product:
        """Create or replace a product and its bands (keep_times: keep its created/modified)."""

    def delete_product(self, product_id: str, cascade: bool = False) -> None:
        """Delete a product; Conflict if it has images and cascade is False."""

    def get_image(self, image_id: str) -> Image:
        """The image; NotFound if absent."""

    def put_images(self, images: Iterable[Image], keep_times: bool = False) -> list[Image]:
        """Create or replace images in one transaction; NotFound if a product is missing.

        Writes stamp created (first write) and modified (now); `keep_times` keeps the
        records' own, for copies between catalogs.
        """

    def delete_image(self, image_id: str) -> None:
        """Delete one image; NotFound if absent."""

    def list_images(self, product_id: str, limit: int = 100, token: str | None = None) -> ImagePage:
        """A page of the product's images, newest first."""

    def count_images(self, product_id: str) -> int:
        """How many images the product has."""

    def queryables(self, product_id: str | Sequence[str] | None = None) -> dict[str, Queryable]:
        """Properties a filter may name (of one product, of several, or of all)."""

    def search(self, query: SearchQuery, count: bool = True) -> SearchPage:
        """A page of matching images in the search's order, with the count if asked."""

    def summary(self, query: SearchQuery, interval: str | None = None) -> Summary:
        """Count, bytes, products and extent; with `interval`, per acquisition interval."""

    def tile_images(self, query: SearchQuery, bbox: tuple, lookup: TileLookup) -> list[Image]:
        """Matching images whose footprint meets a WGS84 box, in paint order (select_for_tile)."""

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Store a search under its stable id, or refresh its last use; no generation moves.

        Past `search_limits.max_searches`, expired searches go first, then the least
        recently used.
        """

    def get_search(self, search_id: str) -> RegisteredSearch:
        """A registered search, its last use refreshed; NotFound if absent or expired."""

    def list_searches(self) -> list[RegisteredSearch]:
        """Every registered search that has not expired, by id."""

    def put_key(self, key: ApiKey) -> ApiKey:
        """Create or replace an API key record (catalog.keys)."""

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, revoked or not; None if there is none."""

    def list_keys(self) -> list[ApiKey]:
        """Every key, by creation time."""

    def has_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count)."""

    def generations(self, product_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Each product's generation (None: all), moved by every write to its images or bands.

        Products never written are absent (generation 0); a deleted product keeps its row so
        one created again under the same id never reuses a number.
        """

    def generation(self, product_ids: Sequence[str] | None = None) -> int:
        """The sum of these products' generations (None: all): mosaic cache keys include it.

        Generations only grow, so the sum over a set moves with any write to one of them.
        """

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the named lease for `seconds` if it is free, expired or `owner`'s already;
        atomic across every process and machine sharing the catalog (one wins a race).
        Expiry is by the catalog's clock, so workers' clocks need not agree."""

    def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Extend `owner`'s lease by `seconds` from now; False when another took it over."""

    def release_lease(self, name: str, owner: str) -> None:
        """Free the lease if `owner` still holds it."""

    def lease_holder(self, name: str) -> str | None:
        """The owner of a live lease; None when it is free or expired."""

    def parcels(self) -> ParcelStore | None:
        """The parcel layers kept with this catalog; None where the backend keeps none."""

    def blobs(self) -> BlobStore:
        """The blob records kept with this catalog (catalog.blobs)."""

    def ping(self) -> None:
        """One cheap query of the catalog's tables (readiness); raises when it fails."""

    def close(self) -> None:
        """Release connections."""


def open_store(url: str, search_limits: SearchLimits | None = None) -> CatalogStore:
    """Open the store a catalog URL names."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        from tileserver.catalog.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///") or ":memory:", search_limits)
    if url.startswith(("postgresql://", "postgres://")):
        from tileserver.catalog.pgstac import PgstacStore

        return PgstacStore(url, search_limits=search_limits)
    raise ValueError(
        f"unsupported catalog URL '{url}': use sqlite:///PATH or postgresql://USER@HOST/DB"
    )
