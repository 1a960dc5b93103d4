"""Catalog records: products (STAC collections), their bands, and images (STAC items).

Band attributes follow the Descartes Labs Catalog so that its scaling rules
(SEMANTICS.md section 1) apply unchanged.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from cachetools import LRUCache
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DataType = Literal["Byte", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64"]
BandType = Literal["spectral", "mask", "class", "generic", "microwave"]
StorageState = Literal["available", "remote"]

NAME_PATTERN = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$"  # not "." nor ".."
ACCESS_ENTRY = r"^(user|org):[A-Za-z0-9._@-]{1,200}$"  # `public` is allowed among readers
Range = tuple[float, float]

# numpy/rasterio dtype name -> catalog data type
NUMPY_TO_DATA_TYPE: dict[str, DataType] = {
    "uint8": "Byte",
    "int8": "Int16",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}
DATA_TYPE_TO_NUMPY: dict[str, str] = {
    "Byte": "uint8",
    "UInt16": "uint16",
    "Int16": "int16",
    "UInt32": "uint32",
    "Int32": "int32",
    "Float32": "float32",
    "Float64": "float64",
}


def sortable_time(value: datetime) -> str:
    """A UTC time as fixed-width text, so SQL orders it as time (naive means UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utcnow() -> datetime:
    """Now, timezone-aware, so stored times always carry UTC."""
    return datetime.now(UTC)


class Resolution(BaseModel):
    """Nominal ground sample distance of a band."""

    value: float = Field(gt=0)
    unit: Literal["meters", "degrees"] = "meters"


class ProcessingStep(BaseModel):
    """One step of a processing level: the band's ranges once the step is applied."""

    function: str | None = Field(None, description="'linear' (parameter [gain, offset]) or None")
    parameter: Any = None
    index: int | None = None
    data_type: DataType | None = None
    data_range: Range | None = None
    display_range: Range | None = None
    physical_range: Range | None = None
    physical_range_unit: str | None = None


# A processing level whose value names another level; followed when scaling and converting
# pixels (tileserver.scaling_rules.level_steps), where a loop or a dangling name is an error.
LevelAlias = Annotated[str, Field(min_length=1, max_length=200)]


class Band(BaseModel):
    """A band of a product: where its pixels are in an image's files and how to scale them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=200)
    description: str | None = None
    type: BandType = "spectral"
    data_type: DataType = "UInt16"
    nodata: float | None = None
    data_range: Range = (0, 10000)
    display_range: Range | None = None
    physical_range: Range | None = None
    physical_range_unit: str | None = None
    resolution: Resolution | None = None
    file_index: int = Field(0, ge=0, description="0-based index into the image's files")
    band_index: int = Field(0, ge=0, description="0-based band index inside that file")
    is_alpha: bool = Field(False, description="a mask band whose 0 pixels are transparent")
    colormap_name: str | None = None
    colormap: list[tuple[int, int, int, int]] | None = None
    class_labels: list[str | None] | None = None
    wavelength_nm_center: float | None = None
    wavelength_nm_min: float | None = None
    wavelength_nm_max: float | None = None
    wavelength_nm_fwhm: float | None = None
    processing_levels: dict[str, list[ProcessingStep] | LevelAlias] | None = Field(
        None,
        description="level name -> its steps, or the name of another level (an alias, "
        "e.g. {'default': 'toa', 'toa': [steps]}); `default` applies when a request names none",
    )
    vendor_order: int | None = None
    tags: list[str] = []

    @model_validator(mode="after")
    def _defaults_and_checks(self) -> Band:
        if self.display_range is None:
            self.display_range = self.data_range
        if self.physical_range is None:
            self.physical_range = self.data_range
        if self.is_alpha and self.type != "mask":
            raise ValueError("is_alpha is only allowed on mask bands")
        if self.colormap is not None and len(self.colormap) > 256:
            raise ValueError("a class colormap has at most 256 entries")
        return self


MAX_PRESETS = 32  # render presets of one product
MAX_PRESET_TEXT = 4096  # characters of a preset's expression, colormap or colour formula
PRESET_BANDS = 64  # band names in a preset (as render_params' MAX_BANDS)
PresetText = Annotated[str, Field(min_length=1, max_length=MAX_PRESET_TEXT)]


class RenderPreset(BaseModel):
    """A named rendering of a product (`?preset=NAME`): the tile routes' query parameters,
    as the query gives them; the request's own parameters override them."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    bands: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, min_length=1, max_length=PRESET_BANDS
    )
    expression: PresetText | None = None
    scaling: list[Annotated[str, Field(max_length=MAX_PRESET_TEXT)]] | None = Field(
        None, min_length=1, max_length=PRESET_BANDS
    )
    data_type: DataType | None = None
    processing_level: str | None = Field(None, max_length=200)
    colormap_name: str | None = Field(None, max_length=200)
    colormap: PresetText | None = Field(None, description="JSON, as the `colormap` parameter")
    color_formula: PresetText | None = None
    nodata: float | None = None
    resampling: str | None = Field(None, max_length=50)
    cloud_mask: str | None = Field(None, max_length=200, description="as `cloud_mask`")

    def query(self) -> dict[str, Any]:
        """The preset's parameters as render_params takes them (unset ones left out)."""
        given = self.model_dump(exclude_none=True, exclude={"title", "description"})
        if "bands" in given:
            given["bands"] = ",".join(given["bands"])
        return given


class Product(BaseModel):
    """A product (STAC collection): a family of images with the same bands."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_PATTERN, max_length=200)
    name: str | None = None
    description: str | None = None
    tags: list[str] = []
    default_bands: list[str] | None = Field(
        None, description="bands shown when a request names none (e.g. the RGB composite)"
    )
    start_datetime: datetime | None = None
    end_datetime: datetime | None = None
    owners: list[str] = Field([], description="user:NAME or org:NAME: read, write, share")
    readers: list[str] = Field([], description="user:NAME, org:NAME or public: read")
    writers: list[str] = Field([], description="user:NAME or org:NAME: read, write images")
    properties: dict[str, Any] = {}
    bands: list[Band] = []
    presets: dict[Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)], RenderPreset] = (
        Field({}, description="named renderings (true colour, NDVI...), used as ?preset=NAME")
    )
    created: datetime | None = None
    modified: datetime | None = None

    @field_validator("bands")
    @classmethod
    def _unique_band_names(cls, bands: list[Band]) -> list[Band]:
        names = [b.name for b in bands]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate band names: {', '.join(dupes)}")
        return bands

    @field_validator("owners", "writers", "readers")
    @classmethod
    def _access_entries(cls, entries: list[str], info: ValidationInfo) -> list[str]:
        for entry in entries:
            if entry == "public" and info.field_name == "readers":
                continue
            if not re.match(ACCESS_ENTRY, entry):
                also = " or public" if info.field_name == "readers" else ""
                raise ValueError(f"'{entry}' is not an access entry: use user:NAME, org:NAME{also}")
        return sorted(set(entries))

    @model_validator(mode="after")
    def _default_bands_exist(self) -> Product:
        if self.default_bands:
            missing = [b for b in self.default_bands if self.band(b) is None]
            if missing:
                raise ValueError(f"default_bands names unknown bands: {', '.join(missing)}")
        if len(self.presets) > MAX_PRESETS:
            raise ValueError(f"{len(self.presets)} presets, more than {MAX_PRESETS}")
        for name, preset in self.presets.items():
            missing = [b for b in preset.bands or [] if self.band(b) is None]
            if missing:
                raise ValueError(f"preset '{name}' names unknown bands: {', '.join(missing)}")
        return self

    def band(self, name: str) -> Band | None:
        """The band called `name`, or None."""
        for band in self.bands:
            if band.name == name:
                return band
        return None

    def display_bands(self) -> list[str]:
        """Bands to show when a request names none: the product's RGB, else the first band."""
        if self.default_bands:
            return list(self.default_bands)
        by_name = {b.name.lower(): b.name for b in self.bands}
        if all(c in by_name for c in ("red", "green", "blue")):
            return [by_name["red"], by_name["green"], by_name["blue"]]
        spectral = [b for b in self.bands if b.type not in ("mask", "class")]
        return [spectral[0].name] if spectral else [self.bands[0].name] if self.bands else []

    def alpha_band(self) -> Band | None:
        """The product's alpha band (a mask band with is_alpha), if any."""
        return next((b for b in self.bands if b.is_alpha), None)


class BandStatistics(BaseModel):
    """Statistics of one band of one image, read from an overview at ingest."""

    min: float
    max: float
    mean: float | None = None
    std: float | None = None
    valid_percent: float | None = None
    percentiles: dict[int, float] = Field(
        default_factory=dict, description="percentile (1..99) -> value"
    )


class ImageFile(BaseModel):
    """One file of an image (a path, a /vsi path or a URL GDAL can open)."""

    href: str
    size: int | None = None


class Image(BaseModel):
    """One acquisition (STAC item) of a product."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    name: str = Field(pattern=NAME_PATTERN, max_length=300)
    product_id: str = Field(pattern=NAME_PATTERN)
    acquired: datetime
    geometry: dict[str, Any] = Field(description="GeoJSON footprint in WGS84")
    bbox: tuple[float, float, float, float] | None = None
    cloud_cover: float | None = Field(None, ge=0, le=100, description="percent")
    storage_state: StorageState = "available"
    files: list[ImageFile] = []
    crs: str | None = Field(None, description="the image's CRS, EPSG:xxxx or WKT")
    geotrans: tuple[float, float, float, float, float, float] | None = Field(
        None, description="GDAL geotransform of the finest file"
    )
    width: int | None = None
    height: int | None = None
    band_stats: dict[str, BandStatistics] = {}
    properties: dict[str, Any] = {}
    created: datetime | None = None
    modified: datetime | None = None

    @field_validator("acquired")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC)

    @model_validator(mode="after")
    def _derive(self) -> Image:
        expected = image_id(self.product_id, self.name)
        if self.id and self.id != expected:
            raise ValueError(f"image id must be '{expected}' (product_id:name), got '{self.id}'")
        self.id = expected
        if self.storage_state == "available" and not self.files:
            raise ValueError("an available image needs files; use storage_state 'remote'")
        ends = [self.properties.get(k) is not None for k in ("start_datetime", "end_datetime")]
        if ends[0] != ends[1]:
            given, missing = ("start", "end") if ends[0] else ("end", "start")
            raise ValueError(
                f"properties has {given}_datetime without {missing}_datetime:"
                " an interval needs both ends (STAC)"
            )
        if self.bbox is None:
            self.bbox = footprint_bounds(self.geometry)
        return self


def footprint_bounds(geometry: dict) -> tuple[float, float, float, float]:
    """The bounds of a GeoJSON footprint; ValueError if it is none."""
    from shapely.geometry import shape

    from tileserver.catalog.geojson import check_geometry_size

    check_geometry_size(geometry, "geometry")  # shape() recurses per level
    try:  # shapely raises whatever a malformed mapping trips on
        footprint = shape(geometry)
    except Exception as exc:
        raise ValueError(f"geometry is not a GeoJSON geometry: {exc!r}") from None
    if footprint.is_empty:
        raise ValueError("geometry is empty: an image needs a footprint")
    return tuple(footprint.bounds)


def with_footprint_bbox(image: Image) -> Image:
    """The image as stores write it: its bbox the footprint's bounds, whatever was sent.

    A client's bbox that does not enclose the footprint would hide the image from index
    lookups, and one crossing the antimeridian (west > east) is no box an R*Tree or a
    PostGIS envelope holds.
    """
    bounds = footprint_bounds(image.geometry)
    return image if image.bbox == bounds else image.model_copy(update={"bbox": bounds})


def stamped(record, created: datetime | None, keep_times: bool = False):
    """A product or image as a store writes it: first-write `created`, `modified` now.

    `keep_times` keeps a record's own times (copies between catalogs).
    """
    if keep_times and record.modified is not None:
        return record
    now = utcnow()
    return record.model_copy(update={"created": created or now, "modified": now})


def image_id(product_id: str, name: str) -> str:
    """Global image id: `product_id:name`."""
    return f"{product_id}:{name}"


def split_image_id(value: str) -> tuple[str, str]:
    """Split a global image id into (product_id, name); ValueError when it has no ':'."""
    product_id, sep, name = value.partition(":")
    if not sep or not product_id or not name:
        raise ValueError(f"image id '{value}' is not of the form product_id:name")
    return product_id, name


def safe_name(value: str) -> str:
    """Turn a file stem into a valid image/band name (never "." or "..": names are folders)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_")
    return name if re.fullmatch(NAME_PATTERN, name) else "unnamed"


M = TypeVar("M", bound=BaseModel)


class ParsedDocs:
    """The last model parsed from each stored JSON document, reused while the text is the same.

    Every tile looks up its image and product; parsing their JSON is most of a cached
    tile's cost. Callers must not change the models they get (nothing does).
    """

    def __init__(self, size: int = 4096):
        self._models: LRUCache[tuple[type, str], tuple[str, BaseModel]] = LRUCache(size)
        self._lock = threading.Lock()

    def get(self, model: type[M], key: str, doc: str) -> M:
        """`model` parsed from `doc`, the stored document of `key`."""
        with self._lock:
            known = self._models.get((model, key))
        if known is not None and known[0] == doc:
            return known[1]  # type: ignore[return-value]
        parsed = model.model_validate_json(doc)
        with self._lock:
            self._models[(model, key)] = (doc, parsed)
        return parsed
