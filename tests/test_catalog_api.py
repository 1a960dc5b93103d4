"""Catalog REST: products with bands, images, paging, and the errors a client gets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import DEMO_IMAGE
from tileserver.demo import DATES, PRODUCT_ID, generate

GEOMETRY = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
BAND_ATTRIBUTES = {
    "name": "swir",
    "description": "short-wave infrared",
    "type": "spectral",
    "data_type": "Int16",
    "nodata": -1,
    "data_range": [-100, 12000],
    "display_range": [0, 6000],
    "physical_range": [-0.01, 1.2],
    "physical_range_unit": "reflectance",
    "resolution": {"value": 20, "unit": "meters"},
    "band_index": 2,
    "file_index": 1,
    "wavelength_nm_center": 1610,
    "wavelength_nm_min": 1560,
    "wavelength_nm_max": 1660,
    "wavelength_nm_fwhm": 90,
    "processing_levels": {
        "toa": [
            {
                "function": "linear",
                "parameter": [0.0001, 0],
                "data_type": "Float32",
                "physical_range": [0, 1],
            }
        ]
    },
}


def remote_image(name: str, acquired: str, product: str = "p") -> dict:
    return {
        "name": name,
        "product_id": product,
        "acquired": acquired,
        "geometry": GEOMETRY,
        "storage_state": "remote",
        "cloud_cover": 5,
    }


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_product_crud_keeps_every_band_attribute(catalog_client):
    product = {
        "id": "p",
        "name": "P",
        "owners": ["user:a"],
        "readers": ["org:b"],
        "writers": [],
        "bands": [
            BAND_ATTRIBUTES,
            {
                "name": "qa",
                "type": "mask",
                "is_alpha": True,
                "data_type": "Byte",
                "data_range": [0, 1],
            },
            {
                "name": "lc",
                "type": "class",
                "data_type": "Byte",
                "data_range": [0, 2],
                "colormap": [[0, 0, 0, 0]],
                "class_labels": ["none"],
            },
        ],
    }
    created = catalog_client.post("/products", json=product)
    assert created.status_code == 201, created.text
    fetched = catalog_client.get("/products/p").json()
    band = fetched["bands"][0]
    for key, value in BAND_ATTRIBUTES.items():
        if key != "processing_levels":
            assert band[key] == value, key
    assert band["processing_levels"]["toa"][0]["parameter"] == [0.0001, 0]
    assert fetched["owners"] == ["user:a"] and fetched["readers"] == ["org:b"]
    assert fetched["bands"][1]["is_alpha"] is True
    assert catalog_client.post("/products", json=product).status_code == 409
    product["name"] = "renamed"
    assert catalog_client.put("/products/p", json=product).json()["name"] == "renamed"
    assert catalog_client.put("/products/q", json=product).status_code == 400
    assert [p["id"] for p in catalog_client.get("/products").json()["products"]] == ["p"]
    assert catalog_client.delete("/products/p").status_code == 204
    assert catalog_client.get("/products/p").status_code == 404


def test_band_defaults_follow_semantics(catalog_client):
    catalog_client.post("/products", json={"id": "d", "bands": [{"name": "b"}]})
    band = catalog_client.get("/products/d").json()["bands"][0]
    assert band["data_type"] == "UInt16" and band["data_range"] == [0, 10000]
    assert band["display_range"] == [0, 10000] and band["physical_range"] == [0, 10000]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"id": "bad id!", "bands": []}, "id"),
        ({"id": "x", "bands": [{"name": "b", "type": "rainbow"}]}, "type"),
        ({"id": "x", "bands": [{"name": "b", "data_type": "Int8"}]}, "data_type"),
        ({"id": "x", "bands": [{"name": "b"}, {"name": "b"}]}, "duplicate"),
        ({"id": "x", "bands": [{"name": "b", "is_alpha": True}]}, "is_alpha"),
        ({"id": "x", "bands": [{"name": "b", "data_range": [0]}]}, "data_range"),
        ({"id": "x", "bands": [{"name": "b", "colour": "red"}]}, "colour"),
        ({"id": "x", "default_bands": ["z"], "bands": [{"name": "b"}]}, "z"),
    ],
)
def test_invalid_products_are_422_naming_the_field(catalog_client, body, word):
    response = catalog_client.post("/products", json=body)
    assert response.status_code == 422
    assert word in response.json()["detail"]


def test_images_paged_newest_first(catalog_client):
    catalog_client.post("/products", json={"id": "p", "bands": [{"name": "b"}]})
    days = ["2024-01-03", "2024-01-01", "2024-01-05", "2024-01-02", "2024-01-04"]
    for i, day in enumerate(days):
        response = catalog_client.put(
            f"/images/p:i{i}", json=remote_image(f"i{i}", f"{day}T10:00:00Z")
        )
        assert response.status_code == 200, response.text
    seen, url, params = [], "/products/p/images", {"limit": 2}
    while True:
        page = catalog_client.get(url, params=params).json()
        seen += [img["acquired"][:10] for img in page["images"]]
        if not page["next_token"]:
            assert page["links"] == []
            break
        assert page["links"][0]["rel"] == "next"
        params = {"limit": 2, "token": page["next_token"]}
    assert seen == sorted(days, reverse=True)
    assert catalog_client.get(url, params={"token": "garbage"}).status_code == 400
    assert catalog_client.get("/products/none/images").status_code == 404


def test_image_crud_and_ids(catalog_client):
    catalog_client.post("/products", json={"id": "p", "bands": [{"name": "b"}]})
    body = remote_image("one", "2024-01-01T00:00:00+02:00")
    image = catalog_client.put("/images/p:one", json=body).json()
    assert image["id"] == "p:one"
    assert image["acquired"].startswith("2023-12-31T22:00:00")  # stored in UTC
    assert image["bbox"] == [0, 0, 1, 1]
    assert catalog_client.get("/images/p:one").json()["cloud_cover"] == 5
    assert catalog_client.put("/images/p:two", json=body).status_code == 400
    assert (
        catalog_client.put(
            "/images/q:one", json=remote_image("one", "2024-01-01T00:00:00Z", "q")
        ).status_code
        == 404
    )
    no_files = dict(body, storage_state="available")
    assert catalog_client.put("/images/p:one", json=no_files).status_code == 422
    assert catalog_client.delete("/products/p").status_code == 409
    assert catalog_client.delete("/images/p:one").status_code == 204
    assert catalog_client.get("/images/p:one").status_code == 404
    assert catalog_client.delete("/images/p:one").status_code == 404


def test_delete_product_cascade(catalog_client):
    catalog_client.post("/products", json={"id": "p", "bands": [{"name": "b"}]})
    catalog_client.put("/images/p:one", json=remote_image("one", "2024-01-01T00:00:00Z"))
    response = catalog_client.delete("/products/p")
    assert response.status_code == 409 and "cascade" in response.json()["detail"]
    assert catalog_client.delete("/products/p", params={"cascade": True}).status_code == 204
    assert catalog_client.get("/images/p:one").status_code == 404


def test_demo_catalog_holds_what_design_promises(client):
    product = client.get(f"/products/{PRODUCT_ID}").json()
    bands = {b["name"]: b for b in product["bands"]}
    assert list(bands) == ["B02", "B03", "B04", "B08", "B11", "SCL"]
    assert {n: bands[n]["resolution"]["value"] for n in bands} == {
        "B02": 10,
        "B03": 10,
        "B04": 10,
        "B08": 10,
        "B11": 20,
        "SCL": 20,
    }
    assert bands["SCL"]["type"] == "class" and len(bands["SCL"]["class_labels"]) == 12
    images = client.get(f"/products/{PRODUCT_ID}/images").json()["images"]
    assert len(images) == len(DATES) >= 6
    assert [i["acquired"] for i in images] == sorted((i["acquired"] for i in images), reverse=True)
    clouds = [i["cloud_cover"] for i in images]
    assert min(clouds) == 0 and max(clouds) > 10
    bboxes = {tuple(i["bbox"]) for i in images}
    assert len(bboxes) >= 2  # some footprints only partly overlap
    assert client.get(f"/images/{DEMO_IMAGE}").json()["files"][0]["href"].endswith(".tif")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_data_is_deterministic(tmp_path):
    generate(tmp_path / "a")
    generate(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_image_bbox_is_the_footprints_and_intervals_need_both_ends(catalog_client):
    catalog_client.post("/products", json={"id": "p", "bands": [{"name": "b"}]})
    wraps = {
        **remote_image("wraps", "2024-01-01T00:00:00Z"),
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[170, -5], [180, -5], [180, 5], [170, 5], [170, -5]]],
                [[[-180, -5], [-170, -5], [-170, 5], [-180, 5], [-180, -5]]],
            ],
        },
        "bbox": [170, -5, -170, 5],  # STAC's antimeridian form
    }
    response = catalog_client.put("/images/p:wraps", json=wraps)
    assert response.status_code == 200, response.text
    assert response.json()["bbox"] == [-180, -5, 180, 5]
    elsewhere = {**remote_image("elsewhere", "2024-01-01T00:00:00Z"), "bbox": [50, 50, 51, 51]}
    assert catalog_client.put("/images/p:elsewhere", json=elsewhere).json()["bbox"] == [0, 0, 1, 1]
    half = {
        **remote_image("half", "2024-01-01T00:00:00Z"),
        "properties": {"start_datetime": "2023-12-01T00:00:00Z"},
    }
    response = catalog_client.put("/images/p:half", json=half)
    assert response.status_code in (400, 422)
    assert "start_datetime without end_datetime" in response.text
