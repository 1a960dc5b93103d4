"""The materialized low-zoom pyramid of a registered search (tileserver/search_pyramid.py).

The scenes of tests/test_mosaic_lowzoom.py (16 overlapping constant scenes, imported); the
reference is the same full-resolution `first` mosaic painted with numpy and warped to the
tile by GDAL, independent of the server.
"""

from __future__ import annotations

import io
import time

import numpy
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.test_mosaic_lowzoom import (
    FULL,
    GRID,
    SIZE,
    WEB,
    reference_tile,
    scenes,
    write_scenes,
)
from tileserver.app import create_app
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.opener import Confinement, confined, reading
from tileserver.search_pyramid import MAX_BUILDERS, PyramidFile

FRAME = 8


def painted(order) -> numpy.ndarray:
    """The full-resolution mosaic of (row, col, value) scenes in paint order, nodata 0."""
    mosaic = numpy.zeros((FULL, FULL), dtype="uint16")
    for r, c, value, _ in order:
        inner = mosaic[r + FRAME : r + SIZE - FRAME, c + FRAME : c + SIZE - FRAME]
        inner[inner == 0] = value
    return mosaic


def newest_first(skip: set[int] = frozenset()) -> list:
    return [
        s
        for i, s in sorted(enumerate(scenes()), key=lambda p: p[1][3], reverse=True)
        if i not in skip
    ]


@pytest.fixture()
def pyramid_app(tmp_path):
    write_scenes(tmp_path / "in")
    store = SQLiteStore(tmp_path / "catalog.db")
    confinement = Confinement(data_dir=tmp_path)
    request = ImportRequest(cloud_provider="file", bucket_name=str(tmp_path / "in"), product="pyr")
    with confined(confinement), reading(confinement.operator()):
        result = run_import(store, request, tmp_path, confinement=confinement)
    assert not result.failed and len(result.features) == GRID * GRID, result.failed
    app = create_app(make_settings(tmp_path, cache_max_bytes=0), store=store)
    with TestClient(app) as client:
        yield client, app, store, tmp_path
    store.close()


def register(client, app) -> str:
    search = client.post("/searches", json={"collections": ["pyr"]}).json()["id"]
    app.state.pyramids.wait()
    return search


def tile_pixels(client, search, z, x, y, **params) -> numpy.ndarray | None:
    response = client.get(
        f"/searches/{search}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy",
        params={"scaling": "raw", **params},
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    pixels = numpy.load(io.BytesIO(response.content))
    return numpy.where(pixels[-1] == 255, pixels[0], 0).astype("int64")


def agreement(got: numpy.ndarray, want: numpy.ndarray) -> tuple[float, float]:
    """Share of pixels equal to the reference at the pixel or one of its 8 neighbours, and
    share exactly equal."""
    padded = numpy.pad(want.astype("int64"), 1)
    near = numpy.zeros(got.shape, dtype=bool)
    for dr in range(3):
        for dc in range(3):
            near |= padded[dr : dr + 256, dc : dc + 256] == got
    return near.mean(), (want == got).mean()


def test_pyramid_tiles_agree_with_the_full_resolution_mosaic(pyramid_app):
    client, app, _, _ = pyramid_app
    search = register(client, app)
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    assert low["served_by"] == "pyramid" and low["state"] == "ready", low
    assert low["up_to_date"] and low["images"] == GRID * GRID and low["zooms"][0] == 0
    base = low["zooms"][1]
    tilejson = client.get(f"/searches/{search}/tilejson.json").json()
    assert tilejson["minzoom"] == 0 and tilejson["maxzoom"] > base
    mosaic = painted(newest_first())
    seen = 0
    for z in sorted({0, 3, base - 2, base - 1, base}):
        for tile in WEB.tiles(*tilejson["bounds"], [z]):
            response = client.get(
                f"/searches/{search}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.png"
            )
            got = tile_pixels(client, search, z, tile.x, tile.y)
            want = reference_tile(mosaic, z, tile.x, tile.y)
            if got is None:
                assert not want.any() and response.status_code == 404
                continue
            assert response.headers["x-mosaic-pyramid"].startswith("g"), response.headers
            near, exact = agreement(got, want)
            assert near >= 0.99 and exact >= 0.95, (z, tile, near, exact)
            seen += int((got != 0).sum())
    assert seen > 0


def test_a_write_to_one_image_updates_only_its_area(pyramid_app):
    client, app, store, tmp = pyramid_app
    search = register(client, app)
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    base = low["zooms"][1]
    pyramid = PyramidFile(tmp / "pyramids" / f"{search}.db")
    with pyramid.connect() as db:
        before = {
            (z, x, y): blob for z, x, y, blob in db.execute("SELECT z, x, y, data FROM tiles")
        }
    newest = newest_first()
    top = scenes().index(newest[0])  # the scene painted over all others
    images = store.search(
        store.get_search(search).search.model_copy(update={"limit": 100}), count=False
    ).images
    image = next(i for i in images if f"s{top:02d}_" in i.id)
    store.delete_image(image.id)
    low = client.get(f"/searches/{search}").json()["low_zooms"]  # starts the update
    app.state.pyramids.wait()
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    assert low["state"] == "ready" and low["up_to_date"] and low["images"] == GRID * GRID - 1
    with pyramid.connect() as db:
        after = {(z, x, y): blob for z, x, y, blob in db.execute("SELECT z, x, y, data FROM tiles")}
    west, south, east, north = image.bbox
    touched = {
        (z, t.x, t.y) for z in range(base + 1) for t in WEB.tiles(west, south, east, north, [z])
    }
    # only tiles meeting the deleted image were rewritten; every other one is the same bytes
    for key, blob in before.items():
        if key not in touched:
            assert after.get(key) == blob, key
    changed = [k for k in touched if before.get(k) != after.get(k)]
    assert changed, "the deleted scene's area did not change"
    assert pyramid.meta()["last_redone"] == len({(x, y) for z, x, y in touched if z == base})
    # and the new tiles agree with the mosaic without it
    mosaic = painted(newest_first({top}))
    for z, x, y in touched:
        got = tile_pixels(client, search, z, x, y)
        want = reference_tile(mosaic, z, x, y)
        if got is None:
            assert not want.any()
            continue
        near, _ = agreement(got, want)
        assert near >= 0.99, (z, x, y, near)


def test_tiles_answer_503_with_retry_after_while_another_worker_builds(pyramid_app):
    client, app, store, tmp = pyramid_app
    search = store.register_search(SearchQuery(collections=["pyr"])).id  # no build started
    pyramid = PyramidFile(tmp / "pyramids" / f"{search}.db")
    # a live builder elsewhere (another machine sharing the catalog) holds the lease
    assert store.take_lease(pyramid.lease, "another-worker", 60)
    started = time.monotonic()
    response = client.get(f"/searches/{search}/tiles/WebMercatorQuad/3/4/2.png")
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert time.monotonic() - started < 10  # at once, not after a build (2 s when idle)
    app.state.pyramids.wait()  # our builder found the lock taken and left
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    assert low["state"] == "building" and not low["up_to_date"], low
    assert store.lease_holder(pyramid.lease) == "another-worker"  # still theirs
    store.release_lease(pyramid.lease, "another-worker")
    client.get(f"/searches/{search}")  # now this worker may build it
    app.state.pyramids.wait()
    low = client.get(f"/searches/{search}").json()["low_zooms"]
    assert low["state"] == "ready" and low["up_to_date"], low
    response = client.get(f"/searches/{search}/tiles/WebMercatorQuad/3/4/2.png")
    assert response.status_code == 200 and response.headers["x-mosaic-pyramid"].startswith("g")


def test_a_builder_whose_lease_lapsed_and_was_taken_over_stops_before_writing(pyramid_app):
    from types import SimpleNamespace

    client, app, store, tmp = pyramid_app
    search = store.register_search(SearchQuery(collections=["pyr"])).id
    pyramids = app.state.pyramids
    pyramid = PyramidFile(tmp / "pyramids" / f"{search}.db")
    layer = SimpleNamespace(store=store)
    assert store.take_lease(pyramid.lease, pyramids.owner, 60)
    pyramids._renew(layer, pyramid)  # ours: renewed
    assert store.take_lease(pyramid.lease, pyramids.owner, -1)  # a stall: it lapsed
    assert store.take_lease(pyramid.lease, "another-worker", 60)  # and was taken over
    with pytest.raises(InterruptedError):
        pyramids._renew(layer, pyramid)
    assert store.lease_holder(pyramid.lease) == "another-worker"


def test_requests_a_pyramid_cannot_honour_are_composited_and_say_so(pyramid_app):
    client, app, _, _ = pyramid_app
    search = register(client, app)
    base = client.get(f"/searches/{search}").json()["low_zooms"]["zooms"][1]
    bounds = client.get(f"/searches/{search}/tilejson.json").json()["bounds"]
    tile = WEB.tile((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, base)
    url = f"/searches/{search}/tiles/WebMercatorQuad/{base}/{tile.x}/{tile.y}.png"
    mean = client.get(url, params={"pixel_selection": "mean"})
    assert mean.status_code == 200, mean.text
    assert mean.headers["x-mosaic-pyramid"] == "dynamic: pixel_selection=mean"
    assert int(mean.headers["x-mosaic-images"]) > 0
    first = client.get(url)
    assert first.headers["x-mosaic-pyramid"].startswith("g")


def test_tilejson_and_wmts_advertise_exactly_the_zooms_that_answer(pyramid_app):
    """WebMercatorQuad (pyramid): zoom 0 to the scenes' maxzoom, each answering 200 over the
    data; a grid without pyramid advertises its native minzoom, and below it is refused."""
    import re

    from morecantile import tms as tms_registry

    client, app, _, _ = pyramid_app
    search = register(client, app)
    tilejson = client.get(f"/searches/{search}/tilejson.json").json()
    assert tilejson["minzoom"] == 0
    wmts = client.get(f"/searches/{search}/WMTSCapabilities.xml").text
    limits = re.findall(r"<TileMatrixLimits>\s*<TileMatrix>(\d+)</TileMatrix>", wmts)
    assert [int(z) for z in limits] == list(range(tilejson["minzoom"], tilejson["maxzoom"] + 1))
    west, south, east, north = tilejson["bounds"]
    centre = ((west + east) / 2, (south + north) / 2)
    for z in range(tilejson["minzoom"], tilejson["maxzoom"] + 1):
        tile = WEB.tile(*centre, z)
        response = client.get(f"/searches/{search}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}.png")
        assert response.status_code == 200, (z, response.text)
    crs84 = tms_registry.get("WorldCRS84Quad")
    other = client.get(f"/searches/{search}/tilejson.json", params={"tms": "WorldCRS84Quad"}).json()
    assert 0 < other["minzoom"] <= other["maxzoom"]
    for z, answers in ((other["minzoom"] - 1, False), (other["minzoom"], True)):
        tile = crs84.tile(*centre, z)
        response = client.get(f"/searches/{search}/tiles/WorldCRS84Quad/{z}/{tile.x}/{tile.y}.png")
        assert (response.status_code == 200) == answers, (z, response.status_code)
        if not answers:
            assert response.status_code == 400 and "minzoom" in response.json()["detail"]


@pytest.mark.slow
def test_two_workers_on_pgstac_build_once_serve_both_and_update(tmp_path, pgstac_url):
    """Two app instances (two workers, e.g. on two machines) on one pgSTAC catalog and one
    DATA_DIR: one builds (the lease in the catalog), both serve its tiles, and a scene
    added later updates only its area, whichever worker notices."""
    import threading

    from tileserver.catalog.store import open_store

    write_scenes(tmp_path / "all")
    newest = newest_first()
    late = scenes().index(newest[len(newest) // 2])  # a scene in the middle of the order
    (tmp_path / "later").mkdir()
    for path in (tmp_path / "all").glob("*.tif"):
        folder = "later" if path.name.startswith(f"s{late:02d}_") else "in"
        (tmp_path / folder).mkdir(exist_ok=True)
        path.rename(tmp_path / folder / path.name)
    stores = [open_store(pgstac_url), open_store(pgstac_url)]
    confinement = Confinement(data_dir=tmp_path)

    def import_folder(folder: str) -> None:
        request = ImportRequest(
            cloud_provider="file", bucket_name=str(tmp_path / folder), product="pyr"
        )
        with confined(confinement), reading(confinement.operator()):
            result = run_import(stores[0], request, tmp_path, confinement=confinement)
        assert not result.failed, result.failed

    import_folder("in")
    settings = make_settings(tmp_path, catalog_url=pgstac_url, cache_max_bytes=0)
    apps = [create_app(settings, store=store) for store in stores]
    try:
        with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
            search = one.post("/searches", json={"collections": ["pyr"]}).json()["id"]
            # both workers are asked at once: each starts a builder, one gets the lease
            asked = [
                threading.Thread(target=c.get, args=(f"/searches/{search}",)) for c in (one, two)
            ]
            for thread in asked:
                thread.start()
            for thread in asked:
                thread.join()
            for app in apps:
                app.state.pyramids.wait()
            pyramid = PyramidFile(tmp_path / "pyramids" / f"{search}.db")
            meta = pyramid.meta()
            assert meta["version"] == 1, meta  # built once, not once per worker
            assert meta["builder"] in {a.state.pyramids.owner for a in apps}
            assert stores[0].lease_holder(pyramid.lease) is None  # released
            for client in (one, two):
                low = client.get(f"/searches/{search}").json()["low_zooms"]
                assert low["state"] == "ready" and low["up_to_date"], low
                assert low["images"] == GRID * GRID - 1
            base = meta["base"]
            bounds = one.get(f"/searches/{search}/tilejson.json").json()["bounds"]
            mosaic = painted(newest_first({late}))
            for z in (0, base - 1, base):
                for tile in WEB.tiles(*bounds, [z]):
                    got = [tile_pixels(c, search, z, tile.x, tile.y) for c in (one, two)]
                    want = reference_tile(mosaic, z, tile.x, tile.y)
                    if got[0] is None:
                        assert got[1] is None and not want.any()
                        continue
                    assert numpy.array_equal(got[0], got[1])  # both serve the same pyramid
                    assert agreement(got[0], want)[0] >= 0.99, (z, tile)
            with pyramid.connect() as db:
                before = {(z, x, y): b for z, x, y, b in db.execute("SELECT * FROM tiles")}

            import_folder("later")  # a write through the catalog both workers share
            two.get(f"/searches/{search}")  # the other worker notices and updates
            for app in apps:
                app.state.pyramids.wait()
            meta = pyramid.meta()
            assert meta["version"] == 2 and meta["builder"] == apps[1].state.pyramids.owner
            images = stores[0].list_images("pyr", limit=100).images
            added = next(i for i in images if f"s{late:02d}_" in i.id)
            touched = {(z, t.x, t.y) for z in range(base + 1) for t in WEB.tiles(*added.bbox, [z])}
            assert meta["last_redone"] == len({(x, y) for z, x, y in touched if z == base})
            with pyramid.connect() as db:
                after = {(z, x, y): b for z, x, y, b in db.execute("SELECT * FROM tiles")}
            for key, blob in before.items():
                if key not in touched:
                    assert after.get(key) == blob, key  # outside the new scene: same bytes
            mosaic = painted(newest_first())
            for z, x, y in touched:
                for client in (one, two):
                    low = client.get(f"/searches/{search}").json()["low_zooms"]
                    assert low["up_to_date"] and low["images"] == GRID * GRID
                    got = tile_pixels(client, search, z, x, y)
                    want = reference_tile(mosaic, z, x, y)
                    if got is None:
                        assert not want.any()
                        continue
                    assert agreement(got, want)[0] >= 0.99, (z, x, y)
    finally:
        for store in stores:
            store.close()


def test_builds_are_queued_beyond_the_builder_bound_and_run_when_asked_again(pyramid_app):
    """Registering is cheap, building is not: five searches registered at once run at most
    MAX_BUILDERS builders; the others start when their state or tiles are asked for."""
    client, app, _, _ = pyramid_app
    pyramids = app.state.pyramids
    # five bodies (five searches), each matching every scene
    bodies = [{"collections": ["pyr"], "datetime": f"200{n}-01-01T00:00:00Z/.."} for n in range(5)]
    searches = [client.post("/searches", json=body).json()["id"] for body in bodies]
    alive = sum(t.is_alive() for t in pyramids._threads.values())
    assert 1 <= alive <= MAX_BUILDERS
    ready, deadline = set(), time.monotonic() + 300
    while len(ready) < len(searches) and time.monotonic() < deadline:
        for search in searches:  # what a viewer's retries do: each ask starts a queued build
            if client.get(f"/searches/{search}").json()["low_zooms"]["state"] == "ready":
                ready.add(search)
        assert sum(t.is_alive() for t in pyramids._threads.values()) <= MAX_BUILDERS
        pyramids.wait(timeout=5)
    assert ready == set(searches)
    for search in searches:
        assert client.get(f"/searches/{search}").json()["low_zooms"]["images"] == GRID * GRID
