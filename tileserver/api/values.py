"""Values and pictures of a layer, registered once for images and searches (api/factory.py
calls `register_values` and `register_pictures` on each mount), and the colormap listing.

- `GET {layer}/point/{lon},{lat}` (`coord_crs` for other CRSs): each band's stored value and
  its value at the processing level, the request's band math, and what a tile draws there;
  for a search, every image meeting the point in paint order and what the mosaic shows
  (titiler's `/point`, titiler-pgstac's mosaic point).
- `GET|POST {layer}/statistics` (a search's mosaic), `GET|POST /searches/{id}/stack/statistics`
  (one entry per stack layer, `flatten`): statistics over a `bbox` or a posted GeoJSON
  Feature / FeatureCollection / geometry (one answer per feature, titiler-style).
- `GET {layer}/preview.{fmt}`, `GET {layer}/bbox/{minx},{miny},{maxx},{maxy}.{fmt}`,
  `POST {layer}/feature.{fmt}`: pictures with every rendering parameter, at most
  `max_size` pixels (or `width` / `height`), in png, jpeg, webp, tif or npy.
- `GET {layer}/legend.png`; `GET /colormaps`, `/colormaps/{name}`, `/colormaps/{name}/legend.png`.

Parameters are parsed in api/deps.py; the work is tileserver/values.py's.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Response

from tileserver.api.deps import (
    CoordCrsDep,
    KnownQuery,
    PictureSizeDep,
    RenderParamsDep,
    SettingsDep,
    StatisticsOptionsDep,
    bad_request,
    named_colormap,
)
from tileserver.api.downloads import FlattenQuery, GridDep
from tileserver.catalog.geojson import check_geometry, json_depth_problem
from tileserver.render.colors import ColorError, colorbar_png, colormap_names
from tileserver.render.download import GridRequest, parse_bbox
from tileserver.render.pipeline import ImageFormat, encode_image
from tileserver.values import Point, area_statistics, layer_legend, picture, point_values

MAX_FEATURES = 100  # features of one statistics request
MAX_BODY_DEPTH = 24  # a FeatureCollection of MultiPolygons with nested properties
PICTURE_RESPONSES: dict = {
    200: {
        "content": {
            "image/png": {},
            "image/jpeg": {},
            "image/webp": {},
            "image/tiff": {},
            "application/x-binary": {},
        }
    }
}
PNG = {200: {"content": {"image/png": {}}}}
GeoJSONBody = Annotated[
    dict[str, Any] | None,
    Body(description="a GeoJSON Feature, FeatureCollection or Polygon/MultiPolygon in WGS84"),
]


def posted_features(body: dict[str, Any]) -> tuple[list[dict], bool]:
    """The posted Features with checked polygonal geometries, and whether a collection came.

    A bare geometry or `{"geometry": ...}` is one Feature without properties.
    """
    problem = json_depth_problem(body, MAX_BODY_DEPTH)
    if problem is not None:
        raise bad_request(f"the body {problem}")
    kind = body.get("type")
    if kind == "FeatureCollection":
        features = body.get("features")
        if not isinstance(features, list) or not features:
            raise bad_request("the FeatureCollection has no features")
        if len(features) > MAX_FEATURES:
            raise bad_request(f"the FeatureCollection has more than {MAX_FEATURES} features")
        collection = True
    elif kind == "Feature":
        features, collection = [body], False
    elif kind is None and set(body) == {"geometry"}:
        features, collection = [{"type": "Feature", "geometry": body["geometry"]}], False
    else:
        features, collection = [{"type": "Feature", "geometry": body}], False
    checked = []
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise bad_request(f"feature {i} is not a GeoJSON Feature")
        what = "the geometry" if not collection else f"the geometry of feature {i}"
        try:
            geometry = check_geometry(feature.get("geometry"), what, polygonal=True)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        properties = feature.get("properties")
        checked.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": dict(properties) if isinstance(properties, dict) else {},
            }
        )
    return checked, collection


def with_geometry(area: GridRequest, geometry: dict) -> GridRequest:
    """The area as the posted geometry; a bbox with it is one 400."""
    if area.bbox is not None:
        raise bad_request("give a bbox or a posted geometry, not both")
    return GridRequest(
        geometry=geometry,
        crs=area.crs,
        resolution=area.resolution,
        width=area.width,
        height=area.height,
    )


def statistics_answer(layer, params, area, options, settings, body, flatten=None) -> dict:
    """One answer per posted feature (in the feature's properties), or the area's."""
    limit = settings.download_max_pixels
    if body is None:
        return area_statistics(layer, params, area, options, limit, flatten)
    features, collection = posted_features(body)
    for feature in features:
        found = area_statistics(
            layer, params, with_geometry(area, feature["geometry"]), options, limit, flatten
        )
        feature["properties"].update(found)
    if collection:
        return {"type": "FeatureCollection", "features": features}
    return features[0]


def picture_response(image, fmt: ImageFormat) -> Response:
    """An encoded picture; the layer's images are few and cached by the client."""
    return Response(encode_image(image, fmt), media_type=fmt.media_type)


def register_values(endpoints, stacks: bool) -> None:
    """Point values and statistics of the layer `endpoints` mounts (api/factory.py)."""
    layer_dep, prefix, kind = endpoints.layer_dep, endpoints.prefix, endpoints.kind

    def layer_point(
        lon: float, lat: float, params: RenderParamsDep, layer: layer_dep, crs: CoordCrsDep
    ) -> dict:
        """Values at a point: for each band its stored (`raw`) value and its value at the
        processing level, the request's band math (`values`), and what a tile draws there
        (`rendered`); for a search, one entry per image in paint order and the mosaic's."""
        return point_values(layer, Point(lon, lat, crs), params)

    endpoints.router.add_api_route(
        f"{prefix}/point/{{lon}},{{lat}}",
        layer_point,
        name=f"{kind}_point",
        methods=["GET"],
        tags=["values"],
    )

    def layer_statistics(
        params: RenderParamsDep,
        area: GridDep,
        options: StatisticsOptionsDep,
        layer: layer_dep,
        settings: SettingsDep,
        body: GeoJSONBody = None,
    ) -> dict:
        """Statistics of each band (or expression) over a `bbox`, the whole layer, or each
        posted Feature (pixels whose centre is inside, in the image's own grid and CRS;
        `coverage=true` weighs pixels by the share covered). Values at the processing
        level, never scaled."""
        return statistics_answer(layer, params, area, options, settings, body)

    for method in ("GET", "POST"):
        endpoints.router.add_api_route(
            f"{prefix}/statistics",
            layer_statistics,
            name=f"{kind}_statistics",
            methods=[method],
            tags=["values"],
        )
    if not stacks:
        return

    def stack_statistics(
        params: RenderParamsDep,
        area: GridDep,
        options: StatisticsOptionsDep,
        layer: layer_dep,
        settings: SettingsDep,
        body: GeoJSONBody = None,
        flatten: FlattenQuery = "none",
    ) -> dict:
        """Statistics of each stack layer (each image, or each `flatten` group), in the
        stack's order, over a bbox or each posted Feature."""
        return statistics_answer(layer, params, area, options, settings, body, flatten)

    for method in ("GET", "POST"):
        endpoints.router.add_api_route(
            f"{prefix}/stack/statistics",
            stack_statistics,
            name=f"{kind}_stack_statistics",
            methods=[method],
            tags=["values"],
        )


def register_pictures(endpoints) -> None:
    """Preview, bbox and feature pictures and the legend of the layer `endpoints` mounts."""
    layer_dep, prefix, kind = endpoints.layer_dep, endpoints.prefix, endpoints.kind
    add = endpoints.router.add_api_route

    def preview(
        fmt: ImageFormat,
        params: RenderParamsDep,
        size: PictureSizeDep,
        layer: layer_dep,
        settings: SettingsDep,
    ) -> Response:
        """The whole layer, at most `max_size` pixels on its longer side."""
        image = picture(layer, params, GridRequest(), size, settings.download_max_pixels)
        return picture_response(image, fmt)

    def bbox_picture(
        minx: str,
        miny: str,
        maxx: str,
        maxy: str,
        fmt: ImageFormat,
        params: RenderParamsDep,
        size: PictureSizeDep,
        crs: CoordCrsDep,
        layer: layer_dep,
        settings: SettingsDep,
    ) -> Response:
        """The layer in a bbox (in `coord_crs`), at most `max_size` pixels."""
        box = parse_bbox(f"{minx},{miny},{maxx},{maxy}")
        area = GridRequest(bbox=box, bbox_crs=crs)
        return picture_response(
            picture(layer, params, area, size, settings.download_max_pixels), fmt
        )

    def feature_picture(
        fmt: ImageFormat,
        params: RenderParamsDep,
        size: PictureSizeDep,
        layer: layer_dep,
        settings: SettingsDep,
        body: Annotated[dict[str, Any], Body()],
    ) -> Response:
        """The layer within a posted Feature or geometry (pixels whose centre is outside are
        transparent), at most `max_size` pixels."""
        features, collection = posted_features(body)
        if collection:
            raise bad_request("post one Feature or geometry, not a FeatureCollection")
        area = GridRequest(geometry=features[0]["geometry"])
        return picture_response(
            picture(layer, params, area, size, settings.download_max_pixels), fmt
        )

    def legend(
        params: RenderParamsDep,
        layer: layer_dep,
        width: Annotated[int, Query(ge=16, le=2048, description="pixels")] = 256,
        height: Annotated[int, Query(ge=16, le=2048, description="pixels")] = 40,
    ) -> Response:
        """The legend of a one-band rendering: a colour bar with its value range, or the
        classes of a class band with their labels."""
        try:
            return Response(layer_legend(layer, params, width, height), media_type="image/png")
        except ColorError as exc:
            raise bad_request(str(exc)) from None

    add(
        f"{prefix}/preview.{{fmt}}",
        preview,
        name=f"{kind}_preview",
        methods=["GET"],
        response_class=Response,
        responses=PICTURE_RESPONSES,
        tags=["pictures"],
    )
    add(
        f"{prefix}/bbox/{{minx}},{{miny}},{{maxx}},{{maxy}}.{{fmt}}",
        bbox_picture,
        name=f"{kind}_bbox",
        methods=["GET"],
        response_class=Response,
        responses=PICTURE_RESPONSES,
        tags=["pictures"],
    )
    add(
        f"{prefix}/feature.{{fmt}}",
        feature_picture,
        name=f"{kind}_feature",
        methods=["POST"],
        response_class=Response,
        responses=PICTURE_RESPONSES,
        tags=["pictures"],
    )
    add(
        f"{prefix}/legend.png",
        legend,
        name=f"{kind}_legend",
        methods=["GET"],
        response_class=Response,
        responses=PNG,
        tags=["pictures"],
    )


router = APIRouter(tags=["colormaps"], dependencies=[KnownQuery])


@router.get("/colormaps")
def list_colormaps() -> dict:
    """The names `colormap_name` takes (rio-tiler's colormaps)."""
    return {"colormaps": colormap_names()}


@router.get("/colormaps/{name}")
def get_colormap(name: str) -> dict:
    """A colormap's 256 colours, value -> [r, g, b, a] (the form `colormap` takes)."""
    if name.lower() not in colormap_names():
        raise HTTPException(404, f"unknown colormap '{name}' (see /colormaps)")
    return {str(k): [int(c) for c in v] for k, v in named_colormap(name).items()}


@router.get("/colormaps/{name}/legend.png", response_class=Response, responses=PNG)
def colormap_legend(
    name: str,
    vmin: Annotated[float, Query(allow_inf_nan=False, description="value at the left")] = 0,
    vmax: Annotated[float, Query(allow_inf_nan=False, description="value at the right")] = 255,
    width: Annotated[int, Query(ge=16, le=2048, description="pixels")] = 256,
    height: Annotated[int, Query(ge=16, le=2048, description="pixels")] = 40,
) -> Response:
    """A colour bar of the colormap with its value range written under it."""
    if name.lower() not in colormap_names():
        raise HTTPException(404, f"unknown colormap '{name}' (see /colormaps)")
    if not vmin < vmax:
        raise bad_request("vmin must be below vmax")
    return Response(
        colorbar_png(named_colormap(name), vmin, vmax, width, height), media_type="image/png"
    )
