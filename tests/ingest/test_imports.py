"""Imports (`POST /imports`, `tileserver import`) from folders and real S3 / GCS servers.

Scenes are GeoTIFFs and STAC Items here; DIMAP and BEAM-DIMAP imports from buckets are
in test_bucket_formats.py. Expected selections are worked out from the scenes' own
definitions (times, cloud cover, boxes), not from the code under test.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import box, mapping

from tests.buckets import SECRET, moto_server, s3_environment
from tests.synthetic import write_raster
from tileserver.cli import cli

# name -> (west, south, acquired, cloud cover): 0.1 x 0.1 degree scenes in a row
SCENES = {
    "a": (10.0, 50.0, datetime(2024, 5, 1, 10, 0, tzinfo=UTC), 5.0),
    "b": (10.2, 50.0, datetime(2024, 6, 1, 10, 0, tzinfo=UTC), 40.0),
    "c": (10.4, 50.0, datetime(2024, 7, 1, 10, 0, tzinfo=UTC), 90.0),
    "d": (10.6, 50.0, datetime(2024, 8, 1, 10, 0, tzinfo=UTC), None),
}


def scene_pixels(name: str) -> numpy.ndarray:
    """Each scene's own pixels: a ramp plus a per-scene offset."""
    offset = 1000 * (list(SCENES).index(name) + 1)
    return (numpy.arange(100 * 100, dtype="uint16").reshape(1, 100, 100) % 997) + offset


def write_scenes(folder: Path) -> Path:
    """One GeoTIFF per scene, time and cloud cover in its tags, in a subfolder per month."""
    for name, (west, south, acquired, cloud) in SCENES.items():
        tags = {"ACQUISITIONDATETIME": acquired.isoformat()}
        if cloud is not None:
            tags["CLOUD_COVERAGE"] = str(cloud)
        write_raster(
            folder / acquired.strftime("%Y-%m") / f"{name}.tif",
            scene_pixels(name),
            "EPSG:4326",
            from_origin(west, south + 0.1, 0.001, 0.001),
            nodata=0,
            tags=tags,
        )
    return folder


def write_item(folder: Path) -> Path:
    """A STAC Item with a relative asset href (the COG next to it)."""
    data = numpy.full((1, 50, 50), 321, dtype="uint16")
    write_raster(
        folder / "item" / "cog.tif", data, "EPSG:4326", from_origin(11.0, 51.0, 0.002, 0.002)
    )
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "item-one",
        "collection": "stacked",
        "geometry": mapping(box(11.0, 50.9, 11.1, 51.0)),
        "bbox": [11.0, 50.9, 11.1, 51.0],
        "properties": {"datetime": "2024-09-09T09:09:09Z", "eo:cloud_cover": 12.5},
        "assets": {"data": {"href": "./cog.tif", "type": "image/tiff", "roles": ["data"]}},
        "links": [],
    }
    (folder / "item" / "item.json").write_text(json.dumps(item))
    return folder


def ids(collection: dict) -> set[str]:
    return {f["id"] for f in collection["features"]}


def test_s3_import_registers_scenes_that_render_from_the_bucket(tmp_path, s3_bucket, importer):
    local = write_item(write_scenes(tmp_path / "local"))
    s3_bucket.upload(local, "deliveries/2024/")
    body = {"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "deliveries/2024/"}
    response = importer.post("/imports", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "FeatureCollection" and answer["failed"] == []
    assert ids(answer) == {"2024-05_a", "2024-06_b", "2024-07_c", "2024-08_d", "item-one"}
    by_id = {f["id"]: f for f in answer["features"]}
    a = by_id["2024-05_a"]
    assert a["properties"]["time"] == "2024-05-01 10:00:00+00:00"
    assert a["properties"]["cc"] == 5.0
    assert a["bbox"] == pytest.approx([10.0, 50.0, 10.1, 50.1])
    assert a["properties"]["up42.data_path"] == "2024:2024-05_a"  # product: the prefix's folder
    href = f"/vsis3/{s3_bucket.name}/deliveries/2024/2024-05/a.tif"
    assert a["properties"]["tileserver:files"] == [href]
    assert a["properties"]["tileserver:source"] == href
    item = by_id["item-one"]
    assert item["properties"]["up42.data_path"] == "stacked:item-one"
    assert item["properties"]["cc"] == 12.5

    # the pixels are read from the bucket: the image's statistics and a raw download match
    image = importer.get("/images/2024:2024-05_a").json()
    assert image["files"][0]["href"] == href
    expected = scene_pixels("a")[0]
    got = importer.get("/images/2024:2024-05_a/download.npy", params={"scaling": "raw"})
    assert got.status_code == 200, got.text
    array = numpy.load(__import__("io").BytesIO(got.content))
    assert numpy.array_equal(array[0], expected)

    # importing again updates the same images
    again = importer.post("/imports", json=body).json()
    assert ids(again) == ids(answer)
    assert importer.store.count_images("2024") == 4


def test_filters_select_the_expected_scenes(tmp_path):
    """Each UP42 filter against the scene table above, via `tileserver import`."""
    root = write_scenes(tmp_path / "scenes")

    def run(*options: str) -> dict:
        catalog = tmp_path / f"c{len(list(tmp_path.glob('c*.db')))}.db"
        result = CliRunner().invoke(
            cli,
            [
                "import",
                "--cloud-provider", "file",
                "--bucket-name", str(root),
                "--catalog", f"sqlite:///{catalog}",
                "--quiet",
                *options,
            ],
        )  # fmt: skip
        assert result.exit_code in (0, 1), result.output
        return json.loads(result.output[result.output.index("{") :])

    every = {"2024-05_a", "2024-06_b", "2024-07_c", "2024-08_d"}
    assert ids(run()) == every
    assert ids(run("--time", "2024-05-15T00:00:00Z/2024-07-01T10:00:00Z")) == {
        "2024-06_b",
        "2024-07_c",
    }
    assert ids(run("--time", "2024-07-02/..")) == {"2024-08_d"}
    # scene b spans 10.2..10.3: a box touching only it
    assert ids(run("--bbox", "10.25,50.05,10.26,50.06")) == {"2024-06_b"}
    wide = mapping(box(10.05, 50.02, 10.45, 50.08))  # a, b and c
    assert ids(run("--intersects", json.dumps(wide))) == {"2024-05_a", "2024-06_b", "2024-07_c"}
    # contains: only a scene covering the whole geometry
    inside_b = mapping(box(10.21, 50.01, 10.29, 50.09))
    assert ids(run("--contains", json.dumps(inside_b))) == {"2024-06_b"}
    assert ids(run("--contains", json.dumps(wide))) == set()
    # max cloud cover keeps <= the value; a scene without cloud cover is left out
    assert ids(run("--max-cloud-cover", "40")) == {"2024-05_a", "2024-06_b"}
    limited = run("--limit", "2")
    assert ids(limited) == {"2024-05_a", "2024-06_b"}
    assert limited["numberFilteredOut"] == 2
    # ids override every other filter
    chosen = run("--ids", "2024-07_c,2024-08_d", "--max-cloud-cover", "1", "--limit", "1")
    assert ids(chosen) == {"2024-07_c", "2024-08_d"}
    missing = run("--ids", "2024-07_c,nope")
    assert ids(missing) == {"2024-07_c"}
    assert missing["failed"] == [
        {"path": "nope", "reason": "no scene with this id under the prefix"}
    ]


def test_gcs_import_through_the_emulator(tmp_path, gcs_bucket, importer):
    local = write_scenes(tmp_path / "local")
    gcs_bucket.upload(local, "snap/outputs")
    response = importer.post(
        "/imports",
        json={
            "cloud_provider": "gcs",
            "bucket_name": gcs_bucket.name,
            "prefix": "snap/outputs/",
            "max_cloud_cover": 50,
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert ids(answer) == {"2024-05_a", "2024-06_b"}
    href = answer["features"][0]["properties"]["tileserver:files"][0]
    assert href.startswith(f"/vsigs/{gcs_bucket.name}/snap/outputs/")
    got = importer.get(
        f"/images/{answer['features'][0]['properties']['up42.data_path']}/download.npy",
        params={"scaling": "raw"},
    )
    assert got.status_code == 200, got.text
    array = numpy.load(__import__("io").BytesIO(got.content))
    name = answer["features"][0]["id"].split("_")[-1]
    assert numpy.array_equal(array[0], scene_pixels(name)[0])


def test_failing_scenes_are_reported_and_the_others_land(tmp_path, s3_bucket, importer):
    local = write_scenes(tmp_path / "local")
    (local / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    item = json.loads(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "lost", "collection": "c",
        "geometry": mapping(box(0, 0, 1, 1)), "bbox": [0, 0, 1, 1],
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "assets": {"data": {"href": "missing.tif", "type": "image/tiff", "roles": ["data"]}},
        "links": [],
    }))  # fmt: skip
    (local / "lost.json").write_text(json.dumps(item))
    s3_bucket.upload(local, "p/")
    answer = importer.post(
        "/imports", json={"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "p"}
    ).json()
    assert ids(answer) == {"2024-05_a", "2024-06_b", "2024-07_c", "2024-08_d"}
    reasons = {Path(f["path"]).name: f["reason"] for f in answer["failed"]}
    assert set(reasons) == {"broken.tif", "lost.json"}
    assert "not a readable raster" in reasons["broken.tif"]
    assert "missing.tif" in reasons["lost.json"]
    assert importer.store.count_images("p") == 4
    with pytest.raises(Exception, match="not found"):
        importer.store.get_product("c")  # the failed item created nothing


def test_secrets_never_appear(tmp_path, s3_bucket, importer, caplog):
    caplog.set_level(logging.DEBUG)
    local = write_scenes(tmp_path / "local")
    (local / "broken.tif").write_bytes(b"garbage")
    s3_bucket.upload(local, "x/")
    answer = importer.post(
        "/imports", json={"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "x/"}
    )
    missing = importer.post(
        "/imports", json={"cloud_provider": "aws", "bucket_name": "no-such-bucket-here"}
    )
    assert missing.status_code == 400
    assert "no-such-bucket-here" in missing.json()["detail"]
    texts = [answer.text, missing.text, caplog.text]
    texts.append((tmp_path / "catalog.db").read_bytes().decode("latin-1"))
    texts.extend(p.read_text() for p in (tmp_path / "vrt").rglob("*") if p.is_file())
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert not [t for t in texts if SECRET in t]


def test_access_denied_is_a_clear_error(tmp_path, monkeypatch, importer):
    """A store that checks credentials (moto with auth on) refuses unknown keys."""
    server = moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0").start()
    try:
        for name, value in s3_environment(server).items():
            monkeypatch.setenv(name, value)
        response = importer.post(
            "/imports", json={"cloud_provider": "aws", "bucket_name": "private-bucket"}
        )
    finally:
        server.stop()
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "private-bucket" in detail and "access denied" in detail
    assert SECRET not in response.text


def test_request_validation(importer, tmp_path):
    post = importer.post
    base = {"cloud_provider": "aws", "bucket_name": "b"}
    both = {**base, "bbox": [0, 0, 1, 1], "contains": mapping(box(0, 0, 1, 1))}
    assert post("/imports", json=both).status_code == 422
    assert "only one of" in post("/imports", json=both).json()["detail"]
    assert post("/imports", json={**base, "time": "yesterday"}).status_code == 422
    assert post("/imports", json={**base, "bbox": [1, 0, 0, 1]}).status_code == 422
    assert post("/imports", json={**base, "max_cloud_cover": 120}).status_code == 422
    assert post("/imports", json={**base, "limit": 0}).status_code == 422
    assert post("/imports", json={**base, "cloud_provider": "azure"}).status_code == 422
    assert post("/imports", json={**base, "unknown": 1}).status_code == 422
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    assert post("/imports", json={**base, "intersects": bowtie}).status_code == 422


def test_file_imports_stay_under_the_import_roots(tmp_path, importer):
    inside = write_scenes(tmp_path / "imports" / "batch")
    outside = write_scenes(tmp_path / "elsewhere")
    (tmp_path / "imports" / "escape").symlink_to(outside)
    ok = importer.post("/imports", json={"cloud_provider": "file", "bucket_name": str(inside)})
    assert ok.status_code == 200 and len(ok.json()["features"]) == 4
    for bucket, prefix in (
        (str(outside), ""),
        (str(tmp_path / "imports"), "../elsewhere"),
        (str(tmp_path / "imports" / "escape"), ""),
    ):
        response = importer.post(
            "/imports", json={"cloud_provider": "file", "bucket_name": bucket, "prefix": prefix}
        )
        assert response.status_code == 403, (bucket, prefix, response.text)
        detail = response.json()["detail"]
        assert "may import from" in detail or "may not hold '..'" in detail
        assert str(tmp_path / "imports") not in detail.replace(bucket, "")  # roots not listed


def test_copy_option_makes_local_cogs(tmp_path, s3_bucket, importer):
    local = write_scenes(tmp_path / "local")
    s3_bucket.upload(local, "c/")
    body = {"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "c/", "copy": True}
    answer = importer.post("/imports", json=body).json()
    assert len(answer["features"]) == 4
    for feature in answer["features"]:
        (href,) = feature["properties"]["tileserver:files"]
        assert href.startswith("cogs/")  # relative to the data dir: no server path
        with rasterio.open(tmp_path / href) as src:
            name = feature["id"].split("_")[-1]
            assert numpy.array_equal(src.read(), scene_pixels(name))
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_google_key_string_reaches_gdal_and_is_redacted(monkeypatch):
    """GOOGLE_KEY_STRING (the UP42 way) becomes GDAL's key variables; messages hide it."""
    from tileserver.ingest import vsi

    key = (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    )
    document = json.dumps(
        {"type": "service_account", "client_email": "a@b.iam", "private_key": key}
    )
    monkeypatch.setenv("GOOGLE_KEY_STRING", document)
    monkeypatch.delenv("GS_OAUTH2_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("GS_OAUTH2_CLIENT_EMAIL", raising=False)
    vsi.configure_gdal()
    assert os.environ["GS_OAUTH2_PRIVATE_KEY"] == key
    assert os.environ["GS_OAUTH2_CLIENT_EMAIL"] == "a@b.iam"
    leaked = f"failed with {document} and {key}"
    assert "MIIEvQ" not in vsi.redact(leaked)
    monkeypatch.setenv("GOOGLE_KEY_STRING", "{not json " + "MIIEvQ")
    monkeypatch.delenv("GS_OAUTH2_PRIVATE_KEY")
    with pytest.raises(vsi.StorageError) as error:
        vsi.configure_gdal()
    assert "MIIEvQ" not in str(error.value)
