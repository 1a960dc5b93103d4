"""Parcel layers kept in PostGIS tables of the pgSTAC catalog's database (catalog.parcels
has the rules and the SQL shared with SQLite, SQLParcelStore).

Tables, in the `tileserver` schema (created by pgstac.migrate):

- `parcel_layers`: as SQLite's (one row per layer, its source, fields, count, bbox, skips,
  load time, JRC CbM dataset).
- `parcels`: one row per parcel, as SQLite's, with the geometry as a PostGIS
  `geometry(Geometry, 4326)` under a GiST index, which finds the candidates of parcel by
  location, parcelsByPolygon and parcelPeers; (layer, pid) has a plain b-tree index and
  the duplicate check runs once a load has written its rows.

Batches go in with COPY (the geometry as hex EWKB text), so a load of millions of parcels
holds one batch in memory and makes one round trip per batch.
"""

from __future__ import annotations

import shapely

from tileserver.catalog.parcels import SQLParcelStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS tileserver.parcel_layers (
    name text PRIMARY KEY,
    source text NOT NULL,
    source_layer text,
    source_crs text,
    id_field text NOT NULL,
    crop_field text,
    year_field text,
    count bigint NOT NULL,
    minx float8, miny float8, maxx float8, maxy float8,
    skipped text NOT NULL,
    loaded text NOT NULL,
    aoi text,
    year integer,
    ptype text
);
CREATE TABLE IF NOT EXISTS tileserver.parcels (
    fid bigserial PRIMARY KEY,
    layer text NOT NULL REFERENCES tileserver.parcel_layers(name),
    pid text NOT NULL,
    crop text,
    year integer,
    area float8 NOT NULL,
    clon float8 NOT NULL,
    clat float8 NOT NULL,
    minx float8 NOT NULL, miny float8 NOT NULL, maxx float8 NOT NULL, maxy float8 NOT NULL,
    geom geometry(Geometry, 4326) NOT NULL,
    properties text NOT NULL
);
CREATE INDEX IF NOT EXISTS parcels_layer_pid ON tileserver.parcels (layer, pid);
CREATE INDEX IF NOT EXISTS parcels_geom ON tileserver.parcels USING gist (geom);
"""

COPY = (
    "COPY tileserver.parcels (layer, pid, crop, year, area, clon, clat,"
    " minx, miny, maxx, maxy, geom, properties) FROM STDIN"
)


def _ewkb(geometries):
    """Geometries as hex EWKB with SRID 4326: COPY's text form of a PostGIS geometry."""
    return shapely.to_wkb(shapely.set_srid(geometries, 4326), hex=True, include_srid=True)


class PostgisParcelStore(SQLParcelStore):
    """Parcel layers in PostGIS tables, through the pgSTAC store's connection pool."""

    P = "%s"
    LAYERS = "tileserver.parcel_layers"
    PARCELS = "tileserver.parcels"
    WKB = "ST_AsBinary(p.geom)"
    ENCODE = staticmethod(_ewkb)

    def put_layer(self, name, file, chunks, progress=False, dataset=None, copy_of=None):
        """As SQLParcelStore's, then fresh planner statistics: the planner chooses between
        the GiST index and the load order by how many parcels a box holds."""
        report = super().put_layer(name, file, chunks, progress, dataset, copy_of)
        with self._conn() as db:
            db.execute("ANALYZE tileserver.parcels")
        return report

    def _insert(self, db, name: str, rows: list[tuple]) -> None:
        with db.cursor() as cursor, cursor.copy(COPY) as copy:
            for row in rows:
                copy.write_row((name, *row))

    def _duplicates(self, db, name: str) -> tuple[int, list[tuple[str, int]]]:
        rows = db.execute(
            "SELECT pid, count(*), count(*) OVER () FROM tileserver.parcels WHERE layer = %s"
            " GROUP BY pid HAVING count(*) > 1 ORDER BY min(fid) LIMIT 5",
            (name,),
        ).fetchall()
        return (rows[0][2] if rows else 0), [(pid, n) for pid, n, _ in rows]

    def _candidates(self, db, layer: str, bounds: tuple):
        """Through the GiST index: the parcels whose bbox meets `bounds`, by fid, streamed
        from a server-side cursor so a search stopping early reads no more."""
        minx, miny, maxx, maxy = bounds
        cursor = db.cursor(name="parcel_candidates")
        cursor.itersize = 500
        return _streamed(
            db,
            cursor,
            f"SELECT {self.parcel_columns} FROM tileserver.parcels p"
            " WHERE p.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326) AND p.layer = %s"
            " ORDER BY p.fid",
            (minx, miny, maxx, maxy, layer),
        )


def _streamed(db, cursor, sql: str, params: tuple):
    """Rows of a named cursor, which lives in a transaction of its own on this connection."""
    with db.transaction():
        try:
            cursor.execute(sql, params)
            yield from cursor
        finally:
            cursor.close()
