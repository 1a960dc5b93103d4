"""Hostile tenants and hostile files: what a key holder may make the server open.

Written as an attacker would, against a real server on loopback, on both stores. Two
organisations: `acme` (alice, who owns product `acme`; carol of `globex` reads it) and
`evil` (mallory, who owns product `evil`). Each organisation was granted its own folder
under `roots/`; files are planted outside them, in the other's folder and in the data dir,
and a loopback HTTP server stands by that must never receive a request.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import numpy
import pytest
from shapely.geometry import box, mapping

from tests.conftest import STORES, LiveServer, make_settings, stub_server
from tests.ingest.test_hostile_xml import beam_scene, dimap_scene
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.store import open_store

REFUSED = "not a location this server may open for you"
NOT_RASTER = "not a raster format this server opens"
TILE_PATH = f"tiles/WebMercatorQuad/{TILE.z}/{TILE.x}/{TILE.y}.npy"
USERS = {"alice": "acme", "mallory": "evil", "carol": "globex"}


class Canary(BaseHTTPRequestHandler):
    """Records every request it gets: none may come."""

    hits: list[str] = []
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802 (http.server's name)
        with self.lock:
            Canary.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret internal answer")

    do_HEAD = do_GET


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    return mapping(box(b.left, b.bottom, b.right, b.top))


def image(product: str, name: str, href: str) -> dict:
    return {
        "name": name,
        "product_id": product,
        "acquired": "2024-01-01T10:00:00Z",
        "geometry": footprint(),
        "files": [{"href": href}],
    }


def product(product_id: str, **lists) -> dict:
    band = {"name": "v", "data_type": "UInt16", "data_range": [0, 1000], "nodata": 0}
    return {"id": product_id, "bands": [band], **lists}


class World:
    """A real server, its folders, and a client per identity."""

    def __init__(self, store, url: str, folder: Path, canary: str):
        self.folder, self.store, self.canary = folder, store, canary
        self.data = folder / "data"
        self.roots = {org: folder / "roots" / org for org in ("acme", "evil")}
        for path in (folder / "outside", *self.roots.values()):
            path.mkdir(parents=True)
        self.tokens = {}
        for user, org in USERS.items():
            key, token = new_key(user, org)
            store.put_key(key)
            self.tokens[user] = token
        grants = {f"org:{org}": [str(root)] for org, root in self.roots.items()}
        self.settings = make_settings(
            self.data, key_cache_seconds=0, import_grants=grants, catalog_url=url
        )
        self.server = LiveServer(create_app(self.settings, store=store))

    def client(self, user: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=60)

    def plant(self, where: Path, value: int) -> Path:
        return write(where, numpy.full((1, 256, 256), value, "uint16"))


@pytest.fixture(scope="module", params=STORES)
def world(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"confine-{request.param}")
    (folder / "data").mkdir()
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'data' / 'catalog.db'}"
    else:
        from tests.postgres import drop_database, new_database

        admin = request.getfixturevalue("postgres_admin")
        url = new_database(admin)
    store = open_store(url)
    with stub_server(Canary) as canary:
        built = World(store, url, folder, canary)
        with built.server:
            alice, mallory = built.client("alice"), built.client("mallory")
            acme = product("acme", readers=["org:globex"])
            assert alice.post("/products", json=acme).status_code == 201
            assert mallory.post("/products", json=product("evil")).status_code == 201
            href = str(built.plant(built.roots["acme"] / "a.tif", 100))
            response = alice.put("/images/acme:img", json=image("acme", "img", href))
            assert response.status_code == 200, response.text
            yield built
    store.close()
    if request.param != "sqlite":
        drop_database(admin, url)


@pytest.fixture(autouse=True)
def no_canary_calls():
    Canary.hits.clear()
    yield
    assert Canary.hits == [], "the server sent requests to a loopback service"


# --- one way to open imagery ----------------------------------------------------------------


def hostile_hrefs(world: World) -> list[str]:
    acme_file = str(world.roots["acme"] / "a.tif")
    evil = world.roots["evil"]
    os.symlink(acme_file, evil / "link.tif")
    (world.data / "vrt" / "acme").mkdir(parents=True, exist_ok=True)
    other_vrt = world.data / "vrt" / "acme" / "scene.vrt"
    other_vrt.write_text("<VRTDataset/>")
    secret = world.plant(world.folder / "outside" / "secret.tif", 7)
    catalog = world.data / "catalog.db"
    return [
        acme_file,  # another tenant's image, its path as any reader of it once saw
        str(secret),  # present outside the roots
        str(world.folder / "outside" / "absent.tif"),  # absent outside the roots
        f"{evil}/../acme/a.tif",  # traversal
        f"{evil}/link.tif",  # a link out of the root
        str(catalog),
        f"{catalog}-wal",
        f"{catalog}-shm",
        str(other_vrt),  # another product's VRT
        "/etc/passwd",
        f"file://{acme_file}",
        "<VRTDataset><VRTRasterBand band='1'/></VRTDataset>",
        f"/vsicurl/http://{world.canary}/x.tif",
        f"http://{world.canary}/x.tif",
        f"https://{world.canary}/x.tif",
        f"/vsicurl?url=http://{world.canary}/x.tif",
        f"/vsizip/{evil}/a.zip/a.tif",
        "/vsimem/x.tif",
        f"/vsis3_streaming/bucket/{acme_file}",
        "s3://somebody-elses-bucket/x.tif",
        "/vsigs/somebody-elses-bucket/x.tif",
        f"GTIFF_DIR:1:{acme_file}",
        f"WMS:http://{world.canary}/wms",
        "relative/a.tif",
        "a.tif",
        "",
    ]


def test_hrefs_outside_what_the_owner_may_use_are_refused_alike(world):
    mallory = world.client("mallory")
    for href in hostile_hrefs(world):
        response = mallory.put("/images/evil:x", json=image("evil", "x", href))
        if href == "":
            assert response.status_code in (403, 422), response.text
            continue
        assert response.status_code == 403, (href, response.text)
        assert response.json()["detail"] == f"files[0]: {REFUSED}", href  # one text for all
    assert mallory.get("/images/evil:x").status_code == 404
    own = world.plant(world.roots["evil"] / "own.tif", 50)
    response = mallory.put("/images/evil:own", json=image("evil", "own", str(own)))
    assert response.status_code == 200, response.text
    tile = mallory.get(f"/images/evil:own/{TILE_PATH}")
    assert tile.status_code == 200 and numpy.all(values(tile)[0] == 50)


def values(response: httpx.Response) -> numpy.ndarray:
    return numpy.load(io.BytesIO(response.content))


def disguises(world: World) -> dict[str, bytes]:
    """Files that are no GeoTIFF, named .tif, in mallory's own root."""
    acme_file = world.roots["acme"] / "a.tif"
    sqlite_copy = world.folder / "outside" / "copy.db"
    with sqlite3.connect(sqlite_copy) as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return {
        "raw-band VRT reading /etc/passwd": b"""<VRTDataset rasterXSize="64" rasterYSize="8">
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativetoVRT="0">/etc/passwd</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>
  </VRTRasterBand></VRTDataset>""",
        "VRT over another tenant's file, tags in another case": f"""<vrtdataset rasterXSize="256"
 rasterYSize="256"><vrtrasterband dataType="UInt16" band="1"><SIMPLESOURCE>
 <sourcefilename relativeToVRT="0">{acme_file}</sourcefilename><SourceBand>1</SourceBand>
 </SIMPLESOURCE></vrtrasterband></vrtdataset>""".encode(),
        "GDAL_WMS description": f"""<GDAL_WMS><Service name="TMS">
 <ServerUrl>http://{world.canary}/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
 <DataWindow><UpperLeftX>-20037508</UpperLeftX><UpperLeftY>20037508</UpperLeftY>
 <LowerRightX>20037508</LowerRightX><LowerRightY>-20037508</LowerRightY>
 <TileLevel>18</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY></DataWindow>
 <Projection>EPSG:3857</Projection><BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY>
 <BandsCount>1</BandsCount></GDAL_WMS>""".encode(),
        "SQLite database": sqlite_copy.read_bytes(),
    }


def test_tenant_files_open_only_as_imagery(world):
    mallory = world.client("mallory")
    for number, (what, content) in enumerate(disguises(world).items()):
        path = world.roots["evil"] / f"disguise{number}.tif"
        path.write_bytes(content)
        name = f"disguise{number}"
        response = mallory.put(f"/images/evil:{name}", json=image("evil", name, str(path)))
        assert response.status_code == 200, (what, response.text)  # a file in her own root
        for route in (TILE_PATH, "download.npy?scaling=raw", "download.tif", "raster_info"):
            answer = mallory.get(f"/images/evil:{name}/{route}")
            assert answer.status_code in (403, 409), (what, route, answer.text)
            assert NOT_RASTER in answer.json()["detail"], (what, route, answer.text)
            assert str(world.folder) not in answer.text
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    assert passwd  # and it appeared in no answer above (they were all refusals)


def test_the_catalog_survives_being_named(world):
    """Naming the catalog (or a copy) never lets GDAL's SQLite driver near it: writes made
    afterwards survive a restart of the store."""
    mallory, alice = world.client("mallory"), world.client("alice")
    catalog = world.data / "catalog.db"
    copy = world.roots["evil"] / "catalog.tif"
    if catalog.exists():
        shutil.copy(catalog, copy)
    else:
        with sqlite3.connect(copy) as db:
            db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    for href in (str(catalog), str(copy)):
        body = image("evil", "cat", href)
        mallory.put("/images/evil:cat", json=body)
        for route in ("tilejson.json", TILE_PATH, "download.npy?scaling=raw"):
            mallory.get(f"/images/evil:cat/{route}")
    href = str(world.plant(world.roots["acme"] / "after.tif", 300))
    assert alice.put("/images/acme:after", json=image("acme", "after", href)).status_code == 200
    fresh = open_store(world.settings.catalog_url) if catalog.exists() else world.store
    assert fresh.get_image("acme:after").files[0].href == href
    if fresh is not world.store:
        fresh.close()


def test_files_gdal_takes_along_are_confined_too(world):
    """An overview beside one's own file that links to another tenant's image."""
    mallory = world.client("mallory")
    own = world.plant(world.roots["evil"] / "withovr.tif", 60)
    os.symlink(world.roots["acme"] / "a.tif", f"{own}.ovr")
    response = mallory.put("/images/evil:withovr", json=image("evil", "withovr", str(own)))
    assert response.status_code == 200
    tile = mallory.get(f"/images/evil:withovr/{TILE_PATH}")
    assert tile.status_code in (403, 409), tile.text
    assert REFUSED in tile.json()["detail"]


# --- imports ----------------------------------------------------------------------------------


def test_imports_only_from_what_was_granted(world):
    mallory = world.client("mallory")
    details = set()
    for folder in (
        world.roots["acme"],  # another organisation's root: exists
        world.folder / "outside",  # exists
        world.folder / "nowhere",  # does not exist
        world.data,
    ):
        body = {"cloud_provider": "file", "bucket_name": str(folder), "product": "evil"}
        response = mallory.post("/imports", json=body)
        assert response.status_code == 403, response.text
        details.add(response.json()["detail"].replace(str(folder), "<asked>"))
        assert str(world.roots["evil"]) not in response.text  # roots are never listed
    assert len(details) == 1, details  # present or absent: the same refusal
    for provider in ("aws", "gcs"):
        body = {"cloud_provider": provider, "bucket_name": "any-bucket", "product": "evil"}
        assert mallory.post("/imports", json=body).status_code == 403


def stac_item(item_id: str, href: str) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "evil-items",  # a product of her own, made by the import
        "geometry": footprint(),
        "bbox": list(WEB_MERCATOR.bounds(TILE)),
        "properties": {"datetime": "2024-02-01T00:00:00Z"},
        "assets": {"data": {"href": href, "type": "image/tiff", "roles": ["data"]}},
        "links": [],
    }


def test_scenes_cannot_point_out_of_the_roots(world):
    mallory = world.client("mallory")
    batch = world.roots["evil"] / "batch"
    batch.mkdir()
    catalog = world.data / "catalog.db"
    targets = {
        "other": str(world.roots["acme"] / "a.tif"),
        "canary": f"http://{world.canary}/x.tif",
        "catalog": str(catalog),
        "vsicurl": f"/vsicurl/http://{world.canary}/y.tif",
    }
    for item_id, href in targets.items():
        (batch / f"{item_id}.json").write_text(json.dumps(stac_item(item_id, href)))
    (batch / "vrt-in-disguise.tif").write_bytes(next(iter(disguises(world).values())))
    body = {"cloud_provider": "file", "bucket_name": str(world.roots["evil"]), "prefix": "batch"}
    answer = mallory.post("/imports", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["features"] == []
    failed = {f["path"]: f["reason"] for f in result["failed"]}
    assert set(failed) == {*(f"{i}.json" for i in targets), "vrt-in-disguise.tif"}
    for path, reason in failed.items():
        assert REFUSED in reason or NOT_RASTER in reason, (path, reason)
    assert str(world.folder) not in answer.text  # paths relative to what she named


def dimap_naming(folder: Path, target: str) -> Path:
    """A DIMAP v2 scene whose first DATA_FILE_PATH names `target`."""
    dim, _ = dimap_scene(folder)
    text = re.sub(r'(<DATA_FILE_PATH href=")[^"]*"', rf'\g<1>{target}"', dim.read_text(), count=1)
    dim.write_text(text)
    return dim


def test_dimap_data_files_are_checked_before_they_are_read(world):
    mallory = world.client("mallory")
    targets = {
        "catalog": str(world.data / "catalog.db"),
        "canary": f"/vsicurl/http://{world.canary}/IMG.TIF",
        "other": str(world.roots["acme"] / "a.tif"),
    }
    for name, target in targets.items():
        dimap_naming(world.roots["evil"] / "dimap" / name, target)
    body = {"cloud_provider": "file", "bucket_name": str(world.roots["evil"] / "dimap")}
    answer = mallory.post("/imports", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["features"] == [] and len(result["failed"]) == len(targets), result
    for failure in result["failed"]:
        assert REFUSED in failure["reason"], failure
    assert str(world.folder) not in answer.text
    assert not list((world.data / "vrt").rglob(".staging-*"))


def vrts(world: World) -> dict[str, str]:
    """Every file under the data dir's vrt/ folder, with its digest."""
    root = world.data / "vrt"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_refused_imports_leave_every_file_as_it_was(world):
    alice, mallory = world.client("alice"), world.client("mallory")
    beam_scene(world.roots["acme"] / "beam")
    body = {"cloud_provider": "file", "bucket_name": str(world.roots["acme"] / "beam")}
    answer = alice.post("/imports", json={**body, "product": "acme-beam"}).json()
    assert len(answer["features"]) == 1 and answer["failed"] == [], answer
    before = vrts(world)
    assert any(name.startswith("acme-beam/") for name in before)
    # the same scene id from mallory's own root, into alice's products: refused, nothing
    # written (one she cannot see, one she reads but may not write)
    beam_scene(world.roots["evil"] / "beam")
    body = {"cloud_provider": "file", "bucket_name": str(world.roots["evil"] / "beam")}
    for target in ("acme-beam", "acme"):
        answer = mallory.post("/imports", json={**body, "product": target})
        assert answer.status_code == 200 and answer.json()["features"] == [], answer.text
        assert vrts(world) == before
    # a scene whose band files are another tenant's (its .data folder links there)
    linked = world.roots["evil"] / "linked"
    dim = beam_scene(linked)[0]
    data = dim.with_suffix(".data")
    shutil.rmtree(data)
    os.symlink(world.roots["acme"] / "beam" / "beam" / data.name, data)
    body = {"cloud_provider": "file", "bucket_name": str(linked), "product": "evil-beam"}
    answer = mallory.post("/imports", json=body).json()
    assert answer["features"] == [], answer
    reasons = {f["path"]: f["reason"] for f in answer["failed"]}
    assert REFUSED in reasons["beam/S2_SYNTH_MAP.dim"], reasons
    assert vrts(world) == before  # no VRT for evil, no staging folder left
    assert not list((world.data / "vrt").rglob(".staging-*"))
    # product ids that are not names of a folder
    for bad in (".", "..", "a/b"):
        response = mallory.post("/imports", json={**body, "product": bad})
        assert response.status_code == 422, response.text
    assert vrts(world) == before


# --- nothing leaks ----------------------------------------------------------------------------


def test_readers_see_links_not_server_paths(world):
    carol, alice = world.client("carol"), world.client("alice")
    seen = carol.get("/images/acme:img").json()
    href = seen["files"][0]["href"]
    assert href.startswith(f"{world.server.url}/images/acme:img/download.tif"), href
    item = carol.get("/stac/collections/acme/items/img").json()
    assert item["assets"]["a"]["href"] == href
    listed = carol.get("/products/acme/images").json()["images"][0]["files"][0]["href"]
    assert listed == href
    for text in (json.dumps(seen), json.dumps(item)):
        assert str(world.folder) not in text
    download = carol.get(href)
    assert download.status_code == 200 and download.content[:2] in (b"II", b"MM")
    assert alice.get("/images/acme:img").json()["files"][0]["href"].startswith(str(world.folder))


def test_unreadable_files_are_reported_without_paths(world):
    alice = world.client("alice")
    gone = world.plant(world.roots["acme"] / "gone.tif", 5)
    assert alice.put("/images/acme:gone", json=image("acme", "gone", str(gone))).status_code == 200
    gone.write_bytes(b"II*\x00 cut short")
    for route in (TILE_PATH, "download.npy?scaling=raw", "raster_info"):
        answer = alice.get(f"/images/acme:gone/{route}")
        assert 400 <= answer.status_code < 500, answer.text
        assert str(world.folder) not in answer.text, answer.text


def test_an_open_server_checks_admin_writes_too(empty_client, tmp_path):
    """Without keys everyone is admin: hrefs no product could open are refused at once."""
    assert empty_client.post("/products", json=product("ops")).status_code == 201
    good = write(tmp_path / "files" / "a.tif", numpy.full((1, 256, 256), 9, "uint16"))
    for href in ("<VRTDataset/>", "/vsicurl/http://127.0.0.1:9/x.tif", "relative.tif"):
        response = empty_client.put("/images/ops:x", json=image("ops", "x", href))
        assert response.status_code == 403, (href, response.text)
        assert response.json()["detail"] == f"files[0]: {REFUSED}"
    response = empty_client.put("/images/ops:x", json=image("ops", "x", str(good)))
    assert response.status_code == 200, response.text
    assert empty_client.get(f"/images/ops:x/{TILE_PATH}").status_code == 200
