"""Property-based fuzzing of every documented operation (schemathesis 4, in process).

Each operation gets schemathesis' explicit examples, its coverage cases (boundary and
invalid values of each parameter) and MAX_EXAMPLES generated requests, derandomized so
every run sends the same requests. Checks: no 5xx, the body conforms to the documented
schema (errors are `{"detail": ...}`), the content type is a documented one.

Two passes over a private copy of the demo catalog (the fuzzer creates and deletes):
- every operation with generated ids, which mostly reach the 404 paths;
- the operations that read, with ids pinned to demo records (an image, its product,
  a registered search, a tile and a chip location inside the footprints) and band lists
  drawn from the product's bands half the time, so generated rendering, search, chip and
  download parameters reach the code that reads pixels. PUT, PATCH and DELETE are left out of
  this pass only: they would replace or delete the very records it reads (the first
  pass fuzzes them).

A third pass sends every operation with an API key of a user who reads and writes the
demo product but does not own it, while another organisation's product exists beside
it: the answers go through KeyAuth and the caller's view of the catalog (404 for what is
hidden, 403 for the writes the caller may not make) and must keep to the same schema.

POST /imports runs in every pass: file imports are confined to an empty import root, and
the S3 / GCS endpoints are a loopback server answering 404 to everything (no bucket
exists), so no request leaves the machine and none waits for retries.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import morecantile
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.conftest import DEMO_IMAGE, DEMO_TILE, make_settings, stub_server
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.settings import Settings

MAX_EXAMPLES = 15  # generated requests per operation, besides examples and coverage cases
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
PRODUCT, ITEM = DEMO_IMAGE.split(":")
BANDS = ["B04,B03,B02", "B08,B04", "SCL", "B11", "B02"]


def config(**extra) -> schemathesis.Config:
    """Bounded, derandomized generation; no example database, so CI repeats the run."""
    generation = {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"}
    return schemathesis.Config.from_dict({"generation": generation, **extra})


class NoBuckets(BaseHTTPRequestHandler):
    """An S3 / GCS endpoint where no bucket exists."""

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def no_buckets():
    with stub_server(NoBuckets) as address:
        yield address


@pytest.fixture(scope="module")
def bucket_endpoints(monkeypatch_module, no_buckets):
    """S3 and GCS on the loopback server where no bucket exists."""
    for name, value in {
        "AWS_S3_ENDPOINT": no_buckets,
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_NO_SIGN_REQUEST": "YES",
        "CPL_GS_ENDPOINT": f"http://{no_buckets}",
        "GS_NO_SIGN_REQUEST": "YES",
    }.items():
        monkeypatch_module.setenv(name, value)


@contextlib.contextmanager
def demo_copy(demo_dir, folder) -> Iterator[tuple[SQLiteStore, Settings]]:
    """A private copy of the demo catalog, with an empty import root."""
    with sqlite3.connect(demo_dir / "catalog.db") as source:
        with sqlite3.connect(folder / "catalog.db") as target:
            source.backup(target)
    (folder / "imports").mkdir()
    store = SQLiteStore(folder / "catalog.db")
    yield store, make_settings(folder, import_roots=[folder / "imports"])
    store.close()


@pytest.fixture(scope="module")
def fuzz_app(demo_dir, demo_store, tmp_path_factory, bucket_endpoints):
    """The app over a private copy of the demo catalog, its bucket endpoints on loopback."""
    with demo_copy(demo_dir, tmp_path_factory.mktemp("fuzz")) as (store, settings):
        assert not store.has_keys(), "with API keys every request would be a 401: nothing fuzzed"
        yield create_app(settings, store=store)


@pytest.fixture(scope="module")
def keyed_app(demo_dir, demo_store, tmp_path_factory, bucket_endpoints):
    """The same with API keys: the caller (a key of org `fuzz`) reads and writes the demo
    product but does not own it; a second product is another organisation's."""
    with demo_copy(demo_dir, tmp_path_factory.mktemp("fuzz-keyed")) as (store, settings):
        key, token = new_key("fuzzer", "fuzz")
        store.put_key(key)
        demo = store.get_product(PRODUCT)
        store.put_product(
            demo.model_copy(update={"readers": ["org:fuzz"], "writers": ["user:fuzzer"]}),
            keep_times=True,
        )
        hidden = demo.model_copy(
            update={"id": "hidden", "owners": ["org:other"], "writers": [], "readers": []}
        )
        store.create_product(hidden)
        KEYED["Authorization"] = f"Bearer {token}"
        app = create_app(settings, store=store)
        with TestClient(app, headers=KEYED) as client:  # the key works: not a pass of 401s
            assert [p["id"] for p in client.get("/products").json()["products"]] == [PRODUCT]
        yield app


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def any_ids_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config())


@pytest.fixture(scope="module")
def keyed_schema(keyed_app):
    return schemathesis.openapi.from_asgi("/openapi.json", keyed_app, config=config())


@pytest.fixture(scope="module")
def demo_ids_schema(fuzz_app):
    with TestClient(fuzz_app) as client:
        search = client.post("/searches", json={"collections": [PRODUCT]}).json()["id"]
    z, x, y = DEMO_TILE
    tms = morecantile.tms.get("WebMercatorQuad")
    west, south, east, north = tms.bounds(morecantile.Tile(x, y, z))
    pinned = config(
        parameters={
            "query.lon": (west + east) / 2,  # chips: a point inside every demo footprint
            "query.lat": (south + north) / 2,
            "query.product": PRODUCT,
            "query.start_date": "2024-01-01",
            "query.end_date": "2024-12-31",
            "path.image_id": DEMO_IMAGE,
            "path.product_id": PRODUCT,
            "path.collection_id": PRODUCT,
            "path.item_id": ITEM,
            "path.search_id": search,
            "path.tms_id": "WebMercatorQuad",
            "path.z": z,
            "path.x": x,
            "path.y": y,
            "query.bands": {"dictionary": "bands", "probability": 0.5},
        },
        dictionaries={"bands": {"values": BANDS}},
    )
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=pinned)


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
any_ids = schemathesis.pytest.from_fixture("any_ids_schema")
demo_ids = schemathesis.pytest.from_fixture("demo_ids_schema").exclude(
    method=["PUT", "PATCH", "DELETE"]  # STAC PATCH changes the records read too
)
keyed = schemathesis.pytest.from_fixture("keyed_schema")
KEYED: dict[str, str] = {}  # the keyed pass's Authorization header


STATUSES: dict[str, Counter] = defaultdict(Counter)  # pass -> status class -> requests
OPERATIONS: dict[str, set] = defaultdict(set)  # pass -> operations that ran
ANSWERED: dict[str, set] = defaultdict(set)  # pass -> operations that answered a 2xx


@pytest.fixture(scope="module", autouse=True)
def report(request):
    """After the module: operations and requests per pass, by status class."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for name, statuses in STATUSES.items():
            classes = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            print(
                f"\nfuzz, {name}: {len(OPERATIONS[name])} operations, "
                f"{sum(statuses.values())} requests ({classes}); never 2xx: "
                + (", ".join(sorted(OPERATIONS[name] - ANSWERED[name])) or "none")
            )


def call(case, name: str, headers: dict | None = None) -> None:
    response = case.call_and_validate(checks=CHECKS, headers=headers)
    STATUSES[name][f"{response.status_code // 100}xx"] += 1
    OPERATIONS[name].add(case.operation.label)
    if response.status_code < 300:
        ANSWERED[name].add(case.operation.label)


@any_ids.parametrize()
@FUZZ_SETTINGS
def test_every_operation(case):
    call(case, "any ids")


@demo_ids.parametrize()
@FUZZ_SETTINGS
def test_every_reading_operation_on_demo_records(case):
    call(case, "demo ids")


@keyed.parametrize()
@FUZZ_SETTINGS
def test_every_operation_with_a_key(case):
    """Through KeyAuth and the caller's view of the catalog (access.ScopedStore)."""
    call(case, "keyed", headers=KEYED)
