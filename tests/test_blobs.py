"""Blobs (issue 24 part 3): named byte objects with the products' access lists, streamed and
checked uploads, downloads whole or by range, searches, on both catalog stores."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from shapely.geometry import Point, box, mapping, shape

from tests.conftest import make_settings
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.catalog.store import open_store

DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def stored_files(folder: Path) -> list[Path]:
    """Every file under DATA_DIR/blobs (staging included)."""
    root = folder / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class Server:
    """An app with keys for an owner, a reader, a writer and a stranger (another org)."""

    def __init__(self, folder: Path, store=None, **settings):
        self.folder = folder
        self.store = store or SQLiteStore(folder / "catalog.db")
        self.tokens = {}
        for user, org in (
            ("owner", "acme"),
            ("reader", "acme"),
            ("writer", "acme"),
            ("stranger", "other"),
        ):
            key, token = new_key(user, org)
            self.store.put_key(key)
            self.tokens[user] = token
        self.app = create_app(
            make_settings(folder, key_cache_seconds=0, **settings), store=self.store
        )

    def client(self, user: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return TestClient(self.app, headers=headers)

    def create(self, client: TestClient, data: bytes | None = None, **body) -> dict:
        """Create a blob (and send its bytes): its record."""
        answer = client.post("/blobs", json=body)
        assert answer.status_code == 201, answer.text
        record = answer.json()
        if data is not None:
            sent = client.put(record["data_url"], content=data)
            assert sent.status_code == 200, sent.text
            record = sent.json()
        return record


@pytest.fixture()
def server(tmp_path) -> Server:
    return Server(tmp_path)


def test_round_trip(server):
    owner = server.client("owner")
    record = server.create(
        owner,
        name="reports/2024/field.csv",
        tags=["csv", "fields"],
        description="one field",
        size=len(DATA),
        md5=md5(DATA),
    )
    assert record["namespace"] == "acme:owner"  # the Catalog's default: org and user
    assert record["owners"] == ["user:owner"]
    assert record["storage_state"] == "pending" and record["href"] is None
    assert owner.get(record["data_url"]).status_code == 409  # no bytes yet

    sent = owner.put(record["data_url"], content=DATA)
    assert sent.status_code == 200, sent.text
    assert sent.json()["storage_state"] == "available"
    assert sent.json()["size"] == len(DATA) and sent.json()["md5"] == md5(DATA)
    got = owner.get(f"/blobs/{record['id']}").json()
    assert got["href"] == record["data_url"] and got["size"] == len(DATA)

    whole = owner.get(record["data_url"])
    assert whole.status_code == 200 and whole.content == DATA
    assert whole.headers["etag"] == f'"{md5(DATA)}"'
    assert whole.headers["content-type"] == "application/octet-stream"
    assert 'filename="field.csv"' in whole.headers["content-disposition"]
    part = owner.get(record["data_url"], headers={"Range": "bytes=300-555"})
    assert part.status_code == 206 and part.content == DATA[300:556]
    assert owner.get(record["data_url"], headers={"Range": "bytes=99999-"}).status_code == 416

    # stored under its generated id only: nothing of the name in the path
    (file,) = stored_files(server.folder)
    assert file.parent == server.folder / "blobs" and file.name.startswith(record["id"])
    assert file.read_bytes() == DATA

    assert owner.put(record["data_url"], content=b"again").status_code == 409  # sent once
    assert owner.post("/blobs", json={"name": "reports/2024/field.csv"}).status_code == 409

    assert owner.delete(f"/blobs/{record['id']}").status_code == 204
    assert owner.get(f"/blobs/{record['id']}").status_code == 404
    assert owner.get(record["data_url"]).status_code == 404
    assert stored_files(server.folder) == []
    # its name is free again
    assert owner.post("/blobs", json={"name": "reports/2024/field.csv"}).status_code == 201


def test_wrong_md5_or_size_is_400_and_nothing_is_stored(server):
    owner = server.client("owner")
    record = server.create(owner, name="x.bin", md5=md5(b"something else"))
    answer = owner.put(record["data_url"], content=DATA)
    assert answer.status_code == 400 and "MD5" in answer.json()["detail"]
    assert stored_files(server.folder) == []
    assert owner.get(f"/blobs/{record['id']}").json()["storage_state"] == "pending"

    sized = server.create(owner, name="y.bin", size=len(DATA) + 1)
    answer = owner.put(sized["data_url"], content=DATA)
    assert answer.status_code == 400 and "'size'" in answer.json()["detail"]
    assert stored_files(server.folder) == []
    # the right bytes are taken afterwards
    assert owner.put(sized["data_url"], content=DATA + b"!").status_code == 200
    assert owner.get(sized["data_url"]).content == DATA + b"!"


def test_oversize_is_413_and_nothing_is_stored(tmp_path):
    server = Server(tmp_path, max_blob_bytes=1000)
    owner = server.client("owner")
    assert owner.post("/blobs", json={"name": "big", "size": 1001}).status_code == 413
    record = server.create(owner, name="big")
    declared = owner.put(record["data_url"], content=DATA)  # Content-Length: refused at once
    assert declared.status_code == 413 and "1000 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: counted as the bytes arrive
        for _ in range(20):
            yield b"x" * 100

    counted = owner.put(record["data_url"], content=chunks())
    assert counted.status_code == 413
    assert stored_files(tmp_path) == []
    assert owner.get(f"/blobs/{record['id']}").json()["storage_state"] == "pending"
    assert owner.put(record["data_url"], content=b"x" * 1000).status_code == 200


def test_access_lists(server):
    owner, reader, writer = (server.client(u) for u in ("owner", "reader", "writer"))
    stranger, anonymous = server.client("stranger"), server.client(None)
    record = server.create(
        owner, DATA, name="shared.bin", readers=["user:reader"], writers=["user:writer"]
    )
    blob, url = f"/blobs/{record['id']}", record["data_url"]

    assert reader.get(blob).status_code == 200 and reader.get(url).content == DATA
    assert reader.patch(blob, json={"description": "mine"}).status_code == 403
    assert reader.delete(blob).status_code == 403
    pending = server.create(
        owner, name="pending.bin", readers=["user:reader"], writers=["user:writer"]
    )
    assert reader.put(pending["data_url"], content=b"x").status_code == 403

    # writers change metadata, not the lists; only owners delete
    assert writer.patch(blob, json={"description": "w"}).json()["description"] == "w"
    assert writer.patch(blob, json={"readers": ["public"]}).status_code == 403
    assert writer.delete(blob).status_code == 403
    assert writer.put(pending["data_url"], content=b"w").status_code == 200

    # hidden is missing: the same 404 and text
    missing = "0" * 32
    for method, path in (
        ("GET", blob),
        ("GET", url),
        ("PATCH", blob),
        ("DELETE", blob),
        ("PUT", url),
    ):
        kwargs = {"json": {}} if method == "PATCH" else {}
        hidden = stranger.request(method, path, **kwargs)
        absent = stranger.request(method, path.replace(record["id"], missing), **kwargs)
        assert hidden.status_code == absent.status_code == 404, (method, path)
        assert hidden.json()["detail"].replace(record["id"], missing) == absent.json()["detail"]
    assert stranger.get("/blobs").json()["blobs"] == []
    assert [b["name"] for b in reader.get("/blobs").json()["blobs"]] == [
        "pending.bin",
        "shared.bin",
    ]
    assert anonymous.get(blob).status_code == 401

    # namespaces are the caller's organisation's
    answer = stranger.post("/blobs", json={"name": "x", "namespace": "acme:mine"})
    assert answer.status_code == 403 and "namespace" in answer.json()["detail"]
    assert stranger.post("/blobs", json={"name": "x", "namespace": "other:x"}).status_code == 201

    # an owner shares it with everyone, then keeps at least one owner
    assert owner.patch(blob, json={"readers": ["public"]}).status_code == 200
    assert stranger.get(url).content == DATA
    assert owner.patch(blob, json={"owners": []}).status_code == 403
    assert owner.delete(blob).status_code == 204


def test_hostile_names_and_ids(server):
    owner = server.client("owner")
    for name in (
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a/",
        "a//b",
        "./a",
        "a\x00b",
        "x" * 2000,
        "a b",
        "",
        "é",
    ):
        answer = owner.post("/blobs", json={"name": name})
        assert answer.status_code == 422, name
        assert "name" in answer.json()["detail"], name
    for namespace in ("../acme", "/acme", "acme/x", "acme:", "acme\x00"):
        answer = owner.post("/blobs", json={"name": "n", "namespace": namespace})
        assert answer.status_code == 422 and "namespace" in answer.json()["detail"], namespace
    answer = owner.post("/blobs", json={"name": "n" * 970, "namespace": "acme:owner"})
    assert answer.status_code == 400 and "979" in answer.json()["detail"]
    for blob_id in ("%2E%2E", "..%2F..%2Fetc%2Fpasswd", "x" * 5000, "0" * 31 + "g"):
        assert owner.get(f"/blobs/{blob_id}").status_code == 404, blob_id
        assert owner.get(f"/blobs/{blob_id}/data").status_code == 404, blob_id
    bad = owner.get("/blobs", params={"name": "a\x00"})
    assert bad.status_code == 400 and "name" in bad.json()["detail"]
    assert stored_files(server.folder) == []


@pytest.fixture()
def any_server(tmp_path, catalog_url) -> Server:
    """A server over each catalog store (SQLite, pgSTAC)."""
    store = open_store(catalog_url)
    yield Server(tmp_path, store=store)
    store.close()


def test_search_filters(any_server):
    owner = any_server.client("owner")
    specs = [
        ("maps/a.tif", ["map", "2024"], box(0, 0, 1, 1)),
        ("maps/b.tif", ["map"], box(10, 10, 11, 11)),
        ("maps/sub/c.tif", ["map", "2024", "final"], None),
        ("notes.txt", ["2024"], box(0.5, 0.5, 3, 3)),
        ("mapsx", [], box(-5, -5, -4, -4)),
        ("z.txt", [], Point(1.5, 1.5, 100.0)),  # 3D: PostGIS keeps it 2D
    ]
    records = []
    for name, tags, geometry in specs:
        body = {"name": name, "tags": tags}
        if geometry is not None:
            body["geometry"] = mapping(geometry)
        records.append(any_server.create(owner, name.encode(), **body))
    other = any_server.create(owner, b"d", name="maps/a.tif", storage_type="dyncomp")
    past = (datetime.now(UTC) - timedelta(1)).isoformat()
    assert owner.post("/blobs", json={"name": "old", "expires": past}).status_code == 400
    old = any_server.create(owner, b"e", name="maps/old.tif")
    assert owner.patch(f"/blobs/{old['id']}", json={"expires": past}).status_code == 200
    assert owner.get(f"/blobs/{old['id']}").status_code == 404  # expired: gone
    everything = [*records, other]  # the expired one is never found

    def names(**params) -> list[str]:
        answer = owner.get("/blobs", params=params)
        assert answer.status_code == 200, answer.text
        return [(b["name"], b["storage_type"]) for b in answer.json()["blobs"]]

    def expected(keep) -> list[str]:
        newest_first = sorted(everything, key=lambda r: (r["created"], r["id"]), reverse=True)
        return [(r["name"], r["storage_type"]) for r in newest_first if keep(r)]

    assert names() == expected(lambda r: True)
    assert names(prefix="maps/") == expected(lambda r: r["name"].startswith("maps/"))
    assert names(name="maps/a.tif") == expected(lambda r: r["name"] == "maps/a.tif")
    assert names(name="maps/a.tif", storage_type="data") == [("maps/a.tif", "data")]
    assert names(tags=["map", "2024"]) == expected(lambda r: {"map", "2024"} <= set(r["tags"]))
    area = box(0.8, 0.8, 2, 2)
    assert names(intersects=json.dumps(mapping(area))) == expected(
        lambda r: r["geometry"] is not None and shape(r["geometry"]).intersects(area)
    )
    assert len(names(intersects=json.dumps(mapping(area)))) == 3
    # an open ring is closed as RFC 7946 writes it (PostGIS refuses it open)
    ring = [[0.8, 0.8], [2, 0.8], [2, 2], [0.8, 2]]
    opened = json.dumps({"type": "Polygon", "coordinates": [ring]})
    assert names(intersects=opened) == names(intersects=json.dumps(mapping(area)))
    assert names(namespace="acme:owner", prefix="maps/s") == [("maps/sub/c.tif", "data")]
    assert names(namespace="acme") == []
    middle = records[2]["created"]
    assert names(start=middle) == expected(lambda r: r["created"] >= middle)
    assert names(end=middle) == expected(lambda r: r["created"] < middle)

    # pages of 2 give every blob once, in order
    seen, params = [], {"limit": 2}
    while True:
        page = owner.get("/blobs", params=params).json()
        seen += [(b["name"], b["storage_type"]) for b in page["blobs"]]
        if not page["next_token"]:
            break
        params["token"] = page["next_token"]
    assert seen == expected(lambda r: True)

    for params, word in (
        ({"intersects": "{"}, "intersects"),
        ({"intersects": json.dumps({"type": "Point", "coordinates": [500, 0]})}, "intersects"),
        ({"intersects": json.dumps({"type": "Feature", "geometry": mapping(area)})}, "intersects"),
        ({"token": "nope"}, "token"),
        ({"tags": ["x" * 1001]}, "tags"),
        ({"limit": 0}, "limit"),
        ({"start": "yesterday"}, "start"),
    ):
        answer = owner.get("/blobs", params=params)
        assert answer.status_code in (400, 422) and word in answer.json()["detail"], params

    # purge (expired) and delete on this store too: records and files go
    expired_file = any_server.folder / "blobs" / f"{old['id']}."
    assert any(str(f).startswith(str(expired_file)) for f in stored_files(any_server.folder))
    any_server.create(owner, name="trigger")
    assert not any(str(f).startswith(str(expired_file)) for f in stored_files(any_server.folder))
    assert owner.delete(f"/blobs/{records[0]['id']}").status_code == 204
    assert owner.get(f"/blobs/{records[0]['id']}").status_code == 404
    assert ("maps/a.tif", "data") not in names()


def test_expired_blobs_and_stale_staging_are_purged(server):
    owner = server.client("owner")
    record = server.create(owner, DATA, name="soon-gone")
    (file,) = stored_files(server.folder)
    staging = server.folder / "blobs" / ".staging"
    stale, fresh = staging / f"{'a' * 32}.{'b' * 32}", staging / f"{'c' * 32}.{'d' * 32}"
    stale.write_bytes(b"cut off")
    fresh.write_bytes(b"arriving")
    day_ago = datetime.now(UTC).timestamp() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert owner.patch(f"/blobs/{record['id']}", json={"expires": past}).status_code == 200
    assert owner.get(f"/blobs/{record['id']}").status_code == 404
    assert file.exists()  # until the next create purges it
    server.create(owner, name="next")
    assert not file.exists() and not stale.exists() and fresh.exists()
    # its name is free again
    assert owner.post("/blobs", json={"name": "soon-gone"}).status_code == 201


def test_of_two_uploads_of_one_blob_one_lands(server):
    """The record turns available only while pending: the second upload's bytes go."""
    from tileserver.catalog.access import Principal
    from tileserver.catalog.blobs import BlobAccess, BlobRequest
    from tileserver.catalog.store import Conflict

    access = BlobAccess(server.store.blobs(), Principal(user="owner", org="acme"))
    blob = access.create(BlobRequest(name="raced"))
    files = server.app.state.blob_files
    first, second = files.receiver(blob), files.receiver(blob)
    first.write(b"first")
    second.write(b"second")
    first.finish()
    second.finish()
    assert files.commit(access.store, first).size == 5
    with pytest.raises(Conflict):
        files.commit(access.store, second)
    (file,) = stored_files(server.folder)
    assert file.read_bytes() == b"first"
    assert access.get(blob.id).md5 == md5(b"first")
