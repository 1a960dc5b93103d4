"""Pixel uploads: a GeoTIFF or an array sent over HTTP becomes a COG image of a product.

An upload is a record and a folder. `create` checks the caller may write the product and
that the image name is free, and writes the record (status `pending`); the bytes then arrive
in one request (`receive`: counted against TILESERVER_MAX_UPLOAD_BYTES, MD5 and size checked
when declared) into `DATA_DIR/cogs/<product>/.staging-upload-<id>/`, the one place the
product's reads may open besides its own COGs; a worker thread converts them to a COG
(`DATA_DIR/cogs/<product>/upload-<id>.tif`, overviews and resampler as asked) and registers
the image last. So a failure at any step, or a restart, never leaves a half image: the
image exists only when its COG is complete.

Records are JSON files under `DATA_DIR/uploads/` (written whole, then renamed), so every
worker of a deployment sharing DATA_DIR sees them, and they survive a restart: at start an
upload whose bytes were still arriving is failed ("send it again"), one that was received
or being converted is converted again (each step can run twice), under an advisory lock so
one process converts a given upload.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import shutil
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy
import rasterio
import rasterio.shutil
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rio_tiler.types import RIOResampling

from tileserver import opener
from tileserver.catalog.access import Principal
from tileserver.catalog.models import DATA_TYPE_TO_NUMPY, NAME_PATTERN, Band, Image
from tileserver.catalog.store import CatalogStore, Conflict, NotFound
from tileserver.ingest.geotiff import read_geotiff
from tileserver.ingest.raster import IngestError
from tileserver.render.errors import without_paths

logger = logging.getLogger(__name__)

Status = Literal["pending", "receiving", "received", "converting", "done", "failed"]
FINAL: frozenset[str] = frozenset({"done", "failed"})
MAX_OVERVIEWS = 16
MAX_EVENTS = 50
NUMPY_TYPES = frozenset(DATA_TYPE_TO_NUMPY.values())
RESAMPLERS: tuple[str, ...] = RIOResampling.__args__  # rio-tiler's names for overviews


class UploadError(ValueError):
    """Why an upload failed: its text is shown to the uploader (no server paths)."""


class ArrayGrid(BaseModel):
    """Where an uploaded array lies: its CRS, geotransform and nodata value."""

    model_config = ConfigDict(extra="forbid")

    crs: str = Field(description="EPSG:xxxx, a PROJ string or WKT", max_length=20_000)
    geotrans: tuple[float, float, float, float, float, float] = Field(
        description="GDAL geotransform (x0, dx, rx, y0, ry, dy)"
    )
    nodata: float | None = None

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str) -> str:
        try:
            CRS.from_user_input(value)
        except CRSError:
            raise ValueError(f"'{value[:80]}' is not a CRS GDAL knows") from None
        return value


class UploadRequest(BaseModel):
    """What `POST /products/{id}/uploads` takes: the image's name and properties, how its
    bytes come (a GeoTIFF file, or a `.npy` array with `array`'s grid) and its COG's
    overviews."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=300, description="the image's name")
    acquired: datetime | None = Field(
        None, description="acquisition time (default: from the file's tags)"
    )
    cloud_cover: float | None = Field(None, ge=0, le=100, description="percent")
    properties: dict[str, Any] = Field({}, description="extra properties of the image")
    kind: Literal["file", "ndarray"] = Field(
        "file", description="a GeoTIFF (or JPEG2000) file, or a NumPy .npy array"
    )
    array: ArrayGrid | None = Field(None, description="the grid of a `ndarray` upload")
    overviews: list[int] | None = Field(
        None,
        max_length=MAX_OVERVIEWS,
        description="overview factors, powers of 2 from 2 up (default: down to 512 px)",
    )
    resampler: RIOResampling = Field("average", description="how overviews are resampled")
    size: int | None = Field(None, ge=1, description="the byte count to expect (checked)")
    md5: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{32}$", description="hex MD5 of the bytes (checked)"
    )

    @field_validator("overviews")
    @classmethod
    def _overviews(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        expected = [2 ** (i + 1) for i in range(len(value))]
        if value != expected:
            raise ValueError(f"overviews must be consecutive powers of 2 from 2, as {expected}")
        return value

    def model_post_init(self, context: Any) -> None:
        """An array needs its grid; a file carries its own."""
        if self.kind == "ndarray" and self.array is None:
            raise ValueError("an 'ndarray' upload needs 'array': its crs and geotrans")
        if self.kind == "file" and self.array is not None:
            raise ValueError("'array' is for 'ndarray' uploads: a file carries its grid")


class Event(BaseModel):
    """One step of an upload, as the uploader sees it."""

    time: datetime
    what: str


class Upload(BaseModel):
    """An upload's record (what `GET /uploads/{id}` shows)."""

    id: str
    product_id: str
    image_id: str
    status: Status
    request: UploadRequest
    received: int = 0
    created: datetime
    updated: datetime
    events: list[Event] = []
    errors: list[str] = []
    user: str | None = None
    org: str | None = None
    admin: bool = False

    def principal(self) -> Principal:
        """Who uploaded: their write access is checked again before the image is registered."""
        return Principal(user=self.user, org=self.org, admin=self.admin)


def now() -> datetime:
    """The time records are stamped with."""
    return datetime.now(UTC)


class Uploads:
    """The uploads of one data dir: records, received bytes, and the converting threads."""

    def __init__(
        self,
        store: CatalogStore,
        confinement: opener.Confinement,
        max_bytes: int,
        workers: int = 1,
    ):
        self.store, self.confinement, self.workers = store, confinement, workers
        self.max_bytes = max_bytes
        self.folder = confinement.data_dir / "uploads"
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.threads: list[threading.Thread] = []

    # records

    def path(self, upload_id: str) -> Path:
        """The record's file; ids are uuid hex, anything else is not an upload."""
        if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
            raise NotFound(f"upload '{upload_id[:40]}' not found")
        return self.folder / f"{upload_id}.json"

    def get(self, upload_id: str) -> Upload:
        """The record; NotFound when there is none."""
        try:
            text = self.path(upload_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"upload '{upload_id}' not found") from None
        return Upload.model_validate_json(text)

    def save(self, upload: Upload) -> Upload:
        """Write the record whole, then rename it over the old one (readers see either)."""
        upload.updated = now()
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{upload.id}.{os.getpid()}.{threading.get_ident()}"
        temporary.write_text(upload.model_dump_json(), encoding="utf-8")
        os.replace(temporary, self.path(upload.id))
        return upload

    def event(self, upload: Upload, what: str, status: Status | None = None) -> Upload:
        """Record a step (the last MAX_EVENTS are kept)."""
        upload.events = [*upload.events, Event(time=now(), what=what)][-MAX_EVENTS:]
        if status:
            upload.status = status
        return self.save(upload)

    def fail(self, upload: Upload, reason: str) -> Upload:
        """Mark the upload failed and remove its received bytes."""
        reason = without_paths(reason)
        upload.errors = [*upload.errors, reason][-MAX_EVENTS:]
        shutil.rmtree(self.staging(upload), ignore_errors=True)
        return self.event(upload, f"failed: {reason}", "failed")

    def list(self, principal: Principal, product_ids: set[str] | None = None) -> list[Upload]:
        """The caller's uploads (an admin's: all), newest first."""
        found = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else []:
            try:
                upload = Upload.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if self.visible(upload, principal) and (
                product_ids is None or upload.product_id in product_ids
            ):
                found.append(upload)
        return sorted(found, key=lambda u: u.created, reverse=True)

    @staticmethod
    def visible(upload: Upload, principal: Principal) -> bool:
        """Uploaders see their own uploads, admins all; others are told there is none."""
        return principal.admin or (principal.user is not None and upload.user == principal.user)

    # files

    def own_folder(self, product_id: str) -> Path:
        """The product's COG folder, where its reads may open files the server wrote."""
        return self.confinement.own_folders(product_id)[1]

    def staging(self, upload: Upload) -> Path:
        """Where the received bytes wait (inside the product's COG folder, not yet an image)."""
        return self.own_folder(upload.product_id) / f".staging-upload-{upload.id}"

    def source(self, upload: Upload) -> Path:
        """The received bytes."""
        suffix = ".npy" if upload.request.kind == "ndarray" else ".tif"
        return self.staging(upload) / f"source{suffix}"

    def target(self, upload: Upload) -> Path:
        """The image's COG once converted."""
        return self.own_folder(upload.product_id) / f"upload-{upload.id}.tif"

    # steps

    def create(self, product_id: str, request: UploadRequest, principal: Principal) -> Upload:
        """A new pending upload; Conflict when the image already exists. The caller's write
        access to the product is checked by the caller's ScopedStore before this."""
        image_id = f"{product_id}:{request.name}"
        try:
            self.store.get_image(image_id)
        except NotFound:
            pass
        else:
            raise Conflict(f"image '{image_id}' already exists: delete it or pick another name")
        stamp = now()
        upload = Upload(
            id=uuid.uuid4().hex,
            product_id=product_id,
            image_id=image_id,
            status="pending",
            request=request,
            created=stamp,
            updated=stamp,
            user=principal.user,
            org=principal.org,
            admin=principal.admin,
        )
        return self.event(upload, "created: send the bytes to its data_url")

    def start_receiving(self, upload: Upload) -> Receiver:
        """Where the bytes go; Conflict unless the upload is still waiting for them."""
        if upload.status != "pending":
            raise Conflict(f"upload '{upload.id}' is {upload.status}: its bytes came already")
        self.staging(upload).mkdir(parents=True, exist_ok=True)
        return Receiver(self, self.event(upload, "receiving", "receiving"))

    def received(self, upload: Upload, size: int, md5: str) -> Upload:
        """Check size and MD5 as declared, then queue the conversion."""
        upload.received = size
        declared = upload.request
        if declared.size is not None and declared.size != size:
            return self.fail(upload, f"received {size} bytes where 'size' said {declared.size}")
        if declared.md5 is not None and declared.md5.lower() != md5:
            return self.fail(upload, f"the bytes' MD5 is {md5}, not the 'md5' declared")
        if size == 0:
            return self.fail(upload, "no bytes were sent")
        upload = self.event(upload, f"received {size} bytes (MD5 {md5})", "received")
        self.start()  # the app's lifespan starts them; an app run without it too
        self.queue.put(upload.id)
        return upload

    def convert(self, upload_id: str) -> None:
        """Convert and register one received upload (in a worker thread); never raises."""
        with self.claimed(upload_id) as claimed:
            if not claimed:
                return
            upload = self.get(upload_id)
            if upload.status not in ("received", "converting"):
                return
            upload = self.event(upload, "converting to a COG", "converting")
            try:
                image = self.register(upload)
            except (IngestError, UploadError, Conflict, NotFound, opener.Refused) as exc:
                self.fail(upload, str(exc))
                return
            except Exception as exc:  # a GDAL failure on bad bytes, a full disk ...
                logger.exception("upload %s failed", upload_id)
                self.fail(upload, f"the file could not be converted ({type(exc).__name__})")
                return
            shutil.rmtree(self.staging(upload), ignore_errors=True)
            self.event(upload, f"registered image '{image.id}'", "done")

    def register(self, upload: Upload) -> Image:
        """Write the COG, read its record, check the uploader may still write, register."""
        product = self.store.get_product(upload.product_id)
        if not upload.principal().can_write(product):
            raise UploadError(f"you may no longer add images to product '{product.id}'")
        reach = self.confinement.for_product(product)
        target = self.target(upload)
        with opener.reading(reach):
            partial = self.staging(upload) / "image.tif"
            self.write_cog(upload, partial, product.bands)
            os.replace(partial, target)  # complete before any image names it
            known = product if product.bands else None  # else the file names the bands
            image, bands = read_geotiff(
                str(target), product.id, upload.request.name, known, upload.request.acquired
            )
        changes: dict[str, Any] = {"properties": {**image.properties, **upload.request.properties}}
        if upload.request.cloud_cover is not None:
            changes["cloud_cover"] = upload.request.cloud_cover
        image = image.model_copy(update=changes)
        if not product.bands:  # the product's first image names its bands
            self.store.put_product(product.model_copy(update={"bands": bands}), keep_times=True)
        try:
            self.store.get_image(upload.image_id)
        except NotFound:
            return self.store.put_images([image])[0]
        if self.registered_here(upload):  # a restart after registering: nothing to redo
            return self.store.get_image(upload.image_id)
        raise Conflict(f"image '{upload.image_id}' was created meanwhile by someone else")

    def registered_here(self, upload: Upload) -> bool:
        """Whether the existing image is this upload's (its file is this upload's COG)."""
        image = self.store.get_image(upload.image_id)
        return any(f.href == str(self.target(upload)) for f in image.files)

    def write_cog(self, upload: Upload, path: Path, bands: list[Band]) -> None:
        """The received bytes as a DEFLATE COG with the overviews asked for."""
        request = upload.request
        options: dict[str, Any] = {
            "driver": "COG",
            "COMPRESS": "DEFLATE",
            "BIGTIFF": "IF_SAFER",
            "OVERVIEW_RESAMPLING": request.resampler.upper(),
        }
        if request.overviews is not None:
            options["OVERVIEWS"] = "IGNORE_EXISTING" if request.overviews else "NONE"
            if request.overviews:
                options["OVERVIEW_COUNT"] = len(request.overviews)
        if request.kind == "file":
            try:
                src_ctx = opener.open_raster(str(self.source(upload)))
            except rasterio.errors.RasterioIOError:
                raise UploadError(
                    "the bytes are not a raster file tileserver reads (GeoTIFF, JPEG2000)"
                ) from None
            with src_ctx as src:
                if src.crs is None:
                    raise UploadError("the file has no CRS: it cannot be placed on a map")
                rasterio.shutil.copy(src, str(path), **options)
            return
        array = read_npy(self.source(upload))
        grid = request.array
        profile = {
            "driver": "GTiff",
            "count": array.shape[0],
            "height": array.shape[1],
            "width": array.shape[2],
            "dtype": array.dtype.name,
            "crs": CRS.from_user_input(grid.crs),
            "transform": rasterio.Affine.from_gdal(*grid.geotrans),
            "nodata": grid.nodata,
        }
        with rasterio.MemoryFile() as memory:
            with memory.open(**profile) as dataset:
                dataset.write(array)
            with memory.open() as dataset:
                rasterio.shutil.copy(dataset, str(path), **options)

    # threads

    @contextmanager
    def claimed(self, upload_id: str):
        """An advisory lock on the upload (released when its process ends): one converter."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f".{upload_id}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def resume(self) -> None:
        """After a restart: fail uploads cut off while arriving, convert the received ones."""
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                upload = Upload.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if upload.status == "receiving":
                with self.claimed(upload.id) as claimed:
                    if claimed:
                        self.fail(
                            upload,
                            "the server restarted while the bytes arrived: "
                            "send them again in a new upload",
                        )
            elif upload.status in ("received", "converting"):
                self.queue.put(upload.id)

    def start(self) -> None:
        """Start the converting threads (once) and pick up what a restart left."""
        if self.threads:
            return
        for i in range(self.workers):
            thread = threading.Thread(target=self.work, name=f"upload-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.resume()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the threads finish the upload at hand (a cut one is converted again later)."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout)
        self.threads = []

    def work(self) -> None:
        """Convert queued uploads until told to stop."""
        while True:
            upload_id = self.queue.get()
            try:
                if upload_id is None:
                    return
                self.convert(upload_id)
            finally:
                self.queue.task_done()

    def wait(self, timeout: float = 60.0) -> None:
        """Until the queue is empty and idle (tests, the command line)."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                if self.queue.unfinished_tasks == 0:
                    return
                deadline.wait(0.05)
        finally:
            timer.cancel()


def read_npy(path: Path) -> numpy.ndarray:
    """A .npy array as (bands, rows, cols) of a raster data type; no pickles, no objects."""
    try:
        array = numpy.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UploadError(f"the bytes are not a NumPy .npy array ({exc})") from None
    if array.dtype.name not in NUMPY_TYPES:
        raise UploadError(
            f"array type {array.dtype.name} is not a raster type: "
            f"one of {', '.join(sorted(NUMPY_TYPES))}"
        )
    if array.ndim == 2:
        array = array[numpy.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        raise UploadError(f"an array of shape {array.shape}: (rows, cols) or (bands, rows, cols)")
    return numpy.ascontiguousarray(array)


class Receiver:
    """The bytes of one upload as they arrive: written, counted against the limit, hashed."""

    def __init__(self, uploads: Uploads, upload: Upload):
        self.uploads, self.upload = uploads, upload
        self.size = 0
        self.digest = hashlib.md5(usedforsecurity=False)
        self.handle = open(uploads.source(upload), "wb")  # noqa: SIM115 (closed by finish/abort)

    def write(self, chunk: bytes) -> None:
        """Write a chunk; UploadError (and the upload failed) past the byte limit."""
        self.size += len(chunk)
        if self.size > self.uploads.max_bytes:
            self.abort(f"more than {self.uploads.max_bytes} bytes: the upload limit")
            raise UploadError(f"upload larger than {self.uploads.max_bytes} bytes")
        self.digest.update(chunk)
        self.handle.write(chunk)

    def finish(self) -> Upload:
        """All bytes are in: check them and queue the conversion."""
        self.handle.close()
        return self.uploads.received(self.upload, self.size, self.digest.hexdigest())

    def abort(self, reason: str) -> Upload:
        """The bytes stopped coming (or were too many): the upload fails, nothing is kept."""
        self.handle.close()
        return self.uploads.fail(self.upload, reason)
