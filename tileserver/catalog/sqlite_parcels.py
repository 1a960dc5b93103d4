"""Parcel layers kept in the catalog's own SQLite file (catalog.parcels has the rules and
the SQL shared with PostGIS, SQLParcelStore).

Tables (created with the store, in the catalog file):

- `parcel_layers`: one row per layer: name, source file and layer, source CRS, the
  attribute fields used, parcel count, bbox, what was skipped and why (JSON), load time,
  and the JRC CbM dataset it was loaded as (aoi, year, ptype; columns added to older files).
- `parcels`: one row per parcel: layer, id (text), crop type (text), year (integer),
  area in m2 (on the WGS84 ellipsoid), centroid lon/lat, bbox, geometry (WKB, WGS84) and
  the file's other attributes (JSON); (layer, pid) is unique.
- `parcels_rtree`: an R*Tree over the parcels' bboxes, kept by triggers.
"""

from __future__ import annotations

import sqlite3

from tileserver.catalog.parcels import SQLParcelStore

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS parcel_layers (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    source_layer TEXT,
    source_crs TEXT,
    id_field TEXT NOT NULL,
    crop_field TEXT,
    year_field TEXT,
    count INTEGER NOT NULL,
    minx REAL, miny REAL, maxx REAL, maxy REAL,
    skipped TEXT NOT NULL,
    loaded TEXT NOT NULL,
    aoi TEXT,
    year INTEGER,
    ptype TEXT
)""",
    """CREATE TABLE IF NOT EXISTS parcels (
    fid INTEGER PRIMARY KEY,
    layer TEXT NOT NULL REFERENCES parcel_layers(name),
    pid TEXT NOT NULL,
    crop TEXT,
    year INTEGER,
    area REAL NOT NULL,
    clon REAL NOT NULL,
    clat REAL NOT NULL,
    minx REAL NOT NULL, miny REAL NOT NULL, maxx REAL NOT NULL, maxy REAL NOT NULL,
    geom BLOB NOT NULL,
    properties TEXT NOT NULL,
    UNIQUE (layer, pid)
)""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS parcels_rtree USING rtree(id, minx, maxx, miny, maxy)",
    """CREATE TRIGGER IF NOT EXISTS parcels_rtree_insert AFTER INSERT ON parcels BEGIN
    INSERT INTO parcels_rtree VALUES (new.fid, new.minx, new.maxx, new.miny, new.maxy);
END""",
    """CREATE TRIGGER IF NOT EXISTS parcels_rtree_delete AFTER DELETE ON parcels BEGIN
    DELETE FROM parcels_rtree WHERE id = old.fid;
END""",
]


def create_schema(db: sqlite3.Connection) -> None:
    """The parcel tables in a catalog file, in the caller's transaction."""
    for statement in SCHEMA:
        db.execute(statement)
    have = {row[1] for row in db.execute("PRAGMA table_info(parcel_layers)")}
    for column, kind in (("aoi", "TEXT"), ("year", "INTEGER"), ("ptype", "TEXT")):
        if column not in have:  # a catalog file from before datasets
            db.execute(f"ALTER TABLE parcel_layers ADD COLUMN {column} {kind}")


class SQLiteParcelStore(SQLParcelStore):
    """Parcel layers in the tables of a SQLite catalog file, through its store's connections.

    Ids are unique per layer by constraint, so a batch is written with INSERT OR IGNORE and
    its ids also go to a temporary table where the duplicate check counts them.
    """

    P = "?"
    LAYERS = "parcel_layers"
    PARCELS = "parcels"
    WKB = "p.geom"

    def _insert(self, db: sqlite3.Connection, name: str, rows: list[tuple]) -> None:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS parcel_load_ids (pid TEXT NOT NULL)")
        db.executemany("INSERT INTO temp.parcel_load_ids VALUES (?)", [(r[0],) for r in rows])
        db.executemany(
            "INSERT OR IGNORE INTO parcels (layer, pid, crop, year, area, clon, clat,"
            " minx, miny, maxx, maxy, geom, properties)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(name, *row) for row in rows],
        )

    def _duplicates(self, db: sqlite3.Connection, name: str) -> tuple[int, list[tuple[str, int]]]:
        rows = db.execute(
            "SELECT pid, count(*), count(*) OVER () FROM temp.parcel_load_ids GROUP BY pid"
            " HAVING count(*) > 1 ORDER BY min(rowid) LIMIT 5"
        ).fetchall()
        db.execute("DROP TABLE temp.parcel_load_ids")
        return (rows[0][2] if rows else 0), [(pid, n) for pid, n, _ in rows]

    def _candidates(self, db: sqlite3.Connection, layer: str, bounds: tuple):
        minx, miny, maxx, maxy = bounds
        return db.execute(
            f"SELECT {self.parcel_columns} FROM parcels_rtree r JOIN parcels p ON p.fid = r.id"
            " WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?"
            " AND p.layer = ? ORDER BY p.fid",
            (maxx, minx, maxy, miny, layer),
        )
