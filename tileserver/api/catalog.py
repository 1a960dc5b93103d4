"""Catalog REST: products with their bands, and images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel

from tileserver.api.deps import StoreDep, check_presets
from tileserver.api.stac import base_url
from tileserver.catalog.access import ScopedStore, check_files, sees_files
from tileserver.catalog.geojson import geometry_problem
from tileserver.catalog.models import Image, Product, RenderPreset, split_image_id
from tileserver.catalog.stac import shown_files
from tileserver.catalog.store import ImagePage

router = APIRouter(tags=["catalog"])


class ProductList(BaseModel):
    """Every product."""

    products: list[Product]


class ImageList(ImagePage):
    """A page of images with a link to the next one."""

    links: list[dict] = []


@router.get("/products", response_model=ProductList)
def list_products(store: StoreDep) -> ProductList:
    """Every product with its bands."""
    return ProductList(products=store.list_products())


@router.post("/products", response_model=Product, status_code=201)
def create_product(product: Product, store: StoreDep) -> Product:
    """Create a product (409 when the id is taken); 400 names a preset a tile request
    would refuse."""
    check_presets(product)
    return store.create_product(product)


@router.get("/products/{product_id}", response_model=Product)
def get_product(product_id: str, store: StoreDep) -> Product:
    """One product with its bands."""
    return store.get_product(product_id)


@router.get("/products/{product_id}/presets", response_model=dict[str, RenderPreset])
def get_presets(product_id: str, store: StoreDep) -> dict[str, RenderPreset]:
    """The product's render presets, each usable as `?preset=NAME` on the rendering routes of
    its images and searches."""
    return store.get_product(product_id).presets


@router.put("/products/{product_id}", response_model=Product)
def put_product(product_id: str, product: Product, store: StoreDep) -> Product:
    """Create or replace a product; the body's id must match the path."""
    if product.id != product_id:
        raise HTTPException(400, f"body id '{product.id}' differs from path id '{product_id}'")
    check_presets(product)
    return store.put_product(product)


@router.delete("/products/{product_id}", status_code=204)
def delete_product(
    product_id: str,
    store: StoreDep,
    cascade: Annotated[bool, Query(description="also delete the product's images")] = False,
) -> Response:
    """Delete a product (409 while it has images, unless cascade=true)."""
    store.delete_product(product_id, cascade=cascade)
    return Response(status_code=204)


def shown(image: Image, store: StoreDep, request: Request) -> Image:
    """The image as the caller may see it: readers get the server's download links as file
    hrefs, never where the files are (writers and admins see the hrefs they wrote)."""
    if sees_files(store, image.product_id):
        return image
    return shown_files(image, store.get_product(image.product_id), base_url(request))


@router.get("/products/{product_id}/images", response_model=ImageList)
def list_images(
    product_id: str,
    request: Request,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    token: Annotated[str | None, Query(description="next_token of the previous page")] = None,
) -> ImageList:
    """A page of the product's images, newest first."""
    try:
        page = store.list_images(product_id, limit=limit, token=token)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    page.images = [shown(image, store, request) for image in page.images]
    links = []
    if page.next_token:
        url = request.url.include_query_params(token=page.next_token, limit=limit)
        links.append({"rel": "next", "href": str(url), "type": "application/json"})
    return ImageList(images=page.images, next_token=page.next_token, links=links)


def _checked_id(image_id: str) -> str:
    try:
        split_image_id(image_id)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    return image_id


@router.get("/images/{image_id}", response_model=Image)
def get_image(image_id: str, request: Request, store: StoreDep) -> Image:
    """One image by its global id `product_id:name`."""
    return shown(store.get_image(_checked_id(image_id)), store, request)


@router.put("/images/{image_id}", response_model=Image)
def put_image(image_id: str, image: Image, request: Request, store: StoreDep) -> Image:
    """Create or replace an image; a `remote` image has no files and no tiles.

    Its files must lie where the product may read (ScopedStore also checks a tenant's own
    grants); an admin's are checked here, so an href nobody could open is a 403 now, not a
    409 at the first tile.
    """
    if image.id != _checked_id(image_id):
        raise HTTPException(400, f"body id '{image.id}' differs from path id '{image_id}'")
    problem = geometry_problem(image.geometry)  # a footprint with a bbox is not read before
    if problem is not None:
        raise HTTPException(400, f"geometry {problem}")
    if not isinstance(store, ScopedStore):
        confinement = request.app.state.confinement
        check_files(image, confinement.for_product(store.get_product(image.product_id)))
    try:
        return store.put_images([image])[0]
    except ValueError as exc:  # a footprint shapely cannot read: no bbox to write
        raise HTTPException(400, str(exc)) from None


@router.delete("/images/{image_id}", status_code=204)
def delete_image(image_id: str, store: StoreDep) -> Response:
    """Delete one image."""
    store.delete_image(_checked_id(image_id))
    return Response(status_code=204)
