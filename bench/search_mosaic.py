"""Benchmark: STAC search on a 1,000,000-item SQLite catalog, and mosaic tile latency.

    python bench/search_mosaic.py [--items 1000000] [--out DIR] [--runs 50]

Part 1 fills a SQLiteStore with synthetic Sentinel-2-sized footprints (deterministic,
numpy seed), reports the ingest rate (and what the store's own ANALYZE costs), then times
four searches: (a) bbox + month + cloud cover through `store.search`, (b) a CQL2
S_INTERSECTS polygon, (c) (a) through `POST /stac/search` on a uvicorn server, (d) the
per-tile image lookup of a mosaic (`store.tile_images`). Diagnostic rows time the pieces
of (a) (page query, bounded COUNT, calls of the Python spatial function) and the searches
that were slow before the store kept statistics and bounded its COUNT: collections + bbox,
a collections-only mosaic lookup, a property-only filter, the product lookup of a mosaic
without collections.

Part 2 writes 10 overlapping 4-band UInt16 COGs with nodata borders and holes and times
mosaic PNG tiles at z12-z14 (tile cache off): a search over all 10 images against one
over the newest only, with pixel_selection first and mean; then, with the 10 images added
to the part 1 catalog for a while, a mosaic search with and one without `collections`.

Results are printed as a table and written as JSON (default: bench/search_mosaic.json).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/search_mosaic.py` from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import morecantile  # noqa: E402
import rasterio  # noqa: E402
import rasterio.shutil  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform_geom  # noqa: E402

from tileserver.catalog import cql2sql  # noqa: E402
from tileserver.catalog.models import Image, ImageFile, Product  # noqa: E402
from tileserver.catalog.search import COUNT_LIMIT, SearchQuery, TileLookup  # noqa: E402
from tileserver.catalog.sqlite import SQLiteStore  # noqa: E402

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
SEED = 20240611
EPOCH = datetime(2017, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int((END - EPOCH).total_seconds())
LAT_RANGE = (-60.0, 70.0)  # footprint centres; "land-ish" latitudes
LON_RANGE = (-179.0, 179.0)  # keeps every footprint off the antimeridian
FOOTPRINT = (1.5, 1.0)  # degrees, width x height (about a Sentinel-2 granule)
ROTATED_SHARE = 0.3  # share of footprints that are rotated quadrilaterals
# product id, share of items, platforms, constellation, gsd
PRODUCTS = (
    ("sentinel-2-l2a", 0.7, ("sentinel-2a", "sentinel-2b"), "sentinel-2", 10),
    ("landsat-c2-l2", 0.3, ("landsat-8", "landsat-9"), "landsat", 30),
)
MOSAIC_PRODUCT = "bench-mosaic"
AIM_SEARCH_P50_MS = 50.0
AIM_MOSAIC_RATIO = 2.0
LOOKUP = TileLookup(limit=31)  # a mosaic tile's lookup: the image cap + 1


# --------------------------------------------------------------------------- helpers


def percentiles(samples: list[float]) -> dict:
    """p50 / p95 / mean / min / max of timings in milliseconds."""
    ms = numpy.asarray(samples) * 1000
    return {
        "n": len(samples),
        "p50_ms": round(float(numpy.percentile(ms, 50)), 2),
        "p95_ms": round(float(numpy.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "min_ms": round(float(ms.min()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Seconds a call takes, and what it returned."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`uvicorn tileserver.main:app` in a child process, configured by TILESERVER_* variables.

    A separate process, so the HTTP client does not share the server's GIL.
    """

    def __init__(self, catalog: Path, data_dir: Path, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TILESERVER_CATALOG_URL": f"sqlite:///{catalog}",
            "TILESERVER_DATA_DIR": str(data_dir),
            **{f"TILESERVER_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        command = [sys.executable, "-m", "uvicorn", "tileserver.main:app", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- catalog data


def footprints(rng: numpy.random.Generator, count: int) -> numpy.ndarray:
    """(count, 5, 2) closed rings: boxes about 1.5 x 1 degrees, some rotated."""
    cx = rng.uniform(*LON_RANGE, count)
    cy = rng.uniform(*LAT_RANGE, count)
    half_w = FOOTPRINT[0] / 2 * rng.uniform(0.9, 1.1, count)
    half_h = FOOTPRINT[1] / 2 * rng.uniform(0.9, 1.1, count)
    angle = numpy.where(
        rng.random(count) < ROTATED_SHARE, numpy.radians(rng.uniform(-20, 20, count)), 0.0
    )
    corners = numpy.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float)
    dx = corners[None, :, 0] * half_w[:, None]
    dy = corners[None, :, 1] * half_h[:, None]
    cos, sin = numpy.cos(angle)[:, None], numpy.sin(angle)[:, None]
    x = cx[:, None] + dx * cos - dy * sin
    y = numpy.clip(cy[:, None] + dx * sin + dy * cos, -89.0, 89.0)
    return numpy.round(numpy.stack([x, y], axis=-1), 6)


def synthetic_images(batch: int, count: int, first: int) -> list[Image]:
    """`count` images numbered from `first`; batch `batch` always gives the same images."""
    rng = numpy.random.default_rng([SEED, batch])
    rings = footprints(rng, count)
    seconds = rng.integers(0, SPAN_SECONDS, count)
    cloud = numpy.round(rng.uniform(0, 100, count), 2)
    shares = numpy.cumsum([p[1] for p in PRODUCTS])
    which = numpy.searchsorted(shares, rng.random(count) * shares[-1], side="right")
    platform_pick = rng.integers(0, 2, count)
    sizes = rng.integers(400_000_000, 900_000_000, count)
    images = []
    for k in range(count):
        product_id, _, platforms, constellation, gsd = PRODUCTS[which[k]]
        ring = rings[k]
        lon = float(ring[:4, 0].mean())
        zone = int((lon + 180) // 6) + 1
        name = f"S{first + k:07d}"
        images.append(
            Image(
                name=name,
                product_id=product_id,
                acquired=EPOCH + timedelta(seconds=int(seconds[k])),
                geometry={"type": "Polygon", "coordinates": [ring.tolist()]},
                bbox=(
                    float(ring[:, 0].min()),
                    float(ring[:, 1].min()),
                    float(ring[:, 0].max()),
                    float(ring[:, 1].max()),
                ),
                cloud_cover=float(cloud[k]),
                files=[ImageFile(href=f"s3://bench/{product_id}/{name}.tif", size=int(sizes[k]))],
                crs=f"EPSG:{32600 + zone if ring[:, 1].mean() >= 0 else 32700 + zone}",
                width=10980,
                height=10980,
                properties={
                    "platform": platforms[platform_pick[k]],
                    "constellation": constellation,
                    "gsd": gsd,
                },
            )
        )
    return images


def build_catalog(path: Path, items: int, batch_size: int) -> dict:
    """Fill a new store with `items` synthetic images, `batch_size` per put_images call."""
    store = SQLiteStore(path)
    for product_id, *_ in PRODUCTS:
        store.put_product(Product(id=product_id, name=product_id))
    analyzes: list[tuple[int, float]] = []  # (rows, seconds) of each ANALYZE put_images ran
    keep_statistics = store._keep_statistics

    def counting_statistics() -> None:
        db = store._connection()
        before = analyzed_rows(db)
        seconds, _ = timed(keep_statistics)
        if analyzed_rows(db) != before:
            analyzes.append((analyzed_rows(db), round(seconds, 3)))

    store._keep_statistics = counting_statistics
    generate = write = 0.0
    started = time.perf_counter()
    with tqdm(total=items, unit="img", desc="ingest", smoothing=0.1) as bar:
        for batch, first in enumerate(range(0, items, batch_size)):
            count = min(batch_size, items - first)
            seconds, images = timed(lambda: synthetic_images(batch, count, first))  # noqa: B023
            generate += seconds
            seconds, _ = timed(lambda: store.put_images(images))  # noqa: B023
            write += seconds
            bar.update(count)
    total = time.perf_counter() - started
    store.close()
    return {
        "items": items,
        "batch_size": batch_size,
        "seconds_total": round(total, 1),
        "seconds_generate": round(generate, 1),
        "seconds_put_images": round(write, 1),
        "items_per_s_put_images": round(items / write),
        "items_per_s_total": round(items / total),
        "analyze_runs": [{"rows": rows, "seconds": seconds} for rows, seconds in analyzes],
        "seconds_analyze": round(sum(seconds for _, seconds in analyzes), 2),
        "db_bytes": catalog_bytes(path),
    }


def analyzed_rows(db) -> int:
    """The catalog size at the store's last ANALYZE (0: never)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'analyzed_rows'").fetchone()
    return row[0] if row else 0


def catalog_bytes(path: Path) -> int:
    """Size of the catalog file and its WAL."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def count_images(path: Path) -> int:
    """How many synthetic images a catalog file holds (0 if none); no store, so no ANALYZE."""
    import sqlite3

    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        marks = ", ".join("?" for _ in PRODUCTS)
        sql = f"SELECT count(*) FROM images WHERE product_id IN ({marks})"
        return db.execute(sql, [p[0] for p in PRODUCTS]).fetchone()[0]
    except sqlite3.OperationalError:  # not a catalog
        return 0
    finally:
        db.close()


def statistics_on_open(path: Path) -> dict:
    """What opening the catalog costs: with current statistics, and without any (a catalog
    written before the store kept statistics: the open runs ANALYZE once)."""
    import sqlite3

    seconds_current, store = timed(lambda: SQLiteStore(path))
    store.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM sqlite_stat1")
    db.execute("DELETE FROM meta WHERE key = 'analyzed_rows'")
    db.commit()
    db.close()
    seconds_old, store = timed(lambda: SQLiteStore(path))
    db = store._connection()
    stats = db.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'images' ORDER BY idx")
    result = {
        "open_with_statistics_ms": round(seconds_current * 1000, 1),
        "open_without_statistics_s": round(seconds_old, 2),
        "analyzed_rows": analyzed_rows(db),
        "sqlite_stat1_images": dict(stats.fetchall()),
    }
    store.close()
    return result


# --------------------------------------------------------------------------- search queries


def month_interval(rng: numpy.random.Generator) -> str:
    """A random calendar month of 2017..2024 as a STAC datetime interval."""
    year, month = int(rng.integers(2017, 2025)), int(rng.integers(1, 13))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC) - timedelta(seconds=1)
    return f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"


def bbox_bodies(rng: numpy.random.Generator, count: int) -> list[dict]:
    """Query (a) bodies: a 2 x 2 degree bbox, one month, eo:cloud_cover < 20, limit 10."""
    bodies = []
    for _ in range(count):
        west, south = rng.uniform(-178, 176), rng.uniform(-60, 68)
        bodies.append(
            {
                "bbox": [round(west, 4), round(south, 4), round(west + 2, 4), round(south + 2, 4)],
                "datetime": month_interval(rng),
                "filter": "eo:cloud_cover < 20",
                "filter-lang": "cql2-text",
                "limit": 10,
            }
        )
    return bodies


def polygon_bodies(rng: numpy.random.Generator, count: int) -> list[dict]:
    """Query (b) bodies: S_INTERSECTS with a small irregular 7-gon (radius 0.2-0.5 deg)."""
    bodies = []
    for _ in range(count):
        cx, cy = rng.uniform(-178, 178), rng.uniform(-59, 69)
        angles = numpy.sort(rng.uniform(0, 2 * numpy.pi, 7))
        radius = rng.uniform(0.2, 0.5, 7)
        points = [
            (cx + r * numpy.cos(a), cy + r * numpy.sin(a))
            for a, r in zip(angles, radius, strict=True)
        ]
        points.append(points[0])
        ring = ", ".join(f"{x:.4f} {y:.4f}" for x, y in points)
        bodies.append(
            {
                "filter": f"S_INTERSECTS(geometry, POLYGON(({ring})))",
                "filter-lang": "cql2-text",
                "limit": 10,
            }
        )
    return bodies


def random_tiles(rng: numpy.random.Generator, count: int) -> list[morecantile.Tile]:
    """WebMercator tiles of zoom 8-10 inside the data area."""
    tiles = []
    for _ in range(count):
        lon, lat = rng.uniform(-178, 178), rng.uniform(-58, 68)
        tiles.append(WEB_MERCATOR.tile(lon, lat, int(rng.integers(8, 11))))
    return tiles


TILE_QUERY = {
    "collections": ["sentinel-2-l2a"],
    "datetime": "2023-01-01T00:00:00Z/2023-12-31T23:59:59Z",
}


def time_store_searches(store: SQLiteStore, bodies: list[dict]) -> tuple[dict, list[int]]:
    """Time store.search over the bodies (SearchQuery parsed outside the timer)."""
    queries = [SearchQuery.model_validate(body) for body in bodies]
    store.search(queries[0])  # warm-up
    samples, matched = [], []
    for query in queries:
        seconds, page = timed(lambda q=query: store.search(q))
        samples.append(seconds)
        matched.append(page.matched)
    return percentiles(samples), matched


def time_http_searches(url: str, bodies: list[dict]) -> tuple[dict, list[int]]:
    """Time POST /stac/search over the bodies, one keep-alive client."""
    samples, matched = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/stac/search", json=bodies[0]).raise_for_status()  # warm-up
        for body in bodies:
            seconds, response = timed(lambda b=body: client.post("/stac/search", json=b))
            response.raise_for_status()
            samples.append(seconds)
            matched.append(response.json().get("numberMatched"))
    return percentiles(samples), matched


def time_tile_lookups(store: SQLiteStore, tiles: list[morecantile.Tile]) -> tuple[dict, list[int]]:
    """Time store.tile_images(registered-search-like query, tile bbox, limit 31) per tile."""
    query = SearchQuery.model_validate(TILE_QUERY)
    bounds = [tuple(WEB_MERCATOR.bounds(tile)) for tile in tiles]
    store.tile_images(query, bounds[0], LOOKUP)  # warm-up
    samples, found = [], []
    for box in bounds:
        seconds, images = timed(lambda b=box: store.tile_images(query, b, LOOKUP))
        samples.append(seconds)
        found.append(len(images))
    return percentiles(samples), found


def spread(values: list[int | None]) -> dict:
    """Median / max of per-query result counts; None (not counted) are left out."""
    known = [v for v in values if v is not None]
    out = {"not_counted": len(values) - len(known)}
    if known:
        out.update(median=statistics.median(known), max=max(known), min=min(known))
    return out


# --------------------------------------------------------------------------- mosaic data

MOSAIC_BANDS = ("B02", "B03", "B04", "B08")
MOSAIC_SIZE = 2048
MOSAIC_PIXEL = 10.0
MOSAIC_ORIGIN = (500_000.0, 5_800_000.0)  # EPSG:32633, about 52.3 N 15 E
MOSAIC_SHIFT = (300.0, -250.0)  # metres between consecutive images
MOSAIC_COUNT = 10


def mosaic_pixels(index: int, rng: numpy.random.Generator) -> numpy.ndarray:
    """(4, 2048, 2048) UInt16 with 0 (nodata) in a border, 8 holes and maybe an edge cut."""
    size = MOSAIC_SIZE
    x0 = MOSAIC_ORIGIN[0] + index * MOSAIC_SHIFT[0]
    y0 = MOSAIC_ORIGIN[1] + index * MOSAIC_SHIFT[1]
    rows, cols = numpy.mgrid[0:size, 0:size].astype("float32")
    east, north = x0 + cols * MOSAIC_PIXEL, y0 - rows * MOSAIC_PIXEL
    ground = numpy.sin(east / 900.0) * numpy.cos(north / 1300.0)  # the same ground each date
    bands = []
    for b in range(len(MOSAIC_BANDS)):
        noise = rng.normal(0, 60, (size, size)).astype("float32")
        values = 800 + 350 * b + 20 * index + 600 * ground + noise
        bands.append(numpy.clip(values, 1, 10000))
    data = numpy.stack(bands).astype("uint16")
    invalid = numpy.zeros((size, size), dtype=bool)
    top, bottom, left, right = rng.integers(40, 121, 4)
    invalid[:top], invalid[size - bottom :], invalid[:, :left], invalid[:, size - right :] = (
        True,
        True,
        True,
        True,
    )
    for _ in range(8):  # cloud holes
        cy, cx = rng.integers(0, size, 2)
        ry, rx = rng.integers(60, 221, 2)
        invalid |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    if index % 2 == 0:  # an orbit edge: a nodata triangle on the west side
        invalid |= cols < (size - rows) * 0.25
    data[:, invalid] = 0
    return data


def write_mosaic_images(folder: Path) -> list[dict]:
    """Write the 10 COGs; their image records (oldest first) for PUT /images."""
    from tests.synthetic import write_raster  # the test suite's GeoTIFF writer

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(MOSAIC_COUNT):
        rng = numpy.random.default_rng([SEED, 1000 + index])
        x0 = MOSAIC_ORIGIN[0] + index * MOSAIC_SHIFT[0]
        y0 = MOSAIC_ORIGIN[1] + index * MOSAIC_SHIFT[1]
        transform = from_origin(x0, y0, MOSAIC_PIXEL, MOSAIC_PIXEL)
        path = folder / f"T{index:02d}.tif"
        plain = folder / f"T{index:02d}.plain.tif"
        write_raster(
            plain,
            mosaic_pixels(index, rng),
            "EPSG:32633",
            transform,
            descriptions=MOSAIC_BANDS,
            nodata=0,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
        )
        rasterio.shutil.copy(
            plain,
            path,
            driver="COG",
            compress="DEFLATE",
            blocksize=512,
            overview_resampling="nearest",
        )
        plain.unlink()
        span = MOSAIC_SIZE * MOSAIC_PIXEL
        acquired = datetime(2024, 5, 1, 10, tzinfo=UTC) + timedelta(days=5 * index)
        ring = [[x0, y0], [x0 + span, y0], [x0 + span, y0 - span], [x0, y0 - span], [x0, y0]]
        geometry = transform_geom(
            "EPSG:32633", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}
        )
        records.append(
            {
                "name": f"T{index:02d}",
                "product_id": MOSAIC_PRODUCT,
                "acquired": f"{acquired:%Y-%m-%dT%H:%M:%SZ}",
                "geometry": geometry,
                "cloud_cover": 10.0,
                "crs": "EPSG:32633",
                "geotrans": [x0, MOSAIC_PIXEL, 0.0, y0, 0.0, -MOSAIC_PIXEL],
                "width": MOSAIC_SIZE,
                "height": MOSAIC_SIZE,
                "files": [{"href": str(path), "size": path.stat().st_size}],
            }
        )
    return records


MOSAIC_PRODUCT_BODY = {
    "id": MOSAIC_PRODUCT,
    "name": "10 overlapping synthetic Sentinel-2-like dates",
    "default_bands": ["B04", "B03", "B02"],
    "bands": [
        {
            "name": name,
            "data_type": "UInt16",
            "nodata": 0,
            "data_range": [0, 10000],
            "display_range": [0, 3000],
            "resolution": {"value": MOSAIC_PIXEL},
            "band_index": index,
        }
        for index, name in enumerate(MOSAIC_BANDS)
    ],
}


def overlap_tiles(records: list[dict]) -> dict[int, list[morecantile.Tile]]:
    """Per zoom 12-14, the tiles lying wholly inside every image's footprint."""
    import shapely
    from shapely.geometry import shape

    overlap = shapely.intersection_all([shape(r["geometry"]) for r in records])
    return {
        zoom: [
            tile
            for tile in WEB_MERCATOR.tiles(*overlap.bounds, zooms=[zoom])
            if shapely.box(*WEB_MERCATOR.bounds(tile)).within(overlap)
        ]
        for zoom in (12, 13, 14)
    }


def pick_tiles(
    by_zoom: dict[int, list], count: int, usable: Callable[[morecantile.Tile], bool]
) -> list[morecantile.Tile]:
    """`count` usable tiles: every z12 one, then z13 and z14 alternately, in seeded order.

    `usable` drops tiles that fall wholly in a hole of the newest image (a 404 there).
    """
    rng = numpy.random.default_rng([SEED, 3])
    z13, z14 = ([by_zoom[z][i] for i in rng.permutation(len(by_zoom[z]))] for z in (13, 14))
    candidates = list(by_zoom[12])
    for pair in zip(z13, z14, strict=False):
        candidates += pair
    candidates += z13[len(z14) :] + z14[len(z13) :]
    picked = []
    for tile in candidates:
        if len(picked) == count:
            break
        if usable(tile):
            picked.append(tile)
    return picked


def register_mosaic(url: str, records: list[dict], searches: dict[str, dict]) -> dict[str, str]:
    """Product and images through the REST API (PUT: a second time changes nothing), then
    the searches; their ids by key."""
    with httpx.Client(base_url=url, timeout=120) as client:
        client.put(f"/products/{MOSAIC_PRODUCT}", json=MOSAIC_PRODUCT_BODY).raise_for_status()
        for record in records:
            image_id = f"{MOSAIC_PRODUCT}:{record['name']}"
            client.put(f"/images/{image_id}", json=record).raise_for_status()
        ids = {}
        for key, body in searches.items():
            response = client.post("/searches", json=body)
            response.raise_for_status()
            ids[key] = response.json()["id"]
    return ids


def mosaic_searches(records: list[dict]) -> dict[str, dict]:
    """all 10 images; the newest only; all 10 without `collections` (by item id)."""
    return {
        "all": {"collections": [MOSAIC_PRODUCT]},
        "newest": {"collections": [MOSAIC_PRODUCT], "ids": [records[-1]["name"]]},
        "no_collections": {"ids": [r["name"] for r in records]},
    }


TILE_PARAMS = {"bands": "B04,B03,B02", "scaling": "display"}


def time_mosaic_tiles(url: str, search_id: str, tiles: list, pixel_selection: str) -> dict:
    """Time PNG mosaic tiles (one client, tile cache off); mean X-Mosaic-Images."""
    params = {**TILE_PARAMS, "pixel_selection": pixel_selection}

    def path(tile) -> str:
        return f"/searches/{search_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"

    samples, used, sizes = [], [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        # warm-up; the first tile of a search also looks up its product and zooms
        first_seconds, response = timed(lambda: client.get(path(tiles[0]), params=params))
        response.raise_for_status()
        for tile in tiles:
            seconds, response = timed(lambda t=tile: client.get(path(t), params=params))
            response.raise_for_status()
            samples.append(seconds)
            used.append(int(response.headers["X-Mosaic-Images"]))
            sizes.append(len(response.content))
    return {
        **percentiles(samples),
        "first_request_ms": round(first_seconds * 1000, 2),
        "x_mosaic_images_mean": round(statistics.mean(used), 2),
        "x_mosaic_images_max": max(used),
        "png_bytes_mean": round(statistics.mean(sizes)),
    }


def count_reads(catalog: Path, search_id: str, tiles: list, threads: int) -> dict:
    """In-process: images mosaic_tile (first) reads (counted at read_image), against
    what it reports as read (X-Mosaic-Images) and the images that gave pixels."""
    from tileserver.api.deps import render_params
    from tileserver.render import mosaic
    from tileserver.render.pipeline import ImageFormat, encode_image
    from tileserver.render.reader import Grid

    store = SQLiteStore(catalog)
    query = store.get_search(search_id).search
    product = store.get_product(MOSAIC_PRODUCT)
    params = asyncio.run(
        render_params(bands=TILE_PARAMS["bands"], scaling=[TILE_PARAMS["scaling"]])
    )
    original = mosaic.read_image
    calls: list[str] = []

    def counting(image, *args, **kwargs):
        calls.append(image.id)
        return original(image, *args, **kwargs)

    mosaic.read_image = counting
    reads, reported, gave = [], [], []
    try:
        for tile in tiles:
            images = store.tile_images(query, tuple(WEB_MERCATOR.bounds(tile)), LOOKUP)
            calls.clear()
            result = mosaic.mosaic_tile(
                [(image, product) for image in images],
                product,
                Grid.of_tile(WEB_MERCATOR, tile.x, tile.y, tile.z, 256),
                params,
                "first",
                threads,
            )
            encode_image(result, ImageFormat.png)
            reads.append(len(calls))
            reported.append(result.metadata["read"])
            gave.append(len(result.assets))
    finally:
        mosaic.read_image = original
        store.close()
    return {
        "threads": threads,
        "images_read_mean": round(statistics.mean(reads), 2),
        "x_mosaic_images_mean": round(statistics.mean(reported), 2),
        "images_with_pixels_mean": round(statistics.mean(gave), 2),
        "tiles_where_header_differs": sum(r != u for r, u in zip(reads, reported, strict=True)),
    }


# --------------------------------------------------------------------------- diagnosis


def search_sql(store: SQLiteStore, query: SearchQuery) -> tuple:
    """The page and COUNT statements store.search runs for `query`, and their parameters."""
    queryables, where, args = store._compiled(store._connection(), query)
    order = store._order(query, queryables)
    page = f"SELECT i.doc FROM images i WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
    count = f"SELECT count(*) FROM (SELECT 1 FROM images i WHERE {where} LIMIT ?) AS m"
    return page, [*args, query.limit + 1, 0], count, [*args, COUNT_LIMIT + 1]


def query_plan(db, sql: str, args: list) -> list[str]:
    """EXPLAIN QUERY PLAN, one line per step."""
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args)]


def plan_steps(plan: list[str]) -> str:
    """The table and index steps of a plan, for the table (`i` is images)."""
    steps = [line for line in plan if line.startswith(("SEARCH i", "SCAN i", "SCAN images"))]
    return "; ".join(steps)


@contextmanager
def counting_spatial(db) -> Iterator[list[int]]:
    """Count the calls of the Python `cql2_spatial` SQL function on this connection."""
    calls = [0]

    def spatial(*args):
        calls[0] += 1
        return cql2sql._sql_spatial(*args)

    db.create_function("cql2_spatial", 3, spatial, deterministic=True)
    try:
        yield calls
    finally:
        db.create_function("cql2_spatial", 3, cql2sql._sql_spatial, deterministic=True)


def split_search(store: SQLiteStore, bodies: list[dict]) -> dict:
    """Per query: store.search; the page SELECT and the bounded COUNT it runs, with the
    calls of cql2_spatial; its Python parts (compiling the filter and order, parsing)."""
    db = store._connection()
    queries = [SearchQuery.model_validate(body) for body in bodies]
    times: dict[str, list[float]] = {k: [] for k in ("page", "count", "search", "compile", "parse")}
    calls_n, matched = [], []
    page_sql, page_args, count_sql, count_args = search_sql(store, queries[0])
    plans = {
        "page": query_plan(db, page_sql, page_args),
        "count": query_plan(db, count_sql, count_args),
    }
    store.search(queries[0])  # warm-up
    for query in queries:
        seconds, (page_sql, page_args, count_sql, count_args) = timed(
            lambda q=query: search_sql(store, q)
        )
        times["compile"].append(seconds)
        with counting_spatial(db) as calls:
            seconds, rows = timed(lambda: db.execute(page_sql, page_args).fetchall())  # noqa: B023
            times["page"].append(seconds)
            seconds, (count,) = timed(lambda: db.execute(count_sql, count_args).fetchone())  # noqa: B023
            times["count"].append(seconds)
            matched.append(count if count <= COUNT_LIMIT else None)
            calls_n.append(calls[0])
        seconds, _ = timed(lambda r=rows: [Image.model_validate_json(doc) for (doc,) in r])
        times["parse"].append(seconds)
        times["search"].append(timed(lambda q=query: store.search(q))[0])
    pairs = zip(times["page"], times["count"], strict=True)
    return {
        "store_search": percentiles(times["search"]),
        "page_select": percentiles(times["page"]),
        "count": percentiles(times["count"]),
        "page_plus_count": percentiles([a + b for a, b in pairs]),
        "cql2_spatial_calls_mean": round(statistics.mean(calls_n), 1),
        "python_compile_where_order": percentiles(times["compile"]),
        "python_parse_page_docs": percentiles(times["parse"]),
        "numberMatched": spread(matched),
        "plans": plans,
    }


def collections_bbox(bodies: list[dict]) -> list[dict]:
    """collections=[sentinel-2-l2a] + the bbox of each body, nothing else (no datetime)."""
    return [{"collections": ["sentinel-2-l2a"], "bbox": b["bbox"], "limit": 10} for b in bodies]


def with_collections(bodies: list[dict]) -> list[dict]:
    """The bodies with collections=[sentinel-2-l2a] added (the usual STAC client search)."""
    return [{**body, "collections": ["sentinel-2-l2a"]} for body in bodies]


def time_tile_lookups_for(store: SQLiteStore, body: dict, tiles: list) -> dict:
    """store.tile_images for another registered-search body, with its plan."""
    query = SearchQuery.model_validate(body)
    db = store._connection()
    queryables, where, args = store._compiled(
        db,
        query,
        {
            "op": "s_intersects",
            "args": [{"property": "geometry"}, {"bbox": list(WEB_MERCATOR.bounds(tiles[0]))}],
        },
    )
    plan = query_plan(
        db,
        f"SELECT i.doc FROM images i WHERE {where} ORDER BY {store._order(query, queryables)}"
        " LIMIT ?",
        [*args, 31],
    )
    store.tile_images(query, tuple(WEB_MERCATOR.bounds(tiles[0])), LOOKUP)  # warm-up
    samples, found = [], []
    for tile in tiles:
        seconds, images = timed(
            lambda t=tile: store.tile_images(query, tuple(WEB_MERCATOR.bounds(t)), LOOKUP)
        )
        samples.append(seconds)
        found.append(len(images))
    return {"query": body, **percentiles(samples), "images_per_tile": spread(found), "plan": plan}


def time_calls(function: Callable[[], object], runs: int) -> dict:
    """p50/p95 of a call repeated `runs` times after one warm-up."""
    function()
    return percentiles([timed(function)[0] for _ in range(runs)])


def diagnose(path: Path, bodies_a: list, tiles: list, runs: int) -> dict:
    """The searches that were slow before the store kept statistics, put the spatial check
    last and bounded its COUNT, and the product lookup of a mosaic without collections."""
    from tileserver.layers import LayerCache, MosaicParams, SearchLayer
    from tileserver.settings import Settings

    result: dict = {}
    store = SQLiteStore(path)
    few = max(3, runs // 5)
    try:
        result["a_split"] = split_search(store, bodies_a)
        result["a_with_collections"] = split_search(store, with_collections(bodies_a))
        result["collections_bbox"] = split_search(store, collections_bbox(bodies_a))
        result["d_collections_only"] = time_tile_lookups_for(
            store, {"collections": ["sentinel-2-l2a"]}, tiles
        )
        platform = SearchQuery.model_validate({"filter": "platform = 'sentinel-2a'"})
        page_sql, page_args, count_sql, count_args = search_sql(store, platform)
        db = store._connection()
        result["property_filter_only"] = {
            "query": "platform = 'sentinel-2a' (no bbox, no datetime)",
            "store_search": time_calls(lambda: store.search(platform), few),
            "numberMatched": store.search(platform).matched,
            "store_search_count_false": time_calls(
                lambda: store.search(platform, count=False), few
            ),
            "page_plan": query_plan(db, page_sql, page_args),
            "count_plan": query_plan(db, count_sql, count_args),
        }
        # a value no image has: the page walks the whole catalog looking for 11 matches
        rare = SearchQuery.model_validate({"filter": "platform = 'sentinel-2c'"})
        result["property_filter_no_match"] = {
            "query": "platform = 'sentinel-2c' (no image has it)",
            "store_search": time_calls(lambda: store.search(rare), 3),
            "store_search_count_false": time_calls(lambda: store.search(rare, count=False), 3),
        }
        europe = SearchQuery.model_validate({"bbox": [-10, 35, 30, 60]})
        layers = LayerCache()
        search_id = store.register_search(europe).id

        def mosaic_product(cache: LayerCache):
            return SearchLayer(store, cache, search_id, MosaicParams(), Settings()).product

        result["mosaic_product_without_collections"] = {
            "search": europe.identity(),
            "what": "tileserver.layers.SearchLayer.product, called for every rendered tile",
            # a new cache each call: what the first tile of a search (per generation) pays
            "first_call": time_calls(lambda: mosaic_product(LayerCache()), few),
            "cached": time_calls(lambda: mosaic_product(layers), runs),
        }
    finally:
        store.close()
    return result


# --------------------------------------------------------------------------- runs


def run_search(path: Path, items: int, batch_size: int, runs: int, reuse: bool) -> dict:
    """Part 1: build (or reuse) the catalog, time queries (a)-(d), diagnostic searches."""
    out: dict = {}
    if reuse and count_images(path) == items:
        out["ingest"] = {"items": items, "reused": True, "db_bytes": catalog_bytes(path)}
    else:
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        out["ingest"] = build_catalog(path, items, batch_size)
    print("opening the catalog with and without statistics ...", file=sys.stderr)
    out["statistics"] = statistics_on_open(path)
    bodies_a = bbox_bodies(numpy.random.default_rng([SEED, 1]), runs)
    bodies_b = polygon_bodies(numpy.random.default_rng([SEED, 2]), runs)
    tiles = random_tiles(numpy.random.default_rng([SEED, 4]), runs)
    store = SQLiteStore(path)
    try:
        print("timing (a) (b) (d) in process ...", file=sys.stderr)
        queries: dict = {}
        stats, matched = time_store_searches(store, bodies_a)
        queries["a"] = {**stats, "numberMatched": spread(matched)}
        stats, matched = time_store_searches(store, bodies_b)
        queries["b"] = {**stats, "numberMatched": spread(matched)}
        stats, found = time_tile_lookups(store, tiles)
        queries["d"] = {**stats, "images_per_tile": spread(found), "query": TILE_QUERY}
    finally:
        store.close()
    print("timing (c) over HTTP ...", file=sys.stderr)
    with Server(path, path.parent) as server:
        stats, matched = time_http_searches(server.url, bodies_a)
        queries["c"] = {**stats, "numberMatched": spread(matched)}
        with httpx.Client(base_url=server.url) as client:
            queries["c_healthz_floor"] = time_calls(lambda: client.get("/healthz"), runs)
    out["queries"] = queries
    out["examples"] = {"a": bodies_a[0], "b": bodies_b[0], "d_tile": list(tiles[0])}
    print("diagnostic searches ...", file=sys.stderr)
    out["diagnosis"] = diagnose(path, bodies_a, tiles, runs)
    return out


def run_mosaic(folder: Path, runs: int, big_catalog: Path | None) -> dict:
    """Part 2: 10 overlapping COGs, searches over all / the newest, tile timings; then the
    same 10 images in the big catalog, searched with and without `collections`."""
    if folder.exists():
        shutil.rmtree(folder)
    print("writing 10 COGs ...", file=sys.stderr)
    seconds, records = timed(lambda: write_mosaic_images(folder / "cogs"))
    catalog = folder / "catalog.db"
    by_zoom = overlap_tiles(records)
    out: dict = {
        "cog_seconds": round(seconds, 1),
        "cog_bytes_each": records[0]["files"][0]["size"],
        "params": TILE_PARAMS,
        "cases": {},
    }
    cases = out["cases"]
    print("timing mosaic tiles ...", file=sys.stderr)
    with Server(catalog, folder, cache_max_bytes=0) as server:
        searches = register_mosaic(server.url, records, mosaic_searches(records))
        out["searches"] = searches

        def usable(tile: morecantile.Tile) -> bool:
            path = (
                f"/searches/{searches['newest']}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}"
            )
            return httpx.get(f"{server.url}{path}.png", params=TILE_PARAMS).status_code == 200

        tiles = pick_tiles(by_zoom, runs, usable)
        out["tiles"] = {z: sum(t.z == z for t in tiles) for z in (12, 13, 14)}
        out["tiles_in_overlap"] = {z: len(by_zoom[z]) for z in (12, 13, 14)}
        cases["single_first"] = time_mosaic_tiles(server.url, searches["newest"], tiles, "first")
        cases["mosaic10_first"] = time_mosaic_tiles(server.url, searches["all"], tiles, "first")
        cases["mosaic10_mean"] = time_mosaic_tiles(server.url, searches["all"], tiles, "mean")
    with Server(catalog, folder, cache_max_bytes=0, reader_threads=1) as server:
        cases["mosaic10_first_threads1"] = time_mosaic_tiles(
            server.url, searches["all"], tiles, "first"
        )
        cases["single_first_threads1"] = time_mosaic_tiles(
            server.url, searches["newest"], tiles, "first"
        )
    baseline = {
        "mosaic10_first": "single_first",
        "mosaic10_mean": "single_first",
        "mosaic10_first_threads1": "single_first_threads1",
    }
    if big_catalog is not None:
        print("timing mosaic tiles on the big catalog ...", file=sys.stderr)
        with Server(big_catalog, big_catalog.parent, cache_max_bytes=0) as server:
            try:
                big = register_mosaic(server.url, records, mosaic_searches(records))
                out["big_catalog_searches"] = big
                cases["big_mosaic10_first"] = time_mosaic_tiles(
                    server.url, big["all"], tiles, "first"
                )
                cases["big_no_collections_first"] = time_mosaic_tiles(
                    server.url, big["no_collections"], tiles, "first"
                )
            finally:  # leave the big catalog as it was
                httpx.delete(f"{server.url}/products/{MOSAIC_PRODUCT}", params={"cascade": "true"})
        baseline["big_mosaic10_first"] = "single_first"
        baseline["big_no_collections_first"] = "single_first"
    out["ratio_p50"] = {
        name: round(cases[name]["p50_ms"] / cases[base]["p50_ms"], 2)
        for name, base in baseline.items()
    }
    out["ratio_mean"] = {
        name: round(cases[name]["mean_ms"] / cases[base]["mean_ms"], 2)
        for name, base in baseline.items()
    }
    out["reads_in_process"] = [
        count_reads(catalog, searches["all"], tiles, threads) for threads in (4, 1)
    ]
    return out


# ------------------------------------------------------------------ low zooms (issue 21)

LOW_ZOOM_PRODUCT = "bench-lowzoom"
LOW_ZOOM_AREA = 600_000.0  # metres: scenes spread over a country-sized square (UTM 33N)
LOW_ZOOM_SCENE = (640, 60.0)  # pixels, metres per pixel: 38 km scenes without overviews
LOW_ZOOM_TILES = 40  # most tiles timed per zoom (all of them where fewer)
LOW_ZOOM_CLIENTS = 4
AIM_LOW_ZOOM_P95_MS = 1000.0


def write_low_zoom_scenes(folder: Path, count: int) -> None:
    """`count` one-band UInt16 GeoTIFFs without overviews, 8-pixel nodata frames, at random
    places and hours over LOW_ZOOM_AREA (the import reads the time from the name)."""
    rng = numpy.random.default_rng(SEED)
    size, pixel = LOW_ZOOM_SCENE
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = numpy.mgrid[0:size, 0:size]
    for i in range(count):
        west = 200_000.0 + rng.uniform(0, LOW_ZOOM_AREA - size * pixel)
        north = 5_900_000.0 - rng.uniform(0, LOW_ZOOM_AREA - size * pixel)
        data = (500 + 3 * i + rows // 4 + cols // 8).astype("uint16")
        data[:8], data[-8:], data[:, :8], data[:, -8:] = 0, 0, 0, 0
        when = EPOCH + timedelta(hours=int(rng.integers(0, 24 * 365)))
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "nodata": 0}
        profile.update(dtype="uint16", crs="EPSG:32633", tiled=True, compress="DEFLATE")
        profile["transform"] = from_origin(west, north, pixel, pixel)
        with rasterio.open(folder / f"s{i:04d}_{when:%Y%m%dT%H%M%S}.tif", "w", **profile) as dst:
            dst.write(data[None])


def time_low_zoom(url: str, search_id: str, tiles: list[morecantile.Tile]) -> dict:
    """Tiles of one zoom from LOW_ZOOM_CLIENTS clients at once: latency, statuses, images."""
    from concurrent.futures import ThreadPoolExecutor

    def one(tile: morecantile.Tile) -> tuple[float, int, int]:
        path = f"/searches/{search_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
        with httpx.Client(base_url=url, timeout=120) as client:
            seconds, response = timed(lambda: client.get(path, params={"scaling": "0,2000"}))
        return seconds, response.status_code, int(response.headers.get("X-Mosaic-Images", 0))

    with ThreadPoolExecutor(LOW_ZOOM_CLIENTS) as pool:
        results = list(pool.map(one, tiles))
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    images = [n for _, status, n in results if status == 200]
    return {
        **percentiles([s for s, _, _ in results]),
        "tiles": len(tiles),
        "statuses": statuses,
        "x_mosaic_images_mean": round(statistics.mean(images), 1) if images else 0,
        "x_mosaic_images_max": max(images, default=0),
    }


def run_low_zoom(folder: Path, count: int) -> dict:
    """`count` overlapping scenes without overviews: import (reduced copies included), then
    every zoom from 0 to the scenes' maximum, cold tiles, 4 clients."""
    from tileserver.ingest.imports import ImportRequest, run_import
    from tileserver.opener import Confinement, confined, reading

    if folder.exists():
        shutil.rmtree(folder)
    print(f"writing {count} scenes ...", file=sys.stderr)
    write_low_zoom_scenes(folder / "in", count)
    catalog = folder / "catalog.db"
    store = SQLiteStore(catalog)
    confinement = Confinement(data_dir=folder)
    request = ImportRequest(
        cloud_provider="file", bucket_name=str(folder / "in"), product=LOW_ZOOM_PRODUCT
    )
    print("importing (with reduced copies) ...", file=sys.stderr)
    with confined(confinement), reading(confinement.operator()):
        seconds, result = timed(lambda: run_import(store, request, folder, confinement=confinement))
    store.close()
    reduced = list((folder / "cogs" / LOW_ZOOM_PRODUCT / "reduced").glob("*.tif"))
    source_bytes = sum(p.stat().st_size for p in (folder / "in").glob("*.tif"))
    out: dict = {
        "scenes": count,
        "imported": len(result.features),
        "import_seconds_per_100": round(seconds / count * 100, 1),
        "reduced_copies": len(reduced),
        "reduced_bytes_per_100": round(sum(p.stat().st_size for p in reduced) / count * 100),
        "source_bytes_per_100": round(source_bytes / count * 100),
        "zooms": {},
    }
    settings = {"cache_max_bytes": 0, "mosaic_minzoom": 0, "open_datasets": 0}
    body = {"collections": [LOW_ZOOM_PRODUCT]}
    rng = numpy.random.default_rng(SEED)
    # cold tiles: tile cache off, no file kept open between requests, each tile asked once;
    # one server process for all zooms, started and asked for its TileJSON first
    with Server(catalog, folder, **settings) as server:
        search_id = httpx.post(f"{server.url}/searches", json=body).json()["id"]
        started, tilejson = timed(
            lambda: httpx.get(f"{server.url}/searches/{search_id}/tilejson.json").json()
        )
        out["tilejson_first_request_ms"] = round(started * 1000, 1)
        out["tilejson_zooms"] = [tilejson["minzoom"], tilejson["maxzoom"]]
        for z in range(tilejson["minzoom"], tilejson["maxzoom"] + 1):
            tiles = list(WEB_MERCATOR.tiles(*tilejson["bounds"], [z]))
            if len(tiles) > LOW_ZOOM_TILES:
                tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), LOW_ZOOM_TILES, False))]
            print(f"z{z}: {len(tiles)} tiles ...", file=sys.stderr)
            out["zooms"][z] = time_low_zoom(server.url, search_id, tiles)
    p95 = [row["p95_ms"] for row in out["zooms"].values()]
    out["worst_p95_ms"] = max(p95)
    out["aim_p95_ms"] = AIM_LOW_ZOOM_P95_MS
    out["meets_aim"] = max(p95) <= AIM_LOW_ZOOM_P95_MS
    return out


def run_single_image(folder: Path, size: int) -> dict:
    """One `size` x `size` UInt16 GeoTIFF without overviews: import (its reduced copy), then
    cold tiles (no file kept open) at every zoom 0..max, in process, one client."""
    from tileserver.ingest.imports import ImportRequest, run_import
    from tileserver.layers import ImageLayer
    from tileserver.opener import DATASETS, Confinement, confined, reading
    from tileserver.render.pipeline import RenderParams
    from tileserver.render.reader import zoom_range

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "in").mkdir(parents=True)
    path = folder / "in" / "big_20240101T100000.tif"
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "nodata": 0}
    profile.update(dtype="uint16", crs="EPSG:32633", tiled=True, compress="DEFLATE")
    profile["transform"] = from_origin(400_000.0, 5_900_000.0, 10.0, 10.0)
    print(f"writing a {size} px image ...", file=sys.stderr)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 1024):
            rows, cols = numpy.mgrid[row : min(size, row + 1024), 0:size]
            data = (1 + (rows // 7 + cols // 5) % 4000).astype("uint16")
            dst.write(data[None], window=rasterio.windows.Window(0, row, size, rows.shape[0]))
    store = SQLiteStore(folder / "catalog.db")
    confinement = Confinement(data_dir=folder)
    request = ImportRequest(cloud_provider="file", bucket_name=str(folder / "in"), product="big")
    out: dict = {"size": size, "source_bytes": path.stat().st_size, "zooms": {}}
    with confined(confinement), reading(confinement.operator("big")):
        seconds, _ = timed(lambda: run_import(store, request, folder, confinement=confinement))
        out["import_seconds"] = round(seconds, 1)
        reduced = list((folder / "cogs" / "big" / "reduced").glob("*.tif"))
        out["reduced_bytes"] = sum(p.stat().st_size for p in reduced)
        image = store.list_images("big").images[0]
        product = store.get_product("big")
        maxzoom = zoom_range(image, WEB_MERCATOR)[1]
        rng = numpy.random.default_rng(SEED)
        params = RenderParams()
        for z in range(maxzoom + 1):
            tiles = list(WEB_MERCATOR.tiles(*image.bbox, [z]))
            if len(tiles) > 20:
                tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), 20, False))]
            samples = []
            for tile in tiles:
                DATASETS.clear()

                def render(t=tile, z=z):
                    return ImageLayer(image, product).tile(WEB_MERCATOR, t.x, t.y, z, 256, params)

                seconds, _ = timed(render)
                samples.append(seconds)
            out["zooms"][z] = {**percentiles(samples), "tiles": len(tiles)}
    store.close()
    out["worst_p95_ms"] = max(row["p95_ms"] for row in out["zooms"].values())
    return out


def print_low_zoom(results: dict) -> None:
    """The low-zoom table."""
    print(
        f"low zooms: {results['scenes']} scenes; import {results['import_seconds_per_100']} s "
        f"per 100 scenes; reduced copies {results['reduced_bytes_per_100'] / 1e6:.1f} MB per 100 "
        f"(sources {results['source_bytes_per_100'] / 1e6:.1f} MB)"
    )
    print(
        f"{'zoom':>5} {'tiles':>6} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'images':>7}  status"
    )
    for z, row in results["zooms"].items():
        print(
            f"{z:>5} {row['tiles']:>6} {row['p50_ms']:>9} {row['p95_ms']:>9} {row['max_ms']:>9} "
            f"{row['x_mosaic_images_mean']:>7}  {row['statuses']}"
        )


def machine() -> dict:
    """What ran the benchmark."""
    import sqlite3

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
    }


def fmt_row(label: str, stats: dict, extra: str = "") -> str:
    """One table line."""
    return f"{label:<58} {stats['n']:>4} {stats['p50_ms']:>9.2f} {stats['p95_ms']:>9.2f}  {extra}"


def print_table(results: dict) -> None:
    """The results as a plain-text table."""
    head = f"{'':<58} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}  notes"
    lines = []
    if "queries" in results:
        ingest, opened = results["ingest"], results["statistics"]
        lines.append(f"catalog: {ingest['items']:,} items, {ingest['db_bytes'] / 2**30:.2f} GiB")
        if not ingest.get("reused"):
            lines.append(
                f"ingest: {ingest['items_per_s_put_images']:,} items/s in put_images"
                f" ({ingest['batch_size']:,} per call), {ingest['items_per_s_total']:,} items/s"
                f" with generation; {ingest['seconds_total']} s in all; ANALYZE ran"
                f" {len(ingest['analyze_runs'])} times in put_images, {ingest['seconds_analyze']} s"
            )
        lines.append(
            f"open: {opened['open_with_statistics_ms']} ms with statistics,"
            f" {opened['open_without_statistics_s']} s without (runs ANALYZE)"
        )
        q, d = results["queries"], results["diagnosis"]
        lines += ["", head]

        def matched(stats: dict) -> str:
            return f"numberMatched median {stats['numberMatched'].get('median')}"

        lines.append(
            fmt_row(
                "(a) store.search bbox 2x2 + month + cloud<20, limit 10", q["a"], matched(q["a"])
            )
        )
        lines.append(
            fmt_row("(b) store.search S_INTERSECTS(small 7-gon), limit 10", q["b"], matched(q["b"]))
        )
        lines.append(fmt_row("(c) POST /stac/search, as (a), over HTTP", q["c"], matched(q["c"])))
        lines.append(fmt_row("    GET /healthz (HTTP floor)", q["c_healthz_floor"]))
        lines.append(
            fmt_row(
                "(d) store.tile_images z8-10, collections + 1 year, 31",
                q["d"],
                f"images/tile median {q['d']['images_per_tile']['median']}",
            )
        )
        a = d["a_split"]
        lines += ["", "diagnostic searches"]
        lines.append(fmt_row("  (a) page SELECT alone", a["page_select"]))
        lines.append(
            fmt_row(
                "  (a) bounded COUNT alone",
                a["count"],
                f"cql2_spatial calls/search {a['cql2_spatial_calls_mean']}",
            )
        )
        lines.append(
            fmt_row("  (a) Python: compile filter + order", a["python_compile_where_order"])
        )
        lines.append(
            fmt_row("  (a) Python: parse the page's documents", a["python_parse_page_docs"])
        )
        c = d["a_with_collections"]
        lines.append(
            fmt_row(
                "  (a) + collections: store.search",
                c["store_search"],
                plan_steps(c["plans"]["page"]),
            )
        )
        c = d["collections_bbox"]
        lines.append(
            fmt_row(
                "  collections + bbox 2x2 (no datetime): store.search",
                c["store_search"],
                f"{matched(c)}; plan: {plan_steps(c['plans']['count'])}",
            )
        )
        lines.append(fmt_row("      its page SELECT alone", c["page_select"]))
        lines.append(fmt_row("      its bounded COUNT alone", c["count"]))
        c = d["d_collections_only"]
        lines.append(
            fmt_row(
                "  (d) tile_images, registered search = collections only",
                c,
                f"images/tile median {c['images_per_tile']['median']};"
                f" plan: {plan_steps(c['plan'])}",
            )
        )
        p = d["property_filter_only"]
        lines.append(
            fmt_row(
                "  platform='sentinel-2a' only: store.search",
                p["store_search"],
                f"numberMatched {p['numberMatched']}; COUNT plan: {plan_steps(p['count_plan'])}",
            )
        )
        lines.append(fmt_row("      the same, count=False", p["store_search_count_false"]))
        p = d["property_filter_no_match"]
        lines.append(
            fmt_row("  platform='sentinel-2c' (no match): store.search", p["store_search"])
        )
        lines.append(fmt_row("      the same, count=False", p["store_search_count_false"]))
        m = d["mosaic_product_without_collections"]
        lines.append(
            fmt_row("  mosaic_product(), bbox Europe, no collections: 1st", m["first_call"])
        )
        lines.append(fmt_row("      later calls (cached per search, generation)", m["cached"]))
    if "mosaic" in results:
        mosaic = results["mosaic"]
        lines += [
            "",
            f"mosaic tiles: PNG {mosaic['params']}, tiles per zoom {mosaic['tiles']}, cache off",
            head,
        ]
        for name, case in mosaic["cases"].items():
            note = f"X-Mosaic-Images mean {case['x_mosaic_images_mean']}"
            if name in mosaic["ratio_p50"]:
                note += f", p50 x{mosaic['ratio_p50'][name]} (mean x{mosaic['ratio_mean'][name]})"
            note += f", 1st request {case['first_request_ms']} ms"
            lines.append(fmt_row(f"  {name}", case, note))
        for reads in mosaic["reads_in_process"]:
            lines.append(
                f"  first, reader_threads={reads['threads']}: images read per tile"
                f" {reads['images_read_mean']}, X-Mosaic-Images {reads['x_mosaic_images_mean']},"
                f" gave pixels {reads['images_with_pixels_mean']}"
            )
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size")
    parser.add_argument("--out", help="folder for the catalog and COGs (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per query / case")
    parser.add_argument("--batch", type=int, default=10_000, help="images per put_images call")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument(
        "--reuse", action="store_true", help="keep a catalog in --out that has --items images"
    )
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-mosaic", action="store_true")
    parser.add_argument(
        "--single-image",
        type=int,
        metavar="SIZE",
        help="the low-zoom mode's single image: SIZE x SIZE without overviews, every zoom",
    )
    parser.add_argument(
        "--low-zoom",
        type=int,
        metavar="SCENES",
        help="only the low-zoom mode: SCENES overlapping scenes, every zoom (issue 21)",
    )
    args = parser.parse_args(argv)
    if args.low_zoom or args.single_image:
        folder = Path(args.out or tempfile.mkdtemp(prefix="tileserver-bench-"))
        results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
        try:
            if args.low_zoom:
                results["low_zoom"] = run_low_zoom(folder / "lowzoom", args.low_zoom)
            if args.single_image:
                single = run_single_image(folder / "single", args.single_image)
                results["single_image"] = single
        finally:
            if args.out is None:
                shutil.rmtree(folder, ignore_errors=True)
        if "low_zoom" in results:
            print_low_zoom(results["low_zoom"])
        if "single_image" in results:
            print(json.dumps(results["single_image"], indent=1))
        target = Path(args.json).with_name("search_mosaic_lowzoom.json")
        target.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results in {target}")
        return
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="tileserver-bench-") if temporary else args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "params": {"items": args.items, "runs": args.runs, "batch": args.batch, "seed": SEED},
    }
    try:
        if not args.skip_search:
            results.update(
                run_search(out / "catalog.db", args.items, args.batch, args.runs, args.reuse)
            )
        if not args.skip_mosaic:
            big = None if args.skip_search else out / "catalog.db"
            results["mosaic"] = run_mosaic(out / "mosaic", args.runs, big)
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n{results['seconds']} s; results in {args.json}")


if __name__ == "__main__":
    main()
