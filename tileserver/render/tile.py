"""One map tile of one image: read the bands it needs and render them."""

from __future__ import annotations

from morecantile import TileMatrixSet
from rio_tiler.models import ImageData

from tileserver.catalog.models import Band, Image, Product
from tileserver.render.pipeline import RenderParams, render_array, requested_bands
from tileserver.render.reader import image_reader, read_bands, resolve_bands, tile_reader


def request_bands(product: Product, params: RenderParams) -> tuple[list[Band], Band | None]:
    """The bands a request renders and the mask band that makes their pixels transparent.

    Unknown bands raise here, so endpoints that only describe a layer can check them.
    A requested band list ending in a mask band uses it as the alpha channel (0 is
    transparent); otherwise the product's alpha band, if any, masks every request.
    """
    bands = resolve_bands(product, requested_bands(product, params))
    if len(bands) > 1 and bands[-1].type == "mask":
        return bands[:-1], bands[-1]
    alpha = product.alpha_band()
    if alpha is not None and alpha in bands:
        alpha = None
    return bands, alpha


def tile_image(
    image: Image,
    product: Product,
    tms: TileMatrixSet,
    x: int,
    y: int,
    z: int,
    tilesize: int,
    params: RenderParams,
    threads: int = 4,
) -> ImageData:
    """The rendered tile (render.encode.encode_image encodes it); `auto` scaling uses the
    image's stored statistics."""
    bands, alpha_band = request_bands(product, params)
    to_read = bands + ([alpha_band] if alpha_band else [])
    img = read_bands(
        image,
        to_read,
        tile_reader(x, y, z, tilesize, params.resampling),
        tms,
        params.nodata,
        threads,
    )
    data, alpha = img.array, None
    if alpha_band is not None:
        alpha, data = data[-1].filled(0), data[:-1]
    rendered = render_array(
        data, bands, params, stats=image.band_stats, alpha=alpha, alpha_band=alpha_band
    )
    return rendered.image(img.crs, img.bounds)


def zoom_range(image: Image, tms: TileMatrixSet) -> tuple[int, int]:
    """The zooms a client should ask for, from the image's first file (rio-tiler's rule)."""
    with image_reader(image, image.files[0].href, tms=tms) as reader:
        return reader.minzoom, reader.maxzoom
