"""Pixel uploads over HTTP: `POST /products/{id}/uploads`, `PUT /uploads/{id}/data`,
`GET /uploads/{id}`, `GET /uploads`.

Two steps, as the Catalog's image uploads: the record first (the image's name and
properties, the overviews; the caller's write access and the name are checked before any
byte is accepted), then the bytes in one streamed request, which neither the body limit nor
the request deadline buffers or cuts (`DATA_PATH`): they are counted against
TILESERVER_MAX_UPLOAD_BYTES and must keep coming (`IDLE_SECONDS`). The conversion to a COG
runs in the background (tileserver/uploads.py); the record's `status` says when the image is
there.
"""

from __future__ import annotations

import re
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tileserver.api.deps import PrincipalDep, StoreDep, receive_body
from tileserver.catalog.access import ScopedStore
from tileserver.catalog.store import NotFound
from tileserver.uploads import Upload, UploadError, UploadRequest, Uploads

router = APIRouter(tags=["uploads"])
DATA_PATH = re.compile(r"/uploads/[0-9a-f]{32}/data$")  # streamed: see the module docstring
IDLE_SECONDS = 60.0  # most seconds between two chunks of an upload's bytes


class UploadAnswer(Upload):
    """An upload's record and where its bytes go."""

    data_url: str


class UploadList(BaseModel):
    """The caller's uploads, newest first."""

    uploads: list[UploadAnswer]


def answer(request: Request, upload: Upload) -> UploadAnswer:
    """The record with its `data_url` (relative to the server's root)."""
    root = request.scope.get("root_path", "")
    return UploadAnswer(**upload.model_dump(), data_url=f"{root}/uploads/{upload.id}/data")


def uploads_of(request: Request) -> Uploads:
    """The app's uploads."""
    return request.app.state.uploads


def visible(request: Request, principal, upload_id: str) -> Upload:
    """The caller's upload; someone else's is not found, as a missing one."""
    upload = uploads_of(request).get(upload_id)
    if not Uploads.visible(upload, principal):
        raise NotFound(f"upload '{upload_id}' not found")
    return upload


@router.post(
    "/products/{product_id}/uploads",
    response_model=UploadAnswer,
    status_code=201,
    summary="Start an upload of a GeoTIFF or an array as a new image of the product",
)
def create_upload(
    product_id: str,
    body: Annotated[UploadRequest, Body()],
    request: Request,
    store: StoreDep,
    principal: PrincipalDep,
) -> UploadAnswer:
    """Checks the caller may add images to the product and the name is free; then send the
    bytes to `data_url`."""
    if isinstance(store, ScopedStore):
        store.check_write(product_id)
    else:
        store.get_product(product_id)
    return answer(request, uploads_of(request).create(product_id, body, principal))


@router.put(
    "/uploads/{upload_id}/data",
    response_model=UploadAnswer,
    status_code=202,
    summary="Send an upload's bytes (a GeoTIFF, or a .npy array), streamed",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "image/tiff": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload_data(upload_id: str, request: Request, principal: PrincipalDep) -> UploadAnswer:
    """202 once the bytes are in and checked (`status` is then `received`, or `failed` with
    the reason in `errors`); the conversion follows in the background."""
    uploads = uploads_of(request)
    upload = visible(request, principal, upload_id)
    receiver = uploads.start_receiving(upload)
    try:
        await receive_body(request, receiver.write, IDLE_SECONDS)
    except UploadError as exc:
        raise HTTPException(413, str(exc)) from None
    except TimeoutError:
        receiver.abort(f"no bytes came for {IDLE_SECONDS:g} s: send them again in a new upload")
        raise HTTPException(408, f"no bytes came for {IDLE_SECONDS:g} s") from None
    except ClientDisconnect:
        receiver.abort("the connection closed before all bytes came: send them again")
        raise HTTPException(400, "the connection closed before all bytes came") from None
    except BaseException:
        receiver.abort("the server stopped receiving: send the bytes again in a new upload")
        raise
    upload = await anyio.to_thread.run_sync(receiver.finish)
    if upload.status == "failed":
        raise HTTPException(400, upload.errors[-1])
    return answer(request, upload)


@router.get("/uploads/{upload_id}", response_model=UploadAnswer, summary="An upload's state")
def get_upload(upload_id: str, request: Request, principal: PrincipalDep) -> UploadAnswer:
    """Status, events and errors; the image id once `done`."""
    return answer(request, visible(request, principal, upload_id))


@router.get("/uploads", response_model=UploadList, summary="The caller's uploads")
def list_uploads(
    request: Request,
    principal: PrincipalDep,
    product_id: Annotated[str | None, Query(description="only this product's")] = None,
) -> UploadList:
    """The caller's uploads (an admin's: everyone's), newest first."""
    wanted = None if product_id is None else {product_id}
    found = uploads_of(request).list(principal, wanted)
    return UploadList(uploads=[answer(request, u) for u in found])
