"""The one grid type (render/reader.py `Grid`) and the one place an alpha band masks pixels
(render/reader.py fold_alpha), driven directly."""

from __future__ import annotations

import numpy
import pytest
from affine import Affine
from morecantile import tms as morecantile_tms
from rasterio.crs import CRS
from rio_tiler.models import ImageData

from tileserver.render.reader import Grid, fold_alpha

WEB = morecantile_tms.get("WebMercatorQuad")
HALF_WORLD = 20037508.342789244


def test_a_tile_grid_is_its_tms_tile():
    grid = Grid.of_tile(WEB, 1, 0, 1, 256)
    # zoom 1, column 1, row 0: the north-east quarter of the world
    assert grid.bounds == pytest.approx((0.0, 0.0, HALF_WORLD, HALF_WORLD))
    assert grid.shape == (256, 256) and grid.crs == WEB.rasterio_crs
    assert grid.transform * (0, 0) == pytest.approx((0.0, HALF_WORLD))
    assert grid.transform * (256, 256) == pytest.approx((HALF_WORLD, 0.0))
    assert str(grid.tile) == "1/1/0"


def test_a_plain_grid_has_the_bounds_of_its_transform():
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5800000), 30, 20)
    assert grid.tile is None
    assert grid.bounds == (500000, 5800000 - 200, 500000 + 300, 5800000)


def test_footprint_pixels_are_the_pixels_a_footprint_touches():
    grid = Grid(CRS.from_epsg(4326), Affine(1, 0, 0, 0, -1, 10), 10, 10)
    west_half = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [4.5, 0], [4.5, 10], [0, 10], [0, 0]]],
    }
    touched = grid.footprint_pixels(west_half)
    expected = numpy.zeros((10, 10), dtype=bool)
    expected[:, :5] = True  # column 4 is touched by the edge at 4.5
    numpy.testing.assert_array_equal(touched, expected)


def test_fold_alpha_masks_where_the_alpha_is_zero_or_has_no_value():
    bands = numpy.arange(2 * 2 * 3, dtype="uint16").reshape(2, 2, 3)
    alpha = numpy.array([[255, 0, 255], [255, 255, 7]], dtype="uint16")
    alpha_mask = numpy.array([[False, False, True], [False, False, False]])
    band_mask = numpy.zeros((2, 2, 3), dtype=bool)
    band_mask[1, 1, 0] = True  # one band's own nodata stays masked
    stack = numpy.ma.MaskedArray(
        numpy.concatenate([bands, alpha[None]]),
        mask=numpy.concatenate([band_mask, alpha_mask[None]]),
    )
    folded = fold_alpha(ImageData(stack, bounds=(0, 0, 3, 2), crs=CRS.from_epsg(4326)))
    assert folded.count == 2 and folded.array.dtype == numpy.uint16
    transparent = numpy.array([[False, True, True], [False, False, False]])
    expected = band_mask | transparent[None]
    numpy.testing.assert_array_equal(numpy.ma.getmaskarray(folded.array), expected)
    numpy.testing.assert_array_equal(folded.array.data, bands)
