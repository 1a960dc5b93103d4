"""Benchmark: tileserver against titiler 2.4.0, same COGs, same GDAL settings, same run.

    python bench/vs_titiler.py [--workers 1] [--tiles 100] [--soak 20000] [--out DIR] [--keep]
    python bench/vs_titiler.py --quick        # 10 tiles per zoom, no soak: a smoke run

titiler.application 2.4.0 runs from its own virtual environment (`<out>/titiler-venv`,
created and installed on first use; `--titiler-venv` points at another one), tileserver
from this checkout (`tileserver serve`). Both get the same worker count and the same GDAL
environment (titiler's documented performance settings, GDAL_ENV below).

Data, written once into `--out` and reused: one 4096 x 4096 4-band UInt16 COG (EPSG:32633,
10 m, sinusoid fields plus noise) and 10 overlapping 2048 x 2048 scenes of the same kind
(each 300 m E / 250 m S of the previous, nodata 0 along a 64 px edge that differs per
scene) for mosaics: a tileserver search over the product (newest first) against a
MosaicJSON built by cogeo-mosaic in titiler's environment (newest first too), both with
pixel_selection=first. Rendering: bands 3,2,1 linearly scaled 0..6000 to bytes.

Before timing, a few tiles per format are fetched from both servers and the decoded pixels
compared (share identical, largest difference). Then each server is started once per
configuration and runs its cases back to back, after a 20-tile warm-up: titiler;
tileserver with its tile cache off ("uncached"); tileserver with its default cache
("cached"). The client is this process: 1 or 4 threads, each with one keep-alive
connection, splitting a seeded list of random tiles (z10, z12, z14, centre inside the image;
`--tiles` per zoom). Per format (png, jpeg, webp) and client count:

- cold: the list's first pass on titiler against tileserver uncached;
- warm: the same list again on titiler against tileserver cached (after one untimed pass
  that fills its cache): what a repeated tile costs;
- mosaic (png): z12-z14 tiles inside the overlap of the 10 scenes, titiler's
  /mosaicjson against tileserver uncached; also tileserver's mosaic p50 over its
  single-image PNG p50.

Tiles/s is requests over the wall time of a pass. Peak RSS is the summed VmHWM of the
server's process tree at the end of its cases. The soak (`--soak` PNG requests, 4 clients,
tileserver uncached, random z10-z14 tiles) samples the tree's VmRSS every 1000 requests.
Targets are reported MET / NOT MET; only errors fail the run. Results: a table on stdout
and JSON (default bench/vs_titiler.json). With `--workers` above 1 titiler loses
TCP_NODELAY (WORKERS_NOTE): its small responses then wait ~40 ms for delayed ACKs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:  # run as `python bench/vs_titiler.py` from anywhere
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
import morecantile  # noqa: E402
import rasterio  # noqa: E402
import rasterio.shutil  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform  # noqa: E402
from search_mosaic import free_port, machine, percentiles  # noqa: E402

TITILER_VERSION = "2.4.0"
GDAL_ENV = {  # titiler's performance-tuning settings, given to both servers
    "GDAL_CACHEMAX": "200",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "5000000",
}
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
SEED = 20250301
CRS = "EPSG:32633"
PIXEL = 10.0
ORIGIN = (500_000.0, 5_800_000.0)
SINGLE_SIZE = 4096
SCENE_SIZE = 2048
SCENES = 10
SHIFT = (300.0, -250.0)  # metres from one scene to the next
BORDER = 64  # nodata pixels along one edge of each scene
EDGES = ("left", "top", "right", "bottom")  # scene i: EDGES[i % 4]; the newest: top
FIRST_DATE = datetime(2024, 5, 1, 10, tzinfo=UTC)
SINGLE_PRODUCT = "bench-single"
MOSAIC_PRODUCT = "bench-mosaic"
FORMATS = ("png", "jpeg", "webp")
CLIENTS = (1, 4)
SINGLE_ZOOMS = (10, 12, 14)
MOSAIC_ZOOMS = (12, 13, 14)
WARMUP_ZOOMS = (11, 13)  # single-image warm-up tiles: zooms no timed list uses
MOSAIC_WARMUP_ZOOM = 15
MOSAIC_JSON_ZOOMS = (12, 15)  # minzoom (= quadkey zoom) and maxzoom of the MosaicJSON
WARMUP = 20
SOAK_STEP = 1000
SOAK_WARMUP = 2000
AIM_UNCACHED_RATIO = 1.5
AIM_WARM_RATIO = 10.0
AIM_MOSAIC_RATIO = 2.0
AIM_SOAK_GROWTH = 0.10
TILESERVER_RENDER = {"bands": "b3,b2,b1", "scaling": "0,6000"}
TITILER_RENDER = [("bidx", "3"), ("bidx", "2"), ("bidx", "1"), ("rescale", "0,6000")]
TITILER_ROUTES = (  # checked against titiler's OpenAPI document before timing
    "/cog/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    "/mosaicjson/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
)
WORKERS_NOTE = (
    "uvicorn --workers N (N > 1) leaves TCP_NODELAY off on accepted connections "
    "(Kludex/uvicorn#3149): titiler's small responses on keep-alive connections wait ~40 ms "
    "for the client's delayed ACK; `tileserver serve` sets TCP_NODELAY itself "
    "(tileserver/server.py)"
)


# --------------------------------------------------------------------------- data


def pixels(size: int, seed: int) -> numpy.ndarray:
    """(4, size, size) UInt16: smooth sinusoid fields plus gaussian noise, in 1..6500."""
    rng = numpy.random.default_rng(seed)
    y, x = numpy.mgrid[0:size, 0:size].astype("float32") / size
    bands = []
    for b in range(4):
        f = 2500 + 1200 * numpy.sin(2 * numpy.pi * (3 + b) * x + rng.uniform(0, 6)) * numpy.cos(
            2 * numpy.pi * (2 + b) * y
        )
        f += rng.normal(0, 150, (size, size)).astype("float32")
        bands.append(numpy.clip(f, 1, 6500).astype("uint16"))
    return numpy.stack(bands)


def write_cog(path: Path, data: numpy.ndarray, origin: tuple[float, float], nodata=None) -> None:
    """A tiled deflate GeoTIFF copied to a COG; renamed into place last, so a file that
    exists is complete and can be reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plain, partial = path.with_suffix(".plain.tif"), path.with_suffix(".partial.tif")
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": CRS,
        "transform": from_origin(*origin, PIXEL, PIXEL),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data)
    rasterio.shutil.copy(
        plain,
        partial,
        driver="COG",
        compress="DEFLATE",
        blocksize=512,
        overview_resampling="average",
    )
    plain.unlink()
    partial.rename(path)


def scene_origin(index: int) -> tuple[float, float]:
    """Upper-left corner of mosaic scene `index` (0 oldest)."""
    return ORIGIN[0] + index * SHIFT[0], ORIGIN[1] + index * SHIFT[1]


def scene_pixels(index: int) -> numpy.ndarray:
    """A scene's pixels with a nodata (0) border along EDGES[index % 4], so `first` has
    to read an older scene where the newer one is empty."""
    data = pixels(SCENE_SIZE, SEED + 1 + index)
    edge = EDGES[index % len(EDGES)]
    cut = {
        "left": numpy.s_[:, :, :BORDER],
        "top": numpy.s_[:, :BORDER, :],
        "right": numpy.s_[:, :, -BORDER:],
        "bottom": numpy.s_[:, -BORDER:, :],
    }[edge]
    data[cut] = 0
    return data


def make_data(out: Path) -> dict:
    """Write the COGs that are not there yet; their paths (scenes oldest first)."""
    single = out / "single" / "single.tif"
    scenes = [out / "mosaic" / f"S{i:02d}.tif" for i in range(SCENES)]
    started = time.perf_counter()
    if not single.exists():
        print("writing single/single.tif ...", file=sys.stderr)
        write_cog(single, pixels(SINGLE_SIZE, SEED), ORIGIN)
    for index, path in enumerate(scenes):
        if not path.exists():
            print(f"writing {path.relative_to(out)} ...", file=sys.stderr)
            write_cog(path, scene_pixels(index), scene_origin(index), nodata=0)
    return {
        "single": single,
        "scenes": scenes,
        "seconds": round(time.perf_counter() - started, 1),
        "bytes_single": single.stat().st_size,
        "bytes_scene": scenes[0].stat().st_size,
    }


def single_rect() -> tuple[float, float, float, float]:
    """The single image's bounds in EPSG:32633."""
    span = SINGLE_SIZE * PIXEL
    return ORIGIN[0], ORIGIN[1] - span, ORIGIN[0] + span, ORIGIN[1]


def overlap_rect() -> tuple[float, float, float, float]:
    """The rectangle (EPSG:32633) every one of the 10 scenes covers."""
    span = SCENE_SIZE * PIXEL
    first, last = scene_origin(0), scene_origin(SCENES - 1)
    return last[0], first[1] - span, first[0] + span, last[1]


# --------------------------------------------------------------------------- tiles


def tiles_in(rect: tuple, zoom: int, whole: bool) -> list[morecantile.Tile]:
    """Tiles at `zoom` whose centre (whole=False) or all four corners (whole=True) lie
    in an EPSG:32633 rectangle."""
    xs, ys = transform(CRS, "EPSG:4326", [rect[0], rect[2]], [rect[1], rect[3]])
    pad = 0.05  # degrees: the UTM rectangle is not a lon/lat one
    candidates = list(
        WEB_MERCATOR.tiles(xs[0] - pad, ys[0] - pad, xs[1] + pad, ys[1] + pad, zooms=[zoom])
    )
    points_x, points_y = [], []
    for tile in candidates:
        b = WEB_MERCATOR.xy_bounds(tile)
        if whole:
            points_x += [b.left, b.right, b.left, b.right]
            points_y += [b.bottom, b.bottom, b.top, b.top]
        else:
            points_x.append((b.left + b.right) / 2)
            points_y.append((b.bottom + b.top) / 2)
    ux, uy = transform("EPSG:3857", CRS, points_x, points_y)
    inside = (
        (numpy.asarray(ux) > rect[0])
        & (numpy.asarray(ux) < rect[2])
        & (numpy.asarray(uy) > rect[1])
        & (numpy.asarray(uy) < rect[3])
    )
    if whole:
        inside = inside.reshape(-1, 4).all(axis=1)
    return [tile for tile, keep in zip(candidates, inside, strict=True) if keep]


def sample(rng: numpy.random.Generator, pool: list, count: int) -> list:
    """`count` picks from `pool`; with replacement only when the pool is smaller (z10)."""
    picks = rng.choice(len(pool), size=count, replace=len(pool) < count)
    return [pool[i] for i in picks]


def tile_list(rng: numpy.random.Generator, pools: dict[int, list], per_zoom: int) -> list:
    """`per_zoom` tiles of each zoom, shuffled so every client gets a mix of zooms."""
    tiles = [t for zoom in sorted(pools) for t in sample(rng, pools[zoom], per_zoom)]
    return [tiles[i] for i in rng.permutation(len(tiles))]


@dataclass
class TileLists:
    """Every tile list of the run, fixed before any server starts."""

    single: dict[tuple[str, int], list]  # (format, clients) -> tiles
    mosaic: dict[int, list]  # clients -> tiles
    warmup_single: list
    warmup_mosaic: list
    soak: list
    sanity_single: list
    sanity_mosaic: list
    pool_sizes: dict


def make_tile_lists(per_zoom: int) -> TileLists:
    """Seeded tile lists: one per (format, clients), mosaic lists, warm-up, soak, sanity."""
    image = {z: tiles_in(single_rect(), z, whole=False) for z in range(10, 15)}
    overlap = {z: tiles_in(overlap_rect(), z, whole=True) for z in (*MOSAIC_ZOOMS, 15)}
    single = {
        (fmt, clients): tile_list(
            numpy.random.default_rng([SEED, FORMATS.index(fmt), clients]),
            {z: image[z] for z in SINGLE_ZOOMS},
            per_zoom,
        )
        for fmt in FORMATS
        for clients in CLIENTS
    }
    mosaic = {
        clients: tile_list(
            numpy.random.default_rng([SEED, 10, clients]),
            {z: overlap[z] for z in MOSAIC_ZOOMS},
            per_zoom,
        )
        for clients in CLIENTS
    }
    rng = numpy.random.default_rng([SEED, 20])
    warmup_single = sample(rng, image[WARMUP_ZOOMS[0]] + image[WARMUP_ZOOMS[1]], WARMUP - 5)
    warmup_mosaic = sample(rng, overlap[MOSAIC_WARMUP_ZOOM], 5)
    soak = [t for z in range(10, 15) for t in image[z]]
    soak = [soak[i] for i in rng.permutation(len(soak))]
    sanity_single = [t for z in SINGLE_ZOOMS for t in sample(rng, image[z], 2)]
    # two tiles on the newest scene's nodata border (its top edge): two scenes paint them
    top = overlap_rect()[3] - BORDER * PIXEL
    border = [t for z in (14, 15) for t in overlap[z] if corner_north(t) > top]
    sanity_mosaic = [t for z in MOSAIC_ZOOMS for t in sample(rng, overlap[z], 1)]
    sanity_mosaic += sample(rng, border, 2)
    return TileLists(
        single,
        mosaic,
        warmup_single,
        warmup_mosaic,
        soak,
        sanity_single,
        sanity_mosaic,
        pool_sizes={
            "image_centre_inside": {z: len(image[z]) for z in image},
            "mosaic_overlap_whole": {z: len(overlap[z]) for z in overlap},
            "mosaic_newest_border_z14_z15": len(border),
        },
    )


def corner_north(tile: morecantile.Tile) -> float:
    """The northmost UTM northing of a tile's corners."""
    b = WEB_MERCATOR.xy_bounds(tile)
    _, ys = transform("EPSG:3857", CRS, [b.left, b.right], [b.top, b.top])
    return max(ys)


def distinct(tiles: list) -> int:
    """How many different tiles a list holds (z10 repeats: few tiles lie in the image)."""
    return len({tuple(t) for t in tiles})


# --------------------------------------------------------------------------- URLs


@dataclass
class TileserverPaths:
    """Request paths of tileserver (single image by id, mosaic by registered search)."""

    image_id: str
    search_id: str = ""

    def single(self, tile: morecantile.Tile, fmt: str) -> str:
        image = quote(self.image_id, safe=":")
        query = urlencode(TILESERVER_RENDER)
        return f"/images/{image}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.{fmt}?{query}"

    def mosaic(self, tile: morecantile.Tile) -> str:
        query = urlencode({**TILESERVER_RENDER, "pixel_selection": "first"})
        path = f"/searches/{self.search_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}"
        return f"{path}.png?{query}"


@dataclass
class TitilerPaths:
    """Request paths of titiler (/cog with the file path, /mosaicjson with the JSON's)."""

    cog: Path
    mosaic_json: Path

    def single(self, tile: morecantile.Tile, fmt: str) -> str:
        query = urlencode([("url", str(self.cog)), *TITILER_RENDER])
        return f"/cog/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.{fmt}?{query}"

    def mosaic(self, tile: morecantile.Tile) -> str:
        query = urlencode(
            [("url", str(self.mosaic_json)), *TITILER_RENDER, ("pixel_selection", "first")]
        )
        return f"/mosaicjson/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?{query}"


# --------------------------------------------------------------------------- environments


def installed(python: Path, packages: list[str]) -> dict:
    """Versions of packages (and GDAL) in another Python environment; None if missing."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "try:\n"
        "    import rasterio; out['gdal'] = rasterio.__gdal_version__\n"
        "except ImportError: pass\n"
        "print(json.dumps(out))\n"
    )
    if not python.exists():
        return dict.fromkeys(packages)
    result = subprocess.run(
        [str(python), "-c", code, *packages], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def ensure_titiler(venv: Path) -> Path:
    """The venv's python, with titiler.application TITILER_VERSION installed if it is not.

    Its own venv: titiler pins its own rio-tiler, apart from tileserver's.
    """
    python = venv / "bin" / "python"
    if installed(python, ["titiler.application"])["titiler.application"] == TITILER_VERSION:
        return python
    print(f"installing titiler.application=={TITILER_VERSION} in {venv} ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet"]
        + [f"titiler.application=={TITILER_VERSION}", "uvicorn"],
        check=True,
    )
    found = installed(python, ["titiler.application"])["titiler.application"]
    if found != TITILER_VERSION:
        raise RuntimeError(f"{venv} has titiler.application {found}, not {TITILER_VERSION}")
    return python


def tileserver_command() -> list[str]:
    """The `tileserver` console script of this Python (the package has no __main__)."""
    script = Path(sys.executable).parent / "tileserver"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tileserver.cli import cli; cli()"]


def tileserver_env(out: Path, cached: bool) -> dict:
    """This environment without inherited TILESERVER_* settings, plus GDAL_ENV and the
    bench's data folder (and no tile cache for the uncached server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILESERVER_")}
    env.update(GDAL_ENV, TILESERVER_DATA_DIR=str(out / "data"))
    if not cached:
        env["TILESERVER_CACHE_MAX_BYTES"] = "0"
    return env


def catalog_url(out: Path) -> str:
    """The bench's own SQLite catalog."""
    return f"sqlite:///{out / 'catalog.db'}"


def image_count(url: str, product_id: str) -> int:
    """Images the product has in the catalog (0 if the product is missing)."""
    from tileserver.catalog.store import open_store

    store = open_store(url)
    try:
        return store.count_images(product_id)
    except Exception:  # a missing product: nothing ingested yet
        return 0
    finally:
        store.close()


def ingest(out: Path, data: dict) -> dict:
    """Register the COGs with `tileserver ingest` unless the catalog has them already."""
    url, env = catalog_url(out), tileserver_env(out, cached=False)
    jobs = []
    if image_count(url, SINGLE_PRODUCT) != 1:
        jobs.append((data["single"].parent, SINGLE_PRODUCT, FIRST_DATE))
    if image_count(url, MOSAIC_PRODUCT) != SCENES:
        for index, path in enumerate(data["scenes"]):
            jobs.append((path, MOSAIC_PRODUCT, FIRST_DATE + timedelta(days=5 * index)))
    started = time.perf_counter()
    for path, product, when in jobs:  # one file at a time: each its own --datetime
        command = tileserver_command() + ["ingest", str(path), "--product", product]
        command += ["--datetime", f"{when:%Y-%m-%dT%H:%M:%SZ}", "--catalog", url, "--quiet"]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0 or json.loads(result.stdout or "{}").get("registered") != 1:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stdout}{result.stderr}")
    return {"ingested": len(jobs), "seconds": round(time.perf_counter() - started, 1)}


def single_image_id(url: str) -> str:
    """The id the catalog gave the single image."""
    from tileserver.catalog.store import open_store

    store = open_store(url)
    try:
        return store.list_images(SINGLE_PRODUCT, limit=1).images[0].id
    finally:
        store.close()


MOSAIC_JSON_CODE = """
import json, sys
from cogeo_mosaic.mosaic import MosaicJSON
paths, minzoom, maxzoom = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mosaic = MosaicJSON.from_urls(paths, minzoom=minzoom, maxzoom=maxzoom, quiet=True)
print(mosaic.model_dump_json(exclude_none=True))
"""


def write_mosaic_json(python: Path, scenes: list[Path], path: Path) -> dict:
    """The MosaicJSON of the scenes, newest first, made by cogeo-mosaic in titiler's venv;
    checks every quadkey lists its scenes newest first (the order `first` paints)."""
    newest_first = [str(p) for p in reversed(scenes)]
    result = subprocess.run(
        [str(python), "-c", MOSAIC_JSON_CODE, json.dumps(newest_first)]
        + [str(z) for z in MOSAIC_JSON_ZOOMS],
        capture_output=True,
        text=True,
        check=True,
    )
    path.write_text(result.stdout)
    tiles = json.loads(result.stdout)["tiles"]
    rank = {p: i for i, p in enumerate(newest_first)}
    for quadkey, assets in tiles.items():
        ranks = [rank[a] for a in assets]
        if ranks != sorted(ranks):
            raise RuntimeError(f"mosaic.json quadkey {quadkey} is not newest first: {assets}")
    counts = [len(a) for a in tiles.values()]
    return {
        "quadkeys": len(tiles),
        "quadkey_zoom": MOSAIC_JSON_ZOOMS[0],
        "assets_per_quadkey": {"min": min(counts), "max": max(counts)},
        "newest_first": True,
    }


# --------------------------------------------------------------------------- servers


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn's master and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_memory(pid: int, field: str) -> int:
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over the process tree, in bytes."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(field + ":"):
                total += int(line.split()[1]) * 1024
    return total


class Service:
    """One server process (titiler's uvicorn or `tileserver serve`), ready at /healthz.

    Its output goes to `<out>/logs/<name>.log`; stopping it terminates the master, which
    stops its workers; any left after 20 s are killed by pid.
    """

    def __init__(self, name: str, command: list[str], env: dict, cwd: Path, logs: Path):
        self.name, self.env, self.cwd = name, env, cwd
        self.port = free_port()
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory(self, field: str) -> int:
        """VmRSS / VmHWM summed over the server's processes."""
        assert self.process is not None
        return tree_memory(self.process.pid, field)

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        members = process_tree(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in members[1:]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def titiler_service(python: Path, out: Path, workers: int) -> Service:
    """titiler.application under its venv's uvicorn, with GDAL_ENV."""
    command = [str(python.parent / "uvicorn"), "titiler.application.main:app"]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)]
    command += ["--log-level", "warning", "--no-access-log"]
    env = {**os.environ, **GDAL_ENV}
    return Service("titiler", command, env, out, out / "logs")


def tileserver_service(out: Path, workers: int, cached: bool) -> Service:
    """`tileserver serve` on the bench catalog, tile cache on or off, with GDAL_ENV."""
    command = tileserver_command() + ["serve", "--workers", str(workers), "--port", "{port}"]
    command += ["--host", "127.0.0.1", "--catalog", catalog_url(out), "--log-level", "warning"]
    name = "tileserver-cached" if cached else "tileserver-uncached"
    return Service(name, command, tileserver_env(out, cached), ROOT, out / "logs")


# --------------------------------------------------------------------------- load


def fetch(url: str, path: str) -> httpx.Response:
    """One GET; anything but a 200 with a body aborts the run, with the answer."""
    response = httpx.get(url + path, timeout=120)
    if response.status_code != 200 or not response.content:
        raise RuntimeError(f"GET {path} -> {response.status_code}: {response.text[:2000]}")
    return response


def drive(url: str, paths: list[str], clients: int) -> dict:
    """`clients` threads, one keep-alive connection each, splitting `paths`; every
    latency, and tiles/s over the wall time of the pass. A failed request aborts."""
    host, port = url.removeprefix("http://").split(":")
    shares = [paths[k::clients] for k in range(clients)]
    latencies: list[list[float]] = [[] for _ in shares]
    sizes: list[list[int]] = [[] for _ in shares]
    errors: list[str] = []
    go = threading.Event()

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            go.wait()
            for path in shares[k]:
                start = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                latencies[k].append(time.perf_counter() - start)
                if response.status != 200 or not body:
                    errors.append(f"GET {path} -> {response.status}: {body[:2000]!r}")
                    return
                sizes[k].append(len(body))
        except Exception as exc:  # reported by the caller, with the body if any
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(errors[0])
    every = [s for share in latencies for s in share]
    return {
        **percentiles(every),
        "clients": clients,
        "wall_s": round(wall, 2),
        "tiles_per_s": round(len(every) / wall, 1),
        "bytes_mean": round(float(numpy.mean([s for share in sizes for s in share]))),
    }


def warm_up(service: Service, paths: TileserverPaths | TitilerPaths, lists: TileLists) -> None:
    """WARMUP tiles no timed list holds: single-image ones in each format, a few mosaic."""
    requests = [
        paths.single(tile, FORMATS[k % len(FORMATS)]) for k, tile in enumerate(lists.warmup_single)
    ]
    requests += [paths.mosaic(tile) for tile in lists.warmup_mosaic]
    drive(service.url, requests, 1)


# --------------------------------------------------------------------------- sanity


def decode(content: bytes) -> numpy.ndarray:
    """The bands of an encoded tile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning
        with MemoryFile(content) as memory, memory.open() as src:
            return src.read()


def compare(ours: bytes, theirs: bytes) -> dict:
    """Pixel agreement of two encoded tiles over their common bands."""
    a, b = decode(ours), decode(theirs)
    bands = min(a.shape[0], b.shape[0])
    if a.shape[1:] != b.shape[1:]:
        return {"bands": [a.shape[0], b.shape[0]], "shape_differs": [a.shape, b.shape]}
    diff = numpy.abs(a[:bands].astype("int32") - b[:bands].astype("int32"))
    return {
        "bands": [a.shape[0], b.shape[0]],
        "values": int(diff.size),
        "identical": int((diff == 0).sum()),
        "within_1": int((diff <= 1).sum()),
        "max_abs_diff": int(diff.max()),
        "bytes_identical": ours == theirs,
    }


def summarize(comparisons: list[dict]) -> dict:
    """Totals over tiles: share of identical values, largest difference."""
    values = sum(c.get("values", 0) for c in comparisons)
    return {
        "tiles": len(comparisons),
        "bands_tileserver_titiler": sorted({tuple(c["bands"]) for c in comparisons}),
        "identical_share": round(sum(c.get("identical", 0) for c in comparisons) / values, 5),
        "within_1_share": round(sum(c.get("within_1", 0) for c in comparisons) / values, 5),
        "max_abs_diff": max(c.get("max_abs_diff", -1) for c in comparisons),
        "bytes_identical_tiles": sum(c.get("bytes_identical", False) for c in comparisons),
        "shape_differs": [c["shape_differs"] for c in comparisons if "shape_differs" in c],
    }


def titiler_routes(url: str) -> dict:
    """The tile routes and parameters this bench uses, as titiler's OpenAPI lists them."""
    document = fetch(url, "/api").json()
    found = {}
    for route in TITILER_ROUTES:
        if route not in document["paths"]:
            raise RuntimeError(f"titiler has no route {route}")
        parameters = document["paths"][route]["get"]["parameters"]
        found[route] = sorted(p["name"] for p in parameters if p["in"] == "query")
    return found


def sanity(
    titiler: Service, tileserver: Service, tt: TitilerPaths, ts: TileserverPaths, lists: TileLists
) -> dict:
    """Both servers answer 200 for a few tiles of each format and the mosaic; how close
    their decoded pixels are."""
    out: dict = {"titiler_routes": titiler_routes(titiler.url)}
    for fmt in FORMATS:
        pairs = [
            (fetch(tileserver.url, ts.single(t, fmt)), fetch(titiler.url, tt.single(t, fmt)))
            for t in lists.sanity_single
        ]
        out[fmt] = summarize([compare(a.content, b.content) for a, b in pairs])
        out[fmt]["content_type"] = sorted(
            {r.headers["content-type"] for pair in pairs for r in pair}
        )
    pairs = [
        (fetch(tileserver.url, ts.mosaic(t)), fetch(titiler.url, tt.mosaic(t)))
        for t in lists.sanity_mosaic
    ]
    out["mosaic_png"] = summarize([compare(a.content, b.content) for a, b in pairs])
    out["mosaic_png"]["x_mosaic_images"] = [a.headers.get("x-mosaic-images") for a, _ in pairs]
    out["tiles_single"] = [list(t) for t in lists.sanity_single]
    out["tiles_mosaic"] = [list(t) for t in lists.sanity_mosaic]
    return out


# --------------------------------------------------------------------------- cases


def run_cases(
    service: Service,
    paths: TileserverPaths | TitilerPaths,
    lists: TileLists,
    passes: tuple[str, ...],
    mosaic: bool,
) -> dict:
    """Per (format, clients), one pass over the same list per name in `passes` (titiler:
    cold, warm; tileserver uncached: cold; cached: fill, warm); the mosaic lists once."""
    cases: dict = {}
    for fmt in FORMATS:
        for clients in CLIENTS:
            requests = [paths.single(t, fmt) for t in lists.single[fmt, clients]]
            for name in passes:
                cases[f"single {fmt} c{clients} {name}"] = drive(service.url, requests, clients)
    for clients in CLIENTS if mosaic else ():
        requests = [paths.mosaic(t) for t in lists.mosaic[clients]]
        cases[f"mosaic png c{clients} cold"] = drive(service.url, requests, clients)
    return cases


def soak(service: Service, ts: TileserverPaths, lists: TileLists, requests: int) -> dict:
    """`requests` PNG tiles cycling over random z10-z14 tiles, 4 clients; the server's
    summed VmRSS every SOAK_STEP requests."""
    paths = [ts.single(t, "png") for t in lists.soak]
    samples, stats = [], []
    started = time.perf_counter()
    for done in range(0, requests, SOAK_STEP):
        step = [paths[(done + k) % len(paths)] for k in range(min(SOAK_STEP, requests - done))]
        stats.append(drive(service.url, step, 4))
        samples.append({"requests": done + len(step), "rss_mb": service.memory("VmRSS") / 2**20})
    seconds = time.perf_counter() - started
    after = [s for s in samples if s["requests"] >= SOAK_WARMUP] or samples
    base, rest = after[0], after[1:] or after
    growth = (samples[-1]["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
    return {
        "requests": requests,
        "clients": 4,
        "distinct_tiles": len(paths),
        "seconds": round(seconds, 1),
        "tiles_per_s": round(requests / seconds, 1),
        "p50_ms_per_step": [s["p50_ms"] for s in stats],
        "p95_ms_per_step": [s["p95_ms"] for s in stats],
        "rss_samples": [{**s, "rss_mb": round(s["rss_mb"], 1)} for s in samples],
        "rss_after_warmup_mb": round(base["rss_mb"], 1),
        "rss_max_after_warmup_mb": round(max(s["rss_mb"] for s in rest), 1),
        "rss_last_mb": round(samples[-1]["rss_mb"], 1),
        "growth": round(growth, 4),
    }


def peak(service: Service) -> dict:
    """Peak and current memory of the server's process tree, in MiB."""
    return {
        "vmhwm_mb": round(service.memory("VmHWM") / 2**20, 1),
        "vmrss_mb": round(service.memory("VmRSS") / 2**20, 1),
        "processes": len(process_tree(service.process.pid)),
    }


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    """a / b, rounded."""
    return round(a / b, 2) if b else float("nan")


def comparisons(results: dict) -> list[dict]:
    """The table's rows: per case, titiler's and tileserver's figures and their ratios."""
    titiler, cold = results["cases"]["titiler"], results["cases"]["tileserver-uncached"]
    cached = results["cases"]["tileserver-cached"]
    rows = []
    for fmt in FORMATS:
        for clients in CLIENTS:
            for kind, ours, label in (("cold", cold, "uncached"), ("warm", cached, "cached")):
                name = f"single {fmt} c{clients} {kind}"
                rows.append(row(name, titiler[name], ours[name], f"tileserver-{label}"))
    for clients in CLIENTS:
        name = f"mosaic png c{clients} cold"
        rows.append(row(name, titiler[name], cold[name], "tileserver-uncached"))
    return rows


def row(case: str, titiler: dict, ours: dict, server: str) -> dict:
    """One compared case."""
    return {
        "case": case,
        "tileserver_server": server,
        "titiler": pick(titiler),
        "tileserver": pick(ours),
        "ratio_tiles_per_s": ratio(ours["tiles_per_s"], titiler["tiles_per_s"]),
        "ratio_p95": ratio(ours["p95_ms"], titiler["p95_ms"]),
        "ratio_p50": ratio(ours["p50_ms"], titiler["p50_ms"]),
        "ratio_bytes": ratio(ours["bytes_mean"], titiler["bytes_mean"]),
    }


def pick(stats: dict) -> dict:
    """The figures the table shows."""
    return {k: stats[k] for k in ("p50_ms", "p95_ms", "mean_ms", "tiles_per_s", "bytes_mean")}


def targets(results: dict) -> list[dict]:
    """Each target: the figures it compares, and whether it is met."""
    rows = {r["case"]: r for r in results["comparison"]}
    cold, cached = results["cases"]["tileserver-uncached"], results["cases"]["tileserver-cached"]
    out = []
    for clients in (4, 1):
        r = rows[f"single png c{clients} cold"]
        out.append(
            {
                "target": f"(a) uncached single PNG, {clients} client(s): tiles/s >= "
                f"{AIM_UNCACHED_RATIO}x titiler and lower p95",
                "value": f"tiles/s x{r['ratio_tiles_per_s']}, p95 x{r['ratio_p95']}",
                "met": r["ratio_tiles_per_s"] >= AIM_UNCACHED_RATIO and r["ratio_p95"] < 1,
            }
        )
    warm = [rows[f"single {f} c{c} warm"]["ratio_tiles_per_s"] for f in FORMATS for c in CLIENTS]
    own = [
        ratio(
            cached[f"single {f} c{c} warm"]["tiles_per_s"],
            cold[f"single {f} c{c} cold"]["tiles_per_s"],
        )
        for f in FORMATS
        for c in CLIENTS
    ]
    out.append(
        {
            "target": f"(b) warm repeats: tileserver cached >= {AIM_WARM_RATIO}x titiler warm "
            "tiles/s (every format, 1 and 4 clients)",
            "value": f"min x{min(warm)}, max x{max(warm)}",
            "met": min(warm) >= AIM_WARM_RATIO,
        }
    )
    out.append(
        {
            "target": f"(b') warm repeats: tileserver cached >= {AIM_WARM_RATIO}x tileserver "
            "uncached cold tiles/s",
            "value": f"min x{min(own)}, max x{max(own)}",
            "met": min(own) >= AIM_WARM_RATIO,
        }
    )
    for clients in CLIENTS:
        value = results["mosaic_over_single_p50"][f"c{clients}"]
        out.append(
            {
                "target": f"(c) tileserver mosaic p50 <= {AIM_MOSAIC_RATIO}x single-image PNG "
                f"p50, {clients} client(s)",
                "value": f"x{value}",
                "met": value <= AIM_MOSAIC_RATIO,
            }
        )
    if results.get("soak"):
        growth = results["soak"]["growth"]
        out.append(
            {
                "target": f"(d) soak: RSS growth after warm-up <= {AIM_SOAK_GROWTH:.0%}",
                "value": f"{growth:+.1%} ({results['soak']['rss_after_warmup_mb']} -> "
                f"{results['soak']['rss_last_mb']} MiB)",
                "met": growth <= AIM_SOAK_GROWTH,
            }
        )
    return out


def print_report(results: dict) -> None:
    """The comparison table, memory, pixel agreement and targets as plain text."""
    head = (
        f"{'case':<24} {'server':<20} {'p50 ms':>8} {'p95 ms':>8} {'tiles/s':>8}"
        f"  {'ts/tt tiles/s':>13} {'ts/tt p95':>9}"
    )
    settings = results["settings"]
    lines = [f"workers {settings['workers']}, tiles per zoom {settings['tiles_per_zoom']}"]
    if "workers_note" in settings:
        lines.append(f"note: {settings['workers_note']}")
    lines += ["", head]
    for r in results["comparison"]:
        titiler_label = "titiler" + (" (2nd pass)" if r["case"].endswith("warm") else "")
        t, o = r["titiler"], r["tileserver"]
        lines.append(
            f"{r['case']:<24} {titiler_label:<20} {t['p50_ms']:>8.1f} {t['p95_ms']:>8.1f}"
            f" {t['tiles_per_s']:>8.1f}"
        )
        lines.append(
            f"{'':<24} {r['tileserver_server']:<20} {o['p50_ms']:>8.1f} {o['p95_ms']:>8.1f}"
            f" {o['tiles_per_s']:>8.1f}  {r['ratio_tiles_per_s']:>12.2f}x"
            f" {r['ratio_p95']:>8.2f}x"
        )
    ratios = results["mosaic_over_single_p50"]
    lines.append(
        "tileserver mosaic p50 / single-image PNG p50: "
        + ", ".join(f"{k} x{v}" for k, v in ratios.items())
    )
    sizes = {
        r["case"].split()[1]: r["ratio_bytes"]
        for r in results["comparison"]
        if r["case"].startswith("single") and r["case"].endswith("c1 cold")
    }
    lines.append(
        "mean tile bytes tileserver / titiler (encoder settings differ): "
        + ", ".join(f"{fmt} x{value}" for fmt, value in sizes.items())
    )
    lines += ["", "peak RSS (VmHWM summed over the process tree)"]
    for name, memory in results["memory"].items():
        lines.append(f"  {name:<22} {memory['vmhwm_mb']:>8.1f} MiB ({memory['processes']} proc)")
    if results.get("soak"):
        s = results["soak"]
        lines.append(
            f"soak: {s['requests']} PNG requests, 4 clients, {s['tiles_per_s']} tiles/s; RSS "
            f"{s['rss_after_warmup_mb']} MiB after {SOAK_WARMUP} requests, max after that "
            f"{s['rss_max_after_warmup_mb']}, last {s['rss_last_mb']} MiB ({s['growth']:+.1%})"
        )
    lines += ["", "pixels, tileserver vs titiler (decoded; shares of band values)"]
    for name, c in results["sanity"].items():
        if name.startswith(("png", "jpeg", "webp", "mosaic")):
            lines.append(
                f"  {name:<11} {c['tiles']:>2} tiles, bands {c['bands_tileserver_titiler']}:"
                f" identical {c['identical_share']:.2%}, within 1 {c['within_1_share']:.2%},"
                f" max diff {c['max_abs_diff']}, byte-identical tiles "
                f"{c['bytes_identical_tiles']}"
            )
    lines += ["", "targets"]
    for t in results["targets"]:
        lines.append(f"  {'MET    ' if t['met'] else 'NOT MET'}  {t['target']}: {t['value']}")
    print("\n".join(lines))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Prepare, run the three server configurations, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for data, catalog, venv, logs (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp --out folder")
    parser.add_argument("--titiler-venv", help="venv with titiler (default: OUT/titiler-venv)")
    parser.add_argument("--workers", type=int, default=1, help="server workers, both servers")
    parser.add_argument("--tiles", type=int, default=100, help="tiles per zoom in each list")
    parser.add_argument("--soak", type=int, default=20000, help="soak requests (0: skip)")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument("--quick", action="store_true", help="--tiles 10 --soak 0")
    args = parser.parse_args(argv)
    if args.quick:
        args.tiles, args.soak = 10, 0
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="vs-titiler-") if temporary else args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = run(args, out)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_report(results)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    kept = "removed" if temporary and not args.keep else "kept"
    print(f"\n{results['seconds']} s; results in {args.json}; files in {out} ({kept})")


def run(args: argparse.Namespace, out: Path) -> dict:
    """Everything between parsing the options and printing."""
    venv = Path(args.titiler_venv or out / "titiler-venv").resolve()
    python = ensure_titiler(venv)
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(),
        "versions": {
            "titiler_venv": installed(
                python, ["titiler.application", "titiler.core", "rio-tiler", "rasterio", "uvicorn"]
            ),
            "tileserver_env": installed(
                Path(sys.executable),
                ["tileserver", "rio-tiler", "rasterio", "titiler.core", "uvicorn"],
            ),
        },
    }
    data = make_data(out)
    results["data"] = {k: v for k, v in data.items() if k not in ("single", "scenes")}
    results["catalog"] = ingest(out, data)
    ts = TileserverPaths(single_image_id(catalog_url(out)))
    tt = TitilerPaths(data["single"], out / "mosaic.json")
    results["mosaic_json"] = write_mosaic_json(python, data["scenes"], tt.mosaic_json)
    lists = make_tile_lists(args.tiles)
    titiler = titiler_service(python, out, args.workers)
    uncached = tileserver_service(out, args.workers, cached=False)
    cached = tileserver_service(out, args.workers, cached=True)
    results["settings"] = {
        "workers": args.workers,
        "tiles_per_zoom": args.tiles,
        "soak": args.soak,
        "formats": FORMATS,
        "clients": CLIENTS,
        "single_zooms": SINGLE_ZOOMS,
        "mosaic_zooms": MOSAIC_ZOOMS,
        "gdal_env": GDAL_ENV,
        "titiler_venv": str(venv),
        "titiler_command": shlex.join(titiler.command),
        "tileserver_command": shlex.join(uncached.command),
        "tileserver_uncached_env": {"TILESERVER_CACHE_MAX_BYTES": "0"},
        "tileserver_render": TILESERVER_RENDER,
        "titiler_render": TITILER_RENDER,
        "image_id": ts.image_id,
        "tile_pools": lists.pool_sizes,
        "distinct_tiles": {
            f"{fmt} c{clients}": distinct(tiles) for (fmt, clients), tiles in lists.single.items()
        }
        | {f"mosaic c{clients}": distinct(tiles) for clients, tiles in lists.mosaic.items()},
        "out": str(out),
    }
    if args.workers > 1:
        results["settings"]["workers_note"] = WORKERS_NOTE
        print(f"note: {WORKERS_NOTE}", file=sys.stderr)
    print("sanity check: both servers ...", file=sys.stderr)
    with ExitStack() as stack:
        stack.enter_context(titiler)
        stack.enter_context(uncached)
        response = httpx.post(
            f"{uncached.url}/searches", json={"collections": [MOSAIC_PRODUCT]}, timeout=120
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST /searches -> {response.status_code}: {response.text}")
        ts.search_id = response.json()["id"]
        results["settings"]["search_id"] = ts.search_id
        results["sanity"] = sanity(titiler, uncached, tt, ts, lists)
    cases, memory = {}, {}
    for service, paths, passes, mosaic in (
        (titiler, tt, ("cold", "warm"), True),
        (uncached, ts, ("cold",), True),
        (cached, ts, ("fill", "warm"), False),
    ):
        print(f"timing {service.name} ...", file=sys.stderr)
        with service:
            warm_up(service, paths, lists)
            cases[service.name] = run_cases(service, paths, lists, passes, mosaic)
            memory[service.name] = peak(service)
            if service is uncached and args.soak:
                print(f"soak: {args.soak} requests ...", file=sys.stderr)
                results["soak"] = soak(service, ts, lists, args.soak)
                memory["tileserver-uncached after soak"] = peak(service)
    results["cases"], results["memory"] = cases, memory
    results["comparison"] = comparisons(results)
    results["mosaic_over_single_p50"] = {
        f"c{c}": ratio(
            cases["tileserver-uncached"][f"mosaic png c{c} cold"]["p50_ms"],
            cases["tileserver-uncached"][f"single png c{c} cold"]["p50_ms"],
        )
        for c in CLIENTS
    }
    results["targets"] = targets(results)
    return results


if __name__ == "__main__":
    main()
