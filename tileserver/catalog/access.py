"""Who may see and change which product, as the Descartes Labs Catalog defines it.

A product lists its `owners`, `writers` and `readers`: users (`user:NAME`), organisations
(`org:NAME`) and, among readers, `public` (anyone, with a key or without one when
anonymous reading is allowed). Owners read, write and change the lists; writers read and
write images; readers read. Images and searches inherit from their products.

`ScopedStore` wraps a catalog store for one caller: what they may not read does not exist
for them (NotFound, the same message as for a missing record, so existence does not leak),
and a write they may not make is Forbidden.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import (
    RegisteredSearch,
    SearchLimits,
    SearchPage,
    SearchQuery,
    Summary,
)
from tileserver.catalog.store import CatalogStore, Conflict, Forbidden, ImagePage, NotFound
from tileserver.opener import REFUSED, Allowed, Confinement, Refused, Within

PUBLIC = "public"
NO_PRODUCT = ""  # a collection id no product can have: a search of it matches nothing


@dataclass(frozen=True)
class Principal:
    """The caller: a user of an organisation, an admin, or anonymous (no user)."""

    user: str | None = None
    org: str | None = None
    admin: bool = False

    @property
    def names(self) -> frozenset[str]:
        """The list entries that stand for this caller."""
        names = {PUBLIC}
        if self.user:
            names.add(f"user:{self.user}")
        if self.org:
            names.add(f"org:{self.org}")
        return frozenset(names)

    def _listed(self, *lists: Iterable[str]) -> bool:
        return self.admin or any(entry in self.names for entries in lists for entry in entries)

    def can_read(self, product: Product) -> bool:
        """Owners, writers and readers read."""
        return self._listed(product.owners, product.writers, product.readers)

    def can_write(self, product: Product) -> bool:
        """Owners and writers add, change and delete images."""
        return self._listed(product.owners, product.writers)

    def owns(self, product: Product) -> bool:
        """Owners change the lists and delete the product."""
        return self._listed(product.owners)


ANONYMOUS = Principal()
OPEN = Principal(admin=True)  # no keys configured: everyone may do everything


def same_lists(a: Product, b: Product) -> bool:
    """The two products grant the same access (the model keeps each list sorted, unique)."""
    return (a.owners, a.writers, a.readers) == (b.owners, b.writers, b.readers)


def scope_of(store: CatalogStore | ScopedStore) -> str:
    """What a store shows, for cache keys of answers that depend on it ('' for all)."""
    return store.scope if isinstance(store, ScopedStore) else ""


def check_files(image: Image, reach: Allowed | Within) -> None:
    """Forbidden unless every file of the image lies within `reach`: one text whether the
    file exists or not, before anything is stored or opened."""
    for index, file in enumerate(image.files):
        try:
            reach.check(file.href)
        except Refused:
            raise Forbidden(f"files[{index}]: {REFUSED}") from None


def sees_files(store: CatalogStore | ScopedStore, product_id: str) -> bool:
    """Whether the caller may see where a product's image files are: admins and the
    product's writers (who name them); readers get the server's own links instead."""
    if not isinstance(store, ScopedStore):
        return True
    return store.principal.can_write(store.get_product(product_id))


class ScopedStore:
    """A catalog store as one (non-admin) caller sees it.

    Image files a caller writes must lie where both the caller and the product's owners
    may read (opener.Confinement); without a confinement, images with files are refused.
    """

    def __init__(
        self, store: CatalogStore, principal: Principal, confinement: Confinement | None = None
    ):
        self.store, self.principal, self.confinement = store, principal, confinement
        self._readable: dict[str, Product] | None = None
        self._products: dict[str, Product] = {}  # read ones, so a tile looks its product up once

    # what the caller sees

    def readable(self) -> dict[str, Product]:
        """The products the caller may read, by id (looked up once per request)."""
        if self._readable is None:
            self._readable = {
                p.id: p for p in self.store.list_products() if self.principal.can_read(p)
            }
        return self._readable

    @property
    def scope(self) -> str:
        """A short key of what the caller sees: callers who see the same share cached mosaics."""
        ids = "\n".join(sorted(self.readable()))
        return hashlib.sha256(ids.encode()).hexdigest()[:16]

    @property
    def search_limits(self) -> SearchLimits:
        """The wrapped store's: the searches table is one for all callers."""
        return self.store.search_limits

    def _readable_ids(self, product_ids: Sequence[str] | None) -> list[str]:
        """The readable ones of these products (None, or none named: every readable one)."""
        readable = self.readable()
        if product_ids:
            return [p for p in product_ids if p in readable]
        return sorted(readable)

    def restrict(self, query: SearchQuery) -> SearchQuery:
        """The query limited to readable products (of those it names, if it names some)."""
        keep = self._readable_ids(query.collections)
        return query.model_copy(update={"collections": keep or [NO_PRODUCT]})

    def _product(self, product_id: str) -> Product:
        product = self._products.get(product_id)
        if product is None:
            product = self.store.get_product(product_id)
            if not self.principal.can_read(product):
                raise NotFound(f"product '{product_id}' not found")
            self._products[product_id] = product
        return product

    def _writable(self, product_id: str) -> Product:
        product = self._product(product_id)
        if not self.principal.can_write(product):
            raise Forbidden(
                f"you may read product '{product_id}' but not change its images: "
                "ask an owner to add you to its writers"
            )
        return product

    def _visible_search(self, registered: RegisteredSearch) -> bool:
        readable = self.readable()
        return all(c in readable for c in registered.search.collections or [])

    # products

    def list_products(self) -> list[Product]:
        """Readable products, by id."""
        return [self.readable()[i] for i in sorted(self.readable())]

    def get_product(self, product_id: str) -> Product:
        """A readable product; NotFound for the others."""
        return self._product(product_id)

    def _forget(self, product_id: str) -> None:
        """A product changed in this request: read it afresh."""
        self._products.pop(product_id, None)
        self._readable = None

    def _owned(self, product: Product) -> Product:
        """The product with the caller as owner when it names none."""
        self.check_create(product.id)
        if product.owners:
            return product
        return product.model_copy(update={"owners": [f"user:{self.principal.user}"]})

    def check_create(self, product_id: str) -> None:
        """Forbidden unless the caller may create a product (anonymous callers may not);
        Conflict when the id is taken, as create_product would say, before any work."""
        if not self.principal.user:
            raise Forbidden("anonymous callers cannot create products: send an API key")
        try:
            self.store.get_product(product_id)
        except NotFound:
            return
        raise Conflict(f"product '{product_id}' already exists")

    def check_write(self, product_id: str) -> Product:
        """The product, when the caller may add images to it; NotFound or Forbidden."""
        return self._writable(product_id)

    def _check_files(self, image: Image, product: Product) -> None:
        """Forbidden unless every file lies where the caller and the product's owners may
        read; checked before anything is stored or opened, one text for every refusal."""
        if not image.files:
            return
        reach = self.file_reach(product)
        if reach is None:
            raise Forbidden(f"files[0]: {REFUSED}")
        check_files(image, reach)

    def file_reach(self, product: Product) -> Within | None:
        """Where the caller may name files of the product's images: what both they and the
        product's owners may read (None without a confinement: nowhere)."""
        if self.confinement is None:
            return None
        caller = self.confinement.for_caller(self.principal.user, self.principal.org, False)
        own = self.confinement.own_folders(product.id)
        return Within(caller.with_own(*own), self.confinement.for_product(product))

    def create_product(self, product: Product) -> Product:
        """Create a product, owned by the caller unless it names its owners."""
        self._forget(product.id)
        return self.store.create_product(self._owned(product))

    def put_product(self, product: Product, keep_times: bool = False) -> Product:
        """Replace a writable product (lists: owners only), or create a new one."""
        self._forget(product.id)
        try:
            existing = self.store.get_product(product.id)
        except NotFound:
            return self.store.put_product(self._owned(product), keep_times)
        if not self.principal.can_read(existing):
            raise Conflict(f"product '{product.id}' already exists")  # as create_product says
        if not self.principal.can_write(existing):
            raise Forbidden(f"you may read product '{product.id}' but not change it")
        if not same_lists(existing, product) and not self.principal.owns(existing):
            raise Forbidden("only an owner of the product changes its owners, writers and readers")
        if existing.owners and not product.owners:
            raise Forbidden("a product keeps at least one owner: name the new owner first")
        return self.store.put_product(product, keep_times)

    def delete_product(self, product_id: str, cascade: bool = False) -> None:
        """Owners delete."""
        if not self.principal.owns(self._product(product_id)):
            raise Forbidden(f"only an owner deletes product '{product_id}'")
        self._forget(product_id)
        self.store.delete_product(product_id, cascade)

    # images

    def get_image(self, image_id: str) -> Image:
        """An image of a readable product; NotFound for the others."""
        image = self.store.get_image(image_id)
        try:
            self._product(image.product_id)
        except NotFound:
            raise NotFound(f"image '{image_id}' not found") from None
        return image

    def put_images(self, images: Iterable[Image], keep_times: bool = False) -> list[Image]:
        """Write images into products the caller may write, their files where allowed."""
        images = list(images)
        for image in images:
            self._check_files(image, self._writable(image.product_id))
        return self.store.put_images(images, keep_times)

    def delete_image(self, image_id: str) -> None:
        """Delete an image of a writable product."""
        self._writable(self.get_image(image_id).product_id)
        self.store.delete_image(image_id)

    def list_images(self, product_id: str, limit: int = 100, token: str | None = None) -> ImagePage:
        """A page of a readable product's images."""
        self._product(product_id)
        return self.store.list_images(product_id, limit, token)

    def count_images(self, product_id: str) -> int:
        """How many images a readable product has."""
        self._product(product_id)
        return self.store.count_images(product_id)

    def queryables(self, product_id: str | None = None):
        """Properties of one readable product, or of all readable ones."""
        if product_id is not None:
            self._product(product_id)
            return self.store.queryables(product_id)
        return self.store.queryables(sorted(self.readable()) or [NO_PRODUCT])

    # searches

    def search(self, query: SearchQuery, count: bool = True) -> SearchPage:
        """Matching images of readable products."""
        return self.store.search(self.restrict(query), count)

    def summary(self, query: SearchQuery, interval: str | None = None) -> Summary:
        """The summary of matching images of readable products."""
        return self.store.summary(self.restrict(query), interval)

    def tile_images(self, query: SearchQuery, bbox: tuple, lookup) -> list[Image]:
        """A tile's images of readable products."""
        return self.store.tile_images(self.restrict(query), bbox, lookup)

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Register a search naming only readable products (the others do not exist)."""
        for collection in query.collections or []:
            self._product(collection)
        return self.store.register_search(query)

    def get_search(self, search_id: str) -> RegisteredSearch:
        """A registered search naming only readable products; NotFound for the others."""
        registered = self.store.get_search(search_id)
        if not self._visible_search(registered):
            raise NotFound(f"search '{search_id}' not found; register it with POST /searches")
        return registered

    def list_searches(self) -> list[RegisteredSearch]:
        """Registered searches naming only readable products."""
        return [s for s in self.store.list_searches() if self._visible_search(s)]

    def generations(self, product_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Generations of readable products (None: all readable), as restrict() limits searches."""
        return self.store.generations(self._readable_ids(product_ids))

    def generation(self, product_ids: Sequence[str] | None = None) -> int:
        """Generation of readable products (None: all readable): what a search of them sees.

        So a write to a product the caller cannot read leaves their mosaics' keys alone.
        """
        return self.store.generation(self._readable_ids(product_ids))

    # leases name server work (a pyramid's builder), never a caller's record: shared by all

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """The wrapped store's lease (one table for every caller)."""
        return self.store.take_lease(name, owner, seconds)

    def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """The wrapped store's."""
        return self.store.renew_lease(name, owner, seconds)

    def release_lease(self, name: str, owner: str) -> None:
        """The wrapped store's."""
        self.store.release_lease(name, owner)

    def lease_holder(self, name: str) -> str | None:
        """The wrapped store's."""
        return self.store.lease_holder(name)

    def ping(self) -> None:
        """The wrapped store's readiness check."""
        self.store.ping()

    def close(self) -> None:
        """The wrapped store outlives the request: nothing to close."""
