"""BEAM-DIMAP scenes: synthetic products with known pixels, and SNAP's own mergeTest1."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rio_tiler.io import Reader
from shapely.geometry import Point, shape

from tests.fixtures import fixture_path
from tests.ingest.beam_synthetic import (
    DLAT,
    DLON,
    GCP_SIZE,
    LAT0,
    LON0,
    MAP_HEIGHT,
    MAP_TRANSFORM,
    MAP_WIDTH,
    TiePoints,
    gcp_product,
    map_product,
    write_product,
)
from tileserver.catalog.models import Band, ProcessingStep, Product
from tileserver.ingest.beam_dimap import BeamDimapScene, is_entry, parse_time
from tileserver.ingest.raster import IngestError
from tileserver.render.errors import RenderError
from tileserver.render.pipeline import RenderParams, Scaling, apply_processing_level, render_array
from tileserver.render.reader import read_bands


def build(dim: Path, tmp_path: Path, product: Product | None = None, name: str = "scene.vrt"):
    scene = BeamDimapScene(str(dim))
    meta = scene.meta()
    image, bands = scene.build(meta, meta.product_id, product, tmp_path / "vrt" / name)
    return meta, image, bands


def written(product, name: str) -> numpy.ndarray:
    return next(b.data for b in product.bands if b.name == name)


# -- header --------------------------------------------------------------------------------


def test_is_entry():
    assert is_entry("/data/x/MER_RR.dim")
    assert is_entry("/vsis3/bucket/p/S1.DIM")
    assert not is_entry("/data/x/MER_RR.data/reflec_1.img")


def test_parse_time_is_utc_with_microseconds():
    assert parse_time("01-FEB-2008 09:26:09.416160") == datetime(
        2008, 2, 1, 9, 26, 9, 416160, tzinfo=UTC
    )
    assert parse_time("31-dec-2019 23:59:59") == datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("2008-02-01T09:26:09")


def test_meta_of_a_map_product(tmp_path):
    meta = BeamDimapScene(str(write_product(tmp_path, map_product()))).meta()
    assert meta.id == "S2_SYNTH_MAP"
    assert meta.acquired == datetime(2021, 6, 15, 10, 20, 30, 123456, tzinfo=UTC)
    assert meta.properties["start_datetime"] == "2021-06-15T10:20:30.123456+00:00"
    assert meta.properties["end_datetime"] == "2021-06-15T10:20:45.654321+00:00"
    assert meta.product_id == "syn_test_1"
    assert meta.properties["beam:product_type"] == "SYN_TEST_1"
    assert meta.properties["platform"] == "sentinel-2a"
    assert meta.cloud_cover is None


def test_meta_without_dataset_name_or_type_uses_stem_and_default_product(tmp_path):
    dim = write_product(tmp_path, map_product("plain", product_type=None))
    text = dim.read_text(encoding="latin-1").replace("<DATASET_NAME>plain</DATASET_NAME>", "")
    dim.write_text(text, encoding="latin-1")
    meta = BeamDimapScene(str(dim)).meta()
    assert (meta.id, meta.product_id) == ("plain", "beam-dimap")


def test_map_footprint_has_the_image_corners(tmp_path):
    meta = BeamDimapScene(str(write_product(tmp_path, map_product()))).meta()
    footprint = shape(meta.geometry)
    to_wgs84 = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    m00, m10, m01, m11, m02, m12 = MAP_TRANSFORM
    for col, row in ((0, 0), (MAP_WIDTH, 0), (MAP_WIDTH, MAP_HEIGHT), (0, MAP_HEIGHT)):
        corner = Point(to_wgs84.transform(m02 + m00 * col + m01 * row, m12 + m10 * col + m11 * row))
        assert footprint.exterior.distance(corner) < 1e-6
    assert footprint.is_valid and len(footprint.exterior.coords) > 5  # densified


@pytest.mark.parametrize(
    "element, attributes, start, end, source",
    [
        (  # SNAP's NetCDF/CF reader: global attributes, ISO 8601
            "Global_Attributes",
            {
                "time_coverage_start": "2019-06-01T10:20:30.5Z",
                "time_coverage_end": "2019-06-01T10:23:00Z",
            },
            datetime(2019, 6, 1, 10, 20, 30, 500000, tzinfo=UTC),
            datetime(2019, 6, 1, 10, 23, tzinfo=UTC),
            "time_coverage_start",
        ),
        (  # compact ISO form, start only: an instant, no interval
            "Global_Attributes",
            {"TIME_COVERAGE_START": "20190601T102030Z"},
            datetime(2019, 6, 1, 10, 20, 30, tzinfo=UTC),
            None,
            "TIME_COVERAGE_START",
        ),
        (  # ENVISAT SPH, BEAM's own time format (mergeTest1 carries these too)
            "SPH",
            {
                "FIRST_LINE_TIME": "01-FEB-2008 09:26:09.416161",
                "LAST_LINE_TIME": "01-FEB-2008 09:29:29.338529",
            },
            datetime(2008, 2, 1, 9, 26, 9, 416161, tzinfo=UTC),
            datetime(2008, 2, 1, 9, 29, 29, 338529, tzinfo=UTC),
            "FIRST_LINE_TIME",
        ),
    ],
    ids=["cf", "cf-start-only", "envisat-sph"],
)
def test_times_from_metadata_attributes(tmp_path, element, attributes, start, end, source):
    product = map_product(start=None, stop=None, metadata={element: attributes})
    meta = BeamDimapScene(str(write_product(tmp_path, product))).meta()
    assert meta.acquired == start
    assert meta.properties.get("start_datetime") == (start.isoformat() if end else None)
    assert meta.properties.get("end_datetime") == (end.isoformat() if end else None)
    assert meta.properties["tileserver:provenance"] == {
        "geometry": "geotransform",
        "datetime": source,
    }


def test_production_times_win_over_metadata_attributes(tmp_path):
    cf = {"Global_Attributes": {"time_coverage_start": "2001-01-01T00:00:00Z"}}
    meta = BeamDimapScene(str(write_product(tmp_path, map_product(metadata=cf)))).meta()
    assert meta.acquired == datetime(2021, 6, 15, 10, 20, 30, 123456, tzinfo=UTC)
    assert meta.properties["tileserver:provenance"]["datetime"] == (
        "PRODUCT_SCENE_RASTER_START_TIME"
    )


def test_no_time_anywhere_is_left_to_the_caller(tmp_path):
    """SNAP-written NISAR GCOV headers carry no time at all: the import asks for --datetime."""
    unreadable = {"Global_Attributes": {"time_coverage_start": "sometime in June"}}
    product = map_product(start=None, stop=None, metadata=unreadable)
    meta = BeamDimapScene(str(write_product(tmp_path, product))).meta()
    assert meta.acquired is None
    assert meta.properties["tileserver:provenance"] == {"geometry": "geotransform"}


@pytest.mark.parametrize("geocoding", ["beam4", "gcp"])
def test_older_tie_point_geocoding_forms(tmp_path, geocoding):
    """The grid names where BEAM 4 and SNAP's GCP geocoding put them place the product
    exactly as the current form does."""
    current = BeamDimapScene(str(write_product(tmp_path / "a", gcp_product()))).georeference
    older = gcp_product(geocoding=geocoding)
    scene = BeamDimapScene(str(write_product(tmp_path / "b", older)))
    older_geo = scene.georeference
    assert older_geo.transform == current.transform
    assert [(g.col, g.row, g.x, g.y) for g in older_geo.gcps] == [
        (g.col, g.row, g.x, g.y) for g in current.gcps
    ]
    assert len(current.gcps) == 16
    assert scene.meta().properties["tileserver:provenance"]["geometry"] == "tie_point_grids"


def test_beam4_map_info_is_named(tmp_path):
    old = (
        "<Coordinate_Reference_System><Horizontal_CS><HORIZONTAL_CS_TYPE>PROJECTED"
        '</HORIZONTAL_CS_TYPE><MAP_INFO><PIXEL_X value="0.5" /></MAP_INFO></Horizontal_CS>'
        "</Coordinate_Reference_System>"
    )
    product = map_product(wkt=None, image_to_model=None, extra_xml=[old])
    with pytest.raises(IngestError, match="BEAM 4 map geocoding .*MAP_INFO.* re-save"):
        BeamDimapScene(str(write_product(tmp_path, product))).meta()


def test_meta_reads_no_band_file(tmp_path):
    for product in (map_product(), gcp_product()):
        dim = write_product(tmp_path, product)
        for img in (tmp_path / f"{product.name}.data").glob("*.img"):
            img.unlink()  # band files only; tie-point grids stay
        assert BeamDimapScene(str(dim)).meta().id == product.name


# -- the VRT of a map product ----------------------------------------------------------------


def test_map_vrt_pixels_types_and_nodata(tmp_path):
    product = map_product()
    _, image, bands = build(write_product(tmp_path, product), tmp_path)
    # VRT order: bands without nodata first (band 1's nodata is the dataset's for rio-tiler)
    stored = [b for b in product.bands if b.virtual_expression is None]
    stored = [b for b in stored if b.nodata is None] + [b for b in stored if b.nodata is not None]
    assert stored[-1].name == "refl_red"
    signed, counts = written(product, "signed_i8"), written(product, "counts_u32")
    assert signed.min() == -128 and counts.max() > 2**31  # the cases worth checking
    with rasterio.open(image.files[0].href) as src:
        assert src.count == len(stored)
        assert src.dtypes == tuple(b.data_type for b in stored)
        for i, band in enumerate(stored, start=1):
            numpy.testing.assert_array_equal(src.read(i), band.data)
        assert src.nodatavals == (None, None, None, None, 0.0)
        assert src.nodata is None  # what rio-tiler applies to bands without their own
        assert src.transform.to_gdal() == (600000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0)
        assert src.crs.to_epsg() == 32632
    assert [b.band_index for b in bands] == [0, 1, 2, 3, 4]
    assert image.crs == "EPSG:32632"
    assert image.geotrans == (600000.0, 10.0, 0.0, 5100000.0, 0.0, -10.0)
    assert (image.width, image.height) == (MAP_WIDTH, MAP_HEIGHT)


def test_geotransform_from_image_to_model_transform(tmp_path):
    m00, m10, m01, m11, m02, m12 = 10.0, 0.5, 0.25, -10.0, 600000.0, 5100000.0
    product = map_product("sheared", image_to_model=(m00, m10, m01, m11, m02, m12))
    _, image, _ = build(write_product(tmp_path, product), tmp_path)
    with rasterio.open(image.files[0].href) as src:
        assert src.transform.to_gdal() == (m02, m00, m01, m12, m10, m11)
    assert image.geotrans == (m02, m00, m01, m12, m10, m11)


def test_rio_tiler_reads_the_written_values(tmp_path):
    product = map_product()
    _, image, _ = build(write_product(tmp_path, product), tmp_path)
    with Reader(image.files[0].href) as reader:
        for index, name in ((1, "signed_i8"), (2, "counts_u32"), (5, "refl_red")):
            part = reader.part(
                reader.bounds,
                dst_crs=reader.crs,
                bounds_crs=reader.crs,
                indexes=(index,),
                width=MAP_WIDTH,
                height=MAP_HEIGHT,
                max_size=None,
            )
            numpy.testing.assert_array_equal(part.array.data[0], written(product, name))
            if name != "refl_red":  # no nodata: a 0 pixel is a value, not a hole
                assert not part.array.mask.any()
        refl = written(product, "refl_red")
        assert (part.array.mask[0] == (refl == 0)).all()  # nodata masked, nothing else


def test_an_int8_band_renders_with_its_negative_values(tmp_path):
    product = map_product()
    meta, image, bands = build(write_product(tmp_path, product), tmp_path)
    catalog = Product(id=meta.product_id, bands=bands)
    signed = [catalog.band("signed_i8")]

    def read(reader, file_read):
        return reader.part(
            reader.bounds,
            dst_crs=reader.crs,
            bounds_crs=reader.crs,
            indexes=file_read.indexes,
            width=MAP_WIDTH,
            height=MAP_HEIGHT,
            max_size=None,
        )

    data = read_bands(image, signed, read)
    out = render_array(
        data.array, signed, RenderParams(bands=("signed_i8",), scaling=Scaling("raw"))
    )
    assert out.data.dtype == numpy.int16  # the catalog type of int8
    numpy.testing.assert_array_equal(out.data[0], written(product, "signed_i8"))
    display = render_array(data.array, signed, RenderParams(scaling=Scaling("display")))
    assert display.data.dtype == numpy.uint8


# -- bands ----------------------------------------------------------------------------------


def test_bands_of_a_map_product(tmp_path):
    _, image, bands = build(write_product(tmp_path, map_product()), tmp_path)
    by_name = {b.name: b for b in bands}
    assert list(by_name) == ["signed_i8", "counts_u32", "chl", "quality_flags", "refl_red"]
    assert set(image.band_stats) == set(by_name)  # the virtual band has no file, no band
    refl = by_name["refl_red"]
    assert (refl.type, refl.data_type, refl.nodata) == ("spectral", "UInt16", 0.0)
    assert refl.data_range == (0, 65535)
    assert refl.physical_range == pytest.approx((0 * 1e-4 - 0.1, 65535 * 1e-4 - 0.1))
    assert refl.physical_range_unit == "dl"
    assert (refl.wavelength_nm_center, refl.wavelength_nm_fwhm) == (665.0, 10.0)
    assert refl.description == "Reflectance, red"
    assert refl.resolution.value == 10.0 and refl.resolution.unit == "meters"
    signed = by_name["signed_i8"]
    assert (signed.data_type, signed.data_range) == ("Int16", (-128, 127))
    assert by_name["counts_u32"].data_range == (0, 2**32 - 1)
    flags = by_name["quality_flags"]
    assert (flags.type, flags.is_alpha, flags.processing_levels) == ("mask", False, None)
    chl = by_name["chl"]
    assert chl.physical_range == pytest.approx((10 ** (0 * 0.015 - 1.5), 10 ** (255 * 0.015 - 1.5)))


def test_display_range_is_the_2_98_percentile_stretch(tmp_path):
    product = map_product()
    _, image, bands = build(write_product(tmp_path, product), tmp_path)
    refl = next(b for b in bands if b.name == "refl_red")
    valid = written(product, "refl_red")[written(product, "refl_red") != 0]
    # rio-tiler's quantiles with unit weights: the inverted CDF, nodata left out
    expected = numpy.percentile(valid, [2, 98], method="inverted_cdf")
    assert refl.display_range == tuple(expected)
    assert image.band_stats["refl_red"].min == valid.min()
    assert image.band_stats["counts_u32"].max == written(product, "counts_u32").max()


def test_physical_processing_level(tmp_path):
    product = map_product()
    _, _, bands = build(write_product(tmp_path, product), tmp_path)
    by_name = {b.name: b for b in bands}
    refl, chl = by_name["refl_red"], by_name["chl"]
    assert [s.function for s in refl.processing_levels["physical"]] == ["linear"]
    assert refl.processing_levels["physical"][0].parameter == [1e-4, -0.1]
    assert refl.processing_levels["physical"][-1].data_type == "Float32"
    assert [s.function for s in chl.processing_levels["physical"]] == ["linear", "pow10"]
    assert chl.processing_levels["physical"][-1].physical_range == chl.physical_range
    raw_refl = written(product, "refl_red").astype("float64")
    raw_chl = written(product, "chl").astype("float64")
    data = numpy.ma.MaskedArray(numpy.stack([raw_refl, raw_chl]))
    out = apply_processing_level(data, [refl, chl], "physical")
    numpy.testing.assert_allclose(out[0], raw_refl * 1e-4 - 0.1, rtol=1e-12)
    numpy.testing.assert_allclose(out[1], 10 ** (raw_chl * 0.015 - 1.5), rtol=1e-12)
    # an unscaled band is as stored at that level, so any band mix can ask for it
    signed = by_name["signed_i8"]
    raw_signed = numpy.ma.MaskedArray(written(product, "signed_i8")[None].astype("float64"))
    numpy.testing.assert_array_equal(
        apply_processing_level(raw_signed, [signed], "physical"), raw_signed
    )


def test_unknown_processing_step_is_still_an_error():
    band = Band(
        name="b",
        processing_levels={"x": [ProcessingStep(function="log1p")]},
    )
    with pytest.raises(RenderError, match="unsupported step 'log1p'"):
        apply_processing_level(numpy.ma.zeros((1, 2, 2)), [band], "x")


# -- satellite geometry ----------------------------------------------------------------------


def test_gcps_come_from_the_tie_point_grids(tmp_path):
    product = gcp_product()
    _, image, bands = build(write_product(tmp_path, product), tmp_path)
    tie_points = product.tie_points
    cols, rows = tie_points.pixels()
    lon32 = tie_points.lon.astype("float32").astype("float64")
    lat32 = tie_points.lat.astype("float32").astype("float64")
    expected = sorted(zip(cols.ravel(), rows.ravel(), lon32.ravel(), lat32.ravel(), strict=True))
    with rasterio.open(image.files[0].href) as src:
        gcps, crs = src.gcps
        assert crs.to_epsg() == 4326
        found = sorted((g.col, g.row, g.x, g.y) for g in gcps)
        numpy.testing.assert_array_equal(src.read(1), written(product, "radiance_1"))
    numpy.testing.assert_allclose(found, expected, rtol=0, atol=1e-12)
    assert image.crs == "EPSG:4326"
    numpy.testing.assert_allclose(image.geotrans, (LON0, DLON, 0, LAT0, 0, DLAT), atol=1e-6)
    assert [b.name for b in bands] == ["radiance_1", "l1_flags"]  # grids are no bands
    assert bands[1].type == "mask"  # an integer band named like flags
    assert bands[0].resolution.unit == "degrees"
    assert image.properties["tileserver:gcp_residual"] < 1e-5


def test_a_point_read_through_rio_tiler_lands_on_the_expected_pixel(tmp_path):
    product = gcp_product()
    _, image, _ = build(write_product(tmp_path, product), tmp_path)
    radiance = written(product, "radiance_1")
    with Reader(image.files[0].href) as reader:
        for col, row in ((20, 7), (0, 0), (30, 30), (3, 25), (30, 0)):
            lon = LON0 + DLON * (col + 0.5)  # the centre of the pixel
            lat = LAT0 + DLAT * (row + 0.5)
            assert reader.point(lon, lat, indexes=(1,)).data[0] == radiance[row, col]


def test_gcp_residual_of_a_curved_grid(tmp_path):
    product = gcp_product("curved", curve=2e-5)
    _, image, _ = build(write_product(tmp_path, product), tmp_path)
    cols, rows = product.tie_points.pixels()
    lon = product.tie_points.lon.astype("float32").astype("float64").ravel()
    lat = product.tie_points.lat.astype("float32").astype("float64").ravel()
    design = numpy.column_stack([cols.ravel(), rows.ravel(), numpy.ones(cols.size)])
    fit_lon = design @ numpy.linalg.lstsq(design, lon, rcond=None)[0]
    fit_lat = design @ numpy.linalg.lstsq(design, lat, rcond=None)[0]
    expected = numpy.hypot(fit_lon - lon, fit_lat - lat).max()
    assert expected > 1e-3  # the grid is far from affine
    assert image.properties["tileserver:gcp_residual"] == pytest.approx(expected, rel=1e-6)


def test_gcp_footprint_follows_the_tie_point_grid(tmp_path):
    meta = BeamDimapScene(str(write_product(tmp_path, gcp_product()))).meta()
    # pixel centres 0.5 .. 30.5: exactly the 4x4 grid's border (offset 0.5, step 10)
    first, last = 0.5, GCP_SIZE - 0.5
    expected = shapely.box(LON0 + DLON * first, LAT0 + DLAT * last, LON0 + DLON * last, LAT0)
    expected = shapely.box(*expected.bounds[:3], LAT0 + DLAT * first)
    footprint = shape(meta.geometry)
    numpy.testing.assert_allclose(footprint.bounds, expected.bounds, atol=1e-6)
    assert footprint.hausdorff_distance(expected) < 1e-5  # float32 tie points


def test_footprint_across_the_antimeridian_is_cut(tmp_path):
    tie_points = TiePoints(numpy.zeros((4, 4)), numpy.zeros((4, 4)))
    x, y = tie_points.pixels()
    lon = 179.9 + 0.01 * x  # 179.905 .. 180.205 at the pixel centres
    tie_points.lon = numpy.where(lon > 180, lon - 360, lon)  # as stored: -180..180
    tie_points.lat = 60 - 0.01 * y
    meta = BeamDimapScene(
        str(write_product(tmp_path, gcp_product("dateline", tie_points=tie_points)))
    ).meta()
    assert meta.geometry["type"] == "MultiPolygon"
    parts = shape(meta.geometry).geoms
    bounds = sorted(p.bounds for p in parts)
    assert bounds[0][0] == pytest.approx(-180) and bounds[0][2] == pytest.approx(180.205 - 360)
    assert bounds[1][0] == pytest.approx(179.905) and bounds[1][2] == pytest.approx(180)


# -- products and errors ---------------------------------------------------------------------


def test_a_scene_of_an_existing_product_gets_its_bands(tmp_path):
    meta, image, bands = build(write_product(tmp_path, map_product("first")), tmp_path)
    catalog = Product(id=meta.product_id, bands=bands)
    second = write_product(tmp_path, map_product("second"))
    _, image2, bands2 = build(second, tmp_path, catalog, name="second.vrt")
    assert bands2 is catalog.bands
    assert set(image2.band_stats) == {b.name for b in bands}
    assert image2.name == "second"


def test_a_scene_with_other_bands_does_not_fit_a_product(tmp_path):
    meta, _, bands = build(write_product(tmp_path, map_product("first")), tmp_path)
    catalog = Product(id=meta.product_id, bands=bands)
    swapped = map_product("swapped")
    swapped.bands[1], swapped.bands[2] = swapped.bands[2], swapped.bands[1]
    dim = write_product(tmp_path, swapped)
    with pytest.raises(IngestError, match="expects band 'signed_i8' at position 0.*counts_u32"):
        build(dim, tmp_path, catalog, name="swapped.vrt")
    fewer = map_product("fewer")
    del fewer.bands[3:]
    with pytest.raises(IngestError, match="expects band 'chl' at position 2.*refl_red"):
        build(write_product(tmp_path, fewer), tmp_path, catalog, name="fewer.vrt")


def test_corrupt_xml_names_the_file(tmp_path):
    dim = write_product(tmp_path, map_product())
    dim.write_text(dim.read_text(encoding="latin-1")[:500], encoding="latin-1")
    with pytest.raises(IngestError, match=re.escape(str(dim))):
        BeamDimapScene(str(dim)).meta()


def test_entity_expansion_is_refused(tmp_path):
    dim = tmp_path / "bomb.dim"
    dim.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n<Dimap_Document>&b;</Dimap_Document>'
    )
    with pytest.raises(IngestError, match="not a valid BEAM-DIMAP XML"):
        BeamDimapScene(str(dim)).meta()


def test_missing_dim_is_an_ingest_error(tmp_path):
    with pytest.raises(IngestError, match="absent.dim"):
        BeamDimapScene(str(tmp_path / "absent.dim")).meta()


def test_missing_band_file_names_it(tmp_path):
    dim = write_product(tmp_path, map_product())
    missing = tmp_path / "S2_SYNTH_MAP.data" / "counts_u32.img"
    missing.unlink()
    scene = BeamDimapScene(str(dim))
    with pytest.raises(IngestError, match=re.escape(str(missing))):
        scene.build(scene.meta(), "p", None, tmp_path / "x.vrt")
    assert not (tmp_path / "x.vrt").exists()


def test_missing_tie_point_grid_names_it(tmp_path):
    dim = write_product(tmp_path, gcp_product())
    grid = tmp_path / "MER_SYNTH_GCP.data" / "tie_point_grids" / "longitude.img"
    grid.unlink()
    with pytest.raises(IngestError, match=re.escape(str(grid))):
        BeamDimapScene(str(dim)).meta()


def test_truncated_band_file_is_refused(tmp_path):
    dim = write_product(tmp_path, map_product())
    img = tmp_path / "S2_SYNTH_MAP.data" / "refl_red.img"
    img.write_bytes(img.read_bytes()[:-2])
    scene = BeamDimapScene(str(dim))
    with pytest.raises(IngestError, match="truncated"):
        scene.build(scene.meta(), "p", None, tmp_path / "x.vrt")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"<DATA_TYPE>uint16</DATA_TYPE>": "<DATA_TYPE>complex64</DATA_TYPE>"}, "unsupported"),
        ({"<NCOLS>20</NCOLS>": "<NCOLS>twenty</NCOLS>"}, "NCOLS 'twenty' is not a number"),
        ({"15-JUN-2021 10:20:30.123456": "2021-06-15"}, "is not a BEAM time"),
        ({"<WKT>": "<NO_WKT>", "</WKT>": "</NO_WKT>"}, "no map geocoding"),
        ({"<BAND_NAME>chl<": "<BAND_NAME>../chl<"}, "is not a file name"),
    ],
)
def test_invalid_headers_say_why(tmp_path, changes, message):
    dim = write_product(tmp_path, map_product())
    text = dim.read_text(encoding="latin-1")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new, 1)
    dim.write_text(text, encoding="latin-1")
    with pytest.raises(IngestError, match=message) as error:
        BeamDimapScene(str(dim)).meta()
    assert str(dim) in str(error.value)


def test_band_file_must_fit_the_declared_type(tmp_path):
    dim = write_product(tmp_path, map_product())
    hdr = tmp_path / "S2_SYNTH_MAP.data" / "counts_u32.hdr"
    hdr.write_text(hdr.read_text().replace("data type = 3", "data type = 2"))  # 2-byte Int16
    scene = BeamDimapScene(str(dim))
    with pytest.raises(IngestError, match="counts_u32.hdr: ENVI data type 2"):
        scene.build(scene.meta(), "p", None, tmp_path / "x.vrt")


# -- SNAP's mergeTest1 -------------------------------------------------------------------------


def test_merge_test1_product(tmp_path):
    dim = fixture_path("beam-dimap", "mergeTest1.dim")
    meta, image, bands = build(dim, tmp_path)
    assert meta.id == "mergeTest1"
    # <PRODUCT_SCENE_RASTER_START_TIME>01-FEB-2008 09:26:09.416160 / STOP ...11.176040
    assert meta.acquired == datetime(2008, 2, 1, 9, 26, 9, 416160, tzinfo=UTC)
    assert meta.properties["end_datetime"] == "2008-02-01T09:26:11.176040+00:00"
    assert meta.properties["tileserver:provenance"] == {
        "geometry": "tie_point_grids",
        "datetime": "PRODUCT_SCENE_RASTER_START_TIME",
    }
    assert meta.product_id == "mer_rr__2p"
    assert [b.name for b in bands] == ["l2_flags", "reflec_1"]  # no nodata first
    flags, reflec = bands
    factor, offset = 1.831110603234265e-5, -0.20001831650733948  # SCALING_FACTOR / _OFFSET
    assert reflec.physical_range == pytest.approx((offset, 65535 * factor + offset))
    assert (reflec.nodata, reflec.wavelength_nm_center, reflec.physical_range_unit) == (
        0.0,
        412.691,
        "dl",
    )
    assert (flags.type, flags.data_type) == ("mask", "UInt32")
    data = dim.parent / "mergeTest1.data"
    with rasterio.open(image.files[0].href) as src:
        assert src.count == 2
        for index, (name, dtype) in enumerate((("l2_flags", ">u4"), ("reflec_1", ">u2")), 1):
            raw = numpy.fromfile(data / f"{name}.img", dtype=dtype).reshape(11, 11)
            numpy.testing.assert_array_equal(src.read(index), raw)


def test_merge_test1_footprint_lies_within_its_tie_points(tmp_path):
    dim = fixture_path("beam-dimap", "mergeTest1.dim")
    meta = BeamDimapScene(str(dim)).meta()
    grids = dim.parent / "mergeTest1.data" / "tie_point_grids"
    lat = numpy.fromfile(grids / "latitude.img", dtype=">f4")
    lon = numpy.fromfile(grids / "longitude.img", dtype=">f4")
    minx, miny, maxx, maxy = shape(meta.geometry).bounds
    assert lon.min() - 1e-6 <= minx < maxx <= lon.max() + 1e-6
    assert lat.min() - 1e-6 <= miny < maxy <= lat.max() + 1e-6
    # the 11x11 image covers a third of the 33-pixel grid, not all of it
    assert (maxx - minx) < (lon.max() - lon.min()) / 2


def test_merge_test1_copy_without_data_folder(tmp_path):
    dim = fixture_path("beam-dimap", "mergeTest1.dim")
    copy = tmp_path / "mergeTest1.dim"
    shutil.copy(dim, copy)
    with pytest.raises(IngestError, match="latitude.img"):
        BeamDimapScene(str(copy)).meta()


# -- buckets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket_fixture", "prefix"), [("s3_bucket", "/vsis3"), ("gcs_bucket", "/vsigs")]
)
def test_a_product_in_a_bucket_is_read_in_place(tmp_path, request, bucket_fixture, prefix):
    bucket = request.getfixturevalue(bucket_fixture)
    product = gcp_product()
    write_product(tmp_path / "local", product)
    bucket.upload(tmp_path / "local", "deliveries/")
    href = f"{prefix}/{bucket.name}/deliveries/{product.name}.dim"
    meta = BeamDimapScene(href).meta()  # the .dim and tie-point grids read from the bucket
    image, _ = BeamDimapScene(href).build(meta, meta.product_id, None, tmp_path / "b.vrt")
    vrt = (tmp_path / "b.vrt").read_text()
    assert f"{prefix}/{bucket.name}/deliveries/{product.name}.data/radiance_1.img" in vrt
    with rasterio.open(image.files[0].href) as src:
        numpy.testing.assert_array_equal(src.read(1), written(product, "radiance_1"))
        numpy.testing.assert_array_equal(src.read(2), written(product, "l1_flags"))
    missing = f"{prefix}/{bucket.name}/deliveries/other/{product.name}.dim"
    with pytest.raises(IngestError, match=re.escape(missing)):
        BeamDimapScene(missing).meta()
