"""The documents that describe a layer (api/factory.py): URL templates, TileJSON and WMTS
capabilities."""

from __future__ import annotations

import math

from fastapi import Request, Response
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from titiler.core.utils import tms_limits, tms_limits_to_xml, tms_to_xml

from tileserver.api.auth import key_query
from tileserver.api.deps import render_query
from tileserver.api.templates import render_template
from tileserver.render.pipeline import ImageFormat

WGS84 = CRS.from_epsg(4326)


def tile_url_template(
    request: Request,
    route: str,
    path_params: dict,
    tms: TileMatrixSet,
    fmt: str,
    xyz=("{z}", "{x}", "{y}"),
) -> str:
    """A tile route's URL with placeholders, carrying the request's rendering parameters."""
    base = str(
        request.url_for(route, tms_id=tms.id, z=xyz[0], x=xyz[1], y=xyz[2], fmt=fmt, **path_params)
    )
    for placeholder in xyz:  # url_for percent-encodes the braces
        encoded = placeholder.replace("{", "%7B").replace("}", "%7D")
        base = base.replace(encoded, placeholder)
    query = "&".join(q for q in (render_query(request), key_query(request)) if q)
    return f"{base}?{query}" if query else base


def tilejson(name: str, tiles: str, bounds, minzoom: int, maxzoom: int) -> dict:
    """A TileJSON 3.0 document."""
    west, south, east, north = bounds
    return {
        "tilejson": "3.0.0",
        "name": name,
        "version": "1.0.0",
        "scheme": "xyz",
        "tiles": [tiles],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, (south + north) / 2, minzoom],
    }


def wmts_capabilities(
    request: Request,
    title: str,
    bounds,
    minzoom: int,
    maxzoom: int,
    tms: TileMatrixSet,
    fmt: ImageFormat,
    tile_url: str,
    snap_zoom: int | None = None,
) -> Response:
    """OGC WMTS 1.0 capabilities (RESTful) of one layer; its extent snaps to the pixels of
    `snap_zoom` (default `minzoom`): the layer's own data, not the whole first matrix."""
    epsg = tms.crs._pyproj_crs.to_epsg()
    xml = render_template(
        "wmts.xml",
        title=title,
        layer=title.replace(":", "_"),
        bounds=bounds,
        native_bounds=snapped_bounds(tms, bounds, minzoom if snap_zoom is None else snap_zoom),
        media_type=fmt.media_type,
        tms_id=tms.id,
        limits=tms_limits_to_xml(
            tms_limits(tms, bounds, zooms=(minzoom, maxzoom), geographic_crs=WGS84)
        ),
        matrices=tms_to_xml(tms, minzoom, maxzoom),
        supported_crs=f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else tms.crs.srs,
        tile_url=tile_url,
        capabilities_url=str(request.url),
    )
    return Response(xml, media_type="application/xml")


WMTS_XYZ = ("{TileMatrix}", "{TileCol}", "{TileRow}")


def snapped_bounds(
    tms: TileMatrixSet, bbox: tuple[float, float, float, float], zoom: int
) -> tuple[float, float, float, float]:
    """The WGS84 bbox in the grid's CRS, snapped outward to whole pixels of `zoom`.

    Without it GDAL's WMTS driver rounds the WGS84 box to the finest zoom and its
    overviews land half a pixel off the tile grid.
    """
    minx, miny, maxx, maxy = transform_bounds(WGS84, tms.rasterio_crs, *bbox, densify_pts=21)
    matrix = tms.matrix(zoom)
    size, (x0, y0) = matrix.cellSize, matrix.pointOfOrigin
    return (
        x0 + math.floor((minx - x0) / size) * size,
        y0 - math.ceil((y0 - miny) / size) * size,
        x0 + math.ceil((maxx - x0) / size) * size,
        y0 - math.floor((y0 - maxy) / size) * size,
    )
