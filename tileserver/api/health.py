"""Liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics (`/metrics`).

`/healthz` and `/readyz` need no key (load balancers and orchestrators call them) and say
nothing about paths or hosts. `/metrics` is off (404) unless TILESERVER_METRICS_TOKEN is
set, and then wants `Authorization: Bearer <that token>` (not an API key: api/auth.py lets
the path through to this check).
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool

from tileserver.readiness import readiness

router = APIRouter(tags=["health"])

READY_TIMEOUT = 5.0  # seconds the readiness checks may take together; then not ready


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: answered on the event loop, so busy worker threads cannot delay it."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a check failed"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the catalog, Redis (when configured) and the data dir, with versions;
    503 when a check fails (its reason is logged, not answered)."""
    state = request.app.state
    try:
        report = await asyncio.wait_for(
            run_in_threadpool(readiness, state.store, state.cache, state.settings.data_dir),
            READY_TIMEOUT,
        )
    except TimeoutError:
        report = {"status": "not ready", "checks": {"timeout": "failed"}, "versions": {}}
    return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; 404 unless a metrics token is configured, 401 without it."""
    secret = request.app.state.settings.metrics_token
    if secret is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    token = bearer(request)
    expected = secret.get_secret_value().encode()
    if token is None or not hmac.compare_digest(token.encode(), expected):
        return JSONResponse(
            {"detail": "metrics need Authorization: Bearer <TILESERVER_METRICS_TOKEN>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="tileserver-metrics"'},
        )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
