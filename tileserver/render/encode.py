"""Encode a rendered array as png / jpeg / webp / tif / npy, refusing what a format can't hold."""

from __future__ import annotations

from enum import StrEnum
from io import BytesIO

import numpy
from affine import Affine
from PIL import Image as PILImage
from rasterio.crs import CRS
from rio_tiler.colormap import apply_cmap
from rio_tiler.models import ImageData
from rio_tiler.utils import render

from tileserver.catalog.models import DATA_TYPE_TO_NUMPY
from tileserver.render.errors import RenderError


class ImageFormat(StrEnum):
    """Output formats of tiles; the value is the URL extension."""

    png = "png"
    jpeg = "jpeg"
    jpg = "jpg"
    webp = "webp"
    tif = "tif"
    npy = "npy"

    @property
    def media_type(self) -> str:
        """The Content-Type of the encoded bytes."""
        return MEDIA_TYPES[self]


MEDIA_TYPES = {
    ImageFormat.png: "image/png",
    ImageFormat.jpeg: "image/jpeg",
    ImageFormat.jpg: "image/jpeg",
    ImageFormat.webp: "image/webp",
    ImageFormat.tif: "image/tiff; application=geotiff",
    ImageFormat.npy: "application/x-binary",
}
DRIVERS = {
    ImageFormat.png: "PNG",
    ImageFormat.jpeg: "JPEG",
    ImageFormat.jpg: "JPEG",
    ImageFormat.webp: "WEBP",
    ImageFormat.tif: "GTiff",
    ImageFormat.npy: "NPY",
}
# What each picture format can hold: numpy dtypes and band counts (before the alpha band).
PICTURE_DTYPES = {
    ImageFormat.png: ("uint8", "uint16"),
    ImageFormat.jpeg: ("uint8",),
    ImageFormat.jpg: ("uint8",),
    ImageFormat.webp: ("uint8",),
}
PICTURE_BANDS = {
    ImageFormat.png: (1, 2, 3),
    ImageFormat.jpeg: (1, 3),
    ImageFormat.jpg: (1, 3),
    ImageFormat.webp: (1, 3),
}
CREATION_OPTIONS = {
    ImageFormat.png: {"zlevel": 6},
    ImageFormat.jpeg: {"quality": 85},
    ImageFormat.jpg: {"quality": 85},
    ImageFormat.webp: {"quality": 85},
    ImageFormat.tif: {"compress": "deflate"},
    ImageFormat.npy: {},
}
# Byte pictures go through Pillow: the same libpng/libjpeg/libwebp without a GDAL dataset
# per tile, and PNG at zlib level 1, which costs a third of level 6 for 15-20 % more
# bytes on imagery (bench/README.md). Everything else goes through GDAL (rio-tiler's render).
PILLOW_FORMATS = {
    ImageFormat.png: ("PNG", {"compress_level": 1}),
    ImageFormat.jpeg: ("JPEG", {"quality": 85}),
    ImageFormat.jpg: ("JPEG", {"quality": 85}),
    ImageFormat.webp: ("WEBP", {"quality": 85}),
}
DATA_TYPE_NAMES = {v: k for k, v in DATA_TYPE_TO_NUMPY.items()}  # numpy -> catalog names


def check_format(fmt: ImageFormat, dtype: str, count: int, colormap: bool = False) -> None:
    """Raise RenderError when `fmt` cannot hold `count` bands of `dtype`."""
    if colormap and count != 1:
        raise RenderError(f"a colormap applies to one band, not {count}")
    if fmt not in PICTURE_DTYPES:
        return
    if str(dtype) not in PICTURE_DTYPES[fmt]:
        allowed = " or ".join(DATA_TYPE_NAMES[d] for d in PICTURE_DTYPES[fmt])
        raise RenderError(
            f"{fmt.value} cannot hold {DATA_TYPE_NAMES.get(str(dtype), dtype)} data "
            f"(only {allowed}): ask for tif or npy, or scale to Byte "
            "(e.g. scaling=display or data_type=Byte)"
        )
    if not colormap and count not in PICTURE_BANDS[fmt]:
        raise RenderError(
            f"{fmt.value} holds {' or '.join(map(str, PICTURE_BANDS[fmt]))} bands, "
            f"not {count}: ask for fewer bands or for tif/npy"
        )


def encode(
    data: numpy.ndarray,
    mask: numpy.ndarray | None,
    fmt: ImageFormat,
    colormap: dict | None = None,
    crs: CRS | None = None,
    transform: Affine | None = None,
) -> bytes:
    """Encode (bands, rows, cols) `data`; `mask` (0 invalid, 255 valid) becomes alpha.

    JPEG has no alpha; TIFF and NPY carry the mask as a last band, as rio-tiler does.
    """
    check_format(fmt, data.dtype, data.shape[0], colormap is not None)
    if fmt in PILLOW_FORMATS and data.dtype == numpy.uint8:
        return encode_picture(data, mask, fmt, colormap)
    options = dict(CREATION_OPTIONS[fmt])
    if fmt is ImageFormat.tif and crs is not None and transform is not None:
        options.update(crs=crs, transform=transform)
    if mask is not None:
        mask = mask.astype(data.dtype)
    return render(data, mask, img_format=DRIVERS[fmt], colormap=colormap, **options)


def encode_image(image: ImageData, fmt: ImageFormat) -> bytes:
    """Encode rendered ImageData (render.pipeline.Rendered.image): its pixels, its 0/255
    alpha mask, its colormap, and for GeoTIFF its CRS and transform."""
    mask = image.alpha_mask
    return encode(
        image.array.data,
        mask.astype("uint8") if mask is not None else None,
        fmt,
        image.metadata.get("colormap"),
        crs=image.crs,
        transform=image.transform,
    )


def encode_picture(
    data: numpy.ndarray, mask: numpy.ndarray | None, fmt: ImageFormat, colormap: dict | None
) -> bytes:
    """Byte png / jpeg / webp with Pillow, with the pixels rio-tiler's render would write.

    As there: a colormap's alpha applies where `mask` is valid, JPEG drops the mask, and
    WebP repeats a single band as RGB.
    """
    if colormap:
        data, alpha = apply_cmap(data, colormap)
        if mask is not None:
            mask = numpy.where(mask != 0, alpha, 0).astype("uint8")
    driver, options = PILLOW_FORMATS[fmt]
    if driver == "JPEG":
        mask = None
    elif driver == "WEBP" and data.shape[0] == 1:
        data = numpy.repeat(data, 3, axis=0)
    layers = [data] if mask is None else [data, mask[numpy.newaxis].astype("uint8")]
    pixels = numpy.ascontiguousarray(numpy.concatenate(layers).transpose(1, 2, 0))
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    out = BytesIO()  # Pillow reads the mode off the shape: L, LA, RGB or RGBA
    PILImage.fromarray(pixels).save(out, driver, **options)
    return out.getvalue()
