"""The Catalog guide's examples through the client against a live server, checked against
values computed here from the catalog's records and the image files (rasterio, numpy)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy
import pytest
import rasterio
from shapely.geometry import box, mapping, shape

from tests.conftest import DEMO_IMAGE, DEMO_TILE, LiveServer, make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.client import (
    CatalogClient,
    ForbiddenError,
    Image,
    ImageCollection,
    Product,
    SpectralBand,
)
from tileserver.client import properties as p

PRODUCT = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def cat(live_server) -> CatalogClient:
    client = CatalogClient(live_server.url, api_key="")
    yield client
    client.close()


@pytest.fixture(scope="module")
def records(demo_store):
    """Every demo image as the catalog holds it (read directly, not through the client)."""
    return demo_store.list_images(PRODUCT, limit=1000).images


def aoi() -> dict:
    z, x, y = DEMO_TILE
    west, south, east, north = WEB_MERCATOR.bounds(x, y, z)
    return mapping(box(west, south, east, north))


def test_images_by_geometry_date_and_cloud(cat, records):
    product = Product.get(PRODUCT, client=cat)
    search = (
        product.images()
        .intersects(aoi())
        .filter("2024-05-01" <= p.acquired < "2024-07-01")
        .filter(p.cloud_fraction < 0.05)
        .sort("acquired")
    )
    found = search.collect()
    start, end = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC)
    expected = sorted(
        (
            r
            for r in records
            if shape(r.geometry).intersects(shape(aoi()))
            and start <= r.acquired < end
            and r.cloud_cover is not None
            and r.cloud_cover < 5
        ),
        key=lambda r: r.acquired,
    )
    assert 0 < len(expected) < len(records)
    assert [i.name for i in found] == [r.name for r in expected]
    assert [i.cloud_fraction for i in found] == pytest.approx(
        [r.cloud_cover / 100 for r in expected]
    )
    assert search.count() == len(expected) == search.summary().count
    assert [i.name for i in search.limit(2)] == [r.name for r in expected[:2]]
    assert isinstance(found, ImageCollection)


def test_summaries_by_month(cat, records):
    summaries = Product.get(PRODUCT, client=cat).images().summary_interval(interval="month")
    expected = Counter(r.acquired.strftime("%Y-%m") for r in records)
    got = {s.interval_start.strftime("%Y-%m"): s.count for s in summaries if s.count}
    assert got == dict(expected)


def demo_band(record, index: int) -> numpy.ndarray:
    """Band `index` (1-based) of the image's first file (its 10 m bands B02 B03 B04 B08)."""
    with rasterio.open(record.files[0].href) as dataset:
        return dataset.read(index)


def test_ndarray_with_each_scaling_form(cat, demo_store):
    record = demo_store.get_image(DEMO_IMAGE)
    b04, b08 = demo_band(record, 3), demo_band(record, 4)
    image = Image.get(DEMO_IMAGE, client=cat)
    valid = (b04 != 0) & (b08 != 0)

    raw = image.ndarray("B04 B08", scaling="raw")
    assert raw.dtype == numpy.uint16 and raw.shape == (2, *b04.shape)
    assert numpy.array_equal(raw.data[:, valid], numpy.stack([b04, b08])[:, valid])
    assert numpy.array_equal(raw.mask[0], ~valid)

    def stretch(values, lo, hi, out_hi):
        return numpy.clip(
            numpy.floor((values.astype(float) - lo) * out_hi / (hi - lo) + 0.5), 0, 255
        )

    display = image.ndarray(["B04", "B08"], scaling="display")
    assert display.dtype == numpy.uint8
    assert numpy.array_equal(display.data[0][valid], stretch(b04, 0, 3000, 255)[valid])
    assert numpy.array_equal(display.data[1][valid], stretch(b08, 0, 5000, 255)[valid])

    physical = image.ndarray("B04", scaling="physical")
    assert physical.dtype == numpy.float64
    assert numpy.allclose(physical.data[0][valid], b04[valid] / 10000)

    ranged = image.ndarray("B04", scaling=(0, 4000, 0, 255), data_type="Byte")
    assert numpy.array_equal(ranged.data[0][valid], stretch(b04, 0, 4000, 255)[valid])

    per_band = image.ndarray("B04 B08", scaling=["display", (0, 5000, 0, 255)], data_type="Byte")
    assert numpy.array_equal(per_band.data[1][valid], stretch(b08, 0, 5000, 255)[valid])

    by_name, info = image.ndarray(
        "B04 B08",
        scaling={"B04": (0, 4000, 0, 255), "default_": "display"},
        raster_info=True,
        bands_axis=-1,
    )
    assert by_name.shape == (*b04.shape, 2)
    assert numpy.array_equal(by_name.data[..., 0][valid], stretch(b04, 0, 4000, 255)[valid])
    assert numpy.array_equal(by_name.data[..., 1][valid], stretch(b08, 0, 5000, 255)[valid])
    assert info["size"] == {"width": b04.shape[1], "height": b04.shape[0]}
    assert [b["name"] for b in info["bands"]] == ["B04", "B08"]

    auto = image.ndarray("B04", scaling="auto")
    # a stretch of B04's own range onto 0..255 (the range may come from an overview, so the
    # extremes can sit a level inside): monotonic in B04 and spanning the output
    assert auto.dtype == numpy.uint8 and auto.min() <= 1 and auto.max() >= 254
    order = numpy.argsort(b04[valid], kind="stable")
    assert (numpy.diff(auto.data[0][valid][order].astype(int)) >= 0).all()

    params = image.scaling_parameters("B04 B08", scaling="display")
    assert params == ([(0, 3000, 0, 255), (0, 5000, 0, 255)], "Byte")


def canvas(records) -> tuple[list[numpy.ndarray], rasterio.Affine]:
    """B04 of each record placed on the grid covering them all (same CRS and pixel size)."""
    opened = []
    for record in records:
        with rasterio.open(record.files[0].href) as dataset:
            opened.append((dataset.transform, dataset.read(3)))
    west = min(t.c for t, _ in opened)
    north = max(t.f for t, _ in opened)
    res = opened[0][0].a
    east = max(t.c + a.shape[1] * res for t, a in opened)
    south = min(t.f - a.shape[0] * res for t, a in opened)
    shape_ = (round((north - south) / res), round((east - west) / res))
    layers = []
    for transform, array in opened:
        layer = numpy.zeros(shape_, array.dtype)
        row, col = round((north - transform.f) / res), round((transform.c - west) / res)
        layer[row : row + array.shape[0], col : col + array.shape[1]] = array
        layers.append(layer)
    return layers, rasterio.Affine(res, 0, west, 0, -res, north)


def newest_on_top(layers: list[numpy.ndarray]) -> numpy.ndarray:
    """Layers in time order composited as the Catalog does: the last valid pixel wins."""
    out = numpy.zeros_like(layers[0])
    for layer in layers:
        out = numpy.where(layer != 0, layer, out)
    return out


def test_stack_flattened_by_month_and_mosaic(cat, records):
    ordered = sorted(records, key=lambda r: r.acquired)
    images = Product.get(PRODUCT, client=cat).images().sort("acquired").collect()
    assert [i.name for i in images] == [r.name for r in ordered]
    layers, _ = canvas(ordered)

    stack = images.stack("B04", scaling="raw", flatten="properties.date.month")
    months = sorted({r.acquired.strftime("%Y-%m") for r in ordered})
    assert stack.shape == (len(months), 1, *layers[0].shape)
    for m, month in enumerate(months):
        members = [
            lay
            for lay, r in zip(layers, ordered, strict=True)
            if r.acquired.strftime("%Y-%m") == month
        ]
        assert numpy.array_equal(stack[m, 0].filled(0), newest_on_top(members))

    june = ImageCollection([i for i in images if i.acquired.month == 6], client=cat)
    mosaic = june.mosaic("B04", scaling="raw")
    # the mosaic's grid covers June's images only: build the expected one from them alone
    june_layers, _ = canvas([r for r in ordered if r.acquired.month == 6])
    assert len(june_layers) > 1
    assert mosaic.shape == (1, *june_layers[0].shape)
    assert numpy.array_equal(mosaic[0].filled(0), newest_on_top(june_layers))


# --- writing and sharing, with keys ---------------------------------------------------


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    return mapping(box(b.left, b.bottom, b.right, b.top))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-keys")
    store = SQLiteStore(folder / "catalog.db")
    tokens = {}
    for user, org in (("alice", "acme"), ("carol", "globex")):
        key, token = new_key(user, org)
        store.put_key(key)
        tokens[user] = token
    grant = [str(folder / "files")]
    settings = make_settings(folder, key_cache_seconds=0, import_grants={"org:acme": grant})
    with LiveServer(create_app(settings, store=store)) as server:
        clients = {u: CatalogClient(server.url, api_key=t) for u, t in tokens.items()}
        yield folder, clients, server
        for client in clients.values():
            client.close()
    store.close()


def test_create_search_share_and_read(keyed, monkeypatch):
    folder, clients, server = keyed
    alice, carol = clients["alice"], clients["carol"]
    old = Product(client=alice, id="client-old", name="Old", start_datetime="2015-03-01")
    old.save()
    Product(client=alice, id="client-new", start_datetime="2020-01-01").save()
    assert old.owners == ["user:alice"] and old.state == "saved"
    SpectralBand(
        name="v",
        product=old,
        data_type="UInt16",
        data_range=(0, 1000),
        display_range=(0, 1000),
        nodata=0,
        resolution=10,
    ).save()
    data = numpy.arange(256 * 256, dtype="uint16").reshape(1, 256, 256) % 1000
    path = write(folder / "files" / "v.tif", data)
    Image(
        client=alice,
        product=old,
        name="img",
        acquired="2015-03-02T10:00:00Z",
        geometry=footprint(),
        files=[str(path)],
        cloud_fraction=0.1,
    ).save()

    found = Product.search(client=alice).filter(p.start_datetime < "2016-01-01").sort("id").limit(3)
    assert [q.id for q in found] == ["client-old"]
    assert [b.name for b in Product.get("client-old", client=alice).bands()] == ["v"]
    assert isinstance(Product.get("client-old", client=alice).get_band("v"), SpectralBand)

    # env credentials: a client built from the environment is carol's
    monkeypatch.setenv("TILESERVER_URL", server.url)
    monkeypatch.setenv("TILESERVER_API_KEY", carol.session.headers["Authorization"][7:])
    CatalogClient.set_default_client(None)
    try:
        assert Product.get("client-old") is None
        old.readers = ["org:globex"]
        old.save()
        shared = Product.get("client-old")
        assert shared is not None and shared.readers == ["org:globex"]
        image = shared.get_image("img")
        pixels = image.ndarray("v", scaling="raw")
        valid = data[0] != 0
        assert numpy.array_equal(pixels.data[0][valid], data[0][valid])
        assert numpy.array_equal(pixels.mask[0], ~valid)
        shared.description = "carol was here"
        with pytest.raises(ForbiddenError):
            shared.save()
        assert Product.get_or_create("client-old").state == "saved"
    finally:
        CatalogClient.set_default_client(None)

    image = Image.get("client-old:img", client=alice)
    assert image.cloud_fraction == pytest.approx(0.1)
    image.delete()
    assert Image.get("client-old:img", client=alice) is None
    Product.get("client-old", client=alice).delete()
    assert Product.get("client-old", client=alice) is None


def test_uploads_and_blobs_say_they_are_not_served():
    # blobs are served: tests/client/test_blob.py
    with pytest.raises(NotImplementedError, match="uploads"):
        Image(product="x", name="y").upload("file.tif")
