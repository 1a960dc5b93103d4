"""The Catalog guide's blob round trip through the client against a live server: upload,
get, search, download, share, delete (issue 24 parts 3 and 5)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from shapely.geometry import box, mapping

from tests.conftest import LiveServer, make_settings
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.client import BadRequestError, Blob, CatalogClient, ForbiddenError
from tileserver.client import properties as p

DATA = bytes(range(256)) * 4096 + b"end"  # 1 MiB and a bit: several chunks each way


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    store = SQLiteStore(folder / "catalog.db")
    tokens = {}
    for user, org in (("alice", "acme"), ("bob", "acme"), ("carol", "other")):
        key, tokens[user] = new_key(user, org)
        store.put_key(key)
    app = create_app(
        make_settings(folder, key_cache_seconds=0, max_blob_bytes=2 * len(DATA)), store=store
    )
    with LiveServer(app) as server:
        made = {u: CatalogClient(server.url, api_key=t) for u, t in tokens.items()}
        yield made
        for client in made.values():
            client.close()
    store.close()


def test_blob_round_trip(clients, tmp_path):
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    aoi = box(10, 50, 11, 51)
    blob = Blob(
        client=alice, name="fields/2024/a.bin", tags=["fields", "2024"], geometry=aoi
    ).upload_data(DATA)
    assert blob.state == "saved" and blob.namespace == "acme:alice"
    assert blob.size_bytes == len(DATA)
    assert blob.hash == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert blob.owners == ["user:alice"]

    source = tmp_path / "b.txt"
    source.write_bytes(b"second blob\n" * 10)
    second = Blob(client=alice, name="fields/2023/b.txt", tags=["fields"]).upload(str(source))
    third = Blob(client=alice, name="notes.txt", namespace="acme").upload_data("text")
    assert third.namespace == "acme" and third.data() == b"text"

    # get: by the server's id, by the Catalog's id, by name
    assert Blob.get(blob.id, client=alice).name == "fields/2024/a.bin"
    assert Blob.get("data/acme:alice/fields/2024/a.bin", client=alice).id == blob.id
    assert Blob.get(name="fields/2023/b.txt", client=alice).id == second.id
    assert Blob.get(name="nothing", client=alice) is None

    # the bytes, whole, by range, streamed, to a file
    assert blob.data() == DATA
    assert blob.data(range=(100, 199)) == DATA[100:200]
    assert blob.data(range="bytes=5-9") == DATA[5:10]
    assert blob.data(range=(-3,)) == b"end"
    assert b"".join(blob.iter_data(chunk_size=65536)) == DATA
    target = blob.download(str(tmp_path / "out.bin"))
    assert open(target, "rb").read() == DATA
    assert second.data() == source.read_bytes()

    # searches: the server's filters, and others applied here
    def names(search) -> list[str]:
        return sorted(b.name for b in search)

    fields = Blob.search(client=alice).filter(p.name.prefix("fields/"))
    assert names(fields) == ["fields/2023/b.txt", "fields/2024/a.bin"]
    assert names(fields.filter(p.tags == "2024")) == ["fields/2024/a.bin"]
    assert names(Blob.search(client=alice).intersects(box(10.5, 50.5, 12, 52))) == [
        "fields/2024/a.bin"
    ]
    assert names(Blob.search(client=alice).intersects(mapping(box(0, 0, 1, 1)))) == []
    assert names(Blob.search(client=alice).filter(p.namespace == "acme")) == ["notes.txt"]
    assert names(Blob.search(client=alice).filter(p.size_bytes > 1000)) == ["fields/2024/a.bin"]
    since = second.created
    assert names(Blob.search(client=alice).filter(p.created >= since)) == [
        "fields/2023/b.txt",
        "notes.txt",
    ]
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert Blob.search(client=alice).filter(p.created >= tomorrow).count() == 0
    ordered = Blob.search(client=alice).sort("name").limit(2)
    assert [b.name for b in ordered] == ["fields/2023/b.txt", "fields/2024/a.bin"]

    # sharing: readers read, strangers see nothing
    assert Blob.get(blob.id, client=bob) is None
    assert Blob.search(client=carol).count() == 0
    blob.readers = ["user:bob"]
    blob.description = "shared with bob"
    blob.save()
    as_bob = Blob.get(blob.id, client=bob)
    assert as_bob.description == "shared with bob" and as_bob.data(range=(0, 9)) == DATA[:10]
    as_bob.description = "bob was here"
    with pytest.raises(ForbiddenError):
        as_bob.save()
    with pytest.raises(ForbiddenError):
        as_bob.delete()
    assert Blob.get(blob.id, client=carol) is None

    # an upload the server refuses leaves nothing behind
    with pytest.raises(BadRequestError, match="larger than"):
        Blob(client=alice, name="too-big").upload_data(DATA * 3)
    assert Blob.get(name="too-big", client=alice) is None
    with pytest.raises(ValueError, match="hash"):
        Blob(client=alice, name="x", hash="0" * 32).upload_data(b"x")

    for made in (blob, second, third):
        made.delete()
    assert Blob.search(client=alice).count() == 0
    assert Blob.get(blob.id, client=alice) is None
