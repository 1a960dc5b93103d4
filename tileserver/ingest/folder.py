"""Ingest a folder: STAC items and GeoTIFFs, each registered as one image in its own transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import ValidationError
from tqdm import tqdm

from tileserver.catalog.models import Band, Product, safe_name
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.ingest.geotiff import read_geotiff
from tileserver.ingest.raster import IngestError
from tileserver.ingest.stac import data_assets, load_item, read_item, resolve_href

GEOTIFF_SUFFIXES = {".tif", ".tiff"}


@dataclass
class IngestReport:
    """What an ingest run registered and what it could not, with the reason."""

    registered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    product_created: bool = False


@dataclass(frozen=True)
class Scene:
    """One thing to register: a STAC item or a lone GeoTIFF."""

    path: Path
    name: str
    item: dict | None = None


def find_scenes(root: Path) -> list[Scene]:
    """STAC items, then GeoTIFFs that no item refers to (their assets are not scenes)."""
    root = root.resolve()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    scenes, claimed = [], set()
    for path in paths:
        if path.suffix.lower() == ".json" and (item := load_item(path)):
            scenes.append(Scene(path, safe_name(item.get("id") or path.stem), item))
            claimed |= {resolve_href(a["href"], path) for _, a in data_assets(item)}
    base = root if root.is_dir() else root.parent
    for path in paths:
        if path.suffix.lower() in GEOTIFF_SUFFIXES and str(path) not in claimed:
            relative = path.relative_to(base).with_suffix("")
            scenes.append(Scene(path, safe_name("_".join(relative.parts))))
    return scenes


def load_band_overrides(path: Path | None) -> dict[str, dict]:
    """Band attribute overrides from JSON/YAML: {band name: {attribute: value}}."""
    if path is None:
        return {}
    text = Path(path).read_text()
    doc = json.loads(text) if Path(path).suffix.lower() == ".json" else yaml.safe_load(text)
    if isinstance(doc, dict) and isinstance(doc.get("bands"), dict):
        doc = doc["bands"]
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise IngestError(f"{path}: expected a mapping of band name -> attributes")
    return doc


def apply_overrides(bands: list[Band], overrides: dict[str, dict]) -> list[Band]:
    """Bands with the overrides merged in; an override for an unknown band is an error."""
    unknown = sorted(set(overrides) - {b.name for b in bands})
    if unknown:
        raise IngestError(
            f"band overrides name unknown bands {', '.join(unknown)} "
            f"(bands: {', '.join(b.name for b in bands)})"
        )
    merged = []
    for band in bands:
        extra = overrides.get(band.name, {})
        try:
            data = band.model_dump()
            if "physical_range" not in extra and data["physical_range"] == data["data_range"]:
                data.pop("physical_range")  # a defaulted range follows a new data range
            merged.append(Band.model_validate({**data, **extra}))
        except ValidationError as exc:
            raise IngestError(f"band override for '{band.name}' is invalid: {exc}") from exc
    return merged


def ingest(
    store: CatalogStore,
    root: Path,
    product_id: str,
    when: datetime | None = None,
    band_overrides: dict[str, dict] | None = None,
    progress: bool = True,
    scenes: Iterable[Scene] | None = None,
) -> IngestReport:
    """Register every scene under `root` into `product_id`, creating the product on first use.

    Each scene is written in its own transaction, so a failure leaves the scenes
    before it registered and is reported with its reason; re-running updates in place.
    """
    report = IngestReport()
    scenes = list(scenes if scenes is not None else find_scenes(root))
    try:
        product: Product | None = store.get_product(product_id)
    except NotFound:
        product = None
    for scene in tqdm(scenes, desc=f"ingest {product_id}", unit="scene", disable=not progress):
        try:
            if scene.item is not None:
                image, bands = read_item(scene.item, scene.path, product_id, product, when)
            else:
                image, bands = read_geotiff(scene.path, product_id, scene.name, product, when)
            if product is None:
                bands = apply_overrides(bands, band_overrides or {})
                product = store.create_product(Product(id=product_id, bands=bands))
                report.product_created = True
            store.put_images([image])
            report.registered.append(image.id)
        except (IngestError, ValidationError, OSError) as exc:
            report.failed.append((str(scene.path), str(exc)))
    if not scenes:
        report.failed.append((str(root), "no GeoTIFF or STAC Item found"))
    return report
