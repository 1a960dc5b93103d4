"""What the SQLite and pgSTAC stores share: the store protocol over any SQL database.

Records are JSON documents; columns exist for what queries filter or sort on. This base
holds the logic (stamping, atomic writes, generations, paging, searches, summaries) and
the SQL both databases speak alike; each subclass gives its dialect: placeholders, table
names, how documents are stored and read, and the registry of searches.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

from tileserver.catalog.cql2sql import Dialect, FilterError, Queryable, compile_filter
from tileserver.catalog.keys import ApiKey
from tileserver.catalog.models import Image, ParsedDocs, Product, stamped, with_footprint_bbox
from tileserver.catalog.parcels import ParcelStore
from tileserver.catalog.queryables import queryable_set
from tileserver.catalog.search import (
    COUNT_LIMIT,
    SearchLimits,
    SearchPage,
    SearchQuery,
    SortBy,
    Summary,
    SummaryBucket,
    TileLookup,
    bbox_filter,
    decode_offset,
    encode_offset,
    select_for_tile,
)
from tileserver.catalog.store import Conflict, ImagePage, NotFound

Row = tuple[Any, ...]


class SQLStore:
    """The catalog store protocol over a SQL database; subclasses give the dialect."""

    # the dialect: placeholder, tables, SQL reading row `i` of the images table
    P: ClassVar[str]  # parameter placeholder
    IMAGES: ClassVar[str]  # the images table
    PROPERTIES: ClassVar[str]  # (product_id, name, type) each product's images carry
    GENERATIONS: ClassVar[str]  # (product_id, value) moved by each write
    API_KEYS: ClassVar[str]  # (id, created, doc)
    LEASES: ClassVar[str]  # (name, owner, expires): one holder per name (take_lease)
    NOW: ClassVar[str]  # the database's clock, seconds since the epoch (leases expire by it)
    DOC: ClassVar[str]  # an image's document, as JSON text
    PRODUCT: ClassVar[str]  # an image's product id, sorting byte-wise
    TRUE: ClassVar[str]  # a WHERE clause matching every row
    HIDE_INDEX: ClassVar[str] = ""  # prefix keeping the planner from walking a sort's index
    SUMMARY: ClassVar[str]  # count, bytes, min x, min y, max x, max y, first and last time
    BYTES: ClassVar[str]  # an image's file size in bytes
    BUCKETS: ClassVar[dict[str, str]]  # the start of an acquisition's interval

    search_limits: SearchLimits
    _parsed: ParsedDocs

    # connections and dialect hooks

    def _conn(self) -> AbstractContextManager[Any]:
        """A connection for reads."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        """A connection in one write transaction."""
        raise NotImplementedError

    def parcels(self) -> ParcelStore | None:
        """The parcel layers kept with this catalog; None where the backend keeps none."""
        return None

    def _bump(self, db, product_ids: Iterable[str]) -> None:
        """Move the generation of products whose images or bands this transaction changes."""
        raise NotImplementedError

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list]:
        """SQL testing that `column` is one of `values`, and its parameters."""
        raise NotImplementedError

    def _text(self, column: str) -> str:
        """SQL reading a JSON document column as text."""
        return column

    def _key_time(self, value: datetime) -> Any:
        """A time as the API key table stores it."""
        return value

    def _product_row(self, db, product_id: str) -> Row | None:
        """(document text or None for a record not tileserver's,); None if there is none."""
        raise NotImplementedError

    def _write_product(self, db, product: Product) -> None:
        """Insert or replace a product row."""
        raise NotImplementedError

    def _delete_product(self, db, product_id: str) -> None:
        """Delete a product's row and its images' rows."""
        raise NotImplementedError

    def _image_text(self, db, image_id: str) -> str | None:
        """An image's document as text; None if there is none."""
        raise NotImplementedError

    def _created(self, db, product_id: str, names: list[str]) -> dict[str, datetime]:
        """When the product's images of these names were first written, by global id."""
        raise NotImplementedError

    def _write_images(self, db, images: list[Image], products: dict[str, Product]) -> None:
        """Insert or replace image rows (`products`: theirs, by id)."""
        raise NotImplementedError

    def _record_properties(self, db, images: list[Image]) -> None:
        """Remember the products' property names and types: they become queryables."""
        raise NotImplementedError

    def _after_write(self) -> None:
        """Housekeeping after images are written (statistics)."""

    def _delete_image(self, db, image_id: str) -> str | None:
        """Delete an image row; its product id, None if there was none."""
        raise NotImplementedError

    def _image_page(self, db, product_id: str, after: tuple | None, limit: int) -> list[Row]:
        """Up to `limit` (time, key, document) of a product, newest first, after a key."""
        raise NotImplementedError

    def _token_time(self, value: str) -> Any:
        """The time of a page token as _image_page compares it."""
        return value

    def _count(self, db, product_id: str) -> int:
        """How many images the product has."""
        raise NotImplementedError

    def _queryables_sql(
        self, found: dict[str, Queryable], db
    ) -> tuple[dict[str, Queryable], Dialect]:
        """The queryables with this database's SQL, and the compiler dialect to use."""
        raise NotImplementedError

    def _nulls(self, key: SortBy) -> str:
        """Where missing values sort: PostgreSQL's way (last ascending, first descending)."""
        return " NULLS LAST" if key.direction == "asc" else " NULLS FIRST"

    def _run(self, db, sql: str, args: Sequence) -> list[Row]:
        """A search query's rows."""
        return db.execute(sql, args).fetchall()

    def _bucket_start(self, value: Any) -> Any:
        """The start of a summary interval as the database gives it, as Summary takes it."""
        return value

    # products

    def get_product(self, product_id: str) -> Product:
        """The product with its bands."""
        with self._conn() as db:
            row = self._product_row(db, product_id)
        if row is None or row[0] is None:
            raise NotFound(f"product '{product_id}' not found")
        return self._parsed.get(Product, product_id, row[0])

    def create_product(self, product: Product) -> Product:
        """Insert a new product; Conflict if the id is taken."""
        with self._transaction() as db:
            if self._product_row(db, product.id) is not None:
                raise Conflict(f"product '{product.id}' already exists")
            return self._stamp_product(db, product, created=None)

    def put_product(self, product: Product, keep_times: bool = False) -> Product:
        """Create or replace a product (bands included)."""
        with self._transaction() as db:
            row = self._product_row(db, product.id)
            created = Product.model_validate_json(row[0]).created if row and row[0] else None
            return self._stamp_product(db, product, created, keep_times)

    def _stamp_product(self, db, product: Product, created, keep_times: bool = False) -> Product:
        product = stamped(product, created, keep_times)
        self._write_product(db, product)
        self._bump(db, [product.id])
        return product

    def delete_product(self, product_id: str, cascade: bool = False) -> None:
        """Delete a product, and its images when cascade is set."""
        with self._transaction() as db:
            row = self._product_row(db, product_id)
            if row is None or row[0] is None:
                raise NotFound(f"product '{product_id}' not found")
            count = self._count(db, product_id)
            if count and not cascade:
                raise Conflict(
                    f"product '{product_id}' still has {count} images; "
                    "delete them first or pass cascade=true"
                )
            self._delete_product(db, product_id)
            self._bump(db, [product_id])

    # images

    def get_image(self, image_id: str) -> Image:
        """One image by its global id."""
        with self._conn() as db:
            doc = self._image_text(db, image_id)
        if doc is None:
            raise NotFound(f"image '{image_id}' not found")
        return self._parsed.get(Image, image_id, doc)

    def put_images(self, images: Iterable[Image], keep_times: bool = False) -> list[Image]:
        """Create or replace images atomically: all are written or none."""
        images = list(images)
        if not images:
            return []
        with self._transaction() as db:
            stamp: dict[str, list[str]] = {}  # names of the images stamped now, by product
            for image in images:
                names = stamp.setdefault(image.product_id, [])
                if not keep_times or image.modified is None:
                    names.append(image.name)
            created: dict[str, datetime] = {}
            products: dict[str, Product] = {}
            for product_id, names in stamp.items():
                row = self._product_row(db, product_id)
                if row is None or row[0] is None:
                    raise NotFound(f"product '{product_id}' not found")
                products[product_id] = self._parsed.get(Product, product_id, row[0])
                if names:
                    created.update(self._created(db, product_id, names))
            written = [
                with_footprint_bbox(stamped(i, created.get(i.id), keep_times)) for i in images
            ]
            self._write_images(db, written, products)
            self._record_properties(db, written)
            self._bump(db, stamp)
        self._after_write()
        return written

    def delete_image(self, image_id: str) -> None:
        """Delete one image."""
        with self._transaction() as db:
            product_id = self._delete_image(db, image_id)
            if product_id is None:
                raise NotFound(f"image '{image_id}' not found")
            self._bump(db, [product_id])

    def list_images(self, product_id: str, limit: int = 100, token: str | None = None) -> ImagePage:
        """A page of a product's images, newest first (keyset paging on acquired, id)."""
        self.get_product(product_id)
        after = None
        if token:
            try:
                acquired, key = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (self._token_time(acquired), str(key))
            except Exception as exc:  # any garbage is the caller's mistake
                raise ValueError(f"invalid page token '{token}'") from exc
        with self._conn() as db:
            rows = self._image_page(db, product_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        images = [Image.model_validate_json(doc) for _, _, doc in rows]
        next_token = None
        if more:
            last, key = rows[-1][0], rows[-1][1]
            last = last.isoformat() if isinstance(last, datetime) else last
            next_token = base64.urlsafe_b64encode(json.dumps([last, key]).encode()).decode()
        return ImagePage(images=images, next_token=next_token)

    def count_images(self, product_id: str) -> int:
        """How many images the product has."""
        with self._conn() as db:
            return self._count(db, product_id)

    # generations and queryables

    def generations(self, product_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Each product's generation (None: all; never written: absent, i.e. 0)."""
        sql, args = f"SELECT product_id, value FROM {self.GENERATIONS}", []
        if product_ids is not None:
            where, args = self._in("product_id", product_ids)
            sql += f" WHERE {where}"
        with self._conn() as db:
            return dict(db.execute(sql, args).fetchall())

    def generation(self, product_ids: Sequence[str] | None = None) -> int:
        """The sum of the products' generations (None: all): part of mosaic cache keys."""
        if product_ids is not None and not product_ids:
            return 0
        return sum(self.generations(product_ids).values())

    def queryables(self, product_id: str | Sequence[str] | None = None) -> dict[str, Queryable]:
        """What filters may name: the core properties and those the images carry."""
        sql, args = f"SELECT name, type FROM {self.PROPERTIES}", []
        if isinstance(product_id, str):
            self.get_product(product_id)
            sql, args = f"{sql} WHERE product_id = {self.P}", [product_id]
        elif product_id is not None:
            where, args = self._in("product_id", list(product_id))
            sql += f" WHERE {where}"
        with self._conn() as db:
            return queryable_set(db.execute(sql, args).fetchall())

    # API keys

    def put_key(self, key: ApiKey) -> ApiKey:
        """Create or replace a key record."""
        p = self.P
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO {self.API_KEYS} VALUES ({p}, {p}, {p})"
                " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (key.id, self._key_time(key.created), key.model_dump_json()),
            )
        return key

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, or None."""
        with self._conn() as db:
            row = db.execute(
                f"SELECT {self._text('doc')} FROM {self.API_KEYS} WHERE id = {self.P}", (key_id,)
            ).fetchone()
        return None if row is None else ApiKey.model_validate_json(row[0])

    def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self._conn() as db:
            rows = db.execute(
                f"SELECT {self._text('doc')} FROM {self.API_KEYS} ORDER BY created, id"
            ).fetchall()
        return [ApiKey.model_validate_json(doc) for (doc,) in rows]

    def has_keys(self) -> bool:
        """Whether any key was ever created."""
        with self._conn() as db:
            return db.execute(f"SELECT 1 FROM {self.API_KEYS} LIMIT 1").fetchone() is not None

    # leases: one holder per name among every process and machine sharing the catalog

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold `name` for `seconds` if it is free, expired or ours already: one atomic
        upsert, so of workers racing for it exactly one wins. Times are the database's."""
        p, now = self.P, self.NOW
        with self._transaction() as db:
            taken = db.execute(
                f"INSERT INTO {self.LEASES} AS l (name, owner, expires)"
                f" VALUES ({p}, {p}, {now} + {p}) ON CONFLICT (name) DO UPDATE"
                " SET owner = excluded.owner, expires = excluded.expires"
                f" WHERE l.owner = excluded.owner OR l.expires < {now}",
                (name, owner, float(seconds)),
            )
            return taken.rowcount == 1

    def renew_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Extend our lease; False when it is no longer ours (taken over after expiry)."""
        p = self.P
        with self._transaction() as db:
            renewed = db.execute(
                f"UPDATE {self.LEASES} SET expires = {self.NOW} + {p}"
                f" WHERE name = {p} AND owner = {p}",
                (float(seconds), name, owner),
            )
            return renewed.rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back (only if still ours)."""
        p = self.P
        with self._transaction() as db:
            db.execute(f"DELETE FROM {self.LEASES} WHERE name = {p} AND owner = {p}", (name, owner))

    def lease_holder(self, name: str) -> str | None:
        """Who holds `name` now (None: free or expired)."""
        with self._conn() as db:
            row = db.execute(
                f"SELECT owner FROM {self.LEASES} WHERE name = {self.P} AND expires >= {self.NOW}",
                (name,),
            ).fetchone()
        return None if row is None else row[0]

    # search

    def _compiled(
        self, db, query: SearchQuery, extra: dict | None = None
    ) -> tuple[dict[str, Queryable], str, list]:
        """The queryables, and the WHERE clause and parameters of a search (and `extra`).

        One compiler for both databases, over the same values (queryables.py): the same
        filter selects the same images. Sort keys are checked.
        """
        queryables, dialect = self._queryables_sql(self.queryables(), db)
        expr = query.cql2()
        if extra is not None:
            expr = extra if expr is None else {"op": "and", "args": [expr, extra]}
        where, args = (self.TRUE, []) if expr is None else compile_filter(expr, queryables, dialect)
        for key in query.sort_keys():
            found = queryables.get(key.field)
            if found is None or found.type == "geometry":
                sortable = sorted(n for n, q in queryables.items() if q.type != "geometry")
                raise FilterError(f"cannot sort by '{key.field}'; sortable: {', '.join(sortable)}")
        return queryables, where, args

    def _order(
        self, query: SearchQuery, queryables: dict[str, Queryable], sort_matches: bool = False
    ) -> str:
        """ORDER BY terms: the sort keys, then the product; `sort_matches` sorts the matches.

        Walking the acquired index stops early when matches are many, but reads the whole
        catalog when they are few; a known small match count sorts them instead.
        """
        prefix = self.HIDE_INDEX if sort_matches else ""
        terms = [
            f"{prefix}{queryables[key.field].sql} {key.direction.upper()}{self._nulls(key)}"
            for key in query.sort_keys()
        ]
        return ", ".join([*terms, f"{prefix}{self.PRODUCT} DESC"])

    def search(self, query: SearchQuery, count: bool = True) -> SearchPage:
        """A page of the images a STAC search matches, in its sort order (offset paging).

        `matched` is exact up to COUNT_LIMIT and None beyond it (or when `count` is off):
        counting every match of a broad filter costs a scan of the catalog.
        """
        try:
            offset = decode_offset(query.token)
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        p, table = self.P, self.IMAGES
        with self._conn() as db:
            queryables, where, args = self._compiled(db, query)
            matched = None
            if count:
                ((matched,),) = self._run(
                    db,
                    f"SELECT count(*) FROM (SELECT 1 FROM {table} i WHERE {where} LIMIT {p}) AS m",
                    [*args, COUNT_LIMIT + 1],
                )
                if matched > COUNT_LIMIT:
                    matched = None
            order = self._order(query, queryables, sort_matches=matched is not None)
            rows = self._run(
                db,
                f"SELECT {self.DOC} FROM {table} i WHERE {where}"
                f" ORDER BY {order} LIMIT {p} OFFSET {p}",
                [*args, query.limit + 1, offset],
            )
        more = len(rows) > query.limit
        return SearchPage(
            images=[Image.model_validate_json(doc) for (doc,) in rows[: query.limit]],
            matched=matched,
            next_token=encode_offset(offset + query.limit) if more else None,
            prev_token=encode_offset(max(offset - query.limit, 0)) if offset > 0 else None,
        )

    def tile_images(self, query: SearchQuery, bbox: tuple, lookup: TileLookup) -> list[Image]:
        """The search's images whose footprint meets a WGS84 box, in paint order."""
        with self._conn() as db:
            queryables, where, args = self._compiled(db, query, bbox_filter(list(bbox)))
            rows = self._run(
                db,
                f"SELECT {self.DOC} FROM {self.IMAGES} i WHERE {where}"
                f" ORDER BY {self._order(query, queryables)} LIMIT {self.P}",
                [*args, lookup.scan_limit],
            )
        return select_for_tile((Image.model_validate_json(doc) for (doc,) in rows), bbox, lookup)

    def summary(self, query: SearchQuery, interval: str | None = None) -> Summary:
        """Count, bytes, products and extent of a search; bucketed by `interval` if given."""
        table = self.IMAGES
        with self._conn() as db:
            _, where, args = self._compiled(db, query)
            ((count, size, minx, miny, maxx, maxy, start, end),) = self._run(
                db, f"SELECT {self.SUMMARY} FROM {table} i WHERE {where}", args
            )
            products = [
                p
                for (p,) in self._run(
                    db,
                    f"SELECT DISTINCT {self.PRODUCT} FROM {table} i WHERE {where} ORDER BY 1",
                    args,
                )
            ]
            buckets = None
            if interval is not None:
                buckets = [
                    SummaryBucket(interval_start=self._bucket_start(first), count=n, bytes=b)
                    for first, n, b in self._run(
                        db,
                        f"SELECT {self.BUCKETS[interval]} AS b, count(*),"
                        f" coalesce(sum({self.BYTES}), 0)"
                        f" FROM {table} i WHERE {where} GROUP BY b ORDER BY b",
                        args,
                    )
                ]
        summary = Summary(
            count=count,
            bytes=size,
            products=products,
            bbox=(minx, miny, maxx, maxy) if count else None,
            start=start,
            end=end,
        )
        if interval is not None:
            summary.interval = interval
            summary.summaries = buckets
        return summary

    def _check(self, query: SearchQuery) -> None:
        """Refuse a search naming unknown properties now, not at its first tile."""
        with self._conn() as db:
            self._compiled(db, query)
