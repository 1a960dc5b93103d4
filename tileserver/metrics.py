"""Prometheus metrics and structured request logs (prometheus-client).

Counted per process (each worker of `tileserver serve --workers N` has its own; scrape
them all or run one worker per container). Labels are bounded: a route is its template
(`/images/{image_id}/tiles/...`), never the path a caller typed, and a path no route
matched is `unmatched`.

`RequestMetrics` is the outermost ASGI middleware: it times every request, records a
`Timings` for it, and logs one JSON line per request on the `tileserver.requests` logger
(through logs.RedactSecrets like every line). Code that renders marks its stages with
`timed("read")` and never needs the request; the middleware turns the stages of a
rendered answer into its `Server-Timing` header (as titiler) and the stage histogram.

A recorder lives in a context variable set per request (`recording`). Context variables
follow the request into its worker threads (`opener.ContextPool` copies them), so reads
of several files on several threads land in the same recorder. A stage counts wall-clock
time while at least one thread is in it: four band reads overlapping for 40 ms are 40 ms
of `read`, not 160.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tileserver.logs import scrub

request_log = logging.getLogger("tileserver.requests")

# Where a request's time went

STAGES = ("catalog", "read", "render", "encode")  # a tile's stages, in the header's order


class Timings:
    """Milliseconds per stage of one request; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, tuple[int, float]] = {}  # stage -> (threads in it, since)
        self.seconds: dict[str, float] = {}

    def enter(self, stage: str) -> None:
        """A thread starts `stage`; the clock runs from the first."""
        now = time.perf_counter()
        with self._lock:
            count, since = self._active.get(stage, (0, now))
            self._active[stage] = (count + 1, since if count else now)

    def leave(self, stage: str) -> None:
        """A thread ends `stage`; the time counts when the last one leaves."""
        now = time.perf_counter()
        with self._lock:
            count, since = self._active[stage]
            if count > 1:
                self._active[stage] = (count - 1, since)
                return
            del self._active[stage]
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since

    def milliseconds(self) -> dict[str, float]:
        """Finished stages in milliseconds, rounded to 0.01 ms."""
        with self._lock:
            return {stage: round(s * 1000, 2) for stage, s in self.seconds.items()}

    def header(self) -> str:
        """The `Server-Timing` value: `catalog;dur=1.2, read;dur=40.5, ...`."""
        ms = self.milliseconds()
        order = [s for s in STAGES if s in ms] + sorted(set(ms) - set(STAGES))
        return ", ".join(f"{stage};dur={ms[stage]}" for stage in order)


_CURRENT: ContextVar[Timings | None] = ContextVar("tileserver_timings", default=None)


@contextmanager
def recording(timings: Timings | None = None) -> Iterator[Timings]:
    """Record the stages of the code inside (and of the threads it starts) in `timings`."""
    timings = timings or Timings()
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Count the time inside as `stage` of the current request; nothing outside one."""
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    timings.enter(stage)
    try:
        yield
    finally:
        timings.leave(stage)


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
    "time of each stage of rendered answers (catalog, read, render, encode)",
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
        from tileserver.opener import DATASETS

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


def timed_answer(start: dict, timings: Timings) -> bool:
    """Give a successful answer that rendered (a stage was timed) its `Server-Timing`
    header, unless the route set one (a cache hit: `cache;desc=hit`); True when it did."""
    headers = start.setdefault("headers", [])
    named = any(name.lower() == b"server-timing" for name, _ in headers)
    if named or not timings.seconds or not 200 <= start["status"] < 300:
        return False
    headers.append((b"server-timing", timings.header().encode("latin-1")))
    return True


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
        rendered = [False]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                rendered[0] = timed_answer(message, timings)
            await send(message)

        with recording() as timings:
            try:
                await self.app(scope, receive, sending)
            finally:
                if rendered[0]:
                    for stage, seconds in timings.seconds.items():
                        if stage in STAGES:
                            STAGE_TIME.labels(stage).observe(seconds)
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
