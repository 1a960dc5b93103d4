"""STAC for pipelines: Transactions under the ACLs, the fields / query / free-text
extensions, collection search, and asset hrefs a reader can follow.

A real server (LiveServer) with API keys: alice and bob (org acme, granted the folder
`roots/acme`), carol (org globex, granted nothing). Items are built with pystac and found
again with pystac-client; expected pixels and answers are computed here from the rasters
and item lists the test writes itself.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy
import pystac
import pytest
import rasterio
from pystac_client import Client

from tests.conftest import LiveServer, make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore

USERS = {"alice": "acme", "bob": "acme", "carol": "globex"}
COLLECTION = "pipeline"
HIDDEN = "alices-secret"  # alice's, shared with nobody


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    ring = [[b.left, b.bottom], [b.right, b.bottom], [b.right, b.top], [b.left, b.top]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


class World:
    """The server, its folders, and a client per user."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.root = folder / "roots" / "acme"
        self.outside = folder / "outside"
        for path in (self.root, self.outside, folder / "data"):
            path.mkdir(parents=True)
        self.store = SQLiteStore(folder / "data" / "catalog.db")
        self.tokens = {}
        for user, org in USERS.items():
            key, token = new_key(user, org)
            self.store.put_key(key)
            self.tokens[user] = token
        settings = make_settings(
            folder / "data", key_cache_seconds=0, import_grants={"org:acme": [str(self.root)]}
        )
        self.server = LiveServer(create_app(settings, store=self.store))

    def headers(self, user: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=self.headers(user), timeout=60)

    def raster(self, name: str, value: int, where: Path | None = None) -> Path:
        """A one-band UInt16 raster on TILE's grid: every pixel `value` (0 is nodata)."""
        return write(
            (where or self.root) / f"{name}.tif", numpy.full((1, 256, 256), value, "uint16")
        )


def pystac_item(
    item_id: str, href: str, when: datetime, cloud: float, title: str, platform: str = "sat-a"
) -> pystac.Item:
    """An item as a pipeline builds it with pystac: one COG data asset with its band."""
    b = WEB_MERCATOR.bounds(TILE)
    item = pystac.Item(
        id=item_id,
        geometry=footprint(),
        bbox=[b.left, b.bottom, b.right, b.top],
        datetime=when,
        properties={"eo:cloud_cover": cloud, "title": title, "platform": platform},
    )
    item.add_asset(
        "data",
        pystac.Asset(
            href=href,
            media_type=pystac.MediaType.COG,
            roles=["data"],
            extra_fields={"bands": [{"name": "v", "data_type": "uint16", "nodata": 0}]},
        ),
    )
    return item


SCENES = [  # id, value, acquired, cloud cover, title, platform
    ("alpha", 100, datetime(2024, 3, 1, 10, tzinfo=UTC), 5.0, "Alpha over the lake", "sat-a"),
    ("beta", 200, datetime(2024, 3, 2, 10, tzinfo=UTC), 40.0, "Beta, hazy", "sat-b"),
    ("gamma", 300, datetime(2024, 3, 3, 10, tzinfo=UTC), 15.0, "Gamma 100% clear", "sat-a"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    built = World(tmp_path_factory.mktemp("stactx"))
    with built.server:
        alice = built.client("alice")
        for collection in (COLLECTION, HIDDEN):
            body = {
                "type": "Collection",
                "id": collection,
                "title": f"{collection} by alice",
                "description": "made by a pipeline",
                "keywords": ["pipeline", "lake"] if collection == COLLECTION else ["private"],
                "license": "other",
                "extent": {},
                "links": [],
            }
            response = alice.post("/stac/collections", json=body)
            assert response.status_code == 201, response.text
        # bob reads the pipeline collection; nobody but alice sees the hidden one
        product = alice.get(f"/products/{COLLECTION}").json()
        product["readers"] = ["user:bob"]
        assert alice.put(f"/products/{COLLECTION}", json=product).status_code == 200
        for item_id, value, when, cloud, title, platform in SCENES:
            href = str(built.raster(item_id, value))
            item = pystac_item(item_id, href, when, cloud, title, platform)
            body = item.to_dict(include_self_link=False)
            response = alice.post(f"/stac/collections/{COLLECTION}/items", json=body)
            assert response.status_code == 201, response.text
        href = str(built.raster("secret", 7))
        secret = pystac_item("secret", href, datetime(2024, 1, 1, tzinfo=UTC), 0.0, "Secret")
        response = alice.post(
            f"/stac/collections/{HIDDEN}/items", json=secret.to_dict(include_self_link=False)
        )
        assert response.status_code == 201, response.text
        yield built
    built.store.close()


def test_created_collection_is_owned_by_its_creator(world):
    product = world.client("alice").get(f"/products/{COLLECTION}").json()
    assert product["owners"] == ["user:alice"]
    assert [b["name"] for b in product["bands"]] == ["v"]  # from the first item
    collection = world.client("bob").get(f"/stac/collections/{COLLECTION}").json()
    assert collection["title"] == f"{COLLECTION} by alice"
    assert collection["keywords"] == ["pipeline", "lake"]
    assert collection["tileserver:images"] == len(SCENES)


def test_pystac_item_is_found_by_pystac_client(world):
    """The item POSTed above, as pystac built it, through pystac-client's search."""
    catalog = Client.open(f"{world.server.url}/stac", headers=world.headers("bob"))
    assert catalog.conforms_to("TRANSACTION") and catalog.conforms_to("QUERY")
    found = list(catalog.search(collections=[COLLECTION], ids=["alpha"]).items())
    assert [item.id for item in found] == ["alpha"]
    item = found[0]
    assert item.datetime == SCENES[0][2]
    assert item.properties["eo:cloud_cover"] == 5.0 and item.properties["title"] == SCENES[0][4]
    # bob reads but does not write: the data asset is the server's download, not the path
    # asset keys are the files' stems, as for every image (catalog/stac.py asset_keys)
    href = item.assets["alpha"].href
    assert href.startswith(world.server.url) and str(world.root) not in href
    pixels = httpx.get(href, headers=world.headers("bob"), timeout=60)
    assert pixels.status_code == 200, pixels.text
    with rasterio.open(io.BytesIO(pixels.content)) as src:
        assert (src.read(1) == 100).all()
    thumbnail = item.assets["thumbnail"]
    assert thumbnail.media_type == "image/png" and "thumbnail" in thumbnail.roles
    tile = httpx.get(thumbnail.href, headers=world.headers("bob"), timeout=60)
    assert tile.status_code == 200 and tile.content.startswith(b"\x89PNG")
    # the writer sees the file she named
    mine = world.client("alice").get(f"/stac/collections/{COLLECTION}/items/alpha").json()
    assert mine["assets"]["alpha"]["href"] == str(world.root / "alpha.tif")


def test_query_fields_and_free_text_through_pystac_client(world):
    catalog = Client.open(f"{world.server.url}/stac", headers=world.headers("bob"))
    clear = catalog.search(collections=[COLLECTION], query=["eo:cloud_cover<20"])
    expected = [s[0] for s in sorted(SCENES, key=lambda s: s[2], reverse=True) if s[3] < 20]
    assert [i.id for i in clear.items()] == expected
    # pystac-client has no `q` for items: the POST body its search would send
    texts = world.client("bob").post("/stac/search", json={"q": ["hazy", "LAKE"]})
    assert sorted(f["id"] for f in texts.json()["features"]) == ["alpha", "beta"]
    slim = catalog.search(
        collections=[COLLECTION], fields={"include": ["properties.title"], "exclude": []}
    )
    first = next(iter(slim.items_as_dicts()))
    assert set(first["properties"]) == {"title"} and "assets" not in first


def test_query_operators_over_http(world):
    bob = world.client("bob")

    def ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return sorted(f["id"] for f in response.json()["features"])

    search = "/stac/search"
    cases = [
        ({"eo:cloud_cover": {"gte": 15}}, ["beta", "gamma"]),
        ({"eo:cloud_cover": {"gt": 5, "lte": 15}}, ["gamma"]),
        ({"platform": {"eq": "sat-b"}}, ["beta"]),
        ({"platform": {"neq": "sat-b"}}, ["alpha", "gamma"]),
        ({"platform": {"in": ["sat-a", "sat-c"]}}, ["alpha", "gamma"]),
        ({"title": {"startsWith": "Gamma"}}, ["gamma"]),
        ({"title": {"endsWith": "hazy"}}, ["beta"]),
        ({"title": {"contains": "100%"}}, ["gamma"]),  # % is a character here, not LIKE's
        ({"title": {"contains": "0%"}}, ["gamma"]),
    ]
    for query, expected in cases:
        body = {"collections": [COLLECTION], "query": query}
        assert ids(bob.post(search, json=body)) == expected, query
        params = {"collections": COLLECTION, "query": __import__("json").dumps(query)}
        assert ids(bob.get(search, params=params)) == expected, query
    # query and filter together: both hold
    body = {"collections": [COLLECTION], "query": {"platform": {"eq": "sat-a"}},
            "filter": "eo:cloud_cover > 10", "filter-lang": "cql2-text"}  # fmt: skip
    assert ids(bob.post(search, json=body)) == ["gamma"]
    # free text on the items of one collection, GET
    page = bob.get(f"/stac/collections/{COLLECTION}/items", params={"q": "alpha,gamma"})
    assert ids(page) == ["alpha", "gamma"]
    # fields on GET: an exclude only
    page = bob.get(search, params={"collections": COLLECTION, "fields": "-assets,-geometry"})
    feature = page.json()["features"][0]
    assert "assets" not in feature and "geometry" not in feature and "properties" in feature
    # next links carry the extensions along
    page = bob.post(search, json={"collections": [COLLECTION], "limit": 1,
                                  "query": {"platform": {"eq": "sat-a"}}})  # fmt: skip
    nxt = next(link for link in page.json()["links"] if link["rel"] == "next")
    assert nxt["body"]["query"] == {"platform": {"eq": "sat-a"}}
    assert ids(bob.post(search, json=nxt["body"])) == ["alpha"]


@pytest.mark.parametrize(
    "request_args,words",
    [
        ({"json": {"query": {"eo:cloud_cover": {"near": 3}}}}, ["near", "not supported"]),
        ({"json": {"query": {"eo:cloud_cover": 3}}}, ["query.eo:cloud_cover"]),
        ({"json": {"query": {"eo:cloud_cover": {"in": 3}}}}, ["in"]),
        ({"json": {"query": {"cloudiness": {"lt": 3}}}}, ["cloudiness"]),
        ({"json": {"q": "lake AND hazy"}}, ["q", "AND"]),
        ({"json": {"q": '"exact phrase"'}}, ["q"]),
        ({"json": {"q": 3}}, ["q"]),
        ({"json": {"fields": {"include": "id"}}}, ["fields.include"]),
        ({"json": {"fields": {"only": ["id"]}}}, ["fields", "only"]),
        ({"json": {"conf": {"x": 1}}}, ["conf"]),
        ({"params": {"query": "{not json"}}, ["query"]),
        ({"params": {"query": "[1]"}}, ["query"]),
        ({"params": {"q": "(lake)"}}, ["q"]),
        ({"params": {"conf": "x"}}, ["conf"]),
    ],
)
def test_unsupported_extension_values_are_named(world, request_args, words):
    method = "POST" if "json" in request_args else "GET"
    response = world.client("bob").request(method, "/stac/search", **request_args)
    assert 400 <= response.status_code < 500, response.text
    detail = str(response.json()["detail"])
    assert all(w in detail for w in words), detail


def test_collection_search(world):
    bob, alice = world.client("bob"), world.client("alice")

    def ids(client, **params) -> list[str]:
        response = client.get("/stac/collections", params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["collections"]]

    b = WEB_MERCATOR.bounds(TILE)
    inside = f"{b.left + 0.01},{b.bottom + 0.01},{b.left + 0.02},{b.bottom + 0.02}"
    assert ids(bob) == [COLLECTION]  # the hidden one does not exist for bob
    assert ids(alice) == sorted([COLLECTION, HIDDEN])
    assert ids(alice, bbox=inside) == sorted([COLLECTION, HIDDEN])
    assert ids(alice, bbox="-10,-10,-5,-5") == []
    assert ids(alice, datetime="2024-03-02/..") == [COLLECTION]
    assert ids(alice, datetime="2023-01-01/2023-12-31") == []
    assert ids(alice, q="private") == [HIDDEN]
    assert ids(alice, q="LAKE,nothing") == [COLLECTION]
    first = alice.get("/stac/collections", params={"limit": 1}).json()
    nxt = next(link["href"] for link in first["links"] if link["rel"] == "next")
    second = alice.get(nxt).json()
    assert [c["id"] for c in first["collections"] + second["collections"]] == sorted(
        [COLLECTION, HIDDEN]
    )
    catalog = Client.open(f"{world.server.url}/stac", headers=world.headers("alice"))
    found = catalog.collection_search(q=["private"])
    assert [c.id for c in found.collections()] == [HIDDEN]
    for params in ({"bbox": "1,2"}, {"datetime": "someday"}, {"q": "a AND b"}, {"token": "x"}):
        assert alice.get("/stac/collections", params=params).status_code == 400, params


def test_readers_and_strangers_cannot_write(world):
    bob, carol = world.client("bob"), world.client("carol")
    href = str(world.raster("bobs", 50))
    item = pystac_item("bobs", href, datetime(2024, 4, 1, tzinfo=UTC), 1.0, "Bob's").to_dict(
        include_self_link=False
    )
    base = f"/stac/collections/{COLLECTION}"
    # bob reads the collection: 403; carol does not: 404, as for a missing collection
    assert bob.post(f"{base}/items", json=item).status_code == 403
    assert bob.put(f"{base}/items/alpha", json={**item, "id": "alpha"}).status_code == 403
    assert bob.patch(f"{base}/items/alpha", json={"properties": {"x": 1}}).status_code == 403
    assert bob.delete(f"{base}/items/alpha").status_code == 403
    assert bob.patch(base, json={"title": "bob's now"}).status_code == 403
    assert bob.delete(base).status_code == 403
    missing = carol.post("/stac/collections/no-such-thing/items", json=item)
    for path in (base, f"/stac/collections/{HIDDEN}"):
        response = carol.post(f"{path}/items", json=item)
        assert response.status_code == 404
        assert response.json()["detail"].replace(path.rsplit("/", 1)[1], "X") == missing.json()[
            "detail"
        ].replace("no-such-thing", "X")
        assert carol.delete(f"{path}/items/alpha").status_code == 404
        assert carol.patch(path, json={"title": "x"}).status_code == 404
        assert carol.put(path, json={"id": path.rsplit("/", 1)[1]}).status_code == 404
    # a hidden collection's id cannot be taken over either; it answers as taken, nothing more
    taken = carol.post("/stac/collections", json={"type": "Collection", "id": HIDDEN})
    assert taken.status_code == 409
    # nothing was written
    alice = world.client("alice")
    assert alice.get(f"{base}/items/bobs").status_code == 404
    assert alice.get(f"{base}/items/alpha").json()["properties"]["title"] == SCENES[0][4]
    # anonymous callers write nothing
    anonymous = httpx.post(f"{world.server.url}{base}/items", json=item, timeout=60)
    assert anonymous.status_code in (401, 403, 404)


def test_asset_hrefs_are_confined_like_imports(world):
    alice = world.client("alice")
    outside = str(world.raster("outside", 9, world.outside))
    base = f"/stac/collections/{COLLECTION}/items"
    catalog_db = str(world.folder / "data" / "catalog.db")
    texts = set()
    hostile = [outside, str(world.outside / "missing.tif"), catalog_db, "/etc/passwd"]
    hostile += [f"{world.root}/../outside/outside.tif", "https://example.invalid/a.tif"]
    for href in hostile:
        item = pystac_item("escape", href, datetime(2024, 5, 1, tzinfo=UTC), 1.0, "Escape")
        response = alice.post(base, json=item.to_dict(include_self_link=False))
        assert response.status_code == 403, (href, response.text)
        texts.add(response.json()["detail"])
        assert str(world.outside) not in response.text and "passwd" not in response.text
    assert len(texts) == 1  # the same answer whether the file exists or not
    assert alice.get(f"{base}/escape").status_code == 404
    # carol has no grant at all: even her own new collection takes no files
    carol = world.client("carol")
    created = carol.post("/stac/collections", json={"type": "Collection", "id": "carols"})
    assert created.status_code == 201, created.text
    item = pystac_item("c", str(world.root / "alpha.tif"), datetime(2024, 5, 1, tzinfo=UTC), 1, "c")
    response = carol.post("/stac/collections/carols/items", json=item.to_dict())
    assert response.status_code == 403
    assert carol.delete("/stac/collections/carols").status_code == 204


@pytest.mark.parametrize(
    "change,status,words",
    [
        (lambda d: {**d, "type": "FeatureCollection"}, 400, ["Item"]),
        (lambda d: {**d, "id": "bad id/.."}, 400, ["id"]),
        (lambda d: {**d, "collection": "elsewhere"}, 400, ["collection"]),
        (lambda d: {k: v for k, v in d.items() if k != "geometry"}, 400, ["geometry"]),
        (lambda d: {**d, "geometry": {"type": "Polygon", "coordinates": "x"}}, 400, ["geometry"]),
        (lambda d: {**d, "properties": []}, 400, ["properties"]),
        (lambda d: {**d, "properties": {"title": "no time"}}, 400, ["datetime"]),
        (lambda d: {**d, "assets": []}, 400, ["assets"]),
        (lambda d: {**d, "assets": {}}, 400, ["data asset"]),
        (lambda d: {**d, "assets": {"data": {"href": 3, "roles": ["data"]}}}, 400, ["href"]),
        (
            lambda d: {**d, "assets": {"data": {"href": "a.tif", "roles": ["data"]}}},
            400,
            ["absolute"],
        ),  # fmt: skip
        (
            lambda d: {**d, "assets": {"data": {**d["assets"]["data"], "bands": "v"}}},
            400,
            ["bands"],
        ),  # fmt: skip
        (
            lambda d: {**d, "assets": {"data": {**d["assets"]["data"], "bands": [{"name": "w"}]}}},
            400,
            ["band 'w'"],
        ),  # fmt: skip
        (
            lambda d: {**d, "properties": {**d["properties"], "eo:cloud_cover": 101}},
            400,
            ["cloud_cover"],
        ),  # fmt: skip
        (
            lambda d: {**d, "assets": {f"a{i}": d["assets"]["data"] for i in range(101)}},
            400,
            ["more than 100 assets"],
        ),  # fmt: skip
        (
            lambda d: {**d, "assets": {"data": {**d["assets"]["data"], "bands": [{}] * 257}}},
            400,
            ["assets.data.bands", "more than 256"],
        ),  # fmt: skip
        (lambda d: {**d, "id": "alpha"}, 409, ["alpha"]),
    ],
)
def test_bad_items_are_clear_4xx(world, change, status, words):
    href = str(world.root / "alpha.tif")
    item = pystac_item("newone", href, datetime(2024, 6, 1, tzinfo=UTC), 1.0, "New").to_dict(
        include_self_link=False
    )
    response = world.client("alice").post(
        f"/stac/collections/{COLLECTION}/items", json=change(item)
    )
    assert response.status_code == status, response.text
    detail = str(response.json()["detail"])
    assert all(w in detail for w in words), detail
    assert str(world.root) not in detail


def test_bad_bodies_are_4xx(world):
    alice = world.client("alice")
    base = f"/stac/collections/{COLLECTION}"
    deep = "[" * 100 + "]" * 100
    for path in ("/stac/collections", f"{base}/items"):
        for content in (b"not json", b"[1, 2]", b"3", deep.encode()):
            response = alice.post(
                path, content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (path, content[:10], response.text)
    big = {"type": "Collection", "id": "big", "description": "x" * 2_000_000}
    assert alice.post("/stac/collections", json=big).status_code == 413  # max_body_bytes
    assert alice.post("/stac/collections", json={"type": "Collection"}).status_code == 400
    assert alice.post("/stac/collections", json={"id": "a b"}).status_code == 400
    assert alice.post("/stac/collections", json={"id": "k", "keywords": "x"}).status_code == 400
    assert alice.post("/stac/collections", json={"id": "k", "type": "Feature"}).status_code == 400
    assert alice.put(base, json={"id": "other"}).status_code == 400
    assert alice.patch(f"{base}/items/alpha", json={"id": "other"}).status_code == 400
    assert alice.patch(f"{base}/items/nope", json={"properties": {}}).status_code == 404
    assert alice.put(f"{base}/items/nope", json={"type": "Feature"}).status_code == 404
    # a missing item is 404 before the body is looked at, whatever id the body holds
    assert alice.put(f"{base}/items/nope", json={"id": "alpha"}).status_code == 404
    assert alice.put(f"{base}/items/alpha", json={"id": "beta"}).status_code == 400


def test_update_patch_and_delete(world):
    alice = world.client("alice")
    base = f"/stac/collections/{COLLECTION}"
    href = str(world.raster("delta", 400))
    item = pystac_item("delta", href, datetime(2024, 3, 4, tzinfo=UTC), 30.0, "Delta")
    body = item.to_dict(include_self_link=False)
    created = alice.post(f"{base}/items", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["location"].endswith(f"{base}/items/delta")
    # PUT: a new file and cloud cover
    other = str(world.raster("delta2", 450))
    body["assets"]["data"]["href"] = other
    body["properties"]["eo:cloud_cover"] = 31.0
    replaced = alice.put(f"{base}/items/delta", json=body)
    assert replaced.status_code == 200, replaced.text
    image = alice.get(f"/images/{COLLECTION}:delta").json()
    assert image["files"][0]["href"] == other and image["cloud_cover"] == 31.0
    # PATCH: a JSON Patch (RFC 6902) is refused by name, not misread as a merge patch
    json_patch = alice.patch(
        f"{base}/items/delta",
        content=b'[{"op": "remove", "path": "/properties/title"}]',
        headers={"content-type": "application/json-patch+json"},
    )
    assert json_patch.status_code == 415 and "merge-patch" in json_patch.json()["detail"]
    # PATCH: merge one property in, remove another (as application/merge-patch+json)
    patched = alice.patch(
        f"{base}/items/delta",
        content=b'{"properties": {"eo:cloud_cover": 2.5, "title": null}}',
        headers={"content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    image = alice.get(f"/images/{COLLECTION}:delta").json()
    assert image["cloud_cover"] == 2.5 and "title" not in image["properties"]
    assert image["files"][0]["href"] == other and image["properties"]["platform"] == "sat-a"
    assert image["acquired"].startswith("2024-03-04")
    for derived in ("created", "updated", "proj:shape", "proj:transform", "proj:code"):
        assert derived not in image["properties"]
    # the pixels now come from the new file
    tile = alice.get(f"/images/{COLLECTION}:delta/tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/"
                     f"{TILE.y}.npy", params={"scaling": "raw"})  # fmt: skip
    assert tile.status_code == 200, tile.text
    assert (numpy.load(io.BytesIO(tile.content))[0] == 450).all()
    # the collection: PATCH a title, PUT keeps the bands and the lists
    assert alice.patch(base, json={"title": "Renamed"}).json()["title"] == "Renamed"
    put = alice.put(base, json={"type": "Collection", "id": COLLECTION, "description": "d"})
    assert put.status_code == 200 and put.json()["title"] == COLLECTION  # no title: the id
    product = alice.get(f"/products/{COLLECTION}").json()
    assert product["readers"] == ["user:bob"] and [b["name"] for b in product["bands"]] == ["v"]
    # DELETE the item: the image is gone, for searches too
    assert alice.delete(f"{base}/items/delta").status_code == 204
    assert alice.get(f"/images/{COLLECTION}:delta").status_code == 404
    assert alice.get(f"{base}/items/delta").status_code == 404
    found = alice.post("/stac/search", json={"ids": ["delta"]}).json()
    assert found["features"] == []
    assert Path(other).exists()  # the files stay where they are
    # a collection with items is deleted only with cascade
    assert alice.delete(f"/stac/collections/{HIDDEN}").status_code == 409
    assert (
        alice.delete(f"/stac/collections/{HIDDEN}", params={"cascade": "true"}).status_code == 204
    )
    assert alice.get(f"/images/{HIDDEN}:secret").status_code == 404
