"""Benchmark: tiles from object storage. tileserver against titiler (single COGs) and
titiler-pgstac (per-band Sentinel-2-like scenes, same pgSTAC database), one command.

    python bench/remote.py [--rtt-ms 20] [--mbps 400] [--tiles 8] [--out DIR]

Everything runs on loopback: s3rver (a file-backed S3 server from the npm registry,
installed into `--out` on the first run; `--store moto` uses moto's server mode instead) is
the S3 store, bench/proxy.py sits in front of it (each request waits `--rtt-ms`, bodies
are paced at `--mbps`, and it counts requests and bytes), a private PostgreSQL cluster
holds the pgSTAC catalog (tests/postgres.py), and the three servers read the bucket through
the proxy with the same GDAL settings (vs_titiler.GDAL_ENV, titiler's documented ones)
and one worker each.

Data (written once into `--out`, reused): (a) one 4096 x 4096 4-band UInt16 COG
(vs_titiler's); (b) 10 overlapping 2048 x 2048 scenes stored as one COG per band (blue,
green, red, nir) with a STAC item each whose assets point at `s3://` like the public
Sentinel-2 COG catalogs'. `tileserver ingest` registers both in the pgSTAC database from
the bucket; titiler-pgstac serves the same database (`/searches/{hash}`, the pgSTAC search
tileserver registered).

Cases: PNG tiles at z10 / z12 / z14 (`--tiles` per zoom, seeded), 1 and 4 clients. Each
server process is started fresh per client count: `cold` is the list's first pass (no open
files, empty GDAL caches), `warm` the same list again on that process (tileserver's tile
cache is off, so every tile is rendered again: warm is GDAL's and the dataset pool's
caches, not an answer cache). Figures: p50 / p95 ms, tiles/s (requests over the pass's
wall time), requests and bytes per tile at the proxy, tileserver / peer ratios.
Before timing, tiles from both sides are decoded and compared.

JSON to bench/remote.json (or `--json`); a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import numpy

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import boto3  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402
from rasterio.warp import transform, transform_bounds  # noqa: E402
from search_mosaic import machine  # noqa: E402
from vs_titiler import (  # noqa: E402
    CRS,
    FIRST_DATE,
    GDAL_ENV,
    ORIGIN,
    PIXEL,
    SCENE_SIZE,
    SCENES,
    SEED,
    SINGLE_SIZE,
    WEB_MERCATOR,
    Service,
    compare,
    drive,
    ensure_titiler,
    overlap_rect,
    pixels,
    sample,
    scene_origin,
    scene_pixels,
    single_rect,
    summarize,
    tiles_in,
    tileserver_command,
    write_cog,
)

from tests.buckets import SECRET, Server, moto_server  # noqa: E402
from tests.conftest import free_port  # noqa: E402

BUCKET = "remote-bench"
BANDS = ("blue", "green", "red", "nir")  # one COG per band, Sentinel-2 style asset keys
S2_NAMES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
ZOOMS = (10, 12, 14)
CLIENTS = (1, 4)
SINGLE_PRODUCT = "remote-single"
SCENE_PRODUCT = "remote-s2"
TILESERVER_SINGLE = {"bands": "b3,b2,b1", "scaling": "0,6000"}
TITILER_SINGLE = [("bidx", "3"), ("bidx", "2"), ("bidx", "1"), ("rescale", "0,6000")]
TILESERVER_MOSAIC = {"bands": "B04,B03,B02", "scaling": "0,6000", "pixel_selection": "first"}
PGSTAC_MOSAIC = [("assets", "B04"), ("assets", "B03"), ("assets", "B02")]
PGSTAC_MOSAIC += [("rescale", "0,6000"), ("pixel_selection", "first")]
TITILER_PGSTAC_PYTHON = Path("/opt/tileserver-titiler-pgstac/bin/python")


# --------------------------------------------------------------------------- data


def make_data(out: Path) -> dict:
    """The single COG, the per-band scene COGs and their STAC items (written once)."""
    single = out / "bucket" / "single" / "single.tif"
    if not single.exists():
        print("writing single.tif ...", file=sys.stderr)
        write_cog(single, pixels(SINGLE_SIZE, SEED), ORIGIN)
    items = []
    for index in range(SCENES):
        folder = out / "bucket" / "scenes" / f"S{index:02d}"
        data = None
        for b, name in enumerate(BANDS):
            path = folder / f"{S2_NAMES[name]}.tif"
            if not path.exists():
                data = scene_pixels(index) if data is None else data
                write_cog(path, data[b : b + 1], scene_origin(index), nodata=0)
        item_path = folder / f"S{index:02d}.json"
        item_path.write_text(json.dumps(scene_item(index)))
        items.append(item_path)
    return {"single": single, "items": items}


def scene_item(index: int) -> dict:
    """A STAC item like the public Sentinel-2 COG catalogs': an asset per band on s3://."""
    x0, y0 = scene_origin(index)
    span = SCENE_SIZE * PIXEL
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", x0, y0 - span, x0 + span, y0)
    name = f"S{index:02d}"
    assets = {
        band: {
            "href": f"s3://{BUCKET}/scenes/{name}/{S2_NAMES[band]}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "eo:bands": [{"name": S2_NAMES[band], "common_name": band}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16"}],
        }
        for band in BANDS
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": name,
        "bbox": [west, south, east, north],
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[west, south], [east, south], [east, north], [west, north], [west, south]]
            ],
        },
        "properties": {
            "datetime": (FIRST_DATE + timedelta(days=index)).isoformat().replace("+00:00", "Z"),
            "proj:epsg": 32633,
            "proj:shape": [SCENE_SIZE, SCENE_SIZE],
            "proj:transform": [PIXEL, 0.0, x0, 0.0, -PIXEL, y0],
        },
        "links": [],
        "assets": assets,
    }


S3RVER_VERSION = "3.7.1"
# s3rver knows one key id; with --allow-mismatched-signatures it takes any secret
KEY_IDS = {"s3rver": "S3RVER", "moto": "tileserver-test"}


def s3rver_server(out: Path) -> Server:
    """s3rver on loopback, its objects in files under OUT/s3rver-data (emptied first).

    moto keeps an object in one buffer and copies all of it for every ranged GET: 80 ms for
    16 KiB of a 144 MB COG, 10 ms from s3rver, which reads the range from its file. Against
    moto the cold single-COG figures measured moto, for every server alike.
    """
    prefix = out / "s3rver"
    binary = prefix / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             f"s3rver@{S3RVER_VERSION}"],
            check=True, capture_output=True,
        )  # fmt: skip
    data = out / "s3rver-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    command = [str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"]
    command += ["--allow-mismatched-signatures", "--no-vhost-buckets"]
    return Server(command, port, "s3rver")


def upload(server, folder: Path, key_id: str) -> None:
    """Every file under `folder` into the bucket, at its relative path."""
    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id=key_id,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, path.relative_to(folder).as_posix())


def s3_env(port: int, key_id: str) -> dict:
    """GDAL's S3 settings for the loopback store at `port` (the proxy or the store itself)."""
    return {
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }


# --------------------------------------------------------------------------- services


class Proxy:
    """bench/proxy.py as a process of its own (its work stays off this process's GIL)."""

    def __init__(self, upstream: int, rtt_ms: float, mbps: float):
        command = [sys.executable, str(ROOT / "bench" / "proxy.py")]
        command += ["--upstream", f"127.0.0.1:{upstream}", "--rtt-ms", str(rtt_ms)]
        command += ["--mbps", str(mbps)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())

    def stats(self, reset: bool = False) -> dict:
        path = "reset" if reset else "stats"
        return httpx.get(f"http://127.0.0.1:{self.port}/__proxy__/{path}", timeout=60).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def base_env(proxy_port: int, gdal: dict, key_id: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESERVER_", "AWS_"))}
    env.update(gdal, **s3_env(proxy_port, key_id))
    return env


def tileserver_service(out: Path, catalog: str, env: dict, name: str) -> Service:
    command = tileserver_command() + ["serve", "--workers", "1", "--port", "{port}"]
    command += ["--host", "127.0.0.1", "--catalog", catalog, "--log-level", "warning"]
    env = {
        **env,
        "TILESERVER_DATA_DIR": str(out / "data"),
        "TILESERVER_CACHE_MAX_BYTES": "0",  # every tile rendered: warm is GDAL's caches
        "TILESERVER_REQUEST_LOG": "false",
        "TILESERVER_IMPORT_GRANTS": json.dumps({"admin": [f"s3://{BUCKET}/"]}),
    }
    return Service(name, command, env, ROOT, out / "logs")


def titiler_service(python: Path, out: Path, env: dict) -> Service:
    command = [str(python.parent / "uvicorn"), "titiler.application.main:app"]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    command += ["--log-level", "warning", "--no-access-log"]
    return Service("titiler", command, env, out, out / "logs")


def pgstac_service(out: Path, catalog: str, env: dict) -> Service:
    command = [str(TITILER_PGSTAC_PYTHON), "-m", "uvicorn", "titiler.pgstac.main:app"]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    command += ["--log-level", "warning", "--no-access-log"]
    env = {**env, "DATABASE_URL": catalog, "TITILER_PGSTAC_CACHE_DISABLE": "TRUE"}
    return Service("titiler-pgstac", command, env, out, out / "logs")


def installed_version(python: Path, package: str) -> str | None:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or None


# --------------------------------------------------------------------------- catalog


def ingest(catalog: str, store_port: int, out: Path, key_id: str) -> None:
    """`tileserver db migrate`, then `tileserver import` of both products from the bucket
    (the store directly, not the proxy: not timed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILESERVER_", "AWS_"))}
    env.update(GDAL_ENV, **s3_env(store_port, key_id))
    env["TILESERVER_DATA_DIR"] = str(out / "data")
    commands = [tileserver_command() + ["db", "migrate", "--catalog", catalog]]
    for prefix, product in (("single/", SINGLE_PRODUCT), ("scenes/", SCENE_PRODUCT)):
        command = tileserver_command() + ["import", "--cloud-provider", "aws"]
        command += ["--bucket-name", BUCKET, "--prefix", prefix, "--product", product]
        command += ["--catalog", catalog, "--quiet", "--datetime", FIRST_DATE.isoformat()]
        commands.append(command)
    for command in commands:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        failed = result.returncode != 0
        if not failed and "import" in command:
            failed = bool(json.loads(result.stdout).get("failed"))
        if failed:
            raise RuntimeError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr}")


def catalog_ids(catalog: str, tileserver_url: str) -> dict:
    """The single image's id, tileserver's search over the scenes, pgSTAC's hash of it."""
    images = httpx.get(f"{tileserver_url}/products/{SINGLE_PRODUCT}/images", timeout=120).json()
    image_id = images["images"][0]["id"]
    scenes = httpx.get(f"{tileserver_url}/products/{SCENE_PRODUCT}", timeout=120).json()
    search = httpx.post(
        f"{tileserver_url}/searches", json={"collections": [SCENE_PRODUCT]}, timeout=120
    )
    search.raise_for_status()
    with psycopg.connect(catalog) as conn:
        ((search_hash,),) = conn.execute(
            "SELECT hash FROM pgstac.searches WHERE metadata->>'tileserver:id' = %s",
            (search.json()["id"],),
        ).fetchall()
    return {
        "image_id": image_id,
        "search_id": search.json()["id"],
        "search_hash": search_hash,
        "scene_bands": [b["name"] for b in scenes["bands"]],
    }


# --------------------------------------------------------------------------- tiles


def tile_lists(per_zoom: int) -> dict:
    """Seeded tile lists per (kind, clients): single image and scene overlap."""
    single = {z: tiles_in(single_rect(), z, whole=False) or centre(single_rect(), z) for z in ZOOMS}
    overlap = {
        z: tiles_in(overlap_rect(), z, whole=False) or centre(overlap_rect(), z) for z in ZOOMS
    }
    lists = {}
    for kind, pools in (("single", single), ("mosaic", overlap)):
        for clients in CLIENTS:
            rng = numpy.random.default_rng([SEED, len(kind), clients])
            tiles = [t for z in ZOOMS for t in sample(rng, pools[z], per_zoom)]
            lists[(kind, clients)] = [tiles[i] for i in rng.permutation(len(tiles))]
    return lists


def centre(rect: tuple, zoom: int) -> list:
    """The tile under the rectangle's centre (z10: no tile's centre lies in the overlap)."""
    ((x,), (y,)) = transform(CRS, "EPSG:4326", [(rect[0] + rect[2]) / 2], [(rect[1] + rect[3]) / 2])
    return [WEB_MERCATOR.tile(x, y, zoom)]


def tile_path(prefix: str, tile, query) -> str:
    return f"{prefix}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.png?{urlencode(query)}"


def paths_for(server: str, kind: str, ids: dict, tiles: list) -> list[str]:
    single_url = f"/vsis3/{BUCKET}/single/single.tif"
    if server.startswith("tileserver") and kind == "single":
        return [tile_path(f"/images/{ids['image_id']}", t, TILESERVER_SINGLE) for t in tiles]
    if server.startswith("tileserver"):
        return [tile_path(f"/searches/{ids['search_id']}", t, TILESERVER_MOSAIC) for t in tiles]
    if server == "titiler":
        return [tile_path("/cog", t, [("url", single_url), *TITILER_SINGLE]) for t in tiles]
    return [tile_path(f"/searches/{ids['search_hash']}", t, PGSTAC_MOSAIC) for t in tiles]


def run_case(service: Service, proxy: Proxy, paths: list[str], clients: int) -> dict:
    """Cold pass then warm pass on a fresh server; latency and proxy counts of each."""
    result = {}
    with service:
        for phase in ("cold", "warm"):
            proxy.stats(reset=True)
            figures = drive(service.url, paths, clients)
            counted = proxy.stats()
            tiles = len(paths)
            figures["requests_per_tile"] = round(counted["total_requests"] / tiles, 2)
            figures["requests"] = counted["requests"]
            figures["kib_per_tile"] = round(counted["bytes_down"] / tiles / 1024, 1)
            result[phase] = figures
    return result


def sanity(ours: Service, theirs: Service, ids: dict, kind: str, tiles: list) -> dict:
    """Decoded pixels of the same tiles from both servers."""
    with ours, theirs:
        mine = paths_for(ours.name, kind, ids, tiles)
        peer = paths_for(theirs.name, kind, ids, tiles)
        found = []
        for a, b in zip(mine, peer, strict=True):
            ra, rb = httpx.get(ours.url + a, timeout=120), httpx.get(theirs.url + b, timeout=120)
            if ra.status_code != 200 or rb.status_code != 200:
                found.append({"status": [ra.status_code, rb.status_code], "values": 0})
                continue
            found.append(compare(ra.content, rb.content))
    good = [c for c in found if "status" not in c]
    return {**(summarize(good) if good else {}), "failed": [c for c in found if "status" in c]}


# --------------------------------------------------------------------------- main


def ratio(ours: dict, theirs: dict) -> dict:
    return {
        "tiles_per_s": round(ours["tiles_per_s"] / theirs["tiles_per_s"], 2),
        "p50_speedup": round(theirs["p50_ms"] / ours["p50_ms"], 2),
        "requests_per_tile": [ours["requests_per_tile"], theirs["requests_per_tile"]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="data, catalog, venv, logs (default: a temp folder)")
    parser.add_argument("--titiler-venv", help="venv with titiler (default: OUT/titiler-venv)")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--mbps", type=float, default=400.0, help="per connection; 0: no cap")
    parser.add_argument("--tiles", type=int, default=8, help="tiles per zoom per list")
    parser.add_argument("--json", default=str(ROOT / "bench" / "remote.json"))
    parser.add_argument(
        "--tileserver-gdal",
        choices=("same", "own"),
        default="same",
        help="same: tileserver gets the peers' GDAL settings; own: only its built-in defaults",
    )
    parser.add_argument("--only", choices=("single", "mosaic"), help="one half of the run")
    parser.add_argument("--store", choices=("s3rver", "moto"), default="s3rver")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="remote-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from tests.postgres import _private_cluster

    titiler_python = ensure_titiler(Path(args.titiler_venv or out / "titiler-venv"))
    make_data(out)
    key_id = KEY_IDS[args.store]
    store = (s3rver_server(out) if args.store == "s3rver" else moto_server()).start()
    cluster = _private_cluster()
    admin = next(cluster)
    proxy = None
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE remote_bench")
        catalog = admin.rsplit("/", 1)[0] + "/remote_bench"
        upload(store, out / "bucket", key_id)
        ingest(catalog, store.port, out, key_id)
        proxy = Proxy(store.port, args.rtt_ms, args.mbps)
        peers_env = base_env(proxy.port, GDAL_ENV, key_id)
        ours_env = peers_env if args.tileserver_gdal == "same" else base_env(proxy.port, {}, key_id)
        tileserver = tileserver_service(out, catalog, ours_env, "tileserver")
        with tileserver:
            ids = catalog_ids(catalog, tileserver.url)
        titiler = titiler_service(titiler_python, out, peers_env)
        pgstac = pgstac_service(out, catalog, peers_env)
        lists = tile_lists(args.tiles)
        rng = numpy.random.default_rng([SEED, 99])
        results: dict = {
            "machine": machine(),
            "settings": {
                "rtt_ms": args.rtt_ms,
                "mbps_per_connection": args.mbps,
                "tiles_per_zoom": args.tiles,
                "zooms": ZOOMS,
                "workers": 1,
                "gdal_env": GDAL_ENV,
                "tileserver_gdal": args.tileserver_gdal,
                "store": args.store,
            },
            "versions": {
                "titiler.application": installed_version(titiler_python, "titiler.application"),
                "titiler.pgstac": installed_version(TITILER_PGSTAC_PYTHON, "titiler.pgstac"),
            },
            "ids": ids,
            "cases": {},
        }
        kinds = [("single", titiler), ("mosaic", pgstac)]
        if args.only:
            kinds = [k for k in kinds if k[0] == args.only]
        for kind, peer in kinds:
            check = sample(rng, lists[(kind, 1)], 4)
            results[f"sanity_{kind}"] = sanity(tileserver, peer, ids, kind, check)
            print(f"sanity {kind}: {results[f'sanity_{kind}']}", file=sys.stderr)
            for clients in CLIENTS:
                tiles = lists[(kind, clients)]
                case = {}
                for service in (tileserver, peer):
                    paths = paths_for(service.name, kind, ids, tiles)
                    print(f"{kind} {service.name} {clients} client(s) ...", file=sys.stderr)
                    try:
                        case[service.name] = run_case(service, proxy, paths, clients)
                    except RuntimeError as exc:  # a failed tile: recorded, the run goes on
                        case[service.name] = {"error": str(exc)[:500]}
                        print(f"  failed: {exc}", file=sys.stderr)
                if all("error" not in case[s.name] for s in (tileserver, peer)):
                    case["ratio"] = {
                        phase: ratio(case["tileserver"][phase], case[peer.name][phase])
                        for phase in ("cold", "warm")
                    }
                results["cases"][f"{kind}_{clients}c"] = case
                Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
        results["seconds"] = round(time.perf_counter() - started, 1)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
        print_table(results)
    finally:
        if proxy is not None:
            proxy.stop()
        store.stop()
        next(cluster, None)


def print_table(results: dict) -> None:
    print(
        f"{'case':<14}{'server':<16}{'phase':<6}{'p50':>8}{'p95':>8}{'t/s':>7}{'req/t':>7}"
        f"{'KiB/t':>8}"
    )
    for name, case in results["cases"].items():
        for server, phases in case.items():
            if server == "ratio":
                continue
            if "error" in phases:
                print(f"{name:<14}{server:<16}failed: {phases['error'][:100]}")
                continue
            for phase, f in phases.items():
                print(
                    f"{name:<14}{server:<16}{phase:<6}{f['p50_ms']:>8.1f}{f['p95_ms']:>8.1f}"
                    f"{f['tiles_per_s']:>7.1f}{f['requests_per_tile']:>7.2f}{f['kib_per_tile']:>8.1f}"
                )
        for phase, r in case.get("ratio", {}).items():
            print(
                f"{name:<14}{'ratio':<16}{phase:<6} tiles/s x{r['tiles_per_s']}, "
                f"p50 x{r['p50_speedup']}, req/tile {r['requests_per_tile']}"
            )


if __name__ == "__main__":
    main()
