"""The scaled-out catalog: PostgreSQL + PostGIS with the pgSTAC schema.

Products are pgSTAC collections and images are pgSTAC items, so any pgSTAC client
(stac-fastapi-pgstac, titiler-pgstac) reads the same catalog. Each record keeps its whole
tileserver document beside the STAC fields (`tileserver:product` in a collection,
`tileserver:image` in an item) so it reads back exactly as written.

The store's logic is catalog.sqlstore's, shared with SQLite; this module holds pgSTAC's
schema, connections and SQL. Each item's files are its STAC assets, at the paths GDAL
opens, so pgSTAC tilers read the pixels.

Searches are tileserver's own SQL over pgSTAC's items table: the CQL2 compiler of the
SQLite store, in PostgreSQL's spelling (cql2sql.POSTGRES), reading the same values
(`tileserver:image` and its times normalised at write, `tileserver:times`), sorted and
paged the same way, so both stores give the same answers. pgSTAC's own compiler reads
items differently (an interval item's `datetime` is its start, integers round, casei
folds both sides...). Registered searches live in pgSTAC's search registry. Only what
pgSTAC has no notion of lives in the `tileserver` schema: the properties each product's
images carry (its queryables), each product's write generation, which mosaic cache keys
include, and leases (one builder of a search's pyramid among every machine). A
registered search's last use is pgSTAC's own `lastused` column of its registry
row.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import shapely
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tileserver.catalog import stac
from tileserver.catalog.blobs import POSTGRES_SCHEMA as BLOBS_SCHEMA
from tileserver.catalog.blobs import PostgresBlobStore
from tileserver.catalog.cql2sql import (
    POSTGRES,
    Dialect,
    FilterError,
    Queryable,
    _Sql,
    _sql_ts_norm,
)
from tileserver.catalog.models import (
    Image,
    ParsedDocs,
    Product,
    sortable_time,
    utcnow,
)
from tileserver.catalog.postgis_parcels import SCHEMA as PARCEL_SCHEMA
from tileserver.catalog.postgis_parcels import PostgisParcelStore
from tileserver.catalog.queryables import CORE_QUERYABLES, image_properties
from tileserver.catalog.search import (
    RegisteredSearch,
    SearchLimits,
    SearchQuery,
)
from tileserver.catalog.sqlstore import SQLStore
from tileserver.catalog.store import NotFound
from tileserver.opener import Refused, locate

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
CREATE TABLE IF NOT EXISTS tileserver.leases (
    name text PRIMARY KEY,
    owner text NOT NULL,
    expires float8 NOT NULL
);
CREATE INDEX IF NOT EXISTS items_tileserver_acquired ON pgstac.items
    (((content->'tileserver:times'->>'acquired')) COLLATE "C" DESC, id COLLATE "C" DESC,
     collection COLLATE "C" DESC);
CREATE INDEX IF NOT EXISTS searches_tileserver_id ON pgstac.searches
    ((metadata->>'tileserver:id'));
CREATE INDEX IF NOT EXISTS searches_tileserver_lastused ON pgstac.searches (lastused)
    WHERE metadata ? 'tileserver:id';
"""


def _combining_class() -> str:
    """A regex bracket expression of the characters Python's accenti strips (combining)."""
    ranges: list[list[int]] = []
    for code in range(0x110000):
        if unicodedata.combining(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "[" + "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges) + "]"


# The SQL functions compiled filters call: what cql2sql registers in SQLite, the same way
# (NULL where SQLite's yield NULL: a division by zero, a power without a real value).
FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION tileserver.num(j jsonb) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN jsonb_typeof(j) = 'number' THEN j::float8 END $$;
CREATE OR REPLACE FUNCTION tileserver.bool(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN jsonb_typeof(j) = 'boolean' THEN j::boolean END $$;
CREATE OR REPLACE FUNCTION tileserver.cql2_divide(a float8, b float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN b <> 0 THEN a / b END $$;
CREATE OR REPLACE FUNCTION tileserver.cql2_intdiv(a float8, b float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN b <> 0 THEN trunc(a / b) END $$;
CREATE OR REPLACE FUNCTION tileserver.cql2_pow(a float8, b float8) RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN power(a, b);
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
-- C's fmod, exactly: binary long division, each step exact (Sterbenz)
CREATE OR REPLACE FUNCTION tileserver.cql2_mod(a float8, b float8) RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    r float8 := abs(a);
    m float8 := abs(b);
    y float8;
BEGIN
    IF a IS NULL OR b IS NULL OR b = 0 OR a = 'NaN' OR b = 'NaN'
        OR r = 'Infinity' THEN
        RETURN NULL;
    END IF;
    IF m = 'Infinity' OR r < m THEN
        RETURN a;
    END IF;
    y := m;
    WHILE y < 8.98846567431158e307 AND y * 2 <= r LOOP
        y := y * 2;
    END LOOP;
    LOOP
        IF r >= y THEN
            r := r - y;
        END IF;
        EXIT WHEN y = m;
        y := y / 2;
    END LOOP;
    RETURN CASE WHEN a < 0 THEN -r ELSE r END;
END $$;
CREATE OR REPLACE FUNCTION tileserver.cql2_like(v text, p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT v COLLATE "C" LIKE CASE WHEN length(substring(p FROM '\*$')) % 2 = 1
    THEN p || '' ELSE p END
$$;
CREATE OR REPLACE FUNCTION tileserver.cql2_casei(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT lower(t COLLATE {lower}) $$;
CREATE OR REPLACE FUNCTION tileserver.cql2_accenti(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT normalize(regexp_replace(normalize(t, NFD), '{combining}', '', 'g'), NFC)
$$;
CREATE OR REPLACE FUNCTION tileserver.cql2_array(op text, a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN jsonb_typeof(a) IS DISTINCT FROM 'array' OR jsonb_typeof(b) IS DISTINCT FROM 'array'
        THEN NULL
    WHEN op = 'a_contains' THEN a @> b
    WHEN op = 'a_containedby' THEN a <@ b
    WHEN op = 'a_equals' THEN a @> b AND a <@ b
    WHEN op = 'a_overlaps' THEN
        EXISTS (SELECT 1 FROM jsonb_array_elements(b) AS e WHERE a @> jsonb_build_array(e))
END
$$;
"""


def _functions(conn) -> str:
    """FUNCTIONS for this server: casei lower-cases as Python does (ICU's full mapping)."""
    icu = conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").fetchone()
    return FUNCTIONS.replace("{lower}", '"und-x-icu"' if icu else '"default"').replace(
        "{combining}", _combining_class()
    )


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
            conn.execute(BLOBS_SCHEMA)
            conn.execute(PARCEL_SCHEMA)
            conn.execute(_functions(conn))
            conn.execute(LAST_USED_SINCE)
            _backfill(conn)
            _backfill_assets(conn)
            for name, queryable in CORE_QUERYABLES.items():
                if name not in NATIVE:
                    _register_queryable(conn, name, queryable.type, queryable.description)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return version


def _backfill(conn) -> None:
    """Items written before `tileserver:times` get it (and their exact document)."""
    while True:
        rows = conn.execute(
            "SELECT collection, id, (content->'tileserver:image')::text FROM items"
            " WHERE content ? 'tileserver:image' AND NOT content ? 'tileserver:times' LIMIT 500"
        ).fetchall()
        if not rows:
            return
        for collection_id, item_id, doc in rows:
            image = Image.model_validate_json(doc)
            conn.execute(
                "UPDATE items SET content = content || %s WHERE collection = %s AND id = %s",
                (Jsonb(_derived(image)), collection_id, item_id),
            )


def _backfill_assets(conn) -> None:
    """Items written before they had assets get them (pgSTAC tilers read the files).

    Once per catalog, in one transaction: a scan of every item is not for each start.
    """
    with conn.transaction():
        if not conn.execute(
            "INSERT INTO tileserver.meta VALUES ('item_assets', 1) ON CONFLICT DO NOTHING"
        ).rowcount:
            return
        _add_assets(conn)


def _add_assets(conn) -> None:
    products: dict[str, Product] = {}
    while True:
        rows = conn.execute(
            f"SELECT collection, id, {DOC} FROM items i WHERE content ? 'tileserver:image'"
            " AND coalesce(content->'assets', '{}'::jsonb) = '{}'::jsonb"
            " AND jsonb_array_length(content->'tileserver:image'->'files') > 0 LIMIT 500"
        ).fetchall()
        if not rows:
            return
        for collection_id, item_id, doc in rows:
            if collection_id not in products:
                (found,) = conn.execute(
                    "SELECT content->'tileserver:product' FROM collections WHERE id = %s",
                    (collection_id,),
                ).fetchone()
                products[collection_id] = Product.model_validate(found)
            image = Image.model_validate_json(doc)
            assets = item(image, products[collection_id])["assets"]
            conn.execute(
                "UPDATE items SET content = content || %s WHERE collection = %s AND id = %s",
                (Jsonb({"assets": assets}), collection_id, item_id),
            )


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


def pgstac_search(query: SearchQuery) -> dict:
    """The pgSTAC search body of a query (for other pgSTAC clients of its registry)."""
    expr = query.cql2()
    body: dict = {
        "sortby": [k.model_dump() for k in query.sort_keys()]
        + [{"field": "collection", "direction": "desc"}],
    }
    expr = None if expr is None else predicate(pgstac_filter(expr))
    if expr is not None:
        body["filter"] = expr
        body["filter-lang"] = "cql2-json"
    return body


def item(image: Image, product: Product) -> dict:
    """The pgSTAC item of an image (the whole image document rides along).

    Its assets are the API's (catalog.stac) with the files' hrefs as GDAL opens them, so
    pgSTAC tilers (titiler-pgstac) read the pixels: the database is the operator's, and
    the API, which may hide hrefs from readers, answers from the document, not from these.
    """
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
        "assets": stac.assets(image, product, [gdal_path(f.href) for f in image.files]),
        "tileserver:bytes": sum(f.size or 0 for f in image.files),
        "tileserver:image": image.model_dump(mode="json"),
        **_derived(image),
    }


def gdal_path(href: str) -> str:
    """The path GDAL opens for a file's href (s3:// as /vsis3/, file:// as a path...)."""
    try:
        return locate(href).path
    except Refused:  # stored before today's rules: as written
        return href


def _derived(image: Image) -> dict:
    """What tileserver's SQL reads beside the image document.

    `tileserver:times`: the times filters compare, as the same fixed-width UTC text the
    SQLite store compares (its `acquired` column, `ts_norm` of created/modified and of each
    time-like property). `tileserver:doc`: the document as text, because pgSTAC strips
    null values from its jsonb and an image reads back with its null properties.
    """
    doc = image.model_dump(mode="json")
    properties = {}
    for name, value in image.properties.items():
        normalised = _sql_ts_norm(value)
        if normalised is not None:
            properties[name] = normalised
    times = {
        "acquired": sortable_time(image.acquired),
        "created": _sql_ts_norm(doc["created"]),
        "modified": _sql_ts_norm(doc["modified"]),
        "properties": properties,
    }
    return {"tileserver:times": times, "tileserver:doc": image.model_dump_json()}


# the image of an items row `i`, as JSON text
DOC = "coalesce(i.content->>'tileserver:doc', (i.content->'tileserver:image')::text)"
ACQUIRED = "(i.content->'tileserver:times'->>'acquired') COLLATE \"C\""
BYTES = "i.content->>'tileserver:bytes'"
BBOX = "i.content->'tileserver:image'->'bbox'"


def _name(name: str) -> str:
    """A JSON key as SQL text holding no quote, `?` or `%` (names are the catalog's)."""
    return f"convert_from('\\x{name.encode().hex()}'::bytea, 'UTF8')"


def _property_sql(name: str, kind: str) -> str:
    """PostgreSQL SQL reading a property as queryables.property_sql does in SQLite."""
    value = f"i.content->'tileserver:image'->'properties'->{_name(name)}"
    if kind == "datetime":
        return f"(i.content->'tileserver:times'->'properties'->>{_name(name)}) COLLATE \"C\""
    if kind in ("number", "integer"):
        return f"tileserver.num({value})"
    if kind == "boolean":
        return f"tileserver.bool({value})"
    if kind == "string":
        return f"(i.content->'tileserver:image'->'properties'->>{_name(name)}) COLLATE \"C\""
    return f"nullif({value}, 'null'::jsonb)"


CORE_SQL = {
    "id": 'i.id COLLATE "C"',
    "collection": 'i.collection COLLATE "C"',
    "datetime": ACQUIRED,
    "geometry": "i.geometry",
    "eo:cloud_cover": "tileserver.num(i.content->'tileserver:image'->'cloud_cover')",
    "created": "(i.content->'tileserver:times'->>'created') COLLATE \"C\"",
    "updated": "(i.content->'tileserver:times'->>'modified') COLLATE \"C\"",
}


def postgres_queryables(found: dict[str, Queryable]) -> dict[str, Queryable]:
    """The queryables with PostgreSQL SQL reading the same values as their SQLite SQL."""

    def sql(name: str, kind: str) -> str:
        core = CORE_QUERYABLES.get(name)
        if name in CORE_SQL and core is not None and core.type == kind:
            return CORE_SQL[name]
        return _property_sql(name, kind)

    return {name: replace(q, sql=sql(name, q.type)) for name, q in found.items()}


def _spatial_sql(conn, predicate: str, queryable: Queryable, geometry) -> _Sql:
    """`predicate(footprint, literal)` decided by shapely, as SQLite's store decides it.

    PostGIS's GEOS may be older than shapely's (GeometryCollections, boundary cases): the
    index finds the footprints meeting the literal's box, shapely decides each, and the
    filter holds the keys found. s_disjoint is not s_intersects.
    """
    test = shapely.intersects if predicate == "disjoint" else getattr(shapely, predicate)
    keys: list[str] = []
    if not geometry.is_empty:
        shapely.prepare(geometry)
        minx, miny, maxx, maxy = geometry.bounds
        for key, wkb in conn.execute(
            f"SELECT i.collection || ':' || i.id, ST_AsBinary({queryable.sql}) FROM items i"
            f" WHERE {queryable.sql} && ST_MakeEnvelope(%s, %s, %s, %s, 4326)",
            (minx, miny, maxx, maxy),
        ):
            if test(shapely.from_wkb(bytes(wkb)), geometry):
                keys.append(key)
    # A contains/within/equals B with an empty side is false; disjoint: not intersecting
    found = _Sql("((i.collection || ':' || i.id) = ANY(?::text[]))", (keys,))
    return _Sql(f"(NOT {found.sql})", found.params) if predicate == "disjoint" else found


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


# SQL giving the start of an acquisition's interval (UTC; the acquired time, as SQLite's)
BUCKETS: dict[str, str] = {
    unit: f"date_trunc('{unit}', ({ACQUIRED})::timestamptz AT TIME ZONE 'UTC')"
    for unit in ("year", "quarter", "month", "week", "day", "hour")
}


class PgstacStore(SQLStore):
    """Catalog store on PostgreSQL with pgSTAC; a pool of connections shared by threads."""

    P = "%s"
    IMAGES = "items"
    PROPERTIES = "tileserver.properties"
    GENERATIONS = "tileserver.generations"
    API_KEYS = "tileserver.api_keys"
    LEASES = "tileserver.leases"
    NOW = "extract(epoch FROM clock_timestamp())::float8"  # the database's clock, one for all
    DOC = DOC
    PRODUCT = 'i.collection COLLATE "C"'
    TRUE = "true"
    SUMMARY = (
        f"count(*), coalesce(sum(({BYTES})::bigint), 0),"
        f" min(({BBOX}->>0)::float8), min(({BBOX}->>1)::float8),"
        f" max(({BBOX}->>2)::float8), max(({BBOX}->>3)::float8),"
        f" min({ACQUIRED}), max({ACQUIRED})"
    )
    BYTES = f"({BYTES})::bigint"
    BUCKETS = BUCKETS

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
        self._parsed = ParsedDocs()  # as text (jsonb prints one way), parsed once
        self._parcels = PostgisParcelStore(self._conn, self._transaction)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """One write transaction."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def parcels(self) -> PostgisParcelStore:
        """The parcel layers kept in PostGIS tables of this database (made with the store)."""
        return self._parcels

    def _bump(self, conn, product_ids: Iterable[str]) -> None:
        """In id order, so two transactions bumping the same products cannot deadlock."""
        conn.execute(
            "INSERT INTO tileserver.generations AS g SELECT p, 1 FROM unnest(%s::text[]) AS p"
            " ORDER BY p ON CONFLICT (product_id) DO UPDATE SET value = g.value + 1",
            (sorted(set(product_ids)),),
        )

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list]:
        return f"{column} = ANY(%s)", [list(values)]

    def _text(self, column: str) -> str:
        return f"{column}::text"

    def blobs(self) -> PostgresBlobStore:
        """The blob records in the `tileserver` schema (its table made by `migrate`)."""
        return PostgresBlobStore(self._conn, self._transaction)

    def ping(self) -> None:
        """One cheap query of pgSTAC's collections table, waiting at most 2 s for a
        connection (readiness)."""
        with self._pool.connection(timeout=2.0) as conn:
            conn.execute("SELECT 1 FROM collections LIMIT 1").fetchall()

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

    def _product_row(self, conn, product_id: str) -> tuple | None:
        """Collections of other pgSTAC clients have rows but no tileserver document."""
        return conn.execute(
            "SELECT (content->'tileserver:product')::text FROM collections WHERE id = %s",
            (product_id,),
        ).fetchone()

    def _write_product(self, conn, product: Product) -> None:
        conn.execute("SELECT upsert_collection(%s)", (Jsonb(collection(product)),))

    def _delete_product(self, conn, product_id: str) -> None:
        conn.execute("DELETE FROM items WHERE collection = %s", (product_id,))
        conn.execute("SELECT delete_collection(%s)", (product_id,))
        conn.execute("DELETE FROM tileserver.properties WHERE product_id = %s", (product_id,))

    # images

    def _image_text(self, conn, image_id: str) -> str | None:
        product_id, _, name = image_id.partition(":")
        row = conn.execute(
            f"SELECT {DOC} FROM items i WHERE collection = %s AND id = %s", (product_id, name)
        ).fetchone()
        return None if row is None else row[0]

    def _created(self, conn, product_id: str, names: list[str]) -> dict[str, datetime]:
        created = {}
        for name, first in conn.execute(
            "SELECT id, content->'tileserver:image'->>'created' FROM items"
            " WHERE collection = %s AND id = ANY(%s)",
            (product_id, names),
        ):
            if first:
                created[f"{product_id}:{name}"] = datetime.fromisoformat(first)
        return created

    def _write_images(self, conn, images: list[Image], products: dict[str, Product]) -> None:
        items = [item(i, products[i.product_id]) for i in images]
        conn.execute("SELECT upsert_items(%s)", (Jsonb(items),))

    def _record_properties(self, conn, images: list[Image]) -> None:
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

    def _delete_image(self, conn, image_id: str) -> str | None:
        product_id, _, name = image_id.partition(":")
        deleted = conn.execute(
            "DELETE FROM items WHERE collection = %s AND id = %s", (product_id, name)
        ).rowcount
        return product_id if deleted else None

    def _image_page(self, conn, product_id: str, after: tuple | None, limit: int) -> list[tuple]:
        sql = f"SELECT datetime, id, {DOC} FROM items i WHERE collection = %s"
        args: list = [product_id]
        if after:
            sql += ' AND (datetime, id COLLATE "C") < (%s, %s)'
            args += list(after)
        sql += ' ORDER BY datetime DESC, id COLLATE "C" DESC LIMIT %s'
        return conn.execute(sql, [*args, limit]).fetchall()

    def _token_time(self, value: str) -> datetime:
        return datetime.fromisoformat(value)

    def _count(self, conn, product_id: str) -> int:
        return conn.execute(
            "SELECT count(*) FROM items WHERE collection = %s", (product_id,)
        ).fetchone()[0]

    # search

    def _queryables_sql(
        self, found: dict[str, Queryable], conn
    ) -> tuple[dict[str, Queryable], Dialect]:
        """PostgreSQL SQL reading the values SQLite's reads; footprints tested by shapely."""
        dialect = replace(POSTGRES, spatial=lambda p, q, g: _spatial_sql(conn, p, q, g))
        return postgres_queryables(found), dialect

    def _run(self, conn, sql: str, args: Sequence) -> list[tuple]:
        """A search query's rows; arithmetic PostgreSQL cannot finish (overflow) is a 400."""
        try:
            return conn.execute(sql, args).fetchall()
        except (psycopg.errors.DataError, psycopg.errors.InternalError_) as exc:
            raise FilterError(f"cannot evaluate this filter: {exc.diag.message_primary}") from None

    def _bucket_start(self, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC)

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Put a search in pgSTAC's registry under its stable id; again: refresh its last use.

        No generation moves. Past the cap, expired searches are deleted first, then the
        least recently used; one worker at a time adds, so workers together keep the cap.
        """
        self._check(query)
        body = pgstac_search(query)
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
                try:
                    with conn.transaction():
                        conn.execute(
                            "SELECT search_query(%s, false, %s)", (Jsonb(body), Jsonb(metadata))
                        )
                except PGSTAC_REFUSALS:
                    # a filter pgSTAC's compiler cannot run: other pgSTAC clients get none
                    # of its images rather than wrong ones; tileserver reads its metadata
                    metadata["tileserver:pgstac"] = False
                    body = {"filter": NEVER, "filter-lang": "cql2-json"}
                    conn.execute(
                        "SELECT search_query(%s, false, %s)", (Jsonb(body), Jsonb(metadata))
                    )
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
