"""The layer endpoints (api/factory.py) of one image, mounted on `/images/{image_id}`."""

from __future__ import annotations

from fastapi import APIRouter

from tileserver.api.deps import KnownQuery, SettingsDep, StoreDep
from tileserver.api.factory import LayerEndpoints
from tileserver.layers import ImageLayer

router = APIRouter(dependencies=[KnownQuery])


async def image_layer(image_id: str, store: StoreDep, settings: SettingsDep) -> ImageLayer:
    """The image as the caller sees it."""
    return ImageLayer(store, image_id, settings.reader_threads)


LayerEndpoints(router, "/images/{image_id}", "image", image_layer, {"download": False}, ["tiles"])
