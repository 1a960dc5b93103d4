"""Band attribute overrides a user gives for the product an ingest creates."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from tileserver.catalog.models import Band
from tileserver.ingest.raster import IngestError


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
