"""Golden outputs: a fixed set of tiles, documents and downloads of the demo catalog, byte
for byte as recorded before the layers refactor (issue 20).

The refactor must not change one byte a client sees; this test holds the SHA-256 of each
answer (status, media type, the headers that describe the pixels, and the body) in
`tests/golden.json`. A deliberate change of output re-records them:

    TILESERVER_RECORD_GOLDEN=1 PYTHONPATH=$PWD python -m pytest tests/test_golden.py

and the diff of `tests/golden.json` is then part of the change, to be explained.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import DEMO_IMAGE

GOLDEN = Path(__file__).with_name("golden.json")
RECORD = os.environ.get("TILESERVER_RECORD_GOLDEN") == "1"
DESCRIBING_HEADERS = (
    "content-type",
    "content-disposition",
    "x-mosaic-images",
    "x-mosaic-cap-reached",
)
SEARCH = {"collections": ["sentinel-2-l2a"]}  # every demo date, newest on top
AREA = "15.02,52.28,15.06,52.31"  # a WGS84 bbox inside the demo footprints
EDGE = {  # the demo area's north-west corner, half outside every image
    "type": "Polygon",
    "coordinates": [[[14.99, 52.33], [15.03, 52.33], [15.03, 52.36], [14.99, 52.36]]],
}

IMAGE = f"/images/{DEMO_IMAGE}"
TILES = f"{IMAGE}/tiles/WebMercatorQuad"
# (name, method, path, query, json body); "{search}" is the registered search's id
CASES: list[tuple[str, str, str, list | dict, dict | None]] = [
    ("tile z12 png", "GET", f"{TILES}/12/2219/1347.png", {}, None),
    ("tile z12 jpeg display", "GET", f"{TILES}/12/2219/1347.jpeg", {"scaling": "display"}, None),
    ("tile z12 npy raw", "GET", f"{TILES}/12/2219/1347.npy", {"scaling": "raw"}, None),
    ("tile z12 webp", "GET", f"{TILES}/12/2219/1347.webp", {"scaling": "display"}, None),
    ("tile z12 tif physical", "GET", f"{TILES}/12/2219/1347.tif", {"scaling": "physical"}, None),
    ("tile z12 partial png", "GET", f"{TILES}/12/2218/1346.png", {}, None),
    ("tile z12 partial npy", "GET", f"{TILES}/12/2218/1346.npy", {"scaling": "auto"}, None),
    ("tile z8 low zoom png", "GET", f"{TILES}/8/138/84.png", {}, None),
    ("tile z10 png", "GET", f"{TILES}/10/554/336.png", {"bands": "B08,B04,B03"}, None),
    ("tile z14 png bilinear", "GET", f"{TILES}/14/8876/5388.png", {"resampling": "bilinear"}, None),
    ("tile @2x png", "GET", f"{TILES}/12/2219/1347@2x.png", {}, None),
    (
        "tile per-band scaling",
        "GET",
        f"{TILES}/12/2219/1347.npy",
        [("scaling", "0,3000"), ("scaling", "2%,98%"), ("scaling", "display")],
        None,
    ),
    (
        "tile json scaling uint16",
        "GET",
        f"{TILES}/12/2219/1347.npy",
        {"scaling": '{"B04": [0, 4000], "default_": "display"}', "data_type": "UInt16"},
        None,
    ),
    (
        "tile ndvi colormap",
        "GET",
        f"{TILES}/12/2219/1347.png",
        {
            "expression": "(B08-B04)/(B08+B04)",
            "scaling": "-1,1",
            "colormap_name": "rdylgn",
        },
        None,
    ),
    (
        "tile ndvi float npy",
        "GET",
        f"{TILES}/12/2219/1347.npy",
        {"expression": "(B08-B04)/(B08+B04)", "data_type": "Float32"},
        None,
    ),
    ("tile scl class", "GET", f"{TILES}/12/2219/1347.png", {"bands": "SCL"}, None),
    ("tile nodata override", "GET", f"{TILES}/12/2218/1346.npy", {"nodata": 1}, None),
    ("tile other tms", "GET", f"{IMAGE}/tiles/WGS1984Quad/13/8877/1715.png", {}, None),
    ("image tilejson", "GET", f"{IMAGE}/tilejson.json", {"scaling": "display"}, None),
    ("image wmts", "GET", f"{IMAGE}/WMTSCapabilities.xml", {"tile_format": "jpeg"}, None),
    ("image map", "GET", f"{IMAGE}/map", {}, None),
    ("image download tif", "GET", f"{IMAGE}/download.tif", {"bbox": AREA}, None),
    ("image download npy", "GET", f"{IMAGE}/download.npy", {"bbox": AREA}, None),
    (
        "image download warped",
        "GET",
        f"{IMAGE}/download.tif",
        {"bbox": AREA, "crs": "EPSG:3857", "resolution": 25, "scaling": "display"},
        None,
    ),
    ("image download geometry", "POST", f"{IMAGE}/download.npy", {}, {"geometry": EDGE}),
    ("image raster_info", "GET", f"{IMAGE}/raster_info", {"bbox": AREA}, None),
    (
        "search tile z12 png",
        "GET",
        "/searches/{search}/tiles/WebMercatorQuad/12/2219/1347.png",
        {},
        None,
    ),
    (
        "search tile z12 npy highest",
        "GET",
        "/searches/{search}/tiles/WebMercatorQuad/12/2219/1347.npy",
        {"pixel_selection": "highest", "scaling": "raw"},
        None,
    ),
    (
        "search tile partial sortby",
        "GET",
        "/searches/{search}/tiles/WebMercatorQuad/12/2218/1346.npy",
        {"sortby": "eo:cloud_cover"},
        None,
    ),
    (
        "search tile z11 ndvi",
        "GET",
        "/searches/{search}/tiles/WebMercatorQuad/11/1109/673.png",
        {"expression": "(B08-B04)/(B08+B04)", "scaling": "-1,1", "colormap_name": "viridis"},
        None,
    ),
    (
        "search tile assets",
        "GET",
        "/searches/{search}/tiles/WebMercatorQuad/12/2219/1347/assets",
        {},
        None,
    ),
    ("search tilejson", "GET", "/searches/{search}/tilejson.json", {"bands": "B04"}, None),
    ("search wmts", "GET", "/searches/{search}/WMTSCapabilities.xml", {}, None),
    ("search map", "GET", "/searches/{search}/map", {}, None),
    ("search mosaic tif", "GET", "/searches/{search}/mosaic.tif", {"bbox": AREA}, None),
    (
        "search mosaic npy median",
        "GET",
        "/searches/{search}/mosaic.npy",
        {"bbox": AREA, "pixel_selection": "median", "bands": "B04,B08"},
        None,
    ),
    ("search mosaic geometry", "POST", "/searches/{search}/mosaic.npy", {}, {"geometry": EDGE}),
    (
        "search stack npy",
        "GET",
        "/searches/{search}/stack.npy",
        {"bbox": AREA, "bands": "B04", "flatten": "month"},
        None,
    ),
    (
        "search stack tif",
        "GET",
        "/searches/{search}/stack.tif",
        {"bbox": AREA, "bands": "B08", "resolution": 40},
        None,
    ),
    ("search raster_info", "GET", "/searches/{search}/raster_info", {"bbox": AREA}, None),
    (
        "search raster_info stack",
        "GET",
        "/searches/{search}/raster_info",
        {"bbox": AREA, "stack": "true", "flatten": "day"},
        None,
    ),
    ("search summary", "GET", "/searches/{search}/summary", {"interval": "month"}, None),
    ("bad band", "GET", f"{TILES}/12/2219/1347.png", {"bands": "B99"}, None),
    ("mosaic below minzoom", "GET", "/searches/{search}/tiles/WebMercatorQuad/3/4/2.png", {}, None),
]


def fingerprint(response) -> str:
    """SHA-256 of what a client sees: status, the describing headers, and the body."""
    digest = hashlib.sha256(str(response.status_code).encode())
    for name in DESCRIBING_HEADERS:
        digest.update(f"\n{name}: {response.headers.get(name, '')}".encode())
    digest.update(b"\n\n" + response.content)
    return digest.hexdigest()


def answers(client) -> dict[str, str]:
    """Every case's fingerprint, by name."""
    search_id = client.post("/searches", json=SEARCH).json()["id"]
    client.app.state.pyramids.wait()  # its low-zoom pyramid, built in the background
    result = {}
    for name, method, path, query, body in CASES:
        url = path.replace("{search}", search_id)
        response = client.request(method, url, params=query, json=body)
        assert response.status_code < 500, (name, response.text)
        result[name] = fingerprint(response)
    return result


def test_outputs_are_byte_identical_to_the_recorded_ones(client):
    got = answers(client)
    if RECORD:
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden outputs recorded")
    expected = json.loads(GOLDEN.read_text())
    assert set(got) == set(expected), "cases changed: re-record deliberately"
    changed = sorted(name for name in got if got[name] != expected[name])
    assert not changed, f"outputs changed: {changed}"
