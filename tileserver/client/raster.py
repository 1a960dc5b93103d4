"""Pixels through the server's downloads: the Catalog's raster parameters as query
parameters of `/images/{id}/download.tif`, `/searches/{id}/mosaic.tif` and
`/searches/{id}/stack.tif`, and the GeoTIFF answers read back into numpy arrays."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy
from rasterio.io import MemoryFile

from tileserver.client.http import CatalogClient


def band_list(bands: str | Sequence[str]) -> list[str]:
    """The Catalog's `bands`: "red green blue" or ["red", "green", "blue"]."""
    names = bands.split() if isinstance(bands, str) else [str(b) for b in bands]
    if not names:
        raise ValueError("bands: name at least one band")
    return names


def _entry(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return ",".join(str(v) for v in value)
    raise ValueError(f"scaling entry {value!r}: use a mode, (lo, hi) or (lo, hi, out_lo, out_hi)")


def _json_entry(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else list(value)


def scaling_params(scaling: Any, names: list[str]) -> list[tuple[str, str]]:
    """The Catalog's `scaling` (a mode, a tuple, a list per band, a dict by band name) as
    the server's `scaling` query parameters (its repeated or JSON forms)."""
    if scaling is None:
        return []
    if isinstance(scaling, str | tuple):  # one entry for every band
        return [("scaling", _entry(scaling))]
    if isinstance(scaling, Mapping):
        body = {str(k): _json_entry(v) for k, v in scaling.items()}
        return [("scaling", json.dumps(body))]
    entries = list(scaling)
    if any(entry is None for entry in entries):  # None: the band's default
        body = {n: _json_entry(e) for n, e in zip(names, entries, strict=True) if e is not None}
        return [("scaling", json.dumps(body))]
    return [("scaling", _entry(entry)) for entry in entries]


def geocontext_request(geocontext: Any) -> tuple[list[tuple[str, str]], dict | None]:
    """An area: None (the source's own grid), a WGS84 (minx, miny, maxx, maxy), a GeoJSON
    geometry or Feature, or anything with `__geo_interface__` (shapely, an AOI). Returns the
    query parameters and the POST body."""
    if geocontext is None:
        return [], None
    if (
        isinstance(geocontext, Sequence)
        and len(geocontext) == 4
        and not isinstance(geocontext, str)
    ):
        return [("bbox", ",".join(repr(float(v)) for v in geocontext))], None
    geometry = getattr(geocontext, "__geo_interface__", geocontext)
    if isinstance(geometry, Mapping) and geometry.get("type") == "Feature":
        geometry = geometry["geometry"]
    if not isinstance(geometry, Mapping) or "type" not in geometry:
        raise ValueError("geocontext: give a bbox (4 numbers in WGS84) or a GeoJSON geometry")
    return [], {"geometry": dict(geometry)}


def raster_params(
    bands,
    *,
    geocontext=None,
    crs=None,
    resolution=None,
    resampler=None,
    processing_level=None,
    scaling=None,
    data_type=None,
    nodata=None,
    mask_alpha=None,
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[list[str], list[tuple[str, str]], dict | None]:
    """(band names, query parameters, POST body) of one download."""
    if mask_alpha is False:
        raise NotImplementedError(
            "mask_alpha=False: the server always masks by the product's alpha band"
        )
    names = band_list(bands)
    params, body = geocontext_request(geocontext)
    params.append(("bands", ",".join(names)))
    params += scaling_params(scaling, names)
    for key, value in (
        ("crs", crs),
        ("resolution", resolution),
        ("resampling", resampler),
        ("processing_level", processing_level),
        ("data_type", data_type),
        ("nodata", nodata),
    ):
        if value is not None:
            params.append((key, str(getattr(value, "value", value))))
    params += list(extra)
    return names, params, body


def fetch(client: CatalogClient, path: str, params, body) -> bytes:
    """The answer's bytes: GET, or POST when there is an area geometry."""
    if body is None:
        return client.request("GET", path, params=params).content
    return client.request("POST", path, params=params, json=body).content


def raster_info(client: CatalogClient, path: str, params, body) -> dict:
    """The server's description of exactly the file the same parameters download."""
    if body is None:
        return client.json("GET", path, params=params)
    return client.json("POST", path, params=params, json=body)


def read_geotiff(content: bytes, mask_nodata: bool) -> numpy.ndarray:
    """(bands, y, x) of a downloaded GeoTIFF; masked where the pixels are its nodata."""
    with MemoryFile(content) as memory, memory.open() as dataset:
        return dataset.read(masked=mask_nodata)


def write_file(content: bytes, dest) -> str:
    """Write a download to `dest` (a path or a binary file object); its name, if any."""
    if hasattr(dest, "write"):
        dest.write(content)
        return getattr(dest, "name", "")
    with open(dest, "wb") as f:
        f.write(content)
    return str(dest)


def profile(content: bytes) -> dict:
    """The CRS and transform of a downloaded GeoTIFF (for tests and callers)."""
    with MemoryFile(content) as memory, memory.open() as dataset:
        return {"crs": dataset.crs, "transform": dataset.transform}
