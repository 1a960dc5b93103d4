"""Operations: liveness, readiness, Prometheus metrics, Server-Timing and request logs."""

from __future__ import annotations

import json
import logging

import numpy
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tests.synthetic import TILE, gradient, write
from tests.test_tiles import PRODUCT, register
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.metrics import Timings, recording, timed

Z, X, Y = TILE.z, TILE.x, TILE.y
TOKEN = "metrics-token-0123456789"
TILE_PATH = f"/images/synth:one/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"


@pytest.fixture()
def ops(tmp_path):
    """An app with a metrics token and one synthetic image; its client and store."""
    store = SQLiteStore(tmp_path / "catalog.db")
    settings = make_settings(tmp_path, metrics_token=TOKEN, key_cache_seconds=0)
    with TestClient(create_app(settings, store=store)) as client:
        data = numpy.concatenate([gradient("uint16", 3), numpy.full((1, 256, 256), 255)])
        register(client, PRODUCT, write(tmp_path / "synth.tif", data.astype("uint16")), "one")
        client.store = store
        yield client
    store.close()


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_healthz_is_cheap_liveness(ops):
    assert ops.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_catalog_and_data_dir_with_versions(ops, tmp_path):
    body = ops.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"] == {"catalog": "ok", "data_dir": "ok"}
    assert {"tileserver", "gdal", "rasterio", "rio-tiler"} <= body["versions"].keys()
    assert str(tmp_path) not in json.dumps(body)


def test_readyz_fails_without_revealing_paths(tmp_path):
    store = SQLiteStore(tmp_path / "catalog.db")
    gone = tmp_path / "no-such-dir"
    app = create_app(make_settings(tmp_path, data_dir=gone), store=store)
    with TestClient(app) as client:
        store.close()  # a catalog that no longer answers
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["data_dir"] == "failed"
    assert str(tmp_path) not in response.text


def test_readyz_checks_redis_when_configured(tmp_path, redis_url):
    store = SQLiteStore(tmp_path / "catalog.db")
    with TestClient(create_app(make_settings(tmp_path, cache_url=redis_url), store=store)) as c:
        assert c.get("/readyz").json()["checks"]["cache"] == "ok"
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with TestClient(create_app(make_settings(tmp_path, cache_url=dead), store=store)) as c:
        response = c.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["cache"] == "failed"
        assert "127.0.0.1" not in response.text
    store.close()


def test_readyz_and_metrics_bypass_api_keys(ops):
    ops.store.put_key(new_key("ops", "ops", admin=True)[0])
    assert ops.get(TILE_PATH).status_code == 401  # keys are on now
    assert ops.get("/readyz").status_code == 200
    assert ops.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_off_without_token(client):
    assert client.get("/metrics").status_code == 404


def test_metrics_need_the_token(ops):
    assert ops.get("/metrics").status_code == 401
    wrong = ops.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")


def test_metrics_count_requests_cache_and_stages(ops):
    before = scrape(ops)
    route = "/images/{image_id}/tiles/{tms_id}/{z}/{x}/{y}.{fmt}"
    first = ops.get(TILE_PATH)
    second = ops.get(TILE_PATH)
    assert ops.get("/images/synth:none/tiles/WebMercatorQuad/1/0/0.png").status_code == 404
    assert ops.get("/no/such/path").status_code == 404
    after = scrape(ops)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert first.status_code == second.status_code == 200
    assert delta("tileserver_requests_total", method="GET", route=route, status="200") == 2
    assert delta("tileserver_requests_total", method="GET", route=route, status="404") == 1
    assert delta("tileserver_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("tileserver_request_duration_seconds_count", method="GET", route=route) == 3
    assert delta("tileserver_tile_cache_total", result="miss") == 1
    assert delta("tileserver_tile_cache_total", result="hit") == 1
    for stage in ("catalog", "read", "render", "encode"):
        assert delta("tileserver_tile_stage_seconds_count", stage=stage) == 1, stage
    assert ("tileserver_open_datasets", ()) in after


def test_server_timing_on_rendered_and_cached_tiles(ops):
    rendered = ops.get(TILE_PATH)
    stages = dict(
        part.strip().split(";dur=") for part in rendered.headers["server-timing"].split(",")
    )
    assert list(stages) == ["catalog", "read", "render", "encode"]
    assert all(float(ms) >= 0 for ms in stages.values())
    assert ops.get(TILE_PATH).headers["server-timing"] == "cache;desc=hit"
    cors = ops.get(TILE_PATH, headers={"Origin": "http://viewer.example"})
    assert "Server-Timing" in cors.headers["access-control-expose-headers"]


def test_server_timing_on_other_answers_that_read_pixels(ops):
    preview = ops.get("/images/synth:one/preview.png", params={"max_size": 64})
    assert preview.status_code == 200, preview.text
    assert {p.split(";")[0].strip() for p in preview.headers["server-timing"].split(",")} >= {
        "read",
        "render",
    }
    refused = ops.get("/images/synth:one/preview.png", params={"scaling": "nan,1"})
    assert refused.status_code == 400
    assert "server-timing" not in refused.headers  # a refusal rendered nothing worth timing
    assert "server-timing" not in ops.get("/healthz").headers


def test_request_log_is_one_json_line_with_timings(ops, caplog):
    with caplog.at_level(logging.INFO, logger="tileserver.requests"):
        ops.get(TILE_PATH + "?api_key=tsk_0123456789ab_secretsecret")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tileserver.requests"]
    assert len(lines) == 1
    line = lines[0]
    assert line["status"] == 200
    assert line["route"].startswith("/images/{image_id}/tiles/")
    assert "secret" not in json.dumps(line)


def test_timings_count_overlapping_threads_once():
    import threading
    import time

    with recording() as timings:
        barrier = threading.Barrier(4)

        def read():
            with timed("read"):
                barrier.wait()
                time.sleep(0.05)

        import contextvars

        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(read,)) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 0.05 <= timings.seconds["read"] < 0.15  # wall time, not 4 x 0.05
    assert Timings().header() == ""


def test_metrics_show_gdal_cache_and_remote_read_slots(ops):
    ops.get(TILE_PATH + "?scaling=0,4000")  # a render: GDAL holds decoded blocks
    samples = scrape(ops)
    assert sample(samples, "tileserver_gdal_block_cache_bytes") > 0
    assert sample(samples, "tileserver_gdal_block_cache_max_bytes") >= sample(
        samples, "tileserver_gdal_block_cache_bytes"
    )
    assert sample(samples, "tileserver_remote_reads_max") == 32  # the default bound
    assert sample(samples, "tileserver_remote_reads_in_progress") == 0  # nothing reading now
    assert ("tileserver_remote_reads_refused_total", ()) in samples


def test_metrics_count_mosaic_images_read(ops, tmp_path):
    for name in ("two", "three"):  # newer than "one" and with no hole: `first` needs one
        path = write(tmp_path / f"{name}.tif", numpy.full((4, 256, 256), 255, "uint16"))
        body = {
            "name": name,
            "product_id": PRODUCT["id"],
            "acquired": "2024-01-02T00:00:00Z",
            "geometry": ops.get("/images/synth:one").json()["geometry"],
            "files": [{"href": str(path)}],
        }
        assert ops.put(f"/images/synth:{name}", json=body).status_code == 200
    search = ops.post("/searches", json={"collections": [PRODUCT["id"]]}).json()["id"]
    before = scrape(ops)
    tile = f"/searches/{search}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"
    mean = ops.get(tile, params={"pixel_selection": "mean"})  # reads every image
    first = ops.get(tile, params={"pixel_selection": "first"})  # the top one fills the tile
    assert mean.status_code == first.status_code == 200
    after = scrape(ops)

    def delta(name):
        return sample(after, name) - sample(before, name)

    assert delta("tileserver_mosaic_images_read_count") == 2
    assert delta("tileserver_mosaic_images_read_sum") == 3 + 1


def test_metrics_count_import_outcomes(tmp_path):
    folder = tmp_path / "imports" / "scenes"
    write(folder / "scene_20240201.tif", numpy.full((1, 256, 256), 7, "uint16"))
    (folder / "broken_20240202.tif").write_bytes(b"not a tiff")
    store = SQLiteStore(tmp_path / "catalog.db")
    settings = make_settings(
        tmp_path,
        metrics_token=TOKEN,
        import_roots=[tmp_path / "imports"],
        import_grants={"admin": [str(tmp_path / "imports")]},
    )
    request = {"cloud_provider": "file", "bucket_name": str(tmp_path / "imports")}
    with TestClient(create_app(settings, store=store)) as client:
        before = scrape(client)
        done = client.post("/imports", json={**request, "prefix": "scenes", "product": "imp"})
        elsewhere = {**request, "bucket_name": str(tmp_path / "elsewhere"), "product": "imp"}
        refused = client.post("/imports", json=elsewhere)  # outside the caller's grants
        after = scrape(client)
    store.close()

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert done.status_code == 200, done.text
    assert len(done.json()["features"]) == 1 and len(done.json()["failed"]) == 1
    assert refused.status_code == 403, refused.text
    assert delta("tileserver_import_scenes_total", outcome="registered") == 1
    assert delta("tileserver_import_scenes_total", outcome="failed") == 1
    assert delta("tileserver_imports_total", outcome="done") == 1
    assert delta("tileserver_imports_total", outcome="refused") == 1
