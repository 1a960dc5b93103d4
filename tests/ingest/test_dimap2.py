"""DIMAP v2 scenes (SPOT 6/7, Pleiades, Pleiades Neo): metadata, VRT mosaics, bands, calibration.

Expected values come from what the tests wrote (arrays, gains, vertices) or from an
independent reader: GDAL's own DIMAP driver and the tiles read directly with rasterio.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy
import pytest
import rasterio
from rasterio.transform import from_gcps, from_origin
from rio_tiler.io import Reader
from shapely.geometry import MultiPoint, Point, box, shape

from tests.fixtures import fixture_path
from tests.ingest.dimap2_synthetic import (
    SPOT_ID,
    DimSpec,
    FileGroup,
    LinearRpc,
    corner_extent,
    pixels,
    tile_name,
    write_dim,
    write_spot_bundle,
    write_vol,
)
from tileserver.catalog.models import Band, Product
from tileserver.ingest.dimap2 import Dimap2Scene, is_entry, parse_rpc, read_xml
from tileserver.ingest.raster import IngestError
from tileserver.render.pipeline import apply_processing_level


def build(scene: Dimap2Scene, tmp: Path, product: Product | None = None):
    meta = scene.meta()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rio-tiler: small VRTs have no overviews
        return scene.build(meta, meta.product_id, product, tmp / "vrt" / "scene.vrt")


def read(href: str) -> numpy.ndarray:
    with rasterio.open(href) as src:
        return src.read()


def by_name(bands: list[Band]) -> dict[str, Band]:
    return {b.name: b for b in bands}


# --- synthetic products ---------------------------------------------------------------


@pytest.fixture
def spot_bundle(tmp_path):
    return write_spot_bundle(tmp_path)


def tiled_spec(driver: str) -> DimSpec:
    """Pleiades 1A MS, 4 bands 20x28 in 2x2 tiles of 16x12 (the last row/column smaller).

    The files hold B2 B1 B0 B3 (red, green, blue, nir); Raster_Index_List lists them in
    BAND_ID order with BAND_INDEX giving each one's position in the file.
    """
    return DimSpec(
        stem="PHR1A_MS_202104011020123_ORT_2",
        groups=[
            FileGroup(
                pixels(4, 20, 28),
                index_list=[("B0", 3), ("B1", 2), ("B2", 1), ("B3", 4)],
                display=("B2", "B1", "B0"),
            )
        ],
        mission="PHR",
        mission_index="1A",
        instrument="PHR",
        crs="EPSG:32631",
        transform=from_origin(500000.0, 5400000.0, 2.0, 2.0),
        tile_size=(16, 12),
        driver=driver,
        radiance={"B0": (9.5, 0.0), "B1": (9.0, 0.0), "B2": (10.0, 0.0), "B3": (15.0, 0.0)},
        extent=corner_extent("EPSG:32631", from_origin(500000.0, 5400000.0, 2.0, 2.0), 28, 20),
        imaging_date="2021-04-01",
        imaging_time="10:20:12.3Z",
        dataset_name="PHR1A_MS_tiled",
    )


@pytest.fixture(params=["GTiff", "JP2OpenJPEG"])
def tiled(request, tmp_path):
    spec = tiled_spec(request.param)
    return write_dim(tmp_path / "product", spec), spec


@pytest.fixture
def pneo(tmp_path):
    """Pleiades Neo MS-FS: RGB and NED files per tile, 2 tile columns, a REFLECTANCE product."""
    rgb, ned = pixels(3, 14, 20, 10000), pixels(3, 14, 20, 10000)
    transform = from_origin(4.9, 45.8, 1e-5, 1e-5)
    spec = DimSpec(
        stem="PNEO3_202304051030123_MS-FS_ORT_3",
        groups=[
            FileGroup(rgb, part="RGB", index_list=[("R", 1), ("G", 2), ("B", 3)]),
            # the BAND_INDEX values of GDAL's Pleiades Neo sample: not file positions
            FileGroup(ned, part="NED", index_list=[("NIR", 4), ("RE", 2), ("DB", 3)]),
        ],
        mission="PNEO",
        mission_index="3",
        instrument=None,
        spectral="MS-FS",
        radiometric_processing="REFLECTANCE",
        crs="EPSG:4326",
        transform=transform,
        tile_size=(12, 14),
        nbits=16,
        radiance={
            "R": (0.0027, 25.9),
            "G": (0.0026, 50.2),
            "B": (0.0033, 67.9),
            "NIR": (0.0030, 12.3),
            "RE": (0.0042, 3.5),
            "DB": (0.0038, 6.9),
        },
        reflectance={b: (10000.0, 0.0) for b in ("R", "G", "B", "NIR", "RE", "DB")},
        cloud_cover=0.0,
        extent=corner_extent("EPSG:4326", transform, 20, 14),
        extent_type="Bounding_Box",
        extent_centre=(4.9001, 45.79993),
        imaging_date="2023-04-05",
        imaging_time="10:30:12.3",
        source_id="DS_PNEO3_202304051030123_FR1_PX_E004N45_01234",
    )
    folder = tmp_path / "PNEO_DELIVERY"
    dim = write_dim(folder / "MS-FS", spec)
    vol = write_vol(
        folder / "VOL_PNEO.XML",
        [("ORTHO MS-FS", f"MS-FS/{dim.name}"), ("ORTHO PAN", "PAN/DIM_PAN.XML")],
    )
    return {"vol": vol, "rgb": rgb, "ned": ned, "spec": spec}


# --- entry points ---------------------------------------------------------------------


def test_entry_points():
    assert is_entry("/data/VOL_PHR.XML")
    assert is_entry("/vsis3/bucket/a/DIM_SPOT7_MS_001.xml")
    assert is_entry("vol_pneo.xml")
    assert not is_entry("/data/IMG_SPOT7_MS_R1C1.TIF")
    assert not is_entry("/data/RPC_SPOT7.XML")
    assert not is_entry("/data/DIM_SPOT7.XML.aux.xml")
    assert not is_entry("/data/DIM_/PREVIEW.JPG")


# --- SPOT 6/7 bundle ------------------------------------------------------------------


def test_bundle_metadata(spot_bundle):
    meta = Dimap2Scene(str(spot_bundle["vol"])).meta()
    assert meta.id == SPOT_ID
    assert meta.acquired == datetime(2019, 9, 22, 9, 49, 20, 400000, tzinfo=UTC)
    assert meta.cloud_cover == 12.5
    assert meta.product_id == "spot_p_ms"
    footprint = shape(meta.geometry)
    assert footprint.equals(MultiPoint(spot_bundle["extent"]).convex_hull)
    assert meta.geometry["coordinates"][0][0] == meta.geometry["coordinates"][0][-1]
    assert meta.properties == {
        "platform": "spot-7",
        "constellation": "spot",
        "instrument": "naomi",
        "processing:level": "ORTHO",
        "dimap:spectral_processing": "P+MS",
        "snow_cover": 1.5,
        "tileserver:provenance": {"geometry": "Dataset_Extent", "datetime": "IMAGING_DATE"},
    }


def test_bundle_files_bands_and_pixels(spot_bundle, tmp_path):
    image, bands = build(Dimap2Scene(str(spot_bundle["vol"])), tmp_path)
    assert [f.href for f in image.files] == [
        str(tmp_path / "vrt" / "scene.vrt"),
        str(tmp_path / "vrt" / "scene_1.vrt"),
    ]
    layout = [(b.name, b.file_index, b.band_index) for b in bands]
    assert layout == [
        ("pan", 0, 0),
        ("blue", 1, 0),
        ("green", 1, 1),
        ("red", 1, 2),
        ("nir", 1, 3),
    ]
    pan, ms = read(image.files[0].href), read(image.files[1].href)
    numpy.testing.assert_array_equal(pan, spot_bundle["pan"])
    numpy.testing.assert_array_equal(ms, spot_bundle["ms"])
    named = by_name(bands)
    assert named["pan"].resolution.value == 1.5 and named["pan"].resolution.unit == "meters"
    assert named["red"].resolution.value == 6.0
    assert all(b.data_type == "UInt16" and b.data_range == (0, 4095) for b in bands)
    assert all(b.nodata == 0 for b in bands)
    assert named["blue"].wavelength_nm_min == pytest.approx(455)
    assert named["blue"].wavelength_nm_max == pytest.approx(525)
    assert named["nir"].wavelength_nm_center == pytest.approx(825)
    # the image grid is the finest component's: the pan band
    assert image.crs == "EPSG:32633"
    assert image.geotrans == (400000.0, 1.5, 0.0, 5900000.0, 0.0, -1.5)
    assert (image.width, image.height) == (60, 40)
    assert image.name == SPOT_ID and image.product_id == "spot_p_ms"
    assert image.cloud_cover == 12.5
    assert set(image.band_stats) == {"pan", "blue", "green", "red", "nir"}
    # statistics skip the nodata pixel: the minimum is the smallest written value
    assert image.band_stats["blue"].min == spot_bundle["ms"][0][spot_bundle["ms"][0] > 0].min()


def test_bundle_band_order_agrees_with_gdal(spot_bundle, tmp_path):
    """GDAL's DIMAP driver puts B0's calibration on file band 1: so do our names."""
    image, bands = build(Dimap2Scene(str(spot_bundle["vol"])), tmp_path)
    radiance = spot_bundle["spec"].radiance
    ids = {"blue": "B0", "green": "B1", "red": "B2", "nir": "B3"}
    with rasterio.open(spot_bundle["ms_dim"]) as gdal:
        assert gdal.driver == "DIMAP"
        numpy.testing.assert_array_equal(gdal.read(), read(image.files[1].href))
        for band in bands[1:]:
            tags = gdal.tags(band.band_index + 1)
            assert float(tags["RADIANCE_GAIN"]) == radiance[ids[band.name]][0]


def test_bundle_radiance(spot_bundle, tmp_path):
    image, bands = build(Dimap2Scene(str(spot_bundle["vol"])), tmp_path)
    gains = {"blue": (7.5, 1.0), "green": (8.0, 0.0), "red": (9.0, 0.25), "nir": (11.0, 0.5)}
    ms = spot_bundle["ms"].astype("float64")
    selected = [b for b in bands if b.file_index == 1]
    radiance = apply_processing_level(numpy.ma.MaskedArray(ms), selected, "radiance")
    for i, band in enumerate(selected):
        gain, bias = gains[band.name]
        numpy.testing.assert_allclose(radiance[i], ms[i] / gain + bias)
        assert band.physical_range == pytest.approx((bias, 4095 / gain + bias))
        assert band.physical_range_unit == "watt/m2/steradian/micrometer"
        assert band.processing_levels["radiance"][0].data_type == "Float32"
        assert "reflectance" not in band.processing_levels  # not a REFLECTANCE product
    pan = by_name(bands)["pan"]
    assert pan.physical_range == pytest.approx((0, 4095 / 12.0))


def test_bundle_product_layout(spot_bundle, tmp_path):
    scene = Dimap2Scene(str(spot_bundle["vol"]))
    _, bands = build(scene, tmp_path)
    product = Product(id="spot_p_ms", bands=bands)
    image, returned = build(scene, tmp_path, product)
    assert returned == product.bands
    assert set(image.band_stats) == {b.name for b in bands}
    moved = Product(id="spot_p_ms", bands=[Band(name="red", file_index=1, band_index=0)])
    with pytest.raises(IngestError, match=r"'red' is at file 1, band 2 .* file 1, band 0"):
        build(scene, tmp_path, moved)
    unknown = Product(id="spot_p_ms", bands=[Band(name="swir", file_index=1, band_index=4)])
    with pytest.raises(IngestError, match="'swir'"):
        build(scene, tmp_path, unknown)


def test_lone_dim_is_one_component(spot_bundle, tmp_path):
    meta = Dimap2Scene(str(spot_bundle["ms_dim"])).meta()
    assert meta.product_id == "spot_ms"
    image, bands = build(Dimap2Scene(str(spot_bundle["ms_dim"])), tmp_path)
    assert [b.name for b in bands] == ["blue", "green", "red", "nir"]
    assert len(image.files) == 1
    numpy.testing.assert_array_equal(read(image.files[0].href), spot_bundle["ms"])


# --- tiled products -------------------------------------------------------------------


def test_tiles_are_mosaicked(tiled, tmp_path):
    dim, spec = tiled
    data = spec.groups[0].data
    image, bands = build(Dimap2Scene(str(dim)), tmp_path)
    vrt = image.files[0].href
    numpy.testing.assert_array_equal(read(vrt), data)
    assert (image.width, image.height) == (28, 20)
    assert image.geotrans == (500000.0, 2.0, 0.0, 5400000.0, 0.0, -2.0)
    # rio-tiler reads a window across both tile seams (col 16, row 12) unchanged
    x0, y0 = 500000.0 + 10 * 2, 5400000.0 - 6 * 2
    with warnings.catch_warnings(), Reader(vrt) as reader:
        warnings.simplefilter("ignore")
        part = reader.part(
            (x0, y0 - 12 * 2, x0 + 12 * 2, y0),
            dst_crs=reader.crs,
            bounds_crs=reader.crs,
            width=12,
            height=12,
            max_size=None,
        )
    numpy.testing.assert_array_equal(part.data, data[:, 6:18, 10:22])
    # GDAL's DIMAP driver, an independent mosaic of the same tiles, agrees
    with rasterio.open(dim) as gdal:
        numpy.testing.assert_array_equal(gdal.read(), data)


def test_band_names_follow_raster_index(tiled, tmp_path):
    """File bands are B2 B1 B0 B3: each name reads the pixels written for its BAND_ID."""
    dim, spec = tiled
    data = spec.groups[0].data
    image, bands = build(Dimap2Scene(str(dim)), tmp_path)
    written = {"red": data[0], "green": data[1], "blue": data[2], "nir": data[3]}
    stack = read(image.files[0].href)
    for name, expected in written.items():
        numpy.testing.assert_array_equal(stack[by_name(bands)[name].band_index], expected)
    gains = {"red": 10.0, "green": 9.0, "blue": 9.5, "nir": 15.0}
    radiance = apply_processing_level(numpy.ma.MaskedArray(stack), bands, "radiance")
    for band in bands:
        expected = written[band.name] / gains[band.name]
        numpy.testing.assert_allclose(radiance[band.band_index], expected)


def test_missing_tile_is_named(tiled, tmp_path):
    dim, spec = tiled
    missing = tile_name(spec, spec.groups[0], 2, 1)
    (dim.parent / missing).unlink()
    scene = Dimap2Scene(str(dim))
    scene.meta()  # metadata alone does not open tiles
    with pytest.raises(IngestError, match=missing):
        build(scene, tmp_path)


def test_tiles_found_by_name_without_raster_data(tmp_path):
    spec = replace(tiled_spec("GTiff"), raster_data=False, radiance={})
    dim = write_dim(tmp_path, spec)
    image, bands = build(Dimap2Scene(str(dim)), tmp_path)
    numpy.testing.assert_array_equal(read(image.files[0].href), spec.groups[0].data)
    assert [b.name for b in bands] == ["b1", "b2", "b3", "b4"]  # nothing names the bands
    assert all(b.data_range == (0, 65535) and b.nodata is None for b in bands)


# --- Pleiades Neo MS-FS ---------------------------------------------------------------


def test_pneo_two_files_per_tile(pneo, tmp_path):
    scene = Dimap2Scene(str(pneo["vol"]))
    meta = scene.meta()
    assert meta.product_id == "pneo_ms-fs"
    assert meta.acquired == datetime(2023, 4, 5, 10, 30, 12, 300000, tzinfo=UTC)
    assert meta.cloud_cover == 0.0
    assert meta.properties["platform"] == "pneo-3"
    assert meta.properties["constellation"] == "pleiades-neo"
    assert meta.properties["tileserver:missing_components"] == ["PAN/DIM_PAN.XML"]
    # a Bounding_Box with an inner centre vertex: the box itself
    assert shape(meta.geometry).equals(MultiPoint(pneo["spec"].extent).convex_hull)
    image, bands = build(scene, tmp_path)
    assert image.properties["tileserver:missing_components"] == ["PAN/DIM_PAN.XML"]
    assert len(image.files) == 1
    assert [b.name for b in bands] == ["red", "green", "blue", "nir", "rededge", "deepblue"]
    assert [b.band_index for b in bands] == [0, 1, 2, 3, 4, 5]
    stack = read(image.files[0].href)
    numpy.testing.assert_array_equal(stack, numpy.concatenate([pneo["rgb"], pneo["ned"]]))
    assert image.crs == "EPSG:4326"
    assert bands[0].resolution.unit == "degrees"
    assert bands[0].resolution.value == pytest.approx(1e-5)
    assert bands[0].data_range == (0, 65535)


def test_pneo_reflectance_product_radiance(pneo, tmp_path):
    """Band_Radiance of a REFLECTANCE product converts reflectance: L = (DN / 10000) / G + B."""
    image, bands = build(Dimap2Scene(str(pneo["vol"])), tmp_path)
    stack = read(image.files[0].href).astype("float64")
    ids = ["R", "G", "B", "NIR", "RE", "DB"]
    radiance = apply_processing_level(numpy.ma.MaskedArray(stack), bands, "radiance")
    reflectance = apply_processing_level(numpy.ma.MaskedArray(stack), bands, "reflectance")
    for i, band_id in enumerate(ids):
        gain, bias = pneo["spec"].radiance[band_id]
        numpy.testing.assert_allclose(reflectance[i], stack[i] / 10000)
        numpy.testing.assert_allclose(radiance[i], stack[i] / 10000 / gain + bias)
        assert bands[i].physical_range == pytest.approx((bias, 65535 / 10000 / gain + bias))


# --- sensor geometry ------------------------------------------------------------------


def test_sensor_product_placed_by_rpc(tmp_path):
    rpc = LinearRpc(
        long_off=2.35,
        long_scale=0.01,
        lat_off=48.85,
        lat_scale=0.008,
        samp_off=20.5,
        samp_scale=20.0,
        line_off=15.5,
        line_scale=15.0,
    )
    pan = pixels(1, 30, 40)
    corners = [rpc.lonlat(x, y) for x, y in ((0, 0), (40, 0), (40, 30), (0, 30))]
    spec = DimSpec(
        stem="PHR1B_P_202201011010101_SEN_4",
        groups=[FileGroup(pan)],
        mission="PHR",
        mission_index="1B",
        spectral="P",
        processing_level="SENSOR",
        crs=None,
        rpc=rpc,
        rpc_file="RPC_model_of_this_product.XML",
        radiance={"P": (10.0, 0.0)},
        extent=corners,
        imaging_date="2022-01-01",
        imaging_time="10:10:10.1Z",
    )
    dim = write_dim(tmp_path, spec)
    image, bands = build(Dimap2Scene(str(dim)), tmp_path)
    with rasterio.open(image.files[0].href) as vrt:
        gcps, gcp_crs = vrt.gcps
        numpy.testing.assert_array_equal(vrt.read(), pan)
    assert gcp_crs == "EPSG:4326"
    assert len(gcps) >= 4
    assert {(g.col, g.row) for g in gcps} >= {(0, 0), (40, 0), (40, 30), (0, 30)}
    for gcp in gcps:
        lon, lat = rpc.lonlat(gcp.col, gcp.row)
        assert gcp.x == pytest.approx(lon, abs=1e-9)
        assert gcp.y == pytest.approx(lat, abs=1e-9)
    assert image.crs == "EPSG:4326"
    assert image.geotrans == pytest.approx(from_gcps(gcps).to_gdal())
    assert bands[0].name == "pan" and bands[0].resolution.unit == "degrees"
    # rio-tiler places the image where the RPCs say
    with warnings.catch_warnings(), Reader(image.files[0].href) as reader:
        warnings.simplefilter("ignore")
        west, south, east, north = reader.get_geographic_bounds("EPSG:4326")
    assert (west, north) == pytest.approx(corners[0], abs=1e-7)
    pixel = (0.01 / 20.0, 0.008 / 15.0)  # the warped grid may end within one pixel
    assert east == pytest.approx(corners[2][0], abs=pixel[0])
    assert south == pytest.approx(corners[2][1], abs=pixel[1])


# --- products that carry less than the spec (GDAL's public samples) -----------------

RPC = LinearRpc(
    long_off=2.35,
    long_scale=0.01,
    lat_off=48.85,
    lat_scale=0.008,
    samp_off=20.5,
    samp_scale=20.0,
    line_off=15.5,
    line_scale=15.0,
)


def sensor_spec(**changes) -> DimSpec:
    """A Pleiades sensor product 40x30 placed by RPC only: no CRS, no Dataset_Extent."""
    spec = DimSpec(
        stem="PHR1A_P_202201011010101_SEN_9",
        groups=[FileGroup(pixels(1, 30, 40))],
        mission="PHR",
        mission_index="1A",
        spectral="P",
        processing_level="SENSOR",
        crs=None,
        rpc=RPC,
        imaging_date="2022-01-01",
        imaging_time="10:10:10.1Z",
    )
    return replace(spec, **changes)


def assert_outline(geometry: dict, corners: list[tuple[float, float]], tolerance: float):
    """The footprint is the quadrilateral of `corners`, with several points per edge."""
    footprint, expected = shape(geometry), MultiPoint(corners).convex_hull
    assert footprint.is_valid
    assert footprint.symmetric_difference(expected).area < tolerance * expected.area
    assert len(geometry["coordinates"][0]) > 4 * 4  # densified edges
    ring = geometry["coordinates"][0]
    for corner in corners:
        assert min(Point(corner).distance(Point(xy)) for xy in ring) < 1e-7  # GeoJSON rounding


@pytest.mark.parametrize(
    "changes",
    [
        {},  # GDAL's DIM_foo.XML / bundle: no Dataset_Extent at all
        {"extent_center_only": (2.35, 48.85, 123.45)},  # primary_rpc_center_h: only a Center
        {"rpc_file": "RPC_named_by_the_dim.XML"},
    ],
    ids=["no-extent", "center-only", "named-rpc"],
)
def test_footprint_from_the_rpc_model(tmp_path, changes):
    """Corners worked out by hand from the linear model (LinearRpc.lonlat), not by GDAL."""
    dim = write_dim(tmp_path, sensor_spec(**changes))
    meta = Dimap2Scene(str(dim)).meta()
    corners = [RPC.lonlat(x, y) for x, y in ((0, 0), (40, 0), (40, 30), (0, 30))]
    assert_outline(meta.geometry, corners, 1e-9)
    assert meta.properties["tileserver:provenance"] == {
        "geometry": "rpc",
        "datetime": "IMAGING_DATE",
    }
    image, _ = build(Dimap2Scene(str(dim)), tmp_path)
    assert image.geometry == meta.geometry
    assert image.properties["tileserver:provenance"]["geometry"] == "rpc"


def test_rpc_footprint_without_raster_dimensions_reads_the_tiles(tmp_path):
    """No Raster_Data (size unknown to the XML): the tiles found by name give the size."""
    dim = write_dim(tmp_path, sensor_spec(raster_data=False))
    meta = Dimap2Scene(str(dim)).meta()
    corners = [RPC.lonlat(x, y) for x, y in ((0, 0), (40, 0), (40, 30), (0, 30))]
    assert_outline(meta.geometry, corners, 1e-9)
    assert meta.properties["tileserver:provenance"]["geometry"] == "rpc"


def test_footprint_from_the_tiles_geotransform(tmp_path):
    spec = replace(tiled_spec("GTiff"), extent=None)
    dim = write_dim(tmp_path, spec)
    meta = Dimap2Scene(str(dim)).meta()
    corners = corner_extent("EPSG:32631", spec.transform, 28, 20)  # pyproj, not the reader
    assert_outline(meta.geometry, corners, 1e-3)  # a 56 m image, rounded to 1e-7 degrees
    assert meta.properties["tileserver:provenance"]["geometry"] == "geotransform"


def test_footprint_from_geoposition_insert_reads_no_tile(tmp_path):
    spec = replace(tiled_spec("GTiff"), extent=None, insert=True)
    dim = write_dim(tmp_path, spec)
    for tile in tmp_path.glob("IMG_*"):
        tile.unlink()  # the XML alone places it
    meta = Dimap2Scene(str(dim)).meta()
    corners = corner_extent("EPSG:32631", spec.transform, 28, 20)
    assert_outline(meta.geometry, corners, 1e-3)  # a 56 m image, rounded to 1e-7 degrees
    assert meta.properties["tileserver:provenance"]["geometry"] == "geotransform"


def test_footprint_and_placement_from_tile_gcps(tmp_path):
    from rasterio.control import GroundControlPoint

    fit = from_origin(12.0, 41.0, 0.001, 0.0008)  # an affine grid the GCPs sample exactly
    points = [(0, 0), (40, 0), (40, 30), (0, 30), (20, 15)]
    gcps = [
        GroundControlPoint(row=r, col=c, x=(fit * (c, r))[0], y=(fit * (c, r))[1])
        for c, r in points
    ]
    dim = write_dim(tmp_path, sensor_spec(rpc=None, gcps=gcps))
    scene = Dimap2Scene(str(dim))
    meta = scene.meta()
    assert_outline(meta.geometry, [fit * c for c in points[:4]], 1e-9)
    assert meta.properties["tileserver:provenance"]["geometry"] == "gcps"
    image, _ = build(scene, tmp_path)
    assert image.crs == "EPSG:4326"
    assert image.geotrans == pytest.approx(fit.to_gdal())
    with rasterio.open(image.files[0].href) as vrt:
        assert len(vrt.gcps[0]) == len(points)


def test_a_product_nothing_places_is_named(tmp_path):
    dim = write_dim(tmp_path, sensor_spec(rpc=None))
    with pytest.raises(IngestError, match="cannot be placed: no map CRS.*no RPC model.*no GCPs"):
        Dimap2Scene(str(dim)).meta()


def test_placeholder_rpc_values_are_named(tmp_path):
    """GDAL's stripped RPC_foo.XML holds tag names where numbers belong."""
    dim = write_dim(tmp_path, sensor_spec())
    rpc = tmp_path / f"RPC_{sensor_spec().stem}.XML"
    text = rpc.read_text()
    start = text.index("<HEIGHT_OFF>")
    end = text.index("</HEIGHT_OFF>")
    rpc.write_text(text[:start] + "<HEIGHT_OFF>HEIGHT_OFF" + text[end:])
    with pytest.raises(IngestError, match="RPC HEIGHT_OFF 'HEIGHT_OFF' is not a number"):
        Dimap2Scene(str(dim)).meta()


def test_time_from_located_geometric_values(tmp_path):
    """GDAL's single_component sample: IMAGING_DATE is a placeholder, the Center has a TIME."""
    spec = sensor_spec(
        imaging_date="IMAGING_DATE",
        imaging_time="IMAGING_TIME",
        located_times=[
            ("BottomCenter", "2022-05-19T05:55:41.5Z"),
            ("Center", "2022-05-19T05:55:43.122330Z"),
        ],
    )
    meta = Dimap2Scene(str(write_dim(tmp_path, spec))).meta()
    assert meta.acquired == datetime(2022, 5, 19, 5, 55, 43, 122330, tzinfo=UTC)
    assert meta.properties["tileserver:provenance"]["datetime"] == "Located_Geometric_Values/TIME"
    without = replace(spec, stem="PHR1A_P_NO_TIME", located_times=[])
    meta = Dimap2Scene(str(write_dim(tmp_path / "none", without))).meta()
    assert meta.acquired is None and "datetime" not in meta.properties["tileserver:provenance"]


# --- buckets --------------------------------------------------------------------------


def test_scene_in_an_s3_bucket(spot_bundle, s3_bucket, tmp_path):
    """Every document and tile is read through /vsis3/: the same scene as on disk."""
    s3_bucket.upload(spot_bundle["vol"].parent, "deliveries/spot")
    vol = f"/vsis3/{s3_bucket.name}/deliveries/spot/VOL_SPOT7.XML"
    scene = Dimap2Scene(vol)
    meta = scene.meta()
    assert (meta.id, meta.product_id, meta.cloud_cover) == (SPOT_ID, "spot_p_ms", 12.5)
    image, bands = build(scene, tmp_path)
    assert [b.name for b in bands] == ["pan", "blue", "green", "red", "nir"]
    with rasterio.open(image.files[1].href) as vrt:
        tiles = [f for f in vrt.files if not f.endswith(".vrt")]
        assert tiles and all(f.startswith(f"/vsis3/{s3_bucket.name}/") for f in tiles)
        numpy.testing.assert_array_equal(vrt.read(), spot_bundle["ms"])
    numpy.testing.assert_array_equal(read(image.files[0].href), spot_bundle["pan"])


# --- errors ---------------------------------------------------------------------------


def test_corrupt_xml_is_named(spot_bundle):
    spot_bundle["ms_dim"].write_text("<Dimap_Document><Dataset_Content>")
    with pytest.raises(IngestError, match=spot_bundle["ms_dim"].name):
        Dimap2Scene(str(spot_bundle["vol"])).meta()
    vol = spot_bundle["vol"]
    vol.write_bytes(b"not xml at all")
    with pytest.raises(IngestError, match=vol.name):
        Dimap2Scene(str(vol)).meta()


def test_not_a_dimap_document(tmp_path):
    path = tmp_path / "DIM_other.XML"
    path.write_text("<Other_Document/>")
    with pytest.raises(IngestError, match="not a DIMAP document"):
        Dimap2Scene(str(path)).meta()


def test_volume_without_any_component(tmp_path):
    vol = write_vol(tmp_path / "VOL_PHR.XML", [("MS", "MS/DIM_MS.XML"), ("P", "P/DIM_P.XML")])
    with pytest.raises(IngestError, match="none of its DIMAP components exists"):
        Dimap2Scene(str(vol)).meta()


def test_build_needs_a_time(tmp_path):
    spec = replace(tiled_spec("GTiff"), imaging_date=None, imaging_time=None)
    dim = write_dim(tmp_path, spec)
    scene = Dimap2Scene(str(dim))
    meta = scene.meta()
    assert meta.acquired is None
    with pytest.raises(IngestError, match="--datetime"):
        scene.build(meta, meta.product_id, None, tmp_path / "x.vrt")
    when = datetime(2021, 4, 1, tzinfo=UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, _ = scene.build(replace(meta, acquired=when), "phr_ms", None, tmp_path / "x.vrt")
    assert image.acquired == when and image.id == "phr_ms:PHR1A_MS_tiled"


# --- GDAL's sample products -----------------------------------------------------------


def gdal_name(description: str) -> str:
    return description.lower().replace(" ", "")


def test_pleiades_neo_sample(tmp_path):
    vol = fixture_path("dimap2", "vhr2020_ms_fs", "VOL_PNEO.XML")
    dim = vol.parent / "MS-FS" / "DIM_MS-FS.XML"
    scene = Dimap2Scene(str(vol))
    meta = scene.meta()
    assert meta.id == "DS_PNEO4_201704121106009_PS1_FR1_FR1_E005N46_004192"
    assert meta.cloud_cover == pytest.approx(77.98127298818147)
    assert meta.acquired == datetime(2017, 4, 12, 11, 6, 1, 900000, tzinfo=UTC)
    assert meta.product_id == "pneo_ms-fs"
    assert meta.properties["tileserver:missing_components"] == ["PAN/DIM_PAN.XML"]
    doc = ET.parse(dim).getroot()
    vertices = [
        (float(v.findtext("LON")), float(v.findtext("LAT")))
        for v in doc.iter("Vertex")
        if v.findtext("COL") in ("0", "1662") and v.findtext("ROW") in ("0", "1365")
    ]
    assert len(vertices) == 4
    assert shape(meta.geometry).equals(MultiPoint(vertices).convex_hull)

    image, bands = build(scene, tmp_path)
    reflectance_gain = {
        node.findtext("BAND_ID"): float(node.findtext("GAIN"))
        for node in doc.iter("Band_Reflectance")
    }
    with rasterio.open(vol) as gdal:
        assert [b.name for b in bands] == [gdal_name(d) for d in gdal.descriptions]
        ours = read(image.files[0].href)
        for i in range(gdal.count):
            numpy.testing.assert_array_equal(ours[i], gdal.read(i + 1))
        assert image.geotrans == pytest.approx(gdal.transform.to_gdal(), rel=1e-12)
        radiance = apply_processing_level(
            numpy.ma.MaskedArray(ours.astype("float64")), bands, "radiance"
        )
        for band in bands:
            tags = gdal.tags(band.band_index + 1)
            gain, bias = float(tags["RADIANCE_GAIN"]), float(tags["RADIANCE_BIAS"])
            band_id = {"red": "R", "green": "G", "blue": "B", "nir": "NIR"}.get(band.name)
            refl = reflectance_gain.get(band_id, 10000.0)
            expected = ours[band.band_index] / refl / gain + bias
            numpy.testing.assert_allclose(radiance[band.band_index], expected)
    assert image.cloud_cover == pytest.approx(77.98127298818147)
    assert bands[0].wavelength_nm_min == 619 and bands[1].wavelength_nm_max == pytest.approx(591)


def test_pleiades_jpeg2000_sample(tmp_path):
    dim = fixture_path("dimap2", "jpeg2000_ple", "DIM_md_ple.XML")
    tile = dim.parent / "IMG_md_ple_R1C1.jp2"
    scene = Dimap2Scene(str(dim))
    meta = scene.meta()
    assert meta.acquired == datetime(2015, 1, 1, tzinfo=UTC)
    assert meta.properties["platform"] == "phr-1a"
    assert meta.properties["constellation"] == "pleiades"
    image, bands = build(scene, tmp_path)
    assert len(bands) == 4 and all(b.data_type == "UInt16" for b in bands)
    with rasterio.open(tile) as jp2:
        numpy.testing.assert_array_equal(read(image.files[0].href), jp2.read())
        tile_rpcs = jp2.rpcs  # GDAL's own reading of RPC_md_ple.XML
    ours = parse_rpc(read_xml(str(dim.parent / "RPC_md_ple.XML")), "RPC_md_ple.XML")
    assert ours.to_dict() == pytest.approx(tile_rpcs.to_dict())
    # The RPCs describe a 10375x6132 image; this JP2 is its 202x308 top-left chip.
    extent = shape(meta.geometry)
    top_left = (144.840636904079, -37.76255126780603)  # the vertex at COL 1, ROW 1
    a, b, c, d, e, f = image.geotrans
    assert (a, d) == pytest.approx(top_left, abs=5e-5)  # within ~2 pixels
    chip = box(a, d + f * image.height, a + b * image.width, d)
    assert extent.buffer(5e-5).contains(chip)
    assert chip.area < extent.area / 500
    assert Point(top_left).distance(chip) < 5e-5
