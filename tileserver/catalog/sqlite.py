"""The embedded catalog: one SQLite file (WAL), records kept as JSON documents.

Columns exist only for what queries filter or sort on; the document is the record. The
store's logic is catalog.sqlstore's; this module holds SQLite's schema, connections and SQL.
"""

from __future__ import annotations

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

from tileserver.catalog.blobs import SQLiteBlobStore
from tileserver.catalog.cql2sql import SQLITE, Dialect, Queryable, register_functions
from tileserver.catalog.models import (
    Image,
    ParsedDocs,
    Product,
    image_id,
    sortable_time,
    utcnow,
)
from tileserver.catalog.queryables import image_properties
from tileserver.catalog.search import RegisteredSearch, SearchLimits, SearchQuery, SortBy
from tileserver.catalog.sqlite_parcels import SQLiteParcelStore, create_schema
from tileserver.catalog.sqlstore import SQLStore
from tileserver.catalog.store import NotFound

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
# Version 6: leases (SQLStore.take_lease): one holder per name among every process sharing
# the catalog, e.g. the builder of a search's low-zoom pyramid (search_pyramid.py)
MIGRATIONS[6] = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""
SCHEMA_VERSION = max(MIGRATIONS)


BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for another connection's write
TOUCH_WAIT_MS = 100  # how long the write of a search's last use waits


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


class SQLiteStore(SQLStore):
    """Catalog store on one SQLite file; one connection per thread."""

    P = "?"
    IMAGES = "images"
    PROPERTIES = "properties"
    GENERATIONS = "generations"
    API_KEYS = "api_keys"
    LEASES = "leases"
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # the clock of the catalog's host
    DOC = "i.doc"
    PRODUCT = "i.product_id"
    TRUE = "1"
    HIDE_INDEX = "+"  # unary + hides the column from the planner
    SUMMARY = (
        "count(*), coalesce(sum(bytes), 0), min(minx), min(miny), max(maxx), max(maxy),"
        " min(acquired), max(acquired)"
    )
    BYTES = "bytes"
    BUCKETS = BUCKETS

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
        self._blobs = SQLiteBlobStore(self._conn, self._transaction)  # its table, if new
        with self._transaction() as db:
            create_schema(db)
        self._parcels = SQLiteParcelStore(self._conn, self._transaction)

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
        for key, doc in db.execute("SELECT id, doc FROM images").fetchall():
            image = Image.model_validate_json(doc)
            db.execute(
                "UPDATE images SET geom = ?, bytes = ? WHERE id = ?",
                (_wkb(image), _bytes(image), key),
            )
            self._record_properties(db, [image])

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
    def _conn(self) -> Iterator[sqlite3.Connection]:
        yield self._connection()

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

    def blobs(self) -> SQLiteBlobStore:
        """The blob records kept in this catalog's file."""
        return self._blobs

    def parcels(self) -> SQLiteParcelStore:
        """The parcel layers kept in this catalog's file (made with the store)."""
        return self._parcels

    def _bump(self, db: sqlite3.Connection, product_ids: Iterable[str]) -> None:
        db.executemany(
            "INSERT INTO generations VALUES (?, 1)"
            " ON CONFLICT (product_id) DO UPDATE SET value = value + 1",
            [(p,) for p in sorted(set(product_ids))],
        )

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list]:
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _key_time(self, value: datetime) -> str:
        return sortable_time(value)

    def ping(self) -> None:
        """One cheap query of the products table (readiness)."""
        self._connection().execute("SELECT 1 FROM products LIMIT 1").fetchall()

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

    def _product_row(self, db: sqlite3.Connection, product_id: str) -> tuple | None:
        return db.execute("SELECT doc FROM products WHERE id = ?", (product_id,)).fetchone()

    def _write_product(self, db: sqlite3.Connection, product: Product) -> None:
        db.execute(
            "INSERT OR REPLACE INTO products (id, doc) VALUES (?, ?)",
            (product.id, product.model_dump_json()),
        )

    def _delete_product(self, db: sqlite3.Connection, product_id: str) -> None:
        db.execute("DELETE FROM images WHERE product_id = ?", (product_id,))
        db.execute("DELETE FROM products WHERE id = ?", (product_id,))

    # images

    def _image_text(self, db: sqlite3.Connection, image_id: str) -> str | None:
        row = db.execute("SELECT doc FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else row[0]

    def _created(
        self, db: sqlite3.Connection, product_id: str, names: list[str]
    ) -> dict[str, datetime]:
        created = {}
        for start in range(0, len(names), 500):
            ids = [image_id(product_id, name) for name in names[start : start + 500]]
            where, args = self._in("id", ids)
            for key, first in db.execute(
                f"SELECT id, json_extract(doc, '$.created') FROM images WHERE {where}", args
            ):
                if first:
                    created[key] = datetime.fromisoformat(first)
        return created

    def _write_images(
        self, db: sqlite3.Connection, images: list[Image], products: dict[str, Product]
    ) -> None:
        db.executemany(
            "INSERT INTO images (id, product_id, name, acquired, cloud_cover,"
            " minx, miny, maxx, maxy, geom, bytes, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET acquired = excluded.acquired,"
            " cloud_cover = excluded.cloud_cover, minx = excluded.minx,"
            " miny = excluded.miny, maxx = excluded.maxx, maxy = excluded.maxy,"
            " geom = excluded.geom, bytes = excluded.bytes, doc = excluded.doc",
            [
                (
                    image.id,
                    image.product_id,
                    image.name,
                    sortable_time(image.acquired),
                    image.cloud_cover,
                    *image.bbox,
                    _wkb(image),
                    _bytes(image),
                    image.model_dump_json(),
                )
                for image in images
            ],
        )

    def _record_properties(self, db: sqlite3.Connection, images: list[Image]) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO properties VALUES (?, ?, ?)",
            [(i.product_id, name, kind) for i in images for name, kind in image_properties(i)],
        )

    def _after_write(self) -> None:
        self._keep_statistics()

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

    def _delete_image(self, db: sqlite3.Connection, image_id: str) -> str | None:
        row = db.execute("DELETE FROM images WHERE id = ? RETURNING product_id", (image_id,))
        deleted = row.fetchall()
        return deleted[0][0] if deleted else None

    def _image_page(
        self, db: sqlite3.Connection, product_id: str, after: tuple | None, limit: int
    ) -> list[tuple]:
        sql = "SELECT acquired, id, doc FROM images WHERE product_id = ?"
        args: list = [product_id]
        if after:
            acquired, last_id = after
            sql += " AND (acquired < ? OR (acquired = ? AND id < ?))"
            args += [acquired, acquired, last_id]
        sql += " ORDER BY acquired DESC, id DESC LIMIT ?"
        return db.execute(sql, [*args, limit]).fetchall()

    def _count(self, db: sqlite3.Connection, product_id: str) -> int:
        sql = "SELECT count(*) FROM images WHERE product_id = ?"
        return db.execute(sql, (product_id,)).fetchone()[0]

    # search

    def _queryables_sql(
        self, found: dict[str, Queryable], db
    ) -> tuple[dict[str, Queryable], Dialect]:
        return found, SQLITE

    def _nulls(self, key: SortBy) -> str:
        """Columns that are never null get no clause, which keeps their indexes usable."""
        return "" if key.field in NOT_NULL else super()._nulls(key)

    def register_search(self, query: SearchQuery) -> RegisteredSearch:
        """Store a search under its stable id; again: refresh its last use. No generation moves.

        Past the cap, expired searches are deleted first, then the least recently used.
        """
        self._check(query)
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
