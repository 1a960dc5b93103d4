"""Blobs with the Descartes Labs Catalog client's names, over tileserver's `/blobs` API.

    blob = Blob(name="fields/2024.geojson", tags=["fields"], geometry=aoi)
    blob.upload_data(b"...")            # or blob.upload("local/file.bin")
    Blob.get(name="fields/2024.geojson").data()
    Blob.search().filter(p.name.prefix("fields/")).intersects(aoi).collect()

The Catalog's attributes `size_bytes` and `hash` (MD5) are the server's `size` and `md5`;
an id is the server's (32 hex digits), and `Blob.get` also takes the Catalog's
`storage_type/namespace/name`. Sizes and MD5s are computed here and checked by the server.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from typing import Any

from tileserver.client.catalog import DocumentObject, Search, _getter, _sort_key
from tileserver.client.http import (
    _BY_STATUS,
    CatalogClient,
    ClientError,
    NotFoundError,
    ServerError,
    _detail,
    client_or_default,
)
from tileserver.client.properties import (
    AndExpression,
    EqExpression,
    Expression,
    PrefixExpression,
    RangeExpression,
    parse_time,
    time_text,
)

SERVER_ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1024 * 1024
PAGE = 1000
# the Catalog's attribute -> the server's field
RENAMED = {"size_bytes": "size", "hash": "md5"}
SETTABLE = ("description", "tags", "geometry", "expires", "owners", "writers", "readers")


class StorageType:
    """The Catalog's storage types users upload."""

    DATA = "data"
    DYNCOMP = "dyncomp"


def _raise_for(response) -> None:
    """The client's error for a 4xx/5xx answer (read first when streamed)."""
    if response.status_code < 400:
        return
    response.read()
    if response.status_code >= 500:
        raise ServerError(f"{response.status_code}: {_detail(response)}")
    error = _BY_STATUS.get(response.status_code, ClientError)(_detail(response))
    error.status = response.status_code
    raise error


def _range_header(range) -> str | None:
    """The Catalog's `range` forms: "bytes=0-99", (start, end) or (start,) (negative:
    from the end)."""
    if range is None:
        return None
    if isinstance(range, str):
        return range
    if isinstance(range, list | tuple) and all(isinstance(x, int) for x in range):
        if len(range) == 1:
            start = range[0]
            return f"bytes={start}" if start < 0 else f"bytes={start}-"
        if len(range) == 2:
            return f"bytes={range[0]}-{range[1]}"
    raise ValueError("range: 'bytes=a-b', (a, b) or (a,); one range per request")


class Blob(DocumentObject):
    """A stored blob (bytes) with the access lists `owners`, `writers`, `readers`."""

    _fields = (
        "id",
        "name",
        "namespace",
        "storage_type",
        "storage_state",
        "description",
        "tags",
        "geometry",
        "expires",
        "owners",
        "writers",
        "readers",
        "size_bytes",
        "hash",
        "href",
        "created",
        "modified",
    )

    def __init__(self, client: CatalogClient | None = None, **kwargs):
        super().__init__(client, **kwargs)
        self._doc: dict = {}

    def __repr__(self) -> str:
        return f"Blob: {self.storage_type or 'data'}/{self.namespace}/{self.name}"

    @classmethod
    def _from_doc(cls, doc: dict, client) -> Blob:
        blob = cls(client)
        blob._update(doc)
        return blob

    def _update(self, doc: dict) -> None:
        self._doc = doc
        for name in self._fields:
            value = doc.get(RENAMED.get(name, name))
            if name in ("expires", "created", "modified") and value:
                value = parse_time(value)
            setattr(self, name, value)
        self._saved = True

    def _metadata(self) -> dict:
        body: dict[str, Any] = {}
        for name in SETTABLE:
            value = getattr(self, name)
            if name == "geometry" and value is not None:
                value = dict(getattr(value, "__geo_interface__", value))
            if name == "expires" and value is not None:
                value = time_text(value)
            if value is not None:
                body[name] = list(value) if isinstance(value, tuple) else value
        return body

    # records

    @classmethod
    def get(
        cls,
        id: str | None = None,
        storage_type: str = StorageType.DATA,
        namespace: str | None = None,
        name: str | None = None,
        client: CatalogClient | None = None,
    ) -> Blob | None:
        """The blob by id (the server's, or `storage_type/namespace/name`), or by `name`
        (in `namespace`: without one, the one blob of that name this key reads); None
        when there is none (or it is hidden from this key)."""
        if bool(id) == bool(name):
            raise TypeError("Must specify exactly one of id or name parameters")
        session = client_or_default(client)
        if id and SERVER_ID.match(id):
            try:
                return cls._from_doc(session.json("GET", f"/blobs/{id}"), client)
            except NotFoundError:
                return None
        if id:
            parts = id.split("/", 2)
            if len(parts) != 3:
                raise ValueError(f"id '{id}': a server id or storage_type/namespace/name")
            storage_type, namespace, name = parts
        params = {"name": name, "storage_type": storage_type}
        if namespace:
            params["namespace"] = namespace
        found = session.json("GET", "/blobs", params=params)["blobs"]
        if len(found) > 1:
            spaces = ", ".join(sorted(b["namespace"] for b in found))
            raise ValueError(f"blob '{name}' is in several namespaces ({spaces}): name one")
        return cls._from_doc(found[0], client) if found else None

    @classmethod
    def get_or_create(
        cls,
        id: str | None = None,
        storage_type: str = StorageType.DATA,
        namespace: str | None = None,
        name: str | None = None,
        client: CatalogClient | None = None,
        **kwargs,
    ) -> Blob:
        """The saved blob with `kwargs` applied (call save()), or a new unsaved one (call
        upload() or upload_data())."""
        blob = cls.get(id, storage_type, namespace, name, client=client)
        if blob is None:
            if id:
                storage_type, namespace, name = id.split("/", 2)
            blob = cls(client, storage_type=storage_type, namespace=namespace, name=name)
        for key, value in kwargs.items():
            setattr(blob, key, value)
        return blob

    @classmethod
    def search(cls, client: CatalogClient | None = None) -> BlobSearch:
        """A search over the blobs this key may read."""
        return BlobSearch(client)

    def reload(self) -> None:
        """Read the record again from the server."""
        self._update(self.client.json("GET", f"/blobs/{self.id}"))

    def save(self) -> None:
        """Write the metadata of a saved blob (PATCH); a new blob is saved by uploading."""
        if not self._saved:
            raise ValueError("a new blob is saved by upload() or upload_data()")
        self._update(self.client.json("PATCH", f"/blobs/{self.id}", json=self._metadata()))

    def delete(self) -> None:
        """Delete the blob and its bytes (owners)."""
        if not self._saved:
            raise ValueError("You cannot delete an unsaved object.")
        self.client.request("DELETE", f"/blobs/{self.id}")
        self._saved = False

    # bytes

    def upload(self, file) -> Blob:
        """Create the blob from a file (a path or a binary file object), streamed; its size
        and MD5 are computed first and checked by the server."""
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as handle:
                return self._upload_file(handle)
        if isinstance(file, io.IOBase):
            if not file.readable():
                raise ValueError("Invalid file is open but not readable")
            return self._upload_file(file)
        raise ValueError("Invalid file value: must be a path or a binary file object")

    def upload_data(self, data) -> Blob:
        """Create the blob from bytes (a str is encoded as UTF-8; a `pathlib.Path` is
        uploaded as a file)."""
        if isinstance(data, os.PathLike):
            return self.upload(data)
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError("Invalid data value: must be string or bytes")
        data = bytes(data)
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return self._do_upload(data, len(data), digest)

    def _upload_file(self, handle) -> Blob:
        start = handle.tell()
        digest, size = hashlib.md5(usedforsecurity=False), 0
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        handle.seek(start)

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(CHUNK):
                yield chunk

        return self._do_upload(chunks(), size, digest.hexdigest())

    def _do_upload(self, content, size: int, md5: str) -> Blob:
        if self._saved:
            raise ValueError(
                f"Blob {self.id} has been saved. Please use an unsaved blob for uploading"
            )
        if not self.name:
            raise ValueError("name field required")
        for given, actual, what in (
            (self.size_bytes, size, "size_bytes"),
            (self.hash, md5, "hash"),
        ):
            if given is not None and given != actual:
                raise ValueError(f"{what} is {given!r} but the data's is {actual!r}")
        body = {**self._metadata(), "name": self.name, "size": size, "md5": md5}
        if self.namespace:
            body["namespace"] = self.namespace
        if self.storage_type:
            body["storage_type"] = self.storage_type
        record = self.client.json("POST", "/blobs", json=body)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            record = self.client.json("PUT", record["data_url"], content=content, headers=headers)
        except BaseException:  # nothing half made: the pending record goes
            try:
                self.client.request("DELETE", f"/blobs/{record['id']}")
            except (ClientError, ServerError):
                pass
            raise
        self._update(record)
        return self

    def _stream(self, range=None):
        if not self._saved:
            raise ValueError(f"Blob {self.name} has not been saved")
        headers = {}
        header = _range_header(range)
        if header:
            headers["Range"] = header
        return self.client.session.stream("GET", f"/blobs/{self.id}/data", headers=headers)

    def data(self, range=None) -> bytes:
        """The bytes (or the `range` of them)."""
        with self._stream(range) as response:
            _raise_for(response)
            return response.read()

    def iter_data(self, chunk_size: int | None = None, range=None) -> Iterator[bytes]:
        """The bytes in chunks, streamed."""
        with self._stream(range) as response:
            _raise_for(response)
            yield from response.iter_bytes(chunk_size)

    def download(self, file, range=None) -> str:
        """Write the bytes to `file` (a path or a binary file object), streamed; its name."""
        if isinstance(file, str | os.PathLike):
            with open(file, "wb") as handle:
                self._write(handle, range)
            return str(file)
        if isinstance(file, io.IOBase) and file.writable():
            self._write(file, range)
            return getattr(file, "name", "")
        raise ValueError("Invalid file value: must be a path or a binary file open for writing")

    def _write(self, handle, range) -> None:
        with self._stream(range) as response:
            _raise_for(response)
            for chunk in response.iter_bytes(CHUNK):
                handle.write(chunk)


class BlobSearch(Search):
    """Blobs through `GET /blobs`: namespace, name and storage type equalities, name
    prefixes, tags (`p.tags == "x"`: has the tag), creation ranges (`>=`, `<`) and
    `intersects` go to the server; any other filter is applied here to what it returns."""

    def __init__(self, client: CatalogClient | None = None):
        super().__init__(client)
        self._intersects: dict | None = None

    def intersects(self, geometry, match_null_geometry=False) -> BlobSearch:
        """Only blobs whose geometry meets `geometry` (GeoJSON or shapely, WGS84)."""
        other = self._clone()
        other._intersects = dict(getattr(geometry, "__geo_interface__", geometry))
        return other

    def _split(self) -> tuple[dict, list[Expression]]:
        """(server parameters, filters left to apply here)."""
        params: dict[str, Any] = {"tags": []}
        local: list[Expression] = []
        pending = list(self._filters)
        while pending:
            expr = pending.pop(0)
            if type(expr) is AndExpression:
                pending.extend(expr.parts)
            elif (
                type(expr) is EqExpression
                and expr.value is not None
                and (expr.name in ("namespace", "name", "storage_type") and expr.name not in params)
            ):
                params[expr.name] = str(expr.value)
            elif type(expr) is EqExpression and expr.name == "tags" and expr.value is not None:
                params["tags"].append(str(expr.value))
            elif type(expr) is PrefixExpression and expr.name == "name" and "prefix" not in params:
                params["prefix"] = expr.value
            elif type(expr) is RangeExpression and expr.name == "created":
                for op, value in expr.parts_.items():
                    if op == "gte" and "start" not in params:
                        params["start"] = time_text(value)
                    elif op == "lt" and "end" not in params:
                        params["end"] = time_text(value)
                    else:
                        local.append(RangeExpression("created", {op: value}))
            else:
                local.append(expr)
        if self._intersects is not None:
            import json

            params["intersects"] = json.dumps(self._intersects)
        return params, local

    def __iter__(self) -> Iterator[Blob]:
        params, local = self._split()
        found = self._matches(params, local)
        if self._sort:
            everything = list(found)
            for field, ascending in reversed(self._sort):
                everything.sort(
                    key=lambda b, f=field: _sort_key(getattr(b, f, None)), reverse=not ascending
                )
            found = iter(everything)
        for count, blob in enumerate(found):
            if self._limit is not None and count >= self._limit:
                return
            yield blob

    def _matches(self, params: dict, local: list[Expression]) -> Iterator[Blob]:
        params = {**params, "limit": PAGE}
        while True:
            page = self.client.json("GET", "/blobs", params=params)
            for doc in page["blobs"]:
                blob = Blob._from_doc(doc, self._client)
                if all(f.evaluate(_getter(blob)) for f in local):
                    yield blob
            if not page.get("next_token"):
                return
            params["token"] = page["next_token"]

    def collect(self, **kwargs) -> list[Blob]:
        """Every matching blob, as a list."""
        return list(self)
