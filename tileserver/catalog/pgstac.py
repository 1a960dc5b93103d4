"""The scaled-out catalog: PostgreSQL + PostGIS with the pgSTAC schema.

Products are pgSTAC collections and images are pgSTAC items, so any pgSTAC client
(stac-fastapi-pgstac, titiler-pgstac) reads the same catalog. Each record keeps its whole
tileserver document beside the STAC fields (`tileserver:product` in a collection,
`tileserver:image` in an item) so it reads back exactly as written.

Searches are pgSTAC's: a SearchQuery becomes one CQL2-JSON filter and a sortby, and
pgSTAC's `search`, `stac_search_to_where` and `geometrysearch` run them. Registered
searches live in pgSTAC's search registry. Only what pgSTAC has no notion of lives in the
`tileserver` schema: the properties each product's images carry (its queryables) and each
product's write generation, which mosaic cache keys include. A registered search's last use
is pgSTAC's own `lastused` column of its registry row.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from cachetools import LRUCache
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tileserver.catalog.cql2sql import FilterError, Queryable, compile_filter
from tileserver.catalog.keys import ApiKey
from tileserver.catalog.models import Image, ParsedDocs, Product, stamped, utcnow
from tileserver.catalog.queryables import CORE_QUERYABLES, image_properties, queryable_set
from tileserver.catalog.search import (
    COUNT_LIMIT,
    Interval,
    RegisteredSearch,
    SearchLimits,
    SearchPage,
    SearchQuery,
    Summary,
    SummaryBucket,
    TileLookup,
)
from tileserver.catalog.store import Conflict, ImagePage, NotFound

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS tileserver;
CREATE TABLE IF NOT EXISTS tileserver.properties (
    product_id text NOT NULL,
    name text NOT NULL,
    type text NOT NULL,
    PRIMARY KEY (product_id, name)
);
CREATE TABLE IF NOT EXISTS tileserver.meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tileserver.generations (
    product_id text PRIMARY KEY,
    value bigint NOT NULL
);
DELETE FROM tileserver.meta WHERE key = 'generation';
CREATE TABLE IF NOT EXISTS tileserver.api_keys (
    id text PRIMARY KEY,
    created timestamptz NOT NULL,
    doc jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS searches_tileserver_id ON pgstac.searches
    ((metadata->>'tileserver:id'));
CREATE INDEX IF NOT EXISTS searches_tileserver_lastused ON pgstac.searches (lastused)
    WHERE metadata ? 'tileserver:id';
"""
# once per catalog: searches registered before last use counted are used as of the upgrade
# (pgSTAC's lastused held their registration time), so none expires at the upgrade
LAST_USED_SINCE = """
WITH first AS (
    INSERT INTO tileserver.meta VALUES ('searches_last_used', 1) ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE pgstac.searches SET lastused = now()
WHERE metadata ? 'tileserver:id' AND EXISTS (SELECT 1 FROM first)
"""

# pgSTAC wraps a property in a cast chosen by its queryable; unregistered ones compare as
# text, so numbers, times and arrays must be registered to filter and sort as such.
WRAPPERS = {
    "number": "to_float",
    "integer": "to_int",
    "datetime": "to_tstz",
    "array": "to_text_array",
    "string": "to_text",
    "boolean": "to_text",
}
# what pgSTAC raises for a search it cannot run (its own RAISE, or SQL it built that fails)
PGSTAC_REFUSALS = (psycopg.errors.RaiseException, psycopg.ProgrammingError, psycopg.DataError)
NATIVE = {"id", "collection", "datetime", "geometry"}  # item columns, not properties
OURS = "metadata ? 'tileserver:id'"  # tileserver's rows of pgSTAC's search registry
STAC_VERSION = "1.1.0"
MIGRATION_LOCK = 7_274_113  # pg_advisory_lock key held while migrating
SEARCHES_LOCK = 7_274_114  # pg_advisory_xact_lock key held while a search is added
SEARCH_PATH = "-c search_path=pgstac,public"  # pgSTAC's functions call each other unqualified


def migrate(dsn: str) -> str:
    """Install or upgrade pgSTAC with pypgstac, then tileserver's own tables; the version."""
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    with psycopg.connect(dsn, autocommit=True, options=SEARCH_PATH) as conn:
        # workers starting together on a new database: one migrates, the others wait
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            with PgstacDB(dsn=dsn) as db:
                version = Migrate(db).run_migration()
            conn.execute(SCHEMA)
            conn.execute(LAST_USED_SINCE)
            for name, queryable in CORE_QUERYABLES.items():
                if name not in NATIVE:
                    _register_queryable(conn, name, queryable.type, queryable.description)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return version


def _register_queryable(conn, name: str, kind: str, description: str = "") -> None:
    """Add a property to pgSTAC's queryables (all collections) unless it is there."""
    wrapper = WRAPPERS.get(kind)
    if wrapper is None:
        return
    row = conn.execute(
        "SELECT property_wrapper FROM pgstac.queryables WHERE name = %s", (name,)
    ).fetchone()
    if row is None:
        definition = {"title": name, "description": description} if description else {}
        conn.execute(
            "INSERT INTO pgstac.queryables (name, definition, property_wrapper)"
            " VALUES (%s, %s, %s)",
            (name, Jsonb(definition), wrapper),
        )
    elif row[0] != wrapper and wrapper == "to_text":
        # the same name with another type elsewhere: compare as text, as queryable_set says
        conn.execute(
            "UPDATE pgstac.queryables SET property_wrapper = 'to_text' WHERE name = %s", (name,)
        )


NEVER = {"op": "isNull", "args": [{"property": "id"}]}  # an item always has an id
FOLDS = ("casei", "accenti")
COMPARISONS = {"=", "<>", "<", ">", "<=", ">=", "like", "in", "between"}


def pgstac_filter(expr):
    """A CQL2-JSON expression as pgSTAC runs it with cql2's meaning.

    pgSTAC reads bbox literals only as polygons, has no a_containedby, compares arrays in
    a_equals by order, applies casei/accenti to one side only, and cannot take a boolean
    literal as a predicate; each is rewritten here into what it does support.
    """
    if isinstance(expr, list):
        return [pgstac_filter(value) for value in expr]
    if not isinstance(expr, dict):
        return expr
    if set(expr) == {"bbox"} and isinstance(expr["bbox"], list):
        box = expr["bbox"]
        west, south, east, north = box if len(box) == 4 else [box[i] for i in (0, 1, 3, 4)]
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        return {"type": "Polygon", "coordinates": [ring]}
    op = expr.get("op")
    op = op.lower() if isinstance(op, str) else op
    if op is None:
        return {key: pgstac_filter(value) for key, value in expr.items()}
    args = [pgstac_filter(arg) for arg in expr.get("args", [])]
    if op in ("and", "or"):
        unit = op == "and"  # true is and's identity, false is or's
        args = [a for a in args if a is not unit]
        if any(a is (not unit) for a in args):
            return not unit
        return unit if not args else args[0] if len(args) == 1 else {"op": op, "args": args}
    if op == "not" and isinstance(args[0], bool):
        return not args[0]
    if op == "a_containedby":
        return {"op": "a_contains", "args": args[::-1]}
    if op == "a_equals":
        return {"op": "and", "args": [{"op": "a_contains", "args": a} for a in (args, args[::-1])]}
    if op in COMPARISONS:
        for fold in FOLDS:
            if any(isinstance(a, dict) and a.get("op") == fold for a in args):
                args = [_folded(a, fold) for a in args]
    return {**expr, "args": args}


def _folded(arg, fold: str):
    """A string literal (or a list of them) under casei/accenti, as the other side is."""
    if isinstance(arg, str):
        return {"op": fold, "args": [arg]}
    if isinstance(arg, list):
        return [_folded(a, fold) for a in arg]
    return arg


def predicate(expr):
    """A translated filter as something pgSTAC takes (None: no filter at all)."""
    if expr is True:
        return None
    if expr is False:
        return NEVER
    return expr


def pgstac_search(query: SearchQuery, extra: dict | None = None) -> dict:
    """The pgSTAC search body of a query: one filter and a total order."""
    expr = query.cql2()
    if extra is not None:
        expr = extra if expr is None else {"op": "and", "args": [expr, extra]}
    body: dict = {
        "sortby": [k.model_dump() for k in query.sort_keys()]
        + [{"field": "collection", "direction": "desc"}],
    }
    expr = None if expr is None else predicate(pgstac_filter(expr))
    if expr is not None:
        body["filter"] = expr
        body["filter-lang"] = "cql2-json"
    return body


def item(image: Image) -> dict:
    """The pgSTAC item of an image (the whole image document rides along)."""
    properties = {
        **image.properties,
        "datetime": image.acquired.isoformat().replace("+00:00", "Z"),
        "created": _time(image.created),
        "updated": _time(image.modified),
    }
    properties.pop("eo:cloud_cover", None)
    if image.cloud_cover is not None:
        properties["eo:cloud_cover"] = image.cloud_cover
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "id": image.name,
        "collection": image.product_id,
        "geometry": image.geometry,
        "bbox": list(image.bbox),
        "properties": properties,
        "links": [],
        "assets": {},
        "tileserver:bytes": sum(f.size or 0 for f in image.files),
        "tileserver:image": image.model_dump(mode="json"),
    }


def collection(product: Product) -> dict:
    """The pgSTAC collection of a product."""
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": product.id,
        "title": product.name or product.id,
        "description": product.description or product.name or product.id,
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {
                "interval": [[_time(product.start_datetime), _time(product.end_datetime)]]
            },
        },
        "links": [],
        "tileserver:product": product.model_dump(mode="json"),
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _image(item_json: dict) -> Image:
    return Image.model_validate(item_json["tileserver:image"])


def _encode_token(acquired: datetime, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([acquired.isoformat(), name]).encode()).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        acquired, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(acquired), str(name)
    except Exception as exc:  # any garbage is the caller's mistake
        raise ValueError(f"invalid page token '{token}'") from exc


# SQL giving the start of an acquisition's interval
BUCKETS: dict[str, str] = {
    "year": "date_trunc('year', datetime AT TIME ZONE 'UTC')",
    "quarter": "date_trunc('quarter', datetime AT TIME ZONE 'UTC')",
    "month": "date_trunc('month', datetime AT TIME ZONE 'UTC')",
    "week": "date_trunc('week', datetime AT TIME ZONE 'UTC')",
    "day": "date_trunc('day', datetime AT TIME ZONE 'UTC')",
    "hour": "date_trunc('hour', datetime AT TIME ZONE 'UTC')",
}


class PgstacStore:
    """Catalog store on PostgreSQL with pgSTAC; a pool of connections shared by threads."""

    def __init__(
        self,
        dsn: str,
        pool_size: int = 8,
        migrate_schema: bool = True,
        search_limits: SearchLimits | None = None,
    ):
        self.dsn = dsn
        self.search_limits = search_limits or SearchLimits()
        if migrate_schema:
            migrate(dsn)
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "options": SEARCH_PATH},
            open=True,
        )
        self._hashes: LRUCache = LRUCache(maxsize=1024)  # pgSTAC's hash per query
        self._parsed = ParsedDocs()  # as text (jsonb prints one way), parsed once
        self._lock = threading.Lock()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """One write transaction."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    def _bump(conn, product_ids: Iterable[str]) -> None:
        """Move the generation of products whose images or bands this transaction changes.

        In id order, so two transactions bumping the same products cannot deadlock.
        """
        conn.execute(
            "INSERT INTO tileserver.generations AS g SELECT p, 1 FROM unnest(%s::text[]) AS p"
            " ORDER BY p ON CONFLICT (product_id) DO UPDATE SET value = g.value + 1",
            (sorted(set(product_ids)),),
        )

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()

    # products

    def list_products(self) -> list[Product]:
        """Every product, by id."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT content->'tileserver:product' FROM collections"
                " WHERE content ? 'tileserver:product' ORDER BY id COLLATE \"C\""
            ).fetchall()
        return [Product.model_validate(doc) for (doc,) in rows]

    def get_product(self, product_id: str) -> Product:
        """The product with its bands."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT (content->'tileserver:product')::text FROM collections WHERE id = %s",
                (product_id,),
            ).fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"product '{product_id}' not found")
        return self._parsed.get(Product, product_id, row[0])

    @staticmethod
    def _product_doc(conn, product_id: str) -> dict | None:
        row = conn.execute(
            "SELECT content->'tileserver:product' FROM collections WHERE id = %s", (product_id,)
        ).fetchone()
        return None if row is None else row[0]

    def create_product(self, product: Product) -> Product:
        """Insert a new product; Conflict if the id is taken."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM collections WHERE id = %s", (product.id,)).fetchone():
                raise Conflict(f"product '{product.id}' already exists")
            return self._write_product(conn, product, created=None)

    def put_product(self, product: Product, keep_times: bool = False) -> Product:
        """Create or replace a product (bands included)."""
        with self._transaction() as conn:
            doc = self._product_doc(conn, product.id)
            created = Product.model_validate(doc).created if doc else None
            return self._write_product(conn, product, created, keep_times)

    def _write_product(self, conn, product: Product, created, keep_times: bool = False) -> Product:
        product = stamped(product, created, keep_times)
        conn.execute("SELECT upsert_collection(%s)", (Jsonb(collection(product)),))
        self._bump(conn, [product.id])
        return product

    def delete_product(self, product_id: str, cascade: bool = False) -> None:
        """Delete a product, and its images when cascade is set."""
        with self._transaction() as conn:
            if self._product_doc(conn, product_id) is None:
                raise NotFound(f"product '{product_id}' not found")
            count = self._count(conn, product_id)
            if count and not cascade:
                raise Conflict(
                    f"product '{product_id}' still has {count} images; "
                    "delete them first or pass cascade=true"
                )
            conn.execute("DELETE FROM items WHERE collection = %s", (product_id,))
            conn.execute("SELECT delete_collection(%s)", (product_id,))
            conn.execute("DELETE FROM tileserver.properties WHERE product_id = %s", (product_id,))
            self._bump(conn, [product_id])

    # images

    def get_image(self, image_id: str) -> Image:
        """One image by its global id."""
        product_id, _, name = image_id.partition(":")
        with self._conn() as conn:
            row = conn.execute(
                "SELECT (content->'tileserver:image')::text FROM items"
                " WHERE collection = %s AND id = %s",
                (product_id, name),
            ).fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"image '{image_id}' not found")
        return self._parsed.get(Image, image_id, row[0])

    def put_images(self, images: Iterable[Image], keep_times: bool = False) -> list[Image]:
        """Create or replace images atomically: all are written or none."""
        images = list(images)
        if not images:
            return []
        with self._transaction() as conn:
            created: dict[str, datetime] = {}
            by_product: dict[str, list[str]] = {}
            for image in images:
                by_product.setdefault(image.product_id, []).append(image.name)
            for product_id, names in by_product.items():
                if self._product_doc(conn, product_id) is None:
                    raise NotFound(f"product '{product_id}' not found")
                for name, first in conn.execute(
                    "SELECT id, content->'tileserver:image'->>'created' FROM items"
                    " WHERE collection = %s AND id = ANY(%s)",
                    (product_id, names),
                ):
                    if first:
                        created[f"{product_id}:{name}"] = datetime.fromisoformat(first)
            written = [stamped(i, created.get(i.id), keep_times) for i in images]
            conn.execute("SELECT upsert_items(%s)", (Jsonb([item(i) for i in written]),))
            self._record_properties(conn, written)
            self._bump(conn, by_product)
        return written

    @staticmethod
    def _record_properties(conn, images: list[Image]) -> None:
        """Remember the product's property names and types: they become queryables."""
        seen = {(i.product_id, name, kind) for i in images for name, kind in image_properties(i)}
        if not seen:
            return
        with conn.cursor() as cur:
            new = cur.execute(
                "SELECT p, n, t FROM unnest(%s::text[], %s::text[], %s::text[]) AS s(p, n, t)"
                " WHERE NOT EXISTS (SELECT 1 FROM tileserver.properties"
                " WHERE product_id = p AND name = n)",
                [list(col) for col in zip(*sorted(seen), strict=True)],
            ).fetchall()
            for product_id, name, kind in new:
                cur.execute(
                    "INSERT INTO tileserver.properties VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (product_id, name, kind),
                )
        for _, name, kind in new:
            _register_queryable(conn, name, kind)

    def delete_image(self, image_id: str) -> None:
        """Delete one image."""
        product_id, _, name = image_id.partition(":")
        with self._transaction() as conn:
            deleted = conn.execute(
                "DELETE FROM items WHERE collection = %s AND id = %s", (product_id, name)
            ).rowcount
            if not deleted:
                raise NotFound(f"image '{image_id}' not found")
            self._bump(conn, [product_id])

    def list_images(self, product_id: str, limit: int = 100, token: str | None = None) -> ImagePage:
        """A page of a product's images, newest first (keyset paging on datetime, id)."""
        self.get_product(product_id)
        sql = "SELECT datetime, id, content->'tileserver:image' FROM items WHERE collection = %s"
        args: list = [product_id]
        if token:
            acquired, name = _decode_token(token)
            sql += ' AND (datetime, id COLLATE "C") < (%s, %s)'
            args += [acquired, name]
        sql += ' ORDER BY datetime DESC, id COLLATE "C" DESC LIMIT %s'
        args.append(limit + 1)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        images = [Image.model_validate(doc) for _, _, doc in rows]
        next_token = _encode_token(rows[-1][0], rows[-1][1]) if more else None
        return ImagePage(images=images, next_token=next_token)

    def count_images(self, product_id: str) -> int:
        """How many images the product has."""
        with self._conn() as conn:
            return self._count(conn, product_id)

    @staticmethod
    def _count(conn, product_id: str) -> int:
        return conn.execute(
            "SELECT count(*) FROM items WHERE collection = %s", (product_id,)
        ).fetchone()[0]

    # search

    def generations(self, product_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Each product's generation (None: all; never written: absent, i.e. 0)."""
        sql, args = "SELECT product_id, value FROM tileserver.generations", []
        if product_ids is not None:
            sql, args = sql + " WHERE product_id = ANY(%s)", [list(product_ids)]
        with self._conn() as conn:
            return dict(conn.execute(sql, args).fetchall())

    def generation(self, product_ids: Sequence[str] | None = None) -> int:
        """The sum of the products' generations (None: all): part of mosaic cache keys."""
        if product_ids is not None and not product_ids:
            return 0
        sql, args = "SELECT coalesce(sum(value), 0)::bigint FROM tileserver.generations", []
        if product_ids is not None:
            sql, args = sql + " WHERE product_id = ANY(%s)", [list(product_ids)]
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()[0]

    def queryables(self, product_id: str | Sequence[str] | None = None) -> dict[str, Queryable]:
        """What filters may name: the core properties and those the images carry."""
        sql, args = "SELECT name, type FROM tileserver.properties", []
        if isinstance(product_id, str):
            self.get_product(product_id)
            sql, args = sql + " WHERE product_id = %s", [product_id]
        elif product_id is not None:
            sql, args = sql + " WHERE product_id = ANY(%s)", [list(product_id)]
        with self._conn() as conn:
            return queryable_set(conn.execute(sql, args).fetchall())

    # API keys

    def put_key(self, key: ApiKey) -> ApiKey:
        """Create or replace a key record."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO tileserver.api_keys VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (key.id, key.created, key.model_dump_json()),
            )
        return key

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, or None."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT doc::text FROM tileserver.api_keys WHERE id = %s", (key_id,)
            ).fetchone()
        return None if row is None else ApiKey.model_validate_json(row[0])

    def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT doc::text FROM tileserver.api_keys ORDER BY created, id"
            ).fetchall()
        return [ApiKey.model_validate_json(doc) for (doc,) in rows]

    def has_keys(self) -> bool:
        """Whether any key was ever created."""
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM tileserver.api_keys LIMIT 1").fetchone() is not None

    def _checked(self, query: SearchQuery, extra: dict | None = None) -> dict:
        """The pgSTAC body of a query, after the checks the SQLite store makes.

        The filter is compiled (and thrown away) against the same queryables so unknown
        properties, wrong operand kinds and bad sort keys get the same 400 either way.
        """
        queryables = self.queryables()
        expr = query.cql2()
        if expr is not None:
            compile_filter(expr, queryables)
        for key in query.sort_keys():
            found = queryables.get(key.field)
            if found is None or found.type == "geometry":
                sortable = sorted(n for n, q in queryables.items() if q.type != "geometry")
                raise FilterError(f"cannot sort by '{key.field}'; sortable: {', '.join(sortable)}")
        return pgstac_search(query, extra)

    def _where(self, conn, body: dict) -> str:
        """pgSTAC's own SQL for a search body."""
        try:
            return conn.execute("SELECT stac_search_to_where(%s)", (Jsonb(body),)).fetchone()[0]
        except PGSTAC_REFUSALS as exc:
            raise _refused(exc) from None

    def search(self, query: SearchQuery, count: bool = True) -> SearchPage:
        """A page of the images a STAC search matches, by pgSTAC's search function.

        `matched` is exact up to COUNT_LIMIT and None beyond it (or when `count` is off).
        """
        body = self._checked(query)
        matched = None
        with self._conn() as conn:
            if count:
                where = self._where(conn, body)
                (matched,) = conn.execute(  # no parameters: pgSTAC's SQL holds its own '%'
                    f"SELECT count(*) FROM (SELECT 1 FROM items WHERE {where}"
                    f" LIMIT {int(COUNT_LIMIT) + 1}) AS m"
                ).fetchone()
                if matched > COUNT_LIMIT:
                    matched = None
            request = {
                **body,
                "limit": query.limit,
                "conf": {"context": "off"},
                "fields": {"include": ["tileserver:image"]},
            }
            if query.token:
                request["token"] = _pgstac_token(query.token)
            try:
                result = conn.execute("SELECT search(%s)", (Jsonb(request),)).fetchone()[0]
            except PGSTAC_REFUSALS as exc:
                raise _refused(exc) from None
        links = {link["rel"]: link["href"] for link in result.get("links", [])}
        return SearchPage(
            images=[_image(f) for f in result.get("features") or []],
            matched=matched,
            next_token=_our_token(links.get("next")),
            prev_token=_our_token(links.get("prev")),
        )

    def tile_images(self, query: SearchQuery, bbox: tuple, lookup: TileLookup) -> list[Image]:
        """The search's images meeting a WGS84 box in paint order: pgSTAC's geometrysearch."""
        west, south, east, north = bbox
        with self._conn() as conn:
            queryhash = self._hash(conn, query)
            result = conn.execute(
                "SELECT geometrysearch(ST_MakeEnvelope(%s, %s, %s, %s, 4326), %s, %s,"
                " %s, %s, make_interval(secs => %s), %s, %s)",
                (
                    west,
                    south,
                    east,
                    north,
                    queryhash,
                    Jsonb({"include": ["tileserver:image"]}),
                    lookup.scan_limit,
                    lookup.limit,
                    lookup.time_limit,
                    lookup.exit_when_full,
                    lookup.skip_covered,
                ),
            ).fetchone()[0]
        return [_image(f) for f in result.get("features") or []]

    def _hash(self, conn, query: SearchQuery) -> str:
        """pgSTAC's registry hash of a query (registered on first use, then remembered)."""
        key = json.dumps(query.identity(), sort_keys=True)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            body = self._checked(query)
            known = conn.execute("SELECT hash FROM search_query(%s)", (Jsonb(body),)).fetchone()[0]
            with self._lock:
                self._hashes[key] = known
        return known

    def summary(self, query: SearchQuery, interval: Interval | None = None) -> Summary:
        """Count, bytes, products and extent of a search; bucketed by `interval` if given."""
        body = self._checked(query)
        with self._conn() as conn:
            where = self._where(conn, body)
            doc = "content->'tileserver:image'->'bbox'"
            count, size, minx, miny, maxx, maxy, start, end = conn.execute(
                "SELECT count(*), coalesce(sum((content->>'tileserver:bytes')::bigint), 0),"
                f" min(({doc}->>0)::float8), min(({doc}->>1)::float8),"
                f" max(({doc}->>2)::float8), max(({doc}->>3)::float8),"
                f" min(datetime), max(datetime) FROM items WHERE {where}"
            ).fetchone()
            products = [
                p
                for (p,) in conn.execute(
                    f'SELECT DISTINCT collection COLLATE "C" FROM items WHERE {where} ORDER BY 1'
                )
            ]
            buckets = None
            if interval is not None:
                buckets = [
                    SummaryBucket(interval_start=first.replace(tzinfo=UTC), count=n, bytes=b)
                    for first, n, b in conn.execute(
                        f"SELECT {BUCKETS[interval]} AS b, count(*),"
                        " coalesce(sum((content->>'tileserver:bytes')::bigint), 0)"
                        f" FROM items WHERE {where} GROUP BY b ORDER BY b"
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

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Put a search in pgSTAC's registry under its stable id; again: refresh its last use.

        No generation moves. Past the cap, expired searches are deleted first, then the
        least recently used; one worker at a time adds, so workers together keep the cap.
        """
        body = self._checked(query)
        search_id = query.search_id()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCHES_LOCK,))
            refreshed = conn.execute(
                "UPDATE searches SET lastused = now() WHERE metadata->>'tileserver:id' = %s",
                (search_id,),
            ).rowcount
            if not refreshed:
                self._make_room(conn)
                metadata = {
                    "tileserver:id": search_id,
                    "tileserver:search": query.identity(),
                    "tileserver:created": _time(utcnow()),
                }
                conn.execute("SELECT search_query(%s, false, %s)", (Jsonb(body), Jsonb(metadata)))
        return self.get_search(search_id)

    def _make_room(self, conn) -> None:
        """Below the cap for one more search: expired ones go, then the least recently used.

        Only tileserver's rows: other pgSTAC clients' searches are theirs to keep.
        """
        limits = self.search_limits
        (count,) = conn.execute(f"SELECT count(*) FROM searches WHERE {OURS}").fetchone()
        if count < limits.max_searches:
            return
        count -= conn.execute(
            f"DELETE FROM searches WHERE {OURS} AND lastused < now() - make_interval(secs => %s)",
            (limits.ttl,),
        ).rowcount
        if count >= limits.max_searches:
            conn.execute(
                "DELETE FROM searches WHERE hash IN (SELECT hash FROM searches"
                f" WHERE {OURS} ORDER BY lastused, metadata->>'tileserver:id' LIMIT %s)",
                (count - limits.max_searches + 1,),
            )

    def get_search(self, search_id: str) -> RegisteredSearch:
        """A registered search, its last use refreshed (at most every touch_every seconds).

        NotFound if absent or unused for longer than the TTL: the client registers it again.
        """
        limits = self.search_limits
        with self._conn() as conn:
            row = conn.execute(
                "SELECT metadata, lastused,"
                " coalesce(extract(epoch FROM now() - lastused)::float8, 'infinity')"
                " FROM searches WHERE metadata->>'tileserver:id' = %s LIMIT 1",
                (search_id,),
            ).fetchone()
            if row is None or row[2] > limits.ttl:
                raise NotFound(f"search '{search_id}' not found; register it with POST /searches")
            if row[2] >= limits.touch_every:
                conn.execute(
                    "UPDATE searches SET lastused = now() WHERE metadata->>'tileserver:id' = %s"
                    " AND lastused < now() - make_interval(secs => %s)",
                    (search_id, limits.touch_every),
                )
        return _registered(row[0], row[1])

    def list_searches(self) -> list[RegisteredSearch]:
        """Every registered search (of tileserver's) that has not expired, by id."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT metadata, lastused FROM searches WHERE {OURS}"
                " AND lastused >= now() - make_interval(secs => %s)"
                " ORDER BY metadata->>'tileserver:id'",
                (self.search_limits.ttl,),
            ).fetchall()
        return [_registered(metadata, last_used) for metadata, last_used in rows]


def _registered(metadata: dict, last_used: datetime | None) -> RegisteredSearch:
    """A row of pgSTAC's registry as a RegisteredSearch."""
    return RegisteredSearch(
        id=metadata["tileserver:id"],
        search=SearchQuery.model_validate(metadata["tileserver:search"]),
        created=metadata.get("tileserver:created"),
        last_used=last_used,
    )


def _refused(exc: psycopg.Error) -> FilterError:
    """A search pgSTAC could not run, as the 400 the caller gets."""
    return FilterError(f"pgSTAC cannot run this search: {exc.diag.message_primary}")


def _our_token(href: str | None) -> str | None:
    """The paging token of one of pgSTAC's links (pgSTAC's own token, made URL-safe)."""
    if not href or "token=" not in href:
        return None
    token = href.split("token=", 1)[1].split("&", 1)[0]
    return base64.urlsafe_b64encode(token.encode()).decode()


def _pgstac_token(token: str) -> str:
    try:
        value = base64.urlsafe_b64decode(token.encode()).decode()
    except Exception:
        raise FilterError(f"invalid page token '{token}'") from None
    if not value.startswith(("next:", "prev:")):
        raise FilterError(f"invalid page token '{token}'")
    return value
