"""Previews, bbox and feature crops, custom colormaps, colour formulas and legends.

Every picture is decoded (Pillow, rasterio) and compared with pixels worked out here
from the synthetic arrays of tests/test_values.py and tests/test_mosaic.py.
"""

from __future__ import annotations

import io
import json

import numpy
import pytest
from PIL import Image as PILImage
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rio_tiler.colormap import cmap
from shapely.geometry import box

from tests import test_values
from tests.test_mosaic import images, paint_first
from tests.test_values import COLORS, RES, SIZE, arrays, inside, origin, wgs84_geometry

zones = test_values.zones  # the module's fixtures, shared
mosaic = test_values.mosaic


def picture(response) -> numpy.ndarray:
    """(rows, cols, channels) of a PNG / JPEG / WebP answer."""
    assert response.status_code == 200, response.text
    pixels = numpy.asarray(PILImage.open(io.BytesIO(response.content)))
    return pixels if pixels.ndim == 3 else pixels[:, :, numpy.newaxis]


def display(values, lo, hi) -> numpy.ndarray:
    scaled = (numpy.asarray(values, dtype="float64") - lo) / (hi - lo) * 255
    return numpy.clip(numpy.floor(scaled + 0.5), 0, 255).astype("uint8")


def test_preview_is_the_image_on_its_grid_when_it_fits(zones):
    client, _ = zones
    b04, _, _ = arrays(0)
    pixels = picture(
        client.get("/images/lv:west/preview.png", params={"bands": "B04", "scaling": "display"})
    )
    assert pixels.shape == (SIZE, SIZE, 2)  # grey and alpha
    ok = b04 != 0
    assert numpy.array_equal(pixels[:, :, 1], numpy.where(ok, 255, 0))
    assert numpy.array_equal(pixels[:, :, 0][ok], display(b04, 0, 4000)[ok])


def test_preview_above_max_size_is_resampled_to_fit(zones):
    client, _ = zones
    b04, _, _ = arrays(0)
    pixels = picture(
        client.get(
            "/images/lv:west/preview.png",
            params={"bands": "B04", "scaling": "display", "max_size": 100},
        )
    )
    assert pixels.shape == (100, 100, 2)
    # nearest neighbour, 3 source pixels per output pixel: the middle one
    expected = display(b04[1::3, 1::3], 0, 4000)
    ok = b04[1::3, 1::3] != 0
    assert numpy.array_equal(pixels[:, :, 0][ok], expected[ok])
    sized = picture(client.get("/images/lv:west/preview.png", params={"bands": "B04", "width": 60}))
    assert sized.shape[:2] == (60, 60)


def test_bbox_crop_in_the_image_crs_is_the_source_window(zones):
    client, _ = zones
    b04, b08, _ = arrays(0)
    x0, y0 = origin("west")
    minx, miny, maxx, maxy = x0 + 500, y0 - 1200, x0 + 1300, y0 - 400  # cols 50..129, rows 40..119
    answer = client.get(
        f"/images/lv:west/bbox/{minx},{miny},{maxx},{maxy}.tif",
        params={"bands": "B04,B08", "coord_crs": "EPSG:32633"},
    )
    assert answer.status_code == 200, answer.text
    with MemoryFile(answer.content) as memfile, memfile.open() as src:
        data = src.read()
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform.c == pytest.approx(minx) and src.transform.f == pytest.approx(maxy)
        assert src.transform.a == pytest.approx(RES)
    assert numpy.array_equal(data[0], b04[40:120, 50:130])
    assert numpy.array_equal(data[1], b08[40:120, 50:130])
    assert numpy.all(data[2] == 255)  # the mask band: every pixel valid


def test_feature_crop_is_transparent_outside_the_polygon(zones):
    client, _ = zones
    b04, _, _ = arrays(0)
    x0, y0 = origin("west")
    triangle = wgs84_geometry(
        box(x0 + 200, y0 - 1000, x0 + 1000, y0 - 200).exterior.convex_hull, "EPSG:32633"
    )
    triangle = {
        "type": "Polygon",
        "coordinates": [[*triangle["coordinates"][0][:3], triangle["coordinates"][0][0]]],
    }
    answer = client.post(
        "/images/lv:west/feature.png",
        params={"bands": "B04", "scaling": "display"},
        json={"type": "Feature", "geometry": triangle, "properties": {}},
    )
    pixels = picture(answer)
    area = inside(triangle, "west")
    rows, cols = numpy.nonzero(area)
    window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert pixels.shape[:2] == area[window].shape
    assert numpy.array_equal(pixels[:, :, 1] == 255, area[window] & (b04[window] != 0))
    shown = pixels[:, :, 1] == 255
    assert numpy.array_equal(pixels[:, :, 0][shown], display(b04[window], 0, 4000)[shown])


@pytest.mark.parametrize(("fmt", "mode"), [("jpeg", "L"), ("webp", "RGBA"), ("png", "LA")])
def test_picture_formats_decode(zones, fmt, mode):
    client, _ = zones
    answer = client.get(
        f"/images/lv:west/preview.{fmt}",
        params={"bands": "B04", "scaling": "display", "max_size": 64},
    )
    assert answer.status_code == 200, answer.text
    decoded = PILImage.open(io.BytesIO(answer.content))
    assert decoded.mode == mode and max(decoded.size) == 64


def test_search_preview_is_the_mosaic(mosaic):
    client, search_id = mosaic
    pixels = picture(
        client.get(
            f"/searches/{search_id}/preview.png", params={"bands": "v1", "scaling": "display"}
        )
    )
    v1 = numpy.zeros((256, 256))
    done = numpy.zeros((256, 256), dtype=bool)
    for name in "CBA":  # v1 alone is read: an image's pixel is there where v1 and alpha are
        _, values, _, alpha = images()[name]
        take = (values != 0) & (alpha != 0) & ~done
        v1[take], done = values[take], done | take
    assert pixels.shape == (256, 256, 2)
    assert numpy.array_equal(pixels[:, :, 1] == 255, done)
    assert numpy.array_equal(pixels[:, :, 0][done], display(v1, 0, 1000)[done])
    two = picture(
        client.get(
            f"/searches/{search_id}/preview.png",
            params={"bands": "v1,v2", "scaling": "display"},
        )
    )
    assert numpy.array_equal(two[:, :, 2] == 255, paint_first(["C", "B", "A"])[2])


def test_class_band_pictures_use_its_colours_or_a_custom_colormap(zones):
    client, _ = zones
    _, _, scl = arrays(0)
    own = picture(client.get("/images/lv:west/preview.png", params={"bands": "SCL"}))
    assert numpy.array_equal(own[:, :, :4], numpy.array(COLORS, dtype="uint8")[scl])
    custom = {str(i): "#0000ff" if i % 2 else [255, 0, 0] for i in range(12)}
    answer = client.get(
        "/images/lv:west/preview.png", params={"bands": "SCL", "colormap": json.dumps(custom)}
    )
    pixels = picture(answer)
    expected = numpy.where((scl % 2)[..., numpy.newaxis] == 1, [0, 0, 255], [255, 0, 0])
    assert numpy.array_equal(pixels[:, :, :3], expected)
    intervals = [[[0, 6], [10, 20, 30, 255]], [[6, 12], [40, 50, 60, 255]]]
    pixels = picture(
        client.get(
            "/images/lv:west/preview.png",
            params={"bands": "SCL", "colormap": json.dumps(intervals)},
        )
    )
    expected = numpy.where((scl < 6)[..., numpy.newaxis], [10, 20, 30], [40, 50, 60])
    assert numpy.array_equal(pixels[:, :, :3], expected)


def test_color_formula_applies_gamma_to_byte_output(zones):
    client, _ = zones
    b04, _, _ = arrays(0)
    params = {"bands": "B04,B04,B04", "scaling": "display"}
    plain = picture(client.get("/images/lv:west/preview.png", params=params))
    gamma = picture(
        client.get("/images/lv:west/preview.png", params={**params, "color_formula": "gamma r 2"})
    )
    ok = b04 != 0
    expected = (display(b04, 0, 4000) / 255.0) ** 0.5 * 255
    assert numpy.abs(gamma[:, :, 0][ok] - expected[ok]).max() <= 1
    assert numpy.array_equal(gamma[:, :, 1], plain[:, :, 1])  # green untouched


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"colormap": "{"}, "json"),
        ({"colormap": '{"a": [1, 2, 3]}'}, "integer"),
        ({"colormap": '{"1": [1, 2]}'}, "colour"),
        ({"colormap": "5000000"}, "json object"),
        ({"colormap": '"viridis"'}, "json object"),
        ({"colormap": '{"99999999999999999999": [1, 2, 3]}'}, "2**53"),
        ({"colormap": "{}", "colormap_name": "viridis"}, "not both"),
        ({"color_formula": "gamma x"}, "color_formula"),
        ({"color_formula": "gamma r 2", "scaling": "raw"}, "byte"),
        ({"max_size": 0}, "max_size"),
    ],
)
def test_bad_picture_requests_are_clear_4xx(zones, params, words):
    client, _ = zones
    answer = client.get("/images/lv:west/preview.png", params={"bands": "B04", **params})
    assert answer.status_code in (400, 422), answer.text
    assert words in json.dumps(answer.json()).lower()


def test_colormap_listing_and_colour_bar(zones):
    client, _ = zones
    names = client.get("/colormaps").json()["colormaps"]
    assert "viridis" in names and "rdylgn" in names
    viridis = client.get("/colormaps/viridis").json()
    assert viridis["0"] == list(cmap.get("viridis")[0])
    assert client.get("/colormaps/nothing").status_code == 404
    bar = picture(client.get("/colormaps/viridis/legend.png", params={"vmin": -1, "vmax": 1}))
    assert bar.shape == (40, 256, 4)
    assert list(bar[0, 0]) == list(cmap.get("viridis")[0])
    assert list(bar[0, 255]) == list(cmap.get("viridis")[255])
    assert (bar[30:, :, :3] < 128).any()  # the range is written under the bar
    layer = picture(
        client.get("/images/lv:west/legend.png", params={"bands": "B04", "colormap_name": "rdylgn"})
    )
    assert list(layer[0, 0]) == list(cmap.get("rdylgn")[0])


def test_class_legend_has_a_row_per_class(zones):
    client, _ = zones
    legend = picture(client.get("/images/lv:west/legend.png", params={"bands": "SCL"}))
    assert legend.shape[0] == 18 * len(COLORS) + 2
    for i, color in enumerate(COLORS):
        assert list(legend[1 + i * 18 + 9, 10]) == color, i
    assert client.get("/images/lv:west/legend.png", params={"bands": "B04"}).status_code == 400
