"""Every request has bounded time, tested the way an attacker with an ordinary key would try.

- an image whose URL accepts connections and never answers, asked for 45 times at once,
  must not take the server: /healthz and local tiles keep answering, the stalled requests
  end with 503/504 within the timeouts;
- a slow request stops at its deadline (504 with a detail) and its work stops too;
- a client that disconnects stops its request's work;
- a single-image tile far below the image's zooms costs what the image's pixels in it cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy
import pytest
import rasterio
from fastapi.testclient import TestClient
from morecantile import tms as tms_registry
from rasterio.transform import from_bounds
from rasterio.warp import reproject
from rasterio.warp import transform as transform_points
from starlette.concurrency import run_in_threadpool

import tileserver.render.mosaic as mosaic_module
from tests.conftest import DEMO_IMAGE, DEMO_TILE, LiveServer, free_port, make_settings
from tileserver import deadline
from tileserver.app import create_app
from tileserver.catalog.models import ImageFile
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.ingest import vsi
from tileserver.layers import ImageLayer
from tileserver.opener import ContextPool
from tileserver.render.pipeline import ImageFormat, RenderParams, encode_image
from tileserver.render.reader import image_reader, read_tile

WEB = tms_registry.get("WebMercatorQuad")
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- units


def test_checkpoints_raise_after_the_deadline_and_after_a_cancel():
    with deadline.running(deadline.Deadline(60)) as current:
        deadline.check()  # in time
        current.cancel(deadline.CLIENT_GONE)
        with pytest.raises(deadline.DeadlineExceeded, match="disconnected"):
            deadline.check()
    with deadline.running(deadline.Deadline(0.01)):
        time.sleep(0.02)
        with pytest.raises(deadline.DeadlineExceeded, match="longer than the server's limit"):
            deadline.check()
    deadline.check()  # outside a request: no limit


def test_the_deadline_reaches_pool_threads_and_starlette_threads():
    seen = []

    async def in_request() -> None:
        with deadline.running(deadline.Deadline(60)) as current:
            seen.append(await run_in_threadpool(deadline.current))
            with ContextPool(max_workers=2) as pool:
                seen.extend(pool.map(lambda _: deadline.current(), range(2)))
            assert all(found is current for found in seen)
            current.cancel("stop")  # the same object: a cancel reaches the threads
            with ContextPool(max_workers=1) as pool, pytest.raises(deadline.DeadlineExceeded):
                pool.submit(deadline.check).result()

    asyncio.run(in_request())
    assert len(seen) == 3


def test_remote_paths_take_slots_and_local_files_never_wait(tmp_path):
    slots = deadline.RemoteSlots(size=1, wait=0.2)
    local_vrt = tmp_path / "remote.vrt"
    local_vrt.write_text("<VRTDataset><SourceFilename>/vsis3/b/k.tif</SourceFilename>")
    assert deadline.is_remote("/vsicurl/http://127.0.0.1:1/x.tif")
    assert deadline.is_remote("https://example.com/x.tif")
    assert deadline.is_remote(str(local_vrt))  # a local VRT over bucket files is remote
    assert not deadline.is_remote(str(tmp_path / "x.tif"))
    with slots.slot("/vsis3/b/a.tif"):
        with slots.slot(str(tmp_path / "x.tif")):  # local: no slot needed
            pass
        started = time.monotonic()
        with pytest.raises(deadline.RemoteBusy, match="remote reads"):
            with slots.slot("/vsigs/b/c.tif"):
                pass
        assert time.monotonic() - started < 1
    with slots.slot("/vsigs/b/c.tif"):  # released
        pass


def test_gdal_and_obstore_time_out_by_default(monkeypatch):
    for name in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT", "GDAL_HTTP_MAX_RETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "7")  # the environment wins
    vsi.configure_gdal()
    assert os.environ["GDAL_HTTP_TIMEOUT"] == "7"
    assert float(os.environ["GDAL_HTTP_CONNECTTIMEOUT"]) > 0
    assert int(os.environ["GDAL_HTTP_MAX_RETRY"]) >= 0
    options = vsi.client_options(allow_http=False)
    assert options["timeout"] == "7s" and options["connect_timeout"].endswith("s")
    assert vsi.retry_config()["retry_timeout"].total_seconds() < 60


@pytest.fixture()
def stall_server():
    """A loopback port that accepts connections and never answers: its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(200)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_obstore_gives_up_on_a_server_that_never_answers(stall_server, monkeypatch):
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{stall_server}")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    started = time.monotonic()
    with pytest.raises(vsi.StorageError):
        vsi.read_bytes("/vsis3/bucket/scene.xml")
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------ the stalled bucket


def copy_demo_catalog(demo_dir: Path, tmp_path: Path) -> SQLiteStore:
    """A catalog of our own holding the demo product (sqlite's backup: WAL-safe)."""
    source = sqlite3.connect(demo_dir / "catalog.db")
    target = sqlite3.connect(tmp_path / "catalog.db")
    source.backup(target)
    source.close()
    target.close()
    return SQLiteStore(tmp_path / "catalog.db")


def register_stalled_image(store: SQLiteStore, port: int) -> str:
    """The demo image again, in an operator's product (no owners), its files on `port`."""
    demo = store.get_image(DEMO_IMAGE)
    product = store.get_product(demo.product_id)
    store.create_product(product.model_copy(update={"id": "operator-stall", "owners": []}))
    href = f"/vsicurl/http://127.0.0.1:{port}/x.tif"
    image = demo.model_copy(
        update={
            "id": "",
            "product_id": "operator-stall",
            "files": [ImageFile(href=href) for _ in demo.files],
        }
    )
    image = image.model_validate(image.model_dump())
    store.put_images([image])
    return image.id


def demo_tiles(count: int) -> list[tuple[int, int, int]]:
    """Distinct tiles inside the demo image (so the tile cache never answers for them)."""
    z, x, y = DEMO_TILE
    children = [(z + 1, 2 * x + dx, 2 * y + dy) for dx in (0, 1) for dy in (0, 1)]
    grand = [(z + 2, 4 * x + dx, 4 * y + dy) for dx in range(4) for dy in range(4)]
    return ([DEMO_TILE, *children, *grand] * count)[:count]


@contextlib.contextmanager
def serve(tmp_path: Path, **environment: str):
    """`tileserver serve` in a process of its own on loopback (the load stays outside it)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TILESERVER_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "TILESERVER_DATA_DIR": str(tmp_path),
        **environment,
    }
    command = [sys.executable, "-c", "from tileserver.cli import cli; cli()", "serve"]
    command += ["--port", str(port), "--log-level", "warning"]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_a_bucket_that_never_answers_does_not_take_the_server(
    demo_dir, demo_store, tmp_path, stall_server
):
    store = copy_demo_catalog(demo_dir, tmp_path)
    stalled = register_stalled_image(store, stall_server)
    store.close()
    small = {
        "TILESERVER_REQUEST_TIMEOUT": "3",
        "TILESERVER_REMOTE_READS": "8",
        "TILESERVER_REMOTE_READ_WAIT": "1",
        "TILESERVER_READER_THREADS": "1",
        "GDAL_HTTP_TIMEOUT": "2",
        "GDAL_HTTP_CONNECTTIMEOUT": "2",
        "GDAL_HTTP_MAX_RETRY": "0",
        # the operator lets the server fetch from that (internal) host: no URL is otherwise
        "TILESERVER_IMPORT_GRANTS": json.dumps({"admin": [f"http://127.0.0.1:{stall_server}/"]}),
    }
    statuses: list[tuple[int, float, str]] = []
    probes: list[tuple[str, int, float]] = []
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    with serve(tmp_path, **small) as url, httpx.Client(limits=limits, timeout=30) as client:
        stop = threading.Event()

        def stalled_tile(i: int) -> None:
            started = time.monotonic()
            z, x, y = DEMO_TILE
            tile = f"{url}/images/{stalled}/tiles/WebMercatorQuad/{z}/{x}/{y + i % 3}.png"
            try:
                response = client.get(tile)
                statuses.append((response.status_code, time.monotonic() - started, response.text))
            except httpx.HTTPError as exc:
                statuses.append((0, time.monotonic() - started, repr(exc)))

        def probe() -> None:
            tiles = iter(demo_tiles(1000))
            while not stop.is_set():
                started = time.monotonic()
                health = client.get(f"{url}/healthz", timeout=5)
                probes.append(("healthz", health.status_code, time.monotonic() - started))
                z, x, y = next(tiles)
                started = time.monotonic()
                tile = client.get(
                    f"{url}/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.png", timeout=10
                )
                probes.append(("tile", tile.status_code, time.monotonic() - started))
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.3)
        with ThreadPoolExecutor(max_workers=45) as pool:
            list(pool.map(stalled_tile, range(45)))
        time.sleep(0.5)
        stop.set()
        prober.join()

    codes = sorted({status for status, _, _ in statuses})
    assert len(statuses) == 45
    seen = sorted((s, round(e, 2), t[:150]) for s, e, t in statuses)
    assert set(codes) <= {409, 503, 504}, seen
    assert 503 in codes  # the remote-read slots were all taken: the rest were refused at once
    # those holding a slot end at GDAL's timeout (409, saying so) or at the deadline (504)
    assert set(codes) & {409, 504}, seen
    assert all("timed out" in t for s, _, t in statuses if s == 409), seen
    slowest = max(elapsed for _, elapsed, _ in statuses)
    assert slowest < 3 + 2.5, slowest  # the deadline, and a margin for a loaded machine
    for _, _, text in statuses:
        assert "detail" in text and "127.0.0.1" not in text and "/vsicurl" not in text
    health = [p for p in probes if p[0] == "healthz"]
    tiles = [p for p in probes if p[0] == "tile"]
    assert len(health) >= 3 and len(tiles) >= 3
    assert all(status == 200 and elapsed < 1 for _, status, elapsed in health), health
    assert all(status == 200 for _, status, _ in tiles), tiles
    print(
        f"stalled: {len(statuses)} requests, codes {codes}, slowest {slowest:.2f} s; "
        f"healthz {len(health)} probes, max {max(e for *_, e in health):.3f} s; "
        f"local tiles {len(tiles)}, max {max(e for *_, e in tiles):.3f} s"
    )


# ----------------------------------------------------------- deadline and disconnects


@pytest.fixture()
def slow_reads(monkeypatch):
    """Each image a mosaic reads takes 0.3 s; the list of reads started."""
    started: list[float] = []
    real = mosaic_module.read_bands

    def slow(*args, **kwargs):
        started.append(time.monotonic())
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(mosaic_module, "read_bands", slow)
    return started


def mean_mosaic_url(client, base: str = "") -> str:
    """A mosaic tile over every demo image that reads them all (pixel_selection=mean)."""
    response = client.post(f"{base}/searches", json={"collections": ["sentinel-2-l2a"]})
    assert response.status_code == 200, response.text
    search_id = response.json()["id"]
    z, x, y = DEMO_TILE
    return f"{base}/searches/{search_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?pixel_selection=mean"


def test_a_slow_request_ends_at_its_deadline_and_its_work_stops(
    demo_dir, demo_store, tmp_path, slow_reads
):
    settings = make_settings(
        demo_dir, request_timeout=1.0, reader_threads=1, mosaic_pyramid=False
    )  # the pyramid builder would read the images too, on its own thread
    with TestClient(create_app(settings, store=demo_store)) as client:
        url = mean_mosaic_url(client)
        started = time.monotonic()
        response = client.get(url)
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        detail = response.json()["detail"]
        assert "longer than the server's limit of 1 s" in detail and "/" not in detail
        assert elapsed < 1.0 + 1.5  # answered at the deadline, not when the work ended
        time.sleep(1.0)  # the worker reaches its next checkpoint and stops
        assert 2 <= len(slow_reads) <= 5, len(slow_reads)  # 8 images, not all read
        assert client.get("/healthz").status_code == 200


def test_a_client_that_disconnects_stops_the_work(demo_dir, demo_store, slow_reads):
    settings = make_settings(
        demo_dir, request_timeout=30, reader_threads=1, mosaic_pyramid=False
    )  # the pyramid builder would read the images too, on its own thread
    with LiveServer(create_app(settings, store=demo_store)) as server:
        url = mean_mosaic_url(httpx.Client(), server.url)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, timeout=0.5)  # the client gives up and closes the connection
        gone = time.monotonic()
        time.sleep(2.0)  # without the cancel, the 8 reads would take 2.4 s
        after = [t for t in slow_reads if t > gone + 0.35]  # started after the disconnect
        assert len(slow_reads) <= 4 and not after, (len(slow_reads), after)


# ----------------------------------------------------------------------- low zooms


def demo_reader_tile(demo_store, z: int, x: int, y: int, partial: bool | None):
    image = demo_store.get_image(DEMO_IMAGE)
    with image_reader(image, image.files[0].href, tms=WEB) as reader:
        return read_tile(reader, x, y, z, 256, (1, 2, 3), "nearest", partial=partial)


def image_tiles(demo_store, z: int):
    west, south, east, north = demo_store.get_image(DEMO_IMAGE).bbox
    return list(WEB.tiles(west, south, east, north, [z]))


@pytest.mark.parametrize("z", [7, 8, 9, 10])
def test_partial_tiles_match_rio_tiler_where_both_are_cheap(demo_store, z):
    for tile in image_tiles(demo_store, z):
        new = demo_reader_tile(demo_store, z, tile.x, tile.y, partial=True)
        old = demo_reader_tile(demo_store, z, tile.x, tile.y, partial=False)
        old_mask, new_mask = numpy.ma.getmaskarray(old.array), numpy.ma.getmaskarray(new.array)
        same = (old_mask == new_mask) & (old_mask | (old.array.data == new.array.data))
        assert same.mean() >= 0.99, (tile, same.mean())
        assert (~new_mask).any()


def coarsest_overview_reference(href: str, z: int, x: int, y: int):
    """Independently: the valid tile pixels (GDAL warp of the image's coarsest overview,
    which GDAL reads far below the image's zooms), and for each valid pixel the values of
    the overview pixels whose centres fall within one pixel of it (nearest picks one)."""
    left, bottom, right, top = WEB.xy_bounds(x, y, z)
    size = (right - left) / 256
    with rasterio.open(href) as full:
        level = len(full.overviews(1)) - 1
    with rasterio.open(href, overview_level=level) as src:
        valid = numpy.zeros((256, 256), dtype="uint8")
        reproject(
            src.dataset_mask(),
            valid,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=from_bounds(left, bottom, right, top, 256, 256),
            dst_crs=WEB.rasterio_crs,
            resampling=rasterio.enums.Resampling.nearest,
        )
        values = src.read((1, 2, 3))
        rows, cols = numpy.mgrid[0 : src.height, 0 : src.width]
        xs, ys = src.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
        wx, wy = transform_points(src.crs, WEB.rasterio_crs, xs, ys)
    tile_cols = numpy.floor((numpy.array(wx) - left) / size).astype(int)
    tile_rows = numpy.floor((top - numpy.array(wy)) / size).astype(int)
    near: dict[tuple[int, int], list] = {}
    flat = values.reshape(3, -1)
    for i, (r, c) in enumerate(zip(tile_rows, tile_cols, strict=True)):
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                near.setdefault((r + dr, c + dc), []).append(tuple(flat[:, i]))
    return valid > 0, near


@pytest.mark.parametrize("z", [0, 1, 2, 3, 4, 5, 6])
def test_low_zoom_tiles_are_right(demo_store, z):
    image = demo_store.get_image(DEMO_IMAGE)
    checked = 0
    for tile in image_tiles(demo_store, z):
        got = demo_reader_tile(demo_store, z, tile.x, tile.y, partial=None)
        valid, near = coarsest_overview_reference(image.files[0].href, z, tile.x, tile.y)
        mask = numpy.ma.getmaskarray(got.array)[0]
        assert (valid == ~mask).mean() >= 0.99
        rows, cols = numpy.nonzero(~mask)
        found = [
            tuple(got.array.data[:, r, c]) in near.get((r, c), ())
            for r, c in zip(rows, cols, strict=True)
        ]
        checked += len(found)
        assert not found or numpy.mean(found) >= 0.99, (tile, numpy.mean(found))
    assert z < 4 or checked > 0  # the image is a pixel or more from z4 on


def test_low_zoom_png_tiles_render(demo_store):
    """Every zoom down to 0 renders (their cost is bounded in tests/test_lowzoom.py by the
    bytes read, not by a clock)."""
    image = demo_store.get_image(DEMO_IMAGE)
    product = demo_store.get_product(image.product_id)
    west, south, east, north = image.bbox
    for z in range(0, 7):
        tile = WEB.tile((west + east) / 2, (south + north) / 2, z)
        rendered = ImageLayer(image, product).tile(WEB, tile.x, tile.y, z, 256, RenderParams())
        content = encode_image(rendered, ImageFormat.png)
        assert content.startswith(b"\x89PNG")


def test_tilejson_and_wmts_of_an_image_start_at_zoom_0(client):
    doc = client.get(f"/images/{DEMO_IMAGE}/tilejson.json").json()
    assert doc["minzoom"] == 0 and doc["maxzoom"] >= 12
    wmts = client.get(f"/images/{DEMO_IMAGE}/WMTSCapabilities.xml")
    assert wmts.status_code == 200 and "<ows:Identifier>0</ows:Identifier>" in wmts.text
