"""Imports: find the scenes under a folder or bucket prefix, filter them, register them.

The parameters and the answer are those of the UP42 "Import Data (DIMAP)" block
(SEMANTICS.md section 4). Each scene is read in two steps: its metadata for the filters
(XML, JSON, file headers), then, for the scenes kept, its full record. Each scene is
registered in its own transaction, so one that fails is reported with its reason and
the others land; importing again updates the same images.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import rasterio
import rasterio.shutil
import shapely
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from shapely.geometry import box, shape
from tqdm import tqdm

from tileserver import opener
from tileserver.catalog.access import ScopedStore
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import NAME_PATTERN, Band, Image, ImageFile, Product, safe_name
from tileserver.catalog.search import datetime_interval, parse_instant
from tileserver.catalog.store import CatalogError, CatalogStore, NotFound
from tileserver.ingest import beam_dimap, dimap2, safe, vsi
from tileserver.ingest.geotiff import GeoTiffScene
from tileserver.ingest.overrides import apply_overrides
from tileserver.ingest.overviews import image_reduced
from tileserver.ingest.raster import IngestError
from tileserver.ingest.scene import PROVENANCE, SceneMeta, SceneReader
from tileserver.ingest.stac import StacScene, load_item
from tileserver.opener import Allowed, Confinement, open_raster
from tileserver.pyramids import reduced_folder
from tileserver.render.errors import gdal_reason

log = logging.getLogger(__name__)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
MAX_ITEM_BYTES = 4 * 1024 * 1024  # a JSON file larger than this is no STAC Item
# S3 (legacy names included) and GCS bucket names: nothing that changes a request's URL
BUCKET_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,220}[A-Za-z0-9])?")


class ImportRequest(BaseModel):
    """The UP42 DIMAP import parameters, plus `product` and `copy`."""

    model_config = ConfigDict(extra="forbid")

    cloud_provider: Literal["aws", "gcs", "file"]
    bucket_name: str = Field(
        min_length=1, description="bucket name; for `file`, a folder on the server"
    )
    prefix: str = Field("", description="folder inside the bucket, e.g. folder1/folder2/")
    ids: list[str] | None = Field(None, description="scene ids; override every other filter")
    time: str | None = Field(None, description="start/end acquisition range (RFC 3339, ..)")
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict | None = Field(None, description="GeoJSON geometry scenes must intersect")
    contains: dict | None = Field(None, description="GeoJSON geometry scenes must cover")
    limit: int | None = Field(None, ge=1, description="most scenes to import; none: all")
    max_cloud_cover: float | None = Field(None, ge=0, le=100, description="percent")
    product: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="register every scene into this product (default: one per kind of scene)",
    )
    copy_pixels: bool = Field(
        False,
        alias="copy",
        description="copy the pixels into the local COG store instead of reading the bucket",
    )

    @field_validator("bucket_name")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return value.strip()

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            datetime_interval(value)  # ValueError names the problem
        return value

    @field_validator("intersects", "contains")
    @classmethod
    def _geometry(cls, value: dict | None, info: ValidationInfo) -> dict | None:
        return None if value is None else check_geometry(value, info.field_name)

    @model_validator(mode="after")
    def _one_spatial_filter(self) -> ImportRequest:
        given = [k for k in ("bbox", "intersects", "contains") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of bbox, intersects, contains (got {given})")
        if self.bbox is not None:
            minx, miny, maxx, maxy = self.bbox
            if not (minx <= maxx and miny <= maxy):
                raise ValueError("bbox must be [minx, miny, maxx, maxy] with min <= max")
        return self

    @model_validator(mode="after")
    def _bucket_name_shape(self) -> ImportRequest:
        """Refused here, not by the store client: obstore panics on a name a URL cannot hold."""
        if "\x00" in self.bucket_name + self.prefix:
            raise ValueError("bucket_name and prefix cannot hold a NUL character")
        if self.cloud_provider != "file" and not BUCKET_NAME.fullmatch(self.bucket_name):
            raise ValueError(
                f"bucket_name {self.bucket_name!r} is not a bucket name: up to 222 letters, "
                "digits, '.', '-' or '_', starting and ending with a letter or digit"
            )
        return self


@dataclass
class Found:
    """A scene found under the prefix: its reader and the file that led to it."""

    href: str
    reader: SceneReader


@dataclass
class ImportResult:
    """What an import registered, what it left out by the filters, and what failed."""

    features: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    found: int = 0
    filtered_out: int = 0

    def collection(self) -> dict:
        """The answer: a GeoJSON FeatureCollection, failures as a foreign member."""
        return {
            "type": "FeatureCollection",
            "features": self.features,
            "numberFound": self.found,
            "numberFilteredOut": self.filtered_out,
            "failed": self.failed,
        }


def _claims(href: str) -> str:
    """The folder prefix whose files belong to the scene entered at `href`."""
    name = posixpath.basename(href)
    if name.lower().endswith(".dim"):
        return href[: -len(".dim")] + ".data/"
    return vsi.parent(href).rstrip("/") + "/"


def relative_name(href: str, root: str) -> str:
    """A lone file's image name: its path under the import root, without suffix."""
    base = root.rstrip("/") + "/"
    relative = href[len(base) :] if href.startswith(base) else posixpath.basename(href)
    return safe_name("_".join(posixpath.splitext(relative)[0].split("/")))


def find_scenes(
    hrefs: list[str], root: str, default_product: str
) -> tuple[list[Found], list[dict]]:
    """The scenes among listed files, and the files that look like scenes but are not.

    DIMAP volumes first (a VOL_*.XML claims its folder, so its components are not
    scenes again), then lone DIM_*.XML, BEAM-DIMAP .dim files (each claims its
    .data folder), Sentinel-2 SAFE products (a document claims its .SAFE folder; a .zip is
    one product; each granule is a scene), STAC Items (each claims its assets) and what
    GeoTIFFs are left.
    """
    found: list[Found] = []
    problems: list[dict] = []
    claimed: list[str] = []
    owned: set[str] = set()

    def free(href: str) -> bool:
        return href not in owned and not any(href.startswith(p) for p in claimed)

    by_kind: dict[str, list[str]] = {k: [] for k in ("vol", "dim", "beam", "safe", "json", "tif")}
    for href in hrefs:
        name = posixpath.basename(href).lower()
        if dimap2.is_entry(href):
            by_kind["vol" if name.startswith("vol_") else "dim"].append(href)
        elif beam_dimap.is_entry(href):
            by_kind["beam"].append(href)
        elif safe.is_entry(href) or safe.is_archive(href):
            by_kind["safe"].append(href)
        elif name.endswith(".json"):
            by_kind["json"].append(href)
        elif name.endswith(GEOTIFF_SUFFIXES):
            by_kind["tif"].append(href)
    for href in by_kind["vol"]:  # two volumes side by side are two scenes
        if href not in owned:
            found.append(Found(href, dimap2.Dimap2Scene(href)))
            claimed.append(_claims(href))
    for href in by_kind["dim"]:
        if free(href):
            found.append(Found(href, dimap2.Dimap2Scene(href)))
            claimed.append(_claims(href))
    for href in by_kind["beam"]:
        if free(href):
            found.append(Found(href, beam_dimap.BeamDimapScene(href)))
            claimed.append(_claims(href))
    for href in by_kind["safe"]:
        if not free(href):
            continue
        try:
            scenes = safe.product_scenes(href)
        except (IngestError, vsi.StorageError, opener.Refused) as exc:
            problems.append({"path": href, "reason": reason(exc)})
            continue
        found.extend(Found(scene.href, scene) for scene in scenes)
        if safe.is_entry(href):
            claimed.append(_claims(href))
    for href in by_kind["json"]:
        if not free(href):
            continue
        try:
            item = load_item(href, MAX_ITEM_BYTES)
        except (IngestError, vsi.StorageError, opener.Refused) as exc:
            problems.append({"path": href, "reason": reason(exc)})
            continue
        if item is not None:
            scene = StacScene(href, item, default_product)
            found.append(Found(href, scene))
            owned.update(scene.asset_hrefs())
    for href in by_kind["tif"]:
        if free(href):
            name = relative_name(href, root)
            found.append(Found(href, GeoTiffScene(href, name, default_product)))
    return found, problems


def default_product_id(request: ImportRequest) -> str:
    """Product for scenes whose metadata names none: the prefix's last folder, or the bucket."""
    parts = [p for p in request.prefix.replace("\\", "/").split("/") if p]
    base = parts[-1] if parts else Path(request.bucket_name).name or request.bucket_name
    return safe_name(Path(base).stem if request.cloud_provider == "file" else base).lower()


@dataclass(frozen=True)
class Filters:
    """The request's filters, parsed once for all the scenes they are applied to."""

    time: tuple[datetime | None, datetime | None] | None = None
    predicate: str | None = None  # "intersects" or "contains"
    area: Any = None  # shapely geometry, prepared
    max_cloud_cover: float | None = None

    @classmethod
    def of(cls, request: ImportRequest) -> Filters:
        """The filters of `request` (whose validators already checked them)."""
        time = None
        if request.time is not None:
            start, end = datetime_interval(request.time)
            time = (
                None if start == ".." else parse_instant(start),
                None if end == ".." else parse_instant(end, end=True),
            )
        predicate, area = None, None
        if request.bbox is not None:
            predicate, area = "intersects", box(*request.bbox)
        elif request.intersects is not None:
            predicate, area = "intersects", shape(request.intersects)
        elif request.contains is not None:
            predicate, area = "contains", shape(request.contains)
        if area is not None:
            shapely.prepare(area)
        return cls(time, predicate, area, request.max_cloud_cover)

    def drop(self, meta: SceneMeta) -> str | None:
        """None when the scene passes the filters, else the filter that dropped it."""
        if self.time is not None:
            start, end = self.time
            if meta.acquired is None:
                return "time (the scene has no acquisition time)"
            if (start and meta.acquired < start) or (end and meta.acquired > end):
                return "time"
        if self.area is not None:
            footprint = shape(meta.geometry)
            if self.predicate == "intersects" and not self.area.intersects(footprint):
                return "bbox/intersects"
            if self.predicate == "contains" and not footprint.covers(self.area):
                return "contains"
        if self.max_cloud_cover is not None and (
            meta.cloud_cover is None or meta.cloud_cover > self.max_cloud_cover
        ):
            return "max_cloud_cover"
        return None


def feature(image: Image, meta: SceneMeta, source: str) -> dict:
    """The UP42 answer for one registered scene."""
    return {
        "type": "Feature",
        "id": meta.id,
        "bbox": list(image.bbox or shape(image.geometry).bounds),
        "geometry": image.geometry,
        "properties": {
            "time": str(image.acquired),
            "cc": image.cloud_cover,
            "up42.data_path": image.id,
            "tileserver:product": image.product_id,
            "tileserver:files": [f.href for f in image.files],
            "tileserver:source": source,
        },
    }


def copy_to_cog(image: Image, folder: Path) -> Image:
    """The image with its pixels copied into COGs (one per file) in `folder`."""
    files = []
    for i, source in enumerate(image.files):
        target = folder / (f"{image.name}.tif" if i == 0 else f"{image.name}_{i}.tif")
        with open_raster(source.href) as src:
            rasterio.shutil.copy(
                src, str(target), driver="COG", COMPRESS="DEFLATE", BIGTIFF="IF_SAFER"
            )
        files.append(ImageFile(href=str(target), size=target.stat().st_size))
    return image.model_copy(update={"files": files})


def run_import(
    store: CatalogStore,
    request: ImportRequest,
    data_dir: Path,
    when: datetime | None = None,
    band_overrides: dict[str, dict] | None = None,
    progress: bool = False,
    roots: list[Path] | None = None,
    caller: Allowed | None = None,
    confinement: Confinement | None = None,
) -> ImportResult:
    """List, filter and register; see the module docstring.

    `when` replaces every scene's acquisition time (for files that carry none);
    `band_overrides` apply to products this import creates. VRTs go to DATA_DIR/vrt, copies to
    DATA_DIR/cogs. A listing that fails raises vsi.StorageError (nothing is registered).
    `roots` (imports over HTTP) confines a folder listing: links out of them are reported
    under `failed`, not followed (vsi.list_files). Every file is opened through the opener
    within `caller` (what the importer may read; default: the operator's reach) and, for a
    scene of an existing product, what that product's owners may read (`confinement`).
    """
    confinement = confinement or Confinement(data_dir=data_dir)
    caller = caller or confinement.operator()
    result = ImportResult()
    default_product = request.product or default_product_id(request)
    root = vsi.gdal_path(request.cloud_provider, request.bucket_name, request.prefix)
    if request.cloud_provider == "file":
        root = str(Path(root).expanduser().resolve())
    entries = list(
        vsi.list_files(request.cloud_provider, request.bucket_name, request.prefix, roots)
    )
    result.failed.extend({"path": e.href, "reason": e.refused} for e in entries if e.refused)
    hrefs = [e.href for e in entries if not e.refused]
    with opener.reading(caller):  # STAC items are read to know their assets
        found, problems = find_scenes(hrefs, root, default_product)
    result.failed.extend(problems)
    result.found = len(found)

    filters = Filters.of(request)
    selected: list[tuple[Found, SceneMeta]] = []
    wanted = set(request.ids or [])
    seen_ids: set[str] = set()
    for scene in tqdm(found, desc="read metadata", unit="scene", disable=not progress):
        try:
            with opener.reading(caller):
                meta = scene.reader.meta()
        except SCENE_ERRORS as exc:
            result.failed.append({"path": scene.href, "reason": reason(exc)})
            continue
        if when is not None:
            meta.acquired = when
            meta.properties.setdefault(PROVENANCE, {})["datetime"] = "--datetime"
        if request.ids is not None:
            if meta.id in wanted or safe_name(meta.id) in wanted:
                seen_ids.update({meta.id, safe_name(meta.id)})
                selected.append((scene, meta))
            else:
                result.filtered_out += 1
            continue
        if (dropped := filters.drop(meta)) is not None:
            log.debug("import: %s left out by %s", scene.href, dropped)
            result.filtered_out += 1
            continue
        selected.append((scene, meta))
    for missing in sorted(wanted - seen_ids):
        result.failed.append({"path": missing, "reason": "no scene with this id under the prefix"})
    if request.ids is None and request.limit is not None and len(selected) > request.limit:
        result.filtered_out += len(selected) - request.limit
        selected = selected[: request.limit]

    products: dict[str, Product | None] = {}
    target = Target(store, request, confinement, caller, band_overrides)
    for scene, meta in tqdm(selected, desc="register", unit="scene", disable=not progress):
        try:
            image = register(target, scene, meta, products)
        except SCENE_ERRORS as exc:  # CatalogError: a product the caller may not write, say
            why = reason(exc)
            log.warning("import: %s failed: %s", scene.href, why)
            result.failed.append({"path": scene.href, "reason": why})
            continue
        result.features.append(feature(image, meta, scene.href))
    if not found and not problems:
        result.failed.append(
            {
                "path": root,
                "reason": "no DIMAP, BEAM-DIMAP, Sentinel-2 SAFE, STAC Item or GeoTIFF found",
            }
        )
    return result


SCENE_ERRORS = (
    IngestError,
    ValidationError,
    vsi.StorageError,
    OSError,
    ValueError,
    CatalogError,
    opener.Refused,
)


def reason(exc: BaseException) -> str:
    """Why a scene failed, without secrets; a refusal names the file as the scene named it."""
    if isinstance(exc, opener.Refused):
        return f"{exc.href}: {exc}" if exc.href else str(exc)
    return vsi.redact(gdal_reason(exc, keep_paths=True))  # the API makes them relative


@dataclass(frozen=True)
class Target:
    """Where an import registers scenes, for whom, and what it may read."""

    store: CatalogStore
    request: ImportRequest
    confinement: Confinement
    caller: Allowed
    band_overrides: dict[str, dict] | None = None


def register(
    target: Target, scene: Found, meta: SceneMeta, products: dict[str, Product | None]
) -> Image:
    """Build and store one scene; the product is created from the first scene it gets.

    Nothing is written before it is allowed: the product id and the caller's right to write
    it are checked first; every file is read through the opener within what both the caller
    and the product's owners may read; the VRTs (and copies) are written under temporary
    names and moved into place only once the image is registered. A scene that fails leaves
    every file as it was. A file without overviews gets its reduced copy (pyramids.py).
    """
    request, store = target.request, target.store
    if meta.acquired is None:
        raise IngestError(f"{scene.href}: no acquisition time in its metadata; pass --datetime")
    product_id = check_name(request.product or meta.product_id, "product id")
    name = check_name(safe_name(meta.id), "image name")
    if product_id not in products:
        products[product_id] = writable_product(store, product_id)
    product = products[product_id]
    own = target.confinement.own_folders(product_id)
    reach: opener.Reach = target.caller.with_own(*own)
    if product is not None:
        reach = opener.Within(reach, target.confinement.for_product(product))
    with opener.reading(reach), staged(own[0]) as vrts, ExitStack() as stack:
        image, bands = scene.reader.build(meta, product_id, product, vrts.folder / f"{name}.vrt")
        for file in image.files:
            reach.check(file.href)
        stages = [vrts]
        if request.copy_pixels:
            stages.append(stack.enter_context(staged(own[1])))
            image = copy_to_cog(image, stages[-1].folder)
        if product is None:
            bands = apply_overrides(bands, target.band_overrides or {})
            product = store.create_product(new_product(product_id, bands, meta))
            products[product_id] = product
        final = image
        for stage in stages:
            final = stage.moved(final)
        reduced = stack.enter_context(
            staged(reduced_folder(target.confinement.data_dir, product_id))
        )
        stages.append(reduced)
        image_reduced(final, folder=reduced.folder, read_hrefs=[f.href for f in image.files])
        image = final
        store.put_images([image])
        for stage in stages:
            stage.publish()
    return image


def check_name(value: str, what: str) -> str:
    """`value` when it can name a product or image (and a folder of the data dir)."""
    if not re.fullmatch(NAME_PATTERN, value or ""):
        raise IngestError(f"{value!r} cannot be a {what}: letters, digits, '.', '-', '_'")
    return value


def writable_product(store: CatalogStore, product_id: str) -> Product | None:
    """The product if the caller may add images to it, None when it is still to be created
    (CatalogError when it exists and the caller may not write it)."""
    try:
        product = store.get_product(product_id)
    except NotFound:
        if isinstance(store, ScopedStore):
            store.check_create(product_id)
        return None
    if isinstance(store, ScopedStore):
        store.check_write(product_id)
    return product


class Staging:
    """Files an import writes for one scene, kept under a temporary folder of their final
    folder until the scene is registered: a failed scene's files are simply removed."""

    def __init__(self, final: Path):
        self.final = final
        final.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=final))

    def moved(self, image: Image) -> Image:
        """The image with its staged files named where they will be."""
        staged = str(self.folder) + os.sep
        files = [
            f.model_copy(update={"href": str(self.final) + os.sep + f.href[len(staged) :]})
            if f.href.startswith(staged)
            else f
            for f in image.files
        ]
        return image.model_copy(update={"files": files})

    def publish(self) -> None:
        """Move the staged files into place (a rename each: readers see old or new)."""
        for path in sorted(self.folder.iterdir()):
            os.replace(path, self.final / path.name)


@contextmanager
def staged(final: Path) -> Iterator[Staging]:
    """A Staging for `final`, removed with whatever it still holds when the block ends."""
    staging = Staging(final)
    try:
        yield staging
    finally:
        shutil.rmtree(staging.folder, ignore_errors=True)


def new_product(product_id: str, bands: list[Band], meta: SceneMeta) -> Product:
    """A product for the first scene of its kind, named after what the metadata says."""
    props = {
        k: meta.properties[k]
        for k in ("constellation", "instrument", "processing:level")
        if k in meta.properties
    }
    return Product(id=product_id, bands=bands, properties=props)
