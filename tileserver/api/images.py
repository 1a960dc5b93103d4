"""The layer endpoints (api/factory.py) of one image, mounted on `/images/{image_id}`."""

from __future__ import annotations

from fastapi import APIRouter

from tileserver.api.deps import KnownQuery, image_layer
from tileserver.api.factory import LayerEndpoints

router = APIRouter(dependencies=[KnownQuery])
LayerEndpoints(router, "/images/{image_id}", "image", image_layer, {"download": False}, ["tiles"])
