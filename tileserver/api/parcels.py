"""Parcels (JRC CbM parcelByLocation / parcel by id) and parcel time series.

Statistics follow tileserver.render.zonal (pixel centres inside the polygon, native grid,
image CRS). A time series has one row per acquisition date (catalog.acquisitions), oldest
first, as JSON or as CSV:

- value bands: date, acquired, image_id, count, nodata, mean, std, min, max, p25, p50, p75
- class bands: date, acquired, image_id, count, nodata, cloud_free, then class_<value> per
  class (the band's labelled classes and any other value seen), the pixel counts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from tileserver.api.deps import KnownQuery, SettingsDep, StoreDep, bad_request
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import NAME_PATTERN, Band, Image, safe_name
from tileserver.catalog.parcels import NO_PARCELS, Parcel, ParcelLayer, ParcelStore
from tileserver.catalog.store import CatalogStore
from tileserver.deadline import check
from tileserver.render.reader import resolve_bands
from tileserver.render.zonal import (
    CLOUDY_CLASSES,
    PERCENTILES,
    Zone,
    class_histogram,
    cloud_free,
    is_scl,
    read_zone,
    value_statistics,
)
from tileserver.settings import Settings
from tileserver.threads import ContextPool

router = APIRouter(tags=["parcels"], dependencies=[KnownQuery])

Format = Literal["json", "csv"]
VALUE_COLUMNS = ["mean", "std", "min", "max", *(f"p{p}" for p in PERCENTILES)]


def get_parcels(request: Request) -> ParcelStore:
    """The parcel store of the app's catalog (made at startup); 501 where it has none."""
    parcels = request.app.state.parcels
    if parcels is None:
        raise HTTPException(501, NO_PARCELS)
    return parcels


ParcelsDep = Annotated[ParcelStore, Depends(get_parcels)]
FormatQuery = Annotated[Format, Query(alias="format", description="json or csv")]
GeometryQuery = Annotated[bool, Query(description="include the GeoJSON geometry (WGS84)")]


class LayerList(BaseModel):
    """Every parcel layer with its parcel count."""

    layers: list[ParcelLayer]


class TimeseriesRequest(BaseModel):
    """A time series over a posted polygon."""

    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, WGS84")
    product: str = Field(pattern=NAME_PATTERN)
    band: str
    start_date: date
    end_date: date

    @field_validator("geometry")
    @classmethod
    def _polygon(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_geometry(value, "geometry", polygonal=True, wgs84=True)


class ValueRow(BaseModel):
    """Statistics of a value band inside the polygon on one date (None: no valid pixel)."""

    date: date
    acquired: datetime
    image_id: str
    count: int = Field(description="valid pixels whose centre is inside")
    nodata: int = Field(description="pixels inside without a valid value")
    mean: float | None = None
    std: float | None = Field(None, description="population standard deviation (ddof=0)")
    min: float | None = None
    max: float | None = None
    p25: float | None = None
    p50: float | None = None
    p75: float | None = None


class ClassRow(BaseModel):
    """Pixels per class of a class band inside the polygon on one date."""

    date: date
    acquired: datetime
    image_id: str
    count: int = Field(description="valid pixels whose centre is inside")
    nodata: int = Field(description="pixels inside without a valid value")
    classes: dict[str, int] = Field(description="class value -> pixels")
    cloud_free: bool | None = Field(
        None, description="SCL bands: no pixel in cloudy_classes (null: no valid pixel)"
    )


class Timeseries(BaseModel):
    """One row per acquisition date, oldest first."""

    product: str
    band: str
    band_type: str
    start_date: date
    end_date: date
    parcel: Parcel | None = Field(None, description="the parcel, for parcel time series")
    class_labels: dict[str, str] | None = Field(None, description="class value -> label")
    cloudy_classes: list[int] | None = Field(None, description="SCL classes that are cloud")
    rows: list[ClassRow] | list[ValueRow]


def _row(image: Image, band: Band, zone: Zone) -> ClassRow | ValueRow:
    common = {
        "date": image.acquired.date(),
        "acquired": image.acquired,
        "image_id": image.id,
        "count": int(zone.values.size),
        "nodata": zone.nodata,
    }
    if band.type == "class":
        histogram = class_histogram(zone.values)
        return ClassRow(
            **common,
            classes={str(value): n for value, n in histogram.items()},
            cloud_free=cloud_free(histogram) if is_scl(band) else None,
        )
    return ValueRow(**common, **value_statistics(zone.values))


@dataclass(frozen=True)
class Zones:
    """Pixels of several bands inside an area, per acquisition: zones[i][j] is image i's
    band j."""

    bands: list[Band]
    images: list[Image]
    zones: list[list[Zone]]


def read_zones(
    store: CatalogStore,
    settings: Settings,
    area: BaseGeometry,
    product_id: str,
    band_names: Sequence[str],
    start: date,
    end: date,
) -> Zones:
    """The pixels of `band_names` inside `area` (WGS84) per acquisition from start to end
    (one image per date, oldest first), read on the reader threads."""
    if start > end:
        raise bad_request(f"start_date {start} is after end_date {end}")
    product = store.get_product(product_id)
    bands = resolve_bands(product, list(band_names))
    images = acquisitions(store, product_id, area, start, end)
    limit = settings.chip_limit * 10
    if len(images) > limit:
        raise bad_request(
            f"{start}..{end} holds {len(images)} acquisitions of '{product_id}' over the "
            f"polygon, more than the limit of {limit}: shorten the date window"
        )
    check()  # the lookup took its time; read_zone checks again per image
    pairs = [(image, band) for image in images for band in bands]
    with ContextPool(max_workers=max(settings.reader_threads, 1)) as pool:
        flat = list(pool.map(lambda pair: read_zone(*pair, area), pairs))
    per_image = [flat[i : i + len(bands)] for i in range(0, len(flat), len(bands))]
    return Zones(bands, images, per_image)


def class_labels(band: Band) -> dict[str, str] | None:
    """class value -> label of a class band with labels."""
    if band.type == "class" and band.class_labels:
        return {str(v): label for v, label in enumerate(band.class_labels) if label}
    return None


def timeseries(
    store: CatalogStore,
    settings: Settings,
    area: BaseGeometry,
    product_id: str,
    band_name: str,
    start: date,
    end: date,
) -> Timeseries:
    """Zonal statistics of one band over `area` (WGS84) per acquisition from start to end."""
    read = read_zones(store, settings, area, product_id, [band_name], start, end)
    (band,) = read.bands
    return Timeseries(
        product=product_id,
        band=band.name,
        band_type=band.type,
        start_date=start,
        end_date=end,
        class_labels=class_labels(band),
        cloudy_classes=sorted(CLOUDY_CLASSES) if is_scl(band) else None,
        rows=[
            _row(image, band, zone) for image, (zone,) in zip(read.images, read.zones, strict=True)
        ],
    )


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(series: Timeseries) -> str:
    """The series as CSV, one row per date (columns in the module docstring)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["date", "acquired", "image_id", "count", "nodata"]
    if series.band_type == "class":
        seen = {int(v) for row in series.rows for v in row.classes}
        classes = sorted(seen | {int(v) for v in series.class_labels or {}})
        writer.writerow([*head, "cloud_free", *(f"class_{v}" for v in classes)])
        for row in series.rows:
            cells = [row.date, row.acquired.isoformat(), row.image_id, row.count, row.nodata]
            counts = [row.classes.get(str(v), 0) for v in classes]
            writer.writerow([*map(_cell, cells), _cell(row.cloud_free), *counts])
    else:
        writer.writerow([*head, *VALUE_COLUMNS])
        for row in series.rows:
            cells = [row.date, row.acquired.isoformat(), row.image_id, row.count, row.nodata]
            cells += [getattr(row, name) for name in VALUE_COLUMNS]
            writer.writerow([_cell(c) for c in cells])
    return out.getvalue()


def _answer(series: Timeseries, fmt: Format, stem: str) -> Response:
    if fmt == "csv":
        filename = safe_name(f"{stem}_{series.band}_{series.start_date}_{series.end_date}")
        return Response(
            to_csv(series),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )
    return Response(series.model_dump_json(), media_type="application/json")


@router.get("/parcels", response_model=LayerList)
def list_layers(parcels: ParcelsDep) -> LayerList:
    """Every parcel layer with its parcel count."""
    return LayerList(layers=parcels.layers())


@router.get("/parcels/{layer}", response_model=ParcelLayer)
def get_layer(layer: str, parcels: ParcelsDep) -> ParcelLayer:
    """One parcel layer: source, fields, count, bbox, what was skipped at load."""
    return parcels.get_layer(layer)


@router.get("/parcels/{layer}/at", response_model=Parcel)
def parcel_at(
    layer: str,
    parcels: ParcelsDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="WGS84 longitude")],
    lat: Annotated[float, Query(ge=-90, le=90, description="WGS84 latitude")],
    geometry: GeometryQuery = False,
) -> Parcel:
    """parcelByLocation: the parcel covering lon/lat (404 when none)."""
    return parcels.at(layer, lon, lat, geometry=geometry)


@router.get("/parcels/{layer}/{pid}", response_model=Parcel)
def parcel_by_id(layer: str, pid: str, parcels: ParcelsDep, geometry: GeometryQuery = False):
    """A parcel by its id (404 when the layer or the id is unknown)."""
    return parcels.get(layer, pid, geometry=geometry)


@router.get(
    "/parcels/{layer}/{pid}/timeseries",
    response_model=Timeseries,
    responses={200: {"content": {"text/csv": {}}}},
)
def parcel_timeseries(
    layer: str,
    pid: str,
    parcels: ParcelsDep,
    store: StoreDep,
    settings: SettingsDep,
    product: Annotated[str, Query(description="product id")],
    band: Annotated[str, Query(description="one band of the product")],
    start_date: Annotated[date, Query(description="first day, YYYY-MM-DD")],
    end_date: Annotated[date, Query(description="last day, YYYY-MM-DD (inclusive)")],
    fmt: FormatQuery = "json",
) -> Response:
    """Band statistics (value bands) or class histograms (class bands) inside a parcel,
    one row per acquisition date."""
    parcel = parcels.get(layer, pid, geometry=True)
    series = timeseries(store, settings, parcel.shape(), product, band, start_date, end_date)
    series.parcel = parcel.model_copy(update={"geometry": None})
    return _answer(series, fmt, f"{layer}_{pid}_{product}")


@router.post(
    "/timeseries", response_model=Timeseries, responses={200: {"content": {"text/csv": {}}}}
)
def polygon_timeseries(
    body: TimeseriesRequest, store: StoreDep, settings: SettingsDep, fmt: FormatQuery = "json"
) -> Response:
    """The parcel time series over a posted GeoJSON polygon."""
    series = timeseries(
        store,
        settings,
        shape(body.geometry),
        body.product,
        body.band,
        body.start_date,
        body.end_date,
    )
    return _answer(series, fmt, f"timeseries_{body.product}")
