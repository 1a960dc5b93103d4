"""What only the SQLite store has: schema migration, its R*Tree and statistics upkeep.

What both stores share is tested on both in test_stores.py.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from shapely.geometry import box, mapping

from tileserver.catalog.models import Image, Product
from tileserver.catalog.search import SearchQuery
from tileserver.catalog.sqlite import MIGRATIONS, SCHEMA, SCHEMA_VERSION, SQLiteStore, _statements

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


def test_replacing_an_image_moves_it_in_the_index(store):
    store.put_images([image("a", box(0, 0, 1, 1))])
    store.put_images([image("a", box(20, 20, 21, 21))])
    assert found(store, bbox=[0.2, 0.2, 0.8, 0.8]) == []
    assert found(store, bbox=[20.2, 20.2, 20.8, 20.8]) == ["a"]
    store.delete_image("p:a")
    assert found(store, bbox=[20.2, 20.2, 20.8, 20.8]) == []
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT count(*) FROM images_rtree").fetchone() == (0,)


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


def test_version_4_searches_live_on_and_generations_are_per_product(tmp_path):
    path = tmp_path / "v4.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    for version in (2, 3, 4):
        for statement in _statements(MIGRATIONS[version]):
            db.execute(statement)
    db.execute("PRAGMA user_version = 4")
    query = SearchQuery(collections=["p"])
    db.execute(
        "INSERT INTO searches VALUES (?, ?, ?)",
        (query.search_id(), json.dumps(query.identity()), "2020-01-01T00:00:00.000000Z"),
    )
    db.execute("UPDATE meta SET value = 41 WHERE key = 'generation'")
    db.close()

    store = SQLiteStore(path)  # registered in 2020, unused since: alive as of the upgrade
    registered = store.get_search(query.search_id())
    assert registered.created.year == 2020 and registered.last_used.year > 2020
    assert store.generations() == {}
    store.put_product(Product(id="p", bands=BANDS))
    assert store.generations() == {"p": 1}
    assert (
        sqlite3.connect(path).execute("SELECT * FROM meta WHERE key = 'generation'").fetchall()
        == []
    )
    store.close()


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


def test_a_thread_that_ends_closes_its_connection(tmp_path):
    """Server thread pools retire idle threads: their connections must not pile up.

    SQLite keeps the descriptors of a closed connection for reuse while other connections
    of the process hold locks on the file, so the count levels off instead of dropping.
    """
    import gc
    import os
    import threading

    from tileserver.catalog.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "catalog.db")
    store.list_products()  # this thread's connection, kept
    counts = []
    for _ in range(3):
        threads = [threading.Thread(target=store.list_products) for _ in range(25)]
        for thread in threads:
            thread.start()
            thread.join()
        del threads, thread
        gc.collect()
        assert len(store._connections) == 1
        counts.append(len(os.listdir("/proc/self/fd")))
    assert counts[0] == counts[1] == counts[2], counts  # 75 threads, no growth after the first 25
    store.close()
