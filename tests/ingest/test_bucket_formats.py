"""The user's path: SPOT/Pleiades deliveries in S3 and SNAP outputs in GCS, one import each.

Scenes land with the dates and cloud cover their metadata give, their pixels are served
from the bucket (compared with the arrays the products were written from), failures are
named, and nothing of a failed scene is registered.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.fixtures import fixture_path
from tests.ingest.beam_synthetic import gcp_product, map_product, write_product
from tests.ingest.dimap2_synthetic import (
    SPOT_ID,
    tile_name,
    write_dim,
    write_spot_bundle,
)
from tests.ingest.test_dimap2 import tiled_spec
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.cli import cli


@pytest.fixture()
def app_client(tmp_path):
    store = SQLiteStore(tmp_path / "catalog.db")
    with TestClient(create_app(make_settings(tmp_path), store=store)) as client:
        client.store = store
        yield client
    store.close()


def npy(client: TestClient, image_id: str, **params) -> numpy.ndarray:
    response = client.get(f"/images/{image_id}/download.npy", params={"scaling": "raw", **params})
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def test_spot_and_pleiades_deliveries_from_s3(tmp_path, s3_bucket, app_client):
    local = tmp_path / "delivery"
    bundle = write_spot_bundle(local / "spot")
    spec = tiled_spec("GTiff")
    write_dim(local / "phr" / "tiled", spec)
    broken = write_dim(local / "phr" / "broken", replace(spec, stem="PHR1A_BROKEN"))
    missing_tile = broken.parent / tile_name(
        replace(spec, stem="PHR1A_BROKEN"), spec.groups[0], 2, 2
    )
    assert missing_tile.exists()
    missing_tile.unlink()
    corrupt = local / "phr" / "corrupt" / "DIM_PHR1A_CORRUPT.XML"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("<Dimap_Document><unclosed>")
    s3_bucket.upload(local, "orders/2024/")

    body = {"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "orders/2024"}
    response = app_client.post("/imports", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    by_id = {f["id"]: f for f in answer["features"]}
    assert set(by_id) == {SPOT_ID, "PHR1A_MS_tiled"}
    spot = by_id[SPOT_ID]["properties"]
    assert spot["time"] == "2019-09-22 09:49:20.400000+00:00"
    assert spot["cc"] == 12.5
    assert spot["up42.data_path"] == f"spot_p_ms:{SPOT_ID}"
    source = f"/vsis3/{s3_bucket.name}/orders/2024/spot/VOL_SPOT7.XML"
    assert spot["tileserver:source"] == source
    assert all(h.endswith(".vrt") for h in spot["tileserver:files"])  # pan VRT, MS VRT
    lons, lats = zip(*bundle["extent"], strict=True)
    assert by_id[SPOT_ID]["bbox"] == pytest.approx([min(lons), min(lats), max(lons), max(lats)])

    reasons = {Path(f["path"]).name: f["reason"] for f in answer["failed"]}
    assert set(reasons) == {"DIM_PHR1A_BROKEN.XML", "DIM_PHR1A_CORRUPT.XML"}
    assert "IMG_PHR1A_BROKEN_R2C2.TIF" in reasons["DIM_PHR1A_BROKEN.XML"]
    assert "DIM_PHR1A_CORRUPT.XML" in reasons["DIM_PHR1A_CORRUPT.XML"]
    names = [i.name for i in app_client.store.list_images("phr_ms").images]
    assert names == ["PHR1A_MS_tiled"]  # the failed scenes left nothing behind

    # pixels come from the bucket, each band on its own file's grid
    image_id = f"spot_p_ms:{SPOT_ID}"
    pan = npy(app_client, image_id, bands="pan")
    assert numpy.array_equal(pan[0], bundle["pan"][0])
    red = npy(app_client, image_id, bands="red")
    assert numpy.array_equal(red[0], bundle["ms"][2])  # B0 B1 B2 B3: red is file band 3
    # the tiled product across its tile seams (file order B2 B1 B0 B3 -> red is file band 1)
    tiled = npy(app_client, "phr_ms:PHR1A_MS_tiled", bands="red,nir")
    assert numpy.array_equal(tiled, spec.groups[0].data[[0, 3]])
    # a web-map tile renders
    tilejson = app_client.get(f"/images/{image_id}/tilejson.json").json()
    assert tilejson["bounds"] == pytest.approx(by_id[SPOT_ID]["bbox"], abs=1e-4)

    # importing again changes nothing but the records' modification times
    again = app_client.post("/imports", json=body).json()
    assert {f["id"] for f in again["features"]} == set(by_id)
    assert app_client.store.count_images("spot_p_ms") == 1
    assert app_client.store.count_images("phr_ms") == 1


def test_snap_outputs_from_gcs(tmp_path, gcs_bucket, app_client):
    local = tmp_path / "snap"
    mapped = map_product("S2_RESAMPLED_20210615")
    swath = gcp_product("MER_RR_20080201", start="01-FEB-2008 09:26:09.416160")
    write_product(local / "a", mapped)
    write_product(local / "b", swath)
    gcs_bucket.upload(local, "outputs/")

    body = {"cloud_provider": "gcs", "bucket_name": gcs_bucket.name, "prefix": "outputs/"}
    answer = app_client.post("/imports", json=body).json()
    assert answer["failed"] == []
    by_id = {f["id"]: f for f in answer["features"]}
    assert set(by_id) == {"S2_RESAMPLED_20210615", "MER_RR_20080201"}
    assert by_id["MER_RR_20080201"]["properties"]["time"] == "2008-02-01 09:26:09.416160+00:00"
    assert by_id["S2_RESAMPLED_20210615"]["properties"]["cc"] is None

    # bands of two types (int8 stored as ENVI Byte, uint32 as ENVI Int32) in one request
    image_id = by_id["S2_RESAMPLED_20210615"]["properties"]["up42.data_path"]
    expected = {b.name: b.data for b in mapped.bands}
    got = npy(app_client, image_id, bands="signed_i8,counts_u32")
    numpy.testing.assert_array_equal(got[0], expected["signed_i8"])
    numpy.testing.assert_array_equal(got[1], expected["counts_u32"])
    assert got[1].max() > 2**31
    refl = npy(app_client, image_id, bands="refl_red")
    numpy.testing.assert_array_equal(refl[0], expected["refl_red"])  # nodata 0 stays 0

    # the time filter picks the 2008 swath only
    store_path = tmp_path / "filtered.db"
    result = CliRunner().invoke(
        cli,
        [
            "import",
            "--cloud-provider", "gcs",
            "--bucket-name", gcs_bucket.name,
            "--prefix", "outputs/",
            "--time", "2008-01-01/2008-12-31",
            "--catalog", f"sqlite:///{store_path}",
            "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    collection = json.loads(result.output[result.output.index("{") :])
    assert [f["id"] for f in collection["features"]] == ["MER_RR_20080201"]
    assert collection["numberFilteredOut"] == 1


def test_the_foreign_sample_products_ingest(tmp_path):
    """The real DIMAP v2 and BEAM-DIMAP samples, from a folder, through `tileserver ingest`."""
    samples = tmp_path / "samples"
    for parts in (("dimap2", "vhr2020_ms_fs"), ("dimap2", "jpeg2000_ple"), ("beam-dimap",)):
        shutil.copytree(fixture_path(*parts), samples / parts[-1])
    catalog = tmp_path / "catalog.db"
    result = CliRunner().invoke(
        cli, ["ingest", str(samples), "--catalog", f"sqlite:///{catalog}", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report == {"registered": 3, "failed": []}
    store = SQLiteStore(catalog)
    images = {
        image.product_id: image
        for product in store.list_products()
        for image in store.list_images(product.id).images
    }
    store.close()
    assert set(images) == {"pneo_ms-fs", "phr", "mer_rr__2p"}
    assert images["pneo_ms-fs"].cloud_cover == pytest.approx(77.98127298818147)
    assert images["phr"].acquired.isoformat() == "2015-01-01T00:00:00+00:00"
    assert images["mer_rr__2p"].acquired.isoformat() == "2008-02-01T09:26:09.416160+00:00"
