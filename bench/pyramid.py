"""Benchmark: low-zoom search tiles from the materialized pyramid, from dynamic compositing,
and from titiler-pgstac, on one pgSTAC database (issue 21: "pick the design by measurement").

    python bench/pyramid.py [--scenes 200] [--zooms 3-8] [--tiles 8] [--runs 3] [--out DIR]

Data: `--scenes` one-band UInt16 GeoTIFFs without overviews, overlapping at random over a
600 km square (bench/search_mosaic.py `write_low_zoom_scenes`: 640 px at 60 m, 8-pixel
nodata frames), imported with `run_import` (footprints, statistics, reduced copies) into a
pgSTAC database on a private PostgreSQL cluster (tests/postgres.py). Three servers read
that database, one worker each, tile cache off, no file kept open between requests:

- `pyramid`: tileserver as configured by default (`TILESERVER_MOSAIC_PYRAMID=true`): the
  search is registered, its pyramid built in the background (timed: registration to
  `low_zooms.state == ready`; its file size on disk), then tiles below the scenes' minzoom
  come from it;
- `dynamic`: tileserver with `TILESERVER_MOSAIC_PYRAMID=false`, `TILESERVER_MOSAIC_MINZOOM=0`:
  every tile composited per request from the scenes' reduced copies (up to 500 images);
- `titiler-pgstac` (its own virtual environment, TILESERVER_TEST_TITILER_PGSTAC_PYTHON or
  /opt/tileserver-titiler-pgstac): the same search by its pgSTAC hash, `pixel_selection=first`,
  its defaults otherwise (it stops a tile after 5 s or 100 items: partial tiles, noted).

Every zoom of `--zooms`: all tiles over the scenes' bounds or `--tiles` drawn at random
(seeded), PNG, `scaling`/`rescale` 0,2000, from 4 clients at once; `--runs` passes, each
asking every tile once. Per zoom and server: p50 / p95 / max ms, statuses; the ratios
dynamic / pyramid and titiler-pgstac / pyramid of the p50s; the share of a pyramid tile's
pixels equal to the dynamic tile's (same order, `first`). Then one scene is added and the
time from that catalog write to an up-to-date pyramid (and how many base tiles were redone)
is measured. titiler-pgstac needs one asset name across items: the bench renames each
item's single asset to `data` in pgSTAC (tileserver reads its own document, not assets).

JSON to bench/pyramid.json (or `--json`); a table on stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from search_mosaic import (  # noqa: E402
    SEED,
    WEB_MERCATOR,
    machine,
    percentiles,
    timed,
    write_low_zoom_scenes,
)
from vs_titiler import Service  # noqa: E402

PRODUCT = "bench-pyramid"
CLIENTS = 4
TILESERVER_QUERY = {"scaling": "0,2000"}
PGSTAC_QUERY = {"assets": "data", "rescale": "0,2000", "pixel_selection": "first"}
PGSTAC_PYTHON = Path(
    os.environ.get(
        "TILESERVER_TEST_TITILER_PGSTAC_PYTHON", "/opt/tileserver-titiler-pgstac/bin/python"
    )
)


def installed_version(python: Path, package: str) -> str | None:
    """A package's version in another environment (bench/remote.py's, without its imports)."""
    import subprocess

    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or None


def import_scenes(catalog: str, folder: Path, data_dir: Path) -> tuple[float, int]:
    """`run_import` of the scenes in `folder` into the pgSTAC catalog: seconds, count."""
    from tileserver.catalog.store import open_store
    from tileserver.ingest.imports import ImportRequest, run_import
    from tileserver.opener import Confinement, confined, reading

    store = open_store(catalog)
    try:
        confinement = Confinement(data_dir=data_dir)
        request = ImportRequest(cloud_provider="file", bucket_name=str(folder), product=PRODUCT)
        with confined(confinement), reading(confinement.operator()):
            seconds, result = timed(
                lambda: run_import(store, request, data_dir, confinement=confinement)
            )
        if result.failed:
            raise RuntimeError(f"import failed: {result.failed[:3]}")
        return seconds, len(result.features)
    finally:
        store.close()


def rename_assets(catalog: str) -> None:
    """One asset name (`data`) across items, so titiler-pgstac can name it in a mosaic."""
    with psycopg.connect(catalog, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgstac.items SET content = jsonb_set(content, '{assets}',"
            " jsonb_build_object('data', (SELECT value FROM jsonb_each(content->'assets')"
            " LIMIT 1))) WHERE collection = %s",
            (PRODUCT,),
        )


def tileserver_service(name: str, catalog: str, data_dir: Path, logs: Path, **settings) -> Service:
    """This checkout's tileserver (PYTHONPATH), one worker, on the pgSTAC catalog."""
    command = [sys.executable, "-m", "uvicorn", "tileserver.main:app", "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--workers", "1", "--log-level", "warning"]
    command += ["--no-access-log"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILESERVER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        TILESERVER_CATALOG_URL=catalog,
        TILESERVER_DATA_DIR=str(data_dir),
        TILESERVER_CACHE_MAX_BYTES="0",
        TILESERVER_OPEN_DATASETS="0",
        TILESERVER_REQUEST_LOG="false",
        **{f"TILESERVER_{k.upper()}": str(v) for k, v in settings.items()},
    )
    return Service(name, command, env, ROOT, logs)


def pgstac_service(catalog: str, logs: Path) -> Service:
    command = [str(PGSTAC_PYTHON), "-m", "uvicorn", "titiler.pgstac.main:app"]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    command += ["--log-level", "warning", "--no-access-log"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILESERVER_")}
    env.update(DATABASE_URL=catalog, TITILER_PGSTAC_CACHE_DISABLE="TRUE")
    return Service("titiler-pgstac", command, env, ROOT, logs)


def wait_ready(url: str, search_id: str, timeout: float = 3600) -> dict:
    """Poll GET /searches/{id} until its pyramid is ready and up to date."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        low = httpx.get(f"{url}/searches/{search_id}", timeout=30).json()["low_zooms"]
        if low.get("state") == "ready" and low.get("up_to_date"):
            return low
        time.sleep(0.25)
    raise RuntimeError("the pyramid did not get ready")


def time_tiles(url: str, prefix: str, query: dict, tiles: list) -> tuple[dict, dict]:
    """Each tile once from CLIENTS clients at once: timings and statuses; the PNG bodies."""

    def one(tile) -> tuple[float, int, bytes]:
        path = f"{prefix}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png"
        with httpx.Client(base_url=url, timeout=180) as client:
            seconds, response = timed(lambda: client.get(path, params=query))
        return seconds, response.status_code, response.content

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, tiles))
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    bodies = {}
    for tile, (_, status, body) in zip(tiles, results, strict=True):
        if status == 200:
            bodies[(tile.z, tile.x, tile.y)] = body
    return {**percentiles([s for s, _, _ in results]), "statuses": statuses}, bodies


def decode(png: bytes) -> numpy.ndarray:
    """(value, alpha) of a grey+alpha or RGBA PNG."""
    from rasterio.io import MemoryFile

    with MemoryFile(io.BytesIO(png).read()) as memory, memory.open() as dataset:
        pixels = dataset.read()
    return numpy.stack([pixels[0], pixels[-1]])


def agreement(a: bytes, b: bytes) -> tuple[float, float]:
    """Of the pixels valid in either tile, the share valid in both; of those, the share
    within 4 grey levels (the scenes are gradients: a pyramid pixel is one of the 2 x 2 of
    the zoom below, the dynamic one GDAL's nearest sample of a reduced copy, a neighbour)."""
    x, y = decode(a), decode(b)
    either = (x[1] > 0) | (y[1] > 0)
    if not either.any():
        return 1.0, 1.0
    both = (x[1] > 0) & (y[1] > 0)
    near = both & (numpy.abs(x[0].astype(int) - y[0].astype(int)) <= 4)
    return float(both[either].mean()), float(near[both].mean()) if both.any() else 1.0


def pick_tiles(bounds: list[float], zooms: list[int], per_zoom: int) -> dict[int, list]:
    """Every tile of the bounds per zoom, or `per_zoom` of them drawn at random (seeded)."""
    rng = numpy.random.default_rng(SEED)
    out = {}
    for z in zooms:
        tiles = list(WEB_MERCATOR.tiles(*bounds, [z]))
        if len(tiles) > per_zoom:
            tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), per_zoom, False))]
        out[z] = tiles
    return out


def run_server(service: Service, prefix: str, query: dict, tiles: dict, runs: int) -> dict:
    """`runs` passes over every zoom's tiles on a started server."""
    out: dict = {"runs": [], "bodies": {}}
    for run in range(runs):
        per_zoom = {}
        for z, zoom_tiles in tiles.items():
            print(f"  {service.name} run {run + 1} z{z}: {len(zoom_tiles)} tiles", file=sys.stderr)
            per_zoom[z], bodies = time_tiles(service.url, prefix, query, zoom_tiles)
            if run == 0:
                out["bodies"].update(bodies)
        out["runs"].append(per_zoom)
    return out


def summarize(result: dict) -> dict:
    """Per zoom: the median over runs of p50 / p95 / max, and every run's statuses."""
    zooms = result["runs"][0].keys()
    return {
        z: {
            "p50_ms": round(statistics.median(r[z]["p50_ms"] for r in result["runs"]), 1),
            "p95_ms": round(statistics.median(r[z]["p95_ms"] for r in result["runs"]), 1),
            "max_ms": round(max(r[z]["max_ms"] for r in result["runs"]), 1),
            "p50_per_run_ms": [r[z]["p50_ms"] for r in result["runs"]],
            "statuses": [r[z]["statuses"] for r in result["runs"]],
        }
        for z in zooms
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--zooms", default="3-8", help="first-last zoom timed")
    parser.add_argument("--tiles", type=int, default=8, help="most tiles per zoom")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", help="scenes, catalog cluster, DATA_DIR, logs (default: temp)")
    parser.add_argument("--skip", default="", help="comma list of servers not to run")
    parser.add_argument("--json", default=str(ROOT / "bench" / "pyramid.json"))
    args = parser.parse_args(argv)
    first, last = (int(z) for z in args.zooms.split("-"))
    zooms = list(range(first, last + 1))
    out = Path(args.out or tempfile.mkdtemp(prefix="pyramid-bench-"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data_dir, logs = out, out / "logs"  # the scenes lie under DATA_DIR (the opener's reach)
    started = time.perf_counter()

    from tests.postgres import _private_cluster
    from tileserver.search_pyramid import PyramidFile

    print(f"writing {args.scenes + 1} scenes ...", file=sys.stderr)
    write_low_zoom_scenes(out / "all", args.scenes + 1)
    names = sorted(p.name for p in (out / "all").glob("*.tif"))
    (out / "in").mkdir()
    (out / "later").mkdir()
    for name in names[:-1]:
        (out / "all" / name).rename(out / "in" / name)
    (out / "all" / names[-1]).rename(out / "later" / names[-1])

    cluster = _private_cluster()
    admin = next(cluster)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pyramid_bench")
        catalog = admin.rsplit("/", 1)[0] + "/pyramid_bench"
        from tileserver.catalog.pgstac import migrate

        migrate(catalog)
        print("importing ...", file=sys.stderr)
        seconds, count = import_scenes(catalog, out / "in", data_dir)
        rename_assets(catalog)
        results: dict = {
            "machine": machine(),
            "settings": {
                "scenes": count,
                "zooms": zooms,
                "tiles_per_zoom": args.tiles,
                "runs": args.runs,
                "clients": CLIENTS,
                "workers": 1,
                "query": TILESERVER_QUERY,
                "titiler_pgstac_query": PGSTAC_QUERY,
            },
            "versions": {"titiler.pgstac": installed_version(PGSTAC_PYTHON, "titiler.pgstac")},
            "import_seconds_per_100": round(seconds / count * 100, 1),
            "servers": {},
        }
        skip = set(filter(None, args.skip.split(",")))

        pyramid = tileserver_service("pyramid", catalog, data_dir, logs)
        with pyramid:
            registered = httpx.post(f"{pyramid.url}/searches", json={"collections": [PRODUCT]})
            search_id = registered.json()["id"]
            build, low = timed(lambda: wait_ready(pyramid.url, search_id))
            path = data_dir / "pyramids" / f"{search_id}.db"
            size = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))
            tilejson = httpx.get(f"{pyramid.url}/searches/{search_id}/tilejson.json").json()
            results["pyramid"] = {
                "zooms": low["zooms"],
                "build_seconds": round(build, 1),
                "build_seconds_per_100": round(build / count * 100, 1),
                "bytes": size,
                "bytes_per_100": round(size / count * 100),
                "base_tiles": PyramidFile(path).meta().get("last_redone"),
                "tilejson_zooms": [tilejson["minzoom"], tilejson["maxzoom"]],
            }
            print(f"pyramid: {results['pyramid']}", file=sys.stderr)
            tiles = pick_tiles(tilejson["bounds"], zooms, args.tiles)
            results["tiles"] = {z: len(t) for z, t in tiles.items()}

            # a catalog write, then the time to an up-to-date pyramid
            before = PyramidFile(path).meta().get("version")
            written, _ = timed(lambda: import_scenes(catalog, out / "later", data_dir))
            write_done = time.perf_counter()
            httpx.get(f"{pyramid.url}/searches/{search_id}")  # the next request starts it
            low = wait_ready(pyramid.url, search_id)
            meta = PyramidFile(path).meta()
            results["update"] = {
                "import_one_seconds": round(written, 2),
                "write_to_up_to_date_seconds": round(time.perf_counter() - write_done, 2),
                "base_tiles_redone": meta.get("last_redone"),
                "version": [before, meta.get("version")],
                "images": low["images"],
            }
            print(f"update: {results['update']}", file=sys.stderr)
            prefix = f"/searches/{search_id}"
            runs = {"pyramid": run_server(pyramid, prefix, TILESERVER_QUERY, tiles, args.runs)}
        rename_assets(catalog)  # the scene added above

        if "dynamic" not in skip:
            dynamic = tileserver_service(
                "dynamic", catalog, data_dir, logs, mosaic_pyramid="false", mosaic_minzoom=0
            )
            with dynamic:
                runs["dynamic"] = run_server(dynamic, prefix, TILESERVER_QUERY, tiles, args.runs)
        if "titiler-pgstac" not in skip and PGSTAC_PYTHON.exists():
            with psycopg.connect(catalog) as conn:
                ((search_hash,),) = conn.execute(
                    "SELECT hash FROM pgstac.searches WHERE metadata->>'tileserver:id' = %s",
                    (search_id,),
                ).fetchall()
            peer = pgstac_service(catalog, logs)
            with peer:
                runs["titiler-pgstac"] = run_server(
                    peer, f"/searches/{search_hash}", PGSTAC_QUERY, tiles, args.runs
                )
        for name, result in runs.items():
            results["servers"][name] = summarize(result)
        ours = results["servers"]["pyramid"]
        results["ratios_p50"] = {
            name: {
                z: round(row["p50_ms"] / max(ours[z]["p50_ms"], 0.1), 1) for z, row in rows.items()
            }
            for name, rows in results["servers"].items()
            if name != "pyramid"
        }
        if "dynamic" in runs:
            shares = {}
            for key, body in runs["pyramid"]["bodies"].items():
                other = runs["dynamic"]["bodies"].get(key)
                if other is not None:
                    shares.setdefault(key[0], []).append(agreement(body, other))
            results["pyramid_vs_dynamic_pixels"] = {
                z: {
                    "valid_in_both_min": round(min(v for v, _ in s), 4),
                    "valid_in_both_mean": round(statistics.mean(v for v, _ in s), 4),
                    "of_those_within_4_levels_min": round(min(n for _, n in s), 4),
                }
                for z, s in sorted(shares.items())
            }
        results["seconds"] = round(time.perf_counter() - started, 1)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
        print_table(results)
    finally:
        next(cluster, None)


def print_table(results: dict) -> None:
    p = results["pyramid"]
    print(
        f"{results['settings']['scenes']} scenes; import {results['import_seconds_per_100']} s"
        f"/100; pyramid z{p['zooms'][0]}-{p['zooms'][1]} built in {p['build_seconds']} s "
        f"({p['build_seconds_per_100']} s/100), {p['bytes'] / 1e6:.2f} MB "
        f"({p['bytes_per_100'] / 1e6:.2f} MB/100); update after one write "
        f"{results['update']['write_to_up_to_date_seconds']} s"
    )
    names = list(results["servers"])
    print(f"{'zoom':>4} {'tiles':>5} " + " ".join(f"{n + ' p50/p95 ms':>28}" for n in names))
    for z in results["servers"]["pyramid"]:
        cells = []
        for name in names:
            row = results["servers"][name][z]
            cells.append(f"{row['p50_ms']:>12}/{row['p95_ms']:<10} {len(row['statuses']):>3}")
        print(f"{z:>4} {results['tiles'][z]:>5} " + " ".join(f"{c:>28}" for c in cells))
    print("ratios of p50 to the pyramid's:", json.dumps(results["ratios_p50"]))
    for name in names:
        print(name, {z: row["statuses"] for z, row in results["servers"][name].items()})
    if "pyramid_vs_dynamic_pixels" in results:
        print("pyramid vs dynamic pixels:", results["pyramid_vs_dynamic_pixels"])


if __name__ == "__main__":
    main()
