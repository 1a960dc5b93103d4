"""The SQLite store's search side: schema migration, exact spatial lookups, index upkeep."""

from __future__ import annotations

import json
import sqlite3

import pytest
from shapely.geometry import box, mapping

from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.sqlite import SCHEMA, SCHEMA_VERSION, SQLiteStore

BANDS = [{"name": "b1", "data_type": "Byte", "data_range": [0, 255]}]


def image(name: str, geometry, when="2024-05-01T10:00:00Z", **extra) -> Image:
    return Image(
        name=name,
        product_id="p",
        acquired=when,
        geometry=mapping(geometry),
        files=[{"href": f"/data/{name}.tif", "size": 1000}],
        **extra,
    )


@pytest.fixture()
def store(tmp_path):
    s = SQLiteStore(tmp_path / "catalog.db")
    s.put_product(Product(id="p", bands=BANDS))
    yield s
    s.close()


def found(store, **query) -> list[str]:
    return [i.name for i in store.search(SearchQuery(limit=100, **query)).images]


def test_spatial_search_is_exact_not_bbox(store):
    # a thin diagonal strip: its bbox covers the query box, the strip itself does not
    strip = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [0.1, 0], [10, 9.9], [10, 10], [9.9, 10], [0, 0.1], [0, 0]]],
    }
    store.put_images(
        [
            Image(
                name="strip",
                product_id="p",
                acquired="2024-05-01T00:00:00Z",
                geometry=strip,
                files=[{"href": "/x.tif"}],
            )
        ]
    )
    store.put_images([image("square", box(7, 1, 9, 3))])
    assert found(store, bbox=[7.5, 1.5, 8.5, 2.5]) == ["square"]  # inside strip's bbox
    assert found(store, bbox=[4.9, 4.9, 5.1, 5.1]) == ["strip"]  # on the diagonal
    assert [i.name for i in store.tile_images(SearchQuery(), (7.5, 1.5, 8.5, 2.5), 10)] == [
        "square"
    ]


def test_antimeridian_bbox(store):
    store.put_images([image("east", box(179, 0, 179.5, 1)), image("west", box(-179.5, 0, -179, 1))])
    store.put_images([image("middle", box(0, 0, 1, 1))])
    assert sorted(found(store, bbox=[178, -1, -178, 2])) == ["east", "west"]


def test_replacing_an_image_moves_it_in_the_index(store):
    store.put_images([image("a", box(0, 0, 1, 1))])
    store.put_images([image("a", box(20, 20, 21, 21))])
    assert found(store, bbox=[0.2, 0.2, 0.8, 0.8]) == []
    assert found(store, bbox=[20.2, 20.2, 20.8, 20.8]) == ["a"]
    store.delete_image("p:a")
    assert found(store, bbox=[20.2, 20.2, 20.8, 20.8]) == []
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT count(*) FROM images_rtree").fetchone() == (0,)


def test_generation_grows_with_writes_only(store):
    before = store.generation()
    found(store)
    store.summary(SearchQuery())
    assert store.generation() == before
    store.put_images([image("a", box(0, 0, 1, 1))])
    after = store.generation()
    assert after > before
    store.register_search(SearchQuery(collections=["p"]))  # a new search is no image change
    store.delete_image("p:a")
    assert store.generation() > after


def test_queryables_follow_the_properties_images_carry(store):
    store.put_images(
        [image("a", box(0, 0, 1, 1), properties={"sat:orbit": 12, "mode": "IW", "ok": True})]
    )
    kinds = {n: q.type for n, q in store.queryables("p").items()}
    assert kinds["sat:orbit"] == "integer" and kinds["mode"] == "string"
    assert kinds["ok"] == "boolean" and kinds["eo:cloud_cover"] == "number"
    store.put_images([image("b", box(0, 0, 1, 1), properties={"sat:orbit": 13})])
    assert found(store, filter='"sat:orbit" > 12') == ["b"]


def test_a_failed_batch_writes_nothing(store):
    good = image("good", box(0, 0, 1, 1))
    orphan = Image(
        name="orphan",
        product_id="missing",
        acquired="2024-01-01T00:00:00Z",
        geometry=mapping(box(0, 0, 1, 1)),
        files=[{"href": "/x.tif"}],
    )
    with pytest.raises(Exception, match="missing"):
        store.put_images([good, orphan])
    assert found(store) == []
    assert sqlite3.connect(store.path).execute("SELECT count(*) FROM images_rtree").fetchone() == (
        0,
    )


def test_version_1_catalog_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)  # the tables as the first release created them
    product = Product(id="p", bands=BANDS)
    db.execute("INSERT INTO products VALUES (?, ?)", ("p", product.model_dump_json()))
    for name, geometry, props in (
        ("a", box(0, 0, 1, 1), {"platform": "x"}),
        ("b", box(5, 5, 6, 6), {"platform": "y", "orbit": 3}),
    ):
        old = image(name, geometry, properties=props)
        db.execute(
            "INSERT INTO images (id, product_id, name, acquired, cloud_cover, minx, miny, maxx,"
            " maxy, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                old.id,
                "p",
                name,
                "2024-05-01T10:00:00.000000Z",
                None,
                *old.bbox,
                old.model_dump_json(),
            ),
        )
    db.commit()
    db.close()

    store = SQLiteStore(path)
    assert found(store, bbox=[5.5, 5.5, 5.6, 5.6]) == ["b"]
    assert store.summary(SearchQuery()).bytes == 2000
    assert "orbit" in store.queryables()
    assert found(store, filter="orbit = 3") == ["b"]
    store.close()
    again = SQLiteStore(path)  # reopening does not migrate twice
    assert sorted(found(again)) == ["a", "b"]
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION
    assert json.loads(again.get_image("p:a").model_dump_json())["name"] == "a"
    again.close()


def test_counts_stop_at_the_limit_and_paging_still_works(store, monkeypatch):
    import tileserver.catalog.sqlite as sqlite_store

    store.put_images([image(f"i{n}", box(n, 0, n + 1, 1)) for n in range(5)])
    assert store.search(SearchQuery(limit=2)).matched == 5
    monkeypatch.setattr(sqlite_store, "COUNT_LIMIT", 3)
    page = store.search(SearchQuery(limit=2))
    assert page.matched is None and page.next_token
    seen = [i.name for i in page.images]
    while page.next_token:
        page = store.search(SearchQuery(limit=2, token=page.next_token))
        seen += [i.name for i in page.images]
    assert sorted(seen) == [f"i{n}" for n in range(5)]
    assert store.search(SearchQuery(limit=2), count=False).matched is None


def test_statistics_are_gathered_as_the_catalog_grows(store):
    db = sqlite3.connect(store.path)

    def analyzed() -> bool:
        found = db.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'")
        return (
            found.fetchone() is not None
            and db.execute("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'images'").fetchone()[0]
            > 0
        )

    store.put_images([image(f"i{n}", box(0, 0, 1, 1)) for n in range(10)])
    assert not analyzed()  # a small catalog plans well without statistics
    store.put_images([image(f"j{n}", box(0, 0, 1, 1)) for n in range(1200)])
    assert analyzed()
