"""The STAC API over the demo catalog (in each store), and pystac-client as a real client.

Expected answers are computed here in Python from the catalog's own image list (the
plain product listing, not the search code), with shapely and datetime.
"""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime

import pytest
from pystac_client import Client
from shapely.geometry import box, shape

from tests.conftest import DEMO_IMAGE, LiveServer

PRODUCT = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def all_images(demo_store):
    """Every demo image, newest first, from the product listing."""
    return demo_store.list_images(PRODUCT, limit=1000).images


def names(images) -> list[str]:
    return [i.name for i in images]


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [f["id"] for f in response.json()["features"]]


def test_landing_conformance_collections(any_client):
    landing = any_client.get("/stac").json()
    assert landing["type"] == "Catalog"
    rels = {link["rel"] for link in landing["links"]}
    assert {"conformance", "data", "search", "child"} <= rels
    conforms = any_client.get("/stac/conformance").json()["conformsTo"]
    for cls in ("core", "item-search", "item-search#filter", "item-search#sort", "collections"):
        assert f"https://api.stacspec.org/v1.0.0/{cls}" in conforms
    assert "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text" in conforms
    collections = any_client.get("/stac/collections").json()["collections"]
    assert [c["id"] for c in collections] == [PRODUCT]


def test_collection_extent_and_bands(any_client, all_images):
    collection = any_client.get(f"/stac/collections/{PRODUCT}").json()
    west = min(i.bbox[0] for i in all_images)
    north = max(i.bbox[3] for i in all_images)
    bbox = collection["extent"]["spatial"]["bbox"][0]
    assert bbox[0] == pytest.approx(west) and bbox[3] == pytest.approx(north)
    start, end = collection["extent"]["temporal"]["interval"][0]
    assert start.startswith(min(i.acquired for i in all_images).strftime("%Y-%m-%dT%H:%M:%S"))
    assert end.startswith(max(i.acquired for i in all_images).strftime("%Y-%m-%dT%H:%M:%S"))
    bands = [b["name"] for b in collection["summaries"]["bands"]]
    assert bands == ["B02", "B03", "B04", "B08", "B11", "SCL"]


def test_items_paging_and_single_item(any_client, all_images):
    seen, url, pages = [], f"/stac/collections/{PRODUCT}/items?limit=3", 0
    while url:
        page = any_client.get(url).json()
        assert page["numberMatched"] == len(all_images)
        seen += [f["id"] for f in page["features"]]
        nxt = [link["href"] for link in page["links"] if link["rel"] == "next"]
        url, pages = (nxt[0] if nxt else None), pages + 1
    assert seen == names(all_images)  # newest first, each once
    assert pages == 3
    name = DEMO_IMAGE.split(":", 1)[1]
    item = any_client.get(f"/stac/collections/{PRODUCT}/items/{name}").json()
    assert item["id"] == name and item["collection"] == PRODUCT
    assert set(item["assets"]) == {"bands_10m", "B11", "SCL", "thumbnail"}
    assert item["assets"]["thumbnail"]["roles"] == ["thumbnail"]
    assert [b["name"] for b in item["assets"]["bands_10m"]["bands"]] == ["B02", "B03", "B04", "B08"]
    assert any(link["rel"] == "tilejson" for link in item["links"])
    assert any_client.get(f"/stac/collections/{PRODUCT}/items/nope").status_code == 404


def test_search_bbox_intersects_datetime(any_client, all_images):
    a = max((i.bbox for i in all_images), key=lambda b: b[2])
    # a small box at the east edge of the easternmost (shifted) images only
    query_box = box(a[2] - 0.006, (a[1] + a[3]) / 2, a[2] - 0.002, (a[1] + a[3]) / 2 + 0.01)
    expected = [i.name for i in all_images if shape(i.geometry).intersects(query_box)]
    assert 0 < len(expected) < len(all_images)
    bbox = ",".join(str(v) for v in query_box.bounds)
    assert ids(any_client.get("/stac/search", params={"bbox": bbox, "limit": 100})) == expected
    body = {"intersects": query_box.__geo_interface__, "limit": 100}
    assert ids(any_client.post("/stac/search", json=body)) == expected

    times = sorted(i.acquired for i in all_images)
    start, end = times[2], times[5]
    interval = f"{start.isoformat()}/{end.isoformat()}"
    expected = [i.name for i in all_images if start <= i.acquired <= end]
    assert len(expected) == 4
    assert ids(any_client.get("/stac/search", params={"datetime": interval})) == expected
    open_end = f"{start.isoformat()}/.."
    expected = [i.name for i in all_images if i.acquired >= start]
    assert (
        ids(any_client.get("/stac/search", params={"datetime": open_end, "limit": 50})) == expected
    )
    instant = times[3].isoformat().replace("+00:00", "Z")
    assert ids(any_client.get("/stac/search", params={"datetime": instant})) == [
        i.name for i in all_images if i.acquired == times[3]
    ]
    day = times[3].date().isoformat()  # a bare date is that whole day
    assert ids(any_client.get("/stac/search", params={"datetime": day})) == [
        i.name for i in all_images if i.acquired.date() == times[3].date()
    ]


def test_search_ids_filter_sort(any_client, all_images):
    chosen = [all_images[1].name, all_images[4].name]
    assert sorted(ids(any_client.get("/stac/search", params={"ids": ",".join(chosen)}))) == sorted(
        chosen
    )
    limit = sorted(i.cloud_cover for i in all_images)[4]
    expected = [i.name for i in all_images if i.cloud_cover < limit]
    got = ids(any_client.get("/stac/search", params={"filter": f"eo:cloud_cover < {limit}"}))
    assert got == expected and 0 < len(got) < len(all_images)
    body = {
        "filter-lang": "cql2-json",
        "filter": {
            "op": "and",
            "args": [
                {"op": ">=", "args": [{"property": "eo:cloud_cover"}, limit]},
                {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]},
            ],
        },
        "sortby": [{"field": "eo:cloud_cover", "direction": "asc"}],
    }
    expected = sorted(
        (i for i in all_images if i.cloud_cover >= limit), key=lambda i: i.cloud_cover
    )
    assert ids(any_client.post("/stac/search", json=body)) == names(expected)
    # two keys: cloud cover descending, then datetime ascending
    got = ids(any_client.get("/stac/search", params={"sortby": "-eo:cloud_cover,+datetime"}))
    by_hand = sorted(all_images, key=lambda i: (-i.cloud_cover, i.acquired))
    assert got == names(by_hand)[:10]


def test_prev_links_and_number_matched(any_client, all_images):
    first = any_client.post("/stac/search", json={"limit": 3}).json()
    nxt = next(link for link in first["links"] if link["rel"] == "next")
    assert nxt["method"] == "POST" and nxt["body"]["limit"] == 3
    second = any_client.post("/stac/search", json=nxt["body"]).json()
    assert [f["id"] for f in second["features"]] == names(all_images)[3:6]
    prev = next(link for link in second["links"] if link["rel"] == "prev")
    back = any_client.post("/stac/search", json=prev["body"]).json()
    assert [f["id"] for f in back["features"]] == names(all_images)[:3]
    assert second["numberMatched"] == len(all_images) and second["numberReturned"] == 3


def test_queryables(any_client):
    found = any_client.get("/stac/queryables").json()["properties"]
    for name in ("id", "collection", "datetime", "geometry", "eo:cloud_cover", "platform"):
        assert name in found
    assert found["datetime"]["format"] == "date-time"
    assert found["proj:epsg"]["type"] == "integer"  # carried by the demo items
    per = any_client.get(f"/stac/collections/{PRODUCT}/queryables").json()["properties"]
    assert "proj:epsg" in per
    assert any_client.get("/stac/collections/nope/queryables").status_code == 404


@pytest.mark.parametrize(
    "params,words",
    [
        ({"filter": "cloudiness < 3"}, ["cloudiness"]),
        ({"filter": "eo:cloud_cover <<< 3"}, ["cql2"]),
        ({"bbox": "1,2,3"}, ["bbox"]),
        ({"bbox": "a,b,c,d"}, ["bbox"]),
        ({"datetime": "yesterday"}, ["yesterday"]),
        ({"datetime": "2024-06-01/2024-05-01"}, ["before"]),
        ({"sortby": "-footprint_size"}, ["footprint_size"]),
        ({"intersects": "{not json"}, ["intersects"]),
        ({"token": "garbage"}, ["token"]),
        ({"limit": "0"}, ["limit"]),
    ],
)
def test_bad_searches_are_clear_4xx(any_client, params, words):
    response = any_client.get("/stac/search", params=params)
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"].lower()
    assert all(w.lower() in detail for w in words), detail


def test_summary_buckets(any_client, all_images):
    body = {"collections": [PRODUCT]}
    whole = any_client.post("/summary", json=body).json()
    assert whole["count"] == len(all_images) and whole["products"] == [PRODUCT]
    assert whole["bytes"] == sum(f.size for i in all_images for f in i.files)
    assert whole["bytes"] > 0
    months = any_client.post("/summary", params={"interval": "month"}, json=body).json()
    by_month: dict[str, int] = {}
    for image in all_images:
        key = image.acquired.strftime("%Y-%m-01T00:00:00Z")
        by_month[key] = by_month.get(key, 0) + 1
    got = {b["interval_start"].replace("+00:00", "Z"): b["count"] for b in months["summaries"]}
    assert got == by_month
    weeks = any_client.post("/summary", params={"interval": "week"}, json=body).json()
    for bucket in weeks["summaries"]:
        start = datetime.fromisoformat(bucket["interval_start"].replace("Z", "+00:00"))
        assert start.weekday() == 0  # ISO weeks start on Monday
        inside = [i for i in all_images if 0 <= (i.acquired - start).total_seconds() < 7 * 86400]
        assert bucket["count"] == len(inside)
    for interval in ("year", "quarter", "day", "hour"):
        response = any_client.post("/summary", params={"interval": interval}, json=body)
        buckets = response.json()["summaries"]
        assert sum(b["count"] for b in buckets) == len(all_images)
    quarter = any_client.post("/summary", params={"interval": "quarter"}, json=body).json()
    starts = {b["interval_start"][:10] for b in quarter["summaries"]}
    assert starts == {f"2024-{3 * ((i.acquired.month - 1) // 3) + 1:02d}-01" for i in all_images}
    assert any_client.post("/summary", params={"interval": "decade"}, json=body).status_code == 422


@pytest.fixture(scope="module")
def any_live_server(any_demo_app):
    """A real HTTP server over the demo catalog, in each store."""
    with LiveServer(any_demo_app) as server:
        yield server


def test_pystac_client_with_cql2_filter_and_paging(any_live_server, all_images):
    catalog = Client.open(f"{any_live_server.url}/stac")
    limit = sorted(i.cloud_cover for i in all_images)[5]
    search = catalog.search(
        collections=[PRODUCT],
        filter=f"eo:cloud_cover <= {limit} AND platform = 'sentinel-2a'",
        filter_lang="cql2-text",
        limit=2,  # several pages
        datetime="2024-01-01T00:00:00Z/..",
    )
    items = list(search.items())
    expected = [
        i.name
        for i in all_images
        if i.cloud_cover <= limit and i.acquired >= datetime(2024, 1, 1, tzinfo=UTC)
    ]
    assert [item.id for item in items] == expected
    assert len(expected) >= 3  # more than one page of 2
    assert search.matched() == len(expected)
    assert items[0].assets["bands_10m"].href.endswith("bands_10m.tif")
    collection = catalog.get_collection(PRODUCT)
    assert collection.id == PRODUCT
    one = next(catalog.search(ids=[expected[0]], collections=[PRODUCT]).items())
    assert one.datetime == next(i.acquired for i in all_images if i.name == expected[0])


def test_a_bare_boolean_filter_is_a_filter(any_client):
    """`TRUE`/`FALSE` become cql2-json `true`/`false`: registered, read back, searched (the
    schema fuzz found a registered `FALSE` that could not be read back: a 500)."""
    everything = any_client.post("/stac/search", json={"limit": 1}).json()["numberMatched"]
    assert everything > 0
    for text, matched in (("TRUE", everything), ("FALSE", 0), ("TRUE AND FALSE", 0)):
        registered = any_client.post("/searches", json={"filter": text})
        assert registered.status_code == 200, registered.text
        again = any_client.get(f"/searches/{registered.json()['id']}")
        assert again.status_code == 200, again.text
        found = any_client.post("/stac/search", json={"filter": text, "limit": 1})
        assert found.status_code == 200 and found.json()["numberMatched"] == matched, text


@pytest.mark.parametrize(
    "when", ["2024-05-03T10:20:27.87+0100", "2024-05-03T10:20:31", "2024-05-03T10:20:31.Z"]
)
def test_malformed_datetimes_are_refused(any_client, when):
    response = any_client.get("/stac/search", params={"datetime": when})
    assert response.status_code == 400, response.text
    assert "RFC 3339" in response.json()["detail"]


def test_collection_item_pages_link_their_collection(any_client):
    page = any_client.get(f"/stac/collections/{PRODUCT}/items", params={"limit": 1}).json()
    links = {link["rel"]: link["href"] for link in page["links"]}
    assert links["collection"].endswith(f"/stac/collections/{PRODUCT}")


def test_openapi_document_has_the_openapi_media_type(any_client):
    response = any_client.get("/openapi.json")
    assert response.headers["content-type"] == "application/vnd.oai.openapi+json;version=3.0"
    assert response.json()["openapi"].startswith("3.")


def test_many_searches_keep_one_keep_alive_connection(any_live_server):
    """uvicorn closes a connection after a 500 (the exception reaches it after Starlette
    sent the response): the dropped keep-alive connections were the type-error 500s."""
    bodies = [
        {"collections": [PRODUCT], "filter": {"op": "=", "args": [
            {"op": "-", "args": [{"property": "eo:cloud_cover"}, 2]}, 8.0]}},
        {"filter": "NOT (eo:cloud_cover * 2 BETWEEN 40 AND 66)", "filter-lang": "cql2-text"},
        {"filter": "eo:cloud_cover IS NULL AND eo:cloud_cover * 0.5 <> 15",
         "filter-lang": "cql2-text"},
        {"filter": "S_WITHIN(BBOX(-180, -90, 180, 90), geometry)", "filter-lang": "cql2-text"},
        {"filter": "eo:cloud_cover / 0 IS NULL", "filter-lang": "cql2-text"},
        {"filter": "eo:cloud_cover ^ 1000 > 1", "filter-lang": "cql2-text"},
        {"filter": {"op": "isNull", "args": {"property": "eo:cloud_cover"}}},
        {"filter": "unknown_property = 1", "filter-lang": "cql2-text"},  # a 400
    ]  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", any_live_server.port, timeout=30)
    connection.connect()
    first = connection.sock
    statuses = []
    for n in range(240):
        body = json.dumps(bodies[n % len(bodies)])
        connection.request("POST", "/stac/search", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        assert connection.sock is first, f"connection dropped after request {n}"
    connection.close()
    assert set(statuses) == {200, 400}
