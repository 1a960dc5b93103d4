"""Soak test: a real `tileserver serve --demo` under a mixed, seeded load for a fixed time.

    python bench/soak.py                        # 600 s, 32 clients, 2 workers -> bench/soak.json
    python bench/soak.py --duration 30 --clients 8 --workers 1 --out /tmp/soak.json
    python bench/soak.py --with-key             # keys checked: an admin key made for the run
    SOAK_API_KEY=KEY python bench/soak.py       # `Authorization: Bearer KEY` on every request

Steps:

1. A fresh data folder (a temporary one, removed afterwards unless `--keep`, or `--data-dir`);
   `--demo-from DIR` reuses demo data made elsewhere (a folder with `data/` and `catalog.db`,
   as tests/conftest.py's `demo_dir`): its COGs are linked, its catalog copied.
2. A parcel layer `soak-fields` (40 rectangles over the demo area, written as GeoJSON) is
   loaded into the demo catalog with `tileserver parcels load`: the demo has no parcels.
3. `python -m tileserver.cli serve --demo --workers W` starts on a free loopback port with
   TILESERVER_DATA_DIR set to that folder (the first start generates the demo: that time is
   `server.ready_s`). Its stderr and stdout go to log files in the data folder.
   TILESERVER_* variables of this environment are passed on (listed in the JSON, secrets
   redacted), except TILESERVER_DATA_DIR.
4. Setup over HTTP, not counted: list the images, register four searches (the whole
   product, June 2024, `eo:cloud_cover < 20` in CQL2 text, a bbox with a CQL2-JSON filter
   and a cloud-cover sort), read their TileJSON for the mosaic minzoom.
5. `--clients` asyncio tasks share one httpx.AsyncClient (keep-alive, one connection per
   client at most) for `--duration` seconds. Each first sends its share of a coverage round
   (every kind and every bad-request probe once, so short runs exercise everything), then
   draws kinds by weight (KINDS) with its own seeded random.Random: tiles at random zooms,
   bands, scalings, formats, @2x and pixel selections over a fixed area, so small zooms
   repeat (cache hits) and large ones rarely do (misses). Follow-ups are their own kinds:
   a chip file named by a chip answer, a STAC `next` page.
6. Every ~`--rss-interval` s: the summed VmRSS (and RssAnon), threads and open file
   descriptors of the server's process tree (master and workers), and the 1-minute load
   average.
7. The server is stopped (SIGTERM, then its processes by pid after 30 s) and both logs are
   scanned for "Traceback" blocks, ERROR and WARNING lines.

An error is a 5xx, any status a request does not expect (tiles, searches ...: 200; a
revalidation: 304; each bad-request probe: its own 4xx), a 200 of the wrong content type
or empty, a connection error, a timeout (`--timeout`, 30 s), a server process that exits
or is replaced during the run, or a traceback in the server's logs. The exit status is 1
when there was any, 0 otherwise (2: the soak could not start).

RSS growth after warm-up: the first 20 % of the run is warm-up (caches fill); the median
of the first eighth of the later samples (minute 3 of a 10-minute run) against the median
of the last eighth (the last minute). Also the least-squares slope of the later samples.
Caches that fill by design (tile LRU: TILESERVER_CACHE_MAX_BYTES, 256 MiB per worker;
GDAL block cache: GDAL_CACHEMAX, 200 MB per worker) grow RSS until full:
`cache_hint.distinct_tile_mib` is the bytes of all distinct tiles served, an upper bound
on what the tile caches hold. Open files are summarised over the same windows.

`--kinds image_tile,mosaic_tile` draws only those kinds (after the coverage round), to
find which requests a problem comes with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:  # run as `python bench/soak.py` from anywhere
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
import morecantile  # noqa: E402
from search_mosaic import free_port, machine  # noqa: E402
from vs_titiler import process_tree  # noqa: E402

PRODUCT = "sentinel-2-l2a"
PARCEL_LAYER = "soak-fields"
SEED = 20261121
# Where tiles are drawn: inside every demo image's bounds (two dates are shifted east by
# 2.56 km), so single-image tiles never miss the image and every mosaic paints something.
AREA = (15.075, 52.265, 15.14, 52.345)  # west, south, east, north (WGS84)
IMAGE_ZOOMS = range(10, 17)  # the images' own range is 11..13: clients overzoom
MOSAIC_MAX_ZOOM = 16
# mosaic tiles from the images' own zooms down to here: the dynamic compositing path. Lower
# zooms come from each search's pyramid, built once in the background (503 + Retry-After
# until then); tests/test_search_pyramid.py and bench/pyramid.py exercise those.
MOSAIC_MIN_ZOOM = 11  # the demo images own 11..13
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
WARMUP_SHARE = 0.2
TRACEBACK = "Traceback (most recent call last)"
PY_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")  # warnings.warn's first line
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")

# kind -> weight (per cent of drawn requests); follow-ups (chip_file, stac_next) not drawn
KINDS: dict[str, float] = {
    "image_tile": 30,
    "mosaic_tile": 18,
    "tile_revalidate": 3,
    "mosaic_assets": 2,
    "tilejson": 4,
    "wmts": 3,
    "stac_search_get": 8,
    "stac_search_post": 8,
    "browse": 5,
    "search_register": 1,
    "summary": 2,
    "parcel": 3,
    "timeseries": 2,
    "download": 1,
    "chips_gallery": 1,
    "chips_raw": 1,
    "bad_request": 8,
}
FOLLOW_UPS = ("chip_file", "stac_next")

SEARCHES: dict[str, dict] = {
    "all": {"collections": [PRODUCT]},
    "june": {"collections": [PRODUCT], "datetime": "2024-06-01T00:00:00Z/2024-06-30T23:59:59Z"},
    "clear": {
        "collections": [PRODUCT],
        "filter": "eo:cloud_cover < 20",
        "filter-lang": "cql2-text",
    },
    "bbox_sorted": {
        "collections": [PRODUCT],
        "bbox": [15.0, 52.25, 15.2, 52.36],
        "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]},
        "filter-lang": "cql2-json",
        "sortby": [{"field": "eo:cloud_cover", "direction": "asc"}],
    },
}

ANY_FORMAT = ("png", "png", "jpeg", "webp")
# (formats, parameters) of single-image tiles; the default (UInt16) only fits PNG
IMAGE_RENDERINGS: list[tuple[tuple[str, ...], dict]] = [
    (("png",), {}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "display"}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "display"}),
    (ANY_FORMAT, {"bands": "B08,B04,B03", "scaling": "auto"}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "2%,98%"}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "0,3000", "resampling": "bilinear"}),
    (ANY_FORMAT, {"bands": "B11", "scaling": "display"}),
    (ANY_FORMAT, {"bands": "SCL"}),
    (ANY_FORMAT, {"expression": "(B08-B04)/(B08+B04)", "colormap_name": "rdylgn"}),
]
MOSAIC_RENDERINGS: list[tuple[tuple[str, ...], dict]] = [
    (("png",), {}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "display"}),
    (ANY_FORMAT, {"bands": "B04,B03,B02", "scaling": "display"}),
    (ANY_FORMAT, {"bands": "B08,B04,B03", "scaling": "0,5000"}),
    (ANY_FORMAT, {"bands": "SCL"}),
]
PIXEL_SELECTIONS = ["first"] * 6 + ["highest", "mean", "median"]
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


# --------------------------------------------------------------------------- requests


@dataclass
class Call:
    """One request and what its answer must be."""

    kind: str
    method: str
    path: str
    params: Any = None
    body: Any = None
    headers: dict | None = None
    expect: tuple[int, ...] = (200,)
    media: str | None = None  # content-type prefix a 200 must have
    probe: str | None = None  # bad_request: the probe's name
    follow: str | None = None  # "chips" / "stac": derive a follow-up from the answer


@dataclass
class Setup:
    """What the load needs from the running server."""

    images: list[str]
    searches: dict[str, dict]  # name -> {id, minzoom, maxzoom, body}
    parcels: list[str]
    chip_points: list[tuple[float, float]]
    image_tiles: dict[int, list[tuple[int, int, int]]]
    mosaic_tiles: dict[int, list[tuple[int, int, int]]]
    keyed: bool = False  # the server checks API keys


def area_tiles(zooms) -> dict[int, list[tuple[int, int, int]]]:
    """Web Mercator tiles meeting AREA, per zoom."""
    return {z: [(t.z, t.x, t.y) for t in WEB_MERCATOR.tiles(*AREA, zooms=[z])] for z in zooms}


def tile_path(prefix: str, tile: tuple[int, int, int], fmt: str, scale: int = 1) -> str:
    z, x, y = tile
    suffix = f"@{scale}x" if scale > 1 else ""
    return f"{prefix}/tiles/WebMercatorQuad/{z}/{x}/{y}{suffix}.{fmt}"


def rendering(rng: random.Random, choices) -> tuple[str, dict]:
    formats, params = rng.choice(choices)
    return rng.choice(formats), dict(params)


def random_bbox(rng: random.Random) -> list[float]:
    """A bbox over the demo area, sometimes beside it (no match), 3 decimals."""
    west = rng.uniform(14.95, 15.16)
    south = rng.uniform(52.22, 52.34)
    width, height = rng.uniform(0.005, 0.15), rng.uniform(0.005, 0.1)
    return [round(v, 3) for v in (west, south, west + width, south + height)]


def random_window(rng: random.Random) -> tuple[str, str]:
    """A date window of 10 to 80 days in May-July 2024 (a few distinct ones: chips repeat)."""
    start = rng.choice(["2024-05-01", "2024-05-10", "2024-06-01", "2024-06-10"])
    end = rng.choice(["2024-06-15", "2024-07-05", "2024-07-31"])
    return (start, end) if start < end else ("2024-05-01", end)


class Workload:
    """Builds each kind of request from a seeded random.Random."""

    def __init__(self, setup: Setup):
        self.s = setup
        self.etags: deque[tuple[str, str]] = deque(maxlen=500)  # (URL, ETag) of tiles seen

    # --- tiles

    def image_tile(self, rng: random.Random) -> Call:
        zoom = rng.choice(list(self.s.image_tiles))
        tile = rng.choice(self.s.image_tiles[zoom])
        fmt, params = rendering(rng, IMAGE_RENDERINGS)
        scale = 2 if rng.random() < 0.1 else 1
        path = tile_path(f"/images/{rng.choice(self.s.images)}", tile, fmt, scale)
        return Call("image_tile", "GET", path, params, media=MEDIA[fmt])

    def mosaic_tile(self, rng: random.Random) -> Call:
        search = self.s.searches[rng.choice(list(self.s.searches))]
        zooms = [z for z in self.s.mosaic_tiles if z >= max(search["minzoom"], MOSAIC_MIN_ZOOM)]
        tile = rng.choice(self.s.mosaic_tiles[rng.choice(zooms)])
        fmt, params = rendering(rng, MOSAIC_RENDERINGS)
        selection = rng.choice(PIXEL_SELECTIONS)
        if selection != "first":
            params["pixel_selection"] = selection
        if rng.random() < 0.1:
            params["sortby"] = "datetime"
        scale = 2 if rng.random() < 0.05 else 1
        path = tile_path(f"/searches/{search['id']}", tile, fmt, scale)
        return Call("mosaic_tile", "GET", path, params, media=MEDIA[fmt])

    def tile_revalidate(self, rng: random.Random) -> Call:
        if not self.etags:
            return self.image_tile(rng)
        path, etag = rng.choice(self.etags)
        return Call("tile_revalidate", "GET", path, headers={"If-None-Match": etag}, expect=(304,))

    def mosaic_assets(self, rng: random.Random) -> Call:
        search = self.s.searches[rng.choice(list(self.s.searches))]
        z, x, y = rng.choice(self.s.mosaic_tiles[rng.choice(list(self.s.mosaic_tiles))])
        path = f"/searches/{search['id']}/tiles/WebMercatorQuad/{z}/{x}/{y}/assets"
        return Call("mosaic_assets", "GET", path, media="application/json")

    def _layer(self, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return f"/images/{rng.choice(self.s.images)}"
        return f"/searches/{self.s.searches[rng.choice(list(self.s.searches))]['id']}"

    def tilejson(self, rng: random.Random) -> Call:
        fmt, params = rendering(rng, IMAGE_RENDERINGS[1:])
        params["tile_format"] = fmt
        return Call("tilejson", "GET", f"{self._layer(rng)}/tilejson.json", params, media="app")

    def wmts(self, rng: random.Random) -> Call:
        fmt, params = rendering(rng, IMAGE_RENDERINGS[1:])
        params["tile_format"] = fmt
        path = f"{self._layer(rng)}/WMTSCapabilities.xml"
        return Call("wmts", "GET", path, params, media="application/xml")

    # --- search

    def stac_search_get(self, rng: random.Random) -> Call:
        params: dict = {"limit": rng.choice([1, 3, 5, 10, 50])}
        if rng.random() < 0.8:
            params["collections"] = PRODUCT
        if rng.random() < 0.6:
            params["bbox"] = ",".join(str(v) for v in random_bbox(rng))
        if rng.random() < 0.5:
            start, end = random_window(rng)
            params["datetime"] = rng.choice([f"{start}/{end}", f"{start}T00:00:00Z/..", start])
        if rng.random() < 0.5:
            params["filter"] = rng.choice(
                [
                    f"eo:cloud_cover < {rng.randint(1, 60)}",
                    "platform = 'sentinel-2a' AND eo:cloud_cover >= 10",
                    "S_INTERSECTS(geometry, POINT(15.1 52.3))",
                    "datetime > TIMESTAMP('2024-06-01T00:00:00Z')",
                ]
            )
        if rng.random() < 0.3:
            params["sortby"] = rng.choice(["-datetime", "+eo:cloud_cover", "-eo:cloud_cover"])
        return Call(
            "stac_search_get",
            "GET",
            "/stac/search",
            params,
            media="application/geo+json",
            follow="stac",
        )

    def stac_search_post(self, rng: random.Random) -> Call:
        body: dict = {"collections": [PRODUCT], "limit": rng.choice([1, 2, 5, 10, 100])}
        if rng.random() < 0.5:
            body["bbox"] = random_bbox(rng)
        elif rng.random() < 0.5:
            w, s, e, n = random_bbox(rng)
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            body["intersects"] = {"type": "Polygon", "coordinates": [ring]}
        if rng.random() < 0.5:
            start, end = random_window(rng)
            body["datetime"] = f"{start}T00:00:00Z/{end}T23:59:59Z"
        if rng.random() < 0.5:
            body["filter"] = {
                "op": "and",
                "args": [
                    {"op": "<", "args": [{"property": "eo:cloud_cover"}, rng.randint(1, 60)]},
                    {"op": "=", "args": [{"property": "platform"}, "sentinel-2a"]},
                ],
            }
            body["filter-lang"] = "cql2-json"
        if rng.random() < 0.3:
            body["sortby"] = [{"field": "eo:cloud_cover", "direction": rng.choice(["asc", "desc"])}]
        return Call(
            "stac_search_post",
            "POST",
            "/stac/search",
            body=body,
            media="application/geo+json",
            follow="stac",
        )

    def browse(self, rng: random.Random) -> Call:
        image = rng.choice(self.s.images)
        item = image.split(":", 1)[1]
        choices = [
            ("/stac", None, "application/json"),
            ("/stac/conformance", None, "application/json"),
            ("/stac/collections", None, "application/json"),
            (f"/stac/collections/{PRODUCT}", None, "application/json"),
            (f"/stac/collections/{PRODUCT}/items", {"limit": rng.randint(1, 10)}, "application/"),
            (f"/stac/collections/{PRODUCT}/items/{item}", None, "application/"),
            ("/stac/queryables", None, "application/"),
            ("/products", None, "application/json"),
            (f"/products/{PRODUCT}/images", {"limit": rng.randint(1, 10)}, "application/json"),
            (f"/images/{image}", None, "application/json"),
            ("/", None, "text/html"),
            (f"/images/{image}/map", None, "text/html"),
            ("/healthz", None, "application/json"),
        ]
        path, params, media = rng.choice(choices)
        return Call("browse", "GET", path, params, media=media)

    def search_register(self, rng: random.Random) -> Call:
        if rng.random() < 0.8:  # an existing search again: same id, no catalog write
            body = self.s.searches[rng.choice(list(self.s.searches))]["body"]
        else:  # a new one (a catalog write): one of 60 cloud-cover thresholds
            body = {"collections": [PRODUCT], "filter": f"eo:cloud_cover < {rng.randint(1, 60)}"}
        return Call("search_register", "POST", "/searches", body=body, media="application/json")

    def summary(self, rng: random.Random) -> Call:
        interval = rng.choice([None, "month", "week", "day"])
        params = {"interval": interval} if interval else None
        if rng.random() < 0.5:
            search = self.s.searches[rng.choice(list(self.s.searches))]["id"]
            return Call(
                "summary", "GET", f"/searches/{search}/summary", params, media="application/json"
            )
        body = {"collections": [PRODUCT], "bbox": random_bbox(rng)}
        return Call("summary", "POST", "/summary", params, body=body, media="application/json")

    # --- parcels, statistics, downloads, chips

    def parcel(self, rng: random.Random) -> Call:
        if rng.random() < 0.5:
            lon = rng.uniform(AREA[0], AREA[2])
            lat = rng.uniform(AREA[1], AREA[3])
            params = {"lon": round(lon, 5), "lat": round(lat, 5)}
            # a point between parcels answers 404: both are right, nothing else is
            return Call(
                "parcel",
                "GET",
                f"/parcels/{PARCEL_LAYER}/at",
                params,
                expect=(200, 404),
                media="application/json",
            )
        params = {"geometry": "true"} if rng.random() < 0.5 else None
        path = f"/parcels/{PARCEL_LAYER}/{rng.choice(self.s.parcels)}"
        return Call("parcel", "GET", path, params, media="application/json")

    def timeseries(self, rng: random.Random) -> Call:
        start, end = random_window(rng)
        band = rng.choice(["B04", "B08", "B11", "SCL"])
        fmt = rng.choice(["json", "json", "csv"])
        media = "text/csv" if fmt == "csv" else "application/json"
        if rng.random() < 0.6:
            params = {
                "product": PRODUCT,
                "band": band,
                "start_date": start,
                "end_date": end,
                "format": fmt,
            }
            path = f"/parcels/{PARCEL_LAYER}/{rng.choice(self.s.parcels)}/timeseries"
            return Call("timeseries", "GET", path, params, media=media)
        lon, lat = rng.uniform(AREA[0], AREA[2] - 0.01), rng.uniform(AREA[1], AREA[3] - 0.006)
        size = rng.uniform(0.001, 0.01)
        ring = [
            [lon, lat],
            [lon + size, lat],
            [lon + size, lat + size * 0.6],
            [lon, lat + size * 0.6],
            [lon, lat],
        ]
        body = {
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "product": PRODUCT,
            "band": band,
            "start_date": start,
            "end_date": end,
        }
        return Call("timeseries", "POST", "/timeseries", {"format": fmt}, body=body, media=media)

    def download(self, rng: random.Random) -> Call:
        lon, lat = rng.uniform(AREA[0], AREA[2] - 0.01), rng.uniform(AREA[1], AREA[3] - 0.006)
        bbox = ",".join(f"{v:.4f}" for v in (lon, lat, lon + 0.007, lat + 0.004))
        params = {"bbox": bbox, "bands": "B04,B03,B02"}
        if rng.random() < 0.3:
            path = f"/images/{rng.choice(self.s.images)}/raster_info"
            return Call("download", "GET", path, params, media="application/json")
        if rng.random() < 0.5:
            path = f"/images/{rng.choice(self.s.images)}/download.tif"
            return Call("download", "GET", path, params, media="image/tiff")
        path = f"/searches/{self.s.searches['all']['id']}/mosaic.tif"
        return Call("download", "GET", path, params, media="image/tiff")

    def _chip_where(self, rng: random.Random, kind: str) -> tuple[str, dict]:
        start, end = random_window(rng)
        params = {"start_date": start, "end_date": end}
        if rng.random() < 0.3:
            return f"/parcels/{PARCEL_LAYER}/{rng.choice(self.s.parcels)}/chips/{kind}", params
        lon, lat = rng.choice(self.s.chip_points)
        return f"/chips/{kind}", {**params, "lon": lon, "lat": lat}

    def chips_gallery(self, rng: random.Random) -> Call:
        path, params = self._chip_where(rng, "gallery")
        params["bands"] = rng.choice(["B08_B04_B03", "B04_B03_B02", "B11_B08_B04"])
        params["lut"] = rng.choice(["5_95", "2_98", "0_5000_0_3000_0_3000"])
        params["size"] = rng.choice([64, 128, 256])
        return Call("chips_gallery", "GET", path, params, media="text/html", follow="chips")

    def chips_raw(self, rng: random.Random) -> Call:
        path, params = self._chip_where(rng, "raw")
        params["band"] = rng.choice(["B04", "B08", "B11", "SCL"])
        params["chipsize"] = rng.choice([640, 1280, 2560])
        return Call("chips_raw", "GET", path, params, media="application/json", follow="chips")

    # --- bad requests: each must answer its own 4xx

    def probes(self) -> dict[str, Call]:
        image = f"/images/{self.s.images[0]}"
        search = self.s.searches["all"]
        tile = self.s.image_tiles[12][0]
        where = {"lon": 15.1, "lat": 52.3, "start_date": "2024-05-01", "end_date": "2024-07-31"}
        timeseries = {
            "geometry": {"type": "Point", "coordinates": [15.1, 52.3]},
            "product": PRODUCT,
            "band": "B04",
            "start_date": "2024-05-01",
            "end_date": "2024-07-31",
        }

        def get(path, params=None, expect=(400,)):
            return Call("bad_request", "GET", path, params, expect=expect)

        probes = {
            "tile_zoom_out_of_range": get(f"{image}/tiles/WebMercatorQuad/40/1/1.png"),
            "tile_outside_matrix": get(
                f"{image}/tiles/WebMercatorQuad/12/99999/1.png", expect=(404,)
            ),
            "tile_scale_5x": get(tile_path(image, tile, "png", 5)),
            "tile_unknown_image": get(
                tile_path(f"/images/{PRODUCT}:nope", tile, "png"), expect=(404,)
            ),
            "tile_unknown_tms": get(f"{image}/tiles/NopeTMS/12/1/1.png", expect=(404,)),
            "tile_unknown_band": get(tile_path(image, tile, "png"), {"bands": "B99"}),
            "tile_bad_scaling": get(tile_path(image, tile, "png"), {"scaling": "bogus"}),
            "tile_jpeg_uint16": get(tile_path(image, tile, "jpeg")),
            "tile_bad_expression": get(tile_path(image, tile, "png"), {"expression": "B04*"}),
            "tile_bad_format": get(tile_path(image, tile, "gif"), expect=(422,)),
            "mosaic_unknown_search": get(
                tile_path("/searches/deadbeef", tile, "png"), expect=(404,)
            ),
            "mosaic_bad_pixel_selection": get(
                tile_path(f"/searches/{search['id']}", tile, "png"),
                {"pixel_selection": "loudest"},
                expect=(422,),
            ),
            "stac_bad_cql2": get("/stac/search", {"filter": "eo:cloud_cover <<< 3"}),
            "stac_unknown_property": get("/stac/search", {"filter": "nope = 1"}),
            "stac_limit_zero": get("/stac/search", {"limit": 0}),
            "stac_post_bbox_3_numbers": Call(
                "bad_request", "POST", "/stac/search", body={"bbox": [1, 2, 3]}, expect=(422,)
            ),
            "stac_unknown_collection": get(f"/stac/collections/nope-{PRODUCT}", expect=(404,)),
            "search_extra_field": Call(
                "bad_request",
                "POST",
                "/searches",
                body={"collections": [PRODUCT], "bogus": 1},
                expect=(422,),
            ),
            "chips_chipsize_too_big": get("/chips/raw", {**where, "chipsize": 99999}),
            "chips_bad_date": get("/chips/gallery", {**where, "start_date": "May"}),
            "chips_one_band_gallery": get("/chips/gallery", {**where, "bands": "B04"}),
            "chips_lon_out_of_range": get("/chips/raw", {**where, "lon": 200}, expect=(422,)),
            "parcel_unknown_id": get(f"/parcels/{PARCEL_LAYER}/no-such-parcel", expect=(404,)),
            "timeseries_point": Call(
                "bad_request", "POST", "/timeseries", body=timeseries, expect=(422,)
            ),
            "unknown_route": get("/no/such/route", expect=(404,)),
        }
        if self.s.keyed:
            wrong = {"Authorization": "Bearer tsk_000000000000_not-a-key"}
            probes["key_wrong"] = Call("bad_request", "GET", image, headers=wrong, expect=(401,))
            probes["key_wrong_in_query"] = Call(
                "bad_request",
                "GET",
                tile_path(image, tile, "png"),
                {"api_key": "tsk_000000000000_not-a-key"},
                headers={"Authorization": ""},
                expect=(401,),
            )
        if search["minzoom"] > 0:
            z = search["minzoom"] - 1
            low = centre_tile(z)
            probes["mosaic_below_minzoom"] = get(tile_path(f"/searches/{search['id']}", low, "png"))
        for name, call in probes.items():
            call.probe = name
        return probes


def centre_tile(zoom: int) -> tuple[int, int, int]:
    """The tile holding AREA's centre at `zoom`."""
    tile = WEB_MERCATOR.tile((AREA[0] + AREA[2]) / 2, (AREA[1] + AREA[3]) / 2, zoom)
    return tile.z, tile.x, tile.y


# --------------------------------------------------------------------------- results


@dataclass
class Stats:
    """Everything the clients saw."""

    started: float
    kinds: dict[str, dict] = field(default_factory=dict)
    probes: dict[str, Counter] = field(default_factory=dict)
    records: list[tuple[float, float, bool]] = field(default_factory=list)  # t, latency, error
    errors: list[dict] = field(default_factory=list)
    error_count: int = 0
    expected_4xx: int = 0
    tile_bytes: dict[str, int] = field(default_factory=dict)  # distinct tile URL -> bytes

    def kind(self, name: str) -> dict:
        return self.kinds.setdefault(
            name, {"latency": [], "statuses": Counter(), "errors": 0, "bytes": 0}
        )

    def add(
        self,
        call: Call,
        url: str,
        status,
        latency: float,
        size: int,
        problem: str | None,
        text: str = "",
    ) -> None:
        entry = self.kind(call.kind)
        entry["latency"].append(latency)
        entry["statuses"][str(status)] += 1
        entry["bytes"] += size
        if call.probe:
            self.probes.setdefault(call.probe, Counter())[str(status)] += 1
        t = time.monotonic() - self.started
        self.records.append((t, latency, problem is not None))
        if problem is None and isinstance(status, int) and 400 <= status < 500:
            self.expected_4xx += 1
        if problem is not None:
            entry["errors"] += 1
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append(
                    {
                        "t_s": round(t, 1),
                        "kind": call.kind,
                        "method": call.method,
                        "url": url,
                        "body": call.body,
                        "status": status,
                        "problem": problem,
                        "answer": text[:1500],
                    }
                )


def ms(values) -> dict:
    """p50/p95/p99/mean/max of seconds, in milliseconds."""
    if not len(values):
        return {"n": 0}
    a = numpy.asarray(values) * 1000
    return {
        "n": int(a.size),
        "p50_ms": round(float(numpy.percentile(a, 50)), 1),
        "p95_ms": round(float(numpy.percentile(a, 95)), 1),
        "p99_ms": round(float(numpy.percentile(a, 99)), 1),
        "mean_ms": round(float(a.mean()), 1),
        "max_ms": round(float(a.max()), 1),
    }


# --------------------------------------------------------------------------- the clients


async def send(client: httpx.AsyncClient, call: Call, stats: Stats, work: Workload) -> Call | None:
    """One request, checked and recorded; a follow-up request or None."""
    start = time.perf_counter()
    url = call.path
    try:
        response = await client.request(
            call.method, call.path, params=call.params, json=call.body, headers=call.headers
        )
        url = str(response.request.url)
    except httpx.TimeoutException as exc:
        stats.add(call, url, "timeout", time.perf_counter() - start, 0, f"timeout: {exc!r}")
        return None
    except httpx.HTTPError as exc:
        stats.add(call, url, "connection", time.perf_counter() - start, 0, f"{exc!r}")
        return None
    latency = time.perf_counter() - start
    status, content = response.status_code, response.content
    media = response.headers.get("content-type", "")
    problem = None
    if status not in call.expect:
        problem = "server error" if status >= 500 else f"unexpected status (want {call.expect})"
    elif status == 200 and (not content or (call.media and not media.startswith(call.media))):
        problem = f"200 with content-type {media!r} and {len(content)} bytes (want {call.media})"
    follow = None
    if problem is None and status == 200 and call.follow:
        try:  # an answer the next request cannot be read from is an error too
            follow = (chip_follow_up if call.follow == "chips" else stac_follow_up)(call, response)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            problem = f"unreadable answer: {exc!r}"
    text = "" if problem is None or media.startswith("image/") else response.text
    stats.add(call, url, status, latency, len(content), problem, text)
    if problem is not None or status != 200:
        return None
    if call.kind in ("image_tile", "mosaic_tile"):
        stats.tile_bytes[url] = len(content)
        if "etag" in response.headers:
            work.etags.append((url, response.headers["etag"]))
    return follow


def chip_follow_up(call: Call, response: httpx.Response) -> Call | None:
    """A chip file named in a gallery or raw answer (what a browser or script fetches next)."""
    if call.kind == "chips_raw":
        names = [c.rsplit("/", 1)[1] for c in response.json().get("chips", [])]
        media = "image/tiff"
    else:
        names = [part.split('"', 1)[0] for part in response.text.split("/chips/files/")[1:]]
        media = "image/png"
    if not names:
        return None
    return Call("chip_file", "GET", f"/chips/files/{names[len(names) // 2]}", media=media)


def stac_follow_up(call: Call, response: httpx.Response) -> Call | None:
    """The `next` page of a STAC search, as its link says (GET query, or POST body)."""
    for link in response.json().get("links", []):
        if link.get("rel") == "next":
            href = link["href"].split("://", 1)[1]
            path = "/" + href.split("/", 1)[1]
            method = link.get("method", "GET")
            return Call(
                "stac_next", method, path, body=link.get("body"), media="application/geo+json"
            )
    return None


def draw(rng: random.Random, work: Workload, probes: list[Call], weights: dict) -> Call:
    kind = rng.choices(list(weights), weights=list(weights.values()))[0]
    if kind == "bad_request":
        return rng.choice(probes)
    return getattr(work, kind)(rng)


async def run_client(
    k: int,
    client: httpx.AsyncClient,
    work: Workload,
    probes: list[Call],
    first: list[Call | str],
    stats: Stats,
    deadline: float,
    seed: int,
    weights: dict[str, float],
) -> None:
    rng = random.Random(f"{seed}/{k}")
    queue = list(first)
    while time.monotonic() < deadline:
        covering = bool(queue)  # the coverage round follows every link, to cover follow-ups
        call = queue.pop(0) if covering else draw(rng, work, probes, weights)
        if isinstance(call, str):  # a kind made when sent
            call = getattr(work, call)(rng)
        follow = await send(client, call, stats, work)
        if follow is not None and (covering or call.follow == "chips" or rng.random() < 0.3):
            await send(client, follow, stats, work)


def coverage_round(work: Workload, probes: list[Call], seed: int) -> list[Call | str]:
    """Every kind once (chips twice: gallery and raw, each with its chip file) and every
    probe once: the first requests of the run, dealt out to the clients."""
    rng = random.Random(f"{seed}/coverage")
    kinds = [k for k in KINDS if k not in ("bad_request", "tile_revalidate")]
    calls = [getattr(work, kind)(rng) for kind in kinds]
    post = work.stac_search_post(rng)  # a search with more than one page: stac_next follows
    post.body = {"collections": [PRODUCT], "limit": 2}
    # last, and made when sent: by then tiles have answered with ETags to revalidate
    return [*calls, post, *probes, "tile_revalidate"]


# --------------------------------------------------------------------------- the server


def role(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "resource_tracker" in command:
        return "resource_tracker"
    if "multiprocessing" in command or "spawn_main" in command:
        return "worker"
    return "master" if "tileserver" in command else command[:60]


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status (kB fields in bytes); empty if gone."""
    fields = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) in (1, 2) and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    try:
        fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))  # open file descriptors
    except OSError:
        pass
    return fields


def status_field(pid: int, name: str) -> int:
    """A /proc/PID/status memory field in bytes (0 if gone)."""
    return proc_status(pid).get(name, 0)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`python -m tileserver.cli serve --demo` with its logs in `folder`."""

    def __init__(self, folder: Path, workers: int, log_level: str):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "tileserver.cli",
            "serve",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--log-level",
            log_level,
        ]
        self.stderr, self.stdout = folder / "server.stderr.log", folder / "server.stdout.log"
        self.process: subprocess.Popen | None = None
        self.workers_seen: set[int] = set()
        self.exit_code: int | None = None

    def start(self, headers: dict) -> float:
        env = {k: v for k, v in os.environ.items() if k != "TILESERVER_DATA_DIR"}
        env["TILESERVER_DATA_DIR"] = str(self.folder)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        started = time.monotonic()
        with self.stderr.open("ab") as err, self.stdout.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=env, cwd=ROOT, stdout=out, stderr=err)
        while time.monotonic() < started + 300:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.stderr.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", headers=headers, timeout=2).status_code == 200:
                    self.members()
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not answer /healthz within 300 s")

    def members(self) -> list[tuple[int, str]]:
        """(pid, role) of the server's processes; remembers every worker pid seen."""
        assert self.process is not None
        out = [(pid, role(pid)) for pid in process_tree(self.process.pid)]
        self.workers_seen |= {pid for pid, r in out if r == "worker"}
        return out

    def sample(self) -> list[tuple[int, str, dict]]:
        """(pid, role, /proc/PID/status numbers) of each server process."""
        return [(pid, r, proc_status(pid)) for pid, r in self.members()]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> dict:
        if self.process is None:
            return {}
        members = self.members() if self.alive() else []
        info = {
            "vmhwm_mib": round(sum(status_field(p, "VmHWM") for p, _ in members) / 2**20, 1),
            "cpu_s": round(sum(cpu_seconds(p) for p, _ in members), 1),
        }
        started = time.monotonic()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                info["killed"] = True
        for pid, _ in members[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.exit_code = self.process.returncode
        info["exit_code"] = self.exit_code
        info["stop_s"] = round(time.monotonic() - started, 1)
        return info


def scan_log(path: Path) -> dict:
    """Size, Traceback blocks (the first 5 in full), ERROR and WARNING lines of a log."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    blocks, errors, warnings, python_warnings = [], [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        if TRACEBACK in line:
            block = [line]
            i += 1
            while i < len(lines) and (
                lines[i].startswith((" ", "\t"))
                or not lines[i].strip()
                or lines[i].startswith(("During handling", "The above"))
                or TRACEBACK in lines[i]
            ):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])  # the exception line
            blocks.append("\n".join(block)[-4000:])
        elif PY_WARNING.match(line):
            python_warnings.append(line[:500])
        elif line.startswith("ERROR"):
            errors.append(line[:500])
        elif line.startswith("WARNING"):
            warnings.append(line[:500])
        i += 1
    return {
        "path": str(path),
        "bytes": len(text.encode()),
        "lines": len(lines),
        "tracebacks": text.count(TRACEBACK),
        "traceback_samples": blocks[:5],
        "error_lines": len(errors),
        "error_samples": errors[:5],
        "warning_lines": len(warnings),
        "warning_samples": warnings[:5],
        "python_warnings": len(python_warnings),
        "python_warning_samples": python_warnings[:5],
    }


# --------------------------------------------------------------------------- preparation


def prepare_folder(folder: Path, demo_from: Path | None) -> None:
    """Link demo COGs made elsewhere and copy their catalog (never write into theirs)."""
    demo = folder / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    if demo_from is None or (demo / "catalog.db").exists():
        return
    (demo / "data").symlink_to((demo_from / "data").resolve(), target_is_directory=True)
    source = sqlite3.connect(demo_from / "catalog.db")
    target = sqlite3.connect(demo / "catalog.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def parcels_geojson(path: Path) -> list[str]:
    """40 rectangular fields (8 x 5, about 500 x 350 m) with gaps, over AREA; their ids."""
    west, south, east, north = AREA
    dx, dy = (east - west) / 8, (north - south) / 5
    crops = ["wheat", "maize", "barley", "rapeseed", "grassland"]
    features, ids = [], []
    for row in range(5):
        for col in range(8):
            x0, y0 = west + col * dx + dx * 0.1, south + row * dy + dy * 0.1
            x1, y1 = x0 + dx * 0.8, y0 + dy * 0.8
            pid = f"F{row}{col:02d}"
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            features.append(
                {
                    "type": "Feature",
                    "properties": {"id": pid, "crop": crops[(row + col) % 5], "year": 2024},
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                }
            )
            ids.append(pid)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return ids


def cli(folder: Path, *arguments: str) -> str:
    """`tileserver ARGUMENTS` on the soak's catalog; its standard output."""
    env = {**os.environ, "TILESERVER_DATA_DIR": str(folder)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    catalog = f"sqlite:///{folder / 'demo' / 'catalog.db'}"
    command = [sys.executable, "-m", "tileserver.cli", *arguments, "--catalog", catalog]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} failed: {result.stdout}{result.stderr}")
    return result.stdout


def create_key(folder: Path) -> str:
    """An admin API key in the soak's catalog: from now on the server checks every request."""
    return cli(folder, "keys", "create", "--user", "soak", "--org", "soak", "--admin").strip()


def has_keys(folder: Path) -> bool:
    """Whether the soak's catalog has API keys (the server then checks them)."""
    with contextlib.closing(sqlite3.connect(folder / "demo" / "catalog.db")) as db:
        try:
            return db.execute("SELECT count(*) FROM api_keys").fetchone()[0] > 0
        except sqlite3.OperationalError:  # a catalog from before keys existed
            return False


def load_parcels(folder: Path) -> tuple[list[str], float]:
    started = time.monotonic()
    geojson = folder / "soak-fields.geojson"
    ids = parcels_geojson(geojson)
    cli(folder, "parcels", "load", str(geojson), "--name", PARCEL_LAYER, "--quiet")
    return ids, time.monotonic() - started


def setup(url: str, headers: dict, parcels: list[str], seed: int) -> Setup:
    """Images, registered searches with their zooms, tile pools, chip points."""
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:

        def ok(response: httpx.Response) -> Any:
            if response.status_code != 200:
                raise RuntimeError(
                    f"setup: {response.request.method} {response.request.url} -> "
                    f"{response.status_code}: {response.text[:1000]}"
                )
            return response.json()

        images = [
            i["id"] for i in ok(client.get(f"/products/{PRODUCT}/images?limit=100"))["images"]
        ]
        searches = {}
        for name, body in SEARCHES.items():
            search_id = ok(client.post("/searches", json=body))["id"]
            tilejson = ok(client.get(f"/searches/{search_id}/tilejson.json"))
            searches[name] = {
                "id": search_id,
                "body": body,
                "minzoom": tilejson["minzoom"],
                "maxzoom": tilejson["maxzoom"],
            }
        layer = ok(client.get(f"/parcels/{PARCEL_LAYER}"))
    if not images:
        raise RuntimeError("setup: the demo product has no images")
    rng = random.Random(f"{seed}/points")
    points = [
        (round(rng.uniform(AREA[0], AREA[2]), 4), round(rng.uniform(AREA[1], AREA[3]), 4))
        for _ in range(30)
    ]
    minzoom = max(MOSAIC_MIN_ZOOM, min(s["minzoom"] for s in searches.values()))
    if layer.get("count", len(parcels)) != len(parcels):
        raise RuntimeError(f"setup: parcel layer {PARCEL_LAYER} holds {layer}")
    return Setup(
        images=images,
        searches=searches,
        parcels=parcels,
        chip_points=points,
        image_tiles=area_tiles(IMAGE_ZOOMS),
        mosaic_tiles=area_tiles(range(minzoom, MOSAIC_MAX_ZOOM + 1)),
    )


# --------------------------------------------------------------------------- the run


async def sample_memory(
    server: Server, stats: Stats, samples: list, interval: float, stop: asyncio.Event
) -> None:
    while True:
        processes = server.sample()
        samples.append(
            {
                "t_s": round(time.monotonic() - stats.started, 1),
                "rss_mib": round(sum(p.get("VmRSS", 0) for _, _, p in processes) / 2**20, 1),
                "load1": round(os.getloadavg()[0], 2),
                "rss_anon_mib": round(sum(p.get("RssAnon", 0) for _, _, p in processes) / 2**20, 1),
                "threads": sum(p.get("Threads", 0) for _, _, p in processes),
                "fds": sum(p.get("fds", 0) for _, _, p in processes),
                "_processes": processes,
            }
        )
        if not server.alive() or stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


async def drive(args, server: Server, work: Workload, headers: dict) -> tuple[Stats, list, float]:
    probes = list(work.probes().values())
    first = coverage_round(work, probes, args.seed)
    shares = [first[k :: args.clients] for k in range(args.clients)]
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    stats = Stats(started=time.monotonic())
    samples: list = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, limits=limits, timeout=httpx.Timeout(args.timeout)
    ) as client:
        sampler = asyncio.create_task(
            sample_memory(server, stats, samples, args.rss_interval, stop)
        )
        deadline = stats.started + args.duration
        await asyncio.gather(
            *[
                run_client(
                    k, client, work, probes, shares[k], stats, deadline, args.seed, args.weights
                )
                for k in range(args.clients)
            ]
        )
        wall = time.monotonic() - stats.started
        stop.set()
        await sampler
    return stats, samples, wall


def second_half(points: list[tuple[float, float]], duration: float) -> dict:
    """RSS over the second half of the run, when caches that fill slowly (the tile cache
    under a long tail of new tiles) have had time: the median of the samples of the tenth
    of the run after its middle against that of its last tenth, and the slope."""
    t = numpy.array([p[0] for p in points])
    rss = numpy.array([p[1] for p in points])
    half, tenth = duration / 2, duration / 10
    first, last = rss[(t >= half) & (t < half + tenth)], rss[t >= duration - tenth]
    later = t >= half
    if not len(first) or not len(last) or later.sum() < 2:
        return {}
    base, end = float(numpy.median(first)), float(numpy.median(last))
    slope = numpy.polyfit(t[later], rss[later], 1)[0] * 60
    return {
        "from_s": round(half, 1),
        "baseline_mib": round(base, 1),
        "end_mib": round(end, 1),
        "growth_pct": round(100 * (end / base - 1), 2),
        "slope_mib_per_min": round(float(slope), 2),
    }


def rss_summary(samples: list, duration: float) -> dict:
    """Growth after warm-up: median of the first eighth of the post-warm-up samples against
    the median of the last eighth; the least-squares slope of the post-warm-up samples."""
    warmup = duration * WARMUP_SHARE
    later = [s for s in samples if s["t_s"] >= warmup]
    out: dict = {
        "interval_samples": len(samples),
        "warmup_end_s": round(warmup, 1),
        "first_mib": samples[0]["rss_mib"] if samples else None,
        "max_mib": max((s["rss_mib"] for s in samples), default=None),
        "last_mib": samples[-1]["rss_mib"] if samples else None,
    }
    if len(later) >= 2:
        k = max(1, len(later) // 8)
        base = statistics.median(s["rss_mib"] for s in later[:k])
        end = statistics.median(s["rss_mib"] for s in later[-k:])
        out["open_files"] = {
            "first": samples[0]["fds"],
            "baseline": statistics.median(s["fds"] for s in later[:k]),
            "end": statistics.median(s["fds"] for s in later[-k:]),
            "max": max(s["fds"] for s in samples),
        }
        t = numpy.array([s["t_s"] for s in later])
        slope = numpy.polyfit(t, numpy.array([s["rss_mib"] for s in later]), 1)[0] * 60
        out.update(
            {
                "baseline_window_s": [later[0]["t_s"], later[k - 1]["t_s"]],
                "baseline_mib": round(base, 1),
                "end_window_s": [later[-k]["t_s"], later[-1]["t_s"]],
                "end_mib": round(end, 1),
                "growth_pct": round(100 * (end / base - 1), 2),
                "slope_mib_per_min_after_warmup": round(float(slope), 2),
                "second_half": second_half([(s["t_s"], s["rss_mib"]) for s in samples], duration),
            }
        )
    if samples:
        out["by_process_at_end"] = [
            {
                "pid": pid,
                "role": r,
                "rss_mib": round(p.get("VmRSS", 0) / 2**20, 1),
                "rss_anon_mib": round(p.get("RssAnon", 0) / 2**20, 1),
                "rss_file_mib": round(p.get("RssFile", 0) / 2**20, 1),
                "vmhwm_mib": round(p.get("VmHWM", 0) / 2**20, 1),
                "threads": p.get("Threads"),
                "open_files": p.get("fds"),
            }
            for pid, r, p in samples[-1]["_processes"]
        ]
    columns = ["t_s", "rss_mib", "load1", "rss_anon_mib", "threads", "fds"]
    out["samples"] = [[s[c] for c in columns] for s in samples]
    out["samples_columns"] = columns
    return out


def timeline(stats: Stats, duration: float, samples: list) -> list[dict]:
    """Per window (60 s; a fifth of shorter runs): requests/s, p50/p95, errors, RSS. The
    last window also holds the requests still in flight at the deadline."""
    window = 60.0 if duration >= 300 else max(duration / 5, 1.0)
    t = numpy.array([r[0] for r in stats.records])
    latency = numpy.array([r[1] for r in stats.records])
    bad = numpy.array([r[2] for r in stats.records], dtype=bool)
    starts = list(numpy.arange(0, duration, window))
    rows = []
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        end = max(float(t.max(initial=0)), duration) if last else start + window
        inside = (t >= start) & ((t <= end) if last else (t < end))
        rss = [
            s["rss_mib"]
            for s in samples
            if start <= s["t_s"] < start + window or (last and s["t_s"] >= start)
        ]
        row = {
            "from_s": round(float(start)),
            "requests": int(inside.sum()),
            "requests_per_s": round(float(inside.sum()) / (end - start), 1),
            "p50_ms": None,
            "p95_ms": None,
            "errors": int(bad[inside].sum()),
            "rss_mib_median": round(statistics.median(rss), 1) if rss else None,
        }
        if inside.any():
            row["p50_ms"] = round(float(numpy.percentile(latency[inside], 50)) * 1000, 1)
            row["p95_ms"] = round(float(numpy.percentile(latency[inside], 95)) * 1000, 1)
        rows.append(row)
    return rows


def redacted(argv: list[str]) -> list[str]:
    """The command line without the API key's value."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--api-key" and i + 1 < len(out):
            out[i + 1] = "***"
        elif arg.startswith("--api-key="):
            out[i] = "--api-key=***"
    return out


def server_env() -> dict:
    """TILESERVER_* variables passed to the server, secrets redacted."""
    return {
        k: ("***" if any(w in k for w in SECRET_WORDS) else v)
        for k, v in sorted(os.environ.items())
        if k.startswith("TILESERVER_") and k != "TILESERVER_DATA_DIR"
    }


def report(
    args, stats: Stats, samples: list, wall: float, server_info: dict, logs: dict, extra: dict
) -> dict:
    latencies = [r[1] for r in stats.records]
    kinds = {}
    for name in [*KINDS, *FOLLOW_UPS]:
        entry = stats.kinds.get(name)
        if entry is None:
            kinds[name] = {"n": 0}
            continue
        n = len(entry["latency"])
        kinds[name] = {
            **ms(entry["latency"]),
            "statuses": dict(sorted(entry["statuses"].items())),
            "errors": entry["errors"],
            "bytes_mean": round(entry["bytes"] / n) if n else 0,
        }
    probes = {}
    for name, call in extra["probes"].items():
        seen = stats.probes.get(name, Counter())
        probes[name] = {
            "expect": list(call.expect),
            "statuses": dict(seen),
            "ok": bool(seen) and all(s.isdigit() and int(s) in call.expect for s in seen),
        }
    tracebacks = sum(log["tracebacks"] for log in logs.values())
    replaced = sorted(server_info.pop("_workers_seen", set()))
    expected_workers = args.workers if args.workers > 1 else 0
    problems = []
    if stats.error_count:
        problems.append(f"{stats.error_count} request errors")
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the server logs")
    if len(replaced) > expected_workers:
        problems.append(f"{len(replaced) - expected_workers} worker processes replaced")
    if server_info.get("died_during_run"):
        problems.append("the server exited during the run")
    kinds_unexercised = [k for k, v in kinds.items() if not v.get("n")]
    return {
        "passed": not problems,
        "problems": problems,
        "command": [Path(sys.executable).name, *redacted(sys.argv)],
        "started_utc": extra["started_utc"],
        "finished_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {
            "duration_s": args.duration,
            "clients": args.clients,
            "workers": args.workers,
            "seed": args.seed,
            "timeout_s": args.timeout,
            "rss_interval_s": args.rss_interval,
            "api_key": bool(args.api_key or args.with_key),
            "log_level": args.log_level,
            "server_env": server_env(),
            "weights_pct": args.weights,
            "area_wgs84": AREA,
        },
        "machine": {
            **machine(),
            "load_average_before": extra["load_before"],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "server": {**server_info, "worker_pids_seen": replaced, "logs": logs},
        "setup": extra["setup"],
        "totals": {
            "requests": len(latencies),
            "errors": stats.error_count,
            "expected_4xx": stats.expected_4xx,
            "expected_4xx_probes": sum(sum(c.values()) for c in stats.probes.values()),
            "wall_s": round(wall, 1),
            "requests_per_s": round(len(latencies) / wall, 1) if wall else None,
            "latency": ms(latencies),
            "client_cpu_s": round(time.process_time(), 1),
        },
        "kinds": kinds,
        "kinds_unexercised": kinds_unexercised,
        "probes": probes,
        "errors": {
            "count": stats.error_count,
            "by_kind": {k: v["errors"] for k, v in stats.kinds.items() if v["errors"]},
            "first": stats.errors,
        },
        "rss": rss_summary(samples, args.duration),
        "timeline": timeline(stats, args.duration, samples),
        "cache_hint": {
            "distinct_tile_urls": len(stats.tile_bytes),
            "distinct_tile_mib": round(sum(stats.tile_bytes.values()) / 2**20, 1),
        },
    }


def summary_text(result: dict) -> str:
    t, rss = result["totals"], result["rss"]
    lines = [
        f"soak: {result['config']['duration_s']} s, {result['config']['clients']} clients, "
        f"{result['config']['workers']} workers -> {'PASSED' if result['passed'] else 'FAILED'}"
        + (f" ({'; '.join(result['problems'])})" if result["problems"] else ""),
        f"requests {t['requests']:,} in {t['wall_s']} s = {t['requests_per_s']} req/s; "
        f"errors {t['errors']}; expected 4xx {t['expected_4xx']}",
        f"latency p50 {t['latency'].get('p50_ms')} ms, p95 {t['latency'].get('p95_ms')} ms, "
        f"p99 {t['latency'].get('p99_ms')} ms, max {t['latency'].get('max_ms')} ms",
        f"{'kind':<18}{'n':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'errors':>8}  statuses",
    ]
    for name, k in result["kinds"].items():
        if k.get("n"):
            lines.append(
                f"{name:<18}{k['n']:>8}{k['p50_ms']:>10}{k['p95_ms']:>10}{k['p99_ms']:>10}"
                f"{k['errors']:>8}  {k['statuses']}"
            )
    bad_probes = [name for name, p in result["probes"].items() if not p["ok"]]
    lines.append(f"probes: {len(result['probes'])}, not as expected: {bad_probes or 'none'}")
    if "growth_pct" in rss:
        lines.append(
            f"RSS (server tree): first {rss['first_mib']} MiB, after warm-up {rss['baseline_mib']}"
            f" MiB, end {rss['end_mib']} MiB ({rss['growth_pct']:+.1f} %), max {rss['max_mib']}"
            f" MiB, slope {rss['slope_mib_per_min_after_warmup']} MiB/min"
        )
        if half := rss.get("second_half"):
            lines.append(
                f"RSS, second half: {half['baseline_mib']} -> {half['end_mib']} MiB "
                f"({half['growth_pct']:+.1f} %), slope {half['slope_mib_per_min']} MiB/min"
            )
        files = rss["open_files"]
        lines.append(
            f"open files (server tree): first {files['first']}, after warm-up "
            f"{files['baseline']}, end {files['end']}, max {files['max']}"
        )
    for name, log in result["server"]["logs"].items():
        lines.append(
            f"server {name}: {log['bytes']:,} bytes, {log['tracebacks']} tracebacks, "
            f"{log['error_lines']} ERROR lines, {log['warning_lines']} WARNING lines, "
            f"{log['python_warnings']} Python warnings"
        )
    m = result["machine"]
    lines.append(
        f"load average before {m['load_average_before']}, after "
        f"{m['load_average_after']} ({m['cpus']} CPUs)"
    )
    for error in result["errors"]["first"][:5]:
        lines.append(
            f"error: {error['kind']} {error['method']} {error['url']} -> "
            f"{error['status']}: {error['problem']} {error['answer'][:300]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SOAK_API_KEY"),
        help="sent as `Authorization: Bearer KEY` (default: $SOAK_API_KEY, which stays out "
        "of the process list)",
    )
    parser.add_argument(
        "--with-key",
        action="store_true",
        help="create an admin API key in the soak's catalog before the server starts (keys "
        "are then checked on every request) and send it",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.json")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--timeout", type=float, default=30, help="seconds per request")
    parser.add_argument("--rss-interval", type=float, default=5)
    parser.add_argument("--log-level", default="warning", help="the server's --log-level")
    parser.add_argument(
        "--data-dir", type=Path, help="use this folder (kept) instead of a temporary one"
    )
    parser.add_argument(
        "--demo-from",
        type=Path,
        help="a folder with demo data/ and catalog.db to reuse (linked and copied, never written)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--kinds",
        help="draw only these kinds (comma-separated, e.g. image_tile,mosaic_tile) after the "
        "coverage round: to find which requests a problem comes with",
    )
    args = parser.parse_args(argv)
    if args.with_key and args.api_key:
        parser.error("--with-key creates its own key: leave out --api-key / $SOAK_API_KEY")
    chosen = args.kinds.split(",") if args.kinds else list(KINDS)
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    args.weights = {kind: KINDS[kind] for kind in chosen}

    started_utc = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_before = [round(v, 2) for v in os.getloadavg()]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="tileserver-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = Server(folder, args.workers, args.log_level)
    keep = args.keep or args.data_dir is not None
    try:
        prepare_folder(folder, args.demo_from)
        parcels, parcels_s = load_parcels(folder)
        if args.with_key:
            headers = {"Authorization": f"Bearer {create_key(folder)}"}
        ready_s = server.start(headers)
        print(f"server ready in {ready_s:.1f} s on {server.url} (data {folder})", file=sys.stderr)
        plan = setup(server.url, headers, parcels, args.seed)
        plan.keyed = bool(headers) and has_keys(folder)
        work = Workload(plan)
        stats, samples, wall = asyncio.run(drive(args, server, work, headers))
        died = not server.alive()
        workers_seen = set(server.workers_seen)
        server_info = {
            "command": server.command,
            "url": server.url,
            "ready_s": round(ready_s, 1),
            "parcels_load_s": round(parcels_s, 1),
            **server.stop(),
            "died_during_run": died,
            "_workers_seen": workers_seen,
        }
        logs = {"stderr": scan_log(server.stderr), "stdout": scan_log(server.stdout)}
        extra = {
            "started_utc": started_utc,
            "load_before": load_before,
            "probes": work.probes(),
            "setup": {
                "data_dir": str(folder),
                "demo_from": str(args.demo_from) if args.demo_from else None,
                "images": len(plan.images),
                "searches": plan.searches,
                "parcels": len(plan.parcels),
                "image_tile_pool": {z: len(v) for z, v in plan.image_tiles.items()},
                "mosaic_tile_pool": {z: len(v) for z, v in plan.mosaic_tiles.items()},
            },
        }
        result = report(args, stats, samples, wall, server_info, logs, extra)
    except Exception:
        server.stop()
        print(f"soak could not run; server logs in {folder}", file=sys.stderr)
        raise
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(summary_text(result))
    print(f"results: {args.out}", file=sys.stderr)
    if not result["passed"]:
        keep = True
    if keep:
        print(f"data and server logs kept in {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # could not start: say why, status 2
        print(f"soak failed to start: {exc!r}", file=sys.stderr)
        sys.exit(2)
