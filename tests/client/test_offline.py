"""The client without a server: what it imports, its filters against the reference
client's, and its copy of the scaling rules against the server's."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from tests.render.test_scaling_reference import (
    SEED,
    for_reference,
    make_case,
    stored,
    tileserver_answer,
)
from tileserver.client import properties as p
from tileserver.client.catalog import IMAGE_FIELDS, flatten_group
from tileserver.client.raster import scaling_params
from tileserver.scaling_rules import ScalingError as ClientScalingError
from tileserver.scaling_rules import multiproduct_scaling_parameters, scaling_parameters

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_imports_nothing_of_the_server():
    code = "import sys, json, tileserver.client\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    loaded = json.loads(out.stdout)
    ours = [
        m for m in loaded if m.startswith("tileserver.") and not m.startswith("tileserver.client")
    ]
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] in ("fastapi", "starlette", "pydantic", "rio_tiler", "uvicorn", "cql2")
    ]
    assert ours == [] and heavy == []
    assert "httpx" in loaded and "numpy" in loaded and "rasterio" in loaded


# The Catalog guide's filters, each with the serialization the reference client gives.
FILTERS = {
    "range": lambda: "2017-01-01" <= p.acquired < "2018-01-01",
    "cloud": lambda: p.cloud_fraction < 0.2,
    "and_or": lambda: (p.cloud_fraction < 0.2) & p.product_id.in_(["a", "b"]) | p.name.like("x%"),
    "flat_and": lambda: (p.a == 1) & (p.b != 2) & (p.c >= 3),
    "nulls": lambda: (p.a == None) | (p.b != None),  # noqa: E711 - the Catalog's spelling
    "prefix": lambda: p.name.prefix("S2A_"),
    "start": lambda: p.start_datetime < "2016-01-01",
}

REFERENCE = """
import json, sys, warnings
warnings.simplefilter("ignore")
from descarteslabs.catalog import properties as p
exprs = {
    "range": "2017-01-01" <= p.acquired < "2018-01-01",
    "cloud": p.cloud_fraction < 0.2,
    "and_or": (p.cloud_fraction < 0.2) & p.product_id.in_(["a", "b"]) | p.name.like("x%"),
    "flat_and": (p.a == 1) & (p.b != 2) & (p.c >= 3),
    "nulls": (p.a == None) | (p.b != None),
    "prefix": p.name.prefix("S2A_"),
    "start": p.start_datetime < "2016-01-01",
}
print(json.dumps({k: v.serialize() for k, v in exprs.items()}))
"""


@pytest.fixture(scope="module")
def reference_python() -> str:
    python = os.environ.get("TILESERVER_TEST_DL_PYTHON")
    if not python and os.environ.get("CI") == "true":
        pytest.fail("TILESERVER_TEST_DL_PYTHON is unset in CI: .ci/run should set it")
    if not python:
        pytest.skip("TILESERVER_TEST_DL_PYTHON is unset: no reference client to compare with")
    return python


def test_filters_serialize_as_the_reference_clients(reference_python):
    out = subprocess.run(
        [reference_python, "-c", REFERENCE], capture_output=True, text=True, check=True
    )
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {name: make().serialize() for name, make in FILTERS.items()}
    assert ours == theirs


def test_filters_become_the_servers_cql2():
    expr = FILTERS["range"]() & (p.cloud_fraction < 0.2)
    assert expr.cql2(IMAGE_FIELDS) == {
        "op": "and",
        "args": [
            {
                "op": "and",
                "args": [
                    {
                        "op": ">=",
                        "args": [{"property": "datetime"}, {"timestamp": "2017-01-01T00:00:00Z"}],
                    },
                    {
                        "op": "<",
                        "args": [{"property": "datetime"}, {"timestamp": "2018-01-01T00:00:00Z"}],
                    },
                ],
            },
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, pytest.approx(20.0)]},
        ],
    }
    like = p.name.like("S2%").cql2(IMAGE_FIELDS)
    assert like["args"][0] == {"op": "casei", "args": [{"property": "id"}]}
    assert p.name.prefix("a_%").cql2(IMAGE_FIELDS)["args"][1] == "a\\_\\%%"


def test_products_are_filtered_in_hand():
    record = {"start_datetime": "2015-06-01T00:00:00Z", "name": "Sentinel-2"}
    get = record.get
    assert FILTERS["start"]().evaluate(get)
    assert not (p.start_datetime >= "2016-01-01").evaluate(get)
    assert p.name.like("sentinel%").evaluate(get)
    assert not p.missing.in_([1, 2]).evaluate(get)


def test_scaling_and_flatten_parameters():
    names = ["B04", "B08"]
    assert scaling_params("display", names) == [("scaling", "display")]
    assert scaling_params((0, 4000), names) == [("scaling", "0,4000")]
    assert scaling_params(["raw", (0, "98%")], names) == [("scaling", "raw"), ("scaling", "0,98%")]
    assert json.loads(scaling_params([None, "display"], names)[0][1]) == {"B08": "display"}
    assert json.loads(scaling_params({"B04": (0, 1), "default_": "raw"}, names)[0][1]) == {
        "B04": [0, 1],
        "default_": "raw",
    }
    assert flatten_group("properties.date.month") == "month"
    assert (
        flatten_group(["properties.date.year", "properties.date.month", "properties.date.day"])
        == "day"
    )
    assert flatten_group(None) == "none"
    assert flatten_group("platform") == "platform"


def test_client_scaling_rules_agree_with_the_servers_case_for_case():
    """The client runs the shared rules on the bands as the API sends them (JSON, floats where
    the server's models keep ints); it answers every case of the reference test exactly as
    the server does from its models."""
    rng = random.Random(SEED)
    disagree, answered = [], 0
    for _ in range(3000):
        case = make_case(rng)
        products, refusal = stored(case)
        if products is None:
            continue
        ours = tileserver_answer(case, products, refusal)
        dumped = for_reference(products, case)["products"]  # band JSON, as GET /products
        try:
            if len(dumped) == 1:
                bands = dumped["p0"]
                scales, data_type = scaling_parameters(
                    [bands[n] for n in case["bands"]],
                    case["scaling"],
                    case["data_type"],
                    case["processing_level"],
                )
            else:
                scales, data_type = multiproduct_scaling_parameters(
                    {pid: list(b.values()) for pid, b in dumped.items()},
                    case["bands"],
                    case["scaling"],
                    case["data_type"],
                    case["processing_level"],
                )
            theirs = {"ok": [[list(s) if s is not None else None for s in scales], data_type]}
        except ClientScalingError as exc:
            theirs = {"error": str(exc)}
        answered += "ok" in ours
        # refusals agree as refusals: their texts print the ranges as each side holds them
        # (the server's models keep 0, the JSON the client reads says 0.0)
        if ours != theirs and not ("error" in ours and "error" in theirs):
            disagree.append((case, ours, theirs))
    assert disagree == [], (len(disagree), disagree[:1])
    assert answered > 1000  # most cases give scales: agreement is not only on refusals


# The calls of the Catalog guide: the reference client's parameter names, in order, must
# start ours, so positional and keyword calls written for it work unchanged. Left out: the
# reference's transport arguments (`request_params`, `headers`) and `Product.delete`, a
# class-or-instance method there (see the README's differences).
CALLS = [
    "Image.upload",
    "Image.upload_ndarray",
    "Image.image_uploads",
    "Image.ndarray",
    "Image.download",
    "Image.scaling_parameters",
    "Image.coverage",
    "Image.exists",
    "Image.get",
    "Product.get",
    "Product.get_or_create",
    "Product.image_uploads",
    "Product.images",
    "Product.search",
    "ImageUpload.wait_for_completion",
    "ImageUpload.reload",
    "ImageUpload.search",
    "ImageCollection.stack",
    "ImageCollection.mosaic",
    "ImageCollection.download",
    "ImageCollection.download_mosaic",
    "ImageCollection.scaling_parameters",
    "ImageSearch.summary_interval",
    "ImageSearch.intersects",
    "ImageSearch.summary",
    "ImageSearch.count",
    "ImageSearch.collect",
    "Search.filter",
    "Search.sort",
    "Search.limit",
]
ENUMS = [
    "ImageUploadStatus",
    "ImageUploadType",
    "ImageUploadEventType",
    "ImageUploadEventSeverity",
    "OverviewResampler",
]
SIGNATURES = """
import inspect, json, sys, warnings
warnings.simplefilter("ignore")
module = __import__(sys.argv[1], fromlist=["_"])
calls = {}
for call in sys.argv[2].split(","):
    owner, name = call.split(".")
    parameters = inspect.signature(getattr(getattr(module, owner), name)).parameters.values()
    calls[call] = [
        p.name for p in parameters
        if p.name not in ("self", "cls", "request_params", "headers")
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
enums = {e: sorted(m.value for m in getattr(module, e)) for e in sys.argv[3].split(",")}
print(json.dumps({"calls": calls, "enums": enums}))
"""


def signatures(python: str, module: str) -> dict:
    out = subprocess.run(
        [python, "-c", SIGNATURES, module, ",".join(CALLS), ",".join(ENUMS)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_guides_calls_take_the_reference_clients_parameters(reference_python):
    theirs = signatures(reference_python, "descarteslabs.catalog")
    ours = signatures(sys.executable, "tileserver.client")
    differ = {
        call: (names, ours["calls"][call])
        for call, names in theirs["calls"].items()
        if ours["calls"][call][: len(names)] != names
    }
    assert differ == {}
    for enum in ENUMS[:-1]:
        assert ours["enums"][enum] == theirs["enums"][enum], enum
    # overviews: every resampler the reference names, but its complex-data ones
    missing = set(theirs["enums"]["OverviewResampler"]) - set(ours["enums"]["OverviewResampler"])
    assert missing == {"average_mp", "average_magphase"}


def test_upload_requests_from_the_catalogs_arguments():
    from tileserver.client import Image, ImageUploadOptions, OverviewResampler
    from tileserver.client.uploads import STATUS, array_grid, npy_bytes, single, upload_request

    image = Image(product="p", name="n", acquired="2024-01-02", cloud_fraction=0.5)
    options = ImageUploadOptions(overviews=[2, 4], overview_resampler=OverviewResampler.CUBICSPLINE)
    body = upload_request(image, "file", options, None, None, 10, "0" * 32)
    assert body == {
        "name": "n",
        "kind": "file",
        "size": 10,
        "md5": "0" * 32,
        "acquired": "2024-01-02T00:00:00Z",
        "cloud_cover": 50.0,
        "overviews": [2, 4],
        "resampler": "cubic_spline",  # the server's (rio-tiler's) spelling
    }
    # explicit arguments win over the options, as in the Catalog
    assert upload_request(image, "ndarray", options, [2], "mode", 1, "")["overviews"] == [2]
    # raster_meta as raster_info gives it; the image's own attributes take precedence
    meta = {"geoTransform": [0, 10, 0, 0, 0, -10], "coordinateSystem": {"epsg": 32631}}
    assert array_grid(image, meta) == {"crs": "EPSG:32631", "geotrans": [0, 10, 0, 0, 0, -10]}
    image.cs_code, image.geotrans = "EPSG:4326", (1, 1, 0, 2, 0, -1)
    assert array_grid(image, meta) == {"crs": "EPSG:4326", "geotrans": [1, 1, 0, 2, 0, -1]}
    with pytest.raises(ValueError, match="3 \\(bands, rows, cols\\)"):
        npy_bytes(numpy.zeros((1, 2, 3, 4), "uint8"))
    with pytest.raises(NotImplementedError, match="one file"):
        single(["a.tif", "b.tif"], "files")
    assert set(STATUS) == {"pending", "receiving", "received", "converting", "done", "failed"}
