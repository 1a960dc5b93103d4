"""The shared cache: two apps (as two workers) over one real redis-server.

Tiles and chips made by one app are served by the other from Redis; a changed image is
never served stale; a Redis that goes away costs the cache, not the tiles.
"""

from __future__ import annotations

import io
import logging

import numpy
import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import DEMO_IMAGE, DEMO_TILE, make_settings
from tests.synthetic import TILE, gradient, write
from tests.test_chips import PRODUCT as CHIP_PRODUCT
from tests.test_chips import add_scene, gallery, parse_gallery, raw, ten_m, twenty_m
from tests.test_mosaic import mosaic_tile, register_images
from tileserver.app import create_app
from tileserver.cache import (
    TILE_PREFIX,
    CachedTile,
    RedisCache,
    TileCache,
    make_etag,
    open_cache,
    pack,
    redis_client,
    redis_key,
    unpack,
)
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.chipcache import CHIP_PREFIX, FolderChips, RedisChips, open_chip_store

Z, X, Y = TILE.z, TILE.x, TILE.y
DEMO_PATH = "/images/{}/tiles/WebMercatorQuad/{}/{}/{}.png".format(DEMO_IMAGE, *DEMO_TILE)
PRODUCT = {
    "id": "one",
    "bands": [{"name": "v", "data_type": "UInt16", "data_range": [0, 10000], "nodata": 0}],
}
GEOMETRY = {
    "type": "Polygon",
    "coordinates": [[[13.35, 52.5], [13.71, 52.5], [13.71, 52.72], [13.35, 52.72], [13.35, 52.5]]],
}


class Worker:
    """An app of its own (own store connection, own cache object), like one worker process."""

    def __init__(self, catalog_dir, cache_url: str | None, **settings):
        self.store = SQLiteStore(catalog_dir / "catalog.db")
        self.app = create_app(
            make_settings(catalog_dir, cache_url=cache_url, **settings), store=self.store
        )
        self.client = TestClient(self.app)

    def __enter__(self) -> TestClient:
        return self.client.__enter__()

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)
        self.store.close()


def keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return sorted(client.scan_iter(match=prefix + "*"))


def npy(response) -> numpy.ndarray:
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


# --- tiles ----------------------------------------------------------------------------


def test_a_tile_rendered_by_one_worker_is_served_by_another(demo_dir, demo_store, redis_url):
    r = redis.Redis.from_url(redis_url)
    with (
        Worker(demo_dir, redis_url, cache_ttl=600) as a,
        Worker(demo_dir, redis_url, cache_ttl=600) as b,
    ):
        assert keys(r, TILE_PREFIX) == []
        first = a.get(DEMO_PATH, params={"scaling": "display"})
        assert first.status_code == 200, first.text
        (key,) = keys(r, TILE_PREFIX)
        stored = unpack(r.get(key))
        assert stored.content == first.content
        assert stored.etag == first.headers["etag"] == make_etag(first.content)
        assert stored.media_type == "image/png"
        assert 0 < r.ttl(key) <= 600

        second = b.get(DEMO_PATH, params={"scaling": "display"})
        assert second.status_code == 200
        assert second.content == first.content
        assert second.headers["etag"] == first.headers["etag"]
        assert keys(r, TILE_PREFIX) == [key]  # B read A's entry, and wrote none of its own
        again = b.get(
            DEMO_PATH,
            params={"scaling": "display"},
            headers={"If-None-Match": first.headers["etag"]},
        )
        assert again.status_code == 304

        # B answers from Redis, not by rendering: bytes no renderer makes come back as stored
        r.set(key, pack(CachedTile(b"from redis", "image/png", '"marker"')))
        served = b.get(DEMO_PATH, params={"scaling": "display"})
        assert (served.content, served.headers["etag"]) == (b"from redis", '"marker"')


def register(client, path, name="a") -> str:
    body = {
        "name": name,
        "product_id": PRODUCT["id"],
        "acquired": "2024-01-01T00:00:00Z",
        "geometry": GEOMETRY,
        "files": [{"href": str(path)}],
    }
    response = client.put(f"/images/{PRODUCT['id']}:{name}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["modified"]


def test_a_changed_image_is_never_served_stale(tmp_path, redis_url):
    r = redis.Redis.from_url(redis_url)
    url = f"/images/one:a/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
    before, after = gradient("uint16", 1, step=10) + 1, gradient("uint16", 1, step=3) + 2
    path = tmp_path / "a.tif"
    with Worker(tmp_path, redis_url) as a, Worker(tmp_path, redis_url) as b:
        assert a.post("/products", json=PRODUCT).status_code == 201
        first_modified = register(a, write(path, before))
        assert numpy.array_equal(npy(a.get(url))[0], before[0])
        assert numpy.array_equal(npy(b.get(url))[0], before[0])
        assert len(keys(r, TILE_PREFIX)) == 1

        write(path, after)  # the same file, new pixels; registering again stamps the image
        assert register(a, path) != first_modified
        assert numpy.array_equal(npy(b.get(url))[0], after[0])
        assert numpy.array_equal(npy(a.get(url))[0], after[0])
        assert len(keys(r, TILE_PREFIX)) == 2  # the stale entry waits for its TTL, unread


def test_mosaic_tiles_keep_their_headers_and_follow_the_catalog(tmp_path, redis_url):
    with (
        Worker(tmp_path, redis_url, reader_threads=1) as a,
        Worker(tmp_path, redis_url, reader_threads=1) as b,
    ):
        register_images(a, tmp_path, ["A", "B"])
        search_id = a.post("/searches", json={"collections": ["mos"]}).json()["id"]
        first = mosaic_tile(a, search_id)
        assert first.status_code == 200, first.text
        shared = mosaic_tile(b, search_id)
        assert shared.content == first.content
        assert shared.headers["X-Mosaic-Images"] == first.headers["X-Mosaic-Images"]

        register_images(b, tmp_path, ["C"])  # a catalog write: a new generation, new keys
        changed = mosaic_tile(a, search_id)
        assert changed.content != first.content
        again = mosaic_tile(b, search_id)
        assert again.content == changed.content
        assert again.headers["X-Mosaic-Images"] == changed.headers["X-Mosaic-Images"]


def test_tiles_answer_while_redis_is_down(tmp_path, private_redis, caplog):
    r = private_redis.client()
    url = f"/images/one:a/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
    data = gradient("uint16", 1) + 1
    with Worker(tmp_path, private_redis.url) as a:
        assert a.post("/products", json=PRODUCT).status_code == 201
        register(a, write(tmp_path / "a.tif", data))
        assert numpy.array_equal(npy(a.get(url))[0], data[0])
        assert len(keys(r, TILE_PREFIX)) == 1
        r.close()
        private_redis.stop()

        with caplog.at_level(logging.WARNING, logger="tileserver.cache"):
            for params in ({}, {"bands": "v"}, {"scaling": "display"}):
                response = a.get(url, params=params)
                assert response.status_code == 200, response.text
            assert numpy.array_equal(npy(a.get(url))[0], data[0])
        warnings = [rec for rec in caplog.records if "tile cache (Redis)" in rec.getMessage()]
        assert len(warnings) == 1  # rate-limited: one warning for the whole outage

        name = f"{PRODUCT['id']}.20240503T102031_" + "0" * 32 + ".png"
        missing = a.get(f"/chips/files/{name}")
        assert missing.status_code == 503
        assert missing.json()["detail"] == "the chip cache is unavailable; try again later"


def test_clear_deletes_only_prefixed_keys(redis_url):
    r = redis.Redis.from_url(redis_url)
    cache = RedisCache(redis_client(redis_url), ttl=60)
    for i in range(2500):  # more than one SCAN/UNLINK batch
        cache.put(f"tile {i}", CachedTile(b"x%d" % i, "image/png", f'"{i}"', {"X-A": "1"}))
    assert cache.get("tile 7") == CachedTile(b"x7", "image/png", '"7"', {"X-A": "1"})
    r.set("someone:else", b"keep")
    r.set(CHIP_PREFIX + "c.png", b"chip")
    r.set("tileserver:tile", b"no trailing colon: not under the prefix")
    assert len(keys(r, TILE_PREFIX)) == 2500

    cache.clear()
    assert keys(r, TILE_PREFIX) == []
    assert cache.get("tile 7") is None
    assert r.get("someone:else") == b"keep"
    assert r.get(CHIP_PREFIX + "c.png") == b"chip"
    assert r.get("tileserver:tile") == b"no trailing colon: not under the prefix"
    assert r.get(redis_key(TILE_PREFIX, "tile 7")) is None


# --- chips ----------------------------------------------------------------------------


def test_chips_live_in_redis_and_any_worker_serves_them(tmp_path, redis_url):
    r = redis.Redis.from_url(redis_url)
    with Worker(tmp_path, redis_url) as a, Worker(tmp_path, redis_url) as b:
        assert a.post("/products", json=CHIP_PRODUCT).status_code == 201
        add_scene(a, tmp_path, "A", "2024-05-03T10:20:31Z", ten_m(100), twenty_m(60))
        add_scene(a, tmp_path, "C", "2024-05-13T10:20:31Z", ten_m(200), twenty_m(70))

        page = gallery(a, size=32)
        assert page.status_code == 200, page.text
        assert (page.headers["X-Chips-Rendered"], page.headers["X-Chips-Cached"]) == ("2", "0")
        srcs = [cell["src"] for row in parse_gallery(page.text) for cell in row]
        rawchips = raw(a)
        assert rawchips.headers["X-Chips-Rendered"] == "2"
        names = [src.rsplit("/", 1)[1] for src in srcs + rawchips.json()["chips"]]
        assert len(set(names)) == 4
        assert sorted(keys(r, CHIP_PREFIX)) == sorted((CHIP_PREFIX + n).encode() for n in names)
        assert all(0 < r.ttl(CHIP_PREFIX + n) <= 86400 for n in names)
        assert not (tmp_path / "chips").exists()  # nothing went to the chip folder

        for name in names:
            served = b.get(f"/chips/files/{name}")
            assert served.status_code == 200
            assert served.content == r.get(CHIP_PREFIX + name)
            assert served.headers["etag"] == make_etag(served.content)
            kind = "image/png" if name.endswith(".png") else "image/tiff; application=geotiff"
            assert served.headers["content-type"] == kind
        again = gallery(b, size=32)  # B finds A's chips and renders none
        assert (again.headers["X-Chips-Rendered"], again.headers["X-Chips-Cached"]) == ("0", "2")
        assert again.text == page.text

        absent = f"{CHIP_PRODUCT['id']}.20240503T102031_" + "0" * 32 + ".png"
        response = b.get(f"/chips/files/{absent}")
        assert response.status_code == 404
        assert response.json()["detail"] == (
            f"chip '{absent}' is not in the cache: request its chips again"
        )

        # the same chips made in folder mode are the same bytes under the same names
        with Worker(tmp_path, None, data_dir=tmp_path / "folder") as folder:
            assert gallery(folder, size=32).text == page.text
            for name in names[:2]:
                assert (tmp_path / "folder" / "chips" / name).read_bytes() == r.get(
                    CHIP_PREFIX + name
                )


# --- choosing the implementation ------------------------------------------------------


def test_cache_url_chooses_the_implementation(tmp_path, redis_url):
    local = make_settings(tmp_path)
    assert isinstance(open_cache(local), TileCache)
    assert isinstance(open_chip_store(local), FolderChips)
    shared = make_settings(tmp_path, cache_url=redis_url, cache_ttl=5)
    cache, chips = open_cache(shared), open_chip_store(shared)
    assert isinstance(cache, RedisCache) and cache.ttl == 5
    assert isinstance(chips, RedisChips) and chips.ttl == 5


@pytest.mark.parametrize("url", ["memcached://127.0.0.1:11211", "127.0.0.1:6379", "http://x"])
def test_a_bad_cache_url_fails_at_startup(tmp_path, url):
    with pytest.raises(ValueError, match="unsupported cache URL"):
        create_app(make_settings(tmp_path, cache_url=url))
