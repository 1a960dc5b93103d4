"""The JRC Checks-by-Monitoring RESTful services under `/query/`, so CbM client scripts run
against tileserver by changing only their host and credentials.

Parameter names, defaults and answer shapes follow the CbM services (ec-jrc/cbm
`api/main.py` and `api/static/swagger_specs/`); the work is done by tileserver's own parcel,
chip and time-series code (api/parcels.py, api/chips.py, the catalog's ParcelStore). A parcel
dataset is addressed by `aoi` + `year` (+ `ptype`), as loaded with `tileserver parcels load
FILE --aoi nl --year 2024 [--ptype b]`.

Answers are column-oriented as the originals' (`{"pid": [...], "cropname": [...], ...}`); no
row gives every column with an empty list, as the originals do for an empty result. Choices
where the originals are ambiguous (each in README "JRC CbM services"):

- booleans are `True`/`False` (any case, also 1/0); anything else is a 400 (the originals
  read any other text as False);
- `pid` is a JSON number when the id is a plain non-negative integer (the originals'
  `ogc_fid`), else text; `ogc_fid` repeats it for older scripts;
- parcels are kept in WGS84: `srid` is 4326, `geom` is a GeoJSON text in lon/lat, `area`
  is in m2 on the ellipsoid, `wgs84` is accepted and changes nothing;
- an unknown dataset (aoi/year/ptype) is a 404 (the originals fail with a 500);
- chip URLs are root-relative (`/query/chips/<key>_<band>.tif`) and the same key with
  another band names that band's chip (the CbM batch example derives B04 from B08 so);
- galleries and raw chip lists with no acquisition answer `{}` as the originals do.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from shapely.geometry import shape

from tileserver.api.chips import (
    MAX_RAW_CHIPSIZE,
    ChipLocation,
    ChipStoreDep,
    Level,
    RawParams,
    chip_file,
    chip_images,
    chip_location,
    chip_window,
    gallery,
    gallery_params,
    parcel_location,
    parse_date,
    raw_chips,
    raw_params,
)
from tileserver.api.deps import KnownQuery, SettingsDep, StoreDep, bad_request
from tileserver.api.parcels import ParcelsDep, read_zones
from tileserver.api.templates import root_path
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import Image, Product, safe_name
from tileserver.catalog.parcels import AmbiguousLayer, Parcel, ParcelStore
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.chipcache import ChipStore
from tileserver.render.reader import resolve_bands
from tileserver.render.zonal import class_histogram, is_scl, value_statistics
from tileserver.settings import Settings

router = APIRouter(prefix="/query", tags=["JRC CbM services"], dependencies=[KnownQuery])

MAX_POLYGON_PARCELS = 100  # parcelsByPolygon answers at most this many, as the originals
MAX_DISTANCE = 5000.0  # parcelPeers: larger distances are cut to this, as the originals
MAX_PEERS = 100
MAX_POLY_TEXT = 20_000  # characters of a `poly` parameter
MAX_BATCH_CHIPS = 36  # rawChipsBatch: tiles x bands, the originals' built-in maximum
CHIPS_PATH = "query/chips"
TSTYPES = ("s2", "scl")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
JRC_PAIR = re.compile(rf"(?:^|(?<=[\d.])-)({NUMBER})_({NUMBER})")  # '-' joins pairs
CHIP_URL_NAME = re.compile(
    r"^(?P<product>[A-Za-z0-9._-]+)\.(?P<when>\d{8}T\d{6})_(?P<key>[0-9a-f]{32})"
    r"_(?P<band>[A-Za-z0-9._-]{1,64})\.tif$"
)


# --- parameters ------------------------------------------------------------------------


def jrc_bool(name: str, text: str | None, default: bool) -> bool:
    """A CbM boolean parameter: True/False (any case) or 1/0; a 400 naming it otherwise."""
    if text is None:
        return default
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise bad_request(f"{name} '{text}' must be True or False")


def dataset_layer(
    parcels: ParcelsDep,
    aoi: Annotated[str, Query(description="area of interest, e.g. nl (as loaded)")],
    year: Annotated[
        int | None, Query(description="dataset year; may be left out when the aoi has one")
    ] = None,
    ptype: Annotated[str, Query(description="parcel type, e.g. b (as loaded)")] = "",
) -> str:
    """The parcel layer loaded as aoi/year/ptype: 404 when none, 400 when several match."""
    try:
        return parcels.find_layer(aoi, year, ptype).name
    except AmbiguousLayer as exc:
        raise bad_request(str(exc)) from None


LayerDep = Annotated[str, Depends(dataset_layer)]
PidQuery = Annotated[str, Query(description="parcel id")]
BoolQuery = Annotated[str | None, Query(description="True or False")]
StartQuery = Annotated[str, Query(description="first acquisition day, YYYY-mm-dd")]
EndQuery = Annotated[str, Query(description="last acquisition day, YYYY-mm-dd (inclusive)")]
PlevelQuery = Annotated[
    Level, Query(description="LEVEL2A or LEVEL1C: the product when `product` is not given")
]
ProductQuery = Annotated[
    str | None, Query(description="product id (tileserver's; default: the one plevel names)")
]
LonQuery = Annotated[float, Query(ge=-180, le=180, description="longitude, WGS84 degrees")]
LatQuery = Annotated[float, Query(ge=-90, le=90, description="latitude, WGS84 degrees")]


def parse_poly(text: str) -> dict:
    """A `poly` parameter as a GeoJSON polygon: the CbM form `lon_lat-lon_lat-...` (pairs
    joined by '-', a negative number after it: `1_2--3_4`) or WKT-like `lon lat, lon lat`,
    with or without POLYGON(( )); the ring is closed when it is not."""
    body = text.strip()
    if len(body) > MAX_POLY_TEXT:
        raise bad_request(f"poly has more than {MAX_POLY_TEXT} characters")
    inner = re.fullmatch(r"(?i)\s*polygon\s*\(\((.*)\)\)\s*", body)
    if inner:
        body = inner.group(1)
    points: list[tuple[float, float]] = []
    if "_" in body:
        if re.fullmatch(rf"{NUMBER}_{NUMBER}(?:-{NUMBER}_{NUMBER})*", body):
            points = [(float(x), float(y)) for x, y in JRC_PAIR.findall(body)]
    elif re.fullmatch(rf"\s*{NUMBER}\s+{NUMBER}(?:\s*,\s*{NUMBER}\s+{NUMBER})*\s*", body):
        points = [tuple(map(float, p.split())) for p in body.split(",")]
    if len(points) < 3:
        raise bad_request(
            f"poly '{text[:80]}' is not a polygon: give lon_lat-lon_lat-... (at least three "
            "corners) or 'lon lat, lon lat, ...'"
        )
    if points[0] != points[-1]:
        points.append(points[0])
    geometry = {"type": "Polygon", "coordinates": [[list(p) for p in points]]}
    try:
        return check_geometry(geometry, "poly", polygonal=True, wgs84=True)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


# --- answers ---------------------------------------------------------------------------


def columns(names: list[str], rows: list[list[Any]]) -> dict[str, list]:
    """Rows as the CbM column-oriented JSON: each name with its column (empty lists when
    there is no row)."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def jrc_pid(pid: str) -> int | str:
    """A plain non-negative integer id as a number (the originals' ogc_fid), else text."""
    if pid.isascii() and pid.isdigit() and (pid == "0" or not pid.startswith("0")):
        return int(pid)
    return pid


def crop_code(parcel: Parcel) -> Any:
    """A crop code attribute kept beside the crop name, if the file has one."""
    for name, value in parcel.properties.items():
        if name.lower() in ("cropcode", "crop_code", "code_cult", "cropcode_n"):
            return value
    return None


PARCEL_COLUMNS = ["pid", "ogc_fid", "cropname", "cropcode", "srid", "area", "clon", "clat"]


def parcel_table(parcels: list[Parcel], with_geometry: bool) -> dict[str, list]:
    """parcelByLocation / parcelById / parcelsByPolygon (only_ids=False) columns."""
    names = [*PARCEL_COLUMNS[:5], *(["geom"] if with_geometry else []), *PARCEL_COLUMNS[5:]]
    rows = []
    for p in parcels:
        pid = jrc_pid(p.id)
        head = [pid, pid, p.crop_type, crop_code(p), 4326]
        geom = [json.dumps(p.geometry)] if with_geometry else []
        rows.append([*head, *geom, p.area_m2, p.centroid_lon, p.centroid_lat])
    return columns(names, rows)


# --- parcels ---------------------------------------------------------------------------


@router.get("/parcelByLocation")
def parcel_by_location(
    layer: LayerDep,
    parcels: ParcelsDep,
    lon: LonQuery,
    lat: LatQuery,
    withGeometry: BoolQuery = None,  # noqa: N803 (the CbM name)
    wgs84: BoolQuery = None,
) -> dict:
    """The parcel of dataset aoi/year/ptype covering lon/lat (empty columns when none)."""
    geometry = jrc_bool("withGeometry", withGeometry, False)
    jrc_bool("wgs84", wgs84, False)
    try:
        found = [parcels.at(layer, lon, lat, geometry=geometry)]
    except NotFound:
        found = []
    return parcel_table(found, geometry)


@router.get("/parcelById")
def parcel_by_id(
    layer: LayerDep,
    parcels: ParcelsDep,
    pid: PidQuery,
    withGeometry: BoolQuery = None,  # noqa: N803
    wgs84: BoolQuery = None,
) -> dict:
    """A parcel of dataset aoi/year/ptype by id (empty columns when the id is unknown)."""
    geometry = jrc_bool("withGeometry", withGeometry, False)
    jrc_bool("wgs84", wgs84, False)
    try:
        found = [parcels.get(layer, pid, geometry=geometry)]
    except NotFound:
        found = []
    return parcel_table(found, geometry)


@router.get("/parcelsByPolygon")
def parcels_by_polygon(
    layer: LayerDep,
    parcels: ParcelsDep,
    poly: Annotated[
        str | None, Query(description="lon_lat-lon_lat-... (the CbM form) or 'lon lat, ...'")
    ] = None,
    polygon: Annotated[str | None, Query(description="the same as poly (older name)")] = None,
    withGeometry: BoolQuery = None,  # noqa: N803
    only_ids: BoolQuery = None,
    wgs84: BoolQuery = None,
) -> dict:
    """Parcels meeting a polygon (at most 100, in load order), through the spatial index:
    their ids (`only_ids`, the default) or their whole rows."""
    text = poly if poly is not None else polygon
    if text is None:
        raise bad_request("poly is required: lon_lat-lon_lat-... (WGS84)")
    area = shape(parse_poly(text))
    geometry = jrc_bool("withGeometry", withGeometry, False)
    ids_only = jrc_bool("only_ids", only_ids, True)
    jrc_bool("wgs84", wgs84, False)
    found = parcels.intersecting(layer, area, MAX_POLYGON_PARCELS, geometry=geometry)
    if not ids_only:
        return parcel_table(found, geometry)
    names = ["pid", *(["geom"] if geometry else [])]
    rows = [[jrc_pid(p.id), *([json.dumps(p.geometry)] if geometry else [])] for p in found]
    return columns(names, rows)


@router.get("/parcelPeers")
def parcel_peers(
    layer: LayerDep,
    parcels: ParcelsDep,
    pid: PidQuery,
    distance: Annotated[
        float, Query(description=f"metres, cut to {MAX_DISTANCE:g}", gt=0, allow_inf_nan=False)
    ] = 1000.0,
    maxPeers: Annotated[  # noqa: N803
        int | None, Query(description=f"at most this many, cut to {MAX_PEERS}", ge=1)
    ] = None,
    max: Annotated[  # noqa: A002 (the CbM name)
        int | None, Query(description="the same as maxPeers (older name)", ge=1)
    ] = None,
) -> dict:
    """Parcels of the same crop within `distance` metres of parcel `pid`, larger than
    3000 m2, nearest first: `{"pid": [...], "distance": [...]}` (metres)."""
    limit = next((n for n in (maxPeers, max) if n is not None), 10)
    try:
        peers = parcels.peers(layer, pid, min(distance, MAX_DISTANCE), min(limit, MAX_PEERS))
    except NotFound:
        peers = []
    return columns(["pid", "distance"], [[jrc_pid(p.id), d] for p, d in peers])


# --- time series -----------------------------------------------------------------------


def epoch(image: Image) -> int:
    """The acquisition time as the originals' `date_part`: seconds since 1970 (UTC)."""
    return int(image.acquired.astimezone(UTC).timestamp())


def parcel_series(
    store: CatalogStore,
    settings: Settings,
    parcels: ParcelStore,
    layer: str,
    pid: str,
    product: Product,
    tstype: str,
    band: str | None,
    scl: bool,
    ref: bool,
    start: date,
    end: date,
) -> dict[str, list]:
    """The CbM parcelTimeSeries table of one parcel (see parcel_time_series)."""
    area = parcels.get(layer, pid, geometry=True).shape()
    scl_band = next((b for b in product.bands if is_scl(b)), None)
    if tstype == "scl":
        if scl_band is None:
            raise bad_request(f"product '{product.id}' has no SCL band for tstype=scl")
        names, wanted = [], []
    elif band is not None:
        names = [b.name for b in resolve_bands(product, [band])]
        wanted = names
    else:
        names = [b.name for b in product.bands if b.type != "class"]
        wanted = names
    with_hist = scl_band is not None and (tstype == "scl" or scl)
    read_names = wanted + ([scl_band.name] if with_hist and scl_band.name not in wanted else [])
    if not read_names:
        raise bad_request(f"product '{product.id}' has no value band for tstype=s2")
    read = read_zones(store, settings, area, product.id, read_names, start, end)
    position = {b.name: i for i, b in enumerate(read.bands)}
    rows = []
    for image, zones in zip(read.images, read.zones, strict=True):
        hist = None
        if with_hist:
            values = zones[position[scl_band.name]].values
            hist = {str(k): v for k, v in class_histogram(values).items()}
        tail = ([hist] if with_hist else []) + ([image.name] if ref else [])
        if tstype == "scl":
            if hist:
                rows.append([epoch(image), *tail])
            continue
        for name in wanted:
            zone = zones[position[name]]
            if zone.values.size == 0:
                continue  # no valid pixel: the originals keep no row either
            stats = value_statistics(zone.values)
            rows.append(
                [epoch(image), name, int(zone.values.size)]
                + [stats[k] for k in ("mean", "std", "min", "p25", "p50", "p75", "max")]
                + tail
            )
    head = ["date_part"] if tstype == "scl" else ["date_part", "band", "count"]
    if tstype != "scl":
        head += ["mean", "std", "min", "p25", "p50", "p75", "max"]
    head += (["hist"] if with_hist else []) + (["reference"] if ref else [])
    return columns(head, rows)


def window(year: int | None, start_date: str | None, end_date: str | None) -> tuple[date, date]:
    """The time-series window: start_date..end_date, by default the dataset's year."""
    if year is None and (start_date is None or end_date is None):
        raise bad_request("give year, or start_date and end_date")
    start = parse_date("start_date", start_date) if start_date else date(year, 1, 1)
    end = parse_date("end_date", end_date) if end_date else date(year, 12, 31)
    return start, end


@router.get("/parcelTimeSeries")
def parcel_time_series(
    layer: LayerDep,
    parcels: ParcelsDep,
    store: StoreDep,
    settings: SettingsDep,
    pid: PidQuery,
    year: Annotated[int | None, Query(description="dataset year")] = None,
    tstype: Annotated[str, Query(description="s2 (band statistics) or scl (histograms)")] = "s2",
    band: Annotated[str | None, Query(description="one band (default: every value band)")] = None,
    scl: BoolQuery = None,
    ref: BoolQuery = None,
    product: ProductQuery = None,
    plevel: PlevelQuery = "LEVEL2A",
    start_date: Annotated[str | None, Query(description="YYYY-mm-dd (default: 1 Jan)")] = None,
    end_date: Annotated[str | None, Query(description="YYYY-mm-dd (default: 31 Dec)")] = None,
) -> dict:
    """The parcel's time series, as the CbM table, oldest first.

    tstype=s2: a row per acquisition and value band (all the product's value bands, or
    `band`): date_part (epoch seconds), band, count, mean, std, min, p25, p50, p75, max, and
    with scl=True (the default) `hist`, the SCL class histogram of that date; ref=True adds
    `reference`, the image name. tstype=scl: date_part and hist per acquisition.
    """
    kind = tstype.lower()
    if kind not in TSTYPES:
        raise bad_request(f"tstype '{tstype}' is not served here: use {' or '.join(TSTYPES)}")
    start, end = window(year or parcels.get_layer(layer).year, start_date, end_date)
    found = chip_window(store, str(start), str(end), product, plevel)[2]
    return parcel_series(
        store,
        settings,
        parcels,
        layer,
        pid,
        found,
        kind,
        band,
        jrc_bool("scl", scl, True),
        jrc_bool("ref", ref, False),
        start,
        end,
    )


# --- chips -----------------------------------------------------------------------------


def jrc_gallery(
    request: Request,
    store: CatalogStore,
    settings: Settings,
    chips: ChipStore,
    where: ChipLocation,
    bands: str,
    lut: str,
    title: str,
) -> Response:
    """The gallery page, or `{}` when no acquisition matches (as the originals)."""
    params = gallery_params(settings, bands=bands, lut=lut, size=128)
    page = gallery(request, store, settings, chips, where, params, title)
    made = sum(int(page.headers[h]) for h in ("X-Chips-Rendered", "X-Chips-Cached"))
    return page if made else JSONResponse({})


BandsQuery = Annotated[str, Query(description="three bands red_green_blue")]
LutQuery = Annotated[str, Query(description="percentiles p_low_p_high or six absolute values")]


@router.get("/chipsByLocation", response_class=HTMLResponse)
def chips_by_location(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    lon: LonQuery,
    lat: LatQuery,
    start_date: StartQuery,
    end_date: EndQuery,
    lut: LutQuery = "5_95",
    bands: BandsQuery = "B08_B04_B03",
    plevel: PlevelQuery = "LEVEL2A",
    product: ProductQuery = None,
) -> Response:
    """An HTML table of 128 x 128 3-band chips centred on lon/lat, one per date."""
    where = chip_location(store, lon, lat, start_date, end_date, product, plevel)
    title = f"Chips of {where.product.id}"
    return jrc_gallery(request, store, settings, chips, where, bands, lut, title)


@router.get("/chipsByParcelId", response_class=HTMLResponse)
def chips_by_parcel_id(
    request: Request,
    layer: LayerDep,
    parcels: ParcelsDep,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    pid: PidQuery,
    start_date: StartQuery,
    end_date: EndQuery,
    lut: LutQuery = "5_95",
    bands: BandsQuery = "B08_B04_B03",
    plevel: PlevelQuery = "LEVEL2A",
    product: ProductQuery = None,
) -> Response:
    """The gallery of a parcel: chips centred on its centroid, its outline drawn."""
    where = parcel_location(store, parcels, layer, pid, start_date, end_date, product, plevel)
    return jrc_gallery(request, store, settings, chips, where, bands, lut, f"Parcel {pid}")


def recipe_name(image: Image, lon: float, lat: float, chipsize: float) -> str:
    """The chip key of an image at a place and size, whatever the band: `<product>.<time>_
    <digest>`; its recipe (what to cut) is kept in the chip store as `<key>.json`."""
    what = {"image": image.id, "modified": str(image.modified), "lon": lon, "lat": lat}
    digest = hashlib.sha256(json.dumps({**what, "chipsize": chipsize}).encode()).hexdigest()
    return f"{image.product_id}.{image.acquired:%Y%m%dT%H%M%S}_{digest[:32]}"


def chip_url(request: Request, key: str, band: str) -> str:
    """The root-relative URL of a raw chip: `/query/chips/<key>_<band>.tif`."""
    return f"{root_path(request)}/{CHIPS_PATH}/{key}_{safe_name(band)}.tif"


def make_raw(
    request: Request,
    settings: Settings,
    chips: ChipStore,
    product: Product,
    images: list[Image],
    lon: float,
    lat: float,
    bands: list[str],
    chipsize: float,
) -> dict[str, list[str]]:
    """Raw chips of `images` x `bands`, rendered now (or found cached), with their recipes
    kept: the CbM `{"dates": [...], "chips": [...]}`, image by image, band by band."""
    dates, urls = [], []
    keys = {image.id: recipe_name(image, lon, lat, chipsize) for image in images}
    for image in images:
        recipe = {"image": image.id, "lon": lon, "lat": lat, "chipsize": chipsize}
        chips.ensure(f"{keys[image.id]}.json", lambda r=recipe: json.dumps(r).encode())
    made = {
        band: raw_chips(settings, product, images, lon, lat, RawParams(band, chipsize), chips)
        for band in bands
    }
    for n, image in enumerate(images):
        for band in bands:
            assert made[band][n].image.id == image.id
            dates.append(f"{image.acquired:%Y%m%dT%H%M%S}")
            urls.append(chip_url(request, keys[image.id], band))
    return {"dates": dates, "chips": urls}


def raw_answer(
    request: Request,
    store: CatalogStore,
    settings: Settings,
    chips: ChipStore,
    where: ChipLocation,
    band: str,
    chipsize: float,
) -> dict:
    """rawChipByLocation / rawChipByParcelID: one chip per date, `{}` when none."""
    params = raw_params(band=band, chipsize=chipsize)
    product = where.product
    resolve_bands(product, [params.band])
    images = chip_images(
        store,
        product,
        where.lon,
        where.lat,
        where.start,
        where.end,
        params.chipsize / 2,
        settings.chip_limit,
    )
    if not images:
        return {}
    return make_raw(
        request, settings, chips, product, images, where.lon, where.lat, [params.band], chipsize
    )


BandQuery = Annotated[str, Query(description="one band, e.g. B04 or SCL")]
ChipsizeQuery = Annotated[
    float, Query(description=f"chip edge in metres, below {MAX_RAW_CHIPSIZE}", gt=0)
]


@router.get("/rawChipByLocation")
def raw_chip_by_location(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    lon: LonQuery,
    lat: LatQuery,
    start_date: StartQuery,
    end_date: EndQuery,
    band: BandQuery = "B08",
    chipsize: ChipsizeQuery = 1280,
    plevel: PlevelQuery = "LEVEL2A",
    product: ProductQuery = None,
) -> dict:
    """Full-resolution single-band GeoTIFF chips centred on lon/lat, one per date:
    `{"dates": ["YYYYmmddTHHMMSS", ...], "chips": ["/query/chips/..._B04.tif", ...]}`."""
    where = chip_location(store, lon, lat, start_date, end_date, product, plevel)
    return raw_answer(request, store, settings, chips, where, band, chipsize)


@router.get("/rawChipByParcelID")
@router.get("/rawChipByParcelId", include_in_schema=False)
def raw_chip_by_parcel_id(
    request: Request,
    layer: LayerDep,
    parcels: ParcelsDep,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    pid: PidQuery,
    start_date: StartQuery,
    end_date: EndQuery,
    band: BandQuery = "B08",
    chipsize: ChipsizeQuery = 1280,
    plevel: PlevelQuery = "LEVEL2A",
    product: ProductQuery = None,
) -> dict:
    """Raw chips centred on the parcel's centroid (as rawChipByLocation)."""
    where = parcel_location(store, parcels, layer, pid, start_date, end_date, product, plevel)
    return raw_answer(request, store, settings, chips, where, band, chipsize)


class Batch(BaseModel):
    """rawChipsBatch: chips of named images (tiles) x bands at a point."""

    model_config = ConfigDict(extra="forbid")

    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    tiles: list[Annotated[str, Field(max_length=300)]] = Field(
        min_length=1, max_length=MAX_BATCH_CHIPS, description="image names (or ids)"
    )
    bands: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=MAX_BATCH_CHIPS
    )
    chipsize: float = Field(gt=0, lt=MAX_RAW_CHIPSIZE, allow_inf_nan=False)


@router.post("/rawChipsBatch")
def raw_chips_batch(
    request: Request,
    body: Batch,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    product: ProductQuery = None,
    plevel: PlevelQuery = "LEVEL2A",
) -> dict:
    """Chips of each named image (`tiles`: image names, e.g. S2A_MSIL2A_..., of the product)
    for each band: `{"dates": [...], "chips": [...]}`, tile by tile, band by band."""
    bands = list(dict.fromkeys(body.bands))
    tiles = list(dict.fromkeys(body.tiles))
    if len(tiles) * len(bands) > MAX_BATCH_CHIPS:
        raise bad_request(
            f"{len(tiles)} tiles x {len(bands)} bands is more than {MAX_BATCH_CHIPS} chips"
        )
    found = chip_window(store, "2000-01-01", "2000-01-01", product, plevel)[2]
    resolve_bands(found, bands)
    images = []
    for tile in tiles:
        image_id = tile if ":" in tile else f"{found.id}:{tile}"
        try:
            image = store.get_image(image_id)
        except NotFound:
            raise HTTPException(404, f"tile '{tile}' not found in '{found.id}'") from None
        if image.product_id != found.id:
            raise HTTPException(404, f"tile '{tile}' not found in '{found.id}'")
        images.append(image)
    return make_raw(
        request, settings, chips, found, images, body.lon, body.lat, bands, body.chipsize
    )


@router.get(
    "/chips/{name}",
    response_class=Response,
    responses={200: {"content": {"image/tiff": {}}}},
)
def query_chip(
    request: Request, name: str, store: StoreDep, settings: SettingsDep, chips: ChipStoreDep
) -> Response:
    """A raw chip handed out by the raw chip services; the same key with another band of
    the product is that band's chip (rendered on first request)."""
    match = CHIP_URL_NAME.match(name)
    missing = HTTPException(404, f"chip '{name}' is not known: request its chips again")
    if not match:
        raise missing
    try:
        product = store.get_product(match.group("product"))
    except NotFound:
        raise missing from None
    key = f"{match.group('product')}.{match.group('when')}_{match.group('key')}"
    recipe = chips.get(f"{key}.json")
    if recipe is None:
        raise missing
    text = recipe.read_bytes() if hasattr(recipe, "read_bytes") else recipe
    what = json.loads(text)
    try:
        image = store.get_image(what["image"])
    except NotFound:
        raise missing from None
    wanted = match.group("band")
    band = next((b.name for b in product.bands if safe_name(b.name) == wanted), None)
    if band is None:
        raise missing
    (chip,) = raw_chips(
        settings,
        product,
        [image],
        what["lon"],
        what["lat"],
        RawParams(band, what["chipsize"]),
        chips,
    )
    return chip_file(chip.name, store, settings, chips)
