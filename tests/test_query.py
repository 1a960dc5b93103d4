"""Unknown query parameters answer 400 naming them, on every route family that takes
rendering parameters; titiler's names say which tileserver parameter does the same."""

from __future__ import annotations

import pytest

from tests.conftest import DEMO_IMAGE, DEMO_TILE

Z, X, Y = DEMO_TILE
SEARCH = {"collections": ["sentinel-2-l2a"]}
IMAGE_ROUTES = [
    f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png",
    f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x.png",
    f"/images/{DEMO_IMAGE}/tilejson.json",
    f"/images/{DEMO_IMAGE}/WMTSCapabilities.xml",
    f"/images/{DEMO_IMAGE}/map",
    f"/images/{DEMO_IMAGE}/download.tif",
    f"/images/{DEMO_IMAGE}/raster_info",
]
SEARCH_ROUTES = [
    f"/searches/{{id}}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png",
    f"/searches/{{id}}/tiles/WebMercatorQuad/{Z}/{X}/{Y}/assets",
    "/searches/{id}/tilejson.json",
    "/searches/{id}/WMTSCapabilities.xml",
    "/searches/{id}/mosaic.npy",
    "/searches/{id}/stack.npy",
    "/searches/{id}/raster_info",
    "/searches/{id}",
]
OTHER_ROUTES = [
    "/chips/gallery?lon=15.07&lat=52.3&start_date=2024-01-01&end_date=2024-12-31",
    "/chips/raw?lon=15.07&lat=52.3&start_date=2024-01-01&end_date=2024-12-31",
]


def routes(client) -> list[str]:
    search_id = client.post("/searches", json=SEARCH).json()["id"]
    return IMAGE_ROUTES + [r.replace("{id}", search_id) for r in SEARCH_ROUTES] + OTHER_ROUTES


def get(client, path: str, /, **params):
    return client.get(path, params=params)


def test_titiler_names_are_refused_with_the_parameter_to_use(client):
    for url in routes(client):
        response = get(client, url, rescale="0,3000")
        assert response.status_code == 400, (url, response.text)
        detail = response.json()["detail"]
        assert "unknown query parameter(s) 'rescale'" in detail, detail
        assert "for 'rescale' use scaling" in detail, detail


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("algorithm", "expression"),
        ("rescale", "scaling"),
        ("assets", "bands"),
        ("bidx", "bands"),
        ("url", "an image id"),
    ],
)
def test_each_titiler_name_gets_its_hint(client, name, hint):
    response = get(client, IMAGE_ROUTES[0], **{name: "1"})
    assert response.status_code == 400
    assert f"for '{name}' use {hint}" in response.json()["detail"]


def test_any_unknown_name_is_refused_and_named(client):
    response = get(client, IMAGE_ROUTES[0], bands="B04", bnads="B03", zzz="1")
    assert response.status_code == 400
    assert "'bnads', 'zzz'" in response.json()["detail"]


def test_mosaic_parameters_are_unknown_on_an_image(client):
    response = get(client, IMAGE_ROUTES[0], pixel_selection="highest")
    assert response.status_code == 400 and "'pixel_selection'" in response.json()["detail"]


def test_the_api_key_and_the_cache_buster_are_always_taken(client):
    plain = get(client, IMAGE_ROUTES[0])
    assert plain.status_code == 200
    busted = get(client, IMAGE_ROUTES[0], _="1733230000", api_key="")
    assert busted.status_code == 200 and busted.content == plain.content
    assert get(client, IMAGE_ROUTES[2], _="1").json() == get(client, IMAGE_ROUTES[2]).json()
