"""Parcel layers (agricultural fields): read from files, kept by the catalog's parcel store.

A layer is read from a vector file with pyogrio (GeoJSON, GeoPackage, FlatGeobuf, any CRS),
reprojected to WGS84 and stored beside the images: `ParcelStore` is the interface, the
SQLite catalog keeps layers in its own file (catalog.sqlite_parcels), the pgSTAC catalog
in PostGIS tables of its database (catalog.postgis_parcels). A layer may be recorded as the
JRC CbM dataset of an area of interest, a year and a parcel type (`aoi`, `year`, `ptype`),
which is how the /query/ services address it.

Load rules: one transaction per load, so reloading a layer replaces it atomically (readers
see the old layer until the commit). Features without a geometry, with an empty or a
non-polygonal geometry, with an invalid polygon (unless `make_valid`) or without an id are
skipped and counted per reason (`strict` refuses the load instead); duplicate ids refuse
the load, since which one is meant cannot be known.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy
import pyogrio
import pyogrio.raw
import shapely
from pydantic import BaseModel, Field
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry.base import BaseGeometry

from tileserver.catalog.models import NAME_PATTERN

# attribute names tried, case-insensitively and in this order, when no field is named
ID_FIELDS = ("id", "pid", "parcel_id", "parcelid", "parcel", "field_id")
CROP_FIELDS = ("crop", "crop_type", "croptype", "cropname", "crop_name", "cropcode", "crop_code")
YEAR_FIELDS = ("year", "crop_year", "cropyear", "yr")
FID = "fid"  # --id-field naming the file's feature ids (GeoJSON "id", GeoPackage fid column)
EXAMPLES = 5  # ids named per skip reason and per duplicate report

GEOD = Geod(ellps="WGS84")
WGS84 = CRS.from_epsg(4326)


class LoadError(ValueError):
    """A parcel file that cannot be loaded as asked; the message says what to change."""


class AmbiguousLayer(ValueError):
    """Several parcel layers match a dataset address; the message says what to add."""


class ParcelLayer(BaseModel):
    """A loaded parcel layer and how it was loaded."""

    name: str
    count: int = Field(description="parcels stored")
    source: str = Field(description="the file it was loaded from")
    source_layer: str | None = None
    source_crs: str | None = None
    id_field: str
    crop_field: str | None = None
    year_field: str | None = None
    bbox: tuple[float, float, float, float] | None = Field(None, description="WGS84")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="features not stored, per reason"
    )
    loaded: str = Field(description="load time, UTC")
    aoi: str | None = Field(None, description="JRC CbM area of interest, e.g. 'nl'")
    year: int | None = Field(None, description="JRC CbM dataset year")
    ptype: str | None = Field(None, description="JRC CbM parcel type, e.g. 'b'")


class Parcel(BaseModel):
    """One parcel: the answer of parcelByLocation / parcel by id."""

    layer: str
    id: str
    crop_type: str | None = None
    year: int | None = None
    area_m2: float = Field(description="area on the WGS84 ellipsoid, square metres")
    centroid_lon: float
    centroid_lat: float
    bbox: tuple[float, float, float, float] = Field(description="WGS84")
    properties: dict[str, Any] = Field(
        default_factory=dict, description="the file's other attributes"
    )
    geometry: dict[str, Any] | None = Field(None, description="GeoJSON, WGS84, when asked")

    def shape(self) -> BaseGeometry:
        """The parcel's WGS84 polygon (needs the geometry)."""
        if self.geometry is None:
            raise ValueError("parcel read without its geometry")
        return shapely.geometry.shape(self.geometry)


@dataclass
class ParcelSource:
    """Parcels read from a file, reprojected and checked, ready to store."""

    path: str
    source_layer: str | None
    source_crs: str
    id_field: str
    crop_field: str | None
    year_field: str | None
    ids: list[str]
    crops: list[str | None]
    years: list[int | None]
    geometries: numpy.ndarray  # shapely polygons/multipolygons, WGS84
    properties: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the layer stored, whether it replaced one, what was skipped."""

    layer: ParcelLayer
    replaced: bool
    skipped_examples: dict[str, list[str]]

    def as_dict(self) -> dict:
        """A JSON-able summary for the command line."""
        return {
            "layer": self.layer.name,
            "loaded": self.layer.count,
            "replaced": self.replaced,
            "skipped": self.layer.skipped,
            "skipped_examples": self.skipped_examples,
        }


# reading files


def _pick_field(
    fields: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: str
) -> str | None:
    """The file's field for `what`: the one named (any case), else the first candidate found."""
    by_lower = {f.lower(): f for f in fields}
    if wanted is not None:
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise LoadError(
            f"{path} has no {what} field '{wanted}' (fields: {', '.join(fields) or 'none'})"
        )
    return next((by_lower[c] for c in candidates if c in by_lower), None)


def _source_layer(path: str, wanted: str | None) -> str | None:
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except pyogrio.errors.DataSourceError as exc:
        raise LoadError(f"cannot read {path}: {exc}") from None
    if wanted is not None:
        if wanted not in layers:
            raise LoadError(f"{path} has no layer '{wanted}' (layers: {', '.join(layers)})")
        return wanted
    if len(layers) > 1:
        raise LoadError(
            f"{path} has {len(layers)} layers ({', '.join(layers)}): choose one with --source-layer"
        )
    return layers[0] if layers else None


def _text_id(value: Any) -> str | None:
    """A parcel id as text: 12, 12.0 and '12' are all '12'; None, NaN and '' are no id."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float | numpy.floating):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, numpy.generic):
        value = value.item()
    text = str(value).strip()
    return text or None


def _year(value: Any, pid: str, field_name: str) -> int | None:
    if value is None or (isinstance(value, float | numpy.floating) and math.isnan(value)):
        return None
    if isinstance(value, datetime | date | numpy.datetime64):
        return int(str(value)[:4])
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise LoadError(f"year field '{field_name}' holds '{value}' for parcel '{pid}': not a year")
    return int(number)


def _jsonable(value: Any) -> Any:
    """An attribute value as JSON: numpy scalars unwrapped, dates as ISO text, NaN as None."""
    if isinstance(value, numpy.generic):
        value = value.item() if not isinstance(value, numpy.datetime64) else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, numpy.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    return value


@lru_cache(maxsize=64)
def _to_wgs84(crs_text: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(crs_text), WGS84, always_xy=True)


def reproject_to_wgs84(geometries: numpy.ndarray, crs: str) -> numpy.ndarray:
    """Shapely geometries from `crs` to WGS84 lon/lat (None and empty stay as they are)."""
    transformer = _to_wgs84(crs)

    def move(xy: numpy.ndarray) -> numpy.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return numpy.column_stack([x, y])

    return shapely.transform(geometries, move)


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygonal part of a repaired geometry (make_valid may add lines and points)."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [
        g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")
    ]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _skip_reason(geometry: BaseGeometry | None, make_valid: bool) -> tuple[str | None, Any]:
    """Why a feature cannot be stored (None: it can), and its geometry, repaired if asked."""
    if geometry is None:
        return "no geometry", None
    if geometry.is_empty:
        return "empty geometry", None
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        return f"not a polygon ({geometry.geom_type})", None
    if not geometry.is_valid:
        if make_valid:
            repaired = _polygonal(shapely.make_valid(geometry))
            if not repaired.is_empty and repaired.is_valid:
                return None, repaired
        reason = shapely.is_valid_reason(geometry).split("[")[0]
        return f"invalid geometry ({reason})", None
    return None, geometry


def read_parcels(
    path: str | Path,
    id_field: str | None = None,
    crop_field: str | None = None,
    year_field: str | None = None,
    source_layer: str | None = None,
    crs: str | None = None,
    make_valid: bool = False,
    strict: bool = False,
) -> ParcelSource:
    """Read a parcel file with pyogrio: WGS84 polygons, ids, crop types, years.

    Fields are found by name (any case) or among ID_FIELDS / CROP_FIELDS / YEAR_FIELDS;
    `id_field="fid"` uses the file's feature ids. `crs` is the file's CRS when it declares
    none (or overrides the declared one). Skips are counted per reason; `strict` turns any
    skip into a LoadError. Duplicate ids are always a LoadError.
    """
    path = str(path)
    layer = _source_layer(path, source_layer)
    info = pyogrio.read_info(path, layer=layer)
    fields = [str(f) for f in info["fields"]]
    fid_column = info.get("fid_column") or ""
    use_fids = (
        id_field is not None
        and id_field.lower() in (FID, fid_column.lower())
        and (id_field.lower() not in {f.lower() for f in fields})
    )
    if use_fids:
        id_name = fid_column or FID
    else:
        id_name = _pick_field(fields, id_field, ID_FIELDS, "id", path)
        if id_name is None:
            raise LoadError(
                f"{path} has no parcel id field (tried {', '.join(ID_FIELDS)}; fields: "
                f"{', '.join(fields) or 'none'}): name one with --id-field, or --id-field fid "
                "for the feature ids"
            )
    crop_name = _pick_field(fields, crop_field, CROP_FIELDS, "crop", path)
    year_name = _pick_field(fields, year_field, YEAR_FIELDS, "year", path)

    try:
        meta, fids, wkb, columns = pyogrio.raw.read(path, layer=layer, return_fids=True)
    except pyogrio.errors.DataSourceError as exc:
        raise LoadError(f"cannot read {path}: {exc}") from None
    source_crs = crs or meta.get("crs")
    if not source_crs:
        raise LoadError(f"{path} declares no CRS: give it with --crs (e.g. EPSG:32633)")
    try:
        CRS.from_user_input(source_crs)
    except CRSError as exc:
        raise LoadError(f"unknown CRS '{source_crs}': {exc}") from None
    values = dict(zip([str(f) for f in meta["fields"]], columns, strict=True))
    raw_ids = fids if use_fids else values[id_name]
    geometries = shapely.force_2d(shapely.from_wkb(numpy.asarray(wkb, dtype=object)))
    geometries = reproject_to_wgs84(geometries, str(source_crs))

    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    kept: list[int] = []
    ids: list[str] = []
    polygons: list[BaseGeometry] = []
    for index, geometry in enumerate(geometries):
        pid = _text_id(raw_ids[index])
        reason, polygon = _skip_reason(geometry, make_valid)
        if reason is None and pid is None:
            reason = "no id"
        if reason is not None:
            skipped[reason] += 1
            named = examples.setdefault(reason, [])
            if len(named) < EXAMPLES:
                named.append(pid if pid is not None else f"feature #{index}")
            continue
        kept.append(index)
        ids.append(pid)
        polygons.append(polygon)
    if strict and skipped:
        problems = "; ".join(
            f"{n} {reason} (e.g. {', '.join(examples[reason])})" for reason, n in skipped.items()
        )
        raise LoadError(f"{path}: refusing to skip features (strict): {problems}")
    repeats = {pid: n for pid, n in Counter(ids).items() if n > 1}
    if repeats:
        some = ", ".join(f"'{pid}' ({n}x)" for pid, n in list(repeats.items())[:EXAMPLES])
        raise LoadError(
            f"{path}: {len(repeats)} parcel ids appear more than once in field '{id_name}', "
            f"e.g. {some}; ids must be unique (choose another field with --id-field)"
        )
    if not kept:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "no features"
        raise LoadError(f"{path} holds no parcel to load ({reasons})")

    used = {id_name, crop_name, year_name}
    others = [name for name in values if name not in used]
    return ParcelSource(
        path=str(Path(path).resolve()) if Path(path).exists() else path,
        source_layer=layer,
        source_crs=str(source_crs),
        id_field=id_name,
        crop_field=crop_name,
        year_field=year_name,
        ids=ids,
        crops=[_text_id(values[crop_name][i]) if crop_name else None for i in kept],
        years=[
            _year(values[year_name][i], ids[n], year_name) if year_name else None
            for n, i in enumerate(kept)
        ],
        geometries=numpy.array(polygons, dtype=object),
        properties=[{name: _jsonable(values[name][i]) for name in others} for i in kept],
        skipped=dict(skipped),
        skipped_examples=examples,
    )


# measures


def ellipsoid_area(geometry: BaseGeometry) -> float:
    """Area in m2 on the WGS84 ellipsoid of a lon/lat (multi)polygon, holes subtracted
    whatever the rings' orientation (pyproj's geometry_area_perimeter relies on it)."""

    def ring(coords) -> float:
        return abs(GEOD.polygon_area_perimeter(*coords.xy)[0])

    return sum(
        ring(part.exterior) - sum(ring(hole) for hole in part.interiors)
        for part in getattr(geometry, "geoms", [geometry])
    )


def utm_epsg(lon: float, lat: float) -> int:
    """The EPSG code of the UTM zone holding lon/lat (WGS84 / UTM, north 326xx, south 327xx)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def centroids(geometries: numpy.ndarray) -> numpy.ndarray:
    """Centroids (lon, lat) of lon/lat polygons, computed in each one's local UTM zone."""
    rough = shapely.get_coordinates(shapely.centroid(geometries))
    out = numpy.empty_like(rough)
    zones = numpy.array([utm_epsg(lon, lat) for lon, lat in rough])
    for epsg in numpy.unique(zones):
        where = zones == epsg
        forward = Transformer.from_crs(WGS84, CRS.from_epsg(int(epsg)), always_xy=True)
        projected = shapely.transform(
            geometries[where], lambda xy, t=forward: numpy.column_stack(t.transform(*xy.T))
        )
        x, y = shapely.get_coordinates(shapely.centroid(projected)).T
        out[where] = numpy.column_stack(forward.transform(x, y, direction="INVERSE"))
    return out


# storage

NO_PARCELS = "this catalog keeps no parcel layers"
MAX_CANDIDATES = 10_000  # parcels a peer search may examine around its parcel
AOI_PATTERN = r"^[A-Za-z0-9]{1,20}$"
PTYPE_PATTERN = r"^[A-Za-z0-9]{1,20}$"


@dataclass(frozen=True)
class Dataset:
    """The JRC CbM address of a layer: area of interest, year, parcel type ('' for none)."""

    aoi: str
    year: int
    ptype: str = ""

    def __post_init__(self) -> None:
        if not re.match(AOI_PATTERN, self.aoi):
            raise LoadError(f"aoi '{self.aoi}' must be 1-20 letters or digits")
        if not 1900 <= self.year <= 2200:
            raise LoadError(f"year {self.year} is not a year")
        if self.ptype and not re.match(PTYPE_PATTERN, self.ptype):
            raise LoadError(f"ptype '{self.ptype}' must be 1-20 letters or digits")

    @property
    def default_name(self) -> str:
        """The layer name a load gives it unless told otherwise: nl_2024, nl_2024_b."""
        return f"{self.aoi}_{self.year}" + (f"_{self.ptype}" if self.ptype else "")

    def matches(self, layer: ParcelLayer) -> bool:
        """Whether `layer` was loaded as this dataset (aoi compared without case)."""
        return (
            layer.aoi is not None
            and layer.aoi.lower() == self.aoi.lower()
            and layer.year == self.year
            and (layer.ptype or "") == self.ptype
        )


class ParcelStore:
    """Where parcel layers are kept: the interface every catalog backend implements.

    Loads replace a layer atomically (readers see the old one until the commit) and move no
    image generation, so cached mosaics stay valid.
    """

    def load(
        self,
        name: str | None,
        path: str | Path,
        progress: bool = False,
        dataset: Dataset | None = None,
        **options,
    ) -> LoadReport:
        """Read a file (read_parcels options) and store it as layer `name` (default: the
        dataset's name), replacing it; `dataset` records its aoi/year/ptype."""
        if name is None:
            if dataset is None:
                raise LoadError("name the layer, or give its aoi and year")
            name = dataset.default_name
        check_layer_name(name)
        if dataset is not None:
            taken = [
                layer.name
                for layer in self.layers()
                if layer.name != name and dataset.matches(layer)
            ]
            if taken:
                raise LoadError(
                    f"layer '{taken[0]}' already holds aoi {dataset.aoi}, year {dataset.year}"
                    + (f", ptype {dataset.ptype}" if dataset.ptype else "")
                    + ": delete it or load under its name"
                )
        return self.put_layer(name, read_parcels(path, **options), progress, dataset)

    def put_layer(
        self,
        name: str,
        source: ParcelSource,
        progress: bool = False,
        dataset: Dataset | None = None,
    ) -> LoadReport:
        """Store parcels as layer `name` in one transaction; an existing layer is replaced."""
        raise NotImplementedError

    def find_layer(self, aoi: str, year: int | None = None, ptype: str = "") -> ParcelLayer:
        """The layer loaded as dataset aoi/year/ptype. Without a year, the only layer of
        that aoi and ptype; NotFound when none matches, AmbiguousLayer when several do."""
        from tileserver.catalog.store import NotFound

        found = [
            layer
            for layer in self.layers()
            if layer.aoi is not None
            and layer.aoi.lower() == aoi.lower()
            and (year is None or layer.year == year)
            and (layer.ptype or "") == (ptype or "")
        ]
        if len(found) == 1:
            return found[0]
        what = f"aoi '{aoi}'" + (f", year {year}" if year is not None else "")
        what += f", ptype '{ptype}'" if ptype else ""
        if not found:
            raise NotFound(f"no parcel layer for {what}")
        years = ", ".join(str(layer.year) for layer in found)
        raise AmbiguousLayer(f"{len(found)} parcel layers for {what} (years {years}): give year")

    def intersecting(
        self, layer: str, area: BaseGeometry, limit: int, geometry: bool = False
    ) -> list[Parcel]:
        """Parcels meeting `area` (WGS84), in load order, at most `limit`; through the
        store's spatial index."""
        raise NotImplementedError

    def peers(
        self, layer: str, pid: str, distance: float, limit: int, min_area: float = 3000.0
    ) -> list[tuple[Parcel, float]]:
        """Parcels of the same crop as `pid` within `distance` metres of it (polygon to
        polygon, in its UTM zone), larger than `min_area` m2, nearest first, at most `limit`.

        Candidates come from the spatial index (the parcel's bbox grown by `distance`)."""
        parcel = self.get(layer, pid, geometry=True)
        if parcel.crop_type is None:
            return []
        lat = max(abs(parcel.bbox[1]), abs(parcel.bbox[3]))
        dlat = distance / 110_000 * 1.01
        dlon = dlat / max(math.cos(math.radians(min(lat + dlat, 89.9))), 1e-6)
        minx, miny, maxx, maxy = parcel.bbox
        box = shapely.box(minx - dlon, miny - dlat, maxx + dlon, maxy + dlat)
        found = [
            p
            for p in self.intersecting(layer, box, MAX_CANDIDATES + 1, geometry=True)
            if p.id != parcel.id and p.crop_type == parcel.crop_type and p.area_m2 > min_area
        ]
        if not found:
            return []
        epsg = utm_epsg(parcel.centroid_lon, parcel.centroid_lat)
        forward = Transformer.from_crs(WGS84, CRS.from_epsg(epsg), always_xy=True)

        def projected(shapes):
            return shapely.transform(
                numpy.array(shapes, dtype=object),
                lambda xy: numpy.column_stack(forward.transform(*xy.T)),
            )

        here = projected([parcel.shape()])[0]
        distances = shapely.distance(projected([p.shape() for p in found]), here)
        ranked = sorted(((float(d), n) for n, d in enumerate(distances) if d <= distance))
        return [(found[n].model_copy(update={"geometry": None}), d) for d, n in ranked[:limit]]

    def layers(self) -> list[ParcelLayer]:
        """Every layer, by name."""
        raise NotImplementedError

    def get_layer(self, name: str) -> ParcelLayer:
        """One layer; NotFound names the known ones."""
        raise NotImplementedError

    def delete(self, name: str) -> int:
        """Delete a layer and its parcels; returns how many parcels went."""
        raise NotImplementedError

    def get(self, layer: str, pid: str, geometry: bool = False) -> Parcel:
        """A parcel by id; NotFound when the layer or the id is unknown."""
        raise NotImplementedError

    def at(self, layer: str, lon: float, lat: float, geometry: bool = False) -> Parcel:
        """The parcel covering lon/lat (a point in a hole is outside); the first loaded wins
        where parcels overlap. NotFound when none does."""
        raise NotImplementedError


def check_layer_name(name: str) -> None:
    """A layer name is a path segment of the API: letters, digits, '.', '_' or '-'."""
    if not re.match(NAME_PATTERN, name) or len(name) > 200:
        raise LoadError(f"layer name '{name}' must be letters, digits, '.', '_' or '-'")
