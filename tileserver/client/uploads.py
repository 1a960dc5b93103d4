"""Image uploads with the Catalog client's names, over the server's pixel uploads
(`POST /products/{id}/uploads`, `PUT /uploads/{id}/data`, `GET /uploads[/{id}]`).

The server's record has its own statuses; `ImageUpload.status` shows them as the Catalog's
(`ImageUploadStatus`) so a script's `upload.status == ImageUploadStatus.SUCCESS` holds, and
`server_status` keeps the server's word. Events become `ImageUploadEvent`s; `errors` are
the server's reasons (the Catalog shows them only as events).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy

from tileserver.client.catalog import Search, _getter, _sort_key
from tileserver.client.http import (
    CatalogClient,
    ClientError,
    NotFoundError,
    ServerError,
    client_or_default,
)
from tileserver.client.properties import parse_time, time_text

CHUNK = 1 << 20  # bytes per chunk of an upload's body
NUMPY_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class ImageUploadType(enum.StrEnum):
    """What the bytes are: a raster file, or a NumPy array."""

    NDARRAY = "ndarray"
    FILE = "file"


class OverviewResampler(enum.StrEnum):
    """How overviews are resampled (the Catalog's names; the server has no `average_mp`
    or `average_magphase`, and adds `bilinear` and `rms`)."""

    NEAREST = "nearest"
    AVERAGE = "average"
    GAUSS = "gauss"
    CUBIC = "cubic"
    CUBICSPLINE = "cubicspline"
    LANCZOS = "lanczos"
    MODE = "mode"
    BILINEAR = "bilinear"
    RMS = "rms"


class ImageUploadStatus(enum.StrEnum):
    """The Catalog's upload statuses."""

    TRANSFERRING = "transferring"
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELED = "canceled"


class ImageUploadEventType(enum.StrEnum):
    """What an upload event records."""

    QUEUE = "queue"
    CANCEL = "cancel"
    RUN = "run"
    COMPLETE = "complete"
    ERROR = "error"
    TIMEOUT = "timeout"
    LOG = "log"
    USAGE = "usage"


class ImageUploadEventSeverity(enum.StrEnum):
    """An event's level (the logging module's names)."""

    CRITICAL = "CRITICAL"
    ERROR = "ERROR"
    WARNING = "WARNING"
    INFO = "INFO"
    DEBUG = "DEBUG"


# the server's status -> the Catalog's
STATUS = {
    "pending": ImageUploadStatus.TRANSFERRING,  # the record exists, the bytes have not come
    "receiving": ImageUploadStatus.TRANSFERRING,
    "received": ImageUploadStatus.PENDING,
    "converting": ImageUploadStatus.RUNNING,
    "done": ImageUploadStatus.SUCCESS,
    "failed": ImageUploadStatus.FAILURE,
}
TERMINAL = (ImageUploadStatus.SUCCESS, ImageUploadStatus.FAILURE, ImageUploadStatus.CANCELED)
# what the server's event texts start with -> (type, severity)
EVENT_KINDS = (
    ("received", ImageUploadEventType.QUEUE, ImageUploadEventSeverity.INFO),
    ("converting", ImageUploadEventType.RUN, ImageUploadEventSeverity.INFO),
    ("registered", ImageUploadEventType.COMPLETE, ImageUploadEventSeverity.INFO),
    ("failed", ImageUploadEventType.ERROR, ImageUploadEventSeverity.ERROR),
)


class ImageUploadOptions:
    """Control of an upload: `overviews` (factors 2, 4, ...), `overview_resampler`, and
    what the Catalog's client fills in itself (`upload_type`, `image_files`,
    `upload_size`)."""

    _fields = ("upload_type", "image_files", "overviews", "overview_resampler", "upload_size")

    def __init__(self, **kwargs):
        for name in self._fields:
            setattr(self, name, None)
        for name, value in kwargs.items():
            if name not in self._fields:
                raise AttributeError(f"ImageUploadOptions has no attribute '{name}'")
            setattr(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields if getattr(self, n))
        return f"ImageUploadOptions({shown})"


@dataclass(frozen=True)
class ImageUploadEvent:
    """One step of an upload, as the Catalog shows it."""

    event_datetime: dt.datetime
    event_type: ImageUploadEventType
    severity: ImageUploadEventSeverity
    message: str
    component: str = "tileserver"

    @classmethod
    def from_server(cls, event: dict) -> ImageUploadEvent:
        """An event of the server's record (`time`, `what`)."""
        what = event["what"]
        kind, severity = ImageUploadEventType.LOG, ImageUploadEventSeverity.INFO
        for prefix, event_type, level in EVENT_KINDS:
            if what.startswith(prefix):
                kind, severity = event_type, level
                break
        return cls(parse_time(event["time"]), kind, severity, what)


class ImageUpload:
    """An upload's record: `status` (an `ImageUploadStatus`), `events`, `errors`, and the
    `image_id` it registers. `reload()` reads it again; `wait_for_completion()` polls."""

    _fields = (
        "id",
        "product_id",
        "image_id",
        "status",
        "server_status",
        "user",
        "events",
        "errors",
        "created",
        "modified",
        "image_upload_options",
    )
    # seconds between polls: short at first (conversions of small images take ~1 s)
    _POLLING_INTERVALS = (0.1, 0.2, 0.3, 0.5, 1, 1, 2, 5, 10)
    _TERMINAL_STATES = TERMINAL

    def __init__(self, client: CatalogClient | None = None, image=None, **kwargs):
        self._client = client
        self.image = image
        for name in self._fields:
            setattr(self, name, None)
        for name, value in kwargs.items():
            if name not in self._fields:
                raise AttributeError(f"ImageUpload has no attribute '{name}'")
            setattr(self, name, value)
        self._doc: dict = {}

    def __repr__(self) -> str:
        return f"ImageUpload: {self.id} {self.image_id} {self.status}"

    @property
    def client(self) -> CatalogClient:
        """The client this upload talks through (the default one when none was given)."""
        return client_or_default(self._client)

    @property
    def data_url(self) -> str | None:
        """Where the bytes go (the server's path)."""
        return self._doc.get("data_url")

    def _update(self, doc: dict) -> ImageUpload:
        self._doc = doc
        request = doc.get("request") or {}
        self.__dict__.update(
            id=doc["id"],
            product_id=doc["product_id"],
            image_id=doc["image_id"],
            server_status=doc["status"],
            status=STATUS[doc["status"]],
            user=doc.get("user"),
            events=[ImageUploadEvent.from_server(e) for e in doc.get("events", [])],
            errors=list(doc.get("errors", [])),
            created=parse_time(doc["created"]),
            modified=parse_time(doc["updated"]),
            image_upload_options=ImageUploadOptions(
                upload_type=ImageUploadType(request.get("kind", "file")),
                overviews=request.get("overviews"),
                overview_resampler=request.get("resampler"),
                upload_size=request.get("size"),
            ),
        )
        return self

    @classmethod
    def _from_doc(cls, doc: dict, client: CatalogClient | None) -> ImageUpload:
        return cls(client)._update(doc)

    @classmethod
    def get(cls, id: str, client: CatalogClient | None = None) -> ImageUpload | None:
        """The upload, or None when there is none this key may see."""
        try:
            doc = client_or_default(client).json("GET", f"/uploads/{id}")
        except NotFoundError:
            return None
        return cls._from_doc(doc, client)

    @classmethod
    def search(cls, client: CatalogClient | None = None, includes: bool = True) -> UploadSearch:
        """This key's uploads (an admin's: everyone's), to filter with `properties`."""
        return UploadSearch(client)

    def reload(self) -> None:
        """Read the record again from the server."""
        self._update(self.client.json("GET", f"/uploads/{self.id}"))

    def wait_for_completion(self, timeout=None, warn_transient_errors=True) -> None:
        """Poll until the upload succeeded or failed; TimeoutError after `timeout` s."""
        if self.status in TERMINAL:
            return
        end = None if timeout is None else time.monotonic() + timeout
        intervals = iter(self._POLLING_INTERVALS)
        while True:
            try:
                self.reload()
            except (ServerError, httpx.TransportError) as exc:  # try again at the next poll
                if warn_transient_errors:
                    warnings.warn(f"upload {self.id}: no state read: {exc}", stacklevel=2)
            if self.status in TERMINAL:
                return
            pause = next(intervals, self._POLLING_INTERVALS[-1])
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"upload {self.id} is still {self.status}")
                pause = min(pause, left)
            time.sleep(pause)

    def cancel(self):
        """Not served: the server converts every upload whose bytes came."""
        raise NotImplementedError("the server does not cancel uploads")

    def delete(self):
        """Not served: upload records stay (delete the image instead)."""
        raise NotImplementedError("the server keeps upload records; delete the image instead")


class UploadSearch(Search):
    """This key's uploads (GET /uploads), filtered and sorted here."""

    def __init__(self, client: CatalogClient | None = None, product_id: str | None = None):
        super().__init__(client)
        self._product_id = product_id

    def __iter__(self) -> Iterator[ImageUpload]:
        params = {"product_id": self._product_id} if self._product_id else {}
        docs = self.client.json("GET", "/uploads", params=params)["uploads"]
        found = [ImageUpload._from_doc(d, self._client) for d in docs]
        found = [u for u in found if all(f.evaluate(_getter(u)) for f in self._filters)]
        for field, ascending in reversed(self._sort):
            found.sort(key=lambda u, f=field: _sort_key(getattr(u, f, None)), reverse=not ascending)
        return iter(found[: self._limit] if self._limit is not None else found)

    def collect(self, **kwargs) -> list[ImageUpload]:
        """Every matching upload, as a list (newest first unless sorted)."""
        return list(self)


# --- sending ---------------------------------------------------------------------------


def _option(options: ImageUploadOptions | None, name: str, value):
    if value is not None:
        return value
    return getattr(options, name, None) if options is not None else None


def _measure(source) -> tuple[int, str]:
    """Size and MD5 of a path or a seekable binary file (rewound after)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with _opened(source) as f:
        start = f.tell()
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        f.seek(start)
    return size, digest.hexdigest()


class _opened:
    """A binary file for a path (closed after) or an open file (left open)."""

    def __init__(self, source):
        self.source = source
        self.owned = not isinstance(source, io.IOBase)

    def __enter__(self):
        if self.owned:
            self.file = open(os.fspath(self.source), "rb")  # noqa: SIM115 (closed in __exit__)
        elif "b" not in getattr(self.source, "mode", "b"):
            self.file = open(self.source.name, "rb")  # noqa: SIM115 (a text file: reopen)
            self.owned = True
        else:
            self.file = self.source
        return self.file

    def __exit__(self, *exc):
        if self.owned:
            self.file.close()


def _chunks(source) -> Iterator[bytes]:
    with _opened(source) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def single(values, what: str):
    """The one file or array of an upload: the server makes an image of one file."""
    if isinstance(values, str | os.PathLike | io.IOBase | numpy.ndarray):
        return values
    values = list(values)
    if len(values) != 1:
        raise NotImplementedError(
            f"{len(values)} {what}: the server makes an image of one file; "
            "write the bands into one GeoTIFF (or stack the arrays) first"
        )
    return values[0]


def send(image, source, request: dict, size: int, md5: str) -> ImageUpload:
    """Create the upload record, stream the bytes to it, and return the record."""
    client = image.client
    doc = client.json("POST", f"/products/{image.product_id}/uploads", json=request)
    upload = ImageUpload(image._client, image=image)._update(doc)
    headers = {"content-type": "application/octet-stream", "content-length": str(size)}
    try:
        # the path relative to the client's URL (the server's `data_url` carries its root
        # path, which the client's base URL already has)
        path = f"/uploads/{upload.id}/data"
        doc = client.json("PUT", path, content=_chunks(source), headers=headers)
    except ClientError:
        # the server refused the bytes (size, MD5, not a raster, over the limit): the
        # record says why, as the Catalog reports failures through the upload
        upload.reload()
        if upload.status != ImageUploadStatus.FAILURE:
            raise
        return upload
    return upload._update(doc)


def upload_request(image, kind: str, options, overviews, resampler, size, md5) -> dict:
    """The body of POST /products/{id}/uploads from the image's attributes."""
    body: dict[str, Any] = {"name": image.name, "kind": kind, "size": size, "md5": md5}
    if image.acquired is not None:
        body["acquired"] = time_text(image.acquired)
    if image.cloud_fraction is not None:
        body["cloud_cover"] = image.cloud_fraction * 100
    if image.extra_properties:
        body["properties"] = dict(image.extra_properties)
    overviews = _option(options, "overviews", overviews)
    if overviews is not None:
        body["overviews"] = list(overviews)
    resampler = _option(options, "overview_resampler", resampler)
    if resampler is not None:
        name = str(getattr(resampler, "value", resampler)).lower()
        body["resampler"] = "cubic_spline" if name == "cubicspline" else name
    return body


def array_grid(image, raster_meta: dict | None) -> dict:
    """Where an uploaded array lies: the image's `cs_code`/`geotrans`, else `raster_meta`
    (the `raster_info` of an `ndarray(...)` call)."""
    meta = raster_meta or {}
    geotrans = image.geotrans or meta.get("geoTransform")
    system = meta.get("coordinateSystem") or {}
    epsg = system.get("epsg")
    crs = image.cs_code or system.get("wkt") or system.get("proj4") or (epsg and f"EPSG:{epsg}")
    if not geotrans:
        raise ValueError("geotrans field or raster_meta parameter is required")
    if not crs:
        raise ValueError("cs_code field is required if raster_meta parameter is not given")
    return {"crs": str(crs), "geotrans": [float(v) for v in geotrans]}


def npy_bytes(array: numpy.ndarray) -> bytes:
    """The array as .npy bytes (bands first, no pickles)."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"the array must have 2 dimensions (rows, cols) or 3 (bands, rows, cols), "
            f"not shape {array.shape}"
        )
    if array.dtype.name not in NUMPY_TYPES:
        raise ValueError(
            f"the array has an unsupported data type {array.dtype.name}: "
            f"one of {', '.join(NUMPY_TYPES)}"
        )
    buffer = io.BytesIO()
    numpy.save(buffer, numpy.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
