"""Benchmark: SQLite vs pgSTAC on 1,000,000 items, and tiles/s with 1 and 2 workers.

    python bench/scale_out.py --pgstac postgresql://USER@HOST:PORT/DB [--items 1000000]

Part 1, for each store: ingest `--items` synthetic images (bench/search_mosaic.py's
generator, same seed) with `put_images` in batches, then time, after one warm-up,
(a) bbox + month + cloud-cover searches, (b) CQL2 S_INTERSECTS polygon searches and
(c) the per-tile image lookup of a mosaic (`tile_images`, limit 31), on the same query
lists for both stores. The pgSTAC database must be empty (it is migrated here).

Part 2: `tileserver serve --workers N` (N = 1, 2) on the pgSTAC catalog with the tile
cache off, the 10 overlapping COGs of search_mosaic.py registered, driven by 4 concurrent
keep-alive clients in a separate process for `--seconds` per case: single-image PNG tiles
and 10-image mosaic PNG tiles at z12-z14. Tiles/s is completed 200 responses per second.

Results: a table on stdout and bench/scale_out.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import httpx  # noqa: E402
import search_mosaic as sm  # noqa: E402

from tileserver.catalog.models import Product  # noqa: E402
from tileserver.catalog.search import SearchQuery  # noqa: E402
from tileserver.catalog.store import open_store  # noqa: E402

RUNS = 50


def ingest(url: str, items: int, batch: int) -> dict:
    """Fill an empty store; items/s of put_images alone (generation timed apart)."""
    store = open_store(url)
    for product_id, *_ in sm.PRODUCTS:
        store.put_product(Product(id=product_id, name=product_id))
    write = 0.0
    with tqdm(total=items, unit="img", desc=f"ingest {url.split(':')[0]}") as bar:
        for number, first in enumerate(range(0, items, batch)):
            count = min(batch, items - first)
            images = sm.synthetic_images(number, count, first)
            seconds, _ = sm.timed(lambda i=images: store.put_images(i))
            write += seconds
            bar.update(count)
    store.close()
    return {
        "items": items,
        "seconds_put_images": round(write, 1),
        "items_per_s": round(items / write),
    }


def searches(url: str, runs: int) -> dict:
    """p50/p95 of the three query kinds, each over `runs` queries after a warm-up."""
    store = open_store(url)
    rng = numpy.random.default_rng(sm.SEED + 1)
    bodies_a, bodies_b = sm.bbox_bodies(rng, runs), sm.polygon_bodies(rng, runs)
    tiles = sm.random_tiles(rng, runs)
    out = {}
    out["a_bbox_month_cloud"], matched = sm.time_store_searches(store, bodies_a)
    out["a_matched"] = sm.spread(matched)
    out["b_polygon"], matched = sm.time_store_searches(store, bodies_b)
    out["b_matched"] = sm.spread(matched)
    out["c_tile_lookup"], found = sm.time_tile_lookups(store, tiles)
    out["c_found"] = sm.spread(found)
    # the same answers: first pages and lookups compared between stores by the caller
    out["answers"] = {
        "a": [
            [i.id for i in store.search(SearchQuery.model_validate(b)).images]
            for b in bodies_a[:10]
        ],
        "c": [
            [
                i.id
                for i in store.tile_images(
                    SearchQuery.model_validate(sm.TILE_QUERY),
                    tuple(sm.WEB_MERCATOR.bounds(t)),
                    sm.LOOKUP,
                )
            ]
            for t in tiles[:10]
        ],
    }
    store.close()
    return out


def serve(url: str, data_dir: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = sm.free_port()
    env = {
        **os.environ,
        "TILESERVER_CATALOG_URL": url,
        "TILESERVER_DATA_DIR": str(data_dir),
        "TILESERVER_CACHE_MAX_BYTES": "0",
        "TILESERVER_READER_THREADS": "1",
    }
    env.pop("TILESERVER_CACHE_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tileserver.cli import cli; cli()",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start")


async def drive(base: str, paths: list[str], clients: int, seconds: float) -> dict:
    """`clients` keep-alive clients requesting paths round-robin for `seconds`."""
    done, errors, latencies = 0, 0, []
    stop = time.monotonic() + seconds

    async def one(offset: int) -> None:
        nonlocal done, errors
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            k = offset
            while time.monotonic() < stop:
                start = time.perf_counter()
                response = await client.get(paths[k % len(paths)])
                latencies.append(time.perf_counter() - start)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1
                k += clients

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"tiles_per_s": round(done / seconds, 1), "errors": errors, **sm.percentiles(latencies)}


def client_process(base: str, paths: list[str], clients: int, seconds: float) -> dict:
    """Run the load in another process so the client does not share this one's GIL."""
    paths_dir = [str(ROOT), str(ROOT / "bench")]
    code = (
        f"import asyncio, json, sys; sys.path[:0] = {paths_dir!r}; import scale_out as s; "
        f"print(json.dumps(asyncio.run(s.drive({base!r}, {paths!r}, {clients}, {seconds}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def tile_paths(url: str, folder: Path) -> dict[str, list[str]]:
    """Register the 10 mosaic COGs in the catalog; single-image and mosaic tile paths."""
    records = sm.write_mosaic_images(folder)
    process, base = serve(url, folder, 1)
    try:
        searches = sm.mosaic_searches(records)
        ids = sm.register_mosaic(base, records, searches)
    finally:
        process.terminate()
        process.wait()
    tiles_by_zoom = sm.overlap_tiles(records)
    tiles = [t for z in (12, 13, 14) for t in tiles_by_zoom[z]]
    random.Random(7).shuffle(tiles)
    newest = f"{sm.MOSAIC_PRODUCT}:{records[-1]['name']}"
    query = "bands=B04,B03,B02&scaling=display"
    single = [
        f"/images/{newest}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?{query}" for t in tiles
    ]
    mosaic = [
        f"/searches/{ids['all']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?{query}" for t in tiles
    ]
    return {"single": single, "mosaic": mosaic}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pgstac", required=True, help="DSN of an empty PostgreSQL database")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip-stores", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "scale_out.json")
    args = parser.parse_args(argv)
    results: dict = {"machine": sm.machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="tileserver-scale-") as tmp:
        folder = Path(tmp)
        stores = {"sqlite": f"sqlite:///{folder / 'catalog.db'}", "pgstac": args.pgstac}
        if not args.skip_stores:
            for name, url in stores.items():
                results[name] = {"ingest": ingest(url, args.items, args.batch)}
                results[name].update(searches(url, args.runs))
            same = results["sqlite"].pop("answers") == results["pgstac"].pop("answers")
            results["same_answers"] = same
        paths = tile_paths(args.pgstac, folder / "cogs")
        for workers in (1, 2):
            process, base = serve(args.pgstac, folder / "cogs", workers)
            try:
                for kind, kind_paths in paths.items():
                    client_process(base, kind_paths[:20], args.clients, 3)  # warm-up
                    results[f"tiles_{kind}_{workers}w"] = client_process(
                        base, kind_paths, args.clients, args.seconds
                    )
            finally:
                process.terminate()
                process.wait()
    args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
