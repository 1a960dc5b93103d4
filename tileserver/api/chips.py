"""Image chips by location (the JRC CbM chipsByLocation / rawChipByLocation services).

- `GET /chips/gallery`: an HTML table (8 columns) of 3-band PNG chips, one per date.
- `GET /chips/raw`: JSON `{"dates": [...], "chips": [...]}` of single-band GeoTIFF chips.
- `GET /parcels/{layer}/{pid}/chips/gallery` and `/chips/raw`: the same by parcel id
  (chipsByParcelId / rawChipByParcelID), centred on the parcel's centroid, its outline
  drawn on gallery chips.
- `GET /chips/files/{name}`: a rendered chip from the cache.

Chips are kept once in the app's chip store (`tileserver.chipcache`: the folder
`settings.chip_cache_dir`, default DATA_DIR/chips, or Redis when `settings.cache_url` is set)
under a name derived from what decides their pixels, so repeating a request (or widening its
dates) renders only chips not made before. Headers `X-Chips-Rendered` and `X-Chips-Cached` say
how many of the request's chips were made now and how many came from the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal

import shapely
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from shapely.geometry import shape

from tileserver.api.auth import key_query
from tileserver.api.deps import KnownQuery, SettingsDep, StoreDep, bad_request
from tileserver.api.parcels import ParcelsDep
from tileserver.api.templates import render_template, root_path
from tileserver.cache import make_etag
from tileserver.catalog.acquisitions import acquisitions
from tileserver.catalog.models import Band, Image, Product
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.chipcache import ChipStore, FolderChips, chip_dir
from tileserver.deadline import check
from tileserver.opener import ContextPool
from tileserver.render.chips import (
    Lut,
    band_grid,
    chip_area,
    chip_grid,
    chip_pixels,
    gallery_png,
    outline_pixels,
    parse_lut,
    raw_geotiff,
    read_chip,
)
from tileserver.render.errors import RenderError
from tileserver.render.reader import Grid, resolve_bands
from tileserver.settings import Settings

router = APIRouter(tags=["chips"], dependencies=[KnownQuery])

RENDERED_HEADER = "X-Chips-Rendered"
CACHED_HEADER = "X-Chips-Cached"
COLUMNS = 8  # gallery chips per table row, as the JRC gallery
MAX_RAW_CHIPSIZE = 5120  # metres; raw chips must be smaller
CHIP_FORMAT_VERSION = 2  # bump when rendering changes, so cached chips are not reused
LEVEL_PRODUCTS = {"LEVEL2A": "sentinel-2-l2a", "LEVEL1C": "sentinel-2-l1c"}
# <product>.<acquired>_<digest>.<ext>: the product lets /chips/files check who may read it
FILE_NAME = re.compile(r"^([A-Za-z0-9._-]+)\.\d{8}T\d{6}_[0-9a-f]{32}\.(png|tif)$")
MEDIA_TYPES = {"png": "image/png", "tif": "image/tiff; application=geotiff"}
FILES_PATH = "chips/files"
Level = Literal["LEVEL2A", "LEVEL1C"]


# --- parameters, parsed once ----------------------------------------------------------


def parse_date(name: str, text: str) -> date:
    """A YYYY-mm-dd date parameter; 400 naming the parameter otherwise."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise bad_request(f"{name} '{text}' is not a date like 2024-05-31 (YYYY-mm-dd)") from None


@dataclass(frozen=True)
class ChipLocation:
    """Where and when chips are cut: a WGS84 point, a date window, a product."""

    lon: float
    lat: float
    start: date
    end: date
    product: Product
    level: str
    outline: dict | None = None  # a parcel's WGS84 GeoJSON, drawn on gallery chips


def chip_window(
    store: CatalogStore, start_date: str, end_date: str, product: str | None, level: str
) -> tuple[date, date, Product]:
    """The dates and product of a chip request; 400/404 that name the problem."""
    start, end = parse_date("start_date", start_date), parse_date("end_date", end_date)
    if end < start:
        raise bad_request(f"end_date {end} is before start_date {start}")
    return start, end, store.get_product(product or LEVEL_PRODUCTS[level])


StartDate = Annotated[str, Query(description="first acquisition day, YYYY-mm-dd")]
EndDate = Annotated[str, Query(description="last acquisition day, YYYY-mm-dd (inclusive)")]
ProductQuery = Annotated[
    str | None, Query(description="product id; default: the one `level` names (sentinel-2-l2a)")
]
LevelQuery = Annotated[
    Level,
    Query(
        description="JRC processing level; only chooses the product when `product` is "
        "not given (LEVEL2A: sentinel-2-l2a, LEVEL1C: sentinel-2-l1c), else ignored"
    ),
]


def chip_location(
    store: StoreDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="longitude, WGS84 degrees")],
    lat: Annotated[float, Query(ge=-90, le=90, description="latitude, WGS84 degrees")],
    start_date: StartDate,
    end_date: EndDate,
    product: ProductQuery = None,
    level: LevelQuery = "LEVEL2A",
) -> ChipLocation:
    """The location parameters shared by every chip endpoint; unknown products are 404."""
    start, end, found = chip_window(store, start_date, end_date, product, level)
    return ChipLocation(lon, lat, start, end, found, level)


def parcel_location(
    store: StoreDep,
    parcels: ParcelsDep,
    layer: str,
    pid: str,
    start_date: StartDate,
    end_date: EndDate,
    product: ProductQuery = None,
    level: LevelQuery = "LEVEL2A",
) -> ChipLocation:
    """Chips of a parcel: centred on its centroid, its outline drawn on gallery chips."""
    parcel = parcels.get(layer, pid, geometry=True)
    start, end, found = chip_window(store, start_date, end_date, product, level)
    return ChipLocation(
        parcel.centroid_lon, parcel.centroid_lat, start, end, found, level, parcel.geometry
    )


@dataclass(frozen=True)
class GalleryParams:
    """What a gallery chip shows: three band names, the LUT and the size in pixels."""

    bands: tuple[str, str, str]
    lut: Lut
    size: int


def gallery_params(
    settings: SettingsDep,
    bands: Annotated[
        str,
        Query(
            description="three band names joined by '_' (red_green_blue); the first "
            "band's file sets the grid and resolution"
        ),
    ] = "B08_B04_B03",
    lut: Annotated[
        str,
        Query(
            description="p_low_p_high percentiles of each chip (5_95), or six absolute "
            "values low_high per band (0_5000_0_3000_0_3000)"
        ),
    ] = "5_95",
    size: Annotated[int, Query(description="chip width and height in pixels")] = 128,
) -> GalleryParams:
    """The gallery's rendering parameters; each problem is a 400 that names it."""
    names = tuple(n.strip() for n in bands.split("_"))
    if len(names) != 3 or not all(names):
        raise bad_request(
            f"bands '{bands}' must be three band names joined by '_', e.g. B08_B04_B03"
        )
    if not 1 <= size <= settings.max_tile_size:
        raise bad_request(f"size {size} must be 1..{settings.max_tile_size} pixels")
    try:
        parsed = parse_lut(lut, bands=3)
    except RenderError as exc:
        raise bad_request(str(exc)) from None
    return GalleryParams(names, parsed, size)


@dataclass(frozen=True)
class RawParams:
    """What a raw chip holds: one band, `chipsize` metres square."""

    band: str
    chipsize: float


def raw_params(
    band: Annotated[str, Query(description="one band name, e.g. B04")] = "B08",
    chipsize: Annotated[
        float,
        Query(
            description=f"chip edge in metres, below {MAX_RAW_CHIPSIZE}; pixels = "
            "round(chipsize / band resolution), halves up"
        ),
    ] = 1280,
) -> RawParams:
    """The raw chip parameters; chipsize out of (0, 5120) is a 400."""
    if not 0 < chipsize < MAX_RAW_CHIPSIZE:
        raise bad_request(
            f"chipsize {chipsize:g} m is out of range: it must be above 0 and below "
            f"{MAX_RAW_CHIPSIZE} m"
        )
    return RawParams(band.strip(), chipsize)


ChipLocationDep = Annotated[ChipLocation, Depends(chip_location)]
ParcelLocationDep = Annotated[ChipLocation, Depends(parcel_location)]
GalleryParamsDep = Annotated[GalleryParams, Depends(gallery_params)]
RawParamsDep = Annotated[RawParams, Depends(raw_params)]


# --- selection and cache --------------------------------------------------------------


def chip_images(
    store: CatalogStore,
    product: Product,
    lon: float,
    lat: float,
    start: date,
    end: date,
    half_m: float,
    limit: int,
) -> list[Image]:
    """One image per date whose footprint covers the point, oldest first (SEMANTICS.md 3).

    Of several images of one date, the one covering the chip (a square of half-side
    `half_m` metres) best is kept, then the highest processing version; when that one
    misses the point itself, the best image covering the point is. More than `limit`
    images is a 400 naming the count.
    """
    point = shapely.Point(lon, lat)
    covering = acquisitions(store, product.id, point, start, end)
    if half_m > 0 and covering:
        best = {
            image.acquired.date(): image
            for image in acquisitions(store, product.id, chip_area(lon, lat, half_m), start, end)
        }
        covering = [
            best[day]
            if (day := image.acquired.date()) in best and shape(best[day].geometry).covers(point)
            else image
            for image in covering
        ]
    if len(covering) > limit:
        raise bad_request(
            f"this request would produce {len(covering)} chips, more than the limit of {limit}: "
            f"shorten the date window ({start} to {end})"
        )
    return covering


def band_resolution(band: Band) -> float:
    """The band's nominal resolution in metres (0 when unknown or in degrees)."""
    if band.resolution is None or band.resolution.unit != "meters":
        return 0.0
    return band.resolution.value


async def get_chip_store(request: Request) -> ChipStore:
    """The app's chip store, chosen once at start."""
    return request.app.state.chips


ChipStoreDep = Annotated[ChipStore, Depends(get_chip_store)]


def chip_file_name(image: Image, product: Product, kind: str, grid: Grid, **extra) -> str:
    """`<product>.<acquired>_<digest>.<ext>`: the digest covers all that decides the pixels.

    That is the image (id and modified time), the product's modified time (band
    definitions), the kind, the chip's grid (its CRS, origin and size: a window of its
    file's grid) and `extra` (bands, lut, outline).
    """
    key = {
        "version": CHIP_FORMAT_VERSION,
        "kind": kind,
        "image": image.id,
        "image_modified": str(image.modified),
        "product_modified": str(product.modified),
        "crs": grid.crs.to_string(),
        "origin": [grid.transform.c, grid.transform.f],
        "size": [grid.width, grid.height],
        **extra,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    ext = "png" if kind == "gallery" else "tif"
    return f"{image.product_id}.{image.acquired:%Y%m%dT%H%M%S}_{digest}.{ext}"


@dataclass(frozen=True)
class Chip:
    """One chip of a request: its image, cached file name and whether it was made now."""

    image: Image
    name: str
    rendered: bool


def run_chips(images: Sequence[Image], make: Callable[[Image], Chip], threads: int) -> list[Chip]:
    """make(image) for each image, in order, on a few threads; a checkpoint per chip."""

    def checked(image: Image) -> Chip:
        check()
        return make(image)

    if len(images) <= 1 or threads <= 1:
        return [checked(image) for image in images]
    with ContextPool(max_workers=min(threads, len(images))) as pool:
        return list(pool.map(checked, images))


def gallery_chips(
    settings: Settings,
    product: Product,
    images: Sequence[Image],
    lon: float,
    lat: float,
    params: GalleryParams,
    outline: dict | None = None,
    chips: ChipStore | None = None,
) -> list[Chip]:
    """PNG chips of `images` centred on lon/lat, from `chips` or rendered now.

    The grid is the first band's file's, snapped to its pixels; `outline` (WGS84 GeoJSON)
    is drawn on the chips when given. Without `chips`, the settings' chip folder.
    """
    bands = resolve_bands(product, params.bands)
    chips = chips or FolderChips(chip_dir(settings))
    outline_key = json.dumps(outline, sort_keys=True) if outline is not None else None

    def make(image: Image) -> Chip:
        crs, transform = band_grid(image, bands[0])
        grid = chip_grid(crs, transform, lon, lat, params.size, params.size)
        name = chip_file_name(
            image,
            product,
            "gallery",
            grid,
            bands=list(params.bands),
            lut=params.lut.text,
            outline=outline_key,
        )

        def render() -> bytes:
            data = read_chip(image, bands, grid, threads=1, alpha=product.alpha_band())
            drawn = outline_pixels(outline, grid) if outline is not None else None
            return gallery_png(data, params.lut, drawn)

        return Chip(image, name, chips.ensure(name, render))

    return run_chips(images, make, settings.reader_threads)


def raw_chips(
    settings: Settings,
    product: Product,
    images: Sequence[Image],
    lon: float,
    lat: float,
    params: RawParams,
    chips: ChipStore | None = None,
) -> list[Chip]:
    """Single-band GeoTIFF chips of `images` at the band's own grid, centred on lon/lat."""
    (band,) = resolve_bands(product, [params.band])
    chips = chips or FolderChips(chip_dir(settings))

    def make(image: Image) -> Chip:
        crs, transform = band_grid(image, band)
        width, height = chip_pixels(params.chipsize, transform)
        grid = chip_grid(crs, transform, lon, lat, width, height)
        name = chip_file_name(image, product, "raw", grid, bands=[band.name])

        def render() -> bytes:
            data = read_chip(image, [band], grid, threads=1, alpha=product.alpha_band())
            tags = {"image_id": image.id, "acquired": image.acquired.isoformat()}
            return raw_geotiff(data, grid, band.name, band.nodata, tags)

        return Chip(image, name, chips.ensure(name, render))

    return run_chips(images, make, settings.reader_threads)


def count_headers(chips: Sequence[Chip]) -> dict[str, str]:
    """X-Chips-Rendered / X-Chips-Cached of a request."""
    rendered = sum(chip.rendered for chip in chips)
    return {RENDERED_HEADER: str(rendered), CACHED_HEADER: str(len(chips) - rendered)}


# --- endpoints ------------------------------------------------------------------------


class RawChips(BaseModel):
    """Raw chips as the JRC rawChipByLocation answers them, one per acquisition date."""

    dates: list[str] = Field(description="acquisition times, YYYYmmddTHHMMSS (UTC), ascending")
    chips: list[str] = Field(
        description="GeoTIFF URLs relative to the server root, e.g. chips/files/NAME.tif: "
        "resolve them against the server's base URL ending in '/'"
    )


def gallery_response(
    request: Request,
    title: str,
    chips: Sequence[Chip],
    params: GalleryParams,
    description: dict,
) -> HTMLResponse:
    """The gallery page: COLUMNS chips per row, in date order, each labelled with its date."""
    root, key = root_path(request), key_query(request)
    cells = [
        {
            "src": f"{root}/{FILES_PATH}/{chip.name}" + (f"?{key}" if key else ""),
            "date": f"{chip.image.acquired:%Y-%m-%d}",
            "title": f"{chip.image.name} ({chip.image.acquired:%Y-%m-%d %H:%M:%S} UTC)",
        }
        for chip in chips
    ]
    rows = [cells[i : i + COLUMNS] for i in range(0, len(cells), COLUMNS)]
    html = render_template(
        "gallery.html", title=title, rows=rows, size=params.size, description=description
    )
    return HTMLResponse(html, headers=count_headers(chips))


def gallery(
    request: Request,
    store: CatalogStore,
    settings: Settings,
    chips: ChipStore,
    where: ChipLocation,
    params: GalleryParams,
    title: str,
) -> HTMLResponse:
    """The gallery page of a location (and outline), rendering only chips not cached."""
    product = where.product
    bands = resolve_bands(product, params.bands)  # unknown bands: 400 before any search
    half_m = params.size * band_resolution(bands[0]) / 2
    images = chip_images(
        store, product, where.lon, where.lat, where.start, where.end, half_m, settings.chip_limit
    )
    made = gallery_chips(
        settings, product, images, where.lon, where.lat, params, where.outline, chips
    )
    description = {
        "product": product.id,
        "location": f"{where.lon:.6f}, {where.lat:.6f}",
        "dates": f"{where.start} to {where.end}",
        "bands": " / ".join(params.bands),
        "lut": params.lut.text,
    }
    return gallery_response(request, title, made, params, description)


def raw(
    response: Response,
    store: CatalogStore,
    settings: Settings,
    chips: ChipStore,
    where: ChipLocation,
    params: RawParams,
) -> RawChips:
    """Raw chips of a location, rendering only those not cached."""
    product = where.product
    resolve_bands(product, [params.band])  # unknown band: 400 before any search
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
    made = raw_chips(settings, product, images, where.lon, where.lat, params, chips)
    response.headers.update(count_headers(made))
    return RawChips(
        dates=[f"{chip.image.acquired:%Y%m%dT%H%M%S}" for chip in made],
        chips=[f"{FILES_PATH}/{chip.name}" for chip in made],
    )


@router.get("/chips/gallery", response_class=HTMLResponse)
def chips_gallery(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    where: ChipLocationDep,
    params: GalleryParamsDep,
) -> HTMLResponse:
    """A gallery of 3-band PNG chips centred on lon/lat, one per acquisition date.

    As JRC chipsByLocation: `bands` red_green_blue, `lut` percentiles or absolute ranges,
    `size` pixels; nodata is transparent. No image covering the point gives a page that
    says so. `X-Chips-Rendered` / `X-Chips-Cached` count chips made now / reused.
    """
    return gallery(request, store, settings, chips, where, params, f"Chips of {where.product.id}")


@router.get("/parcels/{layer}/{pid}/chips/gallery", response_class=HTMLResponse)
def parcel_gallery(
    request: Request,
    layer: str,
    pid: str,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    where: ParcelLocationDep,
    params: GalleryParamsDep,
) -> HTMLResponse:
    """The gallery of a parcel: chips centred on its centroid with its outline drawn."""
    return gallery(request, store, settings, chips, where, params, f"Parcel {pid} of {layer}")


@router.get("/chips/raw", response_model=RawChips)
def chips_raw(
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    where: ChipLocationDep,
    params: RawParamsDep,
) -> RawChips:
    """Full-resolution single-band GeoTIFF chips centred on lon/lat, one per date.

    As JRC rawChipByLocation: each chip is in the image's own CRS at the band's native
    resolution, round(chipsize / resolution) (halves up) pixels square, snapped to the band's
    pixel grid, band name as description, nodata set. URLs are relative to the server root.
    """
    return raw(response, store, settings, chips, where, params)


@router.get("/parcels/{layer}/{pid}/chips/raw", response_model=RawChips)
def parcel_raw(
    layer: str,
    pid: str,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    chips: ChipStoreDep,
    where: ParcelLocationDep,
    params: RawParamsDep,
) -> RawChips:
    """Raw chips of a parcel (rawChipByParcelID), centred on its centroid."""
    return raw(response, store, settings, chips, where, params)


@router.get(
    "/chips/files/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/tiff": {}}}},
)
def chip_file(name: str, store: StoreDep, settings: SettingsDep, chips: ChipStoreDep) -> Response:
    """A chip made by /chips/gallery or /chips/raw (names only; no paths).

    A chip of a product the caller may not read is as absent as one never made.
    """
    match = FILE_NAME.match(name)
    if not match:
        raise HTTPException(
            404, f"'{name}' is not a chip file name (chips are named by /chips/raw and /gallery)"
        )
    missing = HTTPException(404, f"chip '{name}' is not in the cache: request its chips again")
    try:
        store.get_product(match.group(1))
    except NotFound:
        raise missing from None
    found = chips.get(name)
    if found is None:
        raise missing
    media_type = MEDIA_TYPES[name.rsplit(".", 1)[1]]
    headers = {"Cache-Control": settings.cache_control}
    if isinstance(found, Path):
        return FileResponse(found, media_type=media_type, headers=headers)
    return Response(found, media_type=media_type, headers={**headers, "ETag": make_etag(found)})
