"""Blobs over HTTP: `POST /blobs`, `PUT /blobs/{id}/data`, `GET /blobs`, `GET /blobs/{id}`,
`GET /blobs/{id}/data`, `PATCH /blobs/{id}`, `DELETE /blobs/{id}`.

Two steps, as pixel uploads (api/uploads.py): the record first (name, namespace, metadata,
the size and MD5 to expect; the namespace and the name are checked before any byte is
accepted), then the bytes in one streamed request that neither the body limit nor the
request deadline buffers or cuts (`DATA_PATH`): counted against TILESERVER_MAX_BLOB_BYTES
(a declared Content-Length above it is refused before reading), and they must keep coming
(`IDLE_SECONDS`). Downloads stream the file (Range requests answer 206).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tileserver.api.deps import KnownQuery, PrincipalDep, bad_request, receive_body
from tileserver.blobs import BlobError, BlobFiles, TooLarge
from tileserver.catalog.blobs import (
    MAX_PAGE,
    Blob,
    BlobAccess,
    BlobPatch,
    BlobQuery,
    BlobRequest,
    StorageType,
    aware,
    check_tags,
    decode_token,
)
from tileserver.catalog.geojson import check_geometry, loads_bounded
from tileserver.limits import declared_length

router = APIRouter(tags=["blobs"], dependencies=[KnownQuery])
DATA_PATH = re.compile(r"/blobs/[0-9a-f]{32}/data$")  # streamed: see the module docstring
IDLE_SECONDS = 60.0  # most seconds between two chunks of a blob's bytes
MAX_QUERY_DEPTH = 16  # nesting of an `intersects` geometry sent as JSON text


class BlobAnswer(Blob):
    """A blob's record, where its bytes go (`data_url`) and come from (`href`, once
    available)."""

    data_url: str
    href: str | None = None


class BlobList(BaseModel):
    """A page of blobs, newest first, with a link to the next page."""

    blobs: list[BlobAnswer]
    next_token: str | None = None
    links: list[dict] = []


def answer(request: Request, blob: Blob) -> BlobAnswer:
    """The record with its URLs (relative to the server's root)."""
    url = f"{request.scope.get('root_path', '')}/blobs/{blob.id}/data"
    href = url if blob.storage_state == "available" else None
    return BlobAnswer(**blob.model_dump(), data_url=url, href=href)


def access_of(request: Request, principal) -> BlobAccess:
    """The blob records as the caller sees them."""
    return BlobAccess(request.app.state.store.blobs(), principal)


def files_of(request: Request) -> BlobFiles:
    """The app's blob files."""
    return request.app.state.blob_files


@router.post(
    "/blobs",
    response_model=BlobAnswer,
    status_code=201,
    summary="Create a blob's record; then send its bytes to `data_url`",
)
def create_blob(
    body: Annotated[BlobRequest, Body()], request: Request, principal: PrincipalDep
) -> BlobAnswer:
    """409 when the storage type, namespace and name are taken; 403 for a namespace that
    is not the caller's organisation's."""
    files = files_of(request)
    if body.size is not None and body.size > files.max_bytes:
        raise HTTPException(413, files.too_large())
    files.purge_expired(request.app.state.store.blobs())  # their names become free
    try:
        blob = access_of(request, principal).create(body)
    except ValueError as exc:  # the namespace and the name together too long
        raise bad_request(str(exc)) from None
    return answer(request, blob)


@router.put(
    "/blobs/{blob_id}/data",
    response_model=BlobAnswer,
    summary="Send a blob's bytes, streamed (checked against its size and MD5)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_blob_data(blob_id: str, request: Request, principal: PrincipalDep) -> BlobAnswer:
    """200 with the record once the bytes are stored (`storage_state` available); 400 when
    they do not match the declared size or MD5, 413 past the limit: then nothing is kept
    and the blob still waits for its bytes."""
    access, files = access_of(request, principal), files_of(request)
    blob = await anyio.to_thread.run_sync(access.writable, blob_id)
    length = declared_length(request.scope)
    if length is not None and length > files.max_bytes:
        raise HTTPException(413, files.too_large())
    receiver = await anyio.to_thread.run_sync(files.receiver, blob)
    try:
        await receive_body(request, receiver.write, IDLE_SECONDS)
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except TimeoutError:
        receiver.discard()
        raise HTTPException(408, f"no bytes came for {IDLE_SECONDS:g} s") from None
    except ClientDisconnect:
        receiver.discard()
        raise HTTPException(400, "the connection closed before all bytes came") from None
    except BaseException:
        receiver.discard()
        raise
    receiver.finish()
    try:
        blob = await anyio.to_thread.run_sync(files.commit, access.store, receiver)
    except BlobError as exc:
        raise HTTPException(400, str(exc)) from None
    return answer(request, blob)


def blob_query(
    namespace: Annotated[str | None, Query(max_length=1000, description="exactly")] = None,
    name: Annotated[str | None, Query(max_length=1000, description="exactly")] = None,
    prefix: Annotated[
        str | None, Query(max_length=1000, description="names starting with this")
    ] = None,
    tags: Annotated[
        list[str] | None, Query(description="blobs with every tag given (repeat the parameter)")
    ] = None,
    intersects: Annotated[
        str | None, Query(description="a GeoJSON geometry (WGS84) the blob's geometry meets")
    ] = None,
    start: Annotated[datetime | None, Query(description="created at or after")] = None,
    end: Annotated[datetime | None, Query(description="created before")] = None,
    storage_type: Annotated[StorageType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    token: Annotated[
        str | None, Query(max_length=500, description="next_token of the previous page")
    ] = None,
) -> BlobQuery:
    """The search, each parameter checked (400 naming it)."""
    for what, value in (("namespace", namespace), ("name", name), ("prefix", prefix)):
        if value is not None and "\x00" in value:
            raise bad_request(f"{what} holds a NUL character")
    if tags:
        try:
            check_tags(tags)
        except ValueError as exc:
            raise bad_request(f"tags: {exc}") from None
    geometry = None
    if intersects is not None:
        try:
            value = loads_bounded(intersects, "intersects", MAX_QUERY_DEPTH)
            geometry = check_geometry(value, "intersects", wgs84=True)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
    if token is not None:
        try:
            decode_token(token)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
    try:
        start, end = aware(start), aware(end)
    except ValueError as exc:
        raise bad_request(f"start/end: {exc}") from None
    return BlobQuery(
        namespace=namespace,
        name=name,
        prefix=prefix,
        tags=tags or [],
        intersects=geometry,
        start=start,
        end=end,
        storage_type=storage_type,
        limit=limit,
        token=token,
    )


@router.get("/blobs", response_model=BlobList, summary="Search the blobs the caller may read")
def search_blobs(
    request: Request, principal: PrincipalDep, query: Annotated[BlobQuery, Depends(blob_query)]
) -> BlobList:
    """Newest first; `next_token` (and the `next` link) continue."""
    page = access_of(request, principal).search(query)
    links = []
    if page.next_token:
        url = request.url.include_query_params(token=page.next_token)
        links.append({"rel": "next", "href": str(url), "type": "application/json"})
    blobs = [answer(request, blob) for blob in page.blobs]
    return BlobList(blobs=blobs, next_token=page.next_token, links=links)


@router.get("/blobs/{blob_id}", response_model=BlobAnswer, summary="A blob's record")
def get_blob(blob_id: str, request: Request, principal: PrincipalDep) -> BlobAnswer:
    """404 when missing, hidden from the caller or expired."""
    return answer(request, access_of(request, principal).get(blob_id))


@router.get(
    "/blobs/{blob_id}/data",
    response_class=FileResponse,
    summary="A blob's bytes, streamed (Range requests answer 206)",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
        206: {"content": {"application/octet-stream": {}}, "description": "the bytes asked"},
        416: {"description": "a Range outside the blob"},
    },
)
def get_blob_data(blob_id: str, request: Request, principal: PrincipalDep) -> FileResponse:
    """The bytes as uploaded, with the MD5 as ETag; 409 while they have not been sent."""
    blob = access_of(request, principal).get(blob_id)
    path = files_of(request).open(blob)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=blob.name.rsplit("/", 1)[-1],
        headers={"ETag": f'"{blob.md5}"', "Cache-Control": "private, no-cache"},
    )


@router.patch("/blobs/{blob_id}", response_model=BlobAnswer, summary="Change a blob's metadata")
def patch_blob(
    blob_id: str, body: Annotated[BlobPatch, Body()], request: Request, principal: PrincipalDep
) -> BlobAnswer:
    """The fields sent replace the stored ones (writers; the access lists: owners)."""
    return answer(request, access_of(request, principal).patch(blob_id, body))


@router.delete("/blobs/{blob_id}", status_code=204, summary="Delete a blob and its bytes")
def delete_blob(blob_id: str, request: Request, principal: PrincipalDep) -> Response:
    """Owners delete."""
    files_of(request).remove(access_of(request, principal).delete(blob_id))
    return Response(status_code=204)
