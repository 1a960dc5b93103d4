"""Blobs: named byte objects in namespaces, as the Descartes Labs Catalog's `Blob`.

A blob is a record (this module) and a file the server writes (tileserver/blobs.py). The
record names it by `storage_type`, `namespace` and `name` (unique together), carries the
Catalog's searchable metadata (description, tags, geometry, expires) and the same access
lists as a product (`owners`, `writers`, `readers`; catalog.access.Principal reads them).
Its `id` is generated (32 hex digits): the file is stored under it, never under a name a
caller chose.

Records live in the catalog's database beside the images, one `blobs` table per backend:
`SQLiteBlobStore` (in the catalog file) and `PostgresBlobStore` (the `tileserver` schema of
the pgSTAC database, PostGIS for geometries). Both answer the same searches: by namespace,
name or name prefix, tags (all of them), geometry (intersects), creation time and storage
type, only over the blobs the caller may read (their access entries are a column), newest
first, in pages.

`BlobAccess` is the store as one caller sees it: a blob they may not read does not exist
(NotFound, the text of a missing one), a change they may not make is Forbidden.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import shape

from tileserver.catalog.access import Principal
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import ACCESS_ENTRY, sortable_time, utcnow
from tileserver.catalog.store import Conflict, Forbidden, NotFound

StorageType = Literal["data", "dyncomp"]  # the Catalog's types users may upload
StorageState = Literal["pending", "available"]  # pending: created, its bytes not yet sent
# the Catalog's alphabets: namespaces `a-zA-Z0-9:._-` (and `@`, which user names may hold),
# names also `/`, used like folders for prefix searches; never a `.`/`..` segment or `//`
NAMESPACE_PATTERN = r"^[A-Za-z0-9._@-]+(:[A-Za-z0-9._@-]+)*$"
NAME_PATTERN = r"^[A-Za-z0-9:._-]+(/[A-Za-z0-9:._-]+)*$"
MAX_ID_BYTES = 979  # namespace and name together, as the Catalog
MAX_TAGS = 32
MAX_TAG_LENGTH = 1000
MAX_DESCRIPTION = 80_000
MAX_PAGE = 1000
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
TOO_LONG = f"namespace and name have at most {MAX_ID_BYTES} bytes together"


def access_entries(entries: list[str], field: str) -> list[str]:
    """The list sorted and unique; ValueError naming a bad entry (as Product's lists)."""
    for entry in entries:
        if entry == "public" and field == "readers":
            continue
        if not re.match(ACCESS_ENTRY, entry):
            also = " or public" if field == "readers" else ""
            raise ValueError(f"'{entry}' is not an access entry: use user:NAME, org:NAME{also}")
    return sorted(set(entries))


def check_tags(tags: list[str]) -> list[str]:
    """At most MAX_TAGS tags of at most MAX_TAG_LENGTH characters, without NUL."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_LENGTH or "\x00" in tag:
            raise ValueError(f"a tag has 1 to {MAX_TAG_LENGTH} characters and no NUL")
    return tags


def aware(value: datetime | None) -> datetime | None:
    """A time in UTC (naive means UTC)."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:  # year 9999 with a negative offset, year 1 with a positive one
        raise ValueError("time out of range in UTC") from None


class BlobFields(BaseModel):
    """What a caller may set on a blob (after creation, through PATCH)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    tags: list[str] = Field([], max_length=MAX_TAGS, description="each up to 1000 characters")
    geometry: dict[str, Any] | None = Field(None, description="a GeoJSON geometry in WGS84")
    expires: datetime | None = Field(None, description="when the blob is deleted")
    owners: list[str] = Field([], description="user:NAME or org:NAME: read, write, delete, share")
    writers: list[str] = Field([], description="user:NAME or org:NAME: read, write")
    readers: list[str] = Field([], description="user:NAME, org:NAME or public: read")

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return check_tags(tags)

    @field_validator("geometry")
    @classmethod
    def _geometry(cls, value: dict | None) -> dict | None:
        return None if value is None else check_geometry(value, "geometry", wgs84=True)

    @field_validator("expires")
    @classmethod
    def _expires(cls, value: datetime | None) -> datetime | None:
        return aware(value)

    @field_validator("owners", "writers", "readers")
    @classmethod
    def _lists(cls, entries: list[str], info) -> list[str]:
        return access_entries(entries, info.field_name)


class BlobPatch(BlobFields):
    """`PATCH /blobs/{id}`: the fields sent replace the stored ones (null clears)."""


class BlobRequest(BlobFields):
    """`POST /blobs`: a new blob's name, metadata and what its bytes will be (checked)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_ID_BYTES)
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN,
        max_length=MAX_ID_BYTES,
        description="your organisation, or org:anything (default: org:user)",
    )
    storage_type: StorageType = "data"
    size: int | None = Field(None, ge=0, description="the byte count to expect (checked)")
    md5: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description="hex MD5 of the bytes (checked)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if any(part in (".", "..") for part in name.split("/")):
            raise ValueError("a name has no '.' or '..' segment")
        return name

    @field_validator("md5")
    @classmethod
    def _md5(cls, value: str | None) -> str | None:
        return None if value is None else value.lower()


class Blob(BlobFields):
    """A blob's record (`key` names its file and is never shown)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN.pattern)
    storage_type: StorageType
    namespace: str
    name: str
    storage_state: StorageState = "pending"
    size: int | None = None
    md5: str | None = None
    created: datetime
    modified: datetime
    key: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _length(self) -> Blob:
        if len(self.namespace.encode()) + len(self.name.encode()) > MAX_ID_BYTES:
            raise ValueError(TOO_LONG)
        return self

    @property
    def path(self) -> str:
        """`storage_type/namespace/name`, the Catalog's id of the blob."""
        return f"{self.storage_type}/{self.namespace}/{self.name}"

    def stored(self) -> str:
        """The record as the store keeps it (the key included)."""
        return json.dumps({**self.model_dump(mode="json"), "key": self.key})


def parse_blob(doc: str | dict) -> Blob:
    """A stored record."""
    return Blob.model_validate(json.loads(doc) if isinstance(doc, str) else doc)


class BlobQuery(BaseModel):
    """A blob search: every condition given applies."""

    namespace: str | None = None
    name: str | None = None
    prefix: str | None = None
    tags: list[str] = []
    intersects: dict | None = None
    start: datetime | None = None  # created at or after
    end: datetime | None = None  # created before
    storage_type: StorageType | None = None
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    token: str | None = None


class BlobPage(BaseModel):
    """A page of blobs, newest first, and the token of the next page."""

    blobs: list[Blob]
    next_token: str | None = None


def encode_token(blob: Blob) -> str:
    """Where the next page starts: after this blob."""
    text = json.dumps([blob.created.isoformat(), blob.id])
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_token(token: str) -> tuple[datetime, str]:
    """(created, id) of a token; ValueError for anything else."""
    try:
        created, blob_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        moment = aware(datetime.fromisoformat(created))
    except Exception:
        raise ValueError("token is not a next_token this server gave") from None
    if not isinstance(blob_id, str) or not ID_PATTERN.match(blob_id):
        raise ValueError("token is not a next_token this server gave")
    return moment, blob_id


def new_id() -> str:
    """A blob id (its file's name too)."""
    return uuid.uuid4().hex


def not_found(blob_id: str) -> NotFound:
    """One text for a missing and a hidden blob."""
    return NotFound(f"blob '{blob_id[:64]}' not found")


def _access_of(blob: Blob) -> list[str]:
    return sorted(set(blob.owners) | set(blob.writers) | set(blob.readers))


class BlobStore:
    """Blob records in a catalog's database; the SQL both backends speak alike."""

    P = "?"
    TABLE = "blobs"

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Any]],
        transaction: Callable[[], AbstractContextManager[Any]],
    ):
        self._conn, self._transaction = connection, transaction

    # dialect

    def _time(self, value: datetime) -> Any:
        return value

    def _row(self, blob: Blob) -> dict[str, Any]:
        raise NotImplementedError

    def _doc_column(self) -> str:
        return "doc"

    def _visible_sql(self, names: Sequence[str]) -> tuple[str, list]:
        raise NotImplementedError

    def _tags_sql(self, tags: Sequence[str]) -> tuple[str, list]:
        raise NotImplementedError

    def _intersects_sql(self, geometry: dict) -> tuple[str, list]:
        raise NotImplementedError

    def _is_duplicate(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _rows(self, sql: str, args: Sequence) -> list[tuple]:
        with self._conn() as db:
            return db.execute(sql, args).fetchall()

    # records

    def create(self, blob: Blob) -> Blob:
        """Insert a new blob; Conflict when its storage type, namespace and name are taken."""
        row = self._row(blob)
        columns = ", ".join(row)
        marks = ", ".join(self._marks(row))
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO {self.TABLE} ({columns}) VALUES ({marks})", list(row.values())
                )
        except Exception as exc:
            if self._is_duplicate(exc):
                raise Conflict(f"blob '{blob.path}' already exists") from None
            raise
        return blob

    def _marks(self, row: dict) -> list[str]:
        return [self.P] * len(row)

    def get(self, blob_id: str) -> Blob:
        """The blob (expired ones too: callers decide); NotFound when there is none."""
        if not ID_PATTERN.match(blob_id):
            raise not_found(blob_id)
        rows = self._rows(
            f"SELECT {self._doc_column()} FROM {self.TABLE} WHERE id = {self.P}", [blob_id]
        )
        if not rows:
            raise not_found(blob_id)
        return parse_blob(rows[0][0])

    def update(self, blob: Blob, state_was: StorageState | None = None) -> Blob:
        """Replace the record (`state_was`: only while the stored one is in that state:
        Conflict otherwise, so two uploads of the same blob cannot both land)."""
        row = self._row(blob)
        sets = ", ".join(f"{c} = {m}" for c, m in zip(row, self._marks(row), strict=True))
        sql = f"UPDATE {self.TABLE} SET {sets} WHERE id = {self.P}"
        args = [*row.values(), blob.id]
        if state_was is not None:
            sql += f" AND state = {self.P}"
            args.append(state_was)
        with self._transaction() as db:
            count = db.execute(sql, args).rowcount
        if count == 0:
            if state_was is not None:
                raise Conflict(f"blob '{blob.id}' changed meanwhile: its data was sent already")
            raise not_found(blob.id)
        return blob

    def delete(self, blob_id: str) -> Blob:
        """Delete a record; the deleted one (its file is the caller's to remove)."""
        with self._transaction() as db:
            row = db.execute(
                f"DELETE FROM {self.TABLE} WHERE id = {self.P} RETURNING {self._doc_column()}",
                [blob_id],
            ).fetchone()
        if row is None:
            raise not_found(blob_id)
        return parse_blob(row[0])

    def expired(self, now: datetime, limit: int = 100) -> list[Blob]:
        """Blobs past their `expires` (to purge)."""
        rows = self._rows(
            f"SELECT {self._doc_column()} FROM {self.TABLE} WHERE expires <= {self.P}"
            f" ORDER BY expires LIMIT {int(limit)}",
            [self._time(now)],
        )
        return [parse_blob(doc) for (doc,) in rows]

    def search(self, query: BlobQuery, names: Sequence[str] | None, now: datetime) -> BlobPage:
        """A page of matching, unexpired blobs readable by `names` (None: all), newest first."""
        where = [f"(expires IS NULL OR expires > {self.P})"]
        args: list[Any] = [self._time(now)]
        for column, value in (
            ("namespace", query.namespace),
            ("name", query.name),
            ("storage_type", query.storage_type),
        ):
            if value is not None:
                where.append(f"{column} = {self.P}")
                args.append(value)
        if query.prefix:
            where.append(f"substr(name, 1, {len(query.prefix)}) = {self.P}")
            args.append(query.prefix)
        if query.start is not None:
            where.append(f"created >= {self.P}")
            args.append(self._time(query.start))
        if query.end is not None:
            where.append(f"created < {self.P}")
            args.append(self._time(query.end))
        extra = []
        if names is not None:
            extra.append(self._visible_sql(sorted(names)))
        if query.tags:
            extra.append(self._tags_sql(query.tags))
        if query.intersects is not None:
            extra.append(self._intersects_sql(query.intersects))
        if query.token:
            created, blob_id = decode_token(query.token)
            t = self._time(created)
            extra.append(
                (f"(created < {self.P} OR (created = {self.P} AND id < {self.P}))", [t, t, blob_id])
            )
        for sql, more in extra:
            where.append(sql)
            args.extend(more)
        rows = self._rows(
            f"SELECT {self._doc_column()} FROM {self.TABLE} WHERE {' AND '.join(where)}"
            f" ORDER BY created DESC, id DESC LIMIT {query.limit + 1}",
            args,
        )
        blobs = [parse_blob(doc) for (doc,) in rows]
        more = len(blobs) > query.limit
        blobs = blobs[: query.limit]
        return BlobPage(blobs=blobs, next_token=encode_token(blobs[-1]) if more else None)


SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY,
    storage_type TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    expires TEXT,
    minx REAL, miny REAL, maxx REAL, maxy REAL,
    geom BLOB,
    access TEXT NOT NULL,
    tags TEXT NOT NULL,
    doc TEXT NOT NULL,
    UNIQUE (namespace, name, storage_type)
)""",
    "CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS blobs_expires ON blobs (expires) WHERE expires IS NOT NULL",
]


class SQLiteBlobStore(BlobStore):
    """Blobs in the catalog's SQLite file: access entries and tags as JSON arrays, the
    geometry as WKB with its bounds (checked exactly by the catalog's spatial function)."""

    def __init__(self, connection, transaction):
        super().__init__(connection, transaction)
        with self._transaction() as db:
            for statement in SQLITE_SCHEMA:
                db.execute(statement)

    def _time(self, value: datetime) -> str:
        return sortable_time(value)

    def _row(self, blob: Blob) -> dict[str, Any]:
        bounds: tuple = (None, None, None, None)
        wkb = None
        if blob.geometry is not None:
            geometry = shape(blob.geometry)
            bounds, wkb = geometry.bounds, shapely.to_wkb(geometry)
        return {
            "id": blob.id,
            "storage_type": blob.storage_type,
            "namespace": blob.namespace,
            "name": blob.name,
            "state": blob.storage_state,
            "created": sortable_time(blob.created),
            "expires": sortable_time(blob.expires) if blob.expires else None,
            "minx": bounds[0],
            "miny": bounds[1],
            "maxx": bounds[2],
            "maxy": bounds[3],
            "geom": wkb,
            "access": json.dumps(_access_of(blob)),
            "tags": json.dumps(sorted(set(blob.tags))),
            "doc": blob.stored(),
        }

    def _visible_sql(self, names: Sequence[str]) -> tuple[str, list]:
        marks = ", ".join("?" * len(names))
        return f"EXISTS (SELECT 1 FROM json_each(access) WHERE value IN ({marks}))", list(names)

    def _tags_sql(self, tags: Sequence[str]) -> tuple[str, list]:
        wanted = sorted(set(tags))
        marks = ", ".join("?" * len(wanted))
        return (
            f"(SELECT count(DISTINCT value) FROM json_each(tags) WHERE value IN ({marks})) = ?",
            [*wanted, len(wanted)],
        )

    def _intersects_sql(self, geometry: dict) -> tuple[str, list]:
        area = shape(geometry)
        minx, miny, maxx, maxy = area.bounds
        return (
            "geom IS NOT NULL AND maxx >= ? AND minx <= ? AND maxy >= ? AND miny <= ?"
            " AND cql2_spatial('intersects', geom, ?) = 1",
            [minx, maxx, miny, maxy, shapely.to_wkb(area)],
        )

    def _is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)


POSTGRES_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS tileserver;
CREATE TABLE IF NOT EXISTS tileserver.blobs (
    id text PRIMARY KEY,
    storage_type text NOT NULL,
    namespace text NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    created timestamptz NOT NULL,
    expires timestamptz,
    geom geometry(Geometry, 4326),
    access text[] NOT NULL,
    tags text[] NOT NULL,
    doc jsonb NOT NULL,
    UNIQUE (namespace, name, storage_type)
);
CREATE INDEX IF NOT EXISTS blobs_created ON tileserver.blobs (created DESC, id DESC);
CREATE INDEX IF NOT EXISTS blobs_access ON tileserver.blobs USING gin (access);
CREATE INDEX IF NOT EXISTS blobs_tags ON tileserver.blobs USING gin (tags);
CREATE INDEX IF NOT EXISTS blobs_geom ON tileserver.blobs USING gist (geom);
"""


class PostgresBlobStore(BlobStore):
    """Blobs in the pgSTAC database's `tileserver` schema (created by its migration):
    access entries and tags as text arrays (GIN), the geometry in PostGIS (GiST)."""

    P = "%s"
    TABLE = "tileserver.blobs"

    def _doc_column(self) -> str:
        return "doc::text"

    def _row(self, blob: Blob) -> dict[str, Any]:
        return {
            "id": blob.id,
            "storage_type": blob.storage_type,
            "namespace": blob.namespace,
            "name": blob.name,
            "state": blob.storage_state,
            "created": blob.created,
            "expires": blob.expires,
            "geom": json.dumps(blob.geometry) if blob.geometry is not None else None,
            "access": _access_of(blob),
            "tags": sorted(set(blob.tags)),
            "doc": blob.stored(),
        }

    def _marks(self, row: dict) -> list[str]:
        kinds = {"geom": "ST_Force2D(ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326))", "doc": "%s::jsonb"}
        return [kinds.get(column, "%s") for column in row]

    def _visible_sql(self, names: Sequence[str]) -> tuple[str, list]:
        return "access && %s::text[]", [list(names)]

    def _tags_sql(self, tags: Sequence[str]) -> tuple[str, list]:
        return "tags @> %s::text[]", [sorted(set(tags))]

    def _intersects_sql(self, geometry: dict) -> tuple[str, list]:
        return (
            "ST_Intersects(geom, ST_Force2D(ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)))",
            [json.dumps(geometry)],
        )

    def _is_duplicate(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)


# --------------------------------------------------------------------------- access


def default_namespace(principal: Principal) -> str:
    """The Catalog's default: the caller's organisation and user."""
    if principal.org and principal.user:
        return f"{principal.org}:{principal.user}"
    return principal.org or principal.user or "default"


def may_use_namespace(principal: Principal, namespace: str) -> bool:
    """Admins write anywhere; others in their organisation's namespaces (`org`,
    `org:...`), or their user's when they have no organisation (as the Catalog)."""
    if principal.admin:
        return True
    head = principal.org or principal.user
    return bool(head) and (namespace == head or namespace.startswith(f"{head}:"))


class BlobAccess:
    """The blob store as one caller sees it (admins see everything)."""

    def __init__(self, store: BlobStore, principal: Principal):
        self.store, self.principal = store, principal

    def _live(self, blob: Blob) -> bool:
        return blob.expires is None or blob.expires > utcnow()

    def get(self, blob_id: str) -> Blob:
        """A readable, unexpired blob; NotFound for the others."""
        blob = self.store.get(blob_id)
        if not self._live(blob) or not self.principal.can_read(blob):
            raise not_found(blob_id)
        return blob

    def writable(self, blob_id: str) -> Blob:
        """A blob the caller may write (its data, its metadata); NotFound or Forbidden."""
        blob = self.get(blob_id)
        if not self.principal.can_write(blob):
            raise Forbidden(
                f"you may read blob '{blob_id}' but not change it: "
                "ask an owner to add you to its writers"
            )
        return blob

    def create(self, request: BlobRequest) -> Blob:
        """A new pending blob in a namespace the caller may use, owned by the caller unless
        the request names its owners."""
        if not self.principal.admin and not self.principal.user:
            raise Forbidden("anonymous callers cannot create blobs: send an API key")
        namespace = request.namespace or default_namespace(self.principal)
        if not may_use_namespace(self.principal, namespace):
            head = self.principal.org or self.principal.user
            raise Forbidden(f"namespace '{namespace}' is not yours: use '{head}' or '{head}:...'")
        if len(namespace.encode()) + len(request.name.encode()) > MAX_ID_BYTES:
            raise ValueError(TOO_LONG)
        if request.expires is not None and request.expires <= utcnow():
            raise ValueError("expires is in the past: the blob would be deleted at once")
        owners = request.owners
        if not owners and self.principal.user:
            owners = [f"user:{self.principal.user}"]
        now = utcnow()
        fields = request.model_dump(exclude={"namespace", "size", "md5", "owners"})
        blob = Blob(
            **fields,
            id=new_id(),
            namespace=namespace,
            owners=owners,
            size=request.size,
            md5=request.md5,
            created=now,
            modified=now,
        )
        return self.store.create(blob)

    def patch(self, blob_id: str, patch: BlobPatch) -> Blob:
        """Change a writable blob's metadata; its lists only by an owner."""
        blob = self.writable(blob_id)
        changes = {name: getattr(patch, name) for name in patch.model_fields_set}
        lists = {"owners", "writers", "readers"} & set(changes)
        if any(changes[n] != getattr(blob, n) for n in lists) and not self.principal.owns(blob):
            raise Forbidden("only an owner of the blob changes its owners, writers and readers")
        if "owners" in changes and blob.owners and not changes["owners"]:
            raise Forbidden("a blob keeps at least one owner: name the new owner first")
        if "tags" in changes and changes["tags"] is None:
            changes["tags"] = []
        for name in lists:
            changes[name] = changes[name] or []
        return self.store.update(blob.model_copy(update={**changes, "modified": utcnow()}))

    def delete(self, blob_id: str) -> Blob:
        """Owners delete; the deleted record."""
        blob = self.get(blob_id)
        if not self.principal.owns(blob):
            raise Forbidden(f"only an owner deletes blob '{blob_id}'")
        return self.store.delete(blob_id)

    def search(self, query: BlobQuery) -> BlobPage:
        """Matching blobs the caller may read."""
        names = None if self.principal.admin else self.principal.names
        return self.store.search(query, names, utcnow())
