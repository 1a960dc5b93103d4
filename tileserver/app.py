"""The FastAPI application: routers, error mapping, static files."""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager, suppress

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from rasterio.errors import RasterioIOError
from rio_tiler.errors import InvalidExpression, TileOutsideBounds

from tileserver import __version__
from tileserver.api import (
    blobs,
    catalog,
    chips,
    health,
    images,
    imports,
    parcels,
    query,
    searches,
    stac,
    uploads,
    values,
)
from tileserver.api.auth import KeyAuth
from tileserver.api.confine import Confine
from tileserver.api.factory import MOSAIC_HEADERS
from tileserver.api.templates import render_template, root_path, viewer_context
from tileserver.blobs import BlobFiles
from tileserver.cache import open_cache
from tileserver.catalog.cql2sql import FilterError
from tileserver.catalog.keys import KeyRing
from tileserver.catalog.store import CatalogStore, Conflict, Forbidden, NotFound, open_store
from tileserver.chipcache import ChipCacheUnavailable, open_chip_store
from tileserver.deadline import REMOTE_READS, DeadlineExceeded, DeadlineMiddleware, RemoteBusy
from tileserver.ingest.vsi import configure_gdal
from tileserver.layers import LayerCache
from tileserver.limits import BodyLimit
from tileserver.memory import limit_arenas, trim_every
from tileserver.metrics import REMOTE, RequestMetrics, fold_every
from tileserver.opener import DATASETS, Refused, confinement_of
from tileserver.render.download import OutsideError, TooLarge
from tileserver.render.errors import ImageNotReadable, RenderError, gdal_reason
from tileserver.render.mosaic import EmptyTile
from tileserver.search_pyramid import Pyramids
from tileserver.settings import Settings, get_settings
from tileserver.uploads import Uploads

logger = logging.getLogger(__name__)

# exception -> status code; the message becomes the JSON `detail`
STATUS_CODES: dict[type[Exception], int] = {
    NotFound: 404,
    Forbidden: 403,  # readable, but not the caller's to change
    Conflict: 409,
    TileOutsideBounds: 404,
    RenderError: 400,
    InvalidExpression: 400,
    ImageNotReadable: 409,
    EmptyTile: 404,
    OutsideError: 404,  # a download area that misses the images
    TooLarge: 413,  # a download above the pixel budget
    FilterError: 400,
    ChipCacheUnavailable: 503,  # chips kept in a Redis that is down
    Refused: 403,  # a file outside what the caller (or the product) may open
    DeadlineExceeded: 504,  # out of time (TILESERVER_REQUEST_TIMEOUT) or the client left
}


class Problem(BaseModel):
    """Every 4xx answer: `detail` says what was wrong (a 422 also lists pydantic's `errors`)."""

    detail: str
    errors: list[dict] | None = None


# documented for every operation, so clients (and the schema fuzz test) know the error shape;
# JSON whatever the operation's own media type (an HTML page, a tile)
ERROR_RESPONSES: dict = {
    "4XX": {
        "description": "what was wrong, in detail",
        "content": {"application/json": {"schema": Problem.model_json_schema()}},
    }
}


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with a readable detail: 'where: what' for each problem."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        problems.append(f"{where}: {error.get('msg')}")
    return JSONResponse(
        {"detail": "; ".join(problems), "errors": jsonable(exc.errors())}, status_code=422
    )


def jsonable(errors: list[dict]) -> list[dict]:
    """Validation errors without the non-JSON bits (exceptions in ctx)."""
    return [{k: (str(v) if k in ("ctx", "input") else v) for k, v in e.items()} for e in errors]


async def _busy_handler(request: Request, exc: RemoteBusy) -> JSONResponse:
    """503 with Retry-After: remote reads are all taken, a retry soon may find one free."""
    return JSONResponse(
        {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
    )


async def _io_handler(request: Request, exc: RasterioIOError) -> JSONResponse:
    logger.warning("unreadable file for %s: %s", request.url.path, exc)
    detail = f"image file cannot be read: {gdal_reason(exc)}"
    return JSONResponse({"detail": detail}, status_code=424)


def create_app(settings: Settings | None = None, store: CatalogStore | None = None) -> FastAPI:
    """Build the app; the store is opened from settings unless given."""
    settings = settings or get_settings()
    cache, chip_store = open_cache(settings), open_chip_store(settings)  # bad URL: ValueError
    own_store = store is None
    store = store or open_store(settings.catalog_url)
    if settings.metrics_token is not None:
        REMOTE.enable()  # GDAL counts its remote requests and bytes (before it reads any)
    configure_gdal()  # serving defaults; GOOGLE_KEY_STRING -> what /vsigs/ reads
    DATASETS.max_idle = settings.open_datasets
    REMOTE_READS.configure(settings.remote_reads, settings.remote_read_wait)
    limit_arenas(settings.malloc_arenas)  # before the request threads exist

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # requests waiting on a hung bucket hold threads: leave plenty for everyone else
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        trimming = None
        if settings.memory_trim_seconds:
            trimming = asyncio.create_task(trim_every(settings.memory_trim_seconds))
        app.state.uploads.start()
        folding = None
        if settings.metrics_token is not None:  # keeps GDAL's per-file statistics bounded
            folding = asyncio.create_task(fold_every(30.0))
        yield
        app.state.pyramids.stop()  # builders stop before the store they read closes
        await anyio.to_thread.run_sync(app.state.uploads.stop)
        for task in (trimming, folding):
            if task:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if own_store:
            store.close()

    app = FastAPI(
        title="tileserver",
        version=__version__,
        description="Dynamic web-map tiles, catalog and downloads for satellite imagery.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    _serve_openapi_as_openapi(app)
    app.state.settings = settings
    app.state.store = store
    app.state.parcels = store.parcels()  # None: this catalog keeps no parcel layers
    app.state.cache = cache
    app.state.chips = chip_store
    app.state.layers = LayerCache()
    app.state.pyramids = Pyramids(settings.data_dir, settings.mosaic_pyramid)
    app.state.confinement = confinement_of(settings, store)
    app.state.uploads = Uploads(
        store, app.state.confinement, settings.max_upload_bytes, settings.upload_workers
    )
    app.state.blob_files = BlobFiles(settings.data_dir, settings.max_blob_bytes)
    app.add_middleware(Confine, confinement=app.state.confinement)
    searches.limit_searches(store, settings)  # TTL and cap of registered searches
    app.add_middleware(
        KeyAuth,
        keys=KeyRing(store, settings.key_cache_seconds),
        allow_anonymous=settings.allow_anonymous,
    )
    # inside BodyLimit, which caps the body this buffers; outside KeyAuth and the routes
    # upload and blob bytes (uploads.DATA_PATH, blobs.DATA_PATH) are streamed: neither
    # buffered nor cut at the deadline
    streamed = re.compile(f"{uploads.DATA_PATH.pattern}|{blobs.DATA_PATH.pattern}")
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout, streamed=streamed)
    app.add_middleware(  # 413 with CORS headers
        BodyLimit, max_bytes=settings.max_body_bytes, streamed=streamed
    )
    app.add_middleware(  # outside KeyAuth: preflights and 401s carry CORS headers
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "POST"],
        allow_headers=["Content-Type", "Authorization"],
        expose_headers=[
            "ETag",
            "Server-Timing",
            "Retry-After",
            *MOSAIC_HEADERS,
            chips.RENDERED_HEADER,
            chips.CACHED_HEADER,
        ],
    )
    # outermost: counts and times every answer, 401s and 413s included
    app.add_middleware(RequestMetrics, log_requests=settings.request_log)
    for exc, status in STATUS_CODES.items():
        app.add_exception_handler(exc, _handler(status))
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(RasterioIOError, _io_handler)
    app.add_exception_handler(RemoteBusy, _busy_handler)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def viewer(request: Request) -> HTMLResponse:
        """The web viewer."""
        page = render_template(
            "viewer.html", image_id="", **viewer_context(settings), root=root_path(request)
        )
        return HTMLResponse(page)

    app.include_router(health.router)
    app.include_router(catalog.router)
    app.include_router(images.router)
    app.include_router(searches.router)
    app.include_router(stac.router, prefix="/stac")
    app.include_router(chips.router)
    app.include_router(parcels.router)
    app.include_router(query.router)
    app.include_router(imports.router)
    app.include_router(uploads.router)
    app.include_router(blobs.router)
    app.include_router(values.router)
    if settings.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    return app


OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json;version=3.0"


def _serve_openapi_as_openapi(app: FastAPI) -> None:
    """`/openapi.json` with the media type the STAC API landing page names for it."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    url = app.openapi_url
    app.router.routes = [
        r for r in app.router.routes if not (isinstance(r, Route) and r.path == url)
    ]

    async def openapi(request) -> JSONResponse:
        return JSONResponse(app.openapi(), media_type=OPENAPI_MEDIA_TYPE)

    app.add_route(url, openapi, include_in_schema=False)
