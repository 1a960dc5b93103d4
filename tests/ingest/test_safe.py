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
import rasterio
from click.testing import CliRunner
from pyproj import Transformer
from shapely.geometry import box, shape

from tests.ingest.safe_synthetic import (
    CRS,
    SIZE,
    GranuleSpec,
    SafeSpec,
    WrittenGranule,
    file_stem,
    tile_ring,
    write_jp2,
    write_safe,
)
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


def tile_utm(tile: morecantile.Tile, size: int = 256) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The UTM coordinates of each tile pixel's centre."""
    left, bottom, right, top = TMS.xy_bounds(tile)
    step = (right - left) / size
    cols, rows = numpy.meshgrid(numpy.arange(size) + 0.5, numpy.arange(size) + 0.5)
    mx, my = left + cols * step, top - rows * step
    return Transformer.from_crs("EPSG:3857", CRS, always_xy=True).transform(mx, my)


def expected_tile(
    granule: WrittenGranule, tile: morecantile.Tile, arrays: list[tuple[numpy.ndarray, int]]
) -> tuple[list[numpy.ndarray], numpy.ndarray]:
    """Per band, the written value under each tile pixel's centre; and where that is sure
    (inside the image, away from the edges of every band's pixels)."""
    ux, uy = tile_utm(tile)
    size = ux.shape[0]
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


# --- one product across processing baselines (harmonised) ----------------------------------

OLD_ORIGIN, NEW_ORIGIN = (600000.0, 5000040.0), (600300.0, 5000040.0)  # 300 m overlap
# written into the old granule's B04 (10 m), row 5: sums above 65535 clamp
CRAFTED = numpy.array([65000, 64535, 64536, 65535, 1, 7], dtype="uint16")


@pytest.fixture()
def harmonised(tmp_path, importer):
    """A 2021 L2A granule of baseline 03.00 (no offset) and a 2022 one of 04.00 (-1000),
    overlapping, imported together."""
    old = SafeSpec(
        baseline="03.00",
        start="2021-06-01T10:36:29.024Z",
        granules=[GranuleSpec(origin=OLD_ORIGIN, sensing="2021-06-01T10:36:31.024Z")],
    )
    new = SafeSpec(
        baseline="04.00",
        platform="S2A",
        start="2022-06-01T10:36:29.024Z",
        granules=[GranuleSpec(origin=NEW_ORIGIN, sensing="2022-06-01T10:36:31.024Z", seed=3)],
    )
    folder = tmp_path / "imports" / "series"
    written_old, written_new = write_safe(folder, old), write_safe(folder, new)
    granule = written_old.granules[0]
    data = granule.arrays[("B04", 10)]
    data[5, : len(CRAFTED)] = CRAFTED
    stem = file_stem(old, granule.spec, granule.identifier, "B04", 10)
    write_jp2(written_old.safe / f"{stem}.jp2", data, OLD_ORIGIN, 10)
    answer = file_import(importer, folder)
    assert answer["failed"] == [] and len(answer["features"]) == 2
    by_id = {f["id"]: f["properties"]["up42.data_path"] for f in answer["features"]}
    return (written_old, by_id[old.name]), (written_new, by_id[new.name])


def test_scenes_before_and_after_baseline_04_share_one_product(harmonised, importer):
    (old, old_image), (new, new_image) = harmonised
    assert old_image.startswith("sentinel-2-l2a:") and new_image.startswith("sentinel-2-l2a:")
    baselines = {
        importer.get(f"/images/{image}").json()["properties"]["s2:processing_baseline"]
        for image in (old_image, new_image)
    }
    assert baselines == {"03.00", "04.00"}
    old_files = importer.store.get_image(old_image).files
    new_files = importer.store.get_image(new_image).files
    assert all(f.href.endswith(".jp2") for f in new_files)  # offset -1000: no VRT
    names = [*L2A_BANDS, "SCL", "AOT", "WVP"]
    assert [Path(f.href).suffix for f in old_files] == [".vrt"] * 12 + [".jp2"] * 3
    assert all(f"/vrt/sentinel-2-l2a/{old.spec.name}_{n}.vrt" in f.href
               for n, f in zip(names[:12], old_files, strict=False))  # fmt: skip
    for (written, image), offset in (((old, old_image), 0), ((new, new_image), -1000)):
        granule = written.granules[0]
        tile = centre_tile(granule)
        (dn,), sure = expected_tile(granule, tile, [granule.finest("B04")])
        valid = sure & (dn != 0)
        assert valid.sum() > 10000
        reflectance = (dn[valid].astype("float64") + offset) / 10000
        physical = tile_npy(importer, image, tile, bands="B04", scaling="physical")
        numpy.testing.assert_allclose(physical[0][valid], reflectance, atol=1e-9)
        level = tile_npy(importer, image, tile, bands="B04", scaling="raw",
                         processing_level="surface_reflectance")  # fmt: skip
        numpy.testing.assert_allclose(level[0][valid], reflectance, atol=1e-6)
        # raw: the harmonised DN, the one conversion's input (DN + 1000 before 04.00)
        raw = tile_npy(importer, image, tile, bands="B04", scaling="raw")
        numpy.testing.assert_array_equal(raw[0][valid], dn[valid].astype(int) + offset + 1000)
        row, col = numpy.argwhere(valid)[0]
        assert physical[0][row, col] == pytest.approx((int(dn[row, col]) + offset) / 10000)


def test_the_shifting_vrt_keeps_nodata_and_clamps(harmonised, importer):
    (old, old_image), _ = harmonised
    granule = old.granules[0]
    dn = granule.arrays[("B04", 10)].astype(int)
    vrt = importer.store.get_image(old_image).files[L2A_BANDS.index("B04")].href
    with rasterio.open(vrt) as src:
        assert src.nodatavals == (0,) and src.dtypes == ("uint16",)
        values, mask = src.read(1), src.read_masks(1)
    assert values[5, : len(CRAFTED)].tolist() == [65535, 65535, 65535, 65535, 1001, 1007]
    numpy.testing.assert_array_equal(
        values, numpy.where(dn == 0, 0, numpy.minimum(dn + 1000, 65535))
    )
    numpy.testing.assert_array_equal(mask, numpy.where(dn == 0, 0, 255))
    assert (dn == 0).sum() == 60 * 10  # the strip on the right
    # served: the strip is transparent
    x, y = OLD_ORIGIN
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x + 555, y - 300)
    tile = TMS.tile(lon, lat, ZOOM)
    (written,), sure = expected_tile(granule, tile, [granule.finest("B04")])
    got = tile_npy(importer, old_image, tile, bands="B04", scaling="raw")
    nodata, valid = sure & (written == 0), sure & (written != 0)
    assert nodata.sum() > 10000 and valid.sum() > 1000
    assert (got[1][nodata] == 0).all() and (got[0][nodata] == 0).all()
    assert (got[1][valid] == 255).all()


def test_a_search_mosaic_paints_both_in_reflectance(harmonised, importer):
    (old, _), (new, _) = harmonised
    response = importer.post("/searches", json={"collections": ["sentinel-2-l2a"]})
    assert response.status_code == 200, response.text
    search = response.json()["id"]
    x, y = NEW_ORIGIN
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y - 300)
    tile = TMS.tile(lon, lat, 17)
    url = f"/searches/{search}/tiles/WebMercatorQuad/{tile.z}/{tile.x}/{tile.y}.npy"
    response = importer.get(url, params={"bands": "B04", "scaling": "physical"})
    assert response.status_code == 200, response.text
    got = numpy.load(io.BytesIO(response.content))
    ux, _ = tile_utm(tile)
    (old_dn,), old_sure = expected_tile(old.granules[0], tile, [old.granules[0].finest("B04")])
    (new_dn,), new_sure = expected_tile(new.granules[0], tile, [new.granules[0].finest("B04")])
    newest = new_sure & (new_dn != 0)  # newest on top
    only_old = old_sure & (old_dn != 0) & (ux < x - 1)
    assert newest.sum() > 1000 and only_old.sum() > 1000
    numpy.testing.assert_allclose(got[0][newest], (new_dn[newest] - 1000.0) / 10000, atol=1e-6)
    numpy.testing.assert_allclose(got[0][only_old], old_dn[only_old] / 10000.0, atol=1e-6)
    assert (got[1][newest | only_old] == 255).all()


def test_chip_services_see_both_baselines(harmonised, importer):
    (old, _), (new, _) = harmonised
    x, y = NEW_ORIGIN[0] + 104, NEW_ORIGIN[1] - 296  # covered by both
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    query = {"lon": lon, "lat": lat, "start_date": "2021-01-01", "end_date": "2022-12-31",
             "band": "B04", "chipsize": 100}  # fmt: skip
    response = importer.get("/chips/raw", params=query)  # LEVEL2A: sentinel-2-l2a
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dates"] == ["20210601T103631", "20220601T103631"]
    for url, written, shift in zip(body["chips"], (old, new), (1000, 0), strict=True):
        with rasterio.MemoryFile(importer.get("/" + url).content) as memory, memory.open() as src:
            pixels, transform = src.read(1), src.transform
        assert pixels.shape == (10, 10) and transform.a == 10
        ox, oy = written.granules[0].spec.origin
        col, row = round((transform.c - ox) / 10), round((oy - transform.f) / 10)
        dn = written.granules[0].arrays[("B04", 10)][row : row + 10, col : col + 10]
        assert (dn != 0).all()
        numpy.testing.assert_array_equal(pixels, dn.astype(int) + shift)


def test_before_baseline_04_older_naming_gives_one_image_per_granule_of_the_same_product(
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
    assert {f["properties"]["tileserver:product"] for f in answer["features"]} == {"sentinel-2-l1c"}
    assert importer.get("/products/sentinel-2-l1c-pre0400").status_code == 404
    product = importer.get("/products/sentinel-2-l1c").json()
    bands = {b["name"]: b for b in product["bands"]}
    assert list(bands) == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                           "B09", "B10", "B11", "B12"]  # fmt: skip
    assert bands["B10"]["resolution"]["value"] == 60 and bands["B8A"]["resolution"]["value"] == 20
    by_tile = {re.search(r"_T(\w{5})_N", f["id"]).group(1): f for f in answer["features"]}
    assert by_tile["32TQS"]["properties"]["cc"] == 40.0
    for granule in written.granules:
        feature = by_tile[granule.spec.tile]
        # every spectral band (offset 0) is read through a VRT of the server's
        files = feature["properties"]["tileserver:files"]
        assert len(files) == 13 and all(f.endswith(".vrt") for f in files)
        footprint = shape(feature["geometry"])
        ring = box(*shape({"type": "Polygon", "coordinates": [tile_ring(granule.spec)]}).bounds)
        assert footprint.is_valid and abs(footprint.area - ring.area) < 0.05 * ring.area
        tile = centre_tile(granule)
        (dn,), sure = expected_tile(granule, tile, [granule.finest("B8A")])
        valid = sure & (dn != 0)
        image = feature["properties"]["up42.data_path"]
        got = tile_npy(importer, image, tile, bands="B8A", scaling="physical")
        numpy.testing.assert_allclose(got[0][valid], dn[valid] / 10000, atol=1e-9)
        raw = tile_npy(importer, image, tile, bands="B8A", scaling="raw")
        numpy.testing.assert_array_equal(raw[0][valid], dn[valid].astype(int) + 1000)


def test_each_band_is_shifted_by_its_own_offset(tmp_path, importer):
    spec = SafeSpec(level="L1C", baseline="05.09", offsets={"B04": -1000, "B8A": -500})
    written = write_safe(tmp_path / "imports" / "l1c", spec)
    answer = file_import(importer, tmp_path / "imports" / "l1c")
    assert answer["failed"] == []
    bands = {b["name"]: b for b in importer.get("/products/sentinel-2-l1c").json()["bands"]}
    for name in ("B04", "B8A", "B02"):  # one conversion for all: (DN - 1000) / 10000
        assert bands[name]["data_range"] == [0, 65535]
        assert bands[name]["physical_range"] == pytest.approx([-0.1, 6.4535])
        step = bands[name]["processing_levels"]["toa_reflectance"][0]
        assert step["function"] == "linear" and step["parameter"] == [1e-4, -0.1]
    feature = answer["features"][0]
    files = dict(zip(bands, feature["properties"]["tileserver:files"], strict=True))
    assert files["B04"].endswith("_B04.jp2")  # offset -1000: opened directly
    assert files["B8A"].endswith("_B8A.vrt") and files["B02"].endswith("_B02.vrt")
    granule = written.granules[0]
    tile = centre_tile(granule)
    image = feature["properties"]["up42.data_path"]
    for band, offset in (("B04", -1000), ("B8A", -500), ("B02", 0)):  # B02 is listed as 0
        (dn,), sure = expected_tile(granule, tile, [granule.finest(band)])
        valid = sure & (dn != 0)
        got = tile_npy(importer, image, tile, bands=band, scaling="physical")
        numpy.testing.assert_allclose(
            got[0][valid], (dn[valid].astype(int) + offset) / 10000, atol=1e-9, err_msg=band
        )


@pytest.mark.parametrize(("suffix", "baseline"), [(".SAFE.zip", "05.10"), (".zip", "03.01")])
def test_zipped_products_are_read_inside_the_archive(tmp_path, importer, suffix, baseline):
    spec = SafeSpec(level="L1C", baseline=baseline)
    written = write_safe(tmp_path / "imports" / "zips", spec, zipped=suffix)
    answer = file_import(importer, tmp_path / "imports" / "zips")
    assert answer["failed"] == [] and len(answer["features"]) == 1
    feature = answer["features"][0]
    files = feature["properties"]["tileserver:files"]
    member = f"{written.spec.name}.SAFE/GRANULE/L1C_T32TPS_A037712_20240601T103631/IMG_DATA/"
    member += "T32TPS_20240601T103629_B01.jp2"
    if baseline >= "04.00":
        # relative to the folder the caller named: the archive, then the member
        assert files[0] == f"/vsizip/{{{written.path.name}}}/{member}"
    else:  # the server's VRT names the member in the archive where it is
        assert files[0] == f"vrt/sentinel-2-l1c/{written.spec.name}_B01.vrt"  # the data dir's
        image = importer.store.get_image(feature["properties"]["up42.data_path"])
        text = Path(image.files[0].href).read_text()
        assert f'<SourceFilename relativeToVRT="0">/vsizip/{{{written.path}}}/{member}<' in text
    granule = written.granules[0]
    tile = centre_tile(granule)
    (dn,), sure = expected_tile(granule, tile, [granule.finest("B03")])
    got = tile_npy(importer, feature["properties"]["up42.data_path"], tile, bands="B03",
                   scaling="raw")  # fmt: skip
    valid = sure & (dn != 0)
    shift = 0 if baseline >= "04.00" else 1000
    numpy.testing.assert_array_equal(got[0][valid], dn[valid].astype(int) + shift)


def test_the_command_line_ingests_a_safe_folder(tmp_path):
    written = write_safe(tmp_path / "in", SafeSpec(level="L1C", baseline="03.01"))
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = CliRunner().invoke(
        cli, ["ingest", str(written.path), "--catalog", catalog, "--quiet"],
        env={"TILESERVER_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"registered": 1, "failed": []}


def test_a_product_converting_otherwise_is_refused(tmp_path, importer):
    """A product whose conversion is not the canonical one (made by other means, or by an
    earlier version keeping offset 0) gets no SAFE scene, whatever its baseline."""
    write_safe(tmp_path / "imports" / "new", SafeSpec(level="L1C"))
    assert file_import(importer, tmp_path / "imports" / "new", product="mine")["failed"] == []
    store = importer.store
    product = store.get_product("mine")
    unshifted = [
        step.model_copy(update={"parameter": [1e-4, 0.0]})
        for step in product.band("B04").processing_levels["toa_reflectance"]
    ]
    bands = [
        b.model_copy(update={"processing_levels": {"toa_reflectance": unshifted}})
        if b.name == "B04"
        else b
        for b in product.bands
    ]
    store.put_product(product.model_copy(update={"bands": bands}))
    for baseline in ("05.10", "03.01"):
        folder = tmp_path / "imports" / f"n{baseline}"
        write_safe(folder, SafeSpec(level="L1C", baseline=baseline, platform="S2A"))
        answer = file_import(importer, folder, product="mine")
        assert answer["features"] == []
        why = answer["failed"][0]["reason"]
        assert "band 'B04' converts to reflectance differently from product 'mine'" in why
        assert "(DN -1000) / 10000" in why


def test_products_from_s3(tmp_path, s3_bucket, importer):
    local = tmp_path / "upload"
    # both before baseline 04.00: spectral bands read through VRTs of /vsis3/ objects and of
    # /vsizip/{/vsis3/...} members; AOT opened directly
    folder = write_safe(local, SafeSpec(baseline="03.00"))
    zipped = write_safe(
        local, SafeSpec(level="L1C", platform="S2A", baseline="02.14"), zipped=".SAFE.zip"
    )
    s3_bucket.upload(local, "s2/")
    body = {"cloud_provider": "aws", "bucket_name": s3_bucket.name, "prefix": "s2/"}
    response = importer.post("/imports", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["failed"] == []
    by_id = {f["id"]: f for f in answer["features"]}
    assert set(by_id) == {folder.spec.name, zipped.spec.name}
    for written, band, shift, source in (
        (folder, "B8A", 1000, f"/vsis3/{s3_bucket.name}/s2/{folder.path.name}/GRANULE/"),
        (folder, "AOT", 0, f"/vsis3/{s3_bucket.name}/s2/{folder.path.name}/GRANULE/"),
        (zipped, "B02", 1000, f"/vsizip/{{/vsis3/{s3_bucket.name}/s2/{zipped.path.name}}}/"),
    ):
        image = by_id[written.spec.name]["properties"]["up42.data_path"]
        record = importer.store.get_image(image)
        product = importer.store.get_product(record.product_id)
        href = record.files[product.band(band).file_index].href
        if shift:
            assert href.endswith(f"_{band}.vrt")
            assert f'<SourceFilename relativeToVRT="0">{source}' in Path(href).read_text()
        else:
            assert href.startswith(source) and href.endswith(".jp2")
        granule = written.granules[0]
        tile = centre_tile(granule)
        (dn,), sure = expected_tile(granule, tile, [granule.finest(band)])
        got = tile_npy(importer, image, tile, bands=band, scaling="raw")
        valid = sure & (dn != 0)
        numpy.testing.assert_array_equal(got[0][valid], dn[valid].astype(int) + shift)


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
