"""Parcel layers (agricultural fields): read from files, kept by the catalog's parcel store.

A layer is read from a vector file with pyogrio (GeoJSON, GeoPackage, FlatGeobuf, any CRS),
reprojected to WGS84 and stored beside the images: `ParcelStore` is the interface, the
SQLite catalog keeps layers in its own file (catalog.sqlite_parcels), the pgSTAC catalog
in PostGIS tables of its database (catalog.postgis_parcels). A layer may be recorded as the
JRC CbM dataset of an area of interest, a year and a parcel type (`aoi`, `year`, `ptype`),
which is how the /query/ services address it.

Load rules: one transaction per load, so reloading a layer replaces it atomically (readers
see the old layer until the commit). The file is read, checked and written BATCH features at
a time, so memory holds one batch whatever the file's size; ids repeating across batches
are found by the database once every row is written. Features without a geometry, with an empty or a
non-polygonal geometry, with an invalid polygon (unless `make_valid`) or without an id are
skipped and counted per reason (`strict` refuses the load instead); duplicate ids refuse
the load, since which one is meant cannot be known.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing
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
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from tileserver.catalog.models import NAME_PATTERN
from tileserver.catalog.store import NotFound
from tileserver.deadline import check

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
    read: int = 0  # features of the file this batch covers, skipped ones included


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


BATCH = 20_000  # features read, checked and written at a time: loads hold one batch


@dataclass(frozen=True)
class ParcelFile:
    """A parcel file opened for reading: which layer and fields hold what, and its CRS."""

    path: str
    source_layer: str | None
    source_crs: str
    id_field: str
    crop_field: str | None
    year_field: str | None
    use_fids: bool = False
    features: int | None = None  # as the driver counts them (None: unknown)


def header(file: ParcelFile) -> dict[str, Any]:
    """What every batch of a file repeats: where it came from and which fields were used."""
    return {
        "path": file.path,
        "source_layer": file.source_layer,
        "source_crs": file.source_crs,
        "id_field": file.id_field,
        "crop_field": file.crop_field,
        "year_field": file.year_field,
    }


def layer_file(layer: ParcelLayer) -> ParcelFile:
    """The file a stored layer was loaded from, as its record tells (copies between stores)."""
    return ParcelFile(
        path=layer.source,
        source_layer=layer.source_layer,
        source_crs=layer.source_crs or "EPSG:4326",
        id_field=layer.id_field,
        crop_field=layer.crop_field,
        year_field=layer.year_field,
        features=layer.count,
    )


def open_parcels(
    path: str | Path,
    id_field: str | None = None,
    crop_field: str | None = None,
    year_field: str | None = None,
    source_layer: str | None = None,
    crs: str | None = None,
) -> ParcelFile:
    """Find a parcel file's layer, id / crop / year fields and CRS, reading no feature.

    Fields are found by name (any case) or among ID_FIELDS / CROP_FIELDS / YEAR_FIELDS;
    `id_field="fid"` uses the file's feature ids. `crs` is the file's CRS when it declares
    none (or overrides the declared one).
    """
    path = str(path)
    layer = _source_layer(path, source_layer)
    try:
        info = pyogrio.read_info(path, layer=layer)
    except pyogrio.errors.DataSourceError as exc:
        raise LoadError(f"cannot read {path}: {exc}") from None
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
    source_crs = crs or info.get("crs")
    if not source_crs:
        raise LoadError(f"{path} declares no CRS: give it with --crs (e.g. EPSG:32633)")
    try:
        CRS.from_user_input(source_crs)
    except CRSError as exc:
        raise LoadError(f"unknown CRS '{source_crs}': {exc}") from None
    features = info.get("features")
    return ParcelFile(
        path=str(Path(path).resolve()) if Path(path).exists() else path,
        source_layer=layer,
        source_crs=str(source_crs),
        id_field=id_name,
        crop_field=_pick_field(fields, crop_field, CROP_FIELDS, "crop", path),
        year_field=_pick_field(fields, year_field, YEAR_FIELDS, "year", path),
        use_fids=use_fids,
        features=features if isinstance(features, int) and features >= 0 else None,
    )


def read_batches(
    file: ParcelFile, make_valid: bool = False, strict: bool = False, batch: int = BATCH
) -> Iterator[ParcelSource]:
    """The file's parcels, `batch` features at a time: WGS84 polygons, ids, crops, years.

    Each batch counts what it skipped per reason; `strict` turns the first skip into a
    LoadError. Ids are not compared across batches here: the stores check duplicates in
    their database once the layer is written (`ParcelStore.put_layer`).
    """
    offset = 0
    while True:
        try:
            meta, fids, wkb, columns = pyogrio.raw.read(
                file.path,
                layer=file.source_layer,
                return_fids=True,
                skip_features=offset,
                max_features=batch,
            )
        except pyogrio.errors.DataSourceError as exc:
            raise LoadError(f"cannot read {file.path}: {exc}") from None
        if len(wkb) == 0:
            return
        chunk = _checked(file, meta, fids, wkb, columns, offset, make_valid)
        if strict and chunk.skipped:
            problems = "; ".join(
                f"{n} {reason} (e.g. {', '.join(chunk.skipped_examples[reason])})"
                for reason, n in chunk.skipped.items()
            )
            raise LoadError(f"{file.path}: refusing to skip features (strict): {problems}")
        chunk.read = len(wkb)
        yield chunk
        offset += len(wkb)
        if len(wkb) < batch:
            return


def _checked(
    file: ParcelFile, meta: dict, fids, wkb, columns, offset: int, make_valid: bool
) -> ParcelSource:
    """One batch of features as storable parcels, the others counted per skip reason."""
    values = dict(zip([str(f) for f in meta["fields"]], columns, strict=True))
    raw_ids = fids if file.use_fids else values[file.id_field]
    geometries = shapely.force_2d(shapely.from_wkb(numpy.asarray(wkb, dtype=object)))
    geometries = reproject_to_wgs84(geometries, file.source_crs)
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
                named.append(pid if pid is not None else f"feature #{offset + index}")
            continue
        kept.append(index)
        ids.append(pid)
        polygons.append(polygon)
    crop_name, year_name = file.crop_field, file.year_field
    used = {file.id_field, crop_name, year_name}
    others = [name for name in values if name not in used]
    return ParcelSource(
        **header(file),
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


def duplicates_error(path: str, id_field: str, repeats: int, examples) -> LoadError:
    """The refusal of a file whose ids repeat: how many, and some with their counts."""
    some = ", ".join(f"'{pid}' ({n}x)" for pid, n in examples[:EXAMPLES])
    return LoadError(
        f"{path}: {repeats} parcel ids appear more than once in field '{id_field}', "
        f"e.g. {some}; ids must be unique (choose another field with --id-field)"
    )


def nothing_error(path: str, skipped: dict[str, int]) -> LoadError:
    """The refusal of a file with no storable parcel."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "no features"
    return LoadError(f"{path} holds no parcel to load ({reasons})")


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
    """A whole parcel file in memory, checked as a load checks it (small files and tests;
    loads stream it with open_parcels + read_batches)."""
    file = open_parcels(path, id_field, crop_field, year_field, source_layer, crs)
    tally = Tally()
    chunks = [tally.add(chunk) for chunk in read_batches(file, make_valid, strict)]
    repeats = {pid: n for pid, n in Counter(p for c in chunks for p in c.ids).items() if n > 1}
    if repeats:
        raise duplicates_error(file.path, file.id_field, len(repeats), list(repeats.items()))
    if not tally.count:
        raise nothing_error(file.path, tally.skipped)
    return ParcelSource(
        **header(file),
        ids=[p for c in chunks for p in c.ids],
        crops=[p for c in chunks for p in c.crops],
        years=[p for c in chunks for p in c.years],
        geometries=numpy.concatenate([c.geometries for c in chunks]),
        properties=[p for c in chunks for p in c.properties],
        skipped=dict(tally.skipped),
        skipped_examples=tally.examples,
    )


class Tally:
    """What a load has stored so far: parcels, their bbox, skips per reason."""

    def __init__(self) -> None:
        self.count = 0
        self.bbox: list[float] = [math.inf, math.inf, -math.inf, -math.inf]
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, chunk: ParcelSource) -> ParcelSource:
        """Count a batch in; the batch itself back."""
        self.count += len(chunk.ids)
        if len(chunk.ids):
            bounds = shapely.bounds(chunk.geometries)
            low, high = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
            self.bbox = [
                min(self.bbox[0], float(low[0])),
                min(self.bbox[1], float(low[1])),
                max(self.bbox[2], float(high[0])),
                max(self.bbox[3], float(high[1])),
            ]
        self.skipped.update(chunk.skipped)
        for reason, named in chunk.skipped_examples.items():
            room = EXAMPLES - len(self.examples.setdefault(reason, []))
            self.examples[reason].extend(named[:room])
        return chunk


# measures


def ellipsoid_area(geometry: BaseGeometry) -> float:
    """Area in m2 on the WGS84 ellipsoid of a lon/lat (multi)polygon, holes subtracted
    whatever the rings' orientation (pyproj's geometry_area_perimeter relies on it)."""
    return float(ellipsoid_areas(numpy.array([geometry], dtype=object))[0])


def ellipsoid_areas(geometries: numpy.ndarray) -> numpy.ndarray:
    """ellipsoid_area of each geometry: the rings' coordinates taken out in bulk, one
    pyproj call per ring (the per-geometry shapely overhead dominated large loads)."""
    parts, owner = shapely.get_parts(geometries, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    ends = numpy.searchsorted(ring_of, numpy.arange(len(rings) + 1))
    part_area = numpy.zeros(len(parts))
    exterior = numpy.ones(len(rings), dtype=bool)
    exterior[1:] = ring_part[1:] != ring_part[:-1]  # a polygon's first ring is its shell
    for n in range(len(rings)):
        xy = coords[ends[n] : ends[n + 1]]
        area = abs(GEOD.polygon_area_perimeter(xy[:, 0], xy[:, 1])[0])
        part_area[ring_part[n]] += area if exterior[n] else -area
    out = numpy.zeros(len(geometries))
    numpy.add.at(out, owner, part_area)
    return out


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
CHECK_EVERY = 1000  # candidates examined between two deadline checks
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
        make_valid = options.pop("make_valid", False)
        strict = options.pop("strict", False)
        batch = options.pop("batch", BATCH)
        file = open_parcels(path, **options)
        chunks = read_batches(file, make_valid=make_valid, strict=strict, batch=batch)
        return self.put_layer(name, file, chunks, progress, dataset)

    def put_layer(
        self,
        name: str,
        file: ParcelFile,
        chunks: Iterable[ParcelSource],
        progress: bool = False,
        dataset: Dataset | None = None,
        copy_of: ParcelLayer | None = None,
    ) -> LoadReport:
        """Store parcels read in batches as layer `name`, in one transaction, replacing it.

        Memory holds one batch. Refused (and nothing changed) when no parcel was stored or
        ids repeat. `copy_of`: a layer of another catalog this one copies (its load time,
        skips and dataset are kept).
        """
        raise NotImplementedError

    def export(self, layer: str, batch: int = BATCH) -> Iterator[ParcelSource]:
        """A layer's parcels in load order, `batch` at a time (for copies between stores)."""
        raise NotImplementedError

    def find_layer(self, aoi: str, year: int | None = None, ptype: str = "") -> ParcelLayer:
        """The layer loaded as dataset aoi/year/ptype. Without a year, the only layer of
        that aoi and ptype; NotFound when none matches, AmbiguousLayer when several do."""
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


def parcel_rows(chunk: ParcelSource, encode: Callable = shapely.to_wkb) -> list[tuple]:
    """A batch as table rows: pid, crop, year, area (m2, ellipsoid), centroid lon/lat, bbox,
    the geometry as `encode` writes an array of them (WKB), the other attributes as JSON."""
    geometries = chunk.geometries
    bounds = shapely.bounds(geometries)
    middle = centroids(geometries)
    wkb = encode(geometries)
    areas = ellipsoid_areas(geometries)
    return [
        (
            chunk.ids[i],
            chunk.crops[i],
            chunk.years[i],
            float(areas[i]),
            float(middle[i, 0]),
            float(middle[i, 1]),
            *(float(v) for v in bounds[i]),
            wkb[i],
            json.dumps(chunk.properties[i]),
        )
        for i in range(len(chunk.ids))
    ]


LAYER_COLUMNS = (
    "name, source, source_layer, source_crs, id_field, crop_field, year_field, count,"
    " minx, miny, maxx, maxy, skipped, loaded, aoi, year, ptype"
)


class SQLParcelStore(ParcelStore):
    """What the SQLite and PostGIS parcel stores share: layer records, loads in batches,
    lookups by id. Subclasses give the dialect (placeholder, tables, geometry columns),
    writing a batch, the spatial queries and the duplicate check.

    Both keep `parcel_layers` (one row per layer) and `parcels` (one row per parcel: layer,
    pid, crop, year, area, centroid, bbox, geometry, the other attributes as JSON text) with
    a spatial index; a parcel's `fid` gives the load order.
    """

    P: str  # parameter placeholder
    ENCODE: Callable = staticmethod(shapely.to_wkb)  # geometries as the batch writer takes them
    LAYERS: str  # the layers table
    PARCELS: str  # the parcels table
    WKB: str  # SQL reading the geometry of parcels row `p` as WKB

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Any]],
        transaction: Callable[[], AbstractContextManager[Any]],
    ):
        # the catalog store's own: a connection for reads, one in a write transaction (which
        # moves no image generation, so parcel loads leave cached mosaics valid)
        self._conn, self._transaction = connection, transaction

    @property
    def parcel_columns(self) -> str:
        """The columns `_parcel` reads, of parcels row `p`."""
        return (
            "p.layer, p.pid, p.crop, p.year, p.area, p.clon, p.clat,"
            f" p.minx, p.miny, p.maxx, p.maxy, {self.WKB}, p.properties"
        )

    # dialect hooks

    def _insert(self, db, name: str, rows: list[tuple]) -> None:
        """Write a batch of parcel_rows of layer `name`."""
        raise NotImplementedError

    def _duplicates(self, db, name: str) -> tuple[int, list[tuple[str, int]]]:
        """How many ids of the layer being written repeat, and the first few with counts."""
        raise NotImplementedError

    # writes

    def put_layer(
        self,
        name: str,
        file: ParcelFile,
        chunks: Iterable[ParcelSource],
        progress: bool = False,
        dataset: Dataset | None = None,
        copy_of: ParcelLayer | None = None,
    ) -> LoadReport:
        """Store parcels read in batches as layer `name`, in one transaction, replacing it."""
        from tileserver.catalog.models import sortable_time, utcnow

        check_layer_name(name)
        tally = Tally()
        P = self.P
        with (
            self._transaction() as db,
            tqdm(
                total=file.features, desc=f"parcels {name}", unit="feature", disable=not progress
            ) as bar,
        ):
            row = db.execute(f"SELECT 1 FROM {self.LAYERS} WHERE name = {P}", (name,)).fetchone()
            replaced = row is not None
            db.execute(f"DELETE FROM {self.PARCELS} WHERE layer = {P}", (name,))
            db.execute(f"DELETE FROM {self.LAYERS} WHERE name = {P}", (name,))
            if copy_of is not None:
                loaded, aoi, year, ptype = copy_of.loaded, copy_of.aoi, copy_of.year, copy_of.ptype
            else:
                loaded = sortable_time(utcnow())
                aoi, year = (dataset.aoi, dataset.year) if dataset else (None, None)
                ptype = (dataset.ptype or None) if dataset else None
            values = (
                name, file.path, file.source_layer, file.source_crs, file.id_field,
                file.crop_field, file.year_field, 0, None, None, None, None, "{}", loaded,
                aoi, year, ptype,
            )  # fmt: skip
            marks = ", ".join([P] * len(values))
            db.execute(f"INSERT INTO {self.LAYERS} ({LAYER_COLUMNS}) VALUES ({marks})", values)
            for chunk in chunks:
                tally.add(chunk)
                if chunk.ids:
                    self._insert(db, name, parcel_rows(chunk, self.ENCODE))
                bar.update(chunk.read or len(chunk.ids))
            if not tally.count:
                raise nothing_error(file.path, dict(tally.skipped))
            repeats, examples = self._duplicates(db, name)
            if repeats:
                raise duplicates_error(file.path, file.id_field, repeats, examples)
            skipped = copy_of.skipped if copy_of is not None else dict(tally.skipped)
            db.execute(
                f"UPDATE {self.LAYERS} SET count = {P}, minx = {P}, miny = {P}, maxx = {P},"
                f" maxy = {P}, skipped = {P} WHERE name = {P}",
                (tally.count, *tally.bbox, json.dumps(skipped), name),
            )
        return LoadReport(self.get_layer(name), replaced, tally.examples)

    def delete(self, name: str) -> int:
        """Delete a layer and its parcels; returns how many parcels went."""
        P = self.P
        with self._transaction() as db:
            if not db.execute(f"SELECT 1 FROM {self.LAYERS} WHERE name = {P}", (name,)).fetchone():
                raise NotFound(f"parcel layer '{name}' not found")
            gone = db.execute(f"DELETE FROM {self.PARCELS} WHERE layer = {P}", (name,)).rowcount
            db.execute(f"DELETE FROM {self.LAYERS} WHERE name = {P}", (name,))
        return gone

    # reads

    def layers(self) -> list[ParcelLayer]:
        """Every layer, by name."""
        with self._conn() as db:
            rows = db.execute(f"SELECT {LAYER_COLUMNS} FROM {self.LAYERS} ORDER BY name").fetchall()
        return [_layer(row) for row in rows]

    def get_layer(self, name: str) -> ParcelLayer:
        """One layer; NotFound names the known ones."""
        with self._conn() as db:
            row = db.execute(
                f"SELECT {LAYER_COLUMNS} FROM {self.LAYERS} WHERE name = {self.P}", (name,)
            ).fetchone()
        if row is None:
            known = ", ".join(layer.name for layer in self.layers()) or "none loaded"
            raise NotFound(f"parcel layer '{name}' not found (layers: {known})")
        return _layer(row)

    def get(self, layer: str, pid: str, geometry: bool = False) -> Parcel:
        """A parcel by id; NotFound when the layer or the id is unknown."""
        self.get_layer(layer)
        with self._conn() as db:
            row = db.execute(
                f"SELECT {self.parcel_columns} FROM {self.PARCELS} p"
                f" WHERE p.layer = {self.P} AND p.pid = {self.P}",
                (layer, pid),
            ).fetchone()
        if row is None:
            raise NotFound(f"parcel '{pid}' not found in layer '{layer}'")
        return _parcel(row, geometry)

    def export(self, layer: str, batch: int = BATCH) -> Iterator[ParcelSource]:
        """A layer's parcels in load order, `batch` at a time (keyset paging on fid)."""
        file = layer_file(self.get_layer(layer))
        after = -1
        while True:
            with self._conn() as db:
                rows = db.execute(
                    f"SELECT p.fid, p.pid, p.crop, p.year, {self.WKB}, p.properties"
                    f" FROM {self.PARCELS} p WHERE p.layer = {self.P} AND p.fid > {self.P}"
                    f" ORDER BY p.fid LIMIT {self.P}",
                    (layer, after, batch),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            yield ParcelSource(
                **header(file),
                ids=[r[1] for r in rows],
                crops=[r[2] for r in rows],
                years=[r[3] for r in rows],
                geometries=shapely.from_wkb([bytes(r[4]) for r in rows]),
                properties=[json.loads(r[5]) for r in rows],
                read=len(rows),
            )

    def _candidates(self, db, layer: str, bounds: tuple):
        """Rows of the layer whose bbox meets `bounds` (through the spatial index), by fid;
        something iterable with a close()."""
        raise NotImplementedError

    def at(self, layer: str, lon: float, lat: float, geometry: bool = False) -> Parcel:
        """The parcel covering lon/lat; the first loaded wins where parcels overlap."""
        self.get_layer(layer)
        with self._conn() as db, closing(self._candidates(db, layer, (lon, lat, lon, lat))) as rows:
            for n, row in enumerate(rows, 1):
                if shapely.intersects_xy(shapely.from_wkb(bytes(row[-2])), lon, lat):
                    return _parcel(row, geometry)
                if n % CHECK_EVERY == 0:
                    check()  # a request's deadline bounds a walk through many candidates
        raise NotFound(f"no parcel of layer '{layer}' at lon {lon}, lat {lat}")

    def intersecting(
        self, layer: str, area: BaseGeometry, limit: int, geometry: bool = False
    ) -> list[Parcel]:
        """Parcels meeting `area` (WGS84), in load order, at most `limit`: candidates from the
        spatial index, each decided by shapely (the same GEOS in both stores)."""
        self.get_layer(layer)
        shapely.prepare(area)
        found: list[Parcel] = []
        with self._conn() as db, closing(self._candidates(db, layer, area.bounds)) as rows:
            for n, row in enumerate(rows, 1):
                if area.intersects(shapely.from_wkb(bytes(row[-2]))):
                    found.append(_parcel(row, geometry))
                    if len(found) >= limit:
                        break
                if n % CHECK_EVERY == 0:
                    check()
        return found


def _layer(row: tuple) -> ParcelLayer:
    (
        name, source, source_layer, source_crs, id_field, crop_field, year_field, count,
        minx, miny, maxx, maxy, skipped, loaded, aoi, year, ptype,
    ) = row  # fmt: skip
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
        geometry=mapping(shapely.from_wkb(bytes(wkb))) if geometry else None,
    )
