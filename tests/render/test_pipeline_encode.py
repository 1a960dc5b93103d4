"""Byte pictures through Pillow: the pixels GDAL (rio-tiler's render) writes, faster."""

from __future__ import annotations

import io

import numpy
import pytest
from PIL import Image as PILImage
from rasterio.io import MemoryFile
from rio_tiler.colormap import cmap
from rio_tiler.utils import render

from tileserver.render.pipeline import ImageFormat, encode

RNG = numpy.random.default_rng(7)
MASK = numpy.where(numpy.add.outer(numpy.arange(64), numpy.arange(64)) % 7 == 0, 0, 255).astype(
    "uint8"
)


def decoded(content: bytes) -> numpy.ndarray:
    """(bands, rows, cols) of an encoded picture, read by GDAL."""
    with MemoryFile(content) as memfile, memfile.open() as dataset:
        return dataset.read()


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_png_pixels_are_those_gdal_writes(count, masked):
    data = RNG.integers(0, 256, (count, 64, 64), dtype="uint8")
    mask = MASK if masked else None
    ours = encode(data, mask, ImageFormat.png)
    assert ours[:8] == b"\x89PNG\r\n\x1a\n"
    expected = decoded(render(data, mask, img_format="PNG"))
    assert decoded(ours).shape == (count + masked, 64, 64)
    numpy.testing.assert_array_equal(decoded(ours), expected)
    if masked:  # the mask is the alpha channel, as given
        numpy.testing.assert_array_equal(decoded(ours)[-1], MASK)


def test_png_with_a_colormap_is_rgba_as_gdal_writes():
    data = RNG.integers(0, 256, (1, 64, 64), dtype="uint8")
    colormap = cmap.get("viridis")
    ours = decoded(encode(data, MASK, ImageFormat.png, colormap))
    numpy.testing.assert_array_equal(ours, decoded(render(data, MASK, colormap=colormap)))
    red, green, blue, _ = colormap[int(data[0, 0, 1])]
    assert tuple(ours[:3, 0, 1]) == (red, green, blue)
    assert ours[3, 0, 0] == 0 and ours[3, 0, 1] == 255  # MASK is 0 on the diagonal


def test_png_of_uint16_stays_with_gdal():
    data = RNG.integers(0, 65536, (3, 32, 32), dtype="uint16")
    numpy.testing.assert_array_equal(decoded(encode(data, None, ImageFormat.png)), data)


@pytest.mark.parametrize("fmt", [ImageFormat.jpeg, ImageFormat.webp])
def test_lossy_pictures_stay_close_to_the_data(fmt):
    rows, cols = numpy.mgrid[0:64, 0:64]
    data = numpy.stack([rows * 3, cols * 3, (rows + cols) * 2]).astype("uint8")
    content = encode(data, MASK, fmt)
    picture = PILImage.open(io.BytesIO(content))
    assert picture.format == {"jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
    pixels = numpy.asarray(picture).transpose(2, 0, 1).astype(float)
    assert pixels.shape[0] == (3 if fmt is ImageFormat.jpeg else 4)  # JPEG has no alpha
    error = numpy.sqrt(numpy.mean((pixels[:3] - data) ** 2))
    assert error < 3, error


def test_webp_repeats_a_single_band_as_rgb():
    data = numpy.full((1, 32, 32), 200, dtype="uint8")
    pixels = numpy.asarray(PILImage.open(io.BytesIO(encode(data, None, ImageFormat.webp))))
    assert pixels.shape == (32, 32, 3)
    assert numpy.abs(pixels.astype(int) - 200).max() <= 2
