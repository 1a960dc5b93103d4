"""Parcels (JRC CbM parcelByLocation / parcel by id) and time series over a parcel, a
posted polygon or a point.

The series is tileserver/timeseries.py's (one row per acquisition date, oldest first;
statistics of bands or band math over the pixels a cloud mask leaves), as JSON, CSV or a
PNG plot (render/plot.py). The first form (`band`: one band, stored values) answers in its
own rows, as before:

- value bands: date, acquired, image_id, count, nodata, mean, std, min, max, p25, p50, p75
- class bands: date, acquired, image_id, count, nodata, cloud_free, then class_<value> per
  class (the band's labelled classes and any other value seen), the pixel counts.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry

from tileserver.api.deps import (
    MAX_BANDS,
    KnownQuery,
    SeriesQueryDep,
    SettingsDep,
    StoreDep,
    bad_request,
)
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import NAME_PATTERN, Band, Image, Product, safe_name
from tileserver.catalog.parcels import NO_PARCELS, Parcel, ParcelLayer, ParcelStore
from tileserver.catalog.store import CatalogStore
from tileserver.deadline import check
from tileserver.opener import ContextPool
from tileserver.render.plot import series_png
from tileserver.render.reader import resolve_bands
from tileserver.render.statistics import MAX_PERCENTILES
from tileserver.render.zonal import CLOUDY_CLASSES, PERCENTILES, Zone, is_scl, read_zone
from tileserver.settings import Settings
from tileserver.timeseries import Area, Series, SeriesRequest, series, series_request
from tileserver.timeseries import to_csv as series_csv

router = APIRouter(tags=["parcels"], dependencies=[KnownQuery])

Format = Literal["json", "csv", "png"]
VALUE_COLUMNS = ["mean", "std", "min", "max", *(f"p{p}" for p in PERCENTILES)]


def get_parcels(request: Request) -> ParcelStore:
    """The parcel store of the app's catalog (made at startup); 501 where it has none."""
    parcels = request.app.state.parcels
    if parcels is None:
        raise HTTPException(501, NO_PARCELS)
    return parcels


ParcelsDep = Annotated[ParcelStore, Depends(get_parcels)]
FormatQuery = Annotated[
    Format | None,
    Query(alias="format", description="json, csv or png (default: by Accept, else json)"),
]
GeometryQuery = Annotated[bool, Query(description="include the GeoJSON geometry (WGS84)")]


class LayerList(BaseModel):
    """Every parcel layer with its parcel count."""

    layers: list[ParcelLayer]


class TimeseriesRequest(BaseModel):
    """A time series over a posted polygon or point (tileserver/timeseries.py).

    The first form, `band` (one band, stored values, rows of count, nodata, mean, ...), is
    kept as it was; `bands` or `expression` is the new form, with cloud masks.
    """

    model_config = ConfigDict(extra="forbid")

    geometry: dict[str, Any] = Field(
        description="GeoJSON Polygon or MultiPolygon (a Point or a Feature with the new "
        "form), WGS84"
    )
    product: str = Field(pattern=NAME_PATTERN)
    band: str | None = Field(None, description="the first form: one band, stored values")
    bands: list[str] | None = Field(None, max_length=MAX_BANDS, description="band names")
    expression: str | None = Field(None, description="band math, e.g. (B08-B04)/(B08+B04)")
    cloud_mask: str | None = Field(
        None, description="BAND:classes (e.g. SCL:3,8,9,10), 'default' or 'none'"
    )
    max_cloud_fraction: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    cloudy: Literal["drop", "flag"] = "drop"
    processing_level: str | None = None
    percentiles: list[int] | None = Field(None, max_length=MAX_PERCENTILES)
    start_date: date
    end_date: date

    @model_validator(mode="after")
    def _area(self) -> TimeseriesRequest:
        if self.band is None and not self.bands and not self.expression:
            raise ValueError(
                "name band (the first form: one band) or bands / expression (the new form)"
            )
        geometry = self.geometry
        if geometry.get("type") == "Feature" and self.band is None:
            geometry = geometry.get("geometry")
            if not isinstance(geometry, dict):
                raise ValueError("geometry: the Feature has no geometry")
        if self.band is not None or geometry.get("type") != "Point":
            self.geometry = check_geometry(geometry, "geometry", polygonal=True, wgs84=True)
        else:
            self.geometry = check_geometry(geometry, "geometry", wgs84=True)
        return self

    def series(self) -> tuple[SeriesRequest, str | None]:
        """The series it asks for (SeriesError, a 400, for a mix of the forms)."""
        return series_request(
            self.product,
            self.start_date,
            self.end_date,
            self.band,
            self.bands,
            self.expression,
            self.cloud_mask,
            self.max_cloud_fraction,
            self.cloudy,
            self.processing_level,
            self.percentiles,
        )


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


def first_form(found: Series, product: Product, name: str) -> Timeseries:
    """The first form's answer (one band, stored values) from the series of that band."""
    (band,) = resolve_bands(product, [name])
    rows: list[ClassRow] | list[ValueRow] = []
    for row in found.rows:
        entry = row["statistics"][band.name]
        common = {
            "date": row["date"],
            "acquired": row["datetime"],
            "image_id": row["image_id"],
            "count": entry["valid_count"],
            "nodata": entry["masked_count"],
        }
        if band.type == "class":
            classes = {str(int(c["value"])): c["count"] for c in entry["classes"]}
            free = None
            if is_scl(band) and classes:
                free = not any(int(v) in CLOUDY_CLASSES for v in classes)
            rows.append(ClassRow(**common, classes=classes, cloud_free=free))
        else:
            picked = {k: entry[k] for k in ("mean", "std", "min", "max")}
            picked.update({f"p{p}": entry[f"percentile_{p}"] for p in PERCENTILES})
            rows.append(ValueRow(**common, **picked))
    return Timeseries(
        product=found.product,
        band=band.name,
        band_type=band.type,
        start_date=found.start,
        end_date=found.end,
        class_labels=class_labels(band),
        cloudy_classes=sorted(CLOUDY_CLASSES) if is_scl(band) else None,
        rows=rows,
    )


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def to_csv(series: Timeseries) -> str:
    """The first form's series as CSV, one row per date (columns in the module docstring)."""
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


def chosen_format(fmt: Format | None, request: Request) -> Format:
    """`format`, else what the Accept header prefers of CSV and PNG, else JSON."""
    if fmt is not None:
        return fmt
    accept = request.headers.get("accept", "")
    if "text/csv" in accept:
        return "csv"
    if "image/png" in accept and "application/json" not in accept:
        return "png"
    return "json"


def run_series(
    store: CatalogStore, settings: Settings, area: BaseGeometry, request: SeriesRequest
) -> Series:
    """The series over `area` within the request's budget of dates and pixels."""
    return series(
        store,
        Area(area),
        request,
        max_images=settings.chip_limit * 10,
        threads=max(settings.reader_threads, 1),
    )


def answer(
    store: CatalogStore,
    found: Series,
    first: str | None,
    fmt: Format,
    stem: str,
    extra: dict | None = None,
) -> Response:
    """The series as JSON, CSV or a PNG plot (the first form's rows for `band`)."""
    stem = safe_name(f"{stem}_{'_'.join(found.names)[:60]}_{found.start}_{found.end}")
    if fmt == "png":
        dates = [date.fromisoformat(r["date"]) for r in found.rows]
        lines = {n: [r["statistics"][n]["mean"] for r in found.rows] for n in found.names}
        flags = [bool(r.get("flagged")) for r in found.rows]
        title = f"{found.product} {found.start}..{found.end}: mean"
        return Response(
            series_png(dates, lines, flags, title),
            media_type="image/png",
            headers={"Content-Disposition": f'inline; filename="{stem}.png"'},
        )
    if first is not None:
        legacy = first_form(found, store.get_product(found.product), first)
        legacy.parcel = (extra or {}).get("parcel")
        if fmt == "csv":
            return csv_response(to_csv(legacy), stem)
        return Response(legacy.model_dump_json(), media_type="application/json")
    if fmt == "csv":
        return csv_response(series_csv(found, found.percentiles), stem)
    document = {**found.document(), **(extra or {})}
    return Response(json.dumps(document), media_type="application/json")


def csv_response(text: str, stem: str) -> Response:
    """A CSV attachment named after the series."""
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'},
    )


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


SERIES_RESPONSES: dict = {
    200: {
        "description": "one row per acquisition date: JSON (the first form's `Timeseries` "
        "for `band`), CSV, or a PNG plot of each output's mean",
        "content": {"application/json": {}, "text/csv": {}, "image/png": {}},
    }
}


@router.get("/parcels/{layer}/{pid}/timeseries", responses=SERIES_RESPONSES)
def parcel_timeseries(
    layer: str,
    pid: str,
    parcels: ParcelsDep,
    store: StoreDep,
    settings: SettingsDep,
    query: SeriesQueryDep,
    request: Request,
    fmt: FormatQuery = None,
) -> Response:
    """Per acquisition date inside a parcel: statistics of `bands` or an `expression` over
    the pixels a `cloud_mask` leaves (or, the first form, of one `band` as stored)."""
    parcel = parcels.get(layer, pid, geometry=True)
    found = run_series(store, settings, parcel.shape(), query.request)
    described = parcel.model_copy(update={"geometry": None})
    extra = {"parcel": described if query.first_form else described.model_dump(mode="json")}
    return answer(
        store,
        found,
        query.first_form,
        chosen_format(fmt, request),
        f"{layer}_{pid}_{found.product}",
        extra,
    )


@router.post("/timeseries", responses=SERIES_RESPONSES)
def polygon_timeseries(
    body: TimeseriesRequest,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
    fmt: FormatQuery = None,
) -> Response:
    """A time series over a posted GeoJSON polygon, Feature or point: `bands` or an
    `expression` with an optional `cloud_mask` (the new form), or one `band` (the first)."""
    series_request, first = body.series()
    area = shape(body.geometry)
    found = run_series(store, settings, area, series_request)
    extra = {"geometry": body.geometry} if first is None else {}
    return answer(
        store, found, first, chosen_format(fmt, request), f"timeseries_{found.product}", extra
    )


@router.get("/timeseries", responses=SERIES_RESPONSES)
def point_timeseries(
    store: StoreDep,
    settings: SettingsDep,
    query: SeriesQueryDep,
    request: Request,
    lon: Annotated[float, Query(ge=-180, le=180, allow_inf_nan=False, description="WGS84")],
    lat: Annotated[float, Query(ge=-90, le=90, allow_inf_nan=False, description="WGS84")],
    fmt: FormatQuery = None,
) -> Response:
    """A time series at a point (the one pixel holding it in each image)."""
    found = run_series(store, settings, Point(lon, lat), query.request)
    extra = {"geometry": {"type": "Point", "coordinates": [lon, lat]}}
    return answer(
        store, found, query.first_form, chosen_format(fmt, request), f"point_{found.product}", extra
    )
