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
