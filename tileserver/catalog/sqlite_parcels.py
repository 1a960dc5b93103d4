"""Parcel layers kept in the catalog's own SQLite file (catalog.parcels has the rules).

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

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from tileserver.catalog.models import sortable_time, utcnow
from tileserver.catalog.parcels import (
    Dataset,
    LoadReport,
    Parcel,
    ParcelLayer,
    ParcelSource,
    ParcelStore,
    centroids,
    check_layer_name,
    ellipsoid_area,
)
from tileserver.catalog.store import NotFound

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


class SQLiteParcelStore(ParcelStore):
    """Parcel layers in the tables of a SQLite catalog file, through its store's connections."""

    def __init__(
        self,
        connection: Callable[[], sqlite3.Connection],
        transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
    ):
        # the store's: this thread's connection to the catalog file, and a write transaction
        # (which moves no image generation, so parcel loads leave cached mosaics valid)
        self._db, self._transaction = connection, transaction
        with self._transaction() as db:
            for statement in SCHEMA:
                db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(parcel_layers)")}
            for column, kind in (("aoi", "TEXT"), ("year", "INTEGER"), ("ptype", "TEXT")):
                if column not in have:  # a catalog file from before datasets
                    db.execute(f"ALTER TABLE parcel_layers ADD COLUMN {column} {kind}")

    def put_layer(
        self,
        name: str,
        source: ParcelSource,
        progress: bool = False,
        dataset: Dataset | None = None,
    ) -> LoadReport:
        """Store parcels as layer `name` in one transaction; an existing layer is replaced."""
        check_layer_name(name)
        geometries = source.geometries
        bounds = shapely.bounds(geometries)
        middle = centroids(geometries)
        count = len(source.ids)
        with self._transaction() as db:
            replaced = (
                db.execute("SELECT 1 FROM parcel_layers WHERE name = ?", (name,)).fetchone()
                is not None
            )
            db.execute("DELETE FROM parcels WHERE layer = ?", (name,))
            db.execute("DELETE FROM parcel_layers WHERE name = ?", (name,))
            db.execute(
                f"INSERT INTO parcel_layers ({LAYER_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    source.path,
                    source.source_layer,
                    source.source_crs,
                    source.id_field,
                    source.crop_field,
                    source.year_field,
                    count,
                    float(bounds[:, 0].min()),
                    float(bounds[:, 1].min()),
                    float(bounds[:, 2].max()),
                    float(bounds[:, 3].max()),
                    json.dumps(source.skipped),
                    sortable_time(utcnow()),
                    dataset.aoi if dataset else None,
                    dataset.year if dataset else None,
                    (dataset.ptype or None) if dataset else None,
                ),
            )
            rows = (
                (
                    name,
                    source.ids[i],
                    source.crops[i],
                    source.years[i],
                    ellipsoid_area(geometries[i]),
                    float(middle[i, 0]),
                    float(middle[i, 1]),
                    *(float(v) for v in bounds[i]),
                    shapely.to_wkb(geometries[i]),
                    json.dumps(source.properties[i]),
                )
                for i in tqdm(
                    range(count), desc=f"parcels {name}", unit="parcel", disable=not progress
                )
            )
            db.executemany(
                "INSERT INTO parcels (layer, pid, crop, year, area, clon, clat,"
                " minx, miny, maxx, maxy, geom, properties)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return LoadReport(self.get_layer(name), replaced, source.skipped_examples)

    def layers(self) -> list[ParcelLayer]:
        """Every layer, by name."""
        query = f"SELECT {LAYER_COLUMNS} FROM parcel_layers ORDER BY name"
        rows = self._db().execute(query).fetchall()
        return [self._layer(row) for row in rows]

    def get_layer(self, name: str) -> ParcelLayer:
        """One layer; NotFound names the known ones."""
        row = (
            self._db()
            .execute(f"SELECT {LAYER_COLUMNS} FROM parcel_layers WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            known = ", ".join(layer.name for layer in self.layers()) or "none loaded"
            raise NotFound(f"parcel layer '{name}' not found (layers: {known})")
        return self._layer(row)

    def delete(self, name: str) -> int:
        """Delete a layer and its parcels; returns how many parcels went."""
        with self._transaction() as db:
            if not db.execute("SELECT 1 FROM parcel_layers WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"parcel layer '{name}' not found")
            gone = db.execute("DELETE FROM parcels WHERE layer = ?", (name,)).rowcount
            db.execute("DELETE FROM parcel_layers WHERE name = ?", (name,))
        return gone

    def get(self, layer: str, pid: str, geometry: bool = False) -> Parcel:
        """A parcel by id; NotFound when the layer or the id is unknown."""
        self.get_layer(layer)
        row = (
            self._db()
            .execute(
                f"SELECT {PARCEL_COLUMNS} FROM parcels p WHERE p.layer = ? AND p.pid = ?",
                (layer, pid),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"parcel '{pid}' not found in layer '{layer}'")
        return self._parcel(row, geometry)

    def at(self, layer: str, lon: float, lat: float, geometry: bool = False) -> Parcel:
        """The parcel covering lon/lat; the first loaded wins where parcels overlap."""
        self.get_layer(layer)
        rows = self._db().execute(
            f"SELECT {PARCEL_COLUMNS} FROM parcels_rtree r JOIN parcels p ON p.fid = r.id"
            " WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?"
            " AND p.layer = ? ORDER BY p.fid",
            (lon, lon, lat, lat, layer),
        )
        for row in rows:
            if shapely.intersects_xy(shapely.from_wkb(row[-2]), lon, lat):
                return self._parcel(row, geometry)
        raise NotFound(f"no parcel of layer '{layer}' at lon {lon}, lat {lat}")

    def intersecting(
        self, layer: str, area: BaseGeometry, limit: int, geometry: bool = False
    ) -> list[Parcel]:
        """Parcels meeting `area` (WGS84), in load order, at most `limit` (R*Tree first)."""
        self.get_layer(layer)
        minx, miny, maxx, maxy = area.bounds
        rows = self._db().execute(
            f"SELECT {PARCEL_COLUMNS} FROM parcels_rtree r JOIN parcels p ON p.fid = r.id"
            " WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ?"
            " AND p.layer = ? ORDER BY p.fid",
            (maxx, minx, maxy, miny, layer),
        )
        shapely.prepare(area)
        found = []
        for row in rows:
            if area.intersects(shapely.from_wkb(row[-2])):
                found.append(self._parcel(row, geometry))
                if len(found) >= limit:
                    break
        return found

    @staticmethod
    def _layer(row: sqlite3.Row | tuple) -> ParcelLayer:
        (
            name,
            source,
            source_layer,
            source_crs,
            id_field,
            crop_field,
            year_field,
            count,
            minx,
            miny,
            maxx,
            maxy,
            skipped,
            loaded,
            aoi,
            year,
            ptype,
        ) = row
        return ParcelLayer(
            name=name,
            count=count,
            source=source,
            source_layer=source_layer,
            source_crs=source_crs,
            id_field=id_field,
            crop_field=crop_field,
            year_field=year_field,
            bbox=(minx, miny, maxx, maxy) if minx is not None else None,
            skipped=json.loads(skipped),
            loaded=loaded,
            aoi=aoi,
            year=year,
            ptype=ptype,
        )

    @staticmethod
    def _parcel(row: tuple, geometry: bool) -> Parcel:
        layer, pid, crop, year, area, clon, clat, minx, miny, maxx, maxy, wkb, props = row
        return Parcel(
            layer=layer,
            id=pid,
            crop_type=crop,
            year=year,
            area_m2=area,
            centroid_lon=clon,
            centroid_lat=clat,
            bbox=(minx, miny, maxx, maxy),
            properties=json.loads(props),
            geometry=mapping(shapely.from_wkb(wkb)) if geometry else None,
        )


LAYER_COLUMNS = (
    "name, source, source_layer, source_crs, id_field, crop_field, year_field, count,"
    " minx, miny, maxx, maxy, skipped, loaded, aoi, year, ptype"
)
PARCEL_COLUMNS = (
    "p.layer, p.pid, p.crop, p.year, p.area, p.clon, p.clat,"
    " p.minx, p.miny, p.maxx, p.maxy, p.geom, p.properties"
)
