"""Pixel uploads over HTTP (issue 24 part 2): a GeoTIFF or a .npy array becomes a COG image,
under the product's write access, with nothing registered when anything fails, and across a
restart of the server."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.transform import from_origin

from tests.conftest import make_settings
from tests.synthetic import write_raster
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.uploads import Upload

UTM = "EPSG:32631"
ORIGIN = from_origin(500_000, 5_000_000, 10, 10)
BANDS = [
    {"name": name, "band_index": i, "data_type": "UInt16", "data_range": [0, 10000], "nodata": 0}
    for i, name in enumerate(("red", "nir"))
]


def pixels(shape=(2, 600, 700), seed=1) -> numpy.ndarray:
    """Values 1..10000 (0 is nodata), different per pixel and band."""
    return numpy.random.default_rng(seed).integers(1, 10000, shape, dtype="uint16")


def geotiff(folder: Path, data: numpy.ndarray) -> bytes:
    """A plain striped GeoTIFF (no overviews, not a COG) of `data`."""
    path = write_raster(folder / "source.tif", data, UTM, ORIGIN, nodata=0)
    return path.read_bytes()


def npy(data: numpy.ndarray) -> bytes:
    buffer = io.BytesIO()
    numpy.save(buffer, data, allow_pickle=False)
    return buffer.getvalue()


class Server:
    """An app over a fresh catalog with keys for an owner, a reader and a stranger."""

    def __init__(self, folder: Path, **settings):
        self.folder = folder
        self.store = SQLiteStore(folder / "catalog.db")
        self.tokens = {}
        for user, admin in (("owner", False), ("reader", False), ("stranger", False)):
            key, token = new_key(user, "org-" + user, admin=admin)
            self.store.put_key(key)
            self.tokens[user] = token
        self.settings = make_settings(folder, key_cache_seconds=0, **settings)
        self.app = create_app(self.settings, store=self.store)

    def client(self, user: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[user]}"})

    def wait(self, client: TestClient, upload_id: str, timeout: float = 60) -> dict:
        """The record once done or failed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            record = client.get(f"/uploads/{upload_id}").json()
            if record["status"] in ("done", "failed"):
                return record
            time.sleep(0.1)
        raise AssertionError(f"upload {upload_id} still {record['status']}")


@pytest.fixture()
def server(tmp_path) -> Server:
    server = Server(tmp_path)
    with server.client("owner") as owner:
        product = {"id": "up", "bands": BANDS, "readers": ["user:reader"]}
        assert owner.post("/products", json=product).status_code == 201
    return server


def start(client: TestClient, **body) -> dict:
    body = {"name": "scene", "acquired": "2024-05-01T10:00:00Z", **body}
    response = client.post("/products/up/uploads", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def download(client: TestClient, image_id: str) -> numpy.ndarray:
    response = client.get(f"/images/{image_id}/download.npy", params={"bands": "red,nir"})
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def test_a_geotiff_upload_becomes_a_cog_image_with_the_same_pixels(server, tmp_path):
    data = pixels()
    body = geotiff(tmp_path / "in", data)
    with server.client("owner") as owner:
        record = start(
            owner,
            cloud_cover=12.5,
            overviews=[2, 4],
            resampler="average",
            size=len(body),
            md5=hashlib.md5(body).hexdigest(),
            properties={"mission": "test"},
        )
        assert record["status"] == "pending" and record["data_url"].endswith("/data")
        sent = owner.put(record["data_url"], content=body)
        assert sent.status_code == 202, sent.text
        done = server.wait(owner, record["id"])
        assert done["status"] == "done", done["errors"]
        image = owner.get("/images/up:scene").json()
        assert image["cloud_cover"] == 12.5
        assert image["properties"]["mission"] == "test"
        assert (image["width"], image["height"]) == (700, 600)
        numpy.testing.assert_array_equal(download(owner, "up:scene"), data)
    cog = next((server.folder / "cogs" / "up").glob("upload-*.tif"))
    with rasterio.open(cog) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1) == [2, 4]
        numpy.testing.assert_array_equal(src.read(), data)
    assert not list((server.folder / "cogs" / "up").glob(".staging-*")), "staging left behind"


def test_an_array_upload_is_placed_by_its_grid(server):
    data = pixels((2, 300, 200), seed=2)
    geotrans = ORIGIN.to_gdal()
    with server.client("owner") as owner:
        record = start(owner, kind="ndarray", array={"crs": UTM, "geotrans": geotrans, "nodata": 0})
        assert owner.put(record["data_url"], content=npy(data)).status_code == 202
        done = server.wait(owner, record["id"])
        assert done["status"] == "done", done["errors"]
        image = owner.get("/images/up:scene").json()
        assert image["crs"] == UTM and tuple(image["geotrans"]) == pytest.approx(geotrans)
        numpy.testing.assert_array_equal(download(owner, "up:scene"), data)


@pytest.mark.parametrize(
    ("declared", "sent", "reason"),
    [
        ({"md5": "0" * 32}, None, "MD5"),
        ({"size": 5}, None, "'size' said 5"),
        ({}, b"", "no bytes"),
        ({}, b"not a raster at all", "not a raster"),
    ],
)
def test_bad_bytes_fail_the_upload_and_register_nothing(server, tmp_path, declared, sent, reason):
    body = geotiff(tmp_path / "in", pixels()) if sent is None else sent
    with server.client("owner") as owner:
        record = start(owner, **declared)
        response = owner.put(record["data_url"], content=body)
        if response.status_code == 400:  # checked on arrival
            assert reason in response.json()["detail"]
        else:
            assert response.status_code == 202
        done = server.wait(owner, record["id"])
        assert done["status"] == "failed" and reason in done["errors"][-1], done
        assert str(server.folder) not in str(done)
        assert owner.get("/images/up:scene").status_code == 404
        assert owner.put(record["data_url"], content=body).status_code == 409  # used up
    assert not list((server.folder / "cogs" / "up").glob("*"))


def test_a_file_that_does_not_fit_the_product_fails_naming_why(server, tmp_path):
    body = geotiff(tmp_path / "in", pixels((1, 64, 64)))  # one band, the product has two
    with server.client("owner") as owner:
        record = start(owner)
        assert owner.put(record["data_url"], content=body).status_code == 202
        done = server.wait(owner, record["id"])
        assert done["status"] == "failed"
        assert "1 band(s) but product 'up' expects band 'nir'" in done["errors"][-1]
        assert str(server.folder) not in done["errors"][-1]
        assert owner.get("/images/up:scene").status_code == 404


def test_an_upload_larger_than_the_limit_is_refused(tmp_path):
    server = Server(tmp_path, max_upload_bytes=1000, max_body_bytes=400)
    with server.client("owner") as owner:
        assert owner.post("/products", json={"id": "up", "bands": BANDS}).status_code == 201
        record = start(owner)
        chunks = (b"x" * 300 for _ in range(5))  # streamed: no Content-Length
        response = owner.put(record["data_url"], content=chunks)
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]
        assert server.wait(owner, record["id"])["status"] == "failed"
        # within the upload limit, above the JSON body limit (400): received
        small = start(owner, name="small")
        assert owner.put(small["data_url"], content=b"y" * 500).status_code == 202


def test_only_writers_upload_and_only_the_uploader_sees_the_record(server, tmp_path):
    with server.client("reader") as reader, server.client("stranger") as stranger:
        refused = reader.post("/products/up/uploads", json={"name": "x"})
        assert refused.status_code == 403
        hidden = stranger.post("/products/up/uploads", json={"name": "x"})
        missing = stranger.post("/products/nothing/uploads", json={"name": "x"})
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["detail"].replace("up", "nothing") == missing.json()["detail"]
    with server.client("owner") as owner, server.client("stranger") as stranger:
        record = start(owner)
        assert stranger.get(f"/uploads/{record['id']}").status_code == 404
        assert stranger.put(record["data_url"], content=b"zz").status_code == 404
        assert stranger.get("/uploads").json()["uploads"] == []
        assert [u["id"] for u in owner.get("/uploads").json()["uploads"]] == [record["id"]]
        assert owner.get("/uploads/not-an-id").status_code == 404
        taken = geotiff(tmp_path / "in", pixels())
        owner.put(record["data_url"], content=taken)
        assert server.wait(owner, record["id"])["status"] == "done"
        again = owner.post("/products/up/uploads", json={"name": "scene"})
        assert again.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "../x"},
        {"name": "a", "overviews": [2, 8]},
        {"name": "a", "kind": "ndarray"},
        {"name": "a", "array": {"crs": UTM, "geotrans": [0, 1, 0, 0, 0, -1]}},
        {"name": "a", "kind": "ndarray", "array": {"crs": "nonsense", "geotrans": [0] * 6}},
        {"name": "a", "resampler": "magic"},
        {"name": "a", "md5": "xyz"},
        {"name": "a", "unknown": 1},
    ],
)
def test_bad_upload_requests_are_4xx(server, body):
    with server.client("owner") as owner:
        response = owner.post("/products/up/uploads", json=body)
        assert 400 <= response.status_code < 500 and response.json()["detail"]


def test_arrays_of_other_kinds_are_refused(server):
    grid = {"crs": UTM, "geotrans": ORIGIN.to_gdal()}
    with server.client("owner") as owner:
        for name, data in (
            ("objects", numpy.array([[1, "a"]], dtype=object)),
            ("complex", numpy.zeros((4, 4), "complex64")),
            ("flat", numpy.zeros(16, "uint16")),
        ):
            record = start(owner, name=name, kind="ndarray", array=grid)
            buffer = io.BytesIO()
            numpy.save(buffer, data, allow_pickle=True)
            owner.put(record["data_url"], content=buffer.getvalue())
            done = server.wait(owner, record["id"])
            assert done["status"] == "failed", name
            assert owner.get(f"/images/up:{name}").status_code == 404


def test_a_restart_fails_cut_uploads_and_converts_received_ones(server, tmp_path):
    """The server stops with one upload half received and one received but not converted;
    the next server fails the first (no image) and registers the second."""
    data = pixels()
    body = geotiff(tmp_path / "in", data)
    uploads = server.app.state.uploads
    with server.client("owner") as owner:
        cut = start(owner, name="cut")
        waiting = start(owner, name="waiting")
    # what a process killed at these two moments leaves on disk
    receiver = uploads.start_receiving(uploads.get(cut["id"]))
    receiver.write(body[: len(body) // 2])
    receiver.handle.close()
    staged = uploads.get(waiting["id"])
    uploads.staging(staged).mkdir(parents=True)
    uploads.source(staged).write_bytes(body)
    staged.status, staged.received = "converting", len(body)
    uploads.save(staged)

    again = create_app(server.settings, store=server.store)  # the restarted server
    server.app = again
    with server.client("owner") as owner:
        failed = server.wait(owner, cut["id"])
        assert failed["status"] == "failed" and "restarted" in failed["errors"][-1]
        done = server.wait(owner, waiting["id"])
        assert done["status"] == "done", done["errors"]
        assert owner.get("/images/up:cut").status_code == 404
        numpy.testing.assert_array_equal(download(owner, "up:waiting"), data)
    assert Upload.model_validate(done).image_id == "up:waiting"
