"""Tenants do not affect each other's mosaics, and registered searches are bounded, on both stores.

Written as the attacker would try it: mallory of org `acme` holds an ordinary key, registers
searches in a loop and writes into her own products, hoping to keep org `globex`'s mosaics
cold. Each image is one constant value, so which image is on top shows in the pixels:

| product | owners     | readers | image values (acquired)                        |
|---------|------------|---------|------------------------------------------------|
| a       | org:acme   |         | 100 (01-04), mallory adds 150 (02-01)          |
| b       | org:globex |         | 200 (01-03), carol adds 250 (04-01)            |
| pub     | org:acme   | public  | 400 (01-01), mallory adds 450 (03-01)          |

carol (globex) reads b and pub; the admin reads everything.
"""

from __future__ import annotations

import io

import numpy
import pytest
from fastapi.testclient import TestClient

from tests.catalog.test_stores import backdate
from tests.conftest import make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver import layers
from tileserver.app import create_app
from tileserver.catalog.keys import new_key

Z, X, Y = TILE.z, TILE.x, TILE.y
TILE_PATH = f"tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
OWNERS = {"a": ["org:acme"], "b": ["org:globex"], "pub": ["org:acme"]}
READERS = {"pub": ["public"]}
USERS = {"admin": "ops", "mallory": "acme", "carol": "globex"}


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    ring = [[b.left, b.bottom], [b.right, b.bottom], [b.right, b.top], [b.left, b.top]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def product_body(product_id: str, **extra) -> dict:
    band = {
        "name": "v",
        "data_type": "UInt16",
        "data_range": [0, 1000],
        "nodata": 0,
        "resolution": {"value": 10},
    }
    return {
        "id": product_id,
        "owners": OWNERS[product_id],
        "readers": READERS.get(product_id, []),
        "bands": [band],
        **extra,
    }


class Tenants:
    """An app over one store with keys for mallory, carol and an admin; renders counted."""

    def __init__(self, store, folder, monkeypatch, **settings):
        self.store, self.folder = store, folder
        self.tokens = {}
        for user, org in USERS.items():
            key, token = new_key(user, org, admin=user == "admin")
            store.put_key(key)
            self.tokens[user] = token
        files = str(folder / "files")  # each organisation was granted the folder of its files
        grants = {f"org:{org}": [files] for org in set(USERS.values())}
        settings = make_settings(
            folder, key_cache_seconds=0, reader_threads=1, import_grants=grants, **settings
        )
        self.app = create_app(settings, store=store)
        self.renders: list[str] = []
        render = layers.mosaic_tile

        def counted(*args, **kwargs):
            self.renders.append(args[1].id)  # the mosaic's product
            return render(*args, **kwargs)

        monkeypatch.setattr(layers, "mosaic_tile", counted)

    def client(self, user: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[user]}"})

    def put_image(self, user: str, product_id: str, name: str, value: int, acquired: str):
        path = self.folder / "files" / f"{product_id}-{name}.tif"
        write(path, numpy.full((1, 256, 256), value))
        body = {
            "name": name,
            "product_id": product_id,
            "acquired": acquired,
            "geometry": footprint(),
            "files": [{"href": str(path)}],
        }
        response = self.client(user).put(f"/images/{product_id}:{name}", json=body)
        assert response.status_code == 200, response.text

    def layer_keys(self) -> set:
        return set(self.app.state.layers._cache.keys())


def top(client: TestClient, search_id: str) -> int:
    """The value painted on top, the same over the whole tile."""
    response = client.get(
        f"/searches/{search_id}/{TILE_PATH}", params={"bands": "v", "scaling": "raw"}
    )
    assert response.status_code == 200, response.text
    values = numpy.unique(numpy.load(io.BytesIO(response.content))[0])
    assert len(values) == 1, values
    return int(values[0])


def register(client: TestClient, body: dict) -> str:
    response = client.post("/searches", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture()
def tenants(store, tmp_path, monkeypatch):
    world = Tenants(store, tmp_path, monkeypatch)
    admin = world.client("admin")
    for product_id in OWNERS:
        response = admin.post("/products", json=product_body(product_id))
        assert response.status_code == 201, response.text
    world.put_image("mallory", "a", "img", 100, "2024-01-04T10:00:00Z")
    world.put_image("carol", "b", "img", 200, "2024-01-03T10:00:00Z")
    world.put_image("mallory", "pub", "img", 400, "2024-01-01T10:00:00Z")
    return world


def test_an_other_tenants_writes_and_searches_leave_my_mosaics_cached(tenants):
    carol, mallory, admin = (tenants.client(u) for u in ("carol", "mallory", "admin"))
    own = register(carol, {"collections": ["b"]})
    readable = register(carol, {})  # everything carol reads: b and pub
    everything = register(admin, {"sortby": [{"field": "datetime", "direction": "desc"}]})
    assert top(carol, own) == 200 and top(carol, readable) == 200
    assert top(admin, everything) == 100
    for search_id in (own, readable):
        assert carol.get(f"/searches/{search_id}/tilejson.json").status_code == 200
    warm = tenants.layer_keys()
    rendered = len(tenants.renders)

    generations = tenants.store.generations()
    for n in range(40):  # the loop that used to cool every tenant's cache
        register(mallory, {"filter": f"eo:cloud_cover < {n}"})
        register(mallory, {"collections": ["a"], "datetime": f"2024-01-{n % 28 + 1:02d}"})
    assert register(mallory, {}) == readable  # carol's body: the same id, refreshed only
    assert mallory.post("/searches", json={"collections": ["b"]}).status_code == 404
    assert tenants.store.generations() == generations  # registering is not a write

    tenants.put_image("mallory", "a", "new", 150, "2024-02-01T10:00:00Z")
    assert mallory.put("/products/a", json=product_body("a", description="x")).status_code == 200
    assert mallory.delete("/images/a:img").status_code in (200, 204)

    assert top(carol, own) == 200 and top(carol, readable) == 200
    for search_id in (own, readable):
        assert carol.get(f"/searches/{search_id}/tilejson.json").status_code == 200
    assert len(tenants.renders) == rendered  # both served from the tile cache
    # and their first-image lookups from the layer cache (mallory's registrations add their
    # own: each answer reports its search's pyramid)
    assert warm <= tenants.layer_keys()

    # a write into a product a mosaic includes invalidates it: correctness first
    assert top(admin, everything) == 150  # the admin's mosaic includes a
    tenants.put_image("mallory", "pub", "new", 450, "2024-03-01T10:00:00Z")
    assert top(carol, readable) == 450  # carol reads pub
    rendered = len(tenants.renders)
    assert top(carol, own) == 200  # ... which her search of b does not include
    assert len(tenants.renders) == rendered
    tenants.put_image("carol", "b", "new", 250, "2024-04-01T10:00:00Z")
    assert top(carol, own) == 250 and top(carol, readable) == 250
    assert top(admin, everything) == 250
    assert mallory.delete("/products/pub?cascade=true").status_code in (200, 204)
    assert top(carol, readable) == 250
    assert top(carol, own) == 250


def test_the_same_search_from_two_scopes_keeps_apart_and_follows_its_products(tenants):
    carol, mallory = tenants.client("carol"), tenants.client("mallory")
    search_id = register(carol, {"collections": ["pub"]})
    assert register(mallory, {"collections": ["pub"]}) == search_id  # a hash of the body
    assert top(carol, search_id) == 400 and top(mallory, search_id) == 400
    tenants.put_image("carol", "b", "new", 250, "2024-04-01T10:00:00Z")
    rendered = len(tenants.renders)
    assert top(carol, search_id) == 400 and top(mallory, search_id) == 400
    assert len(tenants.renders) == rendered
    tenants.put_image("mallory", "pub", "new", 450, "2024-03-01T10:00:00Z")
    assert top(carol, search_id) == 450 and top(mallory, search_id) == 450


def test_registered_searches_expire_and_are_capped(store, tmp_path, monkeypatch):
    world = Tenants(store, tmp_path, monkeypatch, search_ttl_days=1, max_searches=2)
    admin = world.client("admin")
    assert admin.post("/products", json=product_body("pub")).status_code == 201
    world.put_image("mallory", "pub", "img", 400, "2024-01-01T10:00:00Z")
    carol, mallory = world.client("carol"), world.client("mallory")
    first = register(carol, {"collections": ["pub"]})
    second = register(mallory, {"ids": ["pub:img"]})
    backdate(store, first, 300)
    backdate(store, second, 200)
    assert top(carol, first) == 400  # used: second is now the least recently used
    third = register(mallory, {})
    gone = carol.get(f"/searches/{second}/{TILE_PATH}")
    assert gone.status_code == 404
    assert gone.json()["detail"] == f"search '{second}' not found; register it with POST /searches"
    assert mallory.get(f"/searches/{second}").status_code == 404
    assert top(carol, first) == 400 and top(mallory, third) == 400

    backdate(store, third, 86400 + 1)  # unused for longer than the TTL
    expired = mallory.get(f"/searches/{third}/{TILE_PATH}")
    assert expired.status_code == 404 and "register it" in expired.json()["detail"]
    assert register(mallory, {}) == third  # registering again: the same id, alive again
    assert top(mallory, third) == 400
    assert len(store.list_searches()) == 2
    assert register(mallory, {"ids": ["pub:img"]}) == second
    assert len(store.list_searches()) == 2
