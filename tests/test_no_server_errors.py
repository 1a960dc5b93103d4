"""Every combination of odd-but-plausible parameters answers 2xx/3xx/4xx, never a 5xx."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import DEMO_IMAGE, DEMO_TILE

BANDS = [None, "B04,B03,B02", "SCL", "B11", "B04,B03,B02,SCL", "B08,B04", ",", "B99"]
SCALING = [
    None,
    "raw",
    "auto",
    "display",
    "physical",
    "0,3000",
    "2%,98%",
    "0,1,0,1",
    "1,2,3",
    '{"B04": [0, 1000], "default_": "auto"}',
    '{"nope": "raw"}',
    "[]",
    "0,0",
]
DATA_TYPES = [None, "Byte", "UInt16", "Float32", "Int32", "float"]
FORMATS = ["png", "jpeg", "webp", "tif", "npy"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_grid_never_500(client, fmt):
    z, x, y = DEMO_TILE
    url = f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}"
    statuses = set()
    combos = itertools.product(BANDS, SCALING)
    for (bands, scaling), data_type in zip(combos, itertools.cycle(DATA_TYPES)):
        params = {
            k: v
            for k, v in {"bands": bands, "scaling": scaling, "data_type": data_type}.items()
            if v
        }
        response = client.get(url, params=params)
        assert response.status_code < 500, (params, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], params
        statuses.add(response.status_code)
    assert 200 in statuses and 400 in statuses


@pytest.mark.parametrize(
    "expression",
    [
        "B08/B04",
        "(B08-B04)/(B08+B04)",
        "B08;B04;B03",
        "B04*",
        "where(B04>1000,1,0)",
        "1/0",
        "sqrt(B04)",
        "B04**100",
        "B04.__class__",
        "lambda: 1",
        "",
        "B08 > B04",
    ],
)
@pytest.mark.parametrize("colormap_name", [None, "viridis"])
def test_expressions_never_500(client, expression, colormap_name):
    z, x, y = DEMO_TILE
    params = {"expression": expression}
    if colormap_name:
        params["colormap_name"] = colormap_name
    for fmt in ("png", "tif"):
        response = client.get(
            f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}", params=params
        )
        assert response.status_code < 500, (params, fmt, response.text)


@pytest.mark.parametrize(
    "selection",
    ["first", "highest", "lowest", "mean", "median", "stdev", "count", "lastbandhigh"],
)
def test_mosaic_parameter_grid_never_500(client, selection):
    z, x, y = DEMO_TILE
    search = client.post("/searches", json={"collections": ["sentinel-2-l2a"]}).json()["id"]
    statuses = set()
    combos = itertools.product([None, "B04,B03,B02", "SCL", "B08,B04", "B04,B03,B02,SCL"], ["png"])
    for (bands, fmt), scaling in zip(combos, itertools.cycle([None, "display", "auto", "0,1"])):
        params = {"pixel_selection": selection, "bands": bands, "scaling": scaling}
        response = client.get(
            f"/searches/{search}/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}",
            params={k: v for k, v in params.items() if v},
        )
        assert response.status_code < 500, (params, fmt, response.text)
        statuses.add(response.status_code)
    assert 200 in statuses


@pytest.mark.parametrize(
    "body",
    [
        {"filter": "S_INTERSECTS(geometry, POINT(1 2)) AND T_AFTER(datetime, '2024-01-01')"},
        {"filter": {"op": "s_within", "args": [{"property": "geometry"}, {"bbox": [0, 0]}]}},
        {"filter": {"op": "=", "args": [{"property": "eo:cloud_cover"}]}},
        {"filter": {"op": "like", "args": [{"property": "platform"}, 3]}},
        {"filter": "eo:cloud_cover / 0 > 1"},
        {"filter": "platform + 1 = 2"},
        {"filter": "T_DURING(datetime, INTERVAL('..', '..'))"},
        {"filter": "A_CONTAINS(tags, ('x')) OR tags IS NULL"},
        {"filter": 42},
        {"filter": "id IN ()"},
        {"sortby": [{"field": "geometry"}]},
        {"sortby": [{"field": "eo:cloud_cover", "direction": "sideways"}]},
        {"intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}},
        {"intersects": {"type": "Point", "coordinates": []}},
        {"datetime": "2024-13-45"},
        {"datetime": "9999-12-31T23:59:59-01:00"},  # the year 10000 in UTC
        {"datetime": "0001-01-01T00:00:00+01:00/.."},
        {"intersects": {"type": "Feature", "properties": {}, "geometry": {"type": "Point"}}},
        {"intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}},
        {"bbox": [10, 50, 5, 40]},
        {"collections": "sentinel-2-l2a"},
        {"limit": 1000000},
        {"unknown": 1},
    ],
)
def test_odd_search_bodies_never_500(client, body):
    for path in ("/stac/search", "/searches", "/summary"):
        response = client.post(path, json=body)
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], (path, body)


@pytest.mark.slow
def test_time_series_parameter_grid_never_500(client):
    """Odd band lists, expressions, cloud masks and fractions at a demo point and over a
    small polygon: every answer is 2xx or a 4xx with a detail."""
    base = {"product": "sentinel-2-l2a", "start_date": "2024-05-01", "end_date": "2024-07-31"}
    what = [
        {"bands": "B04"},
        {"bands": "B04,SCL"},
        {"bands": ","},
        {"bands": "B99"},
        {"expression": "(B08-B04)/(B08+B04)"},
        {"expression": "B04/0;B08"},
        {"expression": "B99+1"},
        {"band": "SCL"},
        {},
    ]
    masks = [None, "default", "SCL:3,8,9,10", "SCL:", "B04:1", "SCL:x", "none", ":"]
    fractions = [None, "0", "0.5", "nan", "2"]
    statuses = set()
    combos = itertools.product(what, masks)
    formats = itertools.cycle(["json", "csv", "png", "xml"])
    for (chosen, mask), fraction, cloudy, fmt in zip(
        combos, itertools.cycle(fractions), itertools.cycle(["drop", "flag", "x"]), formats
    ):
        params = {**base, **chosen, "format": fmt, "lon": 15.05, "lat": 52.3}
        extra = {"cloud_mask": mask, "max_cloud_fraction": fraction, "cloudy": cloudy}
        params.update({k: v for k, v in extra.items() if v is not None})
        response = client.get("/timeseries", params=params)
        assert response.status_code < 500, (params, response.text)
        if response.status_code >= 400:
            assert response.json()["detail"], params
        statuses.add(response.status_code)
    assert 200 in statuses
    ring = [[15.05, 52.30], [15.052, 52.30], [15.052, 52.302], [15.05, 52.30]]
    body = {**base, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    for chosen, fmt in zip(what, formats, strict=False):
        sent = {**body, **chosen, "cloud_mask": "default"}
        if "bands" in chosen:
            sent["bands"] = chosen["bands"].split(",")
        response = client.post("/timeseries", params={"format": fmt}, json=sent)
        assert response.status_code < 500, (sent, response.text)


@pytest.mark.parametrize(
    "suffix, params",
    [
        ("@\u00b2x.png", {}),  # a superscript two: a digit int() refuses
        ("@\u0663x.png", {}),  # an Arabic-Indic three
        (".png", {"color_formula": "saturation 1e300", "scaling": "display"}),
        (".png", {"color_formula": "saturation nan", "scaling": "display"}),
        (".png", {"scaling": "nan,1"}),
        (".png", {"scaling": "0,inf"}),
    ],
)
def test_odd_tile_parameters_are_400s(client, suffix, params):
    z, x, y = DEMO_TILE
    response = client.get(
        f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}{suffix}", params=params
    )
    assert response.status_code == 400, (suffix, params, response.text)
    assert response.json()["detail"]


@pytest.mark.parametrize("edges", ["0,nan", "5,nan,1", "0,inf"])
def test_non_finite_histogram_edges_are_400s(client, edges):
    z, x, y = DEMO_TILE
    response = client.get(
        f"/images/{DEMO_IMAGE}/statistics", params={"bands": "B04", "histogram_bins": edges}
    )
    assert response.status_code == 400, response.text
    assert "histogram_bins" in response.json()["detail"]
