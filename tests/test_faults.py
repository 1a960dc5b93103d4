"""Fault injection with real components: a bucket that stops, a killed ingest, damaged
image files, and SQLite under concurrent readers and writers.

Nothing is mocked: moto runs as a server process that is really stopped, the ingest is
a real `tileserver ingest` process that gets SIGKILL, files are really cut and deleted,
and the catalog is a SQLite file shared by threads and processes. Expected values come
from what the tests wrote (arrays, names, counts), never from the code under test.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.errors import RasterioIOError
from rasterio.transform import from_origin
from shapely.geometry import box, mapping, shape

from tests.buckets import S3Bucket, moto_server, s3_environment
from tests.conftest import make_settings
from tests.synthetic import TILE, gradient, write, write_raster
from tileserver.app import create_app
from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.catalog.store import NotFound
from tileserver.ingest import vsi
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.opener import DATASETS, forget_cached

ROOT = Path(__file__).resolve().parents[1]


def catalog_rows(path: Path, local_files: bool = True, stats: bool = True) -> dict[str, Image]:
    """Every image of a SQLite catalog file, after checking the file holds no half-written one.

    Read with a plain sqlite3 connection (not the store): the integrity check, foreign
    keys, the R*Tree against the images table, and each document parsed as a full Image
    with (`stats`: ingested images) statistics for every band of its product and
    (`local_files`) files that exist.
    """
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        products = {
            pid: Product.model_validate_json(doc)
            for pid, doc in db.execute("SELECT id, doc FROM products")
        }
        rows = db.execute("SELECT rowid, id, product_id, minx, maxy, doc FROM images").fetchall()
        rtree = dict(db.execute("SELECT id, minx FROM images_rtree").fetchall())
    finally:
        db.close()
    assert set(rtree) == {rowid for rowid, *_ in rows}  # one R*Tree entry per image, no more
    images = {}
    for rowid, image_id, product_id, minx, maxy, doc in rows:
        assert product_id in products, image_id
        image = Image.model_validate_json(doc)
        assert image.id == image_id and image.product_id == product_id
        assert image.bbox[0] == minx and image.bbox[3] == maxy
        assert rtree[rowid] == pytest.approx(minx, abs=1e-4)  # R*Tree keeps float32
        assert image.files, image_id
        if stats:
            assert set(image.band_stats) == {b.name for b in products[product_id].bands}
            for band in image.band_stats.values():
                assert band.min <= band.max and band.percentiles, image_id
        if local_files:
            assert all(Path(f.href).is_file() for f in image.files), image_id
        images[image_id] = image
    return images


def npy(response) -> numpy.ndarray:
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


# --------------------------------------------------------------------- 1. S3 stops mid-import

SCENE_SIZE = 512  # 512 KB a scene: far more than GDAL reads with the header


def scene_pixels(i: int) -> numpy.ndarray:
    """Scene i's pixels: noise (nothing compresses or repeats), never 0 (the nodata)."""
    rng = numpy.random.default_rng(100 + i)
    return rng.integers(1, 60000, size=(1, SCENE_SIZE, SCENE_SIZE), dtype="uint16")


def day(i: int) -> str:
    return f"2024-05-{i + 1:02d}"


def write_scenes(folder: Path, count: int) -> Path:
    """`count` GeoTIFF scenes side by side, one a day, each in its day's folder (the way
    deliveries come: a folder per product), so GDAL's listing of one folder when it opens
    a scene tells it nothing about the others."""
    step = 0.1 / SCENE_SIZE
    for i in range(count):
        write_raster(
            folder / day(i) / f"s{i}.tif",
            scene_pixels(i),
            "EPSG:4326",
            from_origin(10.0 + 0.2 * i, 50.1, step, step),
            nodata=0,
            tags={"ACQUISITIONDATETIME": f"{day(i)}T10:00:00+00:00"},
        )
    return folder


class StopsTheServer:
    """The real store; after its `after`-th put_images the S3 server process is stopped."""

    def __init__(self, store: SQLiteStore, server, after: int):
        self.store, self.server, self.after = store, server, after
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put_images(self, images, **kwargs):
        written = self.store.put_images(images, **kwargs)
        self.calls += 1
        if self.calls == self.after:
            self.server.stop()
        return written


@pytest.fixture()
def own_s3(monkeypatch):
    """A moto server of this test alone (the test stops and restarts it)."""
    server = moto_server().start()
    for name, value in s3_environment(server).items():
        monkeypatch.setenv(name, value)
    vsi.configure_gdal()  # what the CLI and the server do before reading buckets
    yield server
    server.stop()


def test_s3_stops_in_the_middle_of_an_import(tmp_path, own_s3):
    """Five scenes under one prefix; the S3 server process stops after two are registered.

    moto keeps its objects in memory only, so "the service comes back" is a new moto
    process on the same port with the same bucket and objects uploaded again (same
    bytes, same keys), as a real store would come back with its data.
    """
    count, registered_before_stop = 5, 2
    local = write_scenes(tmp_path / "local", count)
    bucket = S3Bucket(own_s3)
    bucket.upload(local, "deliveries/")
    # image names: the path under the prefix (README); the product: the prefix's folder
    ids = [f"deliveries:{day(i)}_s{i}" for i in range(count)]
    hrefs = [f"/vsis3/{bucket.name}/deliveries/{day(i)}/s{i}.tif" for i in range(count)]
    request = ImportRequest(cloud_provider="aws", bucket_name=bucket.name, prefix="deliveries/")
    store = SQLiteStore(tmp_path / "catalog.db")
    hook = StopsTheServer(store, own_s3, after=registered_before_stop)

    result = run_import(hook, request, tmp_path)  # no exception escapes

    assert own_s3.process.poll() is not None  # the server really is gone
    assert hook.calls == registered_before_stop  # the store was not asked to write again
    assert [f["properties"]["up42.data_path"] for f in result.features] == ids[:2]
    assert result.found == count and result.filtered_out == 0
    failed = {f["path"]: f["reason"] for f in result.failed}
    assert set(failed) == set(hrefs[registered_before_stop:])
    print(f"S3 stopped after {hook.calls} registered; failed: {failed}")
    for reason in failed.values():
        # GDAL's own words for what went wrong (a short read, or no connection)
        assert "Read error" in reason or "Could not connect" in reason, reason
        assert "See previous exception" not in reason, reason
    # the catalog holds the two scenes, whole, and nothing of the other three
    images = catalog_rows(tmp_path / "catalog.db", local_files=False)
    assert sorted(images) == ids[:registered_before_stop]
    assert store.count_images("deliveries") == registered_before_stop
    created = {i: images[i].created for i in images}

    # while the store is down: an import cannot list it (400 over HTTP), nothing changes
    with pytest.raises(vsi.StorageError, match=f"cannot list /vsis3/{bucket.name}/deliveries"):
        run_import(store, request, tmp_path)
    assert store.count_images("deliveries") == registered_before_stop
    # a worker without GDAL's cache of the bucket (a fresh process) gets a clear 4xx
    app = create_app(make_settings(tmp_path, cache_max_bytes=0), store=store)
    client = TestClient(app, raise_server_exceptions=False)

    def download(i: int):
        return client.get(f"/images/{ids[i]}/download.npy", params={"scaling": "raw"})

    forget_cached(f"/vsis3/{bucket.name}/")
    down = download(0)
    assert 400 <= down.status_code < 500, down.text
    detail = down.json()["detail"]  # the file by number: no path, not even a bucket's
    assert f"file 0 of image '{ids[0]}'" in detail and "Could not connect" in detail, detail
    assert hrefs[0] not in detail
    print(f"S3 down: {down.status_code} {down.json()['detail']}")
    # GDAL in this process also tried a scene that failed (as a tile request would):
    # the import below must still register it once the store is back
    with pytest.raises(RasterioIOError, match="Could not connect"):
        rasterio.open(hrefs[3])

    # the service comes back
    own_s3.start()
    bucket.client.create_bucket(Bucket=bucket.name)
    bucket.upload(local, "deliveries/")
    # the file that failed during the outage is read again, from the server
    numpy.testing.assert_array_equal(npy(download(0))[0], scene_pixels(0)[0])

    again = run_import(store, request, tmp_path)
    assert again.failed == []
    assert sorted(f["properties"]["up42.data_path"] for f in again.features) == ids
    images = catalog_rows(tmp_path / "catalog.db", local_files=False)
    assert sorted(images) == ids  # each exactly once
    assert store.count_images("deliveries") == count
    for image_id, when in created.items():  # updated in place, not registered anew
        assert images[image_id].created == when
    for i in (1, 3):  # one registered before the stop, one registered after the outage
        numpy.testing.assert_array_equal(npy(download(i))[0], scene_pixels(i)[0])
        assert [f.href for f in images[ids[i]].files] == [hrefs[i]]
    store.close()


# --------------------------------------------------------------------- 2. SIGKILL during ingest

INGEST_SCENES = 40


def write_ingest_scenes(folder: Path) -> list[str]:
    """40 GeoTIFFs of 384 x 384 noise, each 0.01 degree wide; returns their names."""
    names = []
    size = 384
    for i in range(INGEST_SCENES):
        rng = numpy.random.default_rng(i)
        data = rng.integers(1, 60000, size=(1, size, size), dtype="uint16")
        write_raster(
            folder / f"scene{i:02d}.tif",
            data,
            "EPSG:4326",
            from_origin(10.0 + 0.01 * i, 50.01, 0.01 / size, 0.01 / size),
            nodata=0,
            tags={"ACQUISITIONDATETIME": "2024-05-01T10:00:00+00:00"},
        )
        names.append(f"scene{i:02d}")
    return names


def ingest_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "tileserver.cli", "ingest", str(folder), "--product", "p"]


def registered(db_path: Path) -> int | None:
    """Images in the catalog, read through a read-only connection (None: not there yet)."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # no file or no table yet
        return None


def test_sigkill_during_ingest_leaves_a_consistent_catalog(tmp_path):
    folder = tmp_path / "scenes"
    names = write_ingest_scenes(folder)
    db_path = tmp_path / "catalog.db"
    env = {
        **os.environ,
        "TILESERVER_CATALOG_URL": f"sqlite:///{db_path}",
        "TILESERVER_DATA_DIR": str(tmp_path / "data"),
    }
    process = subprocess.Popen(
        [*ingest_command(folder), "--quiet"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline and process.poll() is None:
            seen = registered(db_path)
            if seen is not None and seen >= 3:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the ingest ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    images = catalog_rows(db_path)  # integrity, R*Tree, every image whole
    assert seen is not None and 3 <= seen <= len(images) < INGEST_SCENES
    assert set(images) <= {f"p:{n}" for n in names}
    store = SQLiteStore(db_path)
    assert store.count_images("p") == len(images)
    assert [b.name for b in store.get_product("p").bands] == ["b1"]
    store.close()
    print(f"SIGKILL: {seen} images seen by the poller, {len(images)} in the catalog after")

    rerun = subprocess.run(
        [*ingest_command(folder), "--quiet"], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    answer = json.loads(rerun.stdout)
    assert answer == {"registered": INGEST_SCENES, "failed": []}
    images = catalog_rows(db_path)
    assert sorted(images) == [f"p:{n}" for n in names]  # each exactly once
    store = SQLiteStore(db_path)
    assert store.count_images("p") == INGEST_SCENES
    store.close()


# --------------------------------------------------------------------- 3. damaged image files

TILE_PATH = f"tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}"
RAW = {"scaling": "raw", "bands": "b1,b2,b3"}
GOOD_DAY = datetime(2024, 1, 1, 10, tzinfo=UTC)
BAD_DAY = datetime(2024, 2, 1, 10, tzinfo=UTC)  # newer: on top of the mosaic


@pytest.fixture()
def damaged(tmp_path):
    """Two images on the synthetic tile, `good` and `bad`, registered by a real import."""
    data = {"good": gradient("uint16", 3, step=1), "bad": gradient("uint16", 3, step=2)}
    for name, when in (("good", GOOD_DAY), ("bad", BAD_DAY)):
        path = write(tmp_path / name / f"{name}.tif", data[name])
        store = SQLiteStore(tmp_path / "catalog.db")
        request = ImportRequest(cloud_provider="file", bucket_name=str(path), product="p")
        result = run_import(store, request, tmp_path, when=when)
        assert [f["id"] for f in result.features] == [name] and result.failed == []
        store.close()
    store = SQLiteStore(tmp_path / "catalog.db")
    # no tile cache: every request reads the files (chips: a new size each time, below)
    app = create_app(make_settings(tmp_path, cache_max_bytes=0), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, data, tmp_path / "bad" / "bad.tif"
    store.close()


def test_damaged_files_give_clear_errors_and_recover(damaged):
    client, data, bad = damaged
    original = bad.read_bytes()
    chip_sizes = iter(range(3000, 1000, -100))  # chips are cached by size: never repeat one
    bounds = shape(client.get("/images/p:bad").json()["geometry"]).centroid

    def tile(name: str, **params):
        return client.get(f"/images/p:{name}/{TILE_PATH}.npy", params={**RAW, **params})

    def good_still_served():
        numpy.testing.assert_array_equal(npy(tile("good"))[:3], data["good"])

    def chips():
        return client.get(
            "/chips/raw",
            params={
                "lon": bounds.x,
                "lat": bounds.y,
                "start_date": "2024-01-15",  # only the bad image's date
                "end_date": "2024-02-15",
                "product": "p",
                "band": "b1",
                "chipsize": next(chip_sizes),
            },
        )

    def bad_is_whole():
        numpy.testing.assert_array_equal(npy(tile("bad"))[:3], data["bad"])
        assert chips().status_code == 200
        downloaded = npy(client.get("/images/p:bad/download.npy", params=RAW))
        numpy.testing.assert_array_equal(downloaded[:3], data["bad"])

    good_still_served()
    bad_is_whole()
    assert DATASETS.idle() >= 1  # the pool keeps the files open between requests

    def answers(words: str) -> dict[str, int]:
        """Every endpoint over the damaged image: status codes; 4xx details name the file
        and the problem. After each, the good image's tile (same worker threads)."""
        requests = {
            "tile": lambda: tile("bad"),
            "png": lambda: client.get(f"/images/p:bad/{TILE_PATH}.png"),
            "tilejson": lambda: client.get("/images/p:bad/tilejson.json"),
            "download": lambda: client.get("/images/p:bad/download.npy", params=RAW),
            "geotiff": lambda: client.get("/images/p:bad/download.tif", params=RAW),
            "raster_info": lambda: client.get("/images/p:bad/raster_info"),
            "chips": chips,
        }
        codes = {}
        for what, request in requests.items():
            response = request()
            codes[what] = response.status_code
            assert response.status_code < 500, (what, response.text)
            if response.status_code >= 400:
                detail = response.json()["detail"]
                assert words in detail and ("image 'p:bad'" in detail or "image file" in detail)
                assert str(bad.parent) not in detail, (what, detail)  # no server path
            good_still_served()
        print(words, codes)
        return codes

    # cut to half: the header is there, the lower rows are not
    bad.write_bytes(original[: len(original) // 2])
    cut = answers("Read error")
    assert cut == {
        "tile": 409,
        "png": 409,
        "tilejson": 200,  # made from the header: it does not read pixels
        "download": 409,
        "geotiff": 409,
        "raster_info": 200,  # the header too
        "chips": 409,
    }, cut

    bad.write_bytes(original)
    bad_is_whole()

    # garbage: not a TIFF any more (the opener finds no imagery driver for it: a 409)
    bad.write_bytes(b"this is not a tiff " * 1000)
    garbage = answers("not a raster format this server opens")
    assert garbage == {**cut, "tilejson": 409, "raster_info": 409}, garbage

    bad.write_bytes(original)
    bad_is_whole()

    # deleted
    bad.unlink()
    gone = answers("No such file or directory")
    # 424: app.py's answer to a RasterioIOError; 409: ImageNotReadable, what reads raise
    assert gone == {**cut, "tilejson": 424, "raster_info": 409}, gone

    # a mosaic of both, newest first: the bad image is on top. Its zooms cannot be read, so
    # the layer falls back to the grid's (not remembered); the tiles it paints first fail
    newest = client.post("/searches", json={"collections": ["p"]}).json()["id"]
    layer = client.get(f"/searches/{newest}/tilejson.json", params=RAW)
    assert layer.status_code == 200, layer.text
    assert (layer.json()["minzoom"], layer.json()["maxzoom"]) == (0, 24)
    mosaic = client.get(f"/searches/{newest}/{TILE_PATH}.npy", params=RAW)
    assert mosaic.status_code == 409, mosaic.text
    assert "image 'p:bad'" in mosaic.json()["detail"], mosaic.text
    good_still_served()
    # oldest first: the good image fills the tile, the bad one is never read
    oldest = client.post(
        "/searches",
        json={"collections": ["p"], "sortby": [{"field": "datetime", "direction": "asc"}]},
    ).json()["id"]
    good_first = client.get(f"/searches/{oldest}/{TILE_PATH}.npy", params=RAW)
    numpy.testing.assert_array_equal(npy(good_first)[:3], data["good"])
    # ... unless every image is read: then the bad file fails the tile, it is not skipped
    highest = client.get(
        f"/searches/{oldest}/{TILE_PATH}.npy", params={**RAW, "pixel_selection": "highest"}
    )
    assert highest.status_code == 409, highest.text
    assert "image 'p:bad'" in highest.json()["detail"], highest.text
    good_still_served()

    bad.write_bytes(original)
    bad_is_whole()
    mosaic = npy(client.get(f"/searches/{newest}/{TILE_PATH}.npy", params=RAW))
    numpy.testing.assert_array_equal(mosaic[:3], data["bad"])  # the newest on top
    layer = client.get(f"/searches/{newest}/tilejson.json", params=RAW).json()
    assert layer["maxzoom"] < 24  # the fallback was not remembered: the image's own zooms
    highest = npy(
        client.get(
            f"/searches/{oldest}/{TILE_PATH}.npy", params={**RAW, "pixel_selection": "highest"}
        )
    )
    numpy.testing.assert_array_equal(highest[:3], data["bad"])  # step 2 > step 1 everywhere


# --------------------------------------------------------------------- 4. SQLite under load

BANDS = [{"name": "b1", "data_type": "Byte", "data_range": [0, 255]}]


def an_image(name: str, product: str = "p", x: float = 0.0) -> Image:
    return Image(
        name=name,
        product_id=product,
        acquired=datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=x),
        geometry=mapping(box(x, 0, x + 1, 1)),
        files=[{"href": f"/data/{name}.tif", "size": 1000}],
    )


@pytest.fixture()
def wal_store(tmp_path):
    store = SQLiteStore(tmp_path / "catalog.db")
    store.put_product(Product(id="p", bands=BANDS))
    store.put_product(Product(id="seed", bands=BANDS))
    store.put_images([an_image("one", "seed")])
    yield store
    store.close()


def test_concurrent_writers_and_readers_on_one_file(wal_store):
    """4 writer threads x 50 images (one transaction each), 4 reader threads in loops."""
    store = wal_store
    writers_running = threading.Event()
    writers_running.set()
    errors: list[BaseException] = []
    reads_during_writes = [0] * 4
    counts_seen: set[int] = set()
    query = SearchQuery(collections=["p"], limit=5)
    start = threading.Barrier(8)

    def write_images(w: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(50):
                store.put_images([an_image(f"w{w}-{i:02d}", x=w * 50 + i)])
        except BaseException as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(exc)

    def read_images(r: int) -> None:
        try:
            start.wait(timeout=10)
            while writers_running.is_set():
                page = store.search(query)
                assert len(page.images) <= 5
                assert store.get_image("seed:one").name == "one"
                assert [p.id for p in store.list_products()] == ["p", "seed"]
                counts_seen.add(store.count_images("p"))
                if writers_running.is_set():
                    reads_during_writes[r] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write_images, args=(w,)) for w in range(4)]
    readers = [threading.Thread(target=read_images, args=(r,)) for r in range(4)]
    for thread in threads + readers:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    writers_running.clear()
    for thread in readers:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads + readers)
    assert errors == []
    assert store.count_images("p") == 200
    assert len(store.search(SearchQuery(collections=["p"], limit=250)).images) == 200
    assert all(n > 0 for n in reads_during_writes), reads_during_writes
    between = sorted(n for n in counts_seen if 0 < n < 200)
    assert between, counts_seen  # readers saw the catalog grow, not only before and after
    print(f"WAL: reads during writes {reads_during_writes}, {len(between)} counts between")
    catalog_rows(Path(store.path), local_files=False, stats=False)


INSERT = (
    "INSERT INTO images (id, product_id, name, acquired, minx, miny, maxx, maxy, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def image_row(image: Image) -> list:
    """The values of INSERT for `image` (what the store writes, minus what no read needs)."""
    return [image.id, image.product_id, image.name, "2024-05-01T00:00:00Z", *image.bbox,
            image.model_dump_json()]  # fmt: skip


def uncommitted_insert(db: sqlite3.Connection, image: Image) -> None:
    """BEGIN IMMEDIATE and insert one image row, as a writer in the middle of its work."""
    db.execute("BEGIN IMMEDIATE")
    db.execute(INSERT, image_row(image))


def run_in_thread(target) -> tuple[threading.Thread, list]:
    """Start `target` in a thread; the list gets its result or its exception."""
    outcome: list = []

    def run():
        try:
            outcome.append(target())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def check_reads_pass_a_held_write_lock(store: SQLiteStore, hidden: str) -> None:
    """Reads complete while another connection holds the write lock, without its row."""

    def read():
        try:
            store.get_image(hidden)
        except NotFound:
            pass
        else:
            raise AssertionError("an uncommitted image is visible")
        page = store.search(SearchQuery(collections=["p"], limit=100))
        return store.count_images("p"), [i.id for i in page.images]

    thread, outcome = run_in_thread(read)
    thread.join(timeout=10)  # liveness: a blocked reader would hang here
    assert not thread.is_alive(), "a read waited for the write transaction"
    count, ids = outcome[0]
    assert count == 0 and ids == []


def check_second_writer_waits(store: SQLiteStore, commit) -> None:
    """A writer through the store waits for the held lock and succeeds after the commit."""
    thread, outcome = run_in_thread(lambda: store.put_images([an_image("second")]))
    thread.join(timeout=0.5)
    assert thread.is_alive() and outcome == []  # still waiting on the lock, no error
    commit()
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(outcome[0], list), outcome
    assert store.count_images("p") == 2
    assert {i.name for i in store.search(SearchQuery(collections=["p"])).images} == {
        "held",
        "second",
    }


def test_a_held_write_transaction_blocks_no_reader(wal_store, tmp_path):
    store = wal_store
    other = sqlite3.connect(store.path, isolation_level=None, timeout=30)
    held = an_image("held")
    uncommitted_insert(other, held)
    try:
        check_reads_pass_a_held_write_lock(store, held.id)
        check_second_writer_waits(store, lambda: other.execute("COMMIT"))
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    catalog_rows(Path(store.path), local_files=False, stats=False)


HOLDER = textwrap.dedent(  # argv: catalog, INSERT, its values as JSON
    """
    import json, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    db.execute("BEGIN IMMEDIATE")
    db.execute(sys.argv[2], json.loads(sys.argv[3]))
    print("holding", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    print("committed", flush=True)
    """
)
WRITER = textwrap.dedent(
    """
    import sys
    from tileserver.catalog.sqlite import SQLiteStore
    from tests.test_faults import an_image
    store = SQLiteStore(sys.argv[1])
    for i in range(100):
        store.put_images([an_image(f"proc-{i:03d}", x=i)])
    store.close()
    """
)


def test_other_processes_write_while_this_one_reads(wal_store):
    """The same two checks with the lock held by another process, then a writer process."""
    store = wal_store
    held = an_image("held")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store.path, INSERT, json.dumps(image_row(held))],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        check_reads_pass_a_held_write_lock(store, held.id)

        def commit():
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "committed"

        check_second_writer_waits(store, commit)
        assert holder.wait(timeout=10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)

    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.path], cwd=ROOT)
    seen: set[int] = set()
    reads = 0
    try:
        while writer.poll() is None:
            seen.add(store.count_images("p"))
            store.search(SearchQuery(collections=["p"], limit=10))
            reads += 1
            time.sleep(0.001)  # leave the shared cores to the writer
    finally:
        assert writer.wait(timeout=60) == 0
    assert store.count_images("p") == 102
    assert reads > 0 and any(2 < n < 102 for n in seen), sorted(seen)
    print(f"processes: {reads} reads while the writer process ran, saw {len(seen)} counts")
    catalog_rows(Path(store.path), local_files=False, stats=False)
