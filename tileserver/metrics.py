"""Prometheus metrics and structured request logs (prometheus-client).

Counted per process (each worker of `tileserver serve --workers N` has its own; scrape
them all or run one worker per container). Labels are bounded: a route is its template
(`/images/{image_id}/tiles/...`), never the path a caller typed, and a path no route
matched is `unmatched`.

`RequestMetrics` is the outermost ASGI middleware: it times every request, records a
`timings.Timings` for it (the tile path marks its stages), and logs one JSON line per
request on the `tileserver.requests` logger (through logs.RedactSecrets like every line).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tileserver.logs import scrub
from tileserver.timings import STAGES, Timings, recording

request_log = logging.getLogger("tileserver.requests")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("tileserver_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "tileserver_request_duration_seconds",
    "time to answer a request, by route",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
STAGE_TIME = Histogram(
    "tileserver_tile_stage_seconds",
    "time of each stage of rendered tiles (catalog, read, render, encode)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
TILE_CACHE = Counter("tileserver_tile_cache", "tile cache lookups", ["result"])
MOSAIC_IMAGES = Histogram(
    "tileserver_mosaic_images_read",
    "images read per rendered mosaic tile",
    buckets=(0, 1, 2, 3, 5, 10, 20, 30, 50, 100, 500),
)
IMPORTS = Counter(
    "tileserver_import_scenes",
    "scenes of POST /imports by outcome (registered, failed, filtered_out)",
    ["outcome"],
)
IMPORT_REQUESTS = Counter(
    "tileserver_imports", "POST /imports requests by outcome (done, refused)", ["outcome"]
)


def observe_stages(timings: Timings) -> None:
    """Feed a rendered tile's stage times to the stage histogram."""
    for stage, seconds in timings.seconds.items():
        if stage in STAGES:
            STAGE_TIME.labels(stage).observe(seconds)


# GDAL's own count of its HTTP requests and bytes (/vsis3/, /vsicurl/, ...)

NETWORK_STATS = "CPL_VSIL_NETWORK_STATS_ENABLED"


def _gdal(name: str, restype, *argtypes):
    import rasterio._base  # the GDAL rasterio runs on

    try:
        function = getattr(ctypes.CDLL(rasterio._base.__file__), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), restype
    return function


class RemoteReads:
    """Totals of GDAL's network statistics, folded in and reset now and then.

    GDAL keeps its statistics per file for the life of the process; folding them into
    totals and resetting keeps that bounded (the server folds every 30 s and at scrapes).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}  # by HTTP method
        self.bytes_down = 0
        self.bytes_up = 0

    def enable(self) -> None:
        """Let GDAL count. GDAL reads the option once, and again at each reset: the fold
        makes it count even after remote reads made before this call."""
        os.environ.setdefault(NETWORK_STATS, "YES")
        self.fold()

    def fold(self) -> None:
        """Add what GDAL counted since the last fold, and reset GDAL's counts."""
        get = _gdal("VSINetworkStatsGetAsSerializedJSON", ctypes.c_void_p, ctypes.c_void_p)
        reset = _gdal("VSINetworkStatsReset", None)
        free = _gdal("VSIFree", None, ctypes.c_void_p)
        if get is None or reset is None or free is None:
            return
        with self._lock:
            pointer = get(None)
            if not pointer:
                return
            try:
                stats = json.loads(ctypes.string_at(pointer).decode())
            finally:
                free(pointer)
            reset()
            for method, counts in stats.get("methods", {}).items():
                self.requests[method] = self.requests.get(method, 0) + counts.get("count", 0)
                self.bytes_down += counts.get("downloaded_bytes", 0)
                self.bytes_up += counts.get("uploaded_bytes", 0)


REMOTE = RemoteReads()


class ServerCollector(Collector):
    """What is read at scrape time: the dataset pool, and GDAL's remote reads."""

    def collect(self) -> Iterable:
        """The pool's idle and opened datasets, remote requests and bytes."""
        from tileserver.render.datasets import DATASETS

        idle = GaugeMetricFamily(
            "tileserver_open_datasets", "open datasets waiting in the pool for a request"
        )
        idle.add_metric([], DATASETS.idle())
        yield idle
        opened = CounterMetricFamily(
            "tileserver_datasets_opened", "datasets opened (pool misses) since start"
        )
        opened.add_metric([], DATASETS.opened)
        yield opened
        yield from gdal_cache()
        yield from remote_slots()
        if os.environ.get(NETWORK_STATS, "").upper() not in ("YES", "TRUE", "ON", "1"):
            return
        REMOTE.fold()
        requests = CounterMetricFamily(
            "tileserver_remote_requests",
            "HTTP requests GDAL made to buckets and URLs",
            labels=["method"],
        )
        for method, count in sorted(REMOTE.requests.items()):
            requests.add_metric([method], count)
        yield requests
        down = CounterMetricFamily(
            "tileserver_remote_bytes", "bytes GDAL downloaded from buckets and URLs"
        )
        down.add_metric([], REMOTE.bytes_down)
        yield down


def gdal_cache() -> Iterable:
    """GDAL's block cache: bytes of decoded blocks held, and its cap (GDAL_CACHEMAX)."""
    used = _gdal("GDALGetCacheUsed64", ctypes.c_int64)
    cap = _gdal("GDALGetCacheMax64", ctypes.c_int64)
    if used is None or cap is None:
        return
    held = GaugeMetricFamily(
        "tileserver_gdal_block_cache_bytes", "bytes of decoded blocks in GDAL's block cache"
    )
    held.add_metric([], used())
    yield held
    limit = GaugeMetricFamily(
        "tileserver_gdal_block_cache_max_bytes", "the block cache's cap (GDAL_CACHEMAX)"
    )
    limit.add_metric([], cap())
    yield limit


def remote_slots() -> Iterable:
    """The remote-read bound (deadline.REMOTE_READS): slots in use, its size, refusals."""
    from tileserver.deadline import REMOTE_READS

    busy = GaugeMetricFamily(
        "tileserver_remote_reads_in_progress",
        "remote files being read now (bounded by TILESERVER_REMOTE_READS)",
    )
    busy.add_metric([], REMOTE_READS.in_use())
    yield busy
    size = GaugeMetricFamily("tileserver_remote_reads_max", "the bound on remote reads at once")
    size.add_metric([], REMOTE_READS.size)
    yield size
    refused = CounterMetricFamily(
        "tileserver_remote_reads_refused",
        "remote reads refused (503) because every slot stayed busy",
    )
    refused.add_metric([], REMOTE_READS.refused)
    yield refused


REGISTRY.register(ServerCollector())


def route_of(scope: dict) -> str:
    """The template of the route that answered (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMetrics:
    """ASGI middleware: per-request metrics, a `Timings` recorder and a JSON log line."""

    def __init__(self, app, log_requests: bool = True):
        self.app, self.log_requests = app, log_requests

    async def __call__(self, scope, receive, send) -> None:
        """Time the request; count it once its answer has started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # an exception before any answer is a 500 to the client

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        with recording() as timings:
            try:
                await self.app(scope, receive, sending)
            finally:
                self.finish(scope, status[0], time.perf_counter() - start, timings)

    def finish(self, scope: dict, status: int, seconds: float, timings: Timings) -> None:
        """Count, observe and log one answered request."""
        route, method = route_of(scope), scope.get("method", "")
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(seconds)
        if not self.log_requests or not request_log.isEnabledFor(logging.INFO):
            return
        line = {
            "method": method,
            "route": route,
            "path": scope.get("path", ""),
            "status": status,
            "ms": round(seconds * 1000, 2),
        }
        if stages := timings.milliseconds():
            line["timings"] = stages
        request_log.info("%s", scrub(json.dumps(line, separators=(",", ":"))))


async def fold_every(seconds: float) -> None:
    """Fold GDAL's network statistics into the totals every `seconds` (off the loop)."""
    import asyncio

    import anyio.to_thread

    while True:
        await asyncio.sleep(seconds)
        await anyio.to_thread.run_sync(REMOTE.fold)
