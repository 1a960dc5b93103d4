"""STAC API (core, collections, features, item search, filter, sort) over the catalog."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tileserver.api.deps import StoreDep, bad_request
from tileserver.catalog import stac
from tileserver.catalog.access import sees_files
from tileserver.catalog.geojson import MAX_GEOMETRY_DEPTH, loads_bounded
from tileserver.catalog.models import Product
from tileserver.catalog.search import SearchPage, SearchQuery, parse_sortby
from tileserver.catalog.store import CatalogStore

router = APIRouter(tags=["stac"])

GEOJSON = "application/geo+json"


class GeoJSONResponse(JSONResponse):
    """Items and item collections: documented (and sent) as application/geo+json."""

    media_type = GEOJSON


class SchemaJSONResponse(JSONResponse):
    """Queryables: a JSON Schema, documented (and sent) as application/schema+json."""

    media_type = "application/schema+json"


CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#filter",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/accent-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/array-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/property-property",
    "http://www.opengis.net/spec/cql2/1.0/conf/arithmetic",
]


def base_url(request: Request) -> str:
    """The server's root URL (behind a proxy prefix too), without a trailing slash."""
    return str(request.base_url).rstrip("/")


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def query_from_params(**params) -> SearchQuery:
    """A SearchQuery from GET parameters; problems are one 400 that names them."""
    try:
        return SearchQuery.model_validate({k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'search'}: {e['msg']}" for e in exc.errors()
        )
        raise bad_request(f"invalid search: {problems}") from None


def search_params(
    collections: Annotated[str | None, Query(description="comma-separated ids")] = None,
    ids: Annotated[str | None, Query(description="comma-separated item ids")] = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
    intersects: Annotated[str | None, Query(description="a GeoJSON geometry")] = None,
    datetime: Annotated[
        str | None, Query(description="an instant, or an interval a/b with .. for open ends")
    ] = None,
    filter: Annotated[str | None, Query(description="CQL2 text or JSON")] = None,
    filter_lang: Annotated[str | None, Query(alias="filter-lang")] = None,
    sortby: Annotated[str | None, Query(description="e.g. -datetime,+eo:cloud_cover")] = None,
    limit: Annotated[int, Query()] = 10,
    token: Annotated[str | None, Query()] = None,
) -> SearchQuery:
    """The GET form of a search, parsed once."""
    try:
        box = [float(v) for v in bbox.split(",")] if bbox is not None else None
    except ValueError:
        raise bad_request(f"bbox '{bbox}' must be comma-separated numbers") from None
    try:
        geometry = (
            loads_bounded(intersects, "intersects", MAX_GEOMETRY_DEPTH)
            if intersects is not None
            else None
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    try:
        keys = parse_sortby(sortby) if sortby is not None else None
    except ValueError as exc:
        raise bad_request(f"invalid search: {exc}") from None
    return query_from_params(
        collections=_split(collections),
        ids=_split(ids),
        bbox=box,
        intersects=geometry,
        datetime=datetime,
        filter=filter,
        **{"filter-lang": filter_lang},
        sortby=keys,
        limit=limit,
        token=token,
    )


def item_collection(
    request: Request,
    store: CatalogStore,
    page: SearchPage,
    query: SearchQuery,
    post: bool = False,
    collection_id: str | None = None,
) -> JSONResponse:
    """A page of items as a GeoJSON FeatureCollection with next/prev links.

    A page of one collection's items (OGC API Features) links to its collection too.
    """
    root = base_url(request)
    products: dict[str, Product] = {}
    hidden: dict[str, bool] = {}
    features = []
    for image in page.images:
        if image.product_id not in products:
            products[image.product_id] = store.get_product(image.product_id)
            hidden[image.product_id] = not sees_files(store, image.product_id)
        product = products[image.product_id]
        features.append(stac.item(image, product, root, hidden[image.product_id]))
    links = [
        {"rel": "root", "type": "application/json", "href": f"{root}/stac"},
        {"rel": "self", "type": GEOJSON, "href": str(request.url)},
    ]
    if collection_id is not None:
        href = f"{root}/stac/collections/{collection_id}"
        links.append({"rel": "collection", "type": "application/json", "href": href})
    for rel, token in (("next", page.next_token), ("prev", page.prev_token)):
        if token is None:
            continue
        if post:
            body = query.model_dump(mode="json", by_alias=True, exclude_none=True)
            body["token"] = token
            links.append(
                {
                    "rel": rel,
                    "type": GEOJSON,
                    "href": str(request.url),
                    "method": "POST",
                    "body": body,
                    "merge": False,
                }
            )
        else:
            href = str(request.url.include_query_params(token=token))
            links.append({"rel": rel, "type": GEOJSON, "href": href, "method": "GET"})
    collection = {"type": "FeatureCollection", "features": features}
    if page.matched is not None:  # left out when beyond the store's count limit
        collection["numberMatched"] = page.matched
    collection.update(numberReturned=len(features), links=links)
    return JSONResponse(collection, media_type=GEOJSON)


@router.get("")
def landing(request: Request, store: StoreDep) -> dict:
    """The STAC API landing page (a catalog of every product)."""
    root = base_url(request)
    stac_root = f"{root}/stac"
    links = [
        {"rel": "self", "type": "application/json", "href": stac_root},
        {"rel": "root", "type": "application/json", "href": stac_root},
        {"rel": "conformance", "type": "application/json", "href": f"{stac_root}/conformance"},
        {"rel": "data", "type": "application/json", "href": f"{stac_root}/collections"},
        {"rel": "search", "type": GEOJSON, "href": f"{stac_root}/search", "method": "GET"},
        {"rel": "search", "type": GEOJSON, "href": f"{stac_root}/search", "method": "POST"},
        {
            "rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables",
            "type": "application/schema+json",
            "href": f"{stac_root}/queryables",
        },
        {
            "rel": "service-desc",
            "type": "application/vnd.oai.openapi+json;version=3.0",
            "href": f"{root}/openapi.json",
        },
        {"rel": "service-doc", "type": "text/html", "href": f"{root}/docs"},
    ]
    links += [
        {"rel": "child", "type": "application/json", "href": f"{stac_root}/collections/{p.id}"}
        for p in store.list_products()
    ]
    return {
        "type": "Catalog",
        "stac_version": stac.STAC_VERSION,
        "id": "tileserver",
        "title": "tileserver",
        "description": "Satellite imagery catalog of this tileserver",
        "conformsTo": CONFORMANCE,
        "links": links,
    }


@router.get("/conformance")
def conformance() -> dict:
    """The conformance classes this API implements."""
    return {"conformsTo": CONFORMANCE}


@router.get("/collections")
def collections(request: Request, store: StoreDep) -> dict:
    """Every product as a STAC collection."""
    root = base_url(request)
    found = [
        stac.collection(p, store.summary(SearchQuery(collections=[p.id])), root)
        for p in store.list_products()
    ]
    return {
        "collections": found,
        "links": [
            {"rel": "self", "type": "application/json", "href": f"{root}/stac/collections"},
            {"rel": "root", "type": "application/json", "href": f"{root}/stac"},
        ],
    }


@router.get("/collections/{collection_id}")
def get_collection(request: Request, collection_id: str, store: StoreDep) -> dict:
    """One product as a STAC collection."""
    product = store.get_product(collection_id)
    summary = store.summary(SearchQuery(collections=[collection_id]))
    return stac.collection(product, summary, base_url(request))


@router.get("/collections/{collection_id}/items", response_class=GeoJSONResponse)
def collection_items(
    request: Request,
    collection_id: str,
    store: StoreDep,
    bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
    datetime: Annotated[str | None, Query()] = None,
    filter: Annotated[str | None, Query(description="CQL2 text or JSON")] = None,
    filter_lang: Annotated[str | None, Query(alias="filter-lang")] = None,
    sortby: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query()] = 10,
    token: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    """A page of one collection's items (OGC API Features), newest first."""
    store.get_product(collection_id)
    query = search_params(
        collections=collection_id,
        bbox=bbox,
        datetime=datetime,
        filter=filter,
        filter_lang=filter_lang,
        sortby=sortby,
        limit=limit,
        token=token,
    )
    page = store.search(query)
    return item_collection(request, store, page, query, collection_id=collection_id)


@router.get("/collections/{collection_id}/items/{item_id}", response_class=GeoJSONResponse)
def get_item(request: Request, collection_id: str, item_id: str, store: StoreDep) -> JSONResponse:
    """One image as a STAC item."""
    product = store.get_product(collection_id)
    image = store.get_image(f"{collection_id}:{item_id}")
    hidden = not sees_files(store, collection_id)
    return JSONResponse(stac.item(image, product, base_url(request), hidden), media_type=GEOJSON)


@router.get("/search", response_class=GeoJSONResponse)
def search_get(
    request: Request, store: StoreDep, query: Annotated[SearchQuery, Depends(search_params)]
) -> JSONResponse:
    """Item search (GET)."""
    return item_collection(request, store, store.search(query), query)


@router.post("/search", response_class=GeoJSONResponse)
def search_post(request: Request, store: StoreDep, query: SearchQuery) -> JSONResponse:
    """Item search (POST, JSON body)."""
    return item_collection(request, store, store.search(query), query, post=True)


@router.get("/queryables", response_class=SchemaJSONResponse)
def all_queryables(request: Request, store: StoreDep) -> JSONResponse:
    """Properties any filter may name."""
    return JSONResponse(
        stac.queryables(store.queryables(), str(request.url)),
        media_type="application/schema+json",
    )


@router.get("/collections/{collection_id}/queryables", response_class=SchemaJSONResponse)
def collection_queryables(request: Request, collection_id: str, store: StoreDep) -> JSONResponse:
    """Properties a filter on one collection may name."""
    return JSONResponse(
        stac.queryables(store.queryables(collection_id), str(request.url)),
        media_type="application/schema+json",
    )
