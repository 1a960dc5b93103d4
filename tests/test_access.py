"""API keys and product access control, with two organisations, on both stores.

The world: org `acme` (alice, bob) and org `globex` (carol), an admin, and four products
over the same synthetic tile, each image painted with its own constant value:

| product  | owners        | writers   | readers    | value | acquired   |
|----------|---------------|-----------|------------|-------|------------|
| acme     | user:alice    | org:acme  |            | 100   | 2024-01-04 |
| globex   | org:globex    |           |            | 200   | 2024-01-03 |
| shared   | user:alice    |           | org:globex | 300   | 2024-01-02 |
| open     | user:alice    |           | public     | 400   | 2024-01-01 |

So alice reads acme, shared, open; bob acme, open; carol globex, shared, open; anonymous
(when allowed) only open. The newest image is acme's, so a mosaic that leaks it shows 100.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.conftest import STORES, make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.store import open_store
from tileserver.cli import cli

Z, X, Y = TILE.z, TILE.x, TILE.y
PRODUCTS = {  # id: (owners, writers, readers, value, acquired)
    "acme": (["user:alice"], ["org:acme"], [], 100, "2024-01-04T10:00:00Z"),
    "globex": (["org:globex"], [], [], 200, "2024-01-03T10:00:00Z"),
    "shared": (["user:alice"], [], ["org:globex"], 300, "2024-01-02T10:00:00Z"),
    "open": (["user:alice"], [], ["public"], 400, "2024-01-01T10:00:00Z"),
}
SEES = {  # who reads what, worked out from the table above
    "admin": {"acme", "globex", "shared", "open"},
    "alice": {"acme", "shared", "open"},
    "bob": {"acme", "open"},
    "carol": {"globex", "shared", "open"},
    "dave": {"open"},  # of an organisation no product names
}
USERS = {"admin": "ops", "alice": "acme", "bob": "acme", "carol": "globex", "dave": "initech"}
LON, LAT = (float(v) for v in WEB_MERCATOR.ul(X, Y + 0.5, Z))  # near the tile's west edge
LON += 0.05


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    ring = [[b.left, b.bottom], [b.right, b.bottom], [b.right, b.top], [b.left, b.top]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def product_body(product_id: str) -> dict:
    owners, writers, readers, _, _ = PRODUCTS[product_id]
    return {
        "id": product_id,
        "owners": owners,
        "writers": writers,
        "readers": readers,
        "bands": [
            {
                "name": "v",
                "data_type": "UInt16",
                "data_range": [0, 1000],
                "nodata": 0,
                "resolution": {"value": 10},
            }
        ],
    }


def image_body(folder: Path, product_id: str, name: str = "img") -> dict:
    *_, value, acquired = PRODUCTS[product_id]
    path = folder / "files" / f"{product_id}-{name}.tif"
    write(path, numpy.full((1, 256, 256), value, "uint16"))
    return {
        "name": name,
        "product_id": product_id,
        "acquired": acquired,
        "geometry": footprint(),
        "files": [{"href": str(path)}],
        "properties": {f"{product_id}:secret": 1},
    }


class World:
    """The app, the store and a client per identity."""

    def __init__(self, store, folder: Path):
        self.store, self.folder = store, folder
        self.tokens: dict[str, str] = {}
        for user, org in USERS.items():
            key, token = new_key(user, org, admin=user == "admin")
            store.put_key(key)
            self.tokens[user] = token
        grant = [str(folder / "files"), str(folder / "imports")]
        settings = make_settings(
            folder,
            key_cache_seconds=0,
            import_roots=[folder / "imports"],
            import_grants={"org:acme": grant, "org:globex": grant},
        )
        self.app = create_app(settings, store=store)
        self.raw = TestClient(self.app)

    def client(self, user: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return TestClient(self.app, headers=headers)


@pytest.fixture(scope="module", params=STORES)
def world(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"access-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'catalog.db'}"
    else:
        from tests.postgres import drop_database, new_database

        admin = request.getfixturevalue("postgres_admin")
        url = new_database(admin)
    store = open_store(url)
    built = World(store, folder)
    admin_client = built.client("admin")
    for product_id in PRODUCTS:
        response = admin_client.post("/products", json=product_body(product_id))
        assert response.status_code == 201, response.text
    writers = {"acme": "bob", "globex": "carol", "shared": "alice", "open": "alice"}
    for product_id, user in writers.items():
        body = image_body(folder, product_id)
        response = built.client(user).put(f"/images/{product_id}:img", json=body)
        assert response.status_code == 200, response.text
    yield built
    store.close()
    if request.param != "sqlite":
        drop_database(admin, url)


def ids(products: list[dict]) -> set[str]:
    return {p["id"] for p in products}


# --- authentication -------------------------------------------------------------------


def test_without_keys_the_server_is_open(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'catalog.db'}")
    with TestClient(create_app(make_settings(tmp_path), store=store)) as client:
        assert client.post("/products", json=product_body("acme")).status_code == 201
        assert ids(client.get("/products").json()["products"]) == {"acme"}
    store.close()


def test_with_keys_every_request_needs_a_valid_one(world):
    anonymous = world.client(None)
    for path in (
        "/products",
        "/stac/search",
        f"/images/open:img/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png",
        "/",
    ):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.json()["detail"].startswith("this server needs an API key")
        assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/healthz", "/openapi.json", "/docs"):  # probes and the API description
        assert anonymous.get(path).status_code == 200, path
    bad = world.tokens["alice"][:-4] + "AAAA"
    for headers in ({"Authorization": f"Bearer {bad}"}, {"Authorization": "Bearer nonsense"}):
        response = anonymous.get("/products", headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "invalid or revoked API key"}
    by_query = anonymous.get("/products", params={"api_key": world.tokens["bob"]})
    assert by_query.status_code == 200
    assert ids(by_query.json()["products"]) == SEES["bob"]


def test_keyed_answers_are_private_to_shared_caches(world):
    tile = f"/images/open:img/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"
    response = world.client("carol").get(tile)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, max-age=3600"


def test_keys_are_stored_hashed_and_revocation_takes_effect(world, tmp_path):
    catalog = f"sqlite:///{tmp_path / 'keys.db'}"
    runner = CliRunner()
    created = runner.invoke(
        cli, ["keys", "create", "--user", "dave", "--org", "globex", "--catalog", catalog]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("tsk_")
    key_id, secret = token.split("_", 2)[1:]
    listed = runner.invoke(cli, ["keys", "list", "--catalog", catalog])
    assert key_id in listed.stdout and "dave" in listed.stdout and secret not in listed.stdout
    dump = "\n".join(sqlite3.connect(tmp_path / "keys.db").iterdump())
    assert key_id in dump and secret not in dump and token not in dump
    store = open_store(catalog)
    app = create_app(make_settings(tmp_path, key_cache_seconds=0), store=store)
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    assert client.get("/products").status_code == 200
    revoked = runner.invoke(cli, ["keys", "revoke", key_id, "--catalog", catalog])
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/products").status_code == 401
    # the last key revoked: the server stays closed, it does not fall back to open
    assert TestClient(app).get("/products").status_code == 401
    assert runner.invoke(cli, ["keys", "revoke", "nope", "--catalog", catalog]).exit_code != 0
    store.close()


# --- reading ----------------------------------------------------------------------------


@pytest.mark.parametrize("user", SEES)
def test_listings_show_only_readable_products(world, user):
    client = world.client(user)
    assert ids(client.get("/products").json()["products"]) == SEES[user]
    assert ids(client.get("/stac/collections").json()["collections"]) == SEES[user]
    found = client.post("/stac/search", json={"limit": 100}).json()["features"]
    assert {f["collection"] for f in found} == SEES[user]
    found = client.get("/stac/search", params={"limit": 100}).json()["features"]
    assert {f["collection"] for f in found} == SEES[user]
    assert client.post("/summary", json={}).json()["count"] == len(SEES[user])
    names = set(client.get("/stac/queryables").json()["properties"])
    assert {n.split(":")[0] for n in names if n.endswith(":secret")} == SEES[user]


def test_hidden_products_do_not_exist_for_the_caller(world):
    carol, bob = world.client("carol"), world.client("bob")

    def same_404(path: str, hidden: str, missing: str) -> None:
        hidden_answer = carol.get(path.format(hidden))
        missing_answer = carol.get(path.format(missing))
        assert hidden_answer.status_code == missing_answer.status_code == 404, path
        detail = hidden_answer.json()["detail"].replace(hidden, "X")
        assert detail == missing_answer.json()["detail"].replace(missing, "X"), path

    tile = f"tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"
    for path in (
        "/products/{}",
        "/products/{}/images",
        "/stac/collections/{}",
        "/stac/collections/{}/items",
        "/stac/collections/{}/queryables",
    ):
        same_404(path, "acme", "nothing")
    for path in (
        "/images/{}",
        f"/images/{{}}/{tile}",
        "/images/{}/tilejson.json",
        "/images/{}/WMTSCapabilities.xml",
        "/images/{}/map",
        "/images/{}/download.tif",
        "/images/{}/raster_info",
    ):
        same_404(path, "acme:img", "acme:nothing")
        assert bob.get(path.format("acme:img")).status_code == 200, path
    assert carol.get("/stac/collections/acme/items/img").status_code == 404
    assert bob.get("/stac/collections/acme/items/img").status_code == 200


def tile_values(client: TestClient, search_id: str, **params) -> numpy.ndarray:
    response = client.get(
        f"/searches/{search_id}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy",
        params={"bands": "v", "scaling": "raw", **params},
    )
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


def test_mosaics_paint_only_readable_images(world):
    newest = {"admin": 100, "alice": 100, "bob": 100, "carol": 200}  # of each one's products
    search_id = world.client("alice").post("/searches", json={}).json()["id"]
    for user in ("alice", "carol", "bob", "admin"):  # alice first: her tile is cached
        client = world.client(user)
        assert client.get(f"/searches/{search_id}").status_code == 200
        top = tile_values(client, search_id)
        assert numpy.all(top[0] == newest[user]), user
        count = tile_values(client, search_id, pixel_selection="count")
        assert numpy.all(count[0] == len(SEES[user])), user
        stack = client.get(f"/searches/{search_id}/stack.npy", params={"bands": "v"})
        values = numpy.load(io.BytesIO(stack.content))[:, 0, 128, 128]
        assert sorted(values) == sorted(PRODUCTS[p][3] for p in SEES[user]), user
        summary = client.get(f"/searches/{search_id}/summary").json()
        assert summary["count"] == len(SEES[user])


def test_searches_naming_hidden_products_are_404(world):
    alice, carol = world.client("alice"), world.client("carol")
    search_id = alice.post("/searches", json={"collections": ["acme"]}).json()["id"]
    refused = carol.post("/searches", json={"collections": ["acme"]})
    assert refused.status_code == 404
    assert refused.json()["detail"] == "product 'acme' not found"
    unknown = carol.get("/searches/0000000000000000").json()["detail"]
    for path in (
        "",
        "/summary",
        f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png",
        "/tilejson.json",
        "/stack.tif",
    ):
        response = carol.get(f"/searches/{search_id}{path}")
        assert response.status_code == 404, path
        assert response.json()["detail"] == unknown.replace("0000000000000000", search_id), path
        assert alice.get(f"/searches/{search_id}{path}").status_code == 200, path
    mixed = carol.post("/stac/search", json={"collections": ["acme", "globex"]}).json()
    assert {f["collection"] for f in mixed["features"]} == {"globex"}


def test_chips_and_their_files(world):
    params = {"lon": LON, "lat": LAT, "start_date": "2024-01-01", "end_date": "2024-01-31"}
    params |= {"product": "acme", "band": "v", "chipsize": 200}
    bob, carol = world.client("bob"), world.client("carol")
    made = bob.get("/chips/raw", params=params)
    assert made.status_code == 200, made.text
    (chip,) = made.json()["chips"]
    assert bob.get(f"/{chip}").status_code == 200
    assert carol.get(f"/{chip}").status_code == 404
    assert carol.get("/chips/raw", params=params).status_code == 404
    gallery = {**params, "bands": "v_v_v", "lut": "0_1000_0_1000_0_1000"}
    del gallery["band"], gallery["chipsize"]
    assert carol.get("/chips/gallery", params=gallery).status_code == 404
    keyed = world.client(None).get(
        "/chips/gallery", params={**gallery, "api_key": world.tokens["bob"]}
    )
    assert keyed.status_code == 200, keyed.text
    assert f"api_key={world.tokens['bob']}" in keyed.text  # the <img> tags can load the chips


def test_parcel_statistics_of_hidden_products_are_404(world):
    b = WEB_MERCATOR.bounds(TILE)
    cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
    ring = [[cx, cy], [cx + 0.01, cy], [cx + 0.01, cy + 0.01], [cx, cy + 0.01], [cx, cy]]
    body = {
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "band": "v",
        "start_date": "2024-01-01",
        "end_date": "2024-01-31",
    }
    assert (
        world.client("carol").post("/timeseries", json={**body, "product": "acme"}).status_code
        == 404
    )
    rows = world.client("bob").post("/timeseries", json={**body, "product": "acme"}).json()["rows"]
    assert [(r["image_id"], r["mean"]) for r in rows] == [("acme:img", 100.0)]
    # the new form, over the polygon and at a point
    new = {k: v for k, v in body.items() if k != "band"} | {"bands": ["v"], "product": "acme"}
    assert world.client("carol").post("/timeseries", json=new).status_code == 404
    rows = world.client("bob").post("/timeseries", json=new).json()["rows"]
    assert [(r["image_id"], r["statistics"]["v"]["mean"]) for r in rows] == [("acme:img", 100.0)]
    point = {
        "product": "acme",
        "bands": "v",
        "lon": cx + 0.005,
        "lat": cy + 0.005,
        "start_date": "2024-01-01",
        "end_date": "2024-01-31",
    }
    assert world.client("carol").get("/timeseries", params=point).status_code == 404
    rows = world.client("bob").get("/timeseries", params=point).json()["rows"]
    assert [(r["image_id"], r["statistics"]["v"]["mean"]) for r in rows] == [("acme:img", 100.0)]


def test_tile_urls_carry_a_query_key(world):
    token = world.tokens["bob"]
    tilejson = world.client(None).get("/images/acme:img/tilejson.json", params={"api_key": token})
    assert tilejson.status_code == 200
    url = tilejson.json()["tiles"][0]
    assert f"api_key={token}" in url
    path = url.split("testserver", 1)[1].format(z=Z, x=X, y=Y)
    assert world.client(None).get(path).status_code == 200


# --- writing ------------------------------------------------------------------------------


def test_writes_need_writer_or_owner(world):
    alice, bob, carol = (world.client(u) for u in ("alice", "bob", "carol"))
    body = image_body(world.folder, "acme", "second")
    assert carol.put("/images/acme:second", json=body).status_code == 404  # hidden
    shared = image_body(world.folder, "shared", "second")
    refused = carol.put("/images/shared:second", json=shared)  # a reader only
    assert refused.status_code == 403
    assert "writers" in refused.json()["detail"]
    assert bob.put("/images/acme:second", json=body).status_code == 200  # org:acme writes
    assert carol.delete("/images/acme:second").status_code == 404
    assert bob.delete("/images/acme:second").status_code == 204
    product = bob.get("/products/acme").json()
    changed = {**product, "readers": ["org:globex"]}
    refused = bob.put("/products/acme", json=changed)
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("only an owner")
    described = {**product, "description": "acme's fields"}
    assert bob.put("/products/acme", json=described).status_code == 200  # writers edit
    assert bob.delete("/products/open").status_code == 403  # public reads, alice owns
    assert bob.delete("/products/acme?cascade=true").status_code == 403
    assert carol.delete("/products/acme").status_code == 404
    assert carol.put("/products/acme", json=product).status_code == 409  # the id is taken
    assert world.store.get_product("acme").description == "acme's fields"
    assert world.store.count_images("acme") == 1


def test_owners_share_and_new_products_belong_to_their_creator(world):
    alice, carol = world.client("alice"), world.client("carol")
    created = carol.post("/products", json={"id": "carols", "bands": [{"name": "v"}]})
    assert created.status_code == 201
    assert created.json()["owners"] == ["user:carol"]
    assert "carols" not in ids(alice.get("/products").json()["products"])
    shared = {**created.json(), "readers": ["org:acme"]}
    assert carol.put("/products/carols", json=shared).status_code == 200
    assert "carols" in ids(alice.get("/products").json()["products"])
    bad = carol.put("/products/carols", json={**shared, "writers": ["public"]})
    assert bad.status_code == 422
    assert "public" in bad.json()["detail"]
    assert carol.delete("/products/carols").status_code == 204


def test_imports_write_only_where_the_caller_may(world):
    folder = world.folder / "imports" / "scenes"
    write(folder / "scene_20240201.tif", numpy.full((1, 256, 256), 7, "uint16"))
    request = {
        "cloud_provider": "file",
        "bucket_name": str(world.folder / "imports"),
        "prefix": "scenes",
    }
    carol = world.client("carol")
    into_acme = carol.post("/imports", json={**request, "product": "acme"})
    assert into_acme.status_code == 200, into_acme.text
    result = into_acme.json()
    assert result["features"] == []
    assert len(result["failed"]) == 1
    assert world.store.count_images("acme") == 1
    own = carol.post("/imports", json={**request, "product": "carols-import"}).json()
    assert [f["id"] for f in own["features"]] == ["scene_20240201"], own
    assert world.store.get_product("carols-import").owners == ["user:carol"]
    assert "carols-import" not in ids(world.client("bob").get("/products").json()["products"])


# --- anonymous reading ---------------------------------------------------------------------


def test_anonymous_reading_of_public_products_when_allowed(world, tmp_path):
    grants = world.app.state.settings.import_grants  # alice's files stay hers to read
    settings = make_settings(
        tmp_path, allow_anonymous=True, key_cache_seconds=0, import_grants=grants
    )
    client = TestClient(create_app(settings, store=world.store))
    assert ids(client.get("/products").json()["products"]) == {"open"}
    assert client.get("/images/acme:img").status_code == 404
    search_id = client.post("/searches", json={}).json()["id"]
    assert numpy.all(tile_values(client, search_id)[0] == 400)
    refused = client.post("/products", json={"id": "anon", "bands": []})
    assert refused.status_code == 403


def test_a_caller_who_reads_nothing_finds_nothing(world):
    from tileserver.catalog.access import Principal, ScopedStore
    from tileserver.catalog.search import SearchQuery, TileLookup

    admin = world.client("admin")
    public = admin.get("/products/open").json()
    assert admin.put("/products/open", json={**public, "readers": []}).status_code == 200
    try:
        nobody = ScopedStore(world.store, Principal(user="eve", org="nowhere"))
        assert nobody.list_products() == []
        assert nobody.search(SearchQuery(limit=100)).images == []
        assert nobody.search(SearchQuery(collections=["acme"])).images == []
        assert nobody.summary(SearchQuery()).count == 0
        bbox = tuple(WEB_MERCATOR.bounds(TILE))
        assert nobody.tile_images(SearchQuery(), bbox, TileLookup(limit=10)) == []
        assert not [name for name in nobody.queryables() if name.endswith(":secret")]
        everything = world.store.search(SearchQuery(limit=100)).images
        assert set(PRODUCTS) <= {image.product_id for image in everything}  # all there
    finally:
        assert admin.put("/products/open", json=public).status_code == 200


def test_gdal_wmts_client_with_a_query_key(world, tmp_path, monkeypatch):
    """GDAL's WMTS driver (a QGIS-like client) sends no headers: the key rides in the URLs."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from tests.conftest import LiveServer

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    options = {"GDAL_ENABLE_WMS_CACHE": "NO", "GDAL_HTTP_MAX_RETRY": "0"}
    with LiveServer(world.app) as server, rasterio.Env(**options):
        url = f"{server.url}/images/acme:img/WMTSCapabilities.xml?api_key={world.tokens['bob']}"
        with rasterio.open(f'WMTS:"{url}"') as ds:
            pixels = ds.read()
        assert pixels.shape[1:] == (256, 256)
        # no scaling asked: the raw value 100 in every colour band, opaque
        assert numpy.all(pixels[:3] == 100) and numpy.all(pixels[3] == 255)
        refused = url.replace(world.tokens["bob"], world.tokens["carol"])
        with pytest.raises(RasterioIOError):
            rasterio.open(f'WMTS:"{refused}"')


def test_a_request_reads_each_product_once(world):
    """An image tile checks the image's product, then renders with it: one catalog read."""
    from tileserver.catalog.access import Principal, ScopedStore

    reads: list[str] = []

    class Counting:
        def __getattr__(self, name):
            return getattr(world.store, name)

        def get_product(self, product_id):
            reads.append(product_id)
            return world.store.get_product(product_id)

    bob = ScopedStore(Counting(), Principal(user="bob", org="acme"))
    image = bob.get_image("acme:img")
    assert bob.get_product(image.product_id).id == "acme"
    assert reads == ["acme"]
    with pytest.raises(Exception, match="image 'globex:img' not found"):
        bob.get_image("globex:img")
    with pytest.raises(Exception, match="product 'globex' not found"):
        bob.get_product("globex")  # a hidden product is not remembered as readable
    assert reads == ["acme", "globex", "globex"]
