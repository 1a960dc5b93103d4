"""Tiles from a bucket: loopback moto S3 behind bench/proxy.py (added latency), read by
GDAL's /vsis3/ through the server, pixel for pixel the file's; the proxy counts requests."""

from __future__ import annotations

import io

import httpx
import numpy
import pytest
import rasterio
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bench.proxy import start as start_proxy
from tests.buckets import S3Bucket, s3_environment
from tests.conftest import make_settings
from tests.synthetic import TILE, WEB_MERCATOR, gradient
from tests.test_tiles import GEOMETRY, PRODUCT, register
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore

Z, X, Y = TILE.z, TILE.x, TILE.y
TOKEN = "metrics-token-0123456789"


def write_cog(path, data: numpy.ndarray) -> None:
    """A tiled COG with overviews on TILE's grid (256 px: one tile, one pixel per pixel)."""
    bounds = WEB_MERCATOR.xy_bounds(TILE)
    profile = {
        "driver": "COG",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": str(data.dtype),
        "crs": "EPSG:3857",
        "transform": rasterio.transform.from_bounds(*bounds, data.shape[2], data.shape[1]),
        "blocksize": 128,
        "compress": "deflate",
    }
    with rasterio.MemoryFile() as memory:
        with memory.open(**{**profile, "driver": "GTiff"}) as plain:
            plain.write(data)
        with memory.open() as plain:
            rasterio.shutil.copy(plain, path, driver="COG", blocksize=128, compress="DEFLATE")


@pytest.fixture()
def remote(tmp_path, s3_server, monkeypatch):
    """An app whose image lies in a bucket reached through the latency proxy."""
    proxy, port = start_proxy(f"127.0.0.1:{s3_server.port}", rtt_ms=5)
    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"127.0.0.1:{port}")  # GDAL goes through the proxy
    bucket = S3Bucket(s3_server)
    data = gradient("uint16", 3)
    data[:, :8, :] = 0  # nodata rows
    alpha = numpy.full((1, 256, 256), 255, dtype="uint16")
    stack = numpy.concatenate([data, alpha]).astype("uint16")
    local = tmp_path / "local.tif"
    write_cog(local, stack)
    bucket.client.upload_file(str(local), bucket.name, "cogs/scene.tif")
    store = SQLiteStore(tmp_path / "catalog.db")
    settings = make_settings(
        tmp_path, import_grants={"admin": [f"s3://{bucket.name}/"]}, metrics_token=TOKEN
    )
    with TestClient(create_app(settings, store=store)) as client:
        register(client, PRODUCT, f"s3://{bucket.name}/cogs/scene.tif", name="remote")
        register(client, {**PRODUCT, "id": "localcopy"}, local, name="local")
        client.bucket = bucket
        yield client, proxy, port, stack
    store.close()


def stats(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/__proxy__/stats").json()


def test_remote_tile_pixels_match_the_local_file(remote):
    client, proxy, port, stack = remote
    url = f"/images/synth:remote/tiles/WebMercatorQuad/{Z}/{X}/{Y}"
    proxy.stats.reset()
    raw = client.get(f"{url}.npy", params={"scaling": "raw"})
    assert raw.status_code == 200, raw.text
    values = numpy.load(io.BytesIO(raw.content))
    assert numpy.array_equal(values[:3], stack[:3])  # the tile is the file's own grid
    first = stats(port)
    assert first["requests"].get("GET", 0) >= 1  # it went through the proxy
    assert first["bytes_down"] > 0

    # the PNG equals the one rendered from the same file on local disk
    local = f"/images/localcopy:local/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"
    for params in ({"scaling": "display"}, {"bands": "blue,green,red", "scaling": "0,3000"}):
        ours = client.get(f"{url}.png", params=params)
        assert ours.status_code == 200, ours.text
        with rasterio.MemoryFile(ours.content) as m, m.open() as d:
            remote_px = d.read()
        with rasterio.MemoryFile(client.get(local, params=params).content) as m, m.open() as d:
            local_px = d.read()
        assert numpy.array_equal(remote_px, local_px)

    # the open dataset (and its blocks) is reused: a later render asks the bucket nothing
    proxy.stats.reset()
    again = client.get(f"{url}.png", params={"scaling": "0,5000"})
    assert again.status_code == 200
    assert stats(port)["total_requests"] == 0


def test_metrics_count_what_gdal_fetched_from_the_bucket(remote):
    """tileserver_remote_requests_total / _bytes_total agree with the proxy's own count."""
    client, proxy, port, stack = remote

    def scrape() -> dict:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = scrape()
    proxy.stats.reset()
    tile = client.get(f"/images/synth:remote/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png")
    assert tile.status_code == 200, tile.text
    after, counted = scrape(), stats(port)
    assert counted["total_requests"] >= 2  # the open and the blocks, at least
    for method, count in counted["requests"].items():
        key = ("tileserver_remote_requests_total", (("method", method),))
        assert after.get(key, 0) - before.get(key, 0) == count, method
    key = ("tileserver_remote_bytes_total", ())
    assert after[key] - before.get(key, 0) == counted["bytes_down"]


def band_product(product_id: str) -> dict:
    """Three bands, each in a file of its own (Sentinel-2 in buckets), nodata 0."""
    names = ("red", "green", "blue")
    bands = [
        {"name": n, "data_type": "UInt16", "data_range": [0, 3000], "nodata": 0, "file_index": i}
        for i, n in enumerate(names)
    ]
    return {"id": product_id, "bands": bands}


def test_remote_per_band_mosaic_equals_the_local_one(remote, tmp_path):
    """A search over two scenes of one file per band, read from the bucket (an image's files
    at once, images at once), paints what the same search over local copies paints."""
    client, proxy, port, _ = remote
    scenes = {"new": gradient("uint16", 3), "old": gradient("uint16", 3)[::-1] + 7}
    scenes["new"][:, :100, :] = 0  # a hole the older scene fills
    for kind in ("remote", "local"):
        product = band_product(f"bands-{kind}")
        assert client.post("/products", json=product).status_code == 201
        for day, (name, data) in enumerate(scenes.items()):
            hrefs = []
            for b in range(3):
                path = tmp_path / f"{name}-{b}.tif"
                write_cog(path, data[b : b + 1])
                if kind == "remote":
                    key = f"bands/{name}/{b}.tif"
                    client.bucket.client.upload_file(str(path), client.bucket.name, key)
                    hrefs.append(f"s3://{client.bucket.name}/{key}")
                else:
                    hrefs.append(str(path))
            image = {
                "name": name,
                "product_id": product["id"],
                "acquired": f"2024-01-0{2 - day}T00:00:00Z",  # "new" is the newer
                "geometry": GEOMETRY,
                "files": [{"href": h} for h in hrefs],
            }
            response = client.put(f"/images/{product['id']}:{name}", json=image)
            assert response.status_code == 200, response.text
    tiles = {}
    proxy.stats.reset()
    for kind in ("remote", "local"):
        search = client.post("/searches", json={"collections": [f"bands-{kind}"]}).json()["id"]
        url = f"/searches/{search}/tiles/WebMercatorQuad/{Z}/{X}/{Y}"
        raw = client.get(f"{url}.npy", params={"scaling": "raw"})
        assert raw.status_code == 200, raw.text
        tiles[kind] = numpy.load(io.BytesIO(raw.content))
    expected = numpy.where(scenes["new"] == 0, scenes["old"], scenes["new"])
    assert numpy.array_equal(tiles["local"][:3], expected)  # worked out here, band by band
    assert numpy.array_equal(tiles["remote"], tiles["local"])
    assert stats(port)["requests"].get("GET", 0) >= 6  # both scenes' files came from the bucket
