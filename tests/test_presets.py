"""Named render presets of a product: stored with it, listed, used as `?preset=NAME` on the
rendering routes of its images and searches, and shown as the STAC render extension.

A preset's tile must be byte for byte the tile of its parameters given explicitly; the
expected pixels themselves are checked by the tile tests these parameters already have.
"""

from __future__ import annotations

import copy

import morecantile
import numpy
import pytest
from fastapi.testclient import TestClient
from rasterio.transform import from_origin
from shapely.geometry import box

from tests.conftest import make_settings
from tests.synthetic import write_raster
from tests.test_values import BORDER, PRODUCT, RES, SIZE, ZONES, arrays, origin, wgs84_geometry
from tileserver.app import create_app
from tileserver.catalog.keys import new_key

PRESETS = {
    "ndvi": {
        "title": "NDVI",
        "expression": "(B08-B04)/(B08+B04)",
        "scaling": ["-1,1"],
        "colormap_name": "rdylgn",
    },
    "nir": {"title": "Near infrared", "bands": ["B08"], "scaling": ["4800,5200"]},
    "warm": {
        "bands": ["B04", "B08", "B04"],
        "scaling": ["display"],
        "color_formula": "gamma rgb 1.5",
    },
}
NDVI = {"expression": "(B08-B04)/(B08+B04)", "scaling": "-1,1", "colormap_name": "rdylgn"}
TILE = morecantile.tms.get("WebMercatorQuad").tile(*BORDER, 13)
TILE_PATH = f"tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}.png"


@pytest.fixture()
def world(store, tmp_path):
    """Product `lv` with presets, owned by org acme (dave sees nothing), one image, a search;
    the admin's client, dave's, and the search id."""
    tokens = {}
    for user, org in {"admin": "ops", "dave": "initech"}.items():
        key, tokens[user] = new_key(user, org, admin=user == "admin")
        store.put_key(key)
    settings = make_settings(
        tmp_path,
        key_cache_seconds=0,
        reader_threads=1,
        import_roots=[tmp_path],
        import_grants={"org:acme": [str(tmp_path)]},
    )
    app = create_app(settings, store=store)
    admin = TestClient(app, headers={"Authorization": f"Bearer {tokens['admin']}"})
    dave = TestClient(app, headers={"Authorization": f"Bearer {tokens['dave']}"})
    body = {**copy.deepcopy(PRODUCT), "owners": ["org:acme"], "presets": PRESETS}
    answer = admin.post("/products", json=body)
    assert answer.status_code == 201, answer.text
    x0, y0 = origin("west")
    data = numpy.stack(arrays(0)).astype("uint16")
    path = write_raster(tmp_path / "west.tif", data, ZONES["west"], from_origin(x0, y0, RES, RES))
    image = {
        "name": "west",
        "product_id": "lv",
        "acquired": "2024-05-01T10:00:00Z",
        "geometry": wgs84_geometry(box(x0, y0 - SIZE * RES, x0 + SIZE * RES, y0), ZONES["west"]),
        "files": [{"href": str(path)}],
    }
    answer = admin.put("/images/lv:west", json=image)
    assert answer.status_code == 200, answer.text
    search = admin.post("/searches", json={"collections": ["lv"]}).json()["id"]
    with admin, dave:
        yield admin, dave, search


def png(client: TestClient, url: str, **params) -> bytes:
    answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    return answer.content


def test_presets_are_stored_and_listed(world):
    admin, _, _ = world
    assert admin.get("/products/lv/presets").json()["nir"] == {
        **dict.fromkeys(
            [
                "description",
                "expression",
                "data_type",
                "processing_level",
                "colormap_name",
                "colormap",
                "color_formula",
                "nodata",
                "resampling",
                "cloud_mask",
            ]
        ),
        **PRESETS["nir"],
    }
    assert set(admin.get("/products/lv").json()["presets"]) == set(PRESETS)


@pytest.mark.parametrize("layer", ["image", "search"])
def test_preset_tile_is_the_tile_of_its_parameters(world, layer):
    admin, _, search = world
    prefix = "/images/lv:west" if layer == "image" else f"/searches/{search}"
    url = f"{prefix}/{TILE_PATH}"
    ndvi = png(admin, url, preset="ndvi")
    assert ndvi == png(admin, url, **NDVI)
    assert ndvi != png(admin, url, bands="B04,B08,B04")  # the preset did change the tile
    nir = png(admin, url, preset="nir")
    assert nir == png(admin, url, bands="B08", scaling="4800,5200")
    warm = png(admin, url, preset="warm")
    assert warm == png(
        admin, url, bands="B04,B08,B04", scaling="display", color_formula="gamma rgb 1.5"
    )
    assert warm != png(admin, url, bands="B04,B08,B04", scaling="display")


def test_given_parameters_override_the_preset(world):
    admin, _, _ = world
    url = f"/images/lv:west/{TILE_PATH}"
    wide = png(admin, url, preset="nir", scaling="0,10000")
    assert wide == png(admin, url, bands="B08", scaling="0,10000")
    assert wide != png(admin, url, preset="nir")
    # bands replace the preset's expression; a colormap replaces its colormap_name
    assert png(admin, url, preset="ndvi", bands="B08") == png(
        admin, url, bands="B08", scaling="-1,1", colormap_name="rdylgn"
    )
    grey = '{"0": [0, 0, 0, 255], "255": [255, 255, 255, 255]}'
    assert png(admin, url, preset="ndvi", colormap=grey) == png(
        admin, url, expression=NDVI["expression"], scaling="-1,1", colormap=grey
    )


def test_preset_on_documents_points_and_previews(world):
    admin, _, search = world
    tilejson = admin.get(f"/searches/{search}/tilejson.json", params={"preset": "nir"})
    assert tilejson.status_code == 200, tilejson.text
    assert "preset=nir" in tilejson.json()["tiles"][0]
    wmts = admin.get("/images/lv:west/WMTSCapabilities.xml", params={"preset": "ndvi"})
    assert wmts.status_code == 200 and "preset=ndvi" in wmts.text
    assert admin.get("/images/lv:west/map", params={"preset": "ndvi"}).status_code == 200
    point = admin.get(
        f"/images/lv:west/point/{BORDER[0] - 0.01},{BORDER[1]}", params={"preset": "nir"}
    )
    explicit = admin.get(
        f"/images/lv:west/point/{BORDER[0] - 0.01},{BORDER[1]}",
        params={"bands": "B08", "scaling": "4800,5200"},
    )
    assert point.status_code == 200, point.text
    assert point.json() == explicit.json()
    assert png(admin, "/images/lv:west/preview.png", preset="ndvi", max_size=64) == png(
        admin, "/images/lv:west/preview.png", max_size=64, **NDVI
    )


def test_unknown_preset_is_a_400_naming_the_known_ones(world):
    admin, _, search = world
    for prefix in ("/images/lv:west", f"/searches/{search}"):
        answer = admin.get(f"{prefix}/{TILE_PATH}", params={"preset": "nope"})
        assert answer.status_code == 400
        assert "nope" in answer.text and "ndvi, nir, warm" in answer.text


@pytest.mark.parametrize(
    ("preset", "named"),
    [
        ({"bands": ["B99"]}, "B99"),
        ({"colormap_name": "no-such-map"}, "no-such-map"),
        ({"expression": ";".join(["B04"] * 20)}, "ndvi"),
        ({"resampling": "sideways"}, "sideways"),
        ({"scaling": ["a,b"]}, "ndvi"),
        ({"colormap": "{not json"}, "ndvi"),
        ({"tile_format": "png"}, "tile_format"),
    ],
)
def test_invalid_preset_is_refused_on_write(world, preset, named):
    admin, _, _ = world
    body = {**copy.deepcopy(PRODUCT), "id": "bad", "presets": {"ndvi": preset}}
    answer = admin.post("/products", json=body)
    assert answer.status_code in (400, 422), answer.text
    assert named in answer.text
    assert admin.get("/products/bad").status_code == 404
    many = {f"p{i}": {"bands": ["B04"]} for i in range(33)}
    assert admin.post("/products", json={**body, "presets": many}).status_code in (400, 422)


def test_hidden_product_preset_is_a_404(world):
    admin, dave, search = world
    for prefix in ("/images/lv:west", f"/searches/{search}"):
        assert admin.get(f"{prefix}/{TILE_PATH}", params={"preset": "nir"}).status_code == 200
        for name in ("nir", "nope"):  # a known name and an unknown one answer alike
            answer = dave.get(f"{prefix}/{TILE_PATH}", params={"preset": name})
            assert answer.status_code == 404, answer.text
            assert "nir" not in answer.text.replace(f"preset={name}", "")
    assert dave.get("/products/lv/presets").status_code == 404


def test_stac_collection_has_the_render_extension(world):
    admin, _, _ = world
    collection = admin.get("/stac/collections/lv").json()
    assert any("/render/" in url for url in collection["stac_extensions"])
    renders = collection["renders"]
    assert renders["nir"]["title"] == "Near infrared"
    assert renders["nir"]["assets"] == ["B08"]
    assert renders["nir"]["rescale"] == [[4800.0, 5200.0]]
    assert renders["ndvi"]["expression"] == NDVI["expression"]
    assert renders["ndvi"]["colormap_name"] == "rdylgn"


@pytest.mark.parametrize("layer", ["image", "search"])
def test_a_changed_preset_changes_the_cached_tile(world, layer):
    admin, _, search = world
    prefix = "/images/lv:west" if layer == "image" else f"/searches/{search}"
    url = f"{prefix}/{TILE_PATH}"
    before = png(admin, url, preset="nir")  # now in the tile cache
    product = admin.get("/products/lv").json()
    product["presets"]["nir"]["scaling"] = ["0,10000"]
    assert admin.put("/products/lv", json=product).status_code == 200
    after = png(admin, url, preset="nir")
    assert after != before
    assert after == png(admin, url, bands="B08", scaling="0,10000")
