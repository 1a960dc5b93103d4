"""The embedded catalog: one SQLite file (WAL), records kept as JSON documents.

Columns exist only for what queries filter or sort on; the document is the record.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tileserver.catalog.models import Image, Product, utcnow
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


def sortable_time(value) -> str:
    """A UTC time as fixed-width text, so SQL orders it as time."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode_token(acquired: str, image_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([acquired, image_id]).encode()).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        acquired, image_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(acquired), str(image_id)
    except Exception as exc:  # any garbage is the caller's mistake
        raise ValueError(f"invalid page token '{token}'") from exc


class SQLiteStore:
    """Catalog store on one SQLite file; one connection per thread."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connection().executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

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
        return Product.model_validate_json(row[0])

    def create_product(self, product: Product) -> Product:
        """Insert a new product; Conflict if the id is taken."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM products WHERE id = ?", (product.id,)).fetchone():
                raise Conflict(f"product '{product.id}' already exists")
            return self._write_product(db, product, created=None)

    def put_product(self, product: Product) -> Product:
        """Create or replace a product (bands included)."""
        with self._transaction() as db:
            row = db.execute("SELECT doc FROM products WHERE id = ?", (product.id,)).fetchone()
            created = Product.model_validate_json(row[0]).created if row else None
            return self._write_product(db, product, created=created)

    def _write_product(self, db, product: Product, created) -> Product:
        now = utcnow()
        product = product.model_copy(update={"created": created or now, "modified": now})
        db.execute(
            "INSERT OR REPLACE INTO products (id, doc) VALUES (?, ?)",
            (product.id, product.model_dump_json()),
        )
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
        return Image.model_validate_json(row[0])

    def put_images(self, images: Iterable[Image]) -> list[Image]:
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
                row = db.execute("SELECT doc FROM images WHERE id = ?", (image.id,)).fetchone()
                now = utcnow()
                created = Image.model_validate_json(row[0]).created if row else now
                image = image.model_copy(update={"created": created, "modified": now})
                minx, miny, maxx, maxy = image.bbox
                db.execute(
                    "INSERT OR REPLACE INTO images (id, product_id, name, acquired, cloud_cover,"
                    " minx, miny, maxx, maxy, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        image.model_dump_json(),
                    ),
                )
                written.append(image)
        return written

    def delete_image(self, image_id: str) -> None:
        """Delete one image."""
        with self._transaction() as db:
            if db.execute("DELETE FROM images WHERE id = ?", (image_id,)).rowcount == 0:
                raise NotFound(f"image '{image_id}' not found")

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
