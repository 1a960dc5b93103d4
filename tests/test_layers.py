"""An image layer's tile, render.mosaic, render.download, the layers and the parameter
types, driven directly: no HTTP client (and for render/ and image layers, no catalog), as
rio-tiler tests its readers.

The rasters are tests/test_mosaic.py's three images, which cover the synthetic tile exactly
at 256 x 256 pixels in WebMercator; every expected value is worked out here with numpy
from those source arrays.
"""

from __future__ import annotations

import io

import numpy
import pytest
from rio_tiler.models import ImageData

from tests.synthetic import TILE, WEB_MERCATOR, write
from tests.test_mosaic import PRODUCT, box, images, paint_first, valid
from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.layers import (
    ImageLayer,
    LayerCache,
    MosaicParams,
    SearchLayer,
    band_statistics,
    point_area,
)
from tileserver.render.download import (
    GridRequest,
    image_grid,
    output_grid,
    plan_download,
    render_layers,
)
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import mosaic_tile
from tileserver.render.pipeline import ImageFormat, RenderParams, Scaling, encode_image
from tileserver.render.reader import Grid
from tileserver.scaling_rules import ScalingError
from tileserver.settings import Settings

Z, X, Y = TILE.z, TILE.x, TILE.y
RAW = RenderParams(bands=("v1", "v2"), scaling=Scaling("raw"))


@pytest.fixture()
def sources(tmp_path) -> tuple[Product, dict[str, Image]]:
    """The product and images A, B, C on disk, as catalog records (not stored)."""
    product = Product.model_validate(PRODUCT)
    made = {}
    for name, (acquired, v1, v2, alpha) in images().items():
        path = write(tmp_path / f"{name}.tif", numpy.stack([v1, v2, alpha]).astype("uint16"))
        made[name] = Image(
            id=f"mos:{name}",
            name=name,
            product_id="mos",
            acquired=acquired,
            geometry=box(0, 1),
            files=[{"href": str(path)}],
        )
    return product, made


# ------------------------------------------------------------------------- an image's tile


def test_tile_image_is_the_raw_pixels_masked_by_nodata_and_alpha(sources):
    product, made = sources
    tile = ImageLayer(made["B"], product).tile(WEB_MERCATOR, X, Y, Z, 256, RAW)
    _, v1, v2, alpha = images()["B"]
    assert tile.crs == WEB_MERCATOR.rasterio_crs
    assert tile.bounds == pytest.approx(tuple(WEB_MERCATOR.xy_bounds(X, Y, Z)))
    ok = valid(v1, v2, alpha)
    numpy.testing.assert_array_equal(tile.alpha_mask, numpy.where(ok, 255, 0))
    numpy.testing.assert_array_equal(tile.array.data[0][ok], v1[ok])
    numpy.testing.assert_array_equal(tile.array.data[1][ok], v2[ok])
    assert numpy.ma.getmaskarray(tile.array)[:, ~ok].all()


def test_encode_image_carries_the_mask_as_the_last_band(sources):
    product, made = sources
    tile = ImageLayer(made["A"], product).tile(WEB_MERCATOR, X, Y, Z, 256, RAW)
    decoded = numpy.load(io.BytesIO(encode_image(tile, ImageFormat.npy)))
    _, v1, v2, alpha = images()["A"]
    numpy.testing.assert_array_equal(decoded[-1], numpy.where(valid(v1, v2, alpha), 255, 0))
    numpy.testing.assert_array_equal(decoded[0], v1)


# ----------------------------------------------------------------------- render.mosaic


def test_mosaic_tile_paints_the_first_valid_pixel_in_order(sources):
    product, made = sources
    order = ["C", "B", "A"]
    layers = [(made[n], product) for n in order]
    grid = Grid.of_tile(WEB_MERCATOR, X, Y, Z, 256)
    tile = mosaic_tile(layers, product, grid, RAW, "first", threads=1)
    v1, v2, done = paint_first(order)
    numpy.testing.assert_array_equal(tile.array.data[0][done], v1[done])
    numpy.testing.assert_array_equal(tile.array.data[1][done], v2[done])
    numpy.testing.assert_array_equal(tile.alpha_mask, numpy.where(done, 255, 0))
    assert tile.metadata["read"] == 3 and tile.assets == ["mos:C", "mos:B", "mos:A"]


def test_mosaic_tile_highest_takes_the_per_pixel_maximum(sources):
    product, made = sources
    layers = [(made[n], product) for n in "ABC"]
    grid = Grid.of_tile(WEB_MERCATOR, X, Y, Z, 256)
    tile = mosaic_tile(layers, product, grid, RAW, "highest", threads=1)
    stack = []
    for name in "ABC":
        _, v1, v2, alpha = images()[name]
        stack.append(numpy.ma.MaskedArray(v1, mask=~valid(v1, v2, alpha)))
    expected = numpy.ma.max(numpy.ma.stack(stack), axis=0)
    ok = ~numpy.ma.getmaskarray(expected)
    numpy.testing.assert_array_equal(tile.array.data[0][ok], expected.data[ok])


# --------------------------------------------------------------------- render.download


def test_render_layers_on_the_source_grid_fills_invalid_pixels_with_nodata(sources):
    product, made = sources
    plan = plan_download(product, RAW, "first", 2)
    anchor = image_grid(made["A"], plan.bands)
    grid = output_grid(anchor, [anchor], GridRequest())
    assert (grid.width, grid.height) == (256, 256)
    data = render_layers([(made["B"], product), (made["A"], product)], plan, grid, RAW)
    v1, v2, done = paint_first(["B", "A"])
    numpy.testing.assert_array_equal(data[0], numpy.where(done, v1, plan.nodata))
    numpy.testing.assert_array_equal(data[1], numpy.where(done, v2, plan.nodata))


# ------------------------------------------------------------------------------ layers


@pytest.fixture()
def catalog(sources, tmp_path):
    """A SQLite catalog holding the three images and a search over them."""
    product, made = sources
    store = SQLiteStore(tmp_path / "catalog.db")
    store.create_product(product)
    store.put_images(made.values())
    search_id = store.register_search(SearchQuery(collections=["mos"])).id
    yield store, search_id
    store.close()


def settings(tmp_path, **extra) -> Settings:
    return Settings(data_dir=tmp_path, catalog_url=f"sqlite:///{tmp_path / 'x.db'}", **extra)


def test_image_layer_knows_its_bounds_zooms_and_bands(catalog, tmp_path):
    store, _ = catalog
    layer = ImageLayer.from_store(store, "mos:A", threads=1)
    assert layer.bounds == pytest.approx(tuple(WEB_MERCATOR.bounds(TILE)))
    assert layer.zooms(WEB_MERCATOR).maxzoom == Z  # 256 pixels over one tile of zoom Z
    assert layer.info()["bands"] == ["v1", "v2", "alpha"]
    with pytest.raises(RenderError):
        layer.check(RenderParams(bands=("nope",)))


def test_search_layer_tile_is_newest_on_top_and_counts_its_images(catalog, tmp_path):
    store, search_id = catalog
    layer = SearchLayer(store, LayerCache(), search_id, MosaicParams(), settings(tmp_path))
    tile = layer.tile(WEB_MERCATOR, X, Y, Z, 256, RAW)
    v1, _, done = paint_first(["C", "B", "A"])
    numpy.testing.assert_array_equal(tile.array.data[0][done], v1[done])
    assert "cap_reached" not in tile.metadata
    capped = SearchLayer(
        store, LayerCache(), search_id, MosaicParams(), settings(tmp_path, mosaic_max_images=1)
    )
    assert capped.tile(WEB_MERCATOR, X, Y, Z, 256, RAW).metadata["cap_reached"] == 1


def test_search_layer_refuses_zooms_below_its_minzoom(catalog, tmp_path):
    store, search_id = catalog
    layer = SearchLayer(store, LayerCache(), search_id, MosaicParams(), settings(tmp_path))
    minzoom = layer.zooms(WEB_MERCATOR).minzoom
    layer.check_zoom(WEB_MERCATOR, minzoom)
    with pytest.raises(RenderError, match="below this mosaic's minzoom"):
        layer.check_zoom(WEB_MERCATOR, minzoom - 1)


def test_point_is_the_source_pixel_under_it(catalog, tmp_path):
    store, search_id = catalog
    bounds = WEB_MERCATOR.bounds(TILE)
    row, col = 200, 100  # a pixel where C (on top) is valid
    lon = bounds.left + (col + 0.5) * (bounds.right - bounds.left) / 256
    # rows are linear in WebMercator y, not in latitude: go through the tile's projection
    west, north = WEB_MERCATOR.xy(bounds.left, bounds.top)
    east, south = WEB_MERCATOR.xy(bounds.right, bounds.bottom)
    y = north - (row + 0.5) * (north - south) / 256
    lat = WEB_MERCATOR.lnglat(west, y).y
    _, c1, c2, _ = images()["C"]
    layer = SearchLayer(store, LayerCache(), search_id, MosaicParams(), settings(tmp_path))
    assert layer.point(lon, lat, RAW) == {"v1": c1[row, col], "v2": c2[row, col]}
    _, a1, a2, _ = images()["A"]
    image = ImageLayer.from_store(store, "mos:A", threads=1)
    assert image.point(lon, lat, RAW) == {"v1": a1[row, col], "v2": a2[row, col]}


def test_statistics_are_those_of_the_valid_pixels(catalog, tmp_path):
    store, _ = catalog
    layer = ImageLayer.from_store(store, "mos:B", threads=1)
    stats = layer.statistics(RAW, GridRequest())
    _, v1, v2, alpha = images()["B"]
    ok = valid(v1, v2, alpha)
    assert stats["v1"]["count"] == ok.sum()
    assert stats["v1"]["valid_percent"] == pytest.approx(100 * ok.mean())
    assert stats["v2"]["min"] == v2[ok].min() and stats["v2"]["max"] == v2[ok].max()
    assert stats["v2"]["mean"] == pytest.approx(v2[ok].mean())


def test_band_statistics_of_an_empty_band_count_zero():
    empty = ImageData(numpy.ma.masked_all((1, 2, 2), dtype="float32"), band_names=["b"])
    assert band_statistics(empty) == {"b": {"count": 0, "valid_percent": 0.0}}


def test_point_area_is_a_tiny_box_around_the_point():
    area = point_area(10.0, 50.0)
    west, south, east, north = area.bbox
    assert west < 10.0 < east and south < 50.0 < north and east - west < 1e-6


# --------------------------------------------------------------------- parameter types


@pytest.mark.parametrize(
    ("values", "parsed"),
    [
        (["display"], "display"),
        (["0,3000"], (0, 3000)),
        (["2%,98%"], ("2%", "98%")),
        (["raw", "none", "0,1.5,0,255"], ["raw", None, (0, 1.5, 0, 255)]),
        (['{"B04": [0, 4000], "default_": "auto"}'], {"B04": (0, 4000), "default_": "auto"}),
        (None, None),
    ],
)
def test_scaling_is_parsed_into_modes_tuples_or_a_mapping(values, parsed):
    assert Scaling.parse(values) == Scaling(parsed)
    assert Scaling.parse(values).form == parsed


@pytest.mark.parametrize(
    "values", [["1,2,3,4,5"], ["0,abc"], ['{"B04": [[[1]]]}'], ['["display"]'], ["0,1"] * 65]
)
def test_bad_scaling_is_an_error_naming_the_problem(values):
    with pytest.raises(ScalingError, match="scaling"):
        Scaling.parse(values)
