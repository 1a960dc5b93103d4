"""The embedded catalog: one SQLite file (WAL), records kept as JSON documents.

Columns exist only for what queries filter or sort on; the document is the record.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import shapely
from shapely.geometry import shape

from tileserver.catalog.cql2sql import FilterError, Queryable, compile_filter, register_functions
from tileserver.catalog.keys import ApiKey
from tileserver.catalog.models import (
    Image,
    ParsedDocs,
    Product,
    sortable_time,
    stamped,
    utcnow,
    with_footprint_bbox,
)
from tileserver.catalog.queryables import image_properties, queryable_set
from tileserver.catalog.search import (
    COUNT_LIMIT,
    RegisteredSearch,
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id),
    name TEXT NOT NULL,
    acquired TEXT NOT NULL,
    cloud_cover REAL,
    minx REAL, miny REAL, maxx REAL, maxy REAL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_product_acquired ON images (product_id, acquired DESC, id DESC);
"""

# Version 2: footprints as WKB with an R*Tree over their bboxes, bytes per image, the
# properties seen per product (queryables), registered searches, a write generation.
MIGRATIONS = {
    2: """
ALTER TABLE images ADD COLUMN geom BLOB;
ALTER TABLE images ADD COLUMN bytes INTEGER;
CREATE INDEX IF NOT EXISTS images_acquired ON images (acquired DESC, id DESC);
CREATE INDEX IF NOT EXISTS images_cloud_cover ON images (cloud_cover);
CREATE VIRTUAL TABLE IF NOT EXISTS images_rtree USING rtree(id, minx, maxx, miny, maxy);
CREATE TRIGGER IF NOT EXISTS images_rtree_insert AFTER INSERT ON images BEGIN
    INSERT INTO images_rtree VALUES (new.rowid, new.minx, new.maxx, new.miny, new.maxy);
END;
CREATE TRIGGER IF NOT EXISTS images_rtree_update AFTER UPDATE ON images BEGIN
    UPDATE images_rtree SET minx = new.minx, maxx = new.maxx, miny = new.miny,
        maxy = new.maxy WHERE id = new.rowid;
END;
CREATE TRIGGER IF NOT EXISTS images_rtree_delete AFTER DELETE ON images BEGIN
    DELETE FROM images_rtree WHERE id = old.rowid;
END;
CREATE TABLE IF NOT EXISTS properties (
    product_id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (product_id, name)
);
CREATE TABLE IF NOT EXISTS searches (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
""",
}
# Version 3: indexes for ids and for the properties most filtered on, read from documents
MIGRATIONS[3] = """
CREATE INDEX IF NOT EXISTS images_name ON images (name);
CREATE INDEX IF NOT EXISTS images_platform
    ON images (json_extract(doc, '$.properties."platform"'));
CREATE INDEX IF NOT EXISTS images_constellation
    ON images (json_extract(doc, '$.properties."constellation"'));
"""
# Version 4: API keys (catalog.keys): the record as JSON, the secret only as its hash
MIGRATIONS[4] = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    doc TEXT NOT NULL
);
"""
# Version 5: a generation per product (mosaic cache keys), replacing the catalog-wide one that
# any write, a search registration included, moved for every tenant; when each registered
# search was last used (expiry and the cap). Searches there already count as used now.
MIGRATIONS[5] = """
CREATE TABLE IF NOT EXISTS generations (
    product_id TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
DELETE FROM meta WHERE key = 'generation';
ALTER TABLE searches ADD COLUMN last_used REAL;
UPDATE searches SET last_used = CAST(strftime('%s', 'now') AS REAL);
CREATE INDEX IF NOT EXISTS searches_last_used ON searches (last_used);
"""
SCHEMA_VERSION = max(MIGRATIONS)


BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for another connection's write
TOUCH_WAIT_MS = 100  # how long the write of a search's last use waits


def _encode_token(acquired: str, image_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([acquired, image_id]).encode()).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        acquired, image_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(acquired), str(image_id)
    except Exception as exc:  # any garbage is the caller's mistake
        raise ValueError(f"invalid page token '{token}'") from exc


def _statements(script: str) -> Iterator[str]:
    """The statements of a script (trigger bodies hold semicolons)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement.strip()
            statement = ""


def _wkb(image: Image) -> bytes:
    return shapely.to_wkb(shape(image.geometry))


def _bytes(image: Image) -> int:
    return sum(f.size or 0 for f in image.files)


class SQLiteStore:
    """Catalog store on one SQLite file; one connection per thread."""

    def __init__(self, path: str | Path, search_limits: SearchLimits | None = None):
        self.path = str(path)
        self.search_limits = search_limits or SearchLimits()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._parsed = ParsedDocs()
        self._connection().executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring an older catalog file up to SCHEMA_VERSION, one transaction per version."""
        for version in sorted(MIGRATIONS):
            with self._transaction() as db:
                if db.execute("PRAGMA user_version").fetchone()[0] >= version:
                    continue
                for statement in _statements(MIGRATIONS[version]):
                    db.execute(statement)
                if version == 2:
                    self._backfill_v2(db)
                db.execute(f"PRAGMA user_version = {version}")
                # new indexes need statistics: gather them again below
                db.execute("DELETE FROM meta WHERE key = 'analyzed_rows'")
        self._keep_statistics()

    def _backfill_v2(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO images_rtree SELECT rowid, minx, maxx, miny, maxy FROM images")
        for image_id, doc in db.execute("SELECT id, doc FROM images").fetchall():
            image = Image.model_validate_json(doc)
            db.execute(
                "UPDATE images SET geom = ?, bytes = ? WHERE id = ?",
                (_wkb(image), _bytes(image), image_id),
            )
            self._record_properties(db, image)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            register_functions(db)
            self._local.db = db
            with self._lock:
                self._connections.append(db)
            # server threads come and go (a thread pool retires idle ones): a connection
            # outliving its thread would keep its files and caches open until close()
            weakref.finalize(threading.current_thread(), self._forget, db)
        return db

    def _forget(self, db: sqlite3.Connection) -> None:
        """Close the connection of a thread that ended."""
        with self._lock:
            if db not in self._connections:
                return  # close() got it first
            self._connections.remove(db)
        db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    @staticmethod
    def _bump(db: sqlite3.Connection, product_ids: Iterable[str]) -> None:
        """Move the generation of products whose images or bands this transaction changes."""
        db.executemany(
            "INSERT INTO generations VALUES (?, 1)"
            " ON CONFLICT (product_id) DO UPDATE SET value = value + 1",
            [(p,) for p in sorted(set(product_ids))],
        )

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # products

    def list_products(self) -> list[Product]:
        """Every product, by id."""
        rows = self._connection().execute("SELECT doc FROM products ORDER BY id").fetchall()
        return [Product.model_validate_json(doc) for (doc,) in rows]

    def get_product(self, product_id: str) -> Product:
        """The product with its bands."""
        row = (
            self._connection()
            .execute("SELECT doc FROM products WHERE id = ?", (product_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"product '{product_id}' not found")
        return self._parsed.get(Product, product_id, row[0])

    def create_product(self, product: Product) -> Product:
        """Insert a new product; Conflict if the id is taken."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM products WHERE id = ?", (product.id,)).fetchone():
                raise Conflict(f"product '{product.id}' already exists")
            return self._write_product(db, product, created=None)

    def put_product(self, product: Product, keep_times: bool = False) -> Product:
        """Create or replace a product (bands included)."""
        with self._transaction() as db:
            row = db.execute("SELECT doc FROM products WHERE id = ?", (product.id,)).fetchone()
            created = Product.model_validate_json(row[0]).created if row else None
            return self._write_product(db, product, created, keep_times)

    def _write_product(self, db, product: Product, created, keep_times: bool = False) -> Product:
        product = stamped(product, created, keep_times)
        db.execute(
            "INSERT OR REPLACE INTO products (id, doc) VALUES (?, ?)",
            (product.id, product.model_dump_json()),
        )
        self._bump(db, [product.id])
        return product

    def delete_product(self, product_id: str, cascade: bool = False) -> None:
        """Delete a product, and its images when cascade is set."""
        with self._transaction() as db:
            if not db.execute("SELECT 1 FROM products WHERE id = ?", (product_id,)).fetchone():
                raise NotFound(f"product '{product_id}' not found")
            (count,) = db.execute(
                "SELECT count(*) FROM images WHERE product_id = ?", (product_id,)
            ).fetchone()
            if count and not cascade:
                raise Conflict(
                    f"product '{product_id}' still has {count} images; "
                    "delete them first or pass cascade=true"
                )
            db.execute("DELETE FROM images WHERE product_id = ?", (product_id,))
            db.execute("DELETE FROM products WHERE id = ?", (product_id,))
            self._bump(db, [product_id])

    # images

    def get_image(self, image_id: str) -> Image:
        """One image by its global id."""
        row = (
            self._connection()
            .execute("SELECT doc FROM images WHERE id = ?", (image_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"image '{image_id}' not found")
        return self._parsed.get(Image, image_id, row[0])

    def put_images(self, images: Iterable[Image], keep_times: bool = False) -> list[Image]:
        """Create or replace images atomically: all are written or none."""
        written = []
        with self._transaction() as db:
            known: set[str] = set()
            for image in images:
                if image.product_id not in known:
                    if not db.execute(
                        "SELECT 1 FROM products WHERE id = ?", (image.product_id,)
                    ).fetchone():
                        raise NotFound(f"product '{image.product_id}' not found")
                    known.add(image.product_id)
                if not keep_times or image.modified is None:
                    row = db.execute("SELECT doc FROM images WHERE id = ?", (image.id,)).fetchone()
                    created = Image.model_validate_json(row[0]).created if row else None
                    image = stamped(image, created)
                image = with_footprint_bbox(image)
                minx, miny, maxx, maxy = image.bbox
                db.execute(
                    "INSERT INTO images (id, product_id, name, acquired, cloud_cover,"
                    " minx, miny, maxx, maxy, geom, bytes, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET acquired = excluded.acquired,"
                    " cloud_cover = excluded.cloud_cover, minx = excluded.minx,"
                    " miny = excluded.miny, maxx = excluded.maxx, maxy = excluded.maxy,"
                    " geom = excluded.geom, bytes = excluded.bytes, doc = excluded.doc",
                    (
                        image.id,
                        image.product_id,
                        image.name,
                        sortable_time(image.acquired),
                        image.cloud_cover,
                        minx,
                        miny,
                        maxx,
                        maxy,
                        _wkb(image),
                        _bytes(image),
                        image.model_dump_json(),
                    ),
                )
                self._record_properties(db, image)
                written.append(image)
            self._bump(db, known)
        self._keep_statistics()
        return written

    def _keep_statistics(self) -> None:
        """ANALYZE when the catalog has doubled since the last time.

        Without statistics SQLite takes `product_id = ?` for selective and walks a whole
        product instead of the R*Tree: 100x slower searches at a million images.
        """
        db = self._connection()
        (rows,) = db.execute("SELECT coalesce(max(rowid), 0) FROM images").fetchone()
        (analyzed,) = db.execute(
            "SELECT coalesce(max(value), 0) FROM meta WHERE key = 'analyzed_rows'"
        ).fetchone()
        if rows < 2 * analyzed + 1000 and (analyzed or rows < 1000):
            return
        db.execute("ANALYZE")  # a full one: sampled statistics mistake a product for 1000 rows
        db.execute("INSERT OR REPLACE INTO meta VALUES ('analyzed_rows', ?)", (rows,))

    def delete_image(self, image_id: str) -> None:
        """Delete one image."""
        with self._transaction() as db:
            row = db.execute("DELETE FROM images WHERE id = ? RETURNING product_id", (image_id,))
            deleted = row.fetchall()
            if not deleted:
                raise NotFound(f"image '{image_id}' not found")
            self._bump(db, [deleted[0][0]])

    def list_images(self, product_id: str, limit: int = 100, token: str | None = None) -> ImagePage:
        """A page of a product's images, newest first (keyset paging on acquired, id)."""
        self.get_product(product_id)
        sql = "SELECT acquired, id, doc FROM images WHERE product_id = ?"
        args: list = [product_id]
        if token:
            acquired, last_id = _decode_token(token)
            sql += " AND (acquired < ? OR (acquired = ? AND id < ?))"
            args += [acquired, acquired, last_id]
        sql += " ORDER BY acquired DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._connection().execute(sql, args).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        images = [Image.model_validate_json(doc) for _, _, doc in rows]
        next_token = _encode_token(rows[-1][0], rows[-1][1]) if more else None
        return ImagePage(images=images, next_token=next_token)

    def count_images(self, product_id: str) -> int:
        """How many images the product has."""
        (count,) = (
            self._connection()
            .execute("SELECT count(*) FROM images WHERE product_id = ?", (product_id,))
            .fetchone()
        )
        return count

    def _record_properties(self, db: sqlite3.Connection, image: Image) -> None:
        """Remember the product's property names and types: they become queryables."""
        for name, kind in image_properties(image):
            db.execute(
                "INSERT OR IGNORE INTO properties VALUES (?, ?, ?)",
                (image.product_id, name, kind),
            )

    # search

    def generations(self, product_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Each product's generation (None: all; never written: absent, i.e. 0)."""
        sql, args = _in_products("SELECT product_id, value FROM generations", product_ids)
        return dict(self._connection().execute(sql, args).fetchall())

    def generation(self, product_ids: Sequence[str] | None = None) -> int:
        """The sum of the products' generations (None: all): part of mosaic cache keys."""
        if product_ids is not None and not product_ids:
            return 0
        sql, args = _in_products("SELECT coalesce(sum(value), 0) FROM generations", product_ids)
        return self._connection().execute(sql, args).fetchone()[0]

    def queryables(self, product_id: str | Sequence[str] | None = None) -> dict[str, Queryable]:
        """What filters may name: the core properties and those the images carry."""
        sql, args = "SELECT name, type FROM properties", []
        if isinstance(product_id, str):
            self.get_product(product_id)
            sql, args = sql + " WHERE product_id = ?", [product_id]
        elif product_id is not None:
            args = list(product_id)
            sql += f" WHERE product_id IN ({', '.join('?' * len(args))})"
        return queryable_set(self._connection().execute(sql, args).fetchall())

    # API keys

    def put_key(self, key: ApiKey) -> ApiKey:
        """Create or replace a key record."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?)",
                (key.id, sortable_time(key.created), key.model_dump_json()),
            )
        return key

    def find_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, or None."""
        row = (
            self._connection()
            .execute("SELECT doc FROM api_keys WHERE id = ?", (key_id,))
            .fetchone()
        )
        return None if row is None else ApiKey.model_validate_json(row[0])

    def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first."""
        rows = self._connection().execute("SELECT doc FROM api_keys ORDER BY created, id")
        return [ApiKey.model_validate_json(doc) for (doc,) in rows]

    def has_keys(self) -> bool:
        """Whether any key was ever created."""
        return self._connection().execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def _where(
        self, query: SearchQuery, queryables: dict[str, Queryable], extra: dict | None = None
    ) -> tuple[str, list]:
        expr = query.cql2()
        if extra is not None:
            expr = extra if expr is None else {"op": "and", "args": [expr, extra]}
        if expr is None:
            return "1", []
        return compile_filter(expr, queryables)

    def _order(
        self, query: SearchQuery, queryables: dict[str, Queryable], sort_matches: bool = False
    ) -> str:
        """ORDER BY terms; `sort_matches` keeps SQLite from walking an index in sort order.

        Walking the acquired index stops early when matches are many, but reads the whole
        catalog when they are few; a known small match count sorts them instead.
        """
        prefix = "+" if sort_matches else ""  # unary + hides the column from the planner
        terms = []
        for key in query.sort_keys():
            queryable = queryables.get(key.field)
            if queryable is None or queryable.type == "geometry":
                sortable = sorted(n for n, q in queryables.items() if q.type != "geometry")
                raise FilterError(f"cannot sort by '{key.field}'; sortable: {', '.join(sortable)}")
            terms.append(f"{prefix}{queryable.sql} {key.direction.upper()}{_nulls(key)}")
        return ", ".join(terms + [f"{prefix}i.product_id DESC"])

    def search(self, query: SearchQuery, count: bool = True) -> SearchPage:
        """A page of the images a STAC search matches, in its sort order.

        `matched` is exact up to COUNT_LIMIT and None beyond it (or when `count` is off):
        counting every match of a broad filter costs a scan of the catalog.
        """
        try:
            offset = decode_offset(query.token)
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        queryables = self.queryables()
        where, args = self._where(query, queryables)
        db = self._connection()
        matched = None
        if count:
            (matched,) = db.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM images i WHERE {where} LIMIT ?)",
                [*args, COUNT_LIMIT + 1],
            ).fetchone()
            if matched > COUNT_LIMIT:
                matched = None
        order = self._order(query, queryables, sort_matches=matched is not None)
        rows = db.execute(
            f"SELECT i.doc FROM images i WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, query.limit + 1, offset],
        ).fetchall()
        more = len(rows) > query.limit
        return SearchPage(
            images=[Image.model_validate_json(doc) for (doc,) in rows[: query.limit]],
            matched=matched,
            next_token=encode_offset(offset + query.limit) if more else None,
            prev_token=encode_offset(max(offset - query.limit, 0)) if offset > 0 else None,
        )

    def tile_images(self, query: SearchQuery, bbox: tuple, lookup: TileLookup) -> list[Image]:
        """The search's images whose footprint meets a WGS84 box, in paint order."""
        queryables = self.queryables()
        where, args = self._where(query, queryables, bbox_filter(list(bbox)))
        order = self._order(query, queryables)
        rows = self._connection().execute(
            f"SELECT i.doc FROM images i WHERE {where} ORDER BY {order} LIMIT ?",
            [*args, lookup.scan_limit],
        )
        return select_for_tile((Image.model_validate_json(doc) for (doc,) in rows), bbox, lookup)

    def summary(self, query: SearchQuery, interval: str | None = None) -> Summary:
        """Count, bytes, products and extent of a search; bucketed by `interval` if given."""
        where, args = self._where(query, self.queryables())
        db = self._connection()
        count, size, minx, miny, maxx, maxy, start, end = db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0), min(minx), min(miny), max(maxx),"
            f" max(maxy), min(acquired), max(acquired) FROM images i WHERE {where}",
            args,
        ).fetchone()
        products = [
            p
            for (p,) in db.execute(
                f"SELECT DISTINCT i.product_id FROM images i WHERE {where} ORDER BY 1", args
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
            bucket = BUCKETS[interval]
            summary.interval = interval
            summary.summaries = [
                SummaryBucket(interval_start=first, count=n, bytes=b)
                for first, n, b in db.execute(
                    f"SELECT {bucket} AS b, count(*), coalesce(sum(bytes), 0)"
                    f" FROM images i WHERE {where} GROUP BY b ORDER BY b",
                    args,
                )
            ]
        return summary

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Store a search under its stable id; again: refresh its last use. No generation moves.

        Past the cap, expired searches are deleted first, then the least recently used.
        """
        queryables = self.queryables()  # unknown properties are refused now, not at a tile
        self._where(query, queryables)
        self._order(query, queryables)
        search_id = query.search_id()
        doc = json.dumps(query.identity(), sort_keys=True)
        now = time.time()
        with self._transaction() as db:
            if not db.execute(
                "UPDATE searches SET last_used = ? WHERE id = ?", (now, search_id)
            ).rowcount:
                self._make_room(db, now)
                db.execute(
                    "INSERT INTO searches (id, doc, created, last_used) VALUES (?, ?, ?, ?)",
                    (search_id, doc, sortable_time(utcnow()), now),
                )
        return self.get_search(search_id)

    def _make_room(self, db: sqlite3.Connection, now: float) -> None:
        """Below the cap for one more search: expired ones go, then the least recently used."""
        limits = self.search_limits
        (count,) = db.execute("SELECT count(*) FROM searches").fetchone()
        if count < limits.max_searches:
            return
        count -= db.execute(
            "DELETE FROM searches WHERE last_used < ?", (now - limits.ttl,)
        ).rowcount
        if count >= limits.max_searches:
            db.execute(
                "DELETE FROM searches WHERE id IN"
                " (SELECT id FROM searches ORDER BY last_used, id LIMIT ?)",
                (count - limits.max_searches + 1,),
            )

    def list_searches(self) -> list[RegisteredSearch]:
        """Every registered search that has not expired, by id."""
        rows = self._connection().execute(
            "SELECT id, doc, created, last_used FROM searches WHERE last_used >= ? ORDER BY id",
            (time.time() - self.search_limits.ttl,),
        )
        return [_registered(*row) for row in rows]

    def get_search(self, search_id: str) -> RegisteredSearch:
        """A registered search, its last use refreshed (at most every touch_every seconds).

        NotFound if absent or unused for longer than the TTL: the client registers it again.
        """
        db = self._connection()
        row = db.execute(
            "SELECT id, doc, created, last_used FROM searches WHERE id = ?", (search_id,)
        ).fetchone()
        now, limits = time.time(), self.search_limits
        if row is None or (row[3] or 0) < now - limits.ttl:
            raise NotFound(f"search '{search_id}' not found; register it with POST /searches")
        if now - row[3] >= limits.touch_every:
            # autocommit, waiting briefly: a catalog busy with a long write must not stall a
            # tile, and a touch missed now is made by a later lookup
            db.execute(f"PRAGMA busy_timeout = {TOUCH_WAIT_MS}")
            try:
                db.execute("UPDATE searches SET last_used = ? WHERE id = ?", (now, search_id))
            except sqlite3.OperationalError:
                pass
            finally:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return _registered(*row)


def _registered(search_id: str, doc: str, created: str, last_used: float) -> RegisteredSearch:
    """A row of the searches table as a RegisteredSearch."""
    return RegisteredSearch(
        id=search_id,
        search=SearchQuery.model_validate_json(doc),
        created=created,
        last_used=datetime.fromtimestamp(last_used, UTC),
    )


def _in_products(sql: str, product_ids: Sequence[str] | None) -> tuple[str, list]:
    """`sql` limited to some products (None: all)."""
    if product_ids is None:
        return sql, []
    return f"{sql} WHERE product_id IN ({', '.join('?' * len(product_ids))})", list(product_ids)


def _nulls(key: SortBy) -> str:
    """Where missing values sort: PostgreSQL's way (last ascending, first descending).

    Columns that are never null get no clause, which keeps their indexes usable.
    """
    if key.field in NOT_NULL:
        return ""
    return " NULLS LAST" if key.direction == "asc" else " NULLS FIRST"


NOT_NULL = {"id", "collection", "datetime"}

# SQL giving the start of an acquisition's interval, as RFC 3339 text
BUCKETS = {
    "year": "substr(i.acquired, 1, 4) || '-01-01T00:00:00Z'",
    "quarter": "printf('%s-%02d-01T00:00:00Z', substr(i.acquired, 1, 4),"
    " (CAST(substr(i.acquired, 6, 2) AS INTEGER) - 1) / 3 * 3 + 1)",
    "month": "substr(i.acquired, 1, 7) || '-01T00:00:00Z'",
    "week": "date(substr(i.acquired, 1, 10), '-6 days', 'weekday 1') || 'T00:00:00Z'",
    "day": "substr(i.acquired, 1, 10) || 'T00:00:00Z'",
    "hour": "substr(i.acquired, 1, 13) || ':00:00Z'",
}
