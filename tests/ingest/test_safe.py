"""Sentinel-2 SAFE products (L1C, L2A; compact and older naming; folders and zips) imported
and served.

Pixels served through XYZ tiles are compared with the arrays the JPEG2000s were written
from: each tile pixel's centre is carried to the tile's UTM grid with pyproj and looked up
in the written array (pixels within 1 m of a source pixel edge are left out, where the
warper may fall either way). Reflectance is worked out from the written DN and the offset
and quantification the synthetic document states.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import morecantile
import numpy
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pyproj import Transformer
from shapely.geometry import box, shape

from tests.buckets import S3Bucket, moto_server, s3_environment
from tests.conftest import make_settings
from tests.ingest.safe_synthetic import (
    CRS,
    SIZE,
    GranuleSpec,
    SafeSpec,
    WrittenGranule,
    tile_ring,
    write_safe,
)
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.cli import cli

TMS = morecantile.tms.get("WebMercatorQuad")
ZOOM = 18  # a tile pixel is ~0.4 m here: a 10 m pixel spans ~24 of them
L2A_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def file_import(client, folder: Path, **extra) -> dict:
    body = {"cloud_provider": "file", "bucket_name": str(folder), **extra}
    response = client.post("/imports", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def centre_tile(granule: WrittenGranule) -> morecantile.Tile:
    x, y = granule.spec.origin
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        x + SIZE * 10 * 0.4, y - SIZE * 10 * 0.4
    )
    return TMS.tile(lon, lat, ZOOM)


def tile_npy(client, image_id: str, tile: morecantile.Tile, **params) -> numpy.ndarray:
    url = f"/images/{image_id}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def expected_tile(
    granule: WrittenGranule, tile: morecantile.Tile, arrays: list[tuple[numpy.ndarray, int]]
) -> tuple[list[numpy.ndarray], numpy.ndarray]:
    """Per band, the written value under each tile pixel's centre; and where that is sure
    (inside the image, away from the edges of every band's pixels)."""
    left, bottom, right, top = TMS.xy_bounds(tile)
    size = 256
    step = (right - left) / size
    cols, rows = numpy.meshgrid(numpy.arange(size) + 0.5, numpy.arange(size) + 0.5)
    mx, my = left + cols * step, top - rows * step
    ux, uy = Transformer.from_crs("EPSG:3857", CRS, always_xy=True).transform(mx, my)
    ox, oy = granule.spec.origin
    sure = numpy.ones((size, size), bool)
    values = []
    for data, res in arrays:
        fx, fy = (ux - ox) / res, (oy - uy) / res
        inside = (fx >= 0) & (fy >= 0) & (fx < data.shape[1]) & (fy < data.shape[0])
        margin = 1.0 / res
        away = (numpy.abs(fx - numpy.round(fx)) > margin) & (
            numpy.abs(fy - numpy.round(fy)) > margin
        )
        sure &= inside & away
        ix = numpy.clip(numpy.floor(fx).astype(int), 0, data.shape[1] - 1)
        iy = numpy.clip(numpy.floor(fy).astype(int), 0, data.shape[0] - 1)
        values.append(data[iy, ix])
    return values, sure


@pytest.fixture()
def l2a(tmp_path, importer):
    written = write_safe(tmp_path / "imports" / "cdse", SafeSpec())
    answer = file_import(importer, tmp_path / "imports" / "cdse")
    assert answer["failed"] == [] and len(answer["features"]) == 1
    return written, answer["features"][0]


def test_an_l2a_product_is_one_image_with_its_metadata(l2a, importer):
    written, feature = l2a
    assert feature["id"] == written.spec.name
    props = feature["properties"]
    assert props["up42.data_path"] == f"sentinel-2-l2a:{written.spec.name}"
    assert props["time"] == "2024-06-01 10:36:31.024000+00:00"  # the granule's SENSING_TIME
    assert props["cc"] == 12.5  # the granule's CLOUDY_PIXEL_PERCENTAGE, not the product's 20
    image = importer.get(f"/images/{props['up42.data_path']}").json()
    expected = {
        "platform": "sentinel-2b",
        "constellation": "sentinel-2",
        "s2:processing_baseline": "05.10",
        "s2:mgrs_tile": "32TPS",
        "mgrs:utm_zone": 32,
        "sat:relative_orbit": 8,
        "sat:orbit_state": "descending",
        "s2:product_type": "S2MSI2A",
        "processing:level": "L2A",
    }
    assert {k: image["properties"].get(k) for k in expected} == expected
    # the files are the JPEG2000s as delivered, one per band, read in place
    files = props["tileserver:files"]
    assert all(f.endswith(".jp2") and "/IMG_DATA/R" in f for f in files)
    assert not [f for f in files if f.endswith(".vrt")]


def test_l2a_bands_come_once_at_their_finest_resolution_with_the_scl_legend(l2a, importer):
    bands = {b["name"]: b for b in importer.get("/products/sentinel-2-l2a").json()["bands"]}
    assert list(bands) == [*L2A_BANDS, "SCL", "AOT", "WVP"]
    resolutions = {name: bands[name]["resolution"]["value"] for name in bands}
    assert resolutions == {
        **dict.fromkeys(["B02", "B03", "B04", "B08", "AOT", "WVP"], 10),
        **dict.fromkeys(["B01", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"], 20),
        "B09": 60,
    }
    assert [bands[n]["file_index"] for n in bands] == list(range(len(bands)))
    scl = bands["SCL"]
    assert scl["type"] == "class" and scl["nodata"] == 0
    assert (
        scl["class_labels"][4] == "vegetation"
        and scl["class_labels"][9] == "cloud_high_probability"
    )
    assert len(scl["class_labels"]) == 12 and scl["colormap"][6] == [0, 0, 255, 255]
    assert all(bands[n]["nodata"] == 0 for n in bands)


def test_tile_pixels_are_the_written_values_across_resolutions(l2a, importer):
    written, feature = l2a
    granule = written.granules[0]
    tile = centre_tile(granule)
    got = tile_npy(importer, feature["properties"]["up42.data_path"], tile,
                   bands="B04,B8A,SCL", scaling="raw")  # fmt: skip
    assert got.shape == (4, 256, 256)  # three bands and the mask
    arrays = [granule.finest(b) for b in ("B04", "B8A", "SCL")]
    assert [res for _, res in arrays] == [10, 20, 20]
    values, sure = expected_tile(granule, tile, arrays)
    valid = sure & (values[0] != 0) & (values[1] != 0) & (values[2] != 0)
    assert valid.sum() > 10000
    for band, expected in zip(got[:3], values, strict=True):
        numpy.testing.assert_array_equal(band[valid], expected[valid])


def test_physical_scaling_and_the_processing_level_give_reflectance(l2a, importer):
    written, feature = l2a
    granule = written.granules[0]
    tile = centre_tile(granule)
    image = feature["properties"]["up42.data_path"]
    (dn,), sure = expected_tile(granule, tile, [granule.finest("B04")])
    valid = sure & (dn != 0)
    reflectance = (
        dn.astype("float64") - 1000
    ) / 10000  # BOA_ADD_OFFSET -1000, Q 10000; above 1 too
    physical = tile_npy(importer, image, tile, bands="B04", scaling="physical")
    numpy.testing.assert_allclose(physical[0][valid], reflectance[valid], atol=1e-9)
    level = tile_npy(importer, image, tile, bands="B04", processing_level="surface_reflectance",
                     scaling="raw")  # fmt: skip
    numpy.testing.assert_allclose(level[0][valid], reflectance[valid], atol=1e-6)
    row, col = numpy.argwhere(valid)[0]
    assert physical[0][row, col] == pytest.approx((int(dn[row, col]) - 1000) / 10000)


def test_before_baseline_04_there_is_no_offset_and_older_naming_gives_one_image_per_granule(
    tmp_path, importer
):
    spec = SafeSpec(
        level="L1C",
        baseline="02.04",
        compact=False,
        platform="S2A",
        granules=[
            GranuleSpec(tile="32TPS", cloudy=3.0),
            GranuleSpec(tile="32TQS", origin=(600600.0, 5000040.0), cloudy=40.0, seed=2),
        ],
    )
    written = write_safe(tmp_path / "imports" / "old", spec)
    answer = file_import(importer, tmp_path / "imports" / "old")
    assert answer["failed"] == []
    ids = sorted(f["id"] for f in answer["features"])
    assert ids == sorted(g.identifier for g in written.granules)
    assert all(i.startswith("S2A_OPER_MSI_L1C_TL_") and i.endswith("_N02.04") for i in ids)
    product = importer.get("/products/sentinel-2-l1c-pre0400").json()
    bands = {b["name"]: b for b in product["bands"]}
    assert list(bands) == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                           "B09", "B10", "B11", "B12"]  # fmt: skip
    assert bands["B10"]["resolution"]["value"] == 60 and bands["B8A"]["resolution"]["value"] == 20
    by_tile = {re.search(r"_T(\w{5})_N", f["id"]).group(1): f for f in answer["features"]}
    assert by_tile["32TQS"]["properties"]["cc"] == 40.0
    for granule in written.granules:
        feature = by_tile[granule.spec.tile]
        footprint = shape(feature["geometry"])
        ring = box(*shape({"type": "Polygon", "coordinates": [tile_ring(granule.spec)]}).bounds)
        assert footprint.is_valid and abs(footprint.area - ring.area) < 0.05 * ring.area
        tile = centre_tile(granule)
        (dn,), sure = expected_tile(granule, tile, [granule.finest("B8A")])
        valid = sure & (dn != 0)
        got = tile_npy(importer, feature["properties"]["up42.data_path"], tile, bands="B8A",
                       scaling="physical")  # fmt: skip
        numpy.testing.assert_allclose(got[0][valid], dn[valid] / 10000, atol=1e-9)


def test_offsets_are_read_per_band(tmp_path, importer):
    spec = SafeSpec(level="L1C", baseline="05.09", offsets={"B04": -1000, "B8A": -500})
    write_safe(tmp_path / "imports" / "l1c", spec)
    assert file_import(importer, tmp_path / "imports" / "l1c")["failed"] == []
    bands = {b["name"]: b for b in importer.get("/products/sentinel-2-l1c").json()["bands"]}
    for name, offset in (("B04", -1000), ("B8A", -500), ("B02", 0)):  # B02 is listed as 0
        assert bands[name]["data_range"] == [0, 65535]
        assert bands[name]["physical_range"] == pytest.approx(
            [offset / 10000, (65535 + offset) / 10000]
        )
    step = bands["B8A"]["processing_levels"]["toa_reflectance"][0]
    assert step["function"] == "linear" and step["parameter"] == [1e-4, -0.05]


@pytest.mark.parametrize("suffix", [".SAFE.zip", ".zip"])
def test_zipped_products_are_read_inside_the_archive(tmp_path, importer, suffix):
    written = write_safe(tmp_path / "imports" / "zips", SafeSpec(level="L1C"), zipped=suffix)
    answer = file_import(importer, tmp_path / "imports" / "zips")
    assert answer["failed"] == [] and len(answer["features"]) == 1
    feature = answer["features"][0]
    files = feature["properties"]["tileserver:files"]
    # relative to the folder the caller named: the archive, then the member
    assert files[0] == f"/vsizip/{{{written.path.name}}}/{written.spec.name}.SAFE/GRANULE/" + (
        "L1C_T32TPS_A037712_20240601T103631/IMG_DATA/T32TPS_20240601T103629_B01.jp2"
    )
    granule = written.granules[0]
    tile = centre_tile(granule)
    (dn,), sure = expected_tile(granule, tile, [granule.finest("B03")])
    got = tile_npy(importer, feature["properties"]["up42.data_path"], tile, bands="B03",
                   scaling="raw")  # fmt: skip
    valid = sure & (dn != 0)
    numpy.testing.assert_array_equal(got[0][valid], dn[valid])


def test_the_command_line_ingests_a_safe_folder(tmp_path):
    written = write_safe(tmp_path / "in", SafeSpec(level="L1C", baseline="03.01"))
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = CliRunner().invoke(
        cli, ["ingest", str(written.path), "--catalog", catalog, "--quiet"],
        env={"TILESERVER_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"registered": 1, "failed": []}


def test_a_scene_converting_differently_is_refused_from_a_product(tmp_path, importer):
    write_safe(tmp_path / "imports" / "new", SafeSpec(level="L1C"))
    assert file_import(importer, tmp_path / "imports" / "new")["failed"] == []
    write_safe(tmp_path / "imports" / "old", SafeSpec(level="L1C", baseline="03.01"))
    answer = file_import(importer, tmp_path / "imports" / "old", product="sentinel-2-l1c")
    assert answer["features"] == []
    assert "converts to reflectance differently" in answer["failed"][0]["reason"]


@pytest.fixture()
def patient_importer(tmp_path):
    """An importer whose requests may take 3 minutes: an import reads every band file's
    header and statistics from the bucket, slow on a loaded machine's moto server."""
    (tmp_path / "imports").mkdir(exist_ok=True)
    store = SQLiteStore(tmp_path / "catalog.db")
    settings = make_settings(tmp_path, import_roots=[tmp_path / "imports"], request_timeout=180)
    with TestClient(create_app(settings, store=store)) as client:
        yield client
    store.close()


@pytest.fixture()
def own_s3_bucket(monkeypatch):
    """A bucket on a moto server of its own: many small range reads of JPEG2000s through
    /vsizip/ and /vsis3/ should not wait behind what earlier tests left with the shared one."""
    server = moto_server().start()
    for name, value in s3_environment(server).items():
        monkeypatch.setenv(name, value)
    yield S3Bucket(server)
    server.stop()


def test_products_from_s3(tmp_path, own_s3_bucket, patient_importer):
    importer, s3_bucket = patient_importer, own_s3_bucket
    local = tmp_path / "upload"
    folder = write_safe(local, SafeSpec())
    zipped = write_safe(local, SafeSpec(level="L1C", platform="S2A"), zipped=".SAFE.zip")
    s3_bucket.upload(local, "s2/")
    body = {"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "s2/"}
    response = importer.post("/imports", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["failed"] == []
    by_id = {f["id"]: f for f in answer["features"]}
    assert set(by_id) == {folder.spec.name, zipped.spec.name}
    zip_files = by_id[zipped.spec.name]["properties"]["tileserver:files"]
    assert zip_files[0].startswith(f"/vsizip/{{/vsis3/{s3_bucket.name}/s2/{zipped.path.name}}}/")
    for written, band in ((folder, "B8A"), (zipped, "B02")):
        granule = written.granules[0]
        tile = centre_tile(granule)
        (dn,), sure = expected_tile(granule, tile, [granule.finest(band)])
        image = by_id[written.spec.name]["properties"]["up42.data_path"]
        got = tile_npy(importer, image, tile, bands=band, scaling="raw")
        valid = sure & (dn != 0)
        numpy.testing.assert_array_equal(got[0][valid], dn[valid])


def test_the_footprint_is_the_tile_cut_to_the_product_footprint(tmp_path, importer):
    granule = GranuleSpec()
    ring = tile_ring(granule)  # upper-left, upper-right, lower-right, lower-left
    west = [ring[0], ((ring[0][0] + ring[1][0]) / 2, ring[0][1]),
            ((ring[3][0] + ring[2][0]) / 2, ring[3][1]), ring[3]]  # fmt: skip
    write_safe(tmp_path / "imports" / "half", SafeSpec(footprint=west))
    feature = file_import(importer, tmp_path / "imports" / "half")["features"][0]
    footprint = shape(feature["geometry"])
    half = shape({"type": "Polygon", "coordinates": [[*west, west[0]]]})
    whole = shape({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    assert footprint.is_valid
    assert footprint.symmetric_difference(half).area < 0.02 * half.area
    assert footprint.area < 0.6 * whole.area


# --- hostile products -----------------------------------------------------------------------


def test_a_zip_with_a_member_leaving_it_is_refused(tmp_path, importer):
    folder = tmp_path / "imports" / "evil"
    written = write_safe(folder, SafeSpec(level="L1C"), zipped=".zip")
    with zipfile.ZipFile(written.path, "a") as archive:
        archive.writestr("../../outside.xml", "<x/>")
    answer = file_import(importer, folder)
    assert answer["features"] == []
    assert answer["failed"][0]["path"] == written.path.name
    assert "leaves the archive" in answer["failed"][0]["reason"]
    assert not (tmp_path / "outside.xml").exists()


def test_a_document_naming_files_outside_the_product_is_refused(tmp_path, importer):
    folder = tmp_path / "imports" / "escape"
    secret = tmp_path / "imports" / "secret" / "B01.jp2"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"not for you")
    written = write_safe(folder, SafeSpec(level="L1C"))
    document = written.safe / "MTD_MSIL1C.xml"
    text = document.read_text().replace(
        "<IMAGE_FILE>GRANULE/L1C_T32TPS_A037712_20240601T103631/IMG_DATA/T32TPS_20240601T103629_B01</IMAGE_FILE>",
        "<IMAGE_FILE>GRANULE/../../../secret/B01</IMAGE_FILE>",
    )
    document.write_text(text)
    answer = file_import(importer, folder)
    assert answer["features"] == []
    assert "outside the product: refused" in answer["failed"][0]["reason"]
    assert str(tmp_path) not in json.dumps(answer)


def test_a_huge_document_is_not_read(tmp_path, importer):
    folder = tmp_path / "imports" / "huge"
    written = write_safe(folder, SafeSpec(level="L1C"))
    tile_document = written.granules[0].folder / "MTD_TL.xml"
    text = tile_document.read_text()
    padding = "<!--" + "x" * (17 * 1024 * 1024) + "-->"
    tile_document.write_text(text.replace("<n1:General_Info>", padding + "<n1:General_Info>", 1))
    answer = file_import(importer, folder)
    assert answer["features"] == []
    assert "too large" in answer["failed"][0]["reason"]
