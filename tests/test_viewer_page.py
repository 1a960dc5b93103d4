"""The viewer's pages: a map page takes what its TileJSON takes (the rendering it shows),
refuses the rest; the basemap is off unless configured, and only the configured one."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.conftest import DEMO_IMAGE, make_settings
from tileserver.app import create_app
from tileserver.settings import Settings

RENDERING = {
    "bands": "B08",
    "colormap_name": "viridis",
    "scaling": "0,5000",
    "color_formula": "gamma r 1.2",
    "resampling": "bilinear",
}


def test_an_image_map_page_takes_the_rendering_parameters(client):
    page = client.get(f"/images/{DEMO_IMAGE}/map", params=RENDERING)
    assert page.status_code == 200 and "tileserver viewer" in page.text
    expression = client.get(f"/images/{DEMO_IMAGE}/map?expression=(B08-B04)/(B08%2BB04)")
    assert expression.status_code == 200
    # handed on unparsed: a bad value is the TileJSON's 400, shown in the page's status
    assert client.get(f"/images/{DEMO_IMAGE}/map", params={"bands": "B99"}).status_code == 200
    assert client.get(f"/images/{DEMO_IMAGE}/tilejson.json?bands=B99").status_code == 400


@pytest.mark.parametrize(
    ("query", "named"),
    [({"rescale": "0,3000"}, "for 'rescale' use scaling"), ({"pixel_selection": "first"}, "")],
)
def test_an_image_map_page_refuses_what_its_tiles_do_not_take(client, query, named):
    answer = client.get(f"/images/{DEMO_IMAGE}/map", params=query)
    assert answer.status_code == 400
    detail = answer.json()["detail"]
    assert f"unknown query parameter(s) '{next(iter(query))}'" in detail and named in detail


def test_a_search_map_page_takes_mosaic_parameters(client):
    search_id = client.post("/searches", json={"collections": ["sentinel-2-l2a"]}).json()["id"]
    query = {**RENDERING, "pixel_selection": "median", "sortby": "eo:cloud_cover,-datetime"}
    assert client.get(f"/searches/{search_id}/map", params=query).status_code == 200
    assert client.get(f"/searches/{search_id}/map", params={"zzz": "1"}).status_code == 400


def test_no_basemap_unless_configured(client):
    for page in (client.get("/"), client.get(f"/images/{DEMO_IMAGE}/map")):
        assert 'data-basemap-url=""' in page.text
        assert 'value="tiles"' not in page.text  # blank and the page's own grid only


def test_a_configured_basemap_is_offered(demo_dir, demo_store):
    settings = make_settings(
        demo_dir,
        basemap_url="http://127.0.0.1:8080/osm/{z}/{x}/{y}.png",
        basemap_attribution="© OpenStreetMap <contributors>",
    )
    with TestClient(create_app(settings, store=demo_store)) as client:
        page = client.get(f"/images/{DEMO_IMAGE}/map").text
    assert 'data-basemap-url="http://127.0.0.1:8080/osm/{z}/{x}/{y}.png"' in page
    assert "© OpenStreetMap &lt;contributors&gt;" in page  # escaped
    assert 'value="tiles"' in page


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)//{z}{x}{y}", "http://127.0.0.1/tiles.png", "ftp://h/{z}/{x}/{y}"]
)
def test_a_basemap_url_is_an_http_template(url, tmp_path):
    with pytest.raises(ValidationError, match="basemap_url"):
        Settings(basemap_url=url, data_dir=tmp_path)
