"""Both stores, same data, same answers: filters, order, paging, summaries, tile lookups.

Every test runs on the SQLite store and on the pgSTAC store (the `store` fixture is
parametrised in conftest). Filters are checked against cql2's own evaluator on the items
of test_cql2sql, so each store is held to an answer worked out without either of them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import shapely
from shapely.geometry import box, mapping, shape

from tests.catalog.test_cql2sql import (
    ITEMS,
    SCALAR_CASES,
    SPATIAL_CASES,
    TEMPORAL_CASES,
    _cql2,
)
from tileserver.catalog.cql2sql import FilterError, parse_filter
from tileserver.catalog.keys import new_key
from tileserver.catalog.migrate import copy_catalog
from tileserver.catalog.models import Image, Product
from tileserver.catalog.pgstac import PgstacStore
from tileserver.catalog.search import SearchLimits, SearchQuery, TileLookup, select_for_tile
from tileserver.catalog.store import Conflict, NotFound, open_store

BANDS = [{"name": "b1", "data_type": "Byte", "data_range": [0, 255]}]


def image(name: str, geometry, when="2024-05-01T10:00:00Z", product="p", **extra) -> Image:
    return Image(
        name=name,
        product_id=product,
        acquired=when,
        geometry=mapping(geometry),
        files=[{"href": f"/data/{name}.tif", "size": 1000}],
        **extra,
    )


@pytest.fixture()
def p_store(store):
    store.put_product(Product(id="p", bands=BANDS))
    return store


def doc(record) -> dict:
    """A record as JSON (tuples and lists, time zone objects compare alike)."""
    return record.model_dump(mode="json")


def found(store, **query) -> list[str]:
    return [i.name for i in store.search(SearchQuery(limit=100, **query)).images]


# ------------------------------------------------------------------ the CQL2 items in both


def as_image(item: dict) -> Image:
    """A test_cql2sql item as an image (registration times are the store's)."""
    properties = {
        k: v
        for k, v in item["properties"].items()
        if k not in ("datetime", "eo:cloud_cover", "created")
    }
    return Image(
        name=item["id"],
        product_id=item["collection"],
        acquired=item["properties"]["datetime"],
        cloud_cover=item["properties"]["eo:cloud_cover"],
        geometry=item["geometry"],
        files=[{"href": f"/data/{item['id']}.tif", "size": 1000 + int(item["id"][-2:])}],
        properties=properties,
    )


WITH_FOOTPRINT = [i for i in ITEMS if i["geometry"] is not None]
NAMES = {i["id"] for i in WITH_FOOTPRINT}


@pytest.fixture()
def cql2_store(store):
    for product in ("s2", "l8", "planet"):
        store.put_product(Product(id=product, bands=BANDS))
    store.put_images([as_image(i) for i in WITH_FOOTPRINT])
    return store


def expected(expr: dict) -> set[str]:
    return _cql2(expr) & NAMES


def matches(store, expr) -> set[str]:
    page = store.search(SearchQuery(filter=expr, limit=1000))
    assert page.matched == len(page.images)
    return {i.name for i in page.images}


@pytest.mark.parametrize("text", [t for t in SCALAR_CASES if "created" not in t])
def test_scalar_filters_agree_with_cql2(cql2_store, text):
    expr = parse_filter(text, "cql2-text")
    assert matches(cql2_store, expr) == expected(expr)


@pytest.mark.parametrize(("op", "literal"), SPATIAL_CASES)
def test_spatial_filters_agree_with_cql2(cql2_store, op, literal):
    expr = parse_filter(f"{op.upper()}(geometry, {literal})", "cql2-text")
    assert matches(cql2_store, expr) == expected(expr)


@pytest.mark.parametrize(
    ("op", "literal"), [(op, lit) for op, lit, _, side in TEMPORAL_CASES if side == "instant"]
)
def test_temporal_filters_agree_with_cql2(cql2_store, op, literal):
    expr = parse_filter(f"{op.upper()}(datetime, {literal})", "cql2-text")
    assert matches(cql2_store, expr) == expected(expr)


def test_search_parameters_agree(cql2_store):
    cases = [
        ({"collections": ["s2", "planet"]}, lambda i: i["collection"] in ("s2", "planet")),
        ({"ids": ["img-01", "img-07"]}, lambda i: i["id"] in ("img-01", "img-07")),
        ({"bbox": [1, 1, 5, 3]}, lambda i: shape(i["geometry"]).intersects(box(1, 1, 5, 3))),
        (
            {"datetime": "2021-06-03"},
            lambda i: i["properties"]["datetime"].startswith("2021-06-03"),
        ),
        (
            {"datetime": "../2021-06-02T12:00:00Z"},
            lambda i: (
                datetime.fromisoformat(i["properties"]["datetime"])
                <= datetime.fromisoformat("2021-06-02T12:00:00+00:00")
            ),
        ),
        (
            {"intersects": mapping(box(20.5, 0.2, 21, 1))},
            lambda i: shape(i["geometry"]).intersects(box(20.5, 0.2, 21, 1)),
        ),
    ]
    for query, check in cases:
        want = {i["id"] for i in WITH_FOOTPRINT if check(i)}
        assert want and want != NAMES, query
        assert set(found(cql2_store, **query)) == want, query


def _key(item: dict, field: str):
    return item["properties"].get(field)


def sorted_like_postgres(field: str, descending: bool) -> list[str]:
    """The order both stores promise: the key (nulls last ascending, first descending),
    then datetime, id and collection, descending."""
    items = sorted(
        WITH_FOOTPRINT,
        key=lambda i: (i["properties"]["datetime"].replace("Z", ""), i["id"], i["collection"]),
        reverse=True,
    )
    present = [i for i in items if _key(i, field) is not None]
    missing = [i for i in items if _key(i, field) is None]
    present.sort(key=lambda i: _key(i, field), reverse=descending)
    ordered = missing + present if descending else present + missing
    return [i["id"] for i in ordered]


@pytest.mark.parametrize("sortby", ["eo:cloud_cover", "-eo:cloud_cover", "gsd", "-platform"])
def test_sort_order_and_paging_agree(cql2_store, sortby):
    field, descending = sortby.lstrip("-"), sortby.startswith("-")
    want = sorted_like_postgres(field, descending)
    query = SearchQuery.model_validate(
        {"sortby": [{"field": field, "direction": "desc" if descending else "asc"}], "limit": 7}
    )
    page, seen, pages = cql2_store.search(query), [], 0
    while True:
        seen += [i.name for i in page.images]
        pages += 1
        if page.next_token is None:
            break
        page = cql2_store.search(query.model_copy(update={"token": page.next_token}))
    assert seen == want and pages == 6
    back = cql2_store.search(query.model_copy(update={"token": page.prev_token}))
    assert [i.name for i in back.images] == want[28:35]


def test_default_order_is_newest_first_then_id_then_collection(store):
    for product in ("a", "a-b"):
        store.put_product(Product(id=product, bands=BANDS))
    same = "2024-01-01T00:00:00Z"
    store.put_images(
        [image("x", box(0, 0, 1, 1), same, "a"), image("x", box(0, 0, 1, 1), same, "a-b")]
        + [image("y", box(0, 0, 1, 1), same, "a"), image("z", box(0, 0, 1, 1), product="a")]
    )
    ids = [i.id for i in store.search(SearchQuery(limit=10)).images]
    assert ids == ["a:z", "a:y", "a-b:x", "a:x"]


def test_summaries_agree(cql2_store):
    summary = cql2_store.summary(SearchQuery(collections=["s2", "l8"]), "day")
    items = [i for i in WITH_FOOTPRINT if i["collection"] in ("s2", "l8")]
    assert summary.count == len(items)
    assert summary.bytes == sum(1000 + int(i["id"][-2:]) for i in items)
    assert summary.products == ["l8", "s2"]
    bounds = shapely.union_all([shape(i["geometry"]) for i in items]).bounds
    assert summary.bbox == pytest.approx(bounds)
    days: dict[str, int] = {}
    for i in items:
        day = i["properties"]["datetime"][:10]
        days[day] = days.get(day, 0) + 1
    got = {b.interval_start.date().isoformat(): b.count for b in summary.summaries}
    assert got == days
    assert summary.start == min(datetime.fromisoformat(i["properties"]["datetime"]) for i in items)


def test_unknown_properties_and_sort_keys_are_refused_alike(cql2_store):
    with pytest.raises(FilterError, match="nope"):
        cql2_store.search(SearchQuery(filter="nope = 3"))
    with pytest.raises(FilterError, match="cannot sort by 'geometry'"):
        cql2_store.search(SearchQuery(sortby=[{"field": "geometry"}]))
    with pytest.raises(FilterError, match="page token"):
        cql2_store.search(SearchQuery(token="garbage"))


# ------------------------------------------------------------------ records


def test_records_read_back_exactly(p_store):
    written = p_store.put_images(
        [image("a", box(0.123456789012, 0, 1, 1), cloud_cover=12.5, properties={"x": [1, 2]})]
    )[0]
    assert doc(p_store.get_image("p:a")) == doc(written)
    assert [doc(i) for i in p_store.search(SearchQuery(ids=["a"])).images] == [doc(written)]
    again = p_store.put_images([written.model_copy(update={"cloud_cover": 3.0})])[0]
    assert again.created == written.created and again.modified > written.modified
    with pytest.raises(NotFound):
        p_store.get_image("p:missing")
    with pytest.raises(Conflict):
        p_store.create_product(Product(id="p", bands=BANDS))
    with pytest.raises(Conflict, match="1 images"):
        p_store.delete_product("p")
    p_store.delete_product("p", cascade=True)
    assert p_store.list_products() == []
    with pytest.raises(NotFound):
        p_store.get_image("p:a")


def test_list_images_pages_newest_first(p_store):
    start = datetime.fromisoformat("2024-01-01T00:00:00+00:00")
    p_store.put_images(
        [image(f"i{n}", box(0, 0, 1, 1), start + timedelta(days=n % 4)) for n in range(10)]
    )
    page, names = p_store.list_images("p", limit=3), []
    while True:
        names += [i.name for i in page.images]
        if page.next_token is None:
            break
        page = p_store.list_images("p", limit=3, token=page.next_token)
    want = sorted((f"i{n}" for n in range(10)), key=lambda n: (int(n[1:]) % 4, n), reverse=True)
    assert names == want
    assert p_store.count_images("p") == 10


def test_spatial_search_is_exact_not_bbox(p_store):
    # a thin diagonal strip: its bbox covers the query box, the strip itself does not
    strip = shapely.Polygon([(0, 0), (0.1, 0), (10, 9.9), (10, 10), (9.9, 10), (0, 0.1)])
    p_store.put_images([image("strip", strip), image("square", box(7, 1, 9, 3))])
    assert found(p_store, bbox=[7.5, 1.5, 8.5, 2.5]) == ["square"]  # inside strip's bbox
    assert found(p_store, bbox=[4.9, 4.9, 5.1, 5.1]) == ["strip"]  # on the diagonal
    tile = p_store.tile_images(SearchQuery(), (7.5, 1.5, 8.5, 2.5), TileLookup(limit=10))
    assert [i.name for i in tile] == ["square"]


def test_antimeridian_bbox(p_store):
    p_store.put_images(
        [
            image("east", box(179, 0, 179.5, 1)),
            image("west", box(-179.5, 0, -179, 1)),
            image("middle", box(0, 0, 1, 1)),
        ]
    )
    assert sorted(found(p_store, bbox=[178, -1, -178, 2])) == ["east", "west"]


def test_replacing_an_image_moves_it_in_the_index(p_store):
    p_store.put_images([image("a", box(0, 0, 1, 1))])
    p_store.put_images([image("a", box(20, 20, 21, 21))])
    assert found(p_store, bbox=[0.2, 0.2, 0.8, 0.8]) == []
    assert found(p_store, bbox=[20.2, 20.2, 20.8, 20.8]) == ["a"]
    p_store.delete_image("p:a")
    assert found(p_store, bbox=[20.2, 20.2, 20.8, 20.8]) == []


def test_generation_grows_with_writes_only(p_store):
    before = p_store.generation()
    found(p_store)
    p_store.summary(SearchQuery())
    assert p_store.generation() == before
    p_store.put_images([image("a", box(0, 0, 1, 1))])
    after = p_store.generation()
    assert after > before
    p_store.delete_image("p:a")
    assert p_store.generation() > after


def test_each_product_has_its_own_generation(p_store):
    p_store.put_product(Product(id="q", bands=BANDS))
    start = p_store.generations()
    p_store.put_images([image("a", box(0, 0, 1, 1))])
    after = p_store.generations()
    assert after["p"] > start["p"] and after["q"] == start["q"]
    assert p_store.generation(["q"]) == start["q"]
    assert p_store.generation(["p", "q"]) > start["p"] + start["q"]
    assert p_store.generation() == sum(after.values()) and p_store.generation([]) == 0
    moves = [
        lambda: p_store.put_images([image("b", box(0, 0, 1, 1), product="q")]),
        lambda: p_store.delete_image("q:b"),
        lambda: p_store.put_product(Product(id="q", bands=[{**BANDS[0], "name": "b2"}])),
        lambda: p_store.delete_product("q"),
        lambda: p_store.put_product(Product(id="q", bands=BANDS)),  # the same id again
    ]
    for move in moves:
        before = p_store.generations()
        move()
        now = p_store.generations()
        assert now["q"] > before.get("q", 0) and now["p"] == before["p"]
    assert p_store.generations(["nope"]) == {}


def test_registering_a_search_moves_no_generation(p_store):
    p_store.put_images([image("a", box(0, 0, 1, 1))])
    before = p_store.generations()
    for n in range(5):
        query = SearchQuery(collections=["p"], filter=f"eo:cloud_cover < {n}")
        p_store.register_search(query)
        p_store.register_search(query)  # again: refreshed
        p_store.get_search(query.search_id())
    p_store.register_search(SearchQuery())
    p_store.list_searches()
    p_store.put_key(new_key("someone", "org")[0])
    assert p_store.generations() == before


def backdate(store, search_id: str, seconds: float) -> None:
    """Make a registered search's last use `seconds` older, in either store."""
    if isinstance(store, PgstacStore):
        with store._conn() as conn:
            conn.execute(
                "UPDATE searches SET lastused = lastused - make_interval(secs => %s)"
                " WHERE metadata->>'tileserver:id' = %s",
                (seconds, search_id),
            )
    else:
        store._connection().execute(
            "UPDATE searches SET last_used = last_used - ? WHERE id = ?", (seconds, search_id)
        )


def registered(store, name: str) -> str:
    return store.register_search(SearchQuery(ids=[name])).id


def test_unused_searches_expire_and_come_back_when_registered_again(p_store):
    p_store.search_limits = SearchLimits(ttl_days=1)
    day = 86400
    old, fresh = registered(p_store, "old"), registered(p_store, "fresh")
    created = p_store.get_search(old).created
    backdate(p_store, old, day + 1)
    backdate(p_store, fresh, day - 100)
    with pytest.raises(NotFound, match="register it with POST /searches"):
        p_store.get_search(old)
    assert [s.id for s in p_store.list_searches()] == [fresh]
    assert registered(p_store, "old") == old  # the same id, alive again
    assert p_store.get_search(old).created == created
    # a lookup refreshes the last use, at most once a minute
    touched = p_store.get_search(fresh).last_used
    assert p_store.get_search(fresh).last_used > touched
    backdate(p_store, fresh, 30)
    stale = p_store.get_search(fresh).last_used
    assert p_store.get_search(fresh).last_used == stale  # under a minute: not written
    backdate(p_store, fresh, day - 100)
    p_store.get_search(fresh)  # a tile of it, say: keeps it alive for another TTL
    backdate(p_store, fresh, 200)
    assert p_store.get_search(fresh).id == fresh


def test_the_searches_table_is_capped_expired_first_then_least_recently_used(p_store):
    p_store.search_limits = SearchLimits(ttl_days=1, max_searches=3)
    foreign = None
    if isinstance(p_store, PgstacStore):  # another pgSTAC client's search is not ours to drop
        with p_store._conn() as conn:
            foreign = conn.execute(
                "SELECT hash FROM search_query(%s, false, %s)",
                (json.dumps({"collections": ["p"]}), json.dumps({"name": "theirs"})),
            ).fetchone()[0]
    first, second, third = (registered(p_store, n) for n in ("1", "2", "3"))
    for age, search_id in ((300, first), (200, second), (100, third)):
        backdate(p_store, search_id, age)
    p_store.get_search(first)  # used: now the most recent
    fourth = registered(p_store, "4")  # the least recently used goes
    assert {s.id for s in p_store.list_searches()} == {first, third, fourth}
    with pytest.raises(NotFound):
        p_store.get_search(second)
    backdate(p_store, fourth, 86400 + 1)  # expired, though more recent than third
    fifth = registered(p_store, "5")
    assert {s.id for s in p_store.list_searches()} == {first, third, fifth}
    assert registered(p_store, "3") == third  # registering again adds nothing
    assert len(p_store.list_searches()) == 3
    if foreign is not None:
        with p_store._conn() as conn:
            assert conn.execute("SELECT 1 FROM searches WHERE hash = %s", (foreign,)).fetchone()


def test_pgstac_upgrade_counts_searches_as_used_once(pgstac_url):
    from tileserver.catalog.pgstac import migrate

    store = open_store(pgstac_url)
    try:
        search_id = registered(store, "a")
        backdate(store, search_id, 40 * 86400)  # as if registered long before the upgrade
        with store._conn() as conn:  # the catalog as the previous release left it
            conn.execute("DELETE FROM tileserver.meta WHERE key = 'searches_last_used'")
            conn.execute("INSERT INTO tileserver.meta VALUES ('generation', 7)")
        migrate(pgstac_url)
        assert store.get_search(search_id).id == search_id
        with store._conn() as conn:
            keys = {k for (k,) in conn.execute("SELECT key FROM tileserver.meta")}
        assert "generation" not in keys
        backdate(store, search_id, 40 * 86400)
        migrate(pgstac_url)  # the next start refreshes nothing
        with pytest.raises(NotFound):
            store.get_search(search_id)
    finally:
        store.close()


def test_queryables_follow_the_properties_images_carry(p_store):
    p_store.put_images(
        [image("a", box(0, 0, 1, 1), properties={"sat:orbit": 12, "mode": "IW", "ok": True})]
    )
    kinds = {n: q.type for n, q in p_store.queryables("p").items()}
    assert kinds["sat:orbit"] == "integer" and kinds["mode"] == "string"
    assert kinds["ok"] == "boolean" and kinds["eo:cloud_cover"] == "number"
    p_store.put_images([image("b", box(0, 0, 1, 1), properties={"sat:orbit": 13})])
    assert found(p_store, filter='"sat:orbit" > 12') == ["b"]
    assert found(p_store, filter='"sat:orbit" > 9') == ["b", "a"]  # numbers, not text


def test_a_failed_batch_writes_nothing(p_store):
    good = image("good", box(0, 0, 1, 1))
    orphan = image("orphan", box(0, 0, 1, 1), product="missing")
    with pytest.raises(NotFound, match="missing"):
        p_store.put_images([good, orphan])
    assert found(p_store) == []
    assert p_store.count_images("p") == 0


def test_counts_stop_at_the_limit_and_paging_still_works(p_store, monkeypatch):
    import tileserver.catalog.sqlstore as sqlstore

    p_store.put_images([image(f"i{n}", box(n, 0, n + 1, 1)) for n in range(5)])
    assert p_store.search(SearchQuery(limit=2)).matched == 5
    monkeypatch.setattr(sqlstore, "COUNT_LIMIT", 3)  # both stores count there
    page = p_store.search(SearchQuery(limit=2))
    assert page.matched is None and page.next_token
    seen = [i.name for i in page.images]
    while page.next_token:
        page = p_store.search(SearchQuery(limit=2, token=page.next_token))
        seen += [i.name for i in page.images]
    assert sorted(seen) == [f"i{n}" for n in range(5)]
    assert p_store.search(SearchQuery(limit=2), count=False).matched is None


def test_registered_searches_have_the_same_ids_in_both_stores(p_store):
    query = SearchQuery(collections=["p"], filter="gsd > 3", sortby=[{"field": "datetime"}])
    registered = p_store.register_search(query)
    assert registered.id == query.search_id()  # the same id whatever the store
    assert p_store.register_search(query).id == registered.id
    assert p_store.get_search(registered.id).search == query
    assert [s.id for s in p_store.list_searches()] == [registered.id]
    with pytest.raises(NotFound):
        p_store.get_search("0" * 24)
    with pytest.raises(FilterError):
        p_store.register_search(SearchQuery(filter="nope = 1"))


# ------------------------------------------------------------------ tile lookups


STACK = [  # name, footprint, day: newest first is D, C, B, A, E
    ("A", box(0, 0, 1, 1), 1),
    ("B", box(0, 0, 0.5, 1), 2),  # covered by C
    ("C", box(0, 0, 0.6, 1), 3),
    ("D", box(0.5, 0, 1, 1), 4),
    ("E", box(2, 2, 3, 3), 0),  # outside the tile
]
TILE = (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("lookup", "want"),
    [
        (TileLookup(), ["D", "C", "B", "A"]),
        (TileLookup(limit=2), ["D", "C"]),
        (TileLookup(scan_limit=3), ["D", "C", "B"]),
        (TileLookup(exit_when_full=True), ["D", "C"]),  # D and C cover the tile
        (TileLookup(skip_covered=True), ["D", "C"]),
    ],
)
def test_tile_lookup_agrees_with_pgstac_geometrysearch_rules(p_store, lookup, want):
    p_store.put_images([image(n, g, f"2024-01-0{d + 1}T00:00:00Z") for n, g, d in STACK])
    got = [i.name for i in p_store.tile_images(SearchQuery(), TILE, lookup)]
    assert got == want
    # and the shared rule run on the candidates directly says the same
    candidates = [p_store.get_image(f"p:{n}") for n in ("D", "C", "B", "A")]
    assert [i.name for i in select_for_tile(candidates, TILE, lookup)] == want


def test_skip_covered_leaves_out_an_image_hidden_by_two(p_store):
    p_store.put_images(
        [
            image("left", box(0, 0, 0.5, 1), "2024-01-03T00:00:00Z"),
            image("right", box(0.5, 0, 1, 0.5), "2024-01-02T00:00:00Z"),
            image("hidden", box(0.1, 0.1, 0.4, 0.9), "2024-01-01T00:00:00Z"),
            image("fills", box(0.5, 0.5, 1, 1), "2023-12-31T00:00:00Z"),
        ]
    )
    lookup = TileLookup(skip_covered=True)
    got = [i.name for i in p_store.tile_images(SearchQuery(), TILE, lookup)]
    assert got == ["left", "right", "fills"]


# ------------------------------------------------------------------ copies between stores


def test_copy_to_the_other_store_and_back_keeps_every_record(cql2_store, tmp_path, request):
    query = SearchQuery(collections=["s2"], filter="gsd >= 10")
    cql2_store.register_search(query)
    kind = request.node.callspec.params["catalog_url"]
    other_url = (
        request.getfixturevalue("pgstac_url")
        if kind == "sqlite"
        else f"sqlite:///{tmp_path / 'copy.db'}"
    )
    other = open_store(other_url)
    try:
        report = copy_catalog(cql2_store, other, tmp_path / "ck.json", batch=8, progress=False)
        assert (report.products, report.images, report.searches) == (3, len(WITH_FOOTPRINT), 1)
        for product in cql2_store.list_products():
            assert doc(other.get_product(product.id)) == doc(product)
        for item in WITH_FOOTPRINT:
            key = f"{item['collection']}:{item['id']}"
            assert doc(other.get_image(key)) == doc(cql2_store.get_image(key))
        assert other.get_search(query.search_id()).search == query
        assert not (tmp_path / "ck.json").exists()
        back = open_store(f"sqlite:///{tmp_path / 'back.db'}")
        copy_catalog(other, back, tmp_path / "ck2.json", progress=False)
        assert found(back, collections=["l8"]) == found(cql2_store, collections=["l8"])
        back.close()
    finally:
        other.close()


def test_an_interrupted_copy_resumes(cql2_store, tmp_path):
    destination = open_store(f"sqlite:///{tmp_path / 'dest.db'}")
    checkpoint = tmp_path / "ck.json"

    stopped = []

    def stop_after_two(copied: int) -> None:
        if copied >= 16:
            stopped.append(copied)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_catalog(
            cql2_store, destination, checkpoint, batch=8, progress=False, on_batch=stop_after_two
        )
    assert checkpoint.exists()
    partial = sum(destination.count_images(p) for p in ("s2", "l8", "planet"))
    assert partial == stopped[0] < len(WITH_FOOTPRINT)
    report = copy_catalog(cql2_store, destination, checkpoint, batch=8, progress=False)
    assert report.resumed and report.images == len(WITH_FOOTPRINT) - stopped[0]
    assert sum(destination.count_images(p) for p in ("s2", "l8", "planet")) == len(WITH_FOOTPRINT)
    assert not checkpoint.exists()
    destination.close()


# ------------------------------------------------------------------ issue 19: one answer


@pytest.fixture()
def issue_store(p_store):
    """Images showing each problem the pgSTAC store had (worked out by hand below)."""
    p_store.put_images(
        [
            # an interval item acquired at its middle: `datetime` is that instant
            image(
                "interval",
                box(0, 0, 1, 1),
                "2022-06-27T12:00:00Z",
                properties={
                    "start_datetime": "2022-06-01T00:00:00Z",
                    "end_datetime": "2022-07-31T00:00:00Z",
                    "gsd": 10,
                    "quality": 2,
                    "platform": "landsat-9",
                    "flag": None,
                },
            ),  # fmt: skip
            image(
                "instant",
                box(10, 40, 12, 42),
                "2024-06-02T10:00:00Z",
                properties={"gsd": 15, "quality": 3, "platform": "Landsat-9"},
            ),  # fmt: skip
            image(
                "cloudy",
                box(50, 50, 51, 51),
                "2024-05-31T23:00:00Z",
                cloud_cover=7.3999999999999995,
                properties={"gsd": 7.4, "tags": ["a"], "quality": 1},
            ),  # fmt: skip
        ]
    )
    return p_store


ISSUE_CASES = [
    ("start_datetime IS NULL", {"instant", "cloudy"}),
    ("start_datetime < TIMESTAMP('2022-06-10T00:00:00Z')", {"interval"}),
    ("T_AFTER(datetime, TIMESTAMP('2022-06-20T00:00:00Z'))", {"interval", "instant", "cloudy"}),
    ("T_AFTER(datetime, TIMESTAMP('2022-06-28T00:00:00Z'))", {"instant", "cloudy"}),
    ("datetime <= '2022-06-27T00:00:00.000Z'", set()),
    ("T_DURING(datetime, INTERVAL(start_datetime, end_datetime))", {"interval"}),
    ("datetime > DATE('2024-06-01')", {"instant"}),
    ("datetime >= DATE('2024-05-31')", {"instant", "cloudy"}),
    ("10 - (gsd - 5) = 5", {"interval"}),
    ("2 * (gsd - 5) = 10", {"interval"}),
    ("quality >= 2.5", {"instant"}),
    ("quality * 0.5 >= 1", {"interval", "instant"}),
    ("NOT (eo:cloud_cover * 2 BETWEEN 40 AND 66)", {"cloudy"}),
    ("gsd IS NULL AND gsd * 0.5 <> 15", set()),
    ("S_WITHIN(BBOX(10, 40, 20, 45), geometry)", set()),
    ("S_CONTAINS(BBOX(9, 39, 20, 45), geometry)", {"instant"}),
    (
        "S_INTERSECTS(geometry, GEOMETRYCOLLECTION(POINT(0.5 0.5), POINT(50.5 50.5)))",
        {"interval", "cloudy"},
    ),  # fmt: skip
    ("S_CONTAINS(geometry, GEOMETRYCOLLECTION(POINT(0.5 0.5), POINT(0.2 0.2)))", {"interval"}),
    ("CASEI(platform) = 'Landsat-9'", set()),  # CASEI folds its own operand only
    ("CASEI(platform) = CASEI('Landsat-9')", {"interval", "instant"}),
    ("tags IS NULL", {"interval", "instant"}),
    ("eo:cloud_cover = 7.3999999999999995", {"cloudy"}),
    ("eo:cloud_cover = 7.4", set()),
    ("gsd % 4 = 3", {"instant"}),  # 15 % 4; 10 % 4 is 2, fmod(7.4, 4) 3.4000000000000004
]


@pytest.mark.parametrize(("text", "want"), ISSUE_CASES)
def test_issue_cases_answer_alike(issue_store, text, want):
    page = issue_store.search(SearchQuery(filter=text, filter_lang="cql2-text", limit=10))
    assert {i.name for i in page.images} == want
    assert page.matched == len(want)


def test_arithmetic_with_collections_is_no_server_error(issue_store):
    body = {
        "collections": ["p"],
        "filter": {"op": "=", "args": [{"op": "-", "args": [{"property": "gsd"}, 2]}, 8.0]},
    }
    assert found(issue_store, **body) == ["interval"]


def test_seventeen_digit_numbers_in_cql2_json_are_exact(issue_store):
    exact = {"op": "=", "args": [{"property": "eo:cloud_cover"}, 7.3999999999999995]}
    assert found(issue_store, filter=exact) == ["cloudy"]
    assert found(issue_store, filter=json.dumps(exact), **{"filter-lang": "cql2-json"}) == [
        "cloudy"
    ]


def test_isnull_with_args_as_an_object_is_accepted(issue_store):
    # UP42's storage API documents this form
    expr = {"op": "isNull", "args": {"property": "tags"}}
    assert set(found(issue_store, filter=expr)) == {"interval", "instant"}


def test_null_properties_are_kept_in_returned_images(issue_store):
    (interval,) = issue_store.search(SearchQuery(ids=["interval"])).images
    assert "flag" in interval.properties and interval.properties["flag"] is None
    assert issue_store.get_image("p:interval").properties["flag"] is None


def test_an_image_bbox_is_its_footprint(p_store):
    # a client's antimeridian bbox, and one that does not enclose the geometry
    sent = [
        image("wraps", box(170, -5, 180, 5), bbox=(170, -5, -170, 5)),
        image("wrong", box(20, 20, 21, 21), bbox=(0, 0, 1, 1)),
    ]
    written = p_store.put_images(sent)
    assert [i.bbox for i in written] == [(170, -5, 180, 5), (20, 20, 21, 21)]
    assert found(p_store, bbox=[20.2, 20.2, 20.4, 20.4]) == ["wrong"]
    assert found(p_store, filter="S_INTERSECTS(geometry, BBOX(20.2, 20.2, 20.4, 20.4))") == [
        "wrong"
    ]


def test_an_interval_needs_both_ends():
    with pytest.raises(ValueError, match="start_datetime without end_datetime"):
        image("half", box(0, 0, 1, 1), properties={"start_datetime": "2022-06-01T00:00:00Z"})


def test_pgstac_items_written_before_times_are_backfilled(pgstac_url):
    from tileserver.catalog.pgstac import migrate

    store = PgstacStore(pgstac_url)
    store.put_product(Product(id="p", bands=BANDS))
    store.put_images([image("old", box(0, 0, 1, 1), "2022-06-27T12:00:00Z", properties={"n": 1})])
    with store._conn() as conn:  # as the previous version wrote it
        conn.execute("UPDATE items SET content = content - 'tileserver:times' - 'tileserver:doc'")
    assert found(store, filter="datetime > TIMESTAMP('2022-01-01T00:00:00Z')") == []
    migrate(pgstac_url)
    assert found(store, filter="datetime > TIMESTAMP('2022-01-01T00:00:00Z')") == ["old"]
    assert store.get_image("p:old").properties == {"n": 1}
    store.close()


def test_pgstac_registers_searches_its_compiler_cannot_run(pgstac_url):
    store = PgstacStore(pgstac_url)
    store.put_product(Product(id="p", bands=BANDS))
    store.put_images([image("a", box(0, 0, 1, 1))])
    query = SearchQuery(
        filter="S_INTERSECTS(geometry, GEOMETRYCOLLECTION(POINT(0.5 0.5), POINT(9 9)))"
    )
    registered = store.register_search(query)
    assert store.get_search(registered.id).search == query
    lookup = TileLookup()
    assert [i.name for i in store.tile_images(query, (0, 0, 1, 1), lookup)] == ["a"]
    store.close()


def test_pgstac_items_carry_their_files_as_assets(pgstac_url):
    """Each file is an asset at the path GDAL opens, with its bands; old items get them."""
    from tileserver.catalog.pgstac import migrate

    store = PgstacStore(pgstac_url)
    bands = [
        {"name": "red", "data_type": "UInt16", "nodata": 0, "file_index": 0},
        {"name": "nir", "data_type": "UInt16", "file_index": 1, "band_index": 0},
    ]
    store.put_product(Product(id="p", bands=bands))
    files = [
        {"href": "s3://bucket/scenes/two_red.tif", "size": 7},
        {"href": "file:///d/two_nir.tif"},
    ]
    store.put_images([Image(name="two", product_id="p", acquired="2024-05-01T10:00:00Z",
                            geometry=mapping(box(0, 0, 1, 1)), files=files)])  # fmt: skip
    red = {"name": "red", "data_type": "uint16", "nodata": 0}
    wanted = {
        "two_red": {
            "href": "/vsis3/bucket/scenes/two_red.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "bands": [red],
            "file:size": 7,
        },
        "two_nir": {
            "href": "/d/two_nir.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "bands": [{"name": "nir", "data_type": "uint16"}],
        },
    }

    def assets() -> dict:
        with store._conn() as conn:
            return conn.execute("SELECT content->'assets' FROM items").fetchone()[0]

    assert assets() == wanted
    assert [f.href for f in store.get_image("p:two").files] == [f["href"] for f in files]
    with store._conn() as conn:  # as the previous version wrote it
        conn.execute("UPDATE items SET content = content || '{\"assets\": {}}'::jsonb")
        conn.execute("DELETE FROM tileserver.meta WHERE key = 'item_assets'")
    assert assets() == {}
    migrate(pgstac_url)
    assert assets() == wanted
    store.close()
