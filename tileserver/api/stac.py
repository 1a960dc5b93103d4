"""STAC API over the catalog: core, collections (with collection search), features, item
search with the filter, sort, fields, query and free-text extensions, and transactions.

Transactions write through the same store as `/products` and `/images` (catalog/access.py
ScopedStore decides who may write what); a POSTed item's data assets are checked against
where the caller may name files before any is opened, then read as an import reads a STAC
Item file (ingest/stac.py read_item).
"""

from __future__ import annotations

from datetime import UTC
from datetime import datetime as DateTime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError, model_validator

from tileserver.api.deps import KnownQuery, StoreDep, bad_request
from tileserver.catalog import stac
from tileserver.catalog.access import ScopedStore, sees_files
from tileserver.catalog.geojson import (
    MAX_GEOMETRY_DEPTH,
    geometry_problem,
    json_depth_problem,
    loads_bounded,
)
from tileserver.catalog.models import Band, Image, Product, safe_name
from tileserver.catalog.search import (
    SearchPage,
    SearchQuery,
    datetime_interval,
    decode_offset,
    encode_offset,
    parse_sortby,
)
from tileserver.catalog.store import CatalogStore, Conflict, Forbidden, NotFound
from tileserver.ingest.raster import IngestError
from tileserver.ingest.stac import data_assets, read_item, resolve_href
from tileserver.opener import MAX_HREF, REFUSED, Reach, Refused, reading
from tileserver.render.errors import without_paths

router = APIRouter(tags=["stac"], dependencies=[KnownQuery])  # unknown parameters: 400

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
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0-rc.1/item-search#free-text",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#fields",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#query",
    "https://api.stacspec.org/v1.0.0-rc.1/ogcapi-features#free-text",
    "https://api.stacspec.org/v1.0.0/ogcapi-features/extensions/transaction",
    "https://api.stacspec.org/v1.0.0/collections/extensions/transaction",
    "http://www.opengis.net/spec/ogcapi-features-4/1.0/conf/simpletx",
    "https://api.stacspec.org/v1.0.0-rc.1/collection-search",
    "https://api.stacspec.org/v1.0.0-rc.1/collection-search#free-text",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/simple-query",
]
MAX_COLLECTIONS_LIMIT = 1000
FAR = DateTime.max.replace(tzinfo=UTC)


class StacSearch(SearchQuery):
    """An item search with the fields, query and free-text (`q`) extensions besides the
    core, filter and sort ones; `searched` turns it into the plain SearchQuery the stores
    run (query and q become CQL2 ANDed to the filter)."""

    query: dict[str, Any] | None = None
    q: str | list[str] | None = None
    fields: dict[str, Any] | str | None = None

    @model_validator(mode="after")
    def _extensions(self) -> StacSearch:
        stac.query_filter(self.query)  # ExtensionError is a ValueError: a 400 / 422 naming it
        stac.free_text_terms(self.q)
        stac.parse_fields(self.fields)
        return self

    def searched(self, store: CatalogStore) -> SearchQuery:
        """The search the store runs: `query` and `q` folded into the filter."""
        plain = self.model_dump(by_alias=True, exclude_none=True, exclude={"query", "q", "fields"})
        known = store.queryables() if self.query or self.q else {}
        types = {name: queryable.type for name, queryable in known.items()}
        try:
            queried = stac.query_filter(self.query, types)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        terms = [f for f in (plain.get("filter"), queried) if f is not None]
        words = stac.free_text_terms(self.q)
        if words:
            terms.append(stac.free_text_filter(words, [n for n in stac.FREE_TEXT if n in known]))
        if terms:
            plain["filter"] = terms[0] if len(terms) == 1 else {"op": "and", "args": terms}
            plain["filter-lang"] = "cql2-json"
        try:
            return SearchQuery.model_validate(plain)
        except ValidationError as exc:
            raise bad_request(f"invalid search: {problems_of(exc)}") from None


def base_url(request: Request) -> str:
    """The server's root URL (behind a proxy prefix too), without a trailing slash."""
    return str(request.base_url).rstrip("/")


def _split_numbers(value: str | None) -> list[float] | None:
    """`west,south,east,north` as numbers; a 400 naming bbox otherwise."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise bad_request(f"bbox '{value}' must be comma-separated numbers") from None


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def problems_of(exc: ValidationError) -> str:
    """A pydantic error as one line naming each field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'search'}: {e['msg']}" for e in exc.errors()
    )


def query_from_params(**params) -> StacSearch:
    """A search from GET parameters; problems are one 400 that names them."""
    try:
        return StacSearch.model_validate({k: v for k, v in params.items() if v is not None})
    except ValidationError as exc:
        raise bad_request(f"invalid search: {problems_of(exc)}") from None


def query_param(query: str | None) -> dict | None:
    """The Query extension's GET form: a JSON object."""
    if query is None:
        return None
    try:
        value = loads_bounded(query, "query", stac.MAX_BODY_DEPTH)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(value, dict):
        raise bad_request("query must be a JSON object of property: {operator: value}")
    return value


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
    fields: Annotated[str | None, Query(description="e.g. id,properties.datetime,-links")] = None,
    query: Annotated[
        str | None, Query(description='JSON, e.g. {"eo:cloud_cover":{"lt":10}}')
    ] = None,
    q: Annotated[str | None, Query(description="free text: comma-separated terms (any)")] = None,
) -> StacSearch:
    """The GET form of a search, parsed once."""
    box = _split_numbers(bbox)
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
        fields=fields,
        query=query_param(query),
        q=q,
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
    chosen = stac.parse_fields(query.fields) if isinstance(query, StacSearch) else None
    if chosen is not None:
        features = [stac.select_fields(f, *chosen) for f in features]
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


def _boxes(bbox: list[float]) -> list[tuple[float, float, float, float]]:
    """A bbox as one or two boxes (split at the antimeridian when west > east)."""
    west, south, east, north = bbox
    if west <= east:
        return [(west, south, east, north)]
    return [(west, south, 180.0, north), (-180.0, south, east, north)]


def _meets(a: list[float], b: list[float]) -> bool:
    return any(
        x[0] <= y[2] and y[0] <= x[2] and x[1] <= y[3] and y[1] <= x[3]
        for x in _boxes(a)
        for y in _boxes(b)
    )


def _instant(text: str, open_end: DateTime) -> DateTime:
    return open_end if text == ".." else DateTime.fromisoformat(text.replace("Z", "+00:00"))


@router.get("/collections")
def collections(
    request: Request,
    store: StoreDep,
    bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
    datetime: Annotated[
        str | None, Query(description="an instant, or an interval a/b with .. for open ends")
    ] = None,
    q: Annotated[str | None, Query(description="free text: comma-separated terms (any)")] = None,
    limit: Annotated[int, Query(ge=1, description=f"at most {MAX_COLLECTIONS_LIMIT}")] = 100,
    token: Annotated[str | None, Query()] = None,
) -> dict:
    """Products as STAC collections; collection search: those whose extent meets `bbox`
    and `datetime`, and whose id, title, description or keywords hold a term of `q`."""
    root = base_url(request)
    try:
        checked = SearchQuery.model_validate({"bbox": _split_numbers(bbox), "datetime": datetime})
        terms = stac.free_text_terms(q)
        offset = decode_offset(token)
    except ValidationError as exc:
        raise bad_request(f"invalid collection search: {problems_of(exc)}") from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    window = None
    if checked.datetime is not None:
        low, high = datetime_interval(checked.datetime)
        window = (_instant(low, DateTime.min.replace(tzinfo=UTC)), _instant(high, FAR))
    found = []
    for product in store.list_products():
        summary = store.summary(SearchQuery(collections=[product.id]))
        doc = stac.collection(product, summary, root)
        if checked.bbox is not None and not (
            summary.bbox and _meets(list(summary.bbox), checked.bbox)
        ):
            continue
        if window is not None and not (
            summary.start and summary.start <= window[1] and window[0] <= summary.end
        ):
            continue
        if terms and not stac.text_matches(doc, terms):
            continue
        found.append(doc)
    limit = min(limit, MAX_COLLECTIONS_LIMIT)
    page = found[offset : offset + limit]
    links = [
        {"rel": "self", "type": "application/json", "href": str(request.url)},
        {"rel": "root", "type": "application/json", "href": f"{root}/stac"},
    ]
    if offset + limit < len(found):
        href = str(request.url.include_query_params(token=encode_offset(offset + limit)))
        links.append({"rel": "next", "type": "application/json", "href": href})
    return {
        "collections": page,
        "links": links,
        "numberMatched": len(found),
        "numberReturned": len(page),
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
    fields: Annotated[str | None, Query(description="e.g. id,properties.datetime,-links")] = None,
    query: Annotated[str | None, Query(description="JSON (the Query extension)")] = None,
    q: Annotated[str | None, Query(description="free text: comma-separated terms (any)")] = None,
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
        fields=fields,
        query=query,
        q=q,
    )
    page = store.search(query.searched(store))
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
    request: Request, store: StoreDep, query: Annotated[StacSearch, Depends(search_params)]
) -> JSONResponse:
    """Item search (GET)."""
    return item_collection(request, store, store.search(query.searched(store)), query)


@router.post("/search", response_class=GeoJSONResponse)
def search_post(request: Request, store: StoreDep, query: StacSearch) -> JSONResponse:
    """Item search (POST, JSON body)."""
    page = store.search(query.searched(store))
    return item_collection(request, store, page, query, post=True)


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


# ----------------------------------------------------------------------------- transactions

JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


MERGE_PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            kind: {"schema": {"type": "object"}}
            for kind in ("application/merge-patch+json", "application/json")
        },
    }
}
JSON_PATCH = "application/json-patch+json"


async def json_body(request: Request) -> dict:
    """The request's JSON object, nested at most MAX_BODY_DEPTH levels (400 otherwise).

    A PATCH is a JSON merge patch (RFC 7396), sent as application/merge-patch+json or
    application/json; a JSON Patch (RFC 6902) is refused by name (415), not misread."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == JSON_PATCH:
        raise HTTPException(
            415,
            f"{JSON_PATCH} (RFC 6902) is not supported: send a JSON merge patch "
            "(RFC 7396) as application/merge-patch+json",
        )
    try:
        value = loads_bounded(await request.body(), "body", stac.MAX_BODY_DEPTH)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


BodyDep = Annotated[dict, Depends(json_body)]


def _id_of(doc: dict, kind: str, path_id: str | None) -> str:
    """The document's id, which must be the path's when both are given."""
    found = doc.get("id", path_id)
    if not isinstance(found, str) or not found:
        raise bad_request(f"the {kind} needs an id (a string)")
    if path_id is not None and found != path_id:
        raise bad_request(f"body id '{found}' differs from path id '{path_id}'")
    return found


def _collection_response(request: Request, store: CatalogStore, product: Product, status: int):
    summary = store.summary(SearchQuery(collections=[product.id]))
    doc = stac.collection(product, summary, base_url(request))
    headers = {"Location": doc["links"][0]["href"]} if status == 201 else None
    return JSONResponse(doc, status_code=status, headers=headers)


def _product_from(doc: dict, product_id: str, existing: Product | None) -> Product:
    """The product a STAC collection describes; an existing one keeps its bands and lists."""
    if doc.get("type", "Collection") != "Collection":
        raise bad_request("the body must be a STAC Collection (type 'Collection')")
    try:
        fields = stac.collection_fields(doc)
        base = existing.model_dump() if existing is not None else {"id": product_id}
        return Product.model_validate({**base, **fields})
    except ValidationError as exc:
        raise bad_request(f"invalid collection: {problems_of(exc)}") from None
    except ValueError as exc:
        raise bad_request(f"invalid collection: {exc}") from None


@router.post("/collections", status_code=201, openapi_extra=JSON_BODY)
def create_collection(request: Request, store: StoreDep, body: BodyDep) -> JSONResponse:
    """Create a product from a STAC collection (Transactions); its creator owns it, and its
    first item defines its bands. 409 when the id is taken."""
    product_id = _id_of(body, "collection", None)
    created = store.create_product(_product_from(body, product_id, None))
    return _collection_response(request, store, created, 201)


def _replace_collection(request, store, collection_id: str, doc: dict) -> JSONResponse:
    existing = store.get_product(collection_id)
    _id_of(doc, "collection", collection_id)
    product = _product_from(doc, collection_id, existing)
    return _collection_response(request, store, store.put_product(product), 200)


@router.put("/collections/{collection_id}", openapi_extra=JSON_BODY)
def put_collection(
    request: Request, collection_id: str, store: StoreDep, body: BodyDep
) -> JSONResponse:
    """Replace a collection's title, description and keywords (its writers may)."""
    return _replace_collection(request, store, collection_id, body)


@router.patch("/collections/{collection_id}", openapi_extra=MERGE_PATCH_BODY)
def patch_collection(
    request: Request, collection_id: str, store: StoreDep, body: BodyDep
) -> JSONResponse:
    """Change a collection by a JSON merge patch (RFC 7396) of its STAC form."""
    product = store.get_product(collection_id)
    summary = store.summary(SearchQuery(collections=[collection_id]))
    current = stac.collection(product, summary, base_url(request))
    return _replace_collection(request, store, collection_id, stac.merge_patch(current, body))


@router.delete("/collections/{collection_id}", status_code=204)
def delete_collection(
    collection_id: str,
    store: StoreDep,
    cascade: Annotated[bool, Query(description="also delete the collection's items")] = False,
) -> Response:
    """Delete a collection (its owners may; 409 while it has items, unless cascade=true)."""
    store.delete_product(collection_id, cascade=cascade)
    return Response(status_code=204)


def _reach(request: Request, store: CatalogStore, product: Product) -> Reach:
    """Where the caller may name this product's files: the same rules as PUT /images."""
    if isinstance(store, ScopedStore):
        reach = store.file_reach(product)
        if reach is None:
            raise Forbidden(f"assets: {REFUSED}")
        return reach
    return request.app.state.confinement.for_product(product)


def _checked_item(doc: dict, collection_id: str, item_id: str | None, root: str) -> dict:
    """The item, its shape checked and its server-derived properties dropped; 400 naming
    what is wrong."""
    if doc.get("type") != "Feature":
        raise bad_request("the body must be a STAC Item (a GeoJSON Feature), one per request")
    name = _id_of(doc, "item", item_id)
    if safe_name(name) != name:
        raise bad_request(f"item id '{name}' may hold letters, digits, '.', '_' and '-' only")
    if doc.get("collection", collection_id) != collection_id:
        raise bad_request(f"the item's collection differs from '{collection_id}' in the path")
    problem = geometry_problem(doc.get("geometry")) if doc.get("geometry") else "is missing"
    if problem is not None:
        raise bad_request(f"geometry {problem}")
    properties = doc.get("properties")
    if not isinstance(properties, dict):
        raise bad_request("properties must be an object (with a datetime)")
    assets = doc.get("assets")
    if not isinstance(assets, dict) or not all(isinstance(a, dict) for a in assets.values()):
        raise bad_request("assets must be an object of asset objects")
    if len(assets) > stac.MAX_ITEM_ASSETS:
        raise bad_request(f"assets: more than {stac.MAX_ITEM_ASSETS} assets in one item")
    for key, asset in assets.items():
        for field in ("roles", "eo:bands", "raster:bands", "bands"):
            if field in asset and not isinstance(asset[field], list):
                raise bad_request(f"assets.{key}.{field} must be a list")
        for field in ("eo:bands", "raster:bands", "bands"):
            if not all(isinstance(b, dict) for b in asset.get(field) or []):
                raise bad_request(f"assets.{key}.{field} must be a list of objects")
            if len(asset.get(field) or []) > stac.MAX_ASSET_BANDS:
                raise bad_request(f"assets.{key}.{field}: more than {stac.MAX_ASSET_BANDS} bands")
    for key, asset in data_assets(doc):
        href = asset.get("href")
        if not isinstance(href, str) or not href or len(href) > MAX_HREF:
            raise bad_request(f"assets.{key}.href must be a string of 1 to {MAX_HREF} characters")
        if href.startswith(root + "/"):
            raise bad_request(f"assets.{key}.href is a link of this server: name the file itself")
        if not (href.startswith("/") or href.split("://", 1)[0] in ("http", "https", "s3", "gs")):
            raise bad_request(
                f"assets.{key}.href must be absolute: a path, or an s3://, gs:// or https:// URL"
            )
    kept = {k: v for k, v in properties.items() if k not in stac.DERIVED}
    return {**doc, "id": name, "properties": kept}


def _image_from(
    request: Request, store: CatalogStore, doc: dict, product: Product
) -> tuple[Image, list[Band]]:
    """The image an item describes, its data assets checked against where the caller may
    name files before any is opened, then read as an import reads a STAC Item file."""
    reach = _reach(request, store, product)
    for key, asset in data_assets(doc):
        try:
            reach.check(resolve_href(asset["href"], ""))
        except Refused:
            raise Forbidden(f"assets.{key}: {REFUSED}") from None
    try:
        with reading(reach):
            return read_item(doc, doc["id"], product.id, product if product.bands else None)
    except Refused:
        raise Forbidden(f"assets: {REFUSED}") from None
    except (IngestError, ValidationError, ValueError, TypeError, KeyError) as exc:
        raise bad_request(f"invalid item: {without_paths(str(exc))}") from None


def _writable_item(store: CatalogStore, collection_id: str, item_id: str) -> tuple[Product, Image]:
    """The product and image an update names: 404 when either is missing or hidden, 403
    when the caller reads but may not write them (the Transactions extension's order)."""
    if isinstance(store, ScopedStore):
        product = store.check_write(collection_id)
    else:
        product = store.get_product(collection_id)
    return product, store.get_image(f"{collection_id}:{item_id}")


def _write_item(
    request: Request, store: CatalogStore, collection_id: str, doc: dict, exists: bool
) -> JSONResponse:
    """Check, read and store one item (`exists`: it must already, else it must not)."""
    root = base_url(request)
    if isinstance(store, ScopedStore):
        product = store.check_write(collection_id)  # 404 hidden, 403 read-only: nothing opened
    else:
        product = store.get_product(collection_id)
    if exists:  # the path names it: 404 before the body is looked at
        store.get_image(f"{collection_id}:{doc['id']}")
    item = _checked_item(doc, collection_id, doc.get("id") if exists else None, root)
    if not exists:
        try:
            store.get_image(f"{collection_id}:{item['id']}")
        except NotFound:
            pass
        else:
            raise Conflict(f"item '{item['id']}' already exists: PUT or PATCH it")
    image, bands = _image_from(request, store, item, product)
    if not product.bands:  # the collection's first item defines its bands
        product = store.put_product(product.model_copy(update={"bands": bands}))
    try:
        stored = store.put_images([image])[0]
    except ValueError as exc:  # a footprint shapely cannot read
        raise bad_request(f"invalid item: {exc}") from None
    status = 200 if exists else 201
    body = stac.item(stored, product, root, not sees_files(store, collection_id))
    headers = {"Location": body["links"][0]["href"]} if status == 201 else None
    return JSONResponse(body, status_code=status, media_type=GEOJSON, headers=headers)


@router.post(
    "/collections/{collection_id}/items",
    status_code=201,
    response_class=GeoJSONResponse,
    openapi_extra=JSON_BODY,
)
def create_item(request: Request, collection_id: str, store: StoreDep, body: BodyDep):
    """Add an item (Transactions): its data assets become the image's files, where the
    caller may name files (403 otherwise, the same text whether the file exists or not)."""
    return _write_item(request, store, collection_id, body, exists=False)


@router.put(
    "/collections/{collection_id}/items/{item_id}",
    response_class=GeoJSONResponse,
    openapi_extra=JSON_BODY,
)
def put_item(request: Request, collection_id: str, item_id: str, store: StoreDep, body: BodyDep):
    """Replace an item (404 when it does not exist; the body's id must be the path's)."""
    _writable_item(store, collection_id, item_id)  # 404 / 403 before the body is looked at
    _id_of(body, "item", item_id)
    return _write_item(request, store, collection_id, {**body, "id": item_id}, exists=True)


@router.patch(
    "/collections/{collection_id}/items/{item_id}",
    response_class=GeoJSONResponse,
    openapi_extra=MERGE_PATCH_BODY,
)
def patch_item(request: Request, collection_id: str, item_id: str, store: StoreDep, body: BodyDep):
    """Change an item by a JSON merge patch (RFC 7396) of its STAC form."""
    product, image = _writable_item(store, collection_id, item_id)
    current = stac.item(image, product, base_url(request))
    patched = stac.merge_patch(current, body)
    if not isinstance(patched, dict):
        raise bad_request("the patch must be a JSON object")
    problem = json_depth_problem(patched, stac.MAX_BODY_DEPTH)
    if problem is not None:
        raise bad_request(f"the patched item {problem}")
    _id_of(patched, "item", item_id)
    return _write_item(request, store, collection_id, patched, exists=True)


@router.delete("/collections/{collection_id}/items/{item_id}", status_code=204)
def delete_item(collection_id: str, item_id: str, store: StoreDep) -> Response:
    """Delete an item: the image leaves the catalog (its files stay where they are)."""
    store.get_product(collection_id)
    store.delete_image(f"{collection_id}:{item_id}")
    return Response(status_code=204)
